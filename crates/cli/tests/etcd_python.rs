//! A second etcd client, written by other people in another language: Python's `etcd3`
//! package (Debian `python3-etcd3` 0.12) runs `etcd3_client.py` beside this file — put,
//! get, prefixes, deletes, transactions with every kind of compare, a lock, leases with
//! their keys and expiry, watches (callback and iterator, from the past and live),
//! compaction, members and status — and checks every answer. It runs against a real etcd
//! (Debian `etcd-server`, 3 members on loopback), so that the checks are known to be
//! right, and against a 3-node Flotilla cluster (`flotilla cluster up`).
//!
//! Where python3-etcd3 or etcd is missing the test installs it with apt-get, and fails
//! saying so if that cannot be done: it never passes without having run them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// The client script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/etcd3_client.py");

/// The bound on a cluster starting or stopping.
const WAIT: Duration = Duration::from_secs(30);

/// The bound on the whole script (it bounds each of its own waits by 15 s).
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

/// Debian's Python, the one `apt-get install python3-etcd3` installs the package for (a
/// `python3` earlier on PATH may be another).
const PYTHON: &str = "/usr/bin/python3";

/// Runs a command to its end, bounded by `wait` (killed past it: `None`).
fn run_bounded(command: &mut Command, wait: Duration) -> Option<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(wait) {
        Ok(output) => Some(output.expect("wait for a child")),
        Err(_) => {
            // SAFETY: kill(2) on our child, not reaped yet (the waiting thread reaps it).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Installs a Debian package with apt-get (refreshing the package lists if the first
/// attempt fails), or fails the test saying why. One install at a time (apt's lock).
fn apt_install(package: &str, needs: &str) {
    let apt_wait = Duration::from_secs(300);
    let apt = |args: &[&str]| {
        run_bounded(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            apt_wait,
        )
        .unwrap_or_else(|| panic!("{needs}; apt-get {args:?} still running after {apt_wait:?}"))
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    let mut tried = apt(&install);
    if !tried.status.success() {
        let update = apt(&["update"]);
        assert!(
            update.status.success(),
            "{needs}; apt-get update failed:\n{}",
            text(&update)
        );
        tried = apt(&install);
    }
    assert!(
        tried.status.success(),
        "{needs}; apt-get install {package} failed:\n{}",
        text(&tried)
    );
}

static APT: Mutex<()> = Mutex::new(());

/// Debian's python3 with the etcd3 package, installed if missing.
fn python_with_etcd3() -> PathBuf {
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    let imports = || {
        Path::new(PYTHON).is_file()
            && run_bounded(
                Command::new(PYTHON).args(["-c", "import etcd3"]),
                Duration::from_secs(30),
            )
            .is_some_and(|out| out.status.success())
    };
    if !imports() {
        let needs = "this test needs Python's etcd3 package (Debian package python3-etcd3: \
                     `apt-get install python3-etcd3`)";
        apt_install("python3-etcd3", needs);
        assert!(
            imports(),
            "{needs}; apt-get installed python3-etcd3 but {PYTHON} cannot import etcd3"
        );
    }
    PathBuf::from(PYTHON)
}

/// etcd, installed if missing.
fn etcd_program() -> PathBuf {
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    let find = || {
        ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    let needs = "this test needs etcd (Debian package etcd-server: `apt-get install etcd-server`)";
    apt_install("etcd-server", needs);
    find().unwrap_or_else(|| panic!("{needs}; apt-get installed etcd-server but there is no etcd"))
}

/// Runs the client script against `endpoints` (of a cluster of `members`): it must pass
/// every check.
fn run_client(what: &str, endpoints: &[SocketAddr], members: usize) {
    let python = python_with_etcd3();
    let list = endpoints
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let out = run_bounded(
        Command::new(python)
            .arg(SCRIPT)
            .args(["--members", &members.to_string(), &list]),
        SCRIPT_WAIT,
    )
    .unwrap_or_else(|| panic!("{SCRIPT} against {what} still running after {SCRIPT_WAIT:?}"));
    eprintln!(
        "{SCRIPT} against {what} ({:?}):\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.success(),
        "Python's etcd3 client against {what}: checks failed\n{}",
        text(&out)
    );
}

/// Three etcd members on loopback with their data in a temporary directory; killed when
/// dropped.
struct Etcd {
    clients: Vec<SocketAddr>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let etcd = etcd_program();
        let dir = tempfile::tempdir().unwrap();
        let addrs = flotilla_runtime::free_loopback_addrs(6);
        let (clients, peers) = (addrs[..3].to_vec(), addrs[3..].to_vec());
        let initial = (0..3)
            .map(|i| format!("py{i}=http://{}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..3)
            .map(|i| {
                let log = File::create(dir.path().join(format!("py{i}.log"))).unwrap();
                let client = format!("http://{}", clients[i]);
                let peer = format!("http://{}", peers[i]);
                Command::new(&etcd)
                    .args(["--name", &format!("py{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("py{i}")))
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("start etcd")
            })
            .collect();
        Etcd {
            clients,
            children,
            dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 0..3 {
                let path = self.dir.path().join(format!("py{i}.log"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {} (last lines):", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// `flotilla cluster up --nodes 3`, stopped with SIGINT at the end; killed with its nodes
/// if dropped.
struct Flotilla {
    clients: Vec<SocketAddr>,
    child: Child,
    pids: Vec<u32>,
    dir: tempfile::TempDir,
}

impl Flotilla {
    fn start() -> Flotilla {
        let dir = tempfile::tempdir().unwrap();
        let stderr = File::create(dir.path().join("cluster-up.stderr")).unwrap();
        let mut child = Command::new(FLOTILLA)
            .args(["cluster", "up", "--nodes", "3", "--base-port", "0", "--dir"])
            .arg(dir.path().join("cluster"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("run flotilla cluster up");
        let stdout = child.stdout.take().unwrap();
        let mut up = Flotilla {
            clients: Vec::new(),
            child,
            pids: Vec::new(),
            dir,
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // "  node I: ADDR (pid P)..." for each node, "etcd clients: --endpoints A,B,C", and
        // last a line saying Ctrl-C stops the cluster.
        let deadline = Instant::now() + WAIT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                panic!("cluster up: no line saying Ctrl-C stops the cluster; printed {printed:#?}");
            };
            printed.push(line.clone());
            if let Some((_, rest)) = line.split_once(" (pid ") {
                let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
                up.pids.push(pid.parse().unwrap());
            }
            if let Some(list) = line.strip_prefix("etcd clients: --endpoints ") {
                up.clients = list.split(',').map(|a| a.parse().unwrap()).collect();
            }
            if line.contains("Ctrl-C stops the cluster") {
                break;
            }
        }
        assert_eq!(
            up.clients.len(),
            3,
            "flotilla cluster up printed no `etcd clients: --endpoints A,B,C` line: its nodes \
             do not serve etcd's API (yet?); printed {printed:#?}"
        );
        up
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "cluster-up.stderr",
            "cluster/node-0.log",
            "cluster/node-1.log",
            "cluster/node-2.log",
        ] {
            let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            all += &format!("--- {name} (last lines):\n");
            for line in tail.iter().rev() {
                all += line;
                all += "\n";
            }
        }
        all
    }

    /// SIGINT, as Ctrl-C: cluster up stops its nodes and exits (bounded).
    fn stop(mut self) {
        // SAFETY: kill(2) on our child, not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cluster up still running {WAIT:?} after SIGINT\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "cluster up exited with {status} after SIGINT\n{}",
            self.logs()
        );
    }
}

impl Drop for Flotilla {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in &self.pids {
            // Only if it is still one of this cluster's nodes (not a process that got the
            // number since).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline).contains(&*self.dir.path().to_string_lossy())
            });
            if ours {
                // SAFETY: kill(2) on a node process this test started.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// The script against etcd itself: if this fails, the script is wrong, not Flotilla.
#[test]
fn python_etcd3_client_against_etcd() {
    let etcd = Etcd::start();
    run_client("etcd (3 members)", &etcd.clients, 3);
}

#[test]
fn python_etcd3_client_against_flotilla() {
    let flotilla = Flotilla::start();
    run_client("flotilla (cluster up, 3 nodes)", &flotilla.clients, 3);
    flotilla.stop();
}
