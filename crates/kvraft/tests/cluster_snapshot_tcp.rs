//! A snapshot travels between real nodes over TCP (InstallSnapshot): three KV-on-Raft nodes
//! in one process on loopback, each with its WAL in a temporary directory and a small
//! snapshot threshold. A follower is stopped; the others write until the leader has
//! compacted its log past everything the stopped node holds, so the node, restarted, can
//! catch up only from the leader's snapshot. Its report must show it (a snapshot past its
//! old log, everything the leader had committed applied); then the old leader stops and every
//! value is read back through the two survivors, and finally through a cluster in which the
//! caught-up node is the only one that can lead, so its own restored state machine answers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_kvraft::tcp::{self, ClusterClerk, ClusterClerkOptions};
use flotilla_runtime::{free_loopback_addrs, ClusterId, NodeConfig, NodeReport, NodeTask};

/// The bound on the whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(120);
/// The bound on each wait for a node to report a state.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const ASK: Duration = Duration::from_millis(500);

/// Snapshot once the log (entries and hard state) exceeds this many bytes: every few dozen
/// of this test's writes.
const MAX_RAFT_STATE: u64 = 4 << 10;
/// Keys written before the follower stops.
const BEFORE: usize = 40;
/// Keys written while it is stopped: far more than one snapshot interval.
const WHILE_DOWN: usize = 300;
/// Keys written once the old leader has stopped.
const AFTER: usize = 10;

type Running = NodeTask;

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    free_loopback_addrs(n)
}

fn start(cluster: &ClusterId, id: usize, dir: &Path) -> Running {
    let mut config = NodeConfig::new(cluster.clone(), id as u64, dir.to_path_buf());
    config.rsm.max_raft_state = Some(MAX_RAFT_STATE);
    NodeTask::spawn(|shutdown| tcp::serve(config, None, shutdown))
}

async fn stop(node: Running) {
    node.stop().await.unwrap();
}

fn key(i: usize) -> String {
    format!("k{i:04}")
}

/// A value of its own for every key, long enough that a few dozen fill the threshold.
fn value(i: usize) -> String {
    format!("value-{i:04}-{}", "x".repeat(40 + i % 17))
}

/// Polls the node at `addr` until `done` holds for its report; fails with `what` and the
/// last report at the deadline.
async fn wait_for(addr: SocketAddr, what: &str, done: impl Fn(&NodeReport) -> bool) -> NodeReport {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Ok(report) = tcp::status(addr, ASK).await {
            if done(&report) {
                return report;
            }
            last = Some(report);
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: not {what} after {WAIT:?}; last report: {last:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `members` (those running) until one reports itself leader of the highest term any
/// of them reports; its report.
async fn leader_of(members: &[SocketAddr]) -> NodeReport {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut reports = Vec::new();
        for &addr in members {
            if let Ok(report) = tcp::status(addr, ASK).await {
                reports.push(report);
            }
        }
        let highest = reports.iter().map(|r| r.term).max().unwrap_or(0);
        if let Some(leader) = reports
            .iter()
            .find(|r| r.role == "Leader" && r.term == highest)
        {
            return leader.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {members:?} after {WAIT:?}: {reports:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn read_back(clerk: &mut ClusterClerk, keys: usize, when: &str) {
    for i in 0..keys {
        match clerk.get(&key(i)).await {
            Ok(Ok((got, _))) => {
                assert_eq!(got, value(i), "{when}: {} holds the wrong value", key(i))
            }
            other => panic!("{when}: {} not read back: {other:?}", key(i)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_leaders_compacted_log_catches_up_from_its_snapshot() {
    tokio::time::timeout(WHOLE_TEST, scenario())
        .await
        .expect("the test took too long");
}

async fn scenario() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = ClusterId {
        name: "snapshot-test".into(),
        members: free_addrs(3),
    };
    let addrs = cluster.members.clone();
    let mut nodes: Vec<Option<Running>> = (0..3)
        .map(|i| Some(start(&cluster, i, dirs[i].path())))
        .collect();
    let mut clerk = ClusterClerk::new(addrs.clone(), 11, ClusterClerkOptions::default());
    for i in 0..BEFORE {
        clerk.put(&key(i), &value(i)).await.unwrap();
    }

    // Stop a follower (keeping its data directory), once it holds the first writes.
    let leader = leader_of(&addrs).await;
    let behind = (0..3).find(|&i| i as u64 != leader.id).unwrap();
    let before_stop = wait_for(addrs[behind], "holding the first writes", |r| {
        r.last_index >= leader.commit
    })
    .await;
    stop(nodes[behind].take().unwrap()).await;
    let had = before_stop.last_index;

    // Write while it is down, until the leader has compacted past all it holds.
    for i in BEFORE..BEFORE + WHILE_DOWN {
        clerk.put(&key(i), &value(i)).await.unwrap();
    }
    let running: Vec<SocketAddr> = (0..3).filter(|&i| i != behind).map(|i| addrs[i]).collect();
    let leader = leader_of(&running).await;
    assert!(
        leader.first_index > had + 1,
        "the leader's log still holds entry {} (the stopped node's log ends at {had}): no \
         snapshot would be needed: {leader:#?}",
        had + 1
    );
    let commit_at_last_write = leader.commit;

    // Restarted, the node can catch up only through the leader's snapshot.
    nodes[behind] = Some(start(&cluster, behind, dirs[behind].path()));
    let caught_up = wait_for(
        addrs[behind],
        &format!("caught up to the leader's commit {commit_at_last_write} from a snapshot"),
        |r| r.applied >= commit_at_last_write,
    )
    .await;
    assert!(
        caught_up.snapshot_index > had && caught_up.first_index > had + 1,
        "the node caught up without a snapshot past its old log (which ended at {had}): \
         {caught_up:#?}"
    );

    // The old leader stops; the caught-up node and the other serve every value.
    let old_leader = leader.id as usize;
    let other = (0..3).find(|&i| i != behind && i != old_leader).unwrap();
    stop(nodes[old_leader].take().unwrap()).await;
    read_back(&mut clerk, BEFORE + WHILE_DOWN, "the old leader stopped").await;
    let total = BEFORE + WHILE_DOWN + AFTER;
    for i in BEFORE + WHILE_DOWN..total {
        clerk.put(&key(i), &value(i)).await.unwrap();
    }

    // Either survivor may lead now, so the reads above may not have touched the caught-up
    // node's state machine. Stop the other and bring back the old leader: its log lacks
    // the new term's entries, so it cannot win a vote, and only the caught-up node can
    // lead and answer.
    stop(nodes[other].take().unwrap()).await;
    nodes[old_leader] = Some(start(&cluster, old_leader, dirs[old_leader].path()));
    let pair = [addrs[behind], addrs[old_leader]];
    let new_leader = leader_of(&pair).await;
    assert_eq!(
        new_leader.id, behind as u64,
        "the node whose log lacks the latest term leads: {new_leader:#?}"
    );
    read_back(&mut clerk, total, "the caught-up node leading").await;
    let commit = leader_of(&pair).await.commit;
    wait_for(
        addrs[old_leader],
        &format!("caught up to commit {commit}"),
        |r| r.applied >= commit,
    )
    .await;

    for node in nodes.into_iter().flatten() {
        stop(node).await;
    }
}
