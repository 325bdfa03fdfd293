//! `flotilla demo`: the replicated store for real. Three `flotilla kvraft serve` processes
//! on loopback, their data in a temporary directory; writes; the leader killed with
//! SIGKILL; every write read back from the survivors; the node restarted and caught up;
//! everything stopped. Each step is narrated, and each is checked: a lost or wrong value
//! ends the demo with an error.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::local::{self, LocalCluster};
use crate::tcp::{ClusterClerk, ClusterClerkOptions};

const KEYS: usize = 100;
const WAIT: Duration = Duration::from_secs(10);

/// Runs the demo with the `flotilla` executable `exe`.
pub async fn run(exe: &Path) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-demo-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let members = local::loopback_addresses(3, 0).map_err(|e| e.to_string())?;
    let mut cluster = LocalCluster::start(exe, dir.path(), "demo", members, &[])
        .map_err(|e| format!("cannot start the nodes: {e}"))?;
    let started = Instant::now();
    let say = |what: String| println!("[{:>6.2}s] {what}", started.elapsed().as_secs_f64());
    say(format!(
        "3 nodes on {} (data and logs in {})",
        cluster.members_arg(),
        dir.path().display()
    ));
    let leader = local::wait_for_leader(cluster.members(), WAIT)
        .await
        .ok_or("no leader within 10 s")?;
    say(format!("node {} leads term {}", leader.id, leader.term));

    let mut clerk = ClusterClerk::new(
        cluster.members().to_vec(),
        1,
        ClusterClerkOptions::default(),
    );
    let t = Instant::now();
    for k in 0..KEYS {
        clerk
            .put(&format!("key-{k}"), &format!("value-{k}"))
            .await
            .map_err(|e| format!("put key-{k}: {e}"))?;
    }
    say(format!(
        "wrote {KEYS} keys in {:.0} ms (each acknowledged once durable on a majority)",
        t.elapsed().as_secs_f64() * 1e3
    ));

    let victim = leader.id as usize;
    cluster.kill(victim).map_err(|e| e.to_string())?;
    say(format!("SIGKILL to node {victim}, the leader"));
    let survivors: Vec<_> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| cluster.members()[i])
        .collect();
    let next = local::wait_for_leader(&survivors, WAIT)
        .await
        .ok_or("no new leader among the survivors within 10 s")?;
    say(format!("node {} leads term {}", next.id, next.term));
    read_back(&mut clerk, 0..KEYS).await?;
    say(format!("read all {KEYS} keys back from the survivors"));
    for k in KEYS..2 * KEYS {
        clerk
            .put(&format!("key-{k}"), &format!("value-{k}"))
            .await
            .map_err(|e| format!("put key-{k}: {e}"))?;
    }
    say(format!(
        "wrote {KEYS} more keys while node {victim} is down"
    ));

    let commit = local::wait_for_leader(&survivors, WAIT)
        .await
        .ok_or("the leader is gone")?
        .commit;
    cluster.start_node(victim).map_err(|e| e.to_string())?;
    say(format!("node {victim} restarts from its data directory"));
    let t = Instant::now();
    let caught_up = local::wait_until_applied(cluster.members()[victim], commit, WAIT)
        .await
        .ok_or_else(|| format!("node {victim} did not catch up to index {commit} within 10 s"))?;
    say(format!(
        "node {victim} caught up in {:.0} ms: applied {} (the leader had committed {commit}), {} bytes of log in {} segment(s)",
        t.elapsed().as_secs_f64() * 1e3,
        caught_up.applied,
        caught_up.log_bytes,
        caught_up.segments
    ));
    read_back(&mut clerk, 0..2 * KEYS).await?;
    say(format!("read all {} keys back", 2 * KEYS));
    cluster.stop(Duration::from_secs(5));
    say("stopped every node".into());
    Ok(())
}

async fn read_back(clerk: &mut ClusterClerk, keys: std::ops::Range<usize>) -> Result<(), String> {
    for k in keys {
        let key = format!("key-{k}");
        match clerk.get(&key).await {
            Ok(Ok((value, _))) if value == format!("value-{k}") => {}
            Ok(Ok((value, _))) => return Err(format!("{key} reads {value:?}, not value-{k}")),
            Ok(Err(e)) => return Err(format!("{key} is lost: {e}")),
            Err(e) => return Err(format!("get {key}: {e}")),
        }
    }
    Ok(())
}
