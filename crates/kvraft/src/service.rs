//! The replicated KV state machine and the handler each replica runs for a client request.

use flotilla_kv::{KvServer, Reply, Request};
use flotilla_node::Shared;
use flotilla_raft::{NodeId, RawNode};
use flotilla_rsm::{ReadError, Rsm, RsmHandle, StateMachine, SubmitError, Wake};
use serde::{Deserialize, Serialize};

/// [`KvServer`] as an rsm state machine. Writes are commands; a `Get` is a query.
#[derive(Debug, Default)]
pub struct KvStore {
    kv: KvServer,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&self) -> &KvServer {
        &self.kv
    }
}

impl StateMachine for KvStore {
    type Command = Request;
    type Output = Reply;
    type Query = String;
    type Answer = Reply;

    fn apply(&mut self, request: Request) -> Reply {
        self.kv.handle(request)
    }

    fn query(&self, key: &String) -> Reply {
        self.kv.read(key)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot).map_err(|e| e.to_string())
    }
}

/// What a replica answers a clerk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerReply {
    /// The request was executed (a write: applied through the log; a read: served after a
    /// ReadIndex confirmation).
    Done(Reply),
    /// Turned away without effect: this replica does not lead (`hint`: who does, if it
    /// knows), or the write's entry was replaced by another leader's.
    NotApplied { hint: Option<NodeId> },
    /// The write was proposed but its fate is unknown (no outcome in time, or the replica
    /// stopped): it may or may not take effect.
    Unknown,
}

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
        Request::Get { key, .. } => match replica.read(key).await {
            Ok(reply) => ServerReply::Done(reply),
            Err(ReadError::WrongLeader { hint }) => ServerReply::NotApplied { hint },
            Err(ReadError::Unknown) => ServerReply::NotApplied { hint: None },
        },
        write => match replica.submit(write).await {
            Ok(reply) => ServerReply::Done(reply),
            Err(SubmitError::WrongLeader { hint }) => ServerReply::NotApplied { hint },
            Err(SubmitError::Overwritten) => ServerReply::NotApplied { hint: None },
            Err(SubmitError::Unknown) => ServerReply::Unknown,
        },
    }
}
