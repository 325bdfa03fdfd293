//! The real KV server as a process: concurrent clerks over TCP while the server withholds a
//! fifth of its replies; the recorded history must be linearizable (so every retried write
//! took effect exactly once), on a fresh store and on one an earlier run filled.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// The server process; killed when dropped, whatever happens in the test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(FLOTILLA)
        .args(["kv", "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla kv serve");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("flotilla kv: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (server, addr)
}

fn flotilla(args: &[&str]) -> (bool, String) {
    let out = Command::new(FLOTILLA)
        .args(args)
        .output()
        .expect("run flotilla");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Twice against the same server: the second run finds the first one's data in the store,
/// and its history must still be one the checker can judge (each run has keys of its own).
#[test]
fn dropped_replies_still_give_a_linearizable_exactly_once_history() {
    let started = Instant::now();
    let (_server, addr) = start_server(&["--drop-replies", "0.2", "--seed", "7"]);
    let dir = tempfile::tempdir().expect("temp dir");
    for run in 0..2 {
        let history = dir.path().join(format!("history-{run}.jsonl"));
        let history = history.to_str().expect("utf-8 path");
        let (ok, out) = flotilla(&[
            "kv",
            "bench",
            "--server",
            &addr,
            "--clients",
            "8",
            "--seconds",
            "2",
            "--keys",
            "4",
            "--append-share",
            "0.5",
            "--history",
            history,
        ]);
        assert!(ok, "bench failed: {out}");
        let words: Vec<&str> = out.split_whitespace().collect();
        let resends: u64 = words
            .windows(2)
            .find(|w| w[1].starts_with("resends"))
            .and_then(|w| w[0].parse().ok())
            .unwrap_or_else(|| panic!("no resend count in {out:?}"));
        assert!(
            resends > 10,
            "with 20% of replies dropped the clerks must have resent: {out}"
        );
        let (ok, verdict) = flotilla(&["check", history]);
        assert!(
            ok && verdict.starts_with("linearizable"),
            "run {run}: {verdict}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_corrupt_history_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"client\":1,\"op\":\"get\"\n").expect("write");
    let (ok, out) = flotilla(&["check", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("line 1"), "{out}");
}

#[test]
fn the_command_line_round_trip_works() {
    let (_server, addr) = start_server(&[]);
    assert!(flotilla(&["kv", "put", "--server", &addr, "k", "v1"]).0);
    let (ok, old) = flotilla(&["kv", "append", "--server", &addr, "k", "+2"]);
    assert!(ok);
    assert_eq!(old.trim(), "v1");
    let (ok, got) = flotilla(&["kv", "get", "--server", &addr, "k"]);
    assert!(ok);
    assert!(got.starts_with("v1+2\t"), "{got}");
    let (ok, out) = flotilla(&["kv", "put", "--server", &addr, "--version", "0", "k", "x"]);
    assert!(!ok && out.contains("ErrVersion"), "{out}");
    let (ok, _) = flotilla(&["kv", "get", "--server", &addr, "missing"]);
    assert!(!ok);
}

#[test]
fn an_oversized_write_is_a_clear_error_and_changes_nothing() {
    let (_server, addr) = start_server(&["--max-key-bytes", "4", "--max-value-bytes", "16"]);
    assert!(flotilla(&["kv", "put", "--server", &addr, "k", "0123456789"]).0);
    let (ok, out) = flotilla(&["kv", "put", "--server", &addr, "k", "0123456789abcdefg"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("nothing changed")
            && out.contains("value of 17 bytes is over the server's limit of 16 bytes"),
        "{out}"
    );
    let (ok, out) = flotilla(&["kv", "append", "--server", &addr, "k", "abcdefg"]);
    assert!(!ok && out.contains("make the value 17 bytes long"), "{out}");
    let (ok, out) = flotilla(&[
        "kv",
        "put",
        "--server",
        &addr,
        "--version",
        "1",
        "k",
        "0123456789abcdefg",
    ]);
    assert!(!ok && out.contains("limit of 16 bytes"), "{out}");
    let (ok, out) = flotilla(&["kv", "put", "--server", &addr, "kkkkk", "v"]);
    assert!(!ok && out.contains("key of 5 bytes"), "{out}");
    let (ok, got) = flotilla(&["kv", "get", "--server", &addr, "k"]);
    assert!(ok && got.starts_with("0123456789\t(version 1)"), "{got}");
    // Up to the limit exactly is fine.
    let (ok, old) = flotilla(&["kv", "append", "--server", &addr, "k", "abcdef"]);
    assert!(ok && old.trim() == "0123456789", "{old}");
}

#[test]
fn a_connection_over_the_limit_is_refused_with_a_clear_error() {
    let (_server, addr) = start_server(&["--max-connections", "1"]);
    // A connection that never says hello holds the only slot (until the handshake timeout).
    let holder = std::net::TcpStream::connect(&addr).expect("connect");
    let (ok, out) = flotilla(&["kv", "get", "--server", &addr, "k"]);
    assert!(!ok, "{out}");
    assert!(out.contains("connection limit (1 connections)"), "{out}");
    drop(holder);
    // The slot is free once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = flotilla(&["kv", "put", "--server", &addr, "k", "v"]);
        if ok {
            break;
        }
        assert!(out.contains("connection limit"), "{out}");
        assert!(Instant::now() < deadline, "the slot was never freed: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_timeout_flags_reach_the_server() {
    let (_server, addr) = start_server(&["--handshake-timeout", "0.2", "--idle-timeout", "0.05"]);
    // Silent before the handshake: closed after 0.2 s (the default would be 10 s).
    let mut silent = std::net::TcpStream::connect(&addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut got = Vec::new();
    let read = std::io::Read::read_to_end(&mut silent, &mut got);
    assert!(read.is_ok() && got.is_empty(), "{read:?} {got:?}");

    // Idle after a request: the server closes the clerk's connection, and the clerk
    // reconnects on its next operation.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use flotilla_kv::tcp::{ClerkOptions, TcpClerk};
        let addr = addr.parse().expect("address");
        let mut clerk = TcpClerk::connect(addr, ClerkOptions::default())
            .await
            .expect("connect");
        clerk.put("k", "v").await.expect("put");
        let deadline = Instant::now() + Duration::from_secs(10);
        while clerk.reconnects == 0 {
            assert!(
                Instant::now() < deadline,
                "the idle connection was never closed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(clerk.get("k").await.expect("get"), Ok(("v".into(), 1)));
        }
    });
}

#[test]
fn limits_a_frame_cannot_carry_are_refused_at_start() {
    let mut child = Command::new(FLOTILLA)
        .args([
            "kv",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-value-bytes",
            "67108864",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flotilla kv serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with limits a frame cannot carry");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(text.contains("over the frame limit"), "{text}");
}

#[test]
fn serve_help_shows_every_limit_with_its_default() {
    let (ok, help) = flotilla(&["kv", "serve", "--help"]);
    assert!(ok, "{help}");
    for (flag, default) in [
        ("--max-connections", "[default: 512]"),
        ("--handshake-timeout", "[default: 10]"),
        ("--idle-timeout", "[default: 300]"),
        ("--read-timeout", "[default: 30]"),
        ("--write-timeout", "[default: 30]"),
        ("--max-key-bytes", "[default: 4096]"),
        ("--max-value-bytes", "[default: 33554432]"),
    ] {
        let line = help
            .lines()
            .skip_while(|l| !l.contains(flag))
            .take(2)
            .collect::<String>();
        assert!(line.contains(default), "{flag}: {line:?}");
    }
}
