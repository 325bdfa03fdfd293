//! The real KV server as a process: concurrent clerks over TCP while the server withholds a
//! fifth of its replies; the recorded history must be linearizable (so every retried write
//! took effect exactly once).

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

#[test]
fn dropped_replies_still_give_a_linearizable_exactly_once_history() {
    let started = Instant::now();
    let (_server, addr) = start_server(&["--drop-replies", "0.2", "--seed", "7"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
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
    assert!(ok && verdict.starts_with("linearizable"), "{verdict}");
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
