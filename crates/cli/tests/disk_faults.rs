//! Disk faults on a real node: between a SIGKILL and a restart, a node's WAL is damaged —
//! cut in the middle of its last record, a byte of its last record flipped, its last
//! segment deleted. The node recovers to its last good record, catches up from the leader,
//! and the cluster loses no acknowledged write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_kvraft::local::{self, LocalCluster};
use flotilla_kvraft::tcp::{ClusterClerk, ClusterClerkOptions};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
const WAIT: Duration = Duration::from_secs(20);
/// Small segments, so that a node's log has several and the last can be deleted.
const SEGMENT_BYTES: &str = "4096";

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    CutMidRecord,
    FlipLastRecordByte,
    DeleteLastSegment,
}

fn damage(dir: &Path, how: Damage) {
    let all = segments(dir);
    let last = all.last().expect("a segment");
    let bytes = std::fs::read(last).unwrap();
    match how {
        Damage::CutMidRecord => std::fs::write(last, &bytes[..bytes.len() - 3]).unwrap(),
        Damage::FlipLastRecordByte => {
            let mut bad = bytes;
            let at = bad.len() - 2;
            bad[at] ^= 0x5A;
            std::fs::write(last, bad).unwrap()
        }
        Damage::DeleteLastSegment => {
            assert!(all.len() >= 2, "only one segment in {}", dir.display());
            std::fs::remove_file(last).unwrap()
        }
    }
}

async fn write_keys(clerk: &mut ClusterClerk, range: std::ops::Range<usize>) {
    for k in range {
        clerk
            .put(
                &format!("key-{k}"),
                &format!("value-{k}-{}", "x".repeat(40)),
            )
            .await
            .unwrap_or_else(|e| panic!("put key-{k}: {e}"));
    }
}

async fn read_keys(clerk: &mut ClusterClerk, range: std::ops::Range<usize>) {
    for k in range {
        let (value, _) = clerk
            .get(&format!("key-{k}"))
            .await
            .unwrap_or_else(|e| panic!("get key-{k}: {e}"))
            .unwrap_or_else(|e| panic!("key-{k} lost: {e}"));
        assert_eq!(value, format!("value-{k}-{}", "x".repeat(40)));
    }
}

#[test]
fn a_node_whose_wal_tail_is_damaged_recovers_and_catches_up_losing_no_write() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), scenario())
            .await
            .expect("the test took too long")
    });
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let members = local::loopback_addresses(3, 0).unwrap();
    let mut cluster = LocalCluster::start(
        Path::new(FLOTILLA),
        dir.path(),
        "disk-faults",
        members.clone(),
        &["--segment-bytes", SEGMENT_BYTES],
    )
    .unwrap();
    let mut clerk = ClusterClerk::new(members.clone(), 3, ClusterClerkOptions::default());
    let mut written = 0;
    for (round, how) in [
        Damage::CutMidRecord,
        Damage::FlipLastRecordByte,
        Damage::DeleteLastSegment,
    ]
    .into_iter()
    .enumerate()
    {
        write_keys(&mut clerk, written..written + 150).await;
        written += 150;
        let leader = local::wait_for_leader(&members, WAIT)
            .await
            .expect("a leader");
        // Rounds take a follower, the leader, a follower.
        let victim = if round == 1 {
            leader.id as usize
        } else {
            (leader.id as usize + 1) % 3
        };
        cluster.kill(victim).unwrap();
        damage(&cluster.data_dir(victim), how);
        // Writes go on while it is down.
        write_keys(&mut clerk, written..written + 50).await;
        written += 50;
        cluster.start_node(victim).unwrap();
        let leader = local::wait_for_leader(&members, WAIT)
            .await
            .expect("a leader");
        let caught_up = local::wait_until_applied(members[victim], leader.commit, WAIT).await;
        assert!(
            caught_up.is_some(),
            "{how:?}: node {victim} did not catch up to {} (its log: {})",
            leader.commit,
            std::fs::read_to_string(cluster.log_path(victim))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        );
        read_keys(&mut clerk, 0..written).await;
        assert!(
            cluster.exited(victim).is_none(),
            "{how:?}: node {victim} exited"
        );
    }
    // The damaged node's log says what it cut (the first two rounds).
    let logs: String = (0..3)
        .map(|i| std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("cutting off the damaged last record"),
        "{logs}"
    );
    cluster.stop(Duration::from_secs(5));
}
