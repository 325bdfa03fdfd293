//! etcd's v3 API on a real 3-node cluster over TCP on loopback, in one process (each node
//! `tcp::serve` with its gRPC endpoint): puts sent to a surviving node while the leader has
//! just stopped are retried until a new leader applies them; a lease kept alive through a
//! follower outlives a leader change while an idle one expires under the new leader;
//! Maintenance.Status reports the commit index as `raft_index`; a node that is cut off from
//! its majority does not answer a linearizable read with a stale value.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_etcd::pb::etcdserverpb as pb;
use flotilla_kvraft::etcd::{EtcdConfig, REQUEST_TIMEOUT};
use flotilla_kvraft::tcp::{self, GrpcConfig};
use flotilla_runtime::{free_loopback_addrs, ClusterId, NodeConfig, NodeTask};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The bound on each whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(40);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

/// How long a leader may take to emerge (elections take 300–600 ms).
const ELECTION_WAIT: Duration = Duration::from_secs(5);

/// A cluster of three nodes, each serving the etcd API.
struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    cluster: ClusterId,
    grpc: Vec<SocketAddr>,
    nodes: Vec<Option<NodeTask>>,
}

impl Cluster {
    fn start() -> Self {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs = free_loopback_addrs(6);
        let cluster = ClusterId {
            name: "etcd-test".into(),
            members: addrs[..3].to_vec(),
        };
        let grpc = addrs[3..].to_vec();
        let mut this = Cluster {
            nodes: (0..3).map(|_| None).collect(),
            _dirs: dirs,
            cluster,
            grpc,
        };
        for i in 0..3 {
            this.start_node(i);
        }
        this
    }

    fn start_node(&mut self, i: usize) {
        let dir: &Path = self._dirs[i].path();
        let config = NodeConfig::new(self.cluster.clone(), i as u64, dir.to_path_buf());
        let grpc = GrpcConfig {
            addr: self.grpc[i],
            etcd: EtcdConfig {
                grpc_members: self.grpc.iter().copied().map(Some).collect(),
            },
        };
        self.nodes[i] = Some(NodeTask::spawn(|shutdown| {
            tcp::serve(config, Some(grpc), shutdown)
        }));
    }

    async fn stop(&mut self, i: usize) {
        self.nodes[i]
            .take()
            .expect("the node runs")
            .stop()
            .await
            .unwrap();
    }

    /// The node all running nodes agree leads, once they do.
    async fn leader(&self) -> usize {
        let running: Vec<usize> = (0..3).filter(|&i| self.nodes[i].is_some()).collect();
        poll_until(
            ELECTION_WAIT,
            "the running nodes to agree on a leader",
            || async {
                let mut leaders = Vec::new();
                for &i in &running {
                    match tcp::status(self.cluster.members[i], Duration::from_secs(1)).await {
                        Ok(report) => leaders.push(report.leader),
                        Err(_) => return None,
                    }
                }
                match leaders[0] {
                    Some(l)
                        if leaders.iter().all(|&x| x == Some(l))
                            && running.contains(&(l as usize)) =>
                    {
                        Some(l as usize)
                    }
                    _ => None,
                }
            },
        )
        .await
    }

    async fn channel(&self, i: usize) -> Channel {
        let endpoint = format!("http://{}", self.grpc[i]);
        poll_until(ELECTION_WAIT, "the gRPC endpoint to accept", || async {
            Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
                .ok()
        })
        .await
    }

    async fn stop_all(mut self) {
        for i in 0..3 {
            if self.nodes[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

/// Polls `check` every [`POLL`] until it gives a value; panics after `within`.
async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what} in vain"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Any call, bounded by a little more than the server's own retry window.
async fn within<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), call)
        .await
        .expect("the call is answered within the server's retry window")
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str, lease: i64) {
    let r = within(kv.put(pb::PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    }))
    .await;
    if let Err(e) = r {
        panic!("put {key}={value}: {e}");
    }
}

/// The value of `key` (None if absent), read linearizably or from the node's own state.
async fn get(
    kv: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let r = within(kv.range(pb::RangeRequest {
        key: key.into(),
        serializable,
        ..Default::default()
    }))
    .await?
    .into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// Puts `count` keys `{prefix}-k{n}` through `kv`, each within the server's retry window.
async fn put_all(mut kv: KvClient<Channel>, prefix: String, count: usize) {
    for k in 0..count {
        let sent = Instant::now();
        put(&mut kv, &format!("{prefix}-k{k}"), &format!("v{k}"), 0).await;
        assert!(
            sent.elapsed() <= REQUEST_TIMEOUT + Duration::from_secs(1),
            "a put took {:?}",
            sent.elapsed()
        );
    }
}

/// Reads back what [`put_all`] wrote, linearizably.
async fn check_all(kv: &mut KvClient<Channel>, prefix: &str, count: usize) {
    for k in 0..count {
        let key = format!("{prefix}-k{k}");
        let value = get(kv, &key, false).await.unwrap();
        assert_eq!(value, Some(format!("v{k}").into_bytes()), "{key}");
    }
}

/// The leader and one follower stop; puts sent to the node left, which knows no leader and
/// turns them away locally, are retried until the follower is back and a new leader (not
/// the old one) applies them, each within the retry window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_a_leader_change_are_retried() {
    tokio::time::timeout(WHOLE_TEST, async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (survivor, restarted) = (others[0], others[1]);
        let mut kv = KvClient::new(cluster.channel(survivor).await);
        // Warm up the forwarding path (a kept connection to the leader).
        put(&mut kv, "warm", "x", 0).await;
        cluster.stop(leader).await;
        cluster.stop(restarted).await;
        let addr = cluster.cluster.members[survivor];
        poll_until(
            ELECTION_WAIT,
            "the survivor to forget the leader",
            || async {
                let report = tcp::status(addr, Duration::from_secs(1)).await.ok()?;
                report.leader.is_none().then_some(())
            },
        )
        .await;
        let writers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(put_all(kv.clone(), format!("w{w}"), 5)))
            .collect();
        // Without a majority nothing can be applied: the puts wait (turned away, retried).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a put finished without a majority"
        );
        let restarting = Instant::now();
        cluster.start_node(restarted);
        for writer in writers {
            writer.await.unwrap();
        }
        eprintln!(
            "20 puts done {:?} after the follower restarted",
            restarting.elapsed()
        );
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        for i in [survivor, restarted] {
            let mut kv = KvClient::new(cluster.channel(i).await);
            for w in 0..4 {
                check_all(&mut kv, &format!("w{w}"), 5).await;
            }
        }
        cluster.stop_all().await;
    })
    .await
    .expect("the test took too long");
}

/// Puts sent to the survivors at once after the leader stopped, while they may still take
/// it for the leader: a put forwarded to it finds the kept connection closed or the
/// connection refused, never reaches a live node, and must be retried (until a new leader
/// takes it), not answered UNAVAILABLE at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_right_after_the_leader_stops_are_retried() {
    tokio::time::timeout(WHOLE_TEST, async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut clients = Vec::new();
        for &i in &survivors {
            let mut kv = KvClient::new(cluster.channel(i).await);
            put(&mut kv, &format!("warm{i}"), "x", 0).await;
            clients.push(kv);
        }
        cluster.stop(leader).await;
        let writers: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(w, kv)| tokio::spawn(put_all(kv, format!("w{w}"), 10)))
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        for kv in clients.iter_mut() {
            for w in 0..2 {
                check_all(kv, &format!("w{w}"), 10).await;
            }
        }
        cluster.stop_all().await;
    })
    .await
    .expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_lease_survives_a_leader_change_and_an_idle_one_expires() {
    const TTL: i64 = 3;
    tokio::time::timeout(WHOLE_TEST, async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let follower = (0..3).find(|&i| i != leader).unwrap();
        let channel = cluster.channel(follower).await;
        let mut kv = KvClient::new(channel.clone());
        let mut lease = LeaseClient::new(channel.clone());
        let grant = |id| {
            let mut lease = lease.clone();
            async move {
                within(lease.lease_grant(pb::LeaseGrantRequest { ttl: TTL, id }))
                    .await
                    .expect("grant")
                    .into_inner()
            }
        };
        let kept = grant(0).await.id;
        let idle = grant(0).await.id;
        assert_ne!(kept, idle);
        put(&mut kv, "kept", "k", kept).await;
        put(&mut kv, "idle", "i", idle).await;

        // Keep `kept` alive through the follower, twice a second, until told to stop.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut responses = within(lease.lease_keep_alive(ReceiverStream::new(rx)))
            .await
            .expect("keep-alive stream")
            .into_inner();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let keeper = tokio::spawn(async move {
            let mut renewals = 0;
            loop {
                tx.send(pb::LeaseKeepAliveRequest { id: kept })
                    .await
                    .expect("the stream takes requests");
                let r = within(responses.message())
                    .await
                    .expect("a keep-alive answer")
                    .expect("the stream goes on");
                assert_eq!(r.id, kept);
                assert_eq!(r.ttl, TTL, "a keep-alive renewed the lease to its TTL");
                renewals += 1;
                tokio::select! {
                    _ = &mut stop_rx => return renewals,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });

        cluster.stop(leader).await;
        let killed = Instant::now();
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        // The idle lease expires under the new leader (a full TTL from its promotion).
        poll_until(
            Duration::from_secs(TTL as u64) + ELECTION_WAIT,
            "the idle lease's key to vanish",
            || {
                let mut kv = kv.clone();
                async move {
                    match get(&mut kv, "idle", false).await {
                        Ok(None) => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
        // Its revoke went through the log: every running node deleted the key.
        for i in (0..3).filter(|&i| i != leader) {
            let kv = KvClient::new(cluster.channel(i).await);
            poll_until(
                Duration::from_secs(2),
                "each node to apply the revoke",
                || {
                    let mut kv = kv.clone();
                    async move {
                        get(&mut kv, "idle", true)
                            .await
                            .ok()?
                            .is_none()
                            .then_some(())
                    }
                },
            )
            .await;
        }
        // The kept-alive key stays well past its TTL from the leader change.
        let until = killed + Duration::from_secs(2 * TTL as u64);
        while Instant::now() < until {
            assert_eq!(
                get(&mut kv, "kept", false).await.unwrap(),
                Some(b"k".to_vec()),
                "the kept-alive lease's key vanished {:?} after the leader stopped",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop_tx.send(());
        let renewals = keeper.await.unwrap();
        assert!(renewals >= 8, "only {renewals} keep-alives answered");
        cluster.stop_all().await;
    })
    .await
    .expect("the test took too long");
}

/// Maintenance.Status on every node: `raft_index` is the node's commit index (what etcd.rs
/// reports, as the node port's own report tells it), never below `raft_applied_index`, the
/// same on every node once the cluster is idle, and up by at least one per put.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_the_raft_index() {
    tokio::time::timeout(WHOLE_TEST, async {
        let cluster = Cluster::start();
        cluster.leader().await;
        let mut maintenance = Vec::new();
        for i in 0..3 {
            maintenance.push(MaintenanceClient::new(cluster.channel(i).await));
        }
        // Once idle, each node's raft_index is its commit index and all agree.
        let settled = |maintenance: Vec<MaintenanceClient<Channel>>| {
            let members = cluster.cluster.members.clone();
            async move {
                poll_until(
                    Duration::from_secs(5),
                    "Status to match the commit index",
                    || {
                        let mut maintenance = maintenance.clone();
                        let members = members.clone();
                        async move {
                            let mut indexes = Vec::new();
                            for (i, m) in maintenance.iter_mut().enumerate() {
                                let s = within(m.status(pb::StatusRequest {}))
                                    .await
                                    .ok()?
                                    .into_inner();
                                assert!(
                                    s.raft_applied_index <= s.raft_index,
                                    "applied {} past the commit index {}",
                                    s.raft_applied_index,
                                    s.raft_index
                                );
                                let report =
                                    tcp::status(members[i], Duration::from_secs(1)).await.ok()?;
                                if report.commit != s.raft_index
                                    || s.raft_applied_index != s.raft_index
                                {
                                    return None;
                                }
                                indexes.push(s.raft_index);
                            }
                            indexes.iter().all(|&x| x == indexes[0]).then(|| indexes[0])
                        }
                    },
                )
                .await
            }
        };
        let before = settled(maintenance.clone()).await;
        assert!(before >= 1, "the leader's no-op is committed: {before}");
        let mut kv = KvClient::new(cluster.channel(0).await);
        const PUTS: u64 = 10;
        for k in 0..PUTS {
            put(&mut kv, &format!("s{k}"), "v", 0).await;
        }
        let after = settled(maintenance).await;
        assert!(
            after >= before + PUTS,
            "raft_index went from {before} to {after} over {PUTS} puts"
        );
        cluster.stop_all().await;
    })
    .await
    .expect("the test took too long");
}

/// A follower misses a write (it is down), then comes back alone, cut off from its
/// majority (the other two stopped): a serializable Range there answers its own stale state
/// (the old value, or none yet), a linearizable one the new value or an error, never a
/// stale one.
///
/// Not a network cut in front of a running follower: nodes dial each other at the member
/// addresses they listen on, so a proxy cannot be put in front of one node's peer port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_does_not_answer_stale_linearizable_reads() {
    tokio::time::timeout(WHOLE_TEST, async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let cut = (0..3).find(|&i| i != leader).unwrap();
        let mut at_leader = KvClient::new(cluster.channel(leader).await);
        put(&mut at_leader, "x", "old", 0).await;
        let at_cut = KvClient::new(cluster.channel(cut).await);
        poll_until(
            Duration::from_secs(5),
            "the follower to apply the first put",
            || {
                let mut kv = at_cut.clone();
                async move { (get(&mut kv, "x", true).await.ok()?? == b"old").then_some(()) }
            },
        )
        .await;
        cluster.stop(cut).await;
        put(&mut at_leader, "x", "new", 0).await;
        for i in (0..3).filter(|&i| i != cut) {
            cluster.stop(i).await;
        }
        cluster.start_node(cut);
        let mut at_cut = KvClient::new(cluster.channel(cut).await);
        // Its own state is stale: the old value, or nothing yet (a restarted node applies
        // its log as far as a leader tells it is committed).
        let own = get(&mut at_cut, "x", true).await.unwrap();
        assert!(
            own.is_none() || own == Some(b"old".to_vec()),
            "a serializable read on the cut-off node answered {own:?}"
        );
        match get(&mut at_cut, "x", false).await {
            Ok(value) => assert_eq!(
                value,
                Some(b"new".to_vec()),
                "a linearizable read answered a stale value"
            ),
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        }
        cluster.stop_all().await;
    })
    .await
    .expect("the test took too long");
}
