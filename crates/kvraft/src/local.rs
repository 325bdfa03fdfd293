//! A cluster of `flotilla kvraft serve` child processes on loopback (or of another service's
//! nodes: [`LocalCluster::start_serving`]), for `flotilla cluster up`, the demo and the tests
//! that kill real processes.
//!
//! Node `i` keeps its data in `DIR/node-i` and its log in `DIR/node-i.log`. Every wait is
//! bounded: [`wait_for_leader`] and [`wait_until_applied`] poll the nodes' reports until a
//! deadline. Dropping a [`LocalCluster`] kills whatever still runs.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_runtime::NodeReport;

use crate::tcp;

/// Child processes of one cluster.
pub struct LocalCluster {
    exe: PathBuf,
    dir: PathBuf,
    name: String,
    members: Vec<SocketAddr>,
    /// The subcommand that runs a node (`kvraft serve`, `shardkv serve --gid 100 ...`).
    serve: Vec<String>,
    /// More arguments for every node.
    extra: Vec<String>,
    children: Vec<Option<Child>>,
}

/// Addresses on 127.0.0.1: `base_port`, `base_port + 1`, ...; or, with `base_port` 0, ports
/// the system hands out as free now (another process could take one before a node binds it:
/// the node then says so and exits).
pub fn loopback_addresses(nodes: usize, base_port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if base_port != 0 {
        return (0..nodes)
            .map(|i| {
                let port = u16::try_from(base_port as usize + i).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "ports past 65535")
                })?;
                Ok(SocketAddr::from(([127, 0, 0, 1], port)))
            })
            .collect();
    }
    Ok(flotilla_runtime::free_loopback_addrs(nodes))
}

impl LocalCluster {
    /// Starts `members.len()` nodes of the `flotilla` executable `exe`, their data under
    /// `dir`, each `kvraft serve` given `extra` arguments too.
    pub fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        members: Vec<SocketAddr>,
        extra: &[&str],
    ) -> std::io::Result<LocalCluster> {
        Self::start_serving(exe, dir, name, members, &["kvraft", "serve"], extra)
    }

    /// Starts `members.len()` nodes of another service, each run as `exe <serve...> --id I
    /// --peers ... --data ... --name NAME <extra...>`.
    pub fn start_serving(
        exe: &Path,
        dir: &Path,
        name: &str,
        members: Vec<SocketAddr>,
        serve: &[&str],
        extra: &[&str],
    ) -> std::io::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let mut cluster = LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            serve: serve.iter().map(|a| a.to_string()).collect(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            children: (0..members.len()).map(|_| None).collect(),
            members,
        };
        for i in 0..cluster.members.len() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    pub fn members(&self) -> &[SocketAddr] {
        &self.members
    }

    /// The members as `--cluster` and `--peers` take them.
    pub fn members_arg(&self) -> String {
        self.members
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}.log"))
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// Starts node `i` (which must not be running), appending to its log.
    pub fn start_node(&mut self, i: usize) -> std::io::Result<()> {
        assert!(self.children[i].is_none(), "node {i} is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let child = Command::new(&self.exe)
            .args(&self.serve)
            .args(["--id", &i.to_string(), "--peers"])
            .arg(self.members_arg())
            .arg("--data")
            .arg(self.data_dir(i))
            .args(["--name", &self.name])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(mut child) = self.children[i].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM to every node, then waits up to `grace` for each before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        for child in self.children.iter().flatten() {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for slot in &mut self.children {
            if let Some(mut child) = slot.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Whether node `i` has exited (reaping it), with its exit status.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.children[i].as_mut()?.try_wait().ok()??;
        self.children[i] = None;
        Some(status)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const POLL: Duration = Duration::from_millis(20);
const ASK: Duration = Duration::from_millis(500);

/// The reports of every member that answers now.
pub async fn reports(members: &[SocketAddr]) -> Vec<Option<NodeReport>> {
    let asks = members.iter().map(|&a| tcp::status(a, ASK));
    let mut out = Vec::new();
    for ask in asks {
        out.push(ask.await.ok());
    }
    out
}

/// Waits until one of `members` reports itself leader of a term no other answering member
/// is past, and returns its report; `None` at the deadline.
pub async fn wait_for_leader(members: &[SocketAddr], within: Duration) -> Option<NodeReport> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let reports: Vec<NodeReport> = reports(members).await.into_iter().flatten().collect();
        let highest = reports.iter().map(|r| r.term).max().unwrap_or(0);
        if let Some(leader) = reports
            .iter()
            .find(|r| r.role == "Leader" && r.term == highest)
        {
            return Some(leader.clone());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Waits until the node at `addr` has applied `index`; returns its report then, or `None` at
/// the deadline.
pub async fn wait_until_applied(
    addr: SocketAddr,
    index: u64,
    within: Duration,
) -> Option<NodeReport> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(report) = tcp::status(addr, ASK).await {
            if report.applied >= index {
                return Some(report);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    None
}
