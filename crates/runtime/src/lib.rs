//! # flotilla-runtime: a Raft node on tokio
//!
//! Runs a replicated state machine ([`flotilla_rsm`]) as a real server: the shared node loop
//! ([`flotilla_node::run`], the same code the simulator tests) on tokio, its state in the
//! write-ahead log ([`flotilla_storage::WalStorage`]) in a data directory, its peers over TCP,
//! and one port for peers and clients alike.
//!
//! - [`host`]: the `Host` of the node loop: ticks, inbox, WAL persist (one `fdatasync` per
//!   `Ready`, which carries every entry proposed while the previous sync ran), peer links.
//! - [`peer`]: outgoing links, one bounded queue per peer, reconnect with backoff.
//! - [`port`]: the one port: peer links in, client requests to the service's handler.
//! - [`metrics`]: the Prometheus text endpoint (`--metrics ADDR`).
//! - [`report`]: what a node says about itself (role, term, indexes, storage, followers).
//! - [`task`]: a node as a task of this process ([`NodeTask`]), for embedding and tests.
//!
//! Guarantees: the node acknowledges nothing (sends no message, applies nothing) of a
//! `Ready` before its batch is durable; a storage error stops the node loop and
//! [`run`] returns it (a process then calls
//! [`flotilla_node::exit_after_storage_failure`]); nodes of different clusters, or given
//! different member lists, refuse each other with a message naming both; nothing a peer or
//! client sends can panic the node, and every connection, queue and frame is bounded.

pub mod host;
pub mod metrics;
pub mod peer;
pub mod port;
pub mod report;
pub mod task;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::Input;
use flotilla_raft::{NodeId, RawNode};
use flotilla_rsm::{Rsm, RsmApp, RsmConfig, RsmHandle, StateMachine};
use flotilla_storage::{StorageError, WalOptions, WalStorage};
use flotilla_wire::Protocol;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

pub use port::PortConfig;
pub use report::{FollowerReport, NodeReport, NodeView};
pub use task::{free_loopback_addrs, NodeTask};

/// The wire protocol of peer links.
pub const PEER_PROTOCOL: Protocol = Protocol {
    service: "raft-peer",
    version: 1,
};

/// Which cluster a node belongs to: a name and the member list (node `i` listens on
/// `members[i]`). Two nodes talk only if both are equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterId {
    pub name: String,
    pub members: Vec<SocketAddr>,
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} with members [", self.name)?;
        for (i, addr) in self.members.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{i}={addr}")?;
        }
        write!(f, "]")
    }
}

/// How one node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub cluster: ClusterId,
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// One tick of the Raft clock (the Raft settings count in ticks).
    pub tick: Duration,
    /// Raft settings; `id`, `peers` and `seed` are set by [`run`].
    pub raft: flotilla_raft::Config,
    pub rsm: RsmConfig,
    pub port: PortConfig,
    /// Messages waiting in the node's inbox before more are dropped.
    pub inbox_messages: usize,
    /// The WAL's segment size.
    pub wal: WalOptions,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl NodeConfig {
    /// Defaults for a cluster on a LAN or loopback: 10 ms ticks (elections after 300–600 ms,
    /// heartbeats every 100 ms), pre-vote, check-quorum and the leader's no-op on.
    pub fn new(cluster: ClusterId, id: NodeId, data_dir: PathBuf) -> Self {
        let mut raft = flotilla_raft::Config::new(0, vec![0]);
        raft.pre_vote = true;
        raft.check_quorum = true;
        raft.leader_noop = true;
        NodeConfig {
            cluster,
            id,
            data_dir,
            tick: Duration::from_millis(10),
            raft,
            rsm: RsmConfig::default(),
            port: PortConfig::default(),
            inbox_messages: 16 << 10,
            wal: WalOptions::default(),
            metrics: None,
        }
    }
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("node {id}: {detail}")]
    Config { id: NodeId, detail: String },
    #[error("node {id}: cannot listen on {addr}: {source}")]
    Listen {
        id: NodeId,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("node {id}: the snapshot in its data directory does not restore: {detail}")]
    Restore { id: NodeId, detail: String },
    /// Opening the data directory or writing to it failed; after a write failed the node
    /// stopped (the process should exit: `flotilla_node::exit_after_storage_failure`).
    #[error("node {id}: storage: {source}")]
    Storage { id: NodeId, source: StorageError },
}

/// Wakes the node loop after a handler proposed or asked for a read on the node.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// What a client handler holds: the replica's node, its rsm and the loop's wake-up.
pub type Replica<S> = RsmHandle<Arc<Mutex<RawNode>>, Arc<Mutex<Rsm<S>>>, Wake, S>;

/// Runs node `config.id` until `shutdown` resolves (then `Ok`) or its storage fails.
/// `make_handler` gets the node's view (its replica and its report) and returns the handler of client requests, spoken in
/// `client_protocol` on the node's port. Any tokio runtime will do (current-thread or
/// multi-thread; its time and I/O drivers enabled).
pub async fn run<S, Req, Resp, H, F>(
    config: NodeConfig,
    state_machine: S,
    client_protocol: Protocol,
    make_handler: impl FnOnce(NodeView<S>) -> H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError>
where
    S: StateMachine + Send + 'static,
    S::Output: Send,
    S::Answer: Send,
    S::Query: Send,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let id = config.id;
    let n = config.cluster.members.len();
    if id as usize >= n {
        return Err(RunError::Config {
            id,
            detail: format!(
                "there are only {n} members (ids 0 to {})",
                n.saturating_sub(1)
            ),
        });
    }
    let addr = config.cluster.members[id as usize];
    let storage = |source| RunError::Storage { id, source };
    let (wal, durable) =
        WalStorage::open_with_options(&config.data_dir, config.wal).map_err(storage)?;
    info!(
        id,
        dir = %config.data_dir.display(),
        last_index = durable.last_index(),
        snapshot = durable.snapshot.index,
        "recovered"
    );
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { id, addr, source })?;

    let mut raft = config.raft.clone();
    raft.id = id;
    raft.peers = (0..n as NodeId).collect();
    raft.seed = seed(id);
    let incarnation = seed(id);
    let snapshot = durable.snapshot.clone();
    let node = Arc::new(Mutex::new(RawNode::new(raft, durable)));
    let rsm = Rsm::new(state_machine, config.rsm, &snapshot)
        .map_err(|detail| RunError::Restore { id, detail })?;
    let rsm = Arc::new(Mutex::new(rsm));

    let (inbox_tx, inbox) = mpsc::channel(config.inbox_messages);
    let poke = inbox_tx.clone();
    let wake: Wake = Arc::new(move || {
        let _ = poke.try_send(Input::Poke);
    });
    let replica = RsmHandle::new(node.clone(), rsm.clone(), wake);
    let counters = Arc::new(metrics::Counters::new(n));
    let (applied_tx, applied) = watch::channel(0);
    let view = NodeView {
        replica,
        node: node.clone(),
        counters: counters.clone(),
        addr,
        applied,
    };
    let metrics_task = match config.metrics {
        None => None,
        Some(metrics_addr) => {
            let listener =
                TcpListener::bind(metrics_addr)
                    .await
                    .map_err(|source| RunError::Listen {
                        id,
                        addr: metrics_addr,
                        source,
                    })?;
            let (view, counters) = (view.clone(), counters.clone());
            let text = Arc::new(move || metrics::render(&view.report(), &counters));
            info!(id, %metrics_addr, "metrics at /metrics");
            Some(tokio::spawn(metrics::serve(listener, text)))
        }
    };
    let (stop_tx, stop) = watch::channel(false);
    let port = Arc::new(port::Port {
        cluster: config.cluster.clone(),
        me: id,
        inbox: inbox_tx,
        client_protocol,
        incarnations: Mutex::new(vec![None; n]),
        handler: make_handler(view),
        config: config.port,
    });
    let mut port_stop = stop.clone();
    let serving = tokio::spawn(port::serve(listener, port, async move {
        let _ = port_stop.wait_for(|stopped| *stopped).await;
    }));
    let stop_on_shutdown = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_on_shutdown.send(true);
    });
    let peers = peer::PeerLinks::start(&config.cluster, id, incarnation, counters.clone());
    let mut host = host::TokioHost::new(id, counters, inbox, config.tick, wal, peers, stop);
    let mut app = SignalApplied {
        app: RsmApp::new(rsm),
        applies: 0,
        signal: applied_tx,
    };
    info!(id, %addr, cluster = %config.cluster, "serving");
    let result = flotilla_node::run(node, &mut host, &mut app).await;
    // The port closes its listener and every connection (also when the loop ended on a
    // storage error rather than a shutdown) before `run` returns: whoever awaited the node
    // finds it gone, not half gone.
    let _ = stop_tx.send(true);
    if let Err(e) = serving.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    result.map_err(storage)
}

/// The node loop's app, which after every `Ready` that applied something (entries or a
/// snapshot) bumps the counter [`NodeView::applied`] watches.
struct SignalApplied<A> {
    app: A,
    applies: u64,
    signal: watch::Sender<u64>,
}

impl<A: flotilla_node::App> flotilla_node::App for SignalApplied<A> {
    fn on_soft_state(&mut self, soft: &flotilla_raft::SoftState) {
        self.app.on_soft_state(soft)
    }
    fn on_persisted(&mut self, node: &RawNode, batch: &flotilla_raft::Persist) {
        self.app.on_persisted(node, batch)
    }
    fn on_tick(&mut self) {
        self.app.on_tick()
    }
    fn apply_snapshot(&mut self, snapshot: &flotilla_raft::Snapshot) {
        self.applies += 1;
        self.app.apply_snapshot(snapshot)
    }
    fn apply(&mut self, entry: flotilla_raft::Entry, raft_state_size: u64) -> Option<Vec<u8>> {
        self.applies += 1;
        self.app.apply(entry, raft_state_size)
    }
    fn on_read_state(&mut self, read: flotilla_raft::ReadState) {
        self.app.on_read_state(read)
    }
    fn after_ready(&mut self) {
        self.app.after_ready();
        let applies = self.applies;
        self.signal.send_if_modified(|seen| {
            let changed = *seen != applies;
            *seen = applies;
            changed
        });
    }
}

/// A seed for the node's election timeouts: different per node and per start.
fn seed(id: NodeId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(id);
    hasher.finish()
}
