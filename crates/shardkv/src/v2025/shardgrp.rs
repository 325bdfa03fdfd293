//! A 2025 shard group's replicated state (6.5840 2025 `shardkv1/shardgrp`): the shards it
//! holds, each a [`KvServer`], and for each shard the highest configuration number of any
//! `Freeze`, `Install` or `Delete` it has applied.
//!
//! The group follows no controller itself: a controller moves a shard by freezing it at
//! its old owner (which answers the shard's state and stops serving it), installing that
//! state at the new owner, and deleting it at the old owner, each request tagged with the
//! number of the configuration being made. Every one goes through the group's log, so all
//! replicas apply them at the same point.
//!
//! **Fencing.** Per shard, numbers only grow: a request carrying a number older than the
//! shard's is refused with [`GrpAnswer::Stale`] and changes nothing. A controller that was
//! cut off and wakes up after a newer one moved the shard on is thereby harmless; a repeat
//! of a request already applied (a retry, or a second controller finishing the same
//! change) answers as the first did and changes nothing more.
//!
//! Guarded in every build: a group serves a key only while the key's shard is installed
//! here and not frozen, and never deletes a shard it still serves.

use std::collections::BTreeMap;

use flotilla_kv::{KvServer, Reply, Request};
use flotilla_node::Shared;
use flotilla_raft::RawNode;
use flotilla_rsm::{Replied, Rsm, RsmHandle, StateMachine, Wake};
use flotilla_shardctrler::{Gid, Sharding};
use serde::{Deserialize, Serialize};

/// 2025's `Gid1`: the group every shard belongs to in the first configuration.
pub const GID1: Gid = 1;

/// Where a shard this group has seen stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Installed here and served.
    Serving,
    /// Frozen for a move: kept, no longer served, until deleted.
    Frozen,
    /// Moved away and dropped; only the number is kept (it fences older requests).
    Deleted,
}

/// A command in a 2025 group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrpCommand {
    /// A clerk's write.
    Client(Request),
    /// Stop serving `shard` for configuration `num`; answer its state.
    Freeze { shard: usize, num: u64 },
    /// Take `shard` over with `state` for configuration `num`.
    Install {
        shard: usize,
        num: u64,
        state: Vec<u8>,
    },
    /// Drop the frozen `shard` (configuration `num` has moved it away).
    Delete { shard: usize, num: u64 },
}

/// What a 2025 group answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrpAnswer {
    /// The KV answer to a clerk's request.
    Kv(Reply),
    /// The group does not serve the key's shard now (`ErrWrongGroup`).
    WrongGroup,
    /// A frozen shard's state.
    Frozen(Vec<u8>),
    /// The install or delete took effect, or had already.
    Done,
    /// The shard was already deleted here at configuration `num` (not older than the
    /// request's): its move is finished.
    Gone { num: u64 },
    /// The request's configuration is older than `seen`, the shard's here: refused.
    Stale { seen: u64 },
    /// The request does not fit the shard's state (a freeze of a shard never installed
    /// here, a delete of a served shard): refused, nothing changed. A correct controller
    /// never causes it.
    Refused,
}

/// A shard this group has seen.
#[derive(Debug)]
struct Held {
    /// The highest configuration number of a freeze, install or delete applied to it.
    num: u64,
    status: Status,
    kv: KvServer,
}

/// One 2025 shard group's replicated state.
#[derive(Debug)]
pub struct ShardGrp {
    gid: Gid,
    sharding: Sharding,
    shards: BTreeMap<usize, Held>,
}

impl ShardGrp {
    /// A new group's state. [`GID1`] starts serving every shard, empty, at number 1: the
    /// first configuration gives it all of them.
    pub fn new(gid: Gid, sharding: Sharding) -> Self {
        let mut shards = BTreeMap::new();
        if gid == GID1 {
            for shard in 0..sharding.shards() {
                shards.insert(
                    shard,
                    Held {
                        num: 1,
                        status: Status::Serving,
                        kv: KvServer::new(),
                    },
                );
            }
        }
        ShardGrp {
            gid,
            sharding,
            shards,
        }
    }

    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// Each shard seen here: its number and status.
    pub fn shard_states(&self) -> BTreeMap<usize, (u64, Status)> {
        self.shards
            .iter()
            .map(|(&s, h)| (s, (h.num, h.status)))
            .collect()
    }

    /// Keys stored here, over every shard held (served or frozen).
    pub fn keys(&self) -> usize {
        self.shards.values().map(|h| h.kv.keys()).sum()
    }

    fn serving(&self, key: &str) -> Option<&Held> {
        self.shards
            .get(&self.sharding.shard_of(key))
            .filter(|h| h.status == Status::Serving)
    }

    fn freeze(&mut self, shard: usize, num: u64) -> GrpAnswer {
        let Some(held) = self.shards.get_mut(&shard) else {
            return GrpAnswer::Refused;
        };
        if num < held.num {
            return GrpAnswer::Stale { seen: held.num };
        }
        match held.status {
            Status::Deleted => GrpAnswer::Gone { num: held.num },
            Status::Serving | Status::Frozen => {
                held.num = num;
                held.status = Status::Frozen;
                GrpAnswer::Frozen(held.kv.snapshot())
            }
        }
    }

    fn install(&mut self, shard: usize, num: u64, state: &[u8]) -> GrpAnswer {
        if let Some(held) = self.shards.get(&shard) {
            if num < held.num {
                return GrpAnswer::Stale { seen: held.num };
            }
            if num == held.num {
                // Installed by an earlier copy of this request: done. Frozen or deleted
                // at this very number, this group was the shard's old owner in the
                // change: a controller's mistake.
                return match held.status {
                    Status::Serving => GrpAnswer::Done,
                    Status::Frozen | Status::Deleted => GrpAnswer::Refused,
                };
            }
        }
        let mut kv = KvServer::new();
        if kv.restore(state).is_err() {
            // Never a state a group made; every replica refuses it alike.
            return GrpAnswer::Refused;
        }
        self.shards.insert(
            shard,
            Held {
                num,
                status: Status::Serving,
                kv,
            },
        );
        GrpAnswer::Done
    }

    fn delete(&mut self, shard: usize, num: u64) -> GrpAnswer {
        let Some(held) = self.shards.get_mut(&shard) else {
            return GrpAnswer::Refused;
        };
        if num < held.num {
            return GrpAnswer::Stale { seen: held.num };
        }
        match held.status {
            Status::Serving => GrpAnswer::Refused,
            Status::Deleted => GrpAnswer::Done,
            Status::Frozen => {
                held.num = num;
                held.status = Status::Deleted;
                held.kv = KvServer::new();
                GrpAnswer::Done
            }
        }
    }
}

/// The encoded form of a [`ShardGrp`] in a snapshot.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    gid: Gid,
    sharding: Sharding,
    shards: Vec<(usize, u64, Status, Vec<u8>)>,
}

impl StateMachine for ShardGrp {
    type Command = GrpCommand;
    type Output = GrpAnswer;
    type Query = String;
    type Answer = GrpAnswer;

    fn apply(&mut self, command: GrpCommand) -> GrpAnswer {
        match command {
            GrpCommand::Client(request) => {
                let shard = self.sharding.shard_of(request.key());
                match self.shards.get_mut(&shard) {
                    Some(held) if held.status == Status::Serving => {
                        GrpAnswer::Kv(held.kv.handle(request))
                    }
                    _ => GrpAnswer::WrongGroup,
                }
            }
            GrpCommand::Freeze { shard, num } => self.freeze(shard, num),
            GrpCommand::Install { shard, num, state } => self.install(shard, num, &state),
            GrpCommand::Delete { shard, num } => self.delete(shard, num),
        }
    }

    /// A clerk's `Get` of the key.
    fn query(&self, key: &String) -> GrpAnswer {
        match self.serving(key) {
            Some(held) => GrpAnswer::Kv(held.kv.read(key)),
            None => GrpAnswer::WrongGroup,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            gid: self.gid,
            sharding: self.sharding,
            shards: self
                .shards
                .iter()
                .map(|(&s, h)| (s, h.num, h.status, h.kv.snapshot()))
                .collect(),
        };
        postcard::to_allocvec(&snapshot).expect("a group's state encodes")
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: Snapshot = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        if s.gid != self.gid {
            return Err(format!("a snapshot of group {}, not {}", s.gid, self.gid));
        }
        let mut shards = BTreeMap::new();
        for (shard, num, status, kv_bytes) in s.shards {
            let mut kv = KvServer::new();
            kv.restore(&kv_bytes)
                .map_err(|e| format!("shard {shard}: {e}"))?;
            shards.insert(shard, Held { num, status, kv });
        }
        *self = ShardGrp {
            gid: s.gid,
            sharding: s.sharding,
            shards,
        };
        Ok(())
    }
}

/// A request to a 2025 group's replica, from a clerk or a controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrpRequest {
    /// A clerk's request: `Get` read through ReadIndex, writes through the log.
    Client(Request),
    /// A controller's `FreezeShard`, `InstallShard` or `DeleteShard`, through the log.
    Shard(GrpCommand),
}

/// Executes a request on a replica.
pub async fn serve<N, P, W>(
    replica: &RsmHandle<N, P, W, ShardGrp>,
    request: GrpRequest,
) -> Replied<GrpAnswer>
where
    N: Shared<RawNode>,
    P: Shared<Rsm<ShardGrp>>,
    W: Wake,
{
    match request {
        GrpRequest::Client(Request::Get { key, .. }) => Replied::from_read(replica.read(key).await),
        GrpRequest::Client(write) => {
            Replied::from_submit(replica.submit(GrpCommand::Client(write)).await)
        }
        GrpRequest::Shard(command) => Replied::from_submit(replica.submit(command).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> GrpCommand {
        GrpCommand::Client(Request::PutIfVersion {
            key: key.into(),
            value: value.into(),
            version: 0,
        })
    }

    #[test]
    fn a_move_freezes_installs_and_deletes_once_and_older_numbers_are_fenced() {
        let mut old = ShardGrp::new(GID1, Sharding::Fnv12);
        let mut new = ShardGrp::new(2, Sharding::Fnv12);
        let shard = Sharding::Fnv12.shard_of("k0");
        assert!(matches!(old.apply(put("k0", "v")), GrpAnswer::Kv(_)));
        assert_eq!(new.apply(put("k0", "w")), GrpAnswer::WrongGroup);

        let GrpAnswer::Frozen(state) = old.apply(GrpCommand::Freeze { shard, num: 2 }) else {
            panic!("not frozen")
        };
        assert_eq!(old.apply(put("k0", "x")), GrpAnswer::WrongGroup);
        assert_eq!(old.query(&"k0".to_string()), GrpAnswer::WrongGroup);
        // A repeated freeze answers the same state.
        assert_eq!(
            old.apply(GrpCommand::Freeze { shard, num: 2 }),
            GrpAnswer::Frozen(state.clone())
        );
        let install = GrpCommand::Install {
            shard,
            num: 2,
            state: state.clone(),
        };
        assert_eq!(new.apply(install.clone()), GrpAnswer::Done);
        assert!(matches!(
            new.query(&"k0".to_string()),
            GrpAnswer::Kv(Reply::Value { ref value, .. }) if value == "v"
        ));
        assert_eq!(new.apply(install), GrpAnswer::Done);
        assert_eq!(
            old.apply(GrpCommand::Delete { shard, num: 2 }),
            GrpAnswer::Done
        );
        assert_eq!(old.keys(), 0);
        assert_eq!(
            old.apply(GrpCommand::Freeze { shard, num: 2 }),
            GrpAnswer::Gone { num: 2 }
        );

        // The shard moves on (configuration 3); a controller of 2 waking up is fenced.
        assert!(matches!(
            new.apply(GrpCommand::Freeze { shard, num: 3 }),
            GrpAnswer::Frozen(_)
        ));
        assert_eq!(
            new.apply(GrpCommand::Install {
                shard,
                num: 2,
                state
            }),
            GrpAnswer::Stale { seen: 3 }
        );
        assert_eq!(
            new.apply(GrpCommand::Freeze { shard, num: 2 }),
            GrpAnswer::Stale { seen: 3 }
        );
    }

    #[test]
    fn a_served_shard_is_never_deleted_and_snapshots_keep_numbers() {
        let mut g = ShardGrp::new(GID1, Sharding::Fnv12);
        assert_eq!(
            g.apply(GrpCommand::Delete { shard: 0, num: 5 }),
            GrpAnswer::Refused
        );
        assert!(matches!(
            g.apply(GrpCommand::Freeze { shard: 0, num: 4 }),
            GrpAnswer::Frozen(_)
        ));
        let mut copy = ShardGrp::new(GID1, Sharding::Fnv12);
        copy.restore(&g.snapshot()).unwrap();
        assert_eq!(copy.shard_states(), g.shard_states());
        assert_eq!(
            copy.apply(GrpCommand::Freeze { shard: 0, num: 3 }),
            GrpAnswer::Stale { seen: 4 }
        );
        assert!(ShardGrp::new(2, Sharding::Fnv12)
            .restore(&g.snapshot())
            .is_err());
    }
}
