//! One run of an external program for a task (the exec app's map or reduce command), kept
//! on a leash.
//!
//! - **Its own process group.** The program (`sh -c CMD`) leads a new process group, so
//!   everything it starts is in that group. Killing the program kills the whole group, and
//!   so does the end of every run: nothing it left in the background outlives its task.
//! - **It dies with the worker.** On Linux the program gets `SIGKILL` when the worker
//!   thread that started it dies (`PR_SET_PDEATHSIG`), including when the worker is killed
//!   with `SIGKILL`. A worker that died before that was set up is caught too: the program
//!   then refuses to start. What the program started itself is not covered by this. Its
//!   pipes to the worker close, so a pipeline ends on its own.
//! - **A time limit.** With a limit, a watchdog thread kills the group when the limit
//!   passes, and the run fails with [`ExecError::TimedOut`] whatever else went wrong.
//!
//! The group is named by the program's pid. A pid can be reused once its process has been
//! reaped, so the group is only ever signalled before that: [`Program::finish`] first waits
//! for the program to exit *without* reaping it (`waitid` with `WNOWAIT`), then stops the
//! watchdog and kills the group, and only then reaps.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::exec::ExecError;

/// A running external program; see the module docs. Call [`Program::finish`]. If a
/// `Program` is dropped without it, its group is killed and it is reaped.
pub(crate) struct Program {
    pub(crate) child: Child,
    cmd: String,
    limit: Option<Duration>,
    watchdog: Option<Watchdog>,
    reaped: bool,
}

struct Watchdog {
    /// Dropped to stop the watchdog.
    stop: mpsc::Sender<()>,
    /// Whether the watchdog killed the group.
    thread: thread::JoinHandle<bool>,
}

/// `SIGKILL` to process group `group`. The group may be gone already.
fn kill_group(group: libc::pid_t) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

/// Waits until process `pid` (a child of this process) has exited, leaving it unreaped.
fn wait_exited_unreaped(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid value, and waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes; the other arguments are plain values.
        let done = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if done == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Program {
    /// Starts `command` (already given its arguments, environment and pipes) as the program
    /// `cmd`, in its own process group, killed after `limit` if given.
    pub(crate) fn start(
        mut command: Command,
        cmd: &str,
        limit: Option<Duration>,
    ) -> Result<Program, ExecError> {
        command.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let worker = std::process::id() as libc::pid_t;
            // SAFETY: the closure runs in the forked child before `exec` and calls only
            // async-signal-safe functions (prctl, getppid); it allocates nothing on success.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // If the worker died before the call, the signal will never come.
                    if libc::getppid() != worker {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|source| ExecError::Spawn {
            cmd: cmd.to_owned(),
            source,
        })?;
        let group = child.id() as libc::pid_t;
        let watchdog = limit.map(|limit| {
            let (stop, stopped) = mpsc::channel::<()>();
            let thread = thread::spawn(move || match stopped.recv_timeout(limit) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The program is not reaped before this thread is joined: the pid still
                    // names its group.
                    kill_group(group);
                    true
                }
                _ => false,
            });
            Watchdog { stop, thread }
        });
        Ok(Program {
            child,
            cmd: cmd.to_owned(),
            limit,
            watchdog,
            reaped: false,
        })
    }

    /// Kills the program's whole process group (it has not been reaped, so its pid still
    /// names the group).
    pub(crate) fn kill(&self) {
        if !self.reaped {
            kill_group(self.child.id() as libc::pid_t);
        }
    }

    /// Waits for the program to exit, kills whatever it left running in its group, and
    /// reaps it. Its time limit passing is [`ExecError::TimedOut`]; otherwise an
    /// unsuccessful exit is [`ExecError::Status`].
    pub(crate) fn finish(&mut self) -> Result<(), ExecError> {
        let io_error = |cmd: &str, source| ExecError::Io {
            cmd: cmd.to_owned(),
            source,
        };
        let pid = self.child.id() as libc::pid_t;
        let exited = wait_exited_unreaped(pid);
        let timed_out = match self.watchdog.take() {
            Some(Watchdog { stop, thread }) => {
                drop(stop);
                thread.join().unwrap_or(false)
            }
            None => false,
        };
        kill_group(pid);
        let status = self.child.wait();
        self.reaped = true;
        exited.map_err(|e| io_error(&self.cmd, e))?;
        let status = status.map_err(|e| io_error(&self.cmd, e))?;
        if timed_out {
            return Err(ExecError::TimedOut {
                cmd: self.cmd.clone(),
                limit: self
                    .limit
                    .expect("only a program with a limit has a watchdog"),
            });
        }
        if !status.success() {
            return Err(ExecError::Status {
                cmd: self.cmd.clone(),
                status,
            });
        }
        Ok(())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.finish();
        }
    }
}
