//! A real node whose disk refuses a write stops for good: `flotilla kvraft serve` under a
//! file-size limit (RLIMIT_FSIZE; writes past it fail with EFBIG, SIGXFSZ ignored) exits with
//! code 74 once its WAL reaches the limit, says why, and answers nobody after; restarted
//! without the limit, it recovers every write it acknowledged.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// The WAL grows past this and the next write fails.
const FILE_SIZE_LIMIT: libc::rlim_t = 256 << 10;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn serve(addr: SocketAddr, data: &Path, limited: bool, log: &Path) -> Child {
    let mut command = Command::new(FLOTILLA);
    command
        .args([
            "kvraft",
            "serve",
            "--id",
            "0",
            "--peers",
            &addr.to_string(),
            "--data",
        ])
        .arg(data)
        .args(["--max-raft-state", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if limited {
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FILE_SIZE_LIMIT,
                    rlim_max: FILE_SIZE_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    command.spawn().unwrap()
}

/// Runs `flotilla kv ...` against `addr`; `None` if it did not finish within `within` (it is
/// killed then).
fn kv(addr: SocketAddr, args: &[&str], within: Duration) -> Option<(bool, String)> {
    let mut child = Command::new(FLOTILLA)
        .arg("kv")
        .arg(args[0])
        .args(["--cluster", &addr.to_string()])
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return Some((
                status.success(),
                String::from_utf8_lossy(&out.stdout).into(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_node_whose_disk_refuses_a_write_exits_74_and_restarts_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let log = dir.path().join("node.log");
    let addr = free_addr();
    let mut node = serve(addr, &data, true, &log);
    let value = "v".repeat(8 << 10);
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the node still runs after 60 s and {} writes of 8 KiB under a 256 KiB file-size limit",
            acknowledged.len()
        );
        let key = format!("k{}", acknowledged.len());
        if let Some((true, _)) = kv(addr, &["put", &key, &value], Duration::from_secs(5)) {
            acknowledged.push(key);
        }
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(74),
        "exit status {status:?}; it said:\n{said}"
    );
    assert!(said.contains("storage failed"), "it said:\n{said}");
    assert!(
        acknowledged.len() >= 5,
        "only {} writes acknowledged before the limit",
        acknowledged.len()
    );

    let mut node = serve(addr, &data, false, &log);
    for key in &acknowledged {
        let got = kv(addr, &["get", key], Duration::from_secs(30));
        assert!(
            matches!(&got, Some((true, out)) if out.starts_with(&value)),
            "{key} after the restart: {got:?} ({} acknowledged)",
            acknowledged.len()
        );
    }
    let _ = node.kill();
    let _ = node.wait();
}
