//! etcd's v3 API on the replicated store ([`flotilla_kvraft::etcd::ReplicaBackend`]) through a
//! real 3-node cluster over TCP on loopback, in one process: each node is `tcp::serve` with
//! its gRPC endpoint, and the tests speak to those endpoints with etcd's generated clients.
//! What a node does alone (forwarding, leadership, lease deadlines) only shows in a cluster
//! whose leader changes or whose members do not hear each other, hence these scenarios:
//!
//! - `a_cut_off_follower_does_not_answer_stale_linearizable_reads`: a running follower that
//!   hears nothing from the others (the test holds every connection slot of its port, so
//!   their links to it are refused) keeps an old value, as its serializable read shows, but
//!   never gives it to a linearizable read, through gRPC or on its node port (what other nodes
//!   forward to a leader); healed, it catches up.
//! - `writes_sent_before_the_first_election_wait_for_a_leader`,
//!   `writes_during_a_leader_change_are_retried` (a node left without a leader) and
//!   `puts_right_after_the_leader_stops_are_retried` (followers still taking the stopped node
//!   for the leader): a write turned away for want of a leader, or never delivered to one, is
//!   retried until a leader applies it, within etcd's request timeout, not answered at once.
//! - `requests_forwarded_together_each_get_their_own_answer`: 64 clients at a follower at once,
//!   whose requests reach the leader in batches, each get the answer to their own request.
//! - `status_reports_the_raft_index`: Maintenance.Status's `raft_index` is the commit index
//!   and `raft_applied_index` the applied one (under load the first is seen ahead of the
//!   second; at rest both are the node's own report's, on every node, past every put).
//! - `a_kept_alive_lease_survives_a_leader_change_and_an_idle_one_expires`: a lease kept alive
//!   through a follower outlives its TTL under one leader and across a leader change; one left
//!   alone loses its key under the new leader, through the log (every node deletes it), no
//!   sooner than its full TTL after the old leader stopped; a put forwarded by a follower keeps
//!   its lease.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_etcd::pb::etcdserverpb as pb;
use flotilla_kvraft::etcd::{EtcdAnswer, EtcdConfig, EtcdRequest, REQUEST_TIMEOUT};
use flotilla_kvraft::tcp::{self, GrpcConfig, NodeReply, NodeRequest, PROTOCOL};
use flotilla_mvcc::{KeyRange, RangeRequest};
use flotilla_rsm::Replied;
use flotilla_runtime::{free_loopback_addrs, ClusterId, NodeConfig, NodeTask, PortConfig};
use flotilla_wire::{Client, DEFAULT_MAX_FRAME};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

/// The bound on each whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(60);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);
/// How long a (new) leader may take to emerge and be known to every running node.
const ELECTION_WAIT: Duration = Duration::from_secs(6);
/// The bound on one call that must be answered: a little more than the server's own window.
const CALL: Duration = REQUEST_TIMEOUT.saturating_add(Duration::from_secs(2));
/// The bound on one call made while polling.
const ASK: Duration = Duration::from_secs(1);

type NodeClient = Client<NodeRequest, NodeReply>;

/// Held shared by every test, and alone by the one that loads the machine
/// ([`bounded_test_alone`]): the others wait for leaders and lease deadlines within fixed
/// bounds, which 64 clients' load beside them could stretch past.
static LOAD: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();

fn load_lock() -> &'static tokio::sync::RwLock<()> {
    LOAD.get_or_init(|| tokio::sync::RwLock::new(()))
}

/// Runs a test's body within [`WHOLE_TEST`] (beside the others, not beside the heavy one).
async fn bounded_test(body: impl Future<Output = ()>) {
    let _shared = load_lock().read().await;
    tokio::time::timeout(WHOLE_TEST, body)
        .await
        .expect("the test took too long");
}

/// [`bounded_test`] for a test that loads the machine: no other test of this file runs
/// meanwhile.
async fn bounded_test_alone(body: impl Future<Output = ()>) {
    let _alone = load_lock().write().await;
    tokio::time::timeout(WHOLE_TEST, body)
        .await
        .expect("the test took too long");
}

/// Three nodes, each serving the etcd API on its own gRPC address.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    cluster: ClusterId,
    grpc: Vec<SocketAddr>,
    /// What the test changes in each node's configuration.
    tune: fn(&mut NodeConfig),
    nodes: Vec<Option<NodeTask>>,
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Every node's configuration changed by `tune`.
    fn start_with(tune: fn(&mut NodeConfig)) -> Self {
        let addrs = free_loopback_addrs(6);
        let mut this = Cluster {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            cluster: ClusterId {
                name: "etcd-test".into(),
                members: addrs[..3].to_vec(),
            },
            grpc: addrs[3..].to_vec(),
            tune,
            nodes: (0..3).map(|_| None).collect(),
        };
        for i in 0..3 {
            this.start_node(i);
        }
        this
    }

    /// Starts node `i` (again: from its data directory).
    fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} runs already");
        let dir: &Path = self.dirs[i].path();
        let mut config = NodeConfig::new(self.cluster.clone(), i as u64, dir.to_path_buf());
        (self.tune)(&mut config);
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
        let node = self.nodes[i].take().expect("the node runs");
        node.stop().await.unwrap();
    }

    fn running(&self) -> Vec<usize> {
        (0..3).filter(|&i| self.nodes[i].is_some()).collect()
    }

    /// The node every running node says leads, once they agree.
    async fn leader(&self) -> usize {
        self.leader_among(&self.running()).await
    }

    /// The node every one of `nodes` says leads, once they agree on one of them.
    async fn leader_among(&self, nodes: &[usize]) -> usize {
        let what = format!("nodes {nodes:?} to agree on a leader among them");
        poll_until(ELECTION_WAIT, &what, || async {
            let mut leaders = Vec::new();
            for &i in nodes {
                let report = tcp::status(self.cluster.members[i], ASK).await.ok()?;
                leaders.push(report.leader? as usize);
            }
            let first = leaders[0];
            (leaders.iter().all(|&l| l == first) && nodes.contains(&first)).then_some(first)
        })
        .await
    }

    /// A gRPC channel to node `i`'s endpoint, once it accepts.
    async fn channel(&self, i: usize) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.grpc[i]))
            .unwrap()
            .connect_timeout(ASK);
        poll_until(ELECTION_WAIT, "the gRPC endpoint to accept", || async {
            endpoint.connect().await.ok()
        })
        .await
    }

    async fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i).await)
    }

    async fn stop_all(mut self) {
        for i in self.running() {
            self.stop(i).await;
        }
    }
}

/// Polls `check` every [`POLL`] until it gives a value; panics, naming `what`, once `within`
/// has passed (each check must itself be bounded).
async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let rounds = within.as_millis() / POLL.as_millis() + 1;
    for _ in 0..rounds {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("waited {within:?} for {what} in vain");
}

/// A gRPC call's answer, or an error if there is none within `bound`.
async fn answer<T>(
    bound: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(bound, call).await {
        Ok(answered) => answered.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "(test) no answer in {bound:?}"
        ))),
    }
}

async fn put(
    kv: &mut KvClient<Channel>,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<pb::PutResponse, Status> {
    let request = pb::PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    };
    answer(CALL, kv.put(request)).await
}

/// The value of `key` (`None`: no such key), read linearizably or from the node's own state,
/// answered within `bound`.
async fn get(
    kv: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
    bound: Duration,
) -> Result<Option<Vec<u8>>, Status> {
    let request = pb::RangeRequest {
        key: key.into(),
        serializable,
        ..Default::default()
    };
    let found = answer(bound, kv.range(request)).await?;
    Ok(found.kvs.into_iter().next().map(|kv| kv.value))
}

/// Waits until node `kv`'s own state holds `value` at `key`.
async fn applied(kv: &KvClient<Channel>, key: &str, value: Option<&[u8]>, what: &str) {
    poll_until(ELECTION_WAIT, what, || {
        let mut kv = kv.clone();
        async move {
            let found = get(&mut kv, key, true, ASK).await.ok()?;
            (found.as_deref() == value).then_some(())
        }
    })
    .await
}

/// Asserts that a linearizable read of `key` gives `value` every 100 ms until `until`.
async fn stays(kv: &mut KvClient<Channel>, key: &str, value: &[u8], until: Instant, why: &str) {
    let started = Instant::now();
    let rounds = until.saturating_duration_since(started).as_millis() / 100 + 1;
    for _ in 0..rounds {
        if Instant::now() >= until {
            return;
        }
        let found = get(kv, key, false, CALL).await;
        assert_eq!(
            found.as_ref().ok().and_then(Option::as_deref),
            Some(value),
            "{key} after {:?} ({why}): {found:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens connections to the node port at `addr` until the test holds all its `slots`, each
/// one answering (connections that are closing may hold slots for a moment); then checks that
/// one more is refused, so that nobody else can connect there.
async fn take_every_slot(addr: SocketAddr, slots: usize) -> Vec<NodeClient> {
    let mut held: Vec<NodeClient> = Vec::new();
    let deadline = Instant::now() + ELECTION_WAIT;
    for _ in 0..(slots + 200) {
        if held.len() == slots {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of the {slots} connection slots of {addr} came free",
            held.len()
        );
        let connect = NodeClient::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME);
        if let Ok(Ok(mut client)) = tokio::time::timeout(ASK, connect).await {
            if let Ok(NodeReply::Status(_)) = client.call(&NodeRequest::Status, ASK).await {
                held.push(client);
                continue;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(held.len(), slots, "could not take every slot of {addr}");
    let connect = NodeClient::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME);
    if let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
        let answered = client.call(&NodeRequest::Status, ASK).await;
        assert!(
            answered.is_err(),
            "{addr} answered a connection past its {slots} slots: the cut would not hold"
        );
    }
    held
}

/// A follower that hears nothing from the others (they can no longer connect to its port,
/// and the links they had were closed when they restarted) keeps its old state while it
/// runs. (A proxy cannot be put in front of its port: nodes dial the addresses they listen
/// on; so the test takes the port's connection slots.) Its serializable read gives the old
/// value, but a linearizable read must give the value the others committed since, or fail;
/// never the old one. The same on its node port, where a node that does not lead must turn
/// a forwarded read away. Once the cut heals it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_does_not_answer_stale_linearizable_reads() {
    const SLOTS: usize = 8;
    /// How long the cut-off node is given to answer a linearizable read (it may refuse by
    /// answering nothing: there is no leader it can reach).
    const PATIENCE: Duration = Duration::from_millis(2500);
    bounded_test(async {
        let mut cluster = Cluster::start_with(|config| {
            config.port = PortConfig {
                max_connections: SLOTS,
                ..PortConfig::default()
            }
        });
        let leader = cluster.leader().await;
        let cut = (0..3).find(|&i| i != leader).unwrap();
        let other = 3 - leader - cut;
        let mut at_cut = cluster.kv(cut).await;
        let mut at_leader = cluster.kv(leader).await;
        put(&mut at_leader, "k", "old", 0).await.expect("put old");
        for i in 0..3 {
            let kv = cluster.kv(i).await;
            applied(&kv, "k", Some(b"old"), "every node to apply the old value").await;
        }

        // Cut `cut` off: the other two stop (closing every link into it), the test takes
        // every slot of its port, and they start again. Their links to it are refused; its
        // links to them are not, so it can neither win an election nor hear who did.
        cluster.stop(leader).await;
        cluster.stop(other).await;
        let mut held = take_every_slot(cluster.cluster.members[cut], SLOTS).await;
        cluster.start_node(leader);
        cluster.start_node(other);
        let new_leader = cluster.leader_among(&[leader, other]).await;
        let mut at_new = cluster.kv(new_leader).await;
        put(&mut at_new, "k", "new", 0).await.expect("put new");
        let mut at_survivor = cluster.kv(leader + other - new_leader).await;
        assert_eq!(
            get(&mut at_survivor, "k", false, CALL).await.unwrap(),
            Some(b"new".to_vec())
        );

        // The cut-off node is stale (else the test would prove nothing)...
        assert_eq!(
            get(&mut at_cut, "k", true, ASK).await.unwrap(),
            Some(b"old".to_vec()),
            "the cut-off node's own state is not the old value: the cut did not hold"
        );
        // ...but a linearizable read there does not say so.
        match get(&mut at_cut, "k", false, PATIENCE).await {
            Ok(Some(value)) if value == b"new" => {}
            Err(refused) => eprintln!("the cut-off node refused a linearizable read: {refused}"),
            Ok(stale) => panic!(
                "a linearizable read at the cut-off node gave {stale:?}, not the committed \
                 value \"new\""
            ),
        }
        // Its node port, asked what another node would forward to its leader, turns the read
        // away (or gives the committed value): it does not lead.
        let range = EtcdRequest::Range(RangeRequest {
            range: KeyRange::key("k"),
            ..Default::default()
        });
        let forwarded = held[0].call(&NodeRequest::Etcd(vec![range]), CALL).await;
        match forwarded.as_ref().map(|reply| match reply {
            NodeReply::Etcd(replies) => replies.as_slice(),
            _ => &[],
        }) {
            Ok([Replied::NotApplied { .. } | Replied::Unknown]) => {}
            Ok([Replied::Done(EtcdAnswer::Range(_, Ok(found)))])
                if found.kvs.len() == 1 && found.kvs[0].value == b"new" => {}
            other => panic!(
                "the cut-off node's port answered a linearizable read with {other:?}, not a \
                 refusal or the committed value \"new\""
            ),
        }

        // The cut heals: the node catches up, and then reads the new value both ways.
        drop(held);
        poll_until(
            Duration::from_secs(10),
            "the healed node to apply the new value",
            || {
                let mut kv = at_cut.clone();
                async move {
                    let found = get(&mut kv, "k", true, ASK).await.ok()?;
                    (found.as_deref() == Some(b"new")).then_some(())
                }
            },
        )
        .await;
        assert_eq!(
            get(&mut at_cut, "k", false, CALL).await.unwrap(),
            Some(b"new".to_vec())
        );
        cluster.stop_all().await;
    })
    .await
}

/// Puts sent to every node as soon as its endpoint accepts, before any leader is elected,
/// wait for the election and are applied (not answered "no leader" at once). Ticks of 30 ms
/// (elections after 0.9 s at the earliest) leave the test ample time to send them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_sent_before_the_first_election_wait_for_a_leader() {
    bounded_test(async {
        let cluster = Cluster::start_with(|config| config.tick = Duration::from_millis(30));
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(cluster.kv(i).await);
        }
        for (i, &addr) in cluster.cluster.members.iter().enumerate() {
            let report = poll_until(ELECTION_WAIT, "the node to answer", || async {
                tcp::status(addr, ASK).await.ok()
            })
            .await;
            assert_eq!(
                report.leader, None,
                "node {i} knows a leader already: the writes would not be sent before the \
                 first election"
            );
        }
        let sent = Instant::now();
        let writers: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut kv)| {
                tokio::spawn(async move { put(&mut kv, &format!("early{i}"), "v", 0).await })
            })
            .collect();
        for (i, writer) in writers.into_iter().enumerate() {
            let written = writer.await.unwrap();
            assert!(
                written.is_ok(),
                "a put sent to node {i} before the first election: {written:?} after {:?}",
                sent.elapsed()
            );
        }
        for kv in clients.iter_mut() {
            for i in 0..3 {
                let key = format!("early{i}");
                assert_eq!(
                    get(kv, &key, false, CALL).await.unwrap(),
                    Some(b"v".to_vec())
                );
            }
        }
        cluster.stop_all().await;
    })
    .await
}

/// Requests forwarded at once travel to the leader many to a frame (`flotilla_kvraft::forward`)
/// and come back in one: 64 clients on 8 connections to a follower each put their own key,
/// read it linearizably and overwrite it asking for the previous value, at the same time.
/// Every answer must be the asker's own (its key, its value), so a reply handed to the wrong
/// request of a batch shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_forwarded_together_each_get_their_own_answer() {
    bounded_test_alone(async {
        let cluster = Cluster::start();
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let mut connections = Vec::new();
        for _ in 0..8 {
            connections.push(cluster.kv(follower).await);
        }
        let clients: Vec<_> = (0..64)
            .map(|c| {
                let mut kv = connections[c % 8].clone();
                tokio::spawn(async move {
                    for round in 0..5 {
                        let key = format!("own-{c}");
                        let first = format!("v{c}.{round}");
                        put(&mut kv, &key, &first, 0)
                            .await
                            .map_err(|e| format!("put {key}: {e}"))?;
                        let read = get(&mut kv, &key, false, CALL).await;
                        if read.as_ref().ok() != Some(&Some(first.clone().into_bytes())) {
                            return Err(format!("{key} read {read:?} after putting {first}"));
                        }
                        let request = pb::PutRequest {
                            key: key.clone().into(),
                            value: format!("w{c}.{round}").into(),
                            prev_kv: true,
                            ..Default::default()
                        };
                        let replaced = answer(CALL, kv.put(request))
                            .await
                            .map_err(|e| format!("put {key} with prev_kv: {e}"))?;
                        let previous = replaced.prev_kv.map(|kv| (kv.key, kv.value));
                        if previous != Some((key.clone().into_bytes(), first.clone().into_bytes()))
                        {
                            return Err(format!(
                                "overwriting {key} (holding {first}) gave previous {previous:?}"
                            ));
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for (c, client) in clients.into_iter().enumerate() {
            if let Err(e) = client.await.unwrap() {
                panic!("client {c}: {e}");
            }
        }
        cluster.stop_all().await;
    })
    .await
}

/// Puts `count` keys `{prefix}-k{n}` (value `v{n}`) through `kv` one after the other, each
/// answered within the request timeout.
async fn put_all(mut kv: KvClient<Channel>, prefix: String, count: usize) -> Result<(), String> {
    for k in 0..count {
        let (key, sent) = (format!("{prefix}-k{k}"), Instant::now());
        if let Err(e) = put(&mut kv, &key, &format!("v{k}"), 0).await {
            return Err(format!("put {key}: {e} after {:?}", sent.elapsed()));
        }
        if sent.elapsed() > REQUEST_TIMEOUT {
            return Err(format!("put {key} took {:?}", sent.elapsed()));
        }
    }
    Ok(())
}

/// Reads back linearizably, through `kv`, what [`put_all`] wrote.
async fn check_all(kv: &mut KvClient<Channel>, prefix: &str, count: usize) {
    for k in 0..count {
        let key = format!("{prefix}-k{k}");
        let value = get(kv, &key, false, CALL).await.unwrap();
        assert_eq!(value, Some(format!("v{k}").into_bytes()), "{key}");
    }
}

/// The leader and one follower stop; the node left knows no leader and turns puts away
/// locally. 20 puts sent to it then wait (none finishes without a majority), retried until
/// the follower is back and one of the two is elected, and are applied, each within the
/// request timeout; both nodes read them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_a_leader_change_are_retried() {
    bounded_test(async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let alone = (0..3).find(|&i| i != leader).unwrap();
        let other = 3 - leader - alone;
        let mut kv = cluster.kv(alone).await;
        // Forward once: the node keeps a connection to the leader.
        put(&mut kv, "warm", "v", 0).await.expect("warm-up put");
        cluster.stop(other).await;
        cluster.stop(leader).await;
        let addr = cluster.cluster.members[alone];
        poll_until(
            ELECTION_WAIT,
            "the node left alone to drop its leader",
            || async {
                let report = tcp::status(addr, ASK).await.ok()?;
                report.leader.is_none().then_some(())
            },
        )
        .await;
        let mut writers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(put_all(kv.clone(), format!("w{w}"), 5)))
            .collect();
        // Without a majority nothing can be applied: for 300 ms every put waits, turned
        // away and retried.
        for _ in 0..6 {
            tokio::time::sleep(POLL).await;
            if let Some(done) = writers.iter().position(|w| w.is_finished()) {
                let writer = writers.swap_remove(done);
                panic!(
                    "puts to a node without a majority finished: {:?}",
                    writer.await.unwrap()
                );
            }
        }
        let restarting = Instant::now();
        cluster.start_node(other);
        for writer in writers {
            writer
                .await
                .unwrap()
                .expect("puts sent to a node without a leader are retried until there is one");
        }
        eprintln!(
            "20 puts done {:?} after the follower restarted",
            restarting.elapsed()
        );
        let new_leader = cluster.leader().await;
        assert!([alone, other].contains(&new_leader));
        for i in [alone, other] {
            let mut kv = cluster.kv(i).await;
            for w in 0..4 {
                check_all(&mut kv, &format!("w{w}"), 5).await;
            }
        }
        cluster.stop_all().await;
    })
    .await
}

/// Puts sent to both followers the moment the leader stops, while they still take it for
/// the leader: forwarded to it, they find the kept connection closed or the connection
/// refused, never reach a live node, and are retried until a new leader takes them (not
/// answered `UNAVAILABLE` at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_right_after_the_leader_stops_are_retried() {
    bounded_test(async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let mut clients = Vec::new();
        for i in (0..3).filter(|&i| i != leader) {
            let mut kv = cluster.kv(i).await;
            put(&mut kv, &format!("warm{i}"), "v", 0)
                .await
                .expect("warm-up put");
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
            writer
                .await
                .unwrap()
                .expect("puts across the leader change");
        }
        for kv in clients.iter_mut() {
            for w in 0..2 {
                check_all(kv, &format!("w{w}"), 10).await;
            }
        }
        cluster.stop_all().await;
    })
    .await
}

async fn member_status(m: &mut MaintenanceClient<Channel>) -> pb::StatusResponse {
    answer(ASK, m.status(pb::StatusRequest {}))
        .await
        .expect("Maintenance.Status")
}

/// Maintenance.Status gives the commit index as `raft_index` (etcd's raftIndex) and the
/// applied index as `raft_applied_index`. Under a write load the commit index runs ahead of
/// the applied one for a moment now and then (entries committed, their batch being made
/// durable or applied): some Status must show it, and none may show applied past committed.
/// At rest both agree with the node's own report, on every node, with the leader's term and
/// id, and `raft_index` is past every acknowledged put.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_the_raft_index() {
    const WRITERS: usize = 8;
    const MAX_PUTS: usize = 3000;
    bounded_test(async {
        let cluster = Cluster::start();
        let first_leader = cluster.leader().await;
        let kv = cluster.kv(first_leader).await;
        let mut maintenance = Vec::new();
        for i in 0..3 {
            maintenance.push(MaintenanceClient::new(cluster.channel(i).await));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (mut kv, stop) = (kv.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut done: u64 = 0;
                    for n in 0..MAX_PUTS {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        put(&mut kv, &format!("w{w}-{}", n % 50), &"x".repeat(100), 0)
                            .await
                            .expect("a put under load");
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(8);
        let (mut samples, mut ahead) = (0, None);
        for _ in 0..1_000_000 {
            if ahead.is_some() || Instant::now() >= deadline {
                break;
            }
            for (i, m) in maintenance.iter_mut().enumerate() {
                let s = member_status(m).await;
                samples += 1;
                assert!(
                    s.raft_applied_index <= s.raft_index,
                    "node {i}: raft_applied_index {} past raft_index {}",
                    s.raft_applied_index,
                    s.raft_index
                );
                if s.raft_index > s.raft_applied_index {
                    ahead = Some((i, s.raft_index, s.raft_applied_index));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut puts = 0;
        for writer in writers {
            puts += writer.await.unwrap();
        }
        let Some((node, index, applied)) = ahead else {
            panic!(
                "in {samples} Status answers under a write load, raft_index was never ahead \
                 of raft_applied_index: raft_index is not the commit index"
            );
        };
        eprintln!(
            "after {samples} samples: node {node} raft_index {index}, raft_applied_index {applied}"
        );

        // At rest: each node's Status is its report's commit, applied index and term.
        let members = cluster.cluster.members.clone();
        let statuses = poll_until(ELECTION_WAIT, "every node's Status to settle", || {
            let (mut maintenance, members) = (maintenance.clone(), members.clone());
            async move {
                let (mut statuses, mut leaders) = (Vec::new(), Vec::new());
                for (m, &addr) in maintenance.iter_mut().zip(&members) {
                    let s = member_status(m).await;
                    let r = tcp::status(addr, ASK).await.ok()?;
                    let settled = r.commit == r.applied
                        && s.raft_index == r.commit
                        && s.raft_applied_index == r.applied
                        && s.raft_term == r.term;
                    if !settled {
                        return None;
                    }
                    statuses.push(s);
                    leaders.push(r.leader? as usize);
                }
                let (index, leader) = (statuses[0].raft_index, leaders[0]);
                let agreed = statuses.iter().all(|s| s.raft_index == index)
                    && leaders.iter().all(|&l| l == leader);
                agreed.then_some((statuses, leader))
            }
        })
        .await;
        let (statuses, leader) = statuses;
        // Each put is an entry of its own, after the first leader's no-op.
        assert!(
            statuses[0].raft_index > puts,
            "raft_index {} after {puts} puts",
            statuses[0].raft_index
        );
        let leader_id = statuses[leader].header.as_ref().unwrap().member_id;
        for (i, s) in statuses.iter().enumerate() {
            assert_eq!(s.leader, leader_id, "node {i} names another leader");
            assert_eq!(s.raft_term, statuses[leader].raft_term, "node {i}");
        }
        cluster.stop_all().await;
    })
    .await
}

async fn grant(lease: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    let granted = answer(
        CALL,
        lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
    )
    .await
    .expect("LeaseGrant");
    assert_eq!(granted.ttl, ttl);
    granted.id
}

async fn time_to_live(lease: &mut LeaseClient<Channel>, id: i64) -> pb::LeaseTimeToLiveResponse {
    let asked = pb::LeaseTimeToLiveRequest { id, keys: true };
    answer(CALL, lease.lease_time_to_live(asked))
        .await
        .expect("LeaseTimeToLive")
}

/// Keeps lease `id` alive on one LeaseKeepAlive stream, every `every`, until `stop`; each
/// answer must renew it to `ttl`. Gives the number of answers.
async fn keep_alive(
    mut lease: LeaseClient<Channel>,
    id: i64,
    ttl: i64,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> usize {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = answer(CALL, lease.lease_keep_alive(ReceiverStream::new(rx)))
        .await
        .expect("a keep-alive stream");
    // Far more rounds than fit in a test: the bound is `stop`.
    for renewals in 0..10_000 {
        tx.send(pb::LeaseKeepAliveRequest { id })
            .await
            .expect("the stream takes requests");
        let answered = tokio::time::timeout(CALL, answers.message())
            .await
            .expect("a keep-alive answered in time")
            .expect("the keep-alive stream goes on")
            .expect("the keep-alive stream goes on");
        assert_eq!(
            (answered.id, answered.ttl),
            (id, ttl),
            "a keep-alive's answer"
        );
        tokio::select! {
            _ = &mut stop => return renewals + 1,
            _ = tokio::time::sleep(every) => {}
        }
    }
    panic!("keep-alives were never told to stop");
}

/// A lease of TTL 2 s kept alive through a follower (a keep-alive stream, every 0.5 s) keeps
/// its key well past its TTL under the first leader, and again for twice its TTL after that
/// leader stops. A lease granted (through the follower) just before the leader stops, and not
/// kept alive, loses its key under the new leader: no sooner than its full TTL after the old
/// leader stopped (the new leader gives every lease its full TTL: leadership moving makes a
/// lease last longer, never shorter), and within a few seconds after that. The revoke goes
/// through the log, so every node deletes the key. Puts forwarded by the follower keep their
/// lease (LeaseTimeToLive lists the keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_lease_survives_a_leader_change_and_an_idle_one_expires() {
    const TTL: i64 = 2;
    let ttl = Duration::from_secs(TTL as u64);
    bounded_test(async {
        let mut cluster = Cluster::start();
        let leader = cluster.leader().await;
        let follower = (0..3).find(|&i| i != leader).unwrap();
        let channel = cluster.channel(follower).await;
        let mut kv = KvClient::new(channel.clone());
        let mut lease = LeaseClient::new(channel);

        let kept = grant(&mut lease, TTL).await;
        put(&mut kv, "kept", "k", kept).await.expect("put kept");
        let info = time_to_live(&mut lease, kept).await;
        assert_eq!(info.granted_ttl, TTL);
        assert_eq!(
            info.keys,
            vec![b"kept".to_vec()],
            "the forwarded put lost its lease"
        );
        let (stop_keeping, stop) = tokio::sync::oneshot::channel();
        let keeper = tokio::spawn(keep_alive(lease.clone(), kept, TTL, ttl / 4, stop));
        let under_first = Instant::now() + ttl + Duration::from_millis(1500);
        stays(
            &mut kv,
            "kept",
            b"k",
            under_first,
            "kept alive under the first leader",
        )
        .await;

        let idle = grant(&mut lease, TTL).await;
        put(&mut kv, "idle", "i", idle).await.expect("put idle");
        let info = time_to_live(&mut lease, idle).await;
        assert_eq!(
            info.keys,
            vec![b"idle".to_vec()],
            "the forwarded put lost its lease"
        );
        let half = Instant::now() + ttl / 2;
        stays(&mut kv, "idle", b"i", half, "half its TTL after its grant").await;

        let stopped = Instant::now();
        cluster.stop(leader).await;
        let new_leader = cluster.leader().await;
        let elected = Instant::now();
        assert_ne!(new_leader, leader);
        poll_until(
            ttl + Duration::from_secs(4),
            "the idle lease's key to vanish",
            || {
                let mut kv = kv.clone();
                async move {
                    get(&mut kv, "idle", false, ASK)
                        .await
                        .ok()?
                        .is_none()
                        .then_some(())
                }
            },
        )
        .await;
        // The new leader took over after the old one stopped and gave the lease its full
        // TTL then: it cannot have expired sooner after the stop (50 ms: the lessor's clock
        // counts whole milliseconds).
        let after = stopped.elapsed();
        assert!(
            after + Duration::from_millis(50) >= ttl,
            "the idle lease's key vanished {after:?} after the leader stopped: the new leader \
             did not give it its full TTL of {ttl:?}"
        );
        for i in cluster.running() {
            let kv = cluster.kv(i).await;
            applied(
                &kv,
                "idle",
                None,
                "every node to apply the idle lease's revoke",
            )
            .await;
        }
        let info = time_to_live(&mut lease, idle).await;
        assert_eq!(info.ttl, -1, "the idle lease still exists: {info:?}");

        let under_next = elected + 2 * ttl;
        stays(
            &mut kv,
            "kept",
            b"k",
            under_next,
            "kept alive across the leader change",
        )
        .await;
        let info = time_to_live(&mut lease, kept).await;
        assert_eq!(info.keys, vec![b"kept".to_vec()]);
        assert!((1..=TTL).contains(&info.ttl), "{info:?}");
        let _ = stop_keeping.send(());
        let renewals = keeper.await.unwrap();
        assert!(renewals >= 10, "only {renewals} keep-alives answered");
        cluster.stop_all().await;
    })
    .await
}
