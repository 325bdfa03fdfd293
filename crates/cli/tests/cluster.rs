//! The replicated store as real processes: `flotilla demo` (3 nodes, the leader SIGKILLed,
//! every write read back, the node restarted and caught up), `flotilla kvraft status`, and
//! `flotilla cluster up` run as a user runs it, stopped with Ctrl-C (SIGINT).

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

#[test]
fn the_demo_kills_the_leader_and_loses_no_write() {
    let out = Command::new(FLOTILLA)
        .arg("demo")
        .output()
        .expect("run flotilla demo");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for step in [
        "SIGKILL to node",
        "read all 100 keys back from the survivors",
        "caught up",
        "read all 200 keys back",
        "stopped every node",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
}

#[test]
fn serve_refuses_zero_threads() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FLOTILLA)
        .args(["kvraft", "serve", "--id", "0", "--peers", "127.0.0.1:1"])
        .arg("--data")
        .arg(dir.path())
        .args(["--threads", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("--threads"), "{text}");
    assert!(text.contains("0 is not in 1..=1024"), "{text}");
}

#[test]
fn serve_refuses_an_id_outside_the_peer_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FLOTILLA)
        .args([
            "kvraft",
            "serve",
            "--id",
            "3",
            "--peers",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("--id 3 is not an index of --peers"), "{text}");
}

#[test]
fn status_of_an_unreachable_cluster_says_so_and_fails() {
    let out = Command::new(FLOTILLA)
        .args(["kvraft", "status", "--cluster", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:1: no answer"));
}

/// How long each step of `cluster_up_serves_reports_one_leader_and_stops_its_nodes_on_sigint`
/// may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// Sends `signal` (`-INT`, `-KILL`) to `pid` with kill(1).
fn send_signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is still a `flotilla kvraft serve` of the member at `addr` (and not a
/// process that got the number since).
fn is_node(pid: u32, addr: SocketAddr) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("kvraft") && cmdline.contains(&addr.to_string())
    })
}

/// `flotilla cluster up` and the nodes it said it started: dropped (a failed test), it kills
/// them all, so no process outlives the test.
struct ClusterUp {
    child: Child,
    nodes: Vec<(SocketAddr, u32)>,
}

impl Drop for ClusterUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &(addr, pid) in &self.nodes {
            if is_node(pid, addr) {
                send_signal("-KILL", pid);
            }
        }
    }
}

/// Runs `flotilla ARGS`, killing it (and failing) if it has not finished within [`STEP`].
fn flotilla(args: &[&str]) -> Output {
    let child = Command::new(FLOTILLA)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flotilla");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(STEP) {
        Ok(output) => output.expect("wait for flotilla"),
        Err(_) => {
            send_signal("-KILL", pid);
            panic!("flotilla {args:?} still running after {STEP:?}");
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

/// One line of `flotilla kvraft status`: `node ID ADDR: ROLE term T leader L commit C applied
/// A log ...`.
#[derive(Debug, PartialEq)]
struct StatusLine {
    id: u64,
    addr: SocketAddr,
    role: String,
    term: u64,
    leader: String,
    commit: u64,
}

fn parse_status(stdout: &str) -> Vec<StatusLine> {
    stdout
        .lines()
        .filter(|l| l.starts_with("node "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |name: &str| {
                let at = words.iter().position(|w| *w == name);
                at.and_then(|at| words.get(at + 1))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                    .to_string()
            };
            let number = |name: &str| {
                after(name)
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} is no number in {line:?}"))
            };
            StatusLine {
                id: words[1].parse().unwrap_or_else(|_| panic!("{line:?}")),
                addr: words[2]
                    .trim_end_matches(':')
                    .parse()
                    .unwrap_or_else(|_| panic!("{line:?}")),
                role: words[3].to_string(),
                term: number("term"),
                leader: after("leader"),
                commit: number("commit"),
            }
        })
        .collect()
}

/// `flotilla cluster up` as a child process: it prints the three addresses, serves `kv put`
/// and `kv get` with `--cluster`, `kvraft status` shows one leader and three nodes agreeing
/// on term and commit, and SIGINT (Ctrl-C) stops it and every node it started.
#[test]
fn cluster_up_serves_reports_one_leader_and_stops_its_nodes_on_sigint() {
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
    let mut up = ClusterUp {
        child,
        nodes: Vec::new(),
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
    let logs = |dir: &Path| {
        let mut all = String::new();
        for name in [
            "cluster-up.stderr",
            "cluster/node-0.log",
            "cluster/node-1.log",
            "cluster/node-2.log",
        ] {
            let log = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            all += &format!("--- {name}:\n{log}\n");
        }
        all
    };

    // Its stdout: "  node I: ADDR (pid P), etcd API G" for each node, then "clients:
    // --cluster A,B,C" and "etcd clients: --endpoints G,G,G",
    // then whether a node leads; the last line says Ctrl-C stops the cluster.
    let deadline = Instant::now() + STEP;
    let mut printed = Vec::new();
    let mut cluster_arg = None;
    let mut grpc_addrs: Vec<SocketAddr> = Vec::new();
    let mut endpoints_arg = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "cluster up: no line saying Ctrl-C stops the cluster ({e}); printed {printed:#?}\n{}",
                logs(dir.path())
            ),
        };
        printed.push(line.clone());
        if let Some(rest) = line.trim_start().strip_prefix("node ") {
            if let Some((i, rest)) = rest.split_once(": ") {
                if let Some((addr, pid)) = rest.split_once(" (pid ") {
                    let i: usize = i.parse().unwrap();
                    assert_eq!(i, up.nodes.len(), "{printed:#?}");
                    let (pid, grpc) = pid
                        .split_once("), etcd API ")
                        .unwrap_or_else(|| panic!("no etcd API address: {line}"));
                    up.nodes.push((addr.parse().unwrap(), pid.parse().unwrap()));
                    grpc_addrs.push(grpc.parse::<SocketAddr>().unwrap());
                }
            }
        }
        if let Some(arg) = line.strip_prefix("clients: --cluster ") {
            cluster_arg = Some(arg.to_string());
        }
        if let Some(arg) = line.strip_prefix("etcd clients: --endpoints ") {
            endpoints_arg = Some(arg.to_string());
        }
        if line.contains("Ctrl-C stops the cluster") {
            break;
        }
    }
    assert_eq!(up.nodes.len(), 3, "{printed:#?}");
    let listed: Vec<String> = grpc_addrs.iter().map(|a| a.to_string()).collect();
    assert_eq!(endpoints_arg, Some(listed.join(",")), "{printed:#?}");
    for addr in &grpc_addrs {
        assert!(
            TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok(),
            "nothing serves the etcd API at {addr}\n{}",
            logs(dir.path())
        );
    }
    let members = up
        .nodes
        .iter()
        .map(|(addr, _)| addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(cluster_arg.as_deref(), Some(&*members), "{printed:#?}");
    for &(addr, pid) in &up.nodes {
        assert!(is_node(pid, addr), "no node process {pid} for {addr}");
    }

    let put = flotilla(&[
        "kv",
        "put",
        "--cluster",
        &members,
        "greeting",
        "hello cluster",
    ]);
    assert!(put.status.success(), "{}", text(&put));
    let get = flotilla(&["kv", "get", "--cluster", &members, "greeting"]);
    assert!(get.status.success(), "{}", text(&get));
    let got = String::from_utf8_lossy(&get.stdout);
    assert_eq!(
        got.split('\t').next(),
        Some("hello cluster"),
        "{}",
        text(&get)
    );

    // Every node answers, one leads, and once the followers have heard the leader's commit
    // all three agree on term, leader and commit (bounded: followers learn the commit with
    // the next heartbeat, 100 ms).
    let deadline = Instant::now() + STEP;
    let settled = loop {
        let status = flotilla(&["kvraft", "status", "--cluster", &members]);
        let stdout = String::from_utf8_lossy(&status.stdout).to_string();
        let nodes = parse_status(&stdout);
        let leaders: Vec<&StatusLine> = nodes.iter().filter(|n| n.role == "Leader").collect();
        let agree = nodes.windows(2).all(|w| {
            w[0].term == w[1].term && w[0].commit == w[1].commit && w[0].leader == w[1].leader
        });
        if status.status.success() && nodes.len() == 3 && leaders.len() == 1 && agree {
            break (stdout, nodes);
        }
        assert!(
            Instant::now() < deadline,
            "no settled status after {STEP:?}; the last:\n{}",
            text(&status)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, nodes) = settled;
    let leader = nodes.iter().find(|n| n.role == "Leader").unwrap();
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.id, i as u64, "{stdout}");
        assert_eq!(node.addr, up.nodes[i].0, "{stdout}");
        assert_eq!(node.leader, leader.id.to_string(), "{stdout}");
        if node.id != leader.id {
            assert_eq!(node.role, "Follower", "{stdout}");
        }
    }
    // The leader's no-op and the put, at least.
    assert!(leader.term >= 1 && leader.commit >= 2, "{stdout}");
    // The leader lists its two followers.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("  follower "))
            .count(),
        2,
        "{stdout}"
    );

    // Ctrl-C: cluster up stops, and its nodes with it.
    send_signal("-INT", up.child.id());
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cluster up still running {STEP:?} after SIGINT\n{}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = lines.iter().collect();
    assert!(
        status.success(),
        "cluster up exited with {status} after SIGINT; printed {rest:#?}\n{}",
        logs(dir.path())
    );
    assert!(
        rest.iter().any(|l| l == "flotilla cluster: stopped"),
        "{rest:#?}"
    );
    let deadline = Instant::now() + STEP;
    for addr in &grpc_addrs {
        while !matches!(
            TcpStream::connect_timeout(addr, Duration::from_millis(500)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        ) {
            assert!(
                Instant::now() < deadline,
                "the etcd API at {addr} still there {STEP:?} after cluster up exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for &(addr, pid) in &up.nodes {
        loop {
            let refused = matches!(
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused
            );
            if refused && !is_node(pid, addr) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node process {pid} at {addr} still there {STEP:?} after cluster up exited \
                 (refusing connections: {refused})\n{}",
                logs(dir.path())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
