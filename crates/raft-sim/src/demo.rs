//! The narrated run behind `flotilla demo`: a five-server group in the simulator taken
//! through an election, a leader crash, a restart, a partition with the leader in the
//! minority, and the healing — printing what Raft does at each step, in virtual time.

use std::time::Duration;

use flotilla_sim::sleep;

use crate::cluster::{int_cmd, Cluster, ClusterConfig};

/// Runs the demo at `seed`, printing as it goes. Panics if Raft misbehaves (the same checks
/// as the tests run throughout).
pub fn run(seed: u64) {
    println!("Flotilla demo: a 5-server Raft group in the deterministic simulator (seed {seed})");
    println!("Replay this exact run with: flotilla demo --seed {seed}\n");
    let mut cfg = ClusterConfig::new(5, true, true);
    cfg.narrate = true;
    let ((hash, events), elapsed) =
        crate::run_cluster(seed, cfg, |c| async move { script(&c).await });
    println!(
        "\nDone: {:.1} s of virtual time, {events} traced events, trace hash {hash:016x}, seed {seed}.",
        elapsed.as_secs_f64()
    );
}

async fn commit(c: &Cluster, what: u64, expected: usize) -> u64 {
    let index = c.one(&int_cmd(what), expected, true).await;
    c.narrate(format!(
        "command {what} committed at index {index} on {expected}+ servers"
    ));
    index
}

async fn script(c: &Cluster) {
    let n = c.n();
    c.narrate("five servers start; nobody leads yet".into());
    let leader = c.check_one_leader().await;
    let (term, _) = c.get_state(leader).expect("leader is alive");
    c.narrate(format!("=> node {leader} leads term {term}"));

    for k in 1..=5 {
        commit(c, k, n).await;
    }

    c.narrate(format!("-- crashing the leader, node {leader}"));
    c.crash(leader);
    let second = c.check_one_leader().await;
    c.narrate(format!("=> node {second} took over"));
    for k in 6..=8 {
        commit(c, k, n - 1).await;
    }
    c.narrate(format!("-- restarting node {leader} from its disk"));
    c.restart(leader);
    commit(c, 9, n).await;
    c.narrate(format!("node {leader} caught up"));

    let minority = [second, (second + 1) % n];
    let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
    c.narrate(format!(
        "-- partition: {minority:?} (with the leader) | {majority:?}"
    ));
    c.partition(&[&minority, &majority]);
    if let Some((index, _)) = c.start_cmd(second, &int_cmd(666)) {
        c.narrate(format!(
            "old leader {second} accepts command 666 at index {index}; it cannot commit"
        ));
    }
    sleep(Duration::from_secs(2)).await;
    let third = c.check_one_leader().await;
    c.narrate(format!("=> majority side elected node {third}"));
    for k in 10..=12 {
        commit(c, k, majority.len()).await;
    }

    c.narrate("-- healing the partition".into());
    for i in 0..n {
        c.connect(i);
    }
    let last = commit(c, 13, n).await;
    let (count, _) = c.n_committed(last);
    let lost = (1..=last).all(|i| c.n_committed(i).1 != Some(int_cmd(666)));
    c.narrate(format!(
        "all {count} servers applied indexes 1..={last}; the minority's command 666 {}",
        if lost {
            "was discarded, as Raft requires"
        } else {
            "committed (!)"
        }
    ));
    assert!(
        lost,
        "an entry accepted by a minority leader must not commit"
    );
    let leaders = c.invariants().leaders().len();
    c.narrate(format!(
        "{leaders} terms had a leader; never two in one term; every check held"
    ));
}
