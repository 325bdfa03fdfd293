//! The replicated state machine of a KV-on-Raft cluster, and the handler each replica runs
//! for a client request of the native protocol.
//!
//! One state machine serves both APIs of a node, as two key spaces: the native KV service
//! ([`KvServer`]: string keys with versions, at-most-once sessions, 6.5840's clerk) and the
//! revisioned store behind the etcd v3 API ([`MvccStore`], with its recent changes for
//! watches). Every node of a cluster applies the same log to the same state machine,
//! whichever ports it serves, so a node started with `--grpc` and one without agree on
//! every entry; a key written through one API is not seen through the other.

use flotilla_kv::{KvServer, Reply, Request};
use flotilla_mvcc::changes::RecentChanges;
use flotilla_mvcc::{
    Applied, MvccCommand, MvccError, MvccStore, RangeRequest, RangeResponse, Revision,
};
use flotilla_node::Shared;
use flotilla_raft::RawNode;
use flotilla_rsm::{Replied, Rsm, RsmHandle, StateMachine, Wake};
use serde::{Deserialize, Serialize};

/// The state machine: both key spaces.
#[derive(Debug, Default)]
pub struct KvStore {
    kv: KvServer,
    etcd: MvccStore,
    /// Not replicated: what watch streams on this replica follow.
    recent: RecentChanges,
}

/// A command in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A write of the native KV service (`Put`, `Append`; a `Get` is a query).
    Kv(Request),
    /// A command of the etcd API's store.
    Etcd(MvccCommand),
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Kv(Reply),
    Etcd(Applied),
}

/// A linearizable read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Kv(String),
    Etcd(RangeRequest),
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Kv(Reply),
    /// The store's revision at the read and what was read.
    Etcd(Revision, Result<RangeResponse, MvccError>),
}

/// The snapshot: both key spaces.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    kv: Vec<u8>,
    etcd: MvccStore,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&self) -> &KvServer {
        &self.kv
    }

    /// The etcd API's store.
    pub fn etcd(&self) -> &MvccStore {
        &self.etcd
    }

    /// The etcd store's changes of the last revisions applied here.
    pub fn recent_changes(&self) -> &RecentChanges {
        &self.recent
    }
}

impl StateMachine for KvStore {
    type Command = Command;
    type Output = Output;
    type Query = Query;
    type Answer = Answer;

    fn apply(&mut self, command: Command) -> Output {
        match command {
            Command::Kv(request) => Output::Kv(self.kv.handle(request)),
            Command::Etcd(command) => {
                let (applied, events) = self.etcd.apply_command(command);
                self.recent.record(applied.revision, events);
                Output::Etcd(applied)
            }
        }
    }

    fn query(&self, query: &Query) -> Answer {
        match query {
            Query::Kv(key) => Answer::Kv(self.kv.read(key)),
            Query::Etcd(range) => Answer::Etcd(self.etcd.revision(), self.etcd.range(range)),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            kv: self.kv.snapshot(),
            etcd: self.etcd.clone(),
        };
        postcard::to_allocvec(&snapshot).expect("a snapshot always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let Snapshot { kv, etcd } = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        etcd.check()?;
        self.kv.restore(&kv).map_err(|e| e.to_string())?;
        self.etcd = etcd;
        self.recent.clear();
        Ok(())
    }
}

/// What a replica answers a clerk.
pub type ServerReply = Replied<Reply>;

/// Executes one client request on a replica: writes through [`RsmHandle::submit`], a `Get`
/// through [`RsmHandle::read`] (its `ack` is not applied: reads change no replicated state,
/// and a clerk's next write releases what its last `Append` was owed anyway).
pub async fn serve<N, P, W>(replica: &RsmHandle<N, P, W, KvStore>, request: Request) -> ServerReply
where
    N: Shared<RawNode>,
    P: Shared<Rsm<KvStore>>,
    W: Wake,
{
    match request {
        Request::Get { key, .. } => {
            Replied::from_read(replica.read(Query::Kv(key)).await).map(|answer| match answer {
                Answer::Kv(reply) => reply,
                Answer::Etcd(..) => unreachable!("a KV query answered by the etcd store"),
            })
        }
        write => {
            Replied::from_submit(replica.submit(Command::Kv(write)).await).map(
                |output| match output {
                    Output::Kv(reply) => reply,
                    Output::Etcd(_) => unreachable!("a KV command applied by the etcd store"),
                },
            )
        }
    }
}
