//! The sharded store as real processes: `flotilla cluster up --groups 2` run as a user runs
//! it (clients through `flotilla shard`, a shard moved, a checked history, Ctrl-C), and
//! `flotilla bench shard-move`, which moves a loaded shard and reads every key back.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

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
fn a_loaded_shard_moves_between_groups_of_real_processes_with_every_key() {
    let (ok, text) = flotilla(&["bench", "shard-move", "--keys", "2000", "--runs", "1"]);
    assert!(ok, "{text}");
    assert!(text.contains("| 1 | "), "no result row in:\n{text}");
}

/// Stops `cluster up` if the test ends early (a failed assertion): SIGINT, so that it stops
/// its nodes, then SIGKILL after 15 s.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn cluster_up_with_groups_serves_shard_clients_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(FLOTILLA)
        .args([
            "cluster",
            "up",
            "--nodes",
            "3",
            "--groups",
            "2",
            "--base-port",
            "0",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let mut up = StopOnDrop(up);
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    let ctrl = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no 'every group joined' line; printed: {printed:#?}"));
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("every group joined") {
            break rest.rsplit("--ctrl ").next().unwrap().trim().to_string();
        }
        assert!(!line.starts_with("not ready"), "{printed:#?}");
    };
    let nodes: Vec<SocketAddr> = printed
        .iter()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(what, _)| what.starts_with("controller") || what.starts_with("group"))
        .flat_map(|(_, addrs)| {
            addrs
                .split(',')
                .map(|a| a.parse().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(nodes.len(), 9, "{printed:#?}");

    let (ok, text) = flotilla(&["shard", "put", "--ctrl", &ctrl, "greeting", "hello"]);
    assert!(ok, "{text}");
    // Every node answers once it has started (the join needed only each group's majority).
    let answered = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (ok, text) = flotilla(&["shard", "status", "--ctrl", &ctrl]);
        if ok {
            break text;
        }
        assert!(
            Instant::now() < answered,
            "not every node answers after 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("configuration 1"), "{text}");
    // Move one of group 100's shards to group 101.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("group 100: shards"))
        .unwrap_or_else(|| panic!("{text}"));
    let shard = line
        .split('[')
        .nth(1)
        .unwrap()
        .split([',', ']'])
        .next()
        .unwrap()
        .trim();
    let (ok, text) = flotilla(&[
        "shard", "move", "--ctrl", &ctrl, "--shard", shard, "--gid", "101",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("configuration 2"), "{text}");
    let (ok, text) = flotilla(&["shard", "get", "--ctrl", &ctrl, "greeting"]);
    assert!(ok && text.starts_with("hello"), "{text}");
    let history = dir.path().join("history.jsonl");
    let history_arg = history.to_str().unwrap();
    let (ok, text) = flotilla(&[
        "shard",
        "bench",
        "--ctrl",
        &ctrl,
        "--clients",
        "8",
        "--seconds",
        "1",
        "--keys",
        "50",
        "--append-share",
        "0.5",
        "--history",
        history_arg,
    ]);
    assert!(ok, "{text}");
    let (ok, text) = flotilla(&["check", history_arg]);
    assert!(ok, "{text}");
    // Every group node reaches configuration 2 (followers apply it after their leader).
    let settled = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = flotilla(&["shard", "status", "--ctrl", &ctrl]);
        let at_2 = text
            .lines()
            .filter(|l| l.contains("at configuration 2"))
            .count();
        if ok && at_2 == 6 {
            break;
        }
        assert!(
            Instant::now() < settled,
            "not every group node at configuration 2 after 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(up.0.id() as libc::pid_t, libc::SIGINT);
    }
    let stopped = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < stopped,
            "cluster up still runs 30 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    for addr in nodes {
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{addr} still accepts connections after Ctrl-C"
        );
    }
}

#[test]
fn cluster_up_refuses_a_number_of_groups_the_store_cannot_have() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shards");
    for groups in ["0", "13", "2000", "18446744073709551615", "-1"] {
        let up = Command::new(FLOTILLA)
            .args(["cluster", "up", "--base-port", "0"])
            .arg(format!("--groups={groups}"))
            .arg("--dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run flotilla");
        let mut up = StopOnDrop(up);
        // A refusal is at once; a store that starts runs until Ctrl-C (StopOnDrop sends it).
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = up.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "--groups {groups}: cluster up is still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(up.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(
            status.code(),
            Some(2),
            "--groups {groups}: {status:?}\n{err}"
        );
        assert!(
            err.contains("from 1 to 12"),
            "--groups {groups}: no clear error:\n{err}"
        );
        assert!(!data.exists(), "--groups {groups}: nodes were started");
    }
}
