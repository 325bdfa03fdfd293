//! The replicated KV state machine and the handler each replica runs for a client request.

use flotilla_kv::{KvServer, Reply, Request};
use flotilla_node::Shared;
use flotilla_raft::RawNode;
use flotilla_rsm::{Replied, Rsm, RsmHandle, StateMachine, Wake};

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
        Request::Get { key, .. } => Replied::from_read(replica.read(key).await),
        write => Replied::from_submit(replica.submit(write).await),
    }
}
