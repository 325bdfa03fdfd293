//! A shard group's replicated state (6.5840 2024 `shardkv` server): the shards this group
//! holds, each a [`KvServer`] with its own duplicate table, and the configuration it is at.
//!
//! Everything that changes which shards a group serves goes through its log, so every
//! replica serves, freezes, installs and deletes at the same point of its history:
//!
//! - [`GroupCommand::Adopt`] moves to the next configuration (only `num + 1`, and only when
//!   no migration of the current one is unfinished). Shards leaving the group are frozen
//!   (kept, no longer served, until their new owner confirms it has them); shards arriving
//!   from no group start empty and are served at once; shards arriving from another group
//!   are awaited.
//! - [`GroupCommand::Install`] puts an awaited shard's state in place; it is served from then
//!   on, before the rest of the migration ends (2024's challenge 2). The old owner still
//!   has to be told.
//! - [`GroupCommand::Delete`] drops a frozen shard once its new owner has it (challenge 1);
//!   [`GroupCommand::Confirmed`] records at the new owner that the old one was told.
//!
//! Each is idempotent and tagged with its configuration number, so retries, duplicates and
//! commands of an older configuration change nothing. A shard's duplicate table travels
//! with its data, so a write retried at the shard's next owner still applies once.
//!
//! When every group leaves, the shards belong to no group; their last owner keeps them
//! frozen and serves them again if they come back to it. Given to another group instead,
//! they start empty there: leaving every group gives up the store's data (the controller,
//! like the lab's, accepts that leave).
//!
//! Guarded in every build: a group serves a key only if its configuration gives the key's
//! shard to it and the shard's data is here.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_kv::{KvServer, Reply, Request};
use flotilla_node::Shared;
use flotilla_raft::RawNode;
use flotilla_rsm::{Replied, Rsm, RsmHandle, StateMachine, Wake};
use flotilla_shardctrler::{Config, Gid, Sharding, NO_GROUP};
use serde::{Deserialize, Serialize};
use tracing::error;

/// Where a shard this group holds stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Ours in the current configuration, its data here: served.
    Serving,
    /// Ours in the current configuration, its data still at the previous owner.
    Awaited,
    /// No longer ours: kept, unserved, until the new owner has it.
    Frozen,
}

/// A command in a group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    /// A clerk's write.
    Client(Request),
    /// Move to this configuration.
    Adopt(Config),
    /// The state of `shard` for configuration `num`, fetched from its previous owner.
    Install {
        num: u64,
        shard: usize,
        state: Vec<u8>,
    },
    /// The new owner of `shard` (at `num`) has it: drop it here.
    Delete { num: u64, shard: usize },
    /// The previous owner of `shard` (at `num`) has dropped it.
    Confirmed { num: u64, shard: usize },
}

/// A read of a group's state (served after a ReadIndex confirmation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupQuery {
    /// A clerk's `Get`.
    Get(String),
    /// Another group's fetch of a shard it is owed at configuration `num`.
    Fetch { num: u64, shard: usize },
}

/// What a group answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAnswer {
    /// The KV answer to a clerk's request.
    Kv(Reply),
    /// This group does not serve the key's shard now (6.5840's `ErrWrongGroup`).
    WrongGroup,
    /// A fetched shard's state.
    Shard(Vec<u8>),
    /// Not yet at the configuration asked about: try later.
    NotReady,
    /// Done: an `Adopt`, `Install`, `Delete` or `Confirmed` took effect, or had already.
    Done,
    /// An `Adopt` that is not the next configuration, or comes while a migration is
    /// unfinished: nothing changed.
    Refused,
}

/// A shard held here.
#[derive(Debug)]
struct Shard {
    state: ShardState,
    kv: KvServer,
}

/// One shard group's replicated state.
#[derive(Debug)]
pub struct ShardGroup {
    gid: Gid,
    sharding: Sharding,
    config: Config,
    previous: Config,
    shards: BTreeMap<usize, Shard>,
    /// Shards installed here whose previous owner has not yet confirmed dropping them.
    unconfirmed: BTreeSet<usize>,
}

/// What the group's driver must do next (read from a replica's state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// The configuration's number.
    pub num: u64,
    /// Shards to fetch: (shard, previous owner, its servers).
    pub fetch: Vec<(usize, Gid, Vec<String>)>,
    /// Shards whose previous owner must be told to drop them: (shard, owner, servers).
    pub tell: Vec<(usize, Gid, Vec<String>)>,
    /// Shards frozen here, waiting for their new owner.
    pub frozen: Vec<usize>,
}

impl Work {
    /// Nothing unfinished: the group may move to the next configuration.
    pub fn settled(&self) -> bool {
        self.fetch.is_empty() && self.tell.is_empty() && self.frozen.is_empty()
    }
}

impl ShardGroup {
    pub fn new(gid: Gid, sharding: Sharding) -> Self {
        assert_ne!(gid, NO_GROUP, "gid 0 is no group");
        ShardGroup {
            gid,
            sharding,
            config: Config::empty(sharding.shards()),
            previous: Config::empty(sharding.shards()),
            shards: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
        }
    }

    pub fn gid(&self) -> Gid {
        self.gid
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state of each shard held here.
    pub fn shard_states(&self) -> BTreeMap<usize, ShardState> {
        self.shards.iter().map(|(&s, sh)| (s, sh.state)).collect()
    }

    /// Keys stored here, over every shard held (served or not).
    pub fn keys(&self) -> usize {
        self.shards.values().map(|s| s.kv.keys()).sum()
    }

    /// What is unfinished in the current configuration.
    pub fn work(&self) -> Work {
        let mut work = Work {
            num: self.config.num,
            ..Work::default()
        };
        for (&shard, held) in &self.shards {
            let from = self.previous.owner(shard);
            let servers = || self.previous.groups.get(&from).cloned().unwrap_or_default();
            match held.state {
                ShardState::Awaited => work.fetch.push((shard, from, servers())),
                // A shard given to no group (every group left) waits for no one.
                ShardState::Frozen if self.config.owner(shard) == NO_GROUP => {}
                ShardState::Frozen => work.frozen.push(shard),
                ShardState::Serving if self.unconfirmed.contains(&shard) => {
                    work.tell.push((shard, from, servers()))
                }
                ShardState::Serving => {}
            }
        }
        work
    }

    fn serving(&self, key: &str) -> Option<usize> {
        let shard = self.sharding.shard_of(key);
        let held = self.shards.get(&shard)?;
        if held.state != ShardState::Serving {
            return None;
        }
        assert_eq!(
            self.config.owner(shard),
            self.gid,
            "group {} serves shard {shard}, which configuration {} gives to another",
            self.gid,
            self.config.num
        );
        Some(shard)
    }

    fn adopt(&mut self, next: Config) -> GroupAnswer {
        if next.num <= self.config.num {
            return GroupAnswer::Done;
        }
        if next.num != self.config.num + 1 || !self.work().settled() {
            return GroupAnswer::Refused;
        }
        // It came from another process: a configuration this group cannot use (another
        // number of shards, shards at groups it does not name) is refused, the same on
        // every replica, and never indexed.
        if let Err(e) = next.validate_for(self.sharding.shards()) {
            error!("group {}: refusing to adopt {e}", self.gid);
            return GroupAnswer::Refused;
        }
        for shard in 0..next.shards.len() {
            let (was, will) = (self.config.owner(shard), next.owner(shard));
            if was == NO_GROUP && self.shards.contains_key(&shard) {
                // We were its last owner before every group left: ours again, or no one
                // will ever fetch it from us.
                if will == self.gid {
                    self.shards.get_mut(&shard).expect("held").state = ShardState::Serving;
                } else {
                    self.shards.remove(&shard);
                }
                continue;
            }
            if was == self.gid && will != self.gid {
                let held = self.shards.get_mut(&shard).expect("a served shard is held");
                held.state = ShardState::Frozen;
            } else if was != self.gid && will == self.gid {
                let state = if was == NO_GROUP {
                    ShardState::Serving
                } else {
                    ShardState::Awaited
                };
                let fresh = Shard {
                    state,
                    kv: KvServer::new(),
                };
                assert!(
                    self.shards.insert(shard, fresh).is_none(),
                    "shard {shard} arrives at group {} that still holds it",
                    self.gid
                );
            }
        }
        self.previous = std::mem::replace(&mut self.config, next);
        GroupAnswer::Done
    }

    fn install(&mut self, num: u64, shard: usize, state: &[u8]) -> GroupAnswer {
        if num != self.config.num {
            return GroupAnswer::Done;
        }
        match self.shards.get_mut(&shard) {
            Some(held) if held.state == ShardState::Awaited => {
                if held.kv.restore(state).is_err() {
                    // Never one a group made; leave it awaited, every replica alike.
                    return GroupAnswer::Refused;
                }
                held.state = ShardState::Serving;
                self.unconfirmed.insert(shard);
                GroupAnswer::Done
            }
            _ => GroupAnswer::Done,
        }
    }

    fn delete(&mut self, num: u64, shard: usize) -> GroupAnswer {
        if num > self.config.num {
            return GroupAnswer::NotReady;
        }
        if num == self.config.num
            && self
                .shards
                .get(&shard)
                .is_some_and(|h| h.state == ShardState::Frozen)
        {
            self.shards.remove(&shard);
        }
        GroupAnswer::Done
    }

    fn fetch(&self, num: u64, shard: usize) -> GroupAnswer {
        if num > self.config.num {
            return GroupAnswer::NotReady;
        }
        match self.shards.get(&shard) {
            Some(held) if num == self.config.num && held.state == ShardState::Frozen => {
                GroupAnswer::Shard(held.kv.snapshot())
            }
            // Already handed over and dropped, or never ours at `num`: the asker is behind
            // or confused; it will find out from its own log.
            _ => GroupAnswer::NotReady,
        }
    }
}

/// The encoded form of a [`ShardGroup`] in a snapshot.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    gid: Gid,
    sharding: Sharding,
    config: Config,
    previous: Config,
    shards: Vec<(usize, ShardState, Vec<u8>)>,
    unconfirmed: BTreeSet<usize>,
}

impl StateMachine for ShardGroup {
    type Command = GroupCommand;
    type Output = GroupAnswer;
    type Query = GroupQuery;
    type Answer = GroupAnswer;

    fn apply(&mut self, command: GroupCommand) -> GroupAnswer {
        match command {
            GroupCommand::Client(request) => match self.serving(request.key()) {
                Some(shard) => {
                    let held = self.shards.get_mut(&shard).expect("served shards are held");
                    GroupAnswer::Kv(held.kv.handle(request))
                }
                None => GroupAnswer::WrongGroup,
            },
            GroupCommand::Adopt(config) => self.adopt(config),
            GroupCommand::Install { num, shard, state } => self.install(num, shard, &state),
            GroupCommand::Delete { num, shard } => self.delete(num, shard),
            GroupCommand::Confirmed { num, shard } => {
                if num == self.config.num {
                    self.unconfirmed.remove(&shard);
                }
                GroupAnswer::Done
            }
        }
    }

    fn query(&self, query: &GroupQuery) -> GroupAnswer {
        match query {
            GroupQuery::Get(key) => match self.serving(key) {
                Some(shard) => GroupAnswer::Kv(self.shards[&shard].kv.read(key)),
                None => GroupAnswer::WrongGroup,
            },
            GroupQuery::Fetch { num, shard } => self.fetch(*num, *shard),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            gid: self.gid,
            sharding: self.sharding,
            config: self.config.clone(),
            previous: self.previous.clone(),
            shards: self
                .shards
                .iter()
                .map(|(&s, h)| (s, h.state, h.kv.snapshot()))
                .collect(),
            unconfirmed: self.unconfirmed.clone(),
        };
        postcard::to_allocvec(&snapshot).expect("a group's state encodes")
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: Snapshot = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        if s.gid != self.gid {
            return Err(format!("a snapshot of group {}, not {}", s.gid, self.gid));
        }
        let mut shards = BTreeMap::new();
        for (shard, state, kv_bytes) in s.shards {
            let mut kv = KvServer::new();
            kv.restore(&kv_bytes)
                .map_err(|e| format!("shard {shard}: {e}"))?;
            shards.insert(shard, Shard { state, kv });
        }
        *self = ShardGroup {
            gid: s.gid,
            sharding: s.sharding,
            config: s.config,
            previous: s.previous,
            shards,
            unconfirmed: s.unconfirmed,
        };
        Ok(())
    }
}

/// A request to a group's replica, from a clerk or another group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRequest {
    /// A clerk's request: `Get` read through ReadIndex, writes through the log.
    Client(Request),
    /// Another group fetches a shard it is owed.
    Fetch { num: u64, shard: usize },
    /// Another group has installed a shard it fetched from this one.
    Delete { num: u64, shard: usize },
}

/// Executes a request on a replica.
pub async fn serve<N, P, W>(
    replica: &RsmHandle<N, P, W, ShardGroup>,
    request: GroupRequest,
) -> Replied<GroupAnswer>
where
    N: Shared<RawNode>,
    P: Shared<Rsm<ShardGroup>>,
    W: Wake,
{
    match request {
        // A `Get` is read through ReadIndex, so its `ack` is not applied (as in kvraft): a
        // read changes no replicated state. What the ack would free stays bounded: one
        // session per writing clerk, each keeping at most one owed old value, released by
        // that clerk's next write to the shard.
        GroupRequest::Client(Request::Get { key, .. }) => {
            Replied::from_read(replica.read(GroupQuery::Get(key)).await)
        }
        GroupRequest::Client(write) => {
            Replied::from_submit(replica.submit(GroupCommand::Client(write)).await)
        }
        GroupRequest::Fetch { num, shard } => {
            Replied::from_read(replica.read(GroupQuery::Fetch { num, shard }).await)
        }
        GroupRequest::Delete { num, shard } => {
            Replied::from_submit(replica.submit(GroupCommand::Delete { num, shard }).await)
        }
    }
}

#[cfg(test)]
mod tests;
