//! The replicated store as real processes: `flotilla demo` (3 nodes, the leader SIGKILLed,
//! every write read back, the node restarted and caught up) and `flotilla kvraft status`.

use std::process::Command;

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
