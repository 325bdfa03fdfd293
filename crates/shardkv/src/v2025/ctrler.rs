//! The 2025 shard controller (6.5840 2025 `shardkv1/shardctrler`): not a replicated
//! service but a library that any number of processes may run at once. It keeps the
//! configurations in a versioned KV store and moves shards itself by calling the groups.
//!
//! The store holds two keys: [`CURRENT`], the configuration in force, and [`NEXT`], the
//! configuration being made. A change from configuration `n` to `n + 1`:
//!
//! 1. **claims** `n + 1` by writing it under [`NEXT`] with a versioned put: of controllers
//!    racing for the same number, exactly one wins (the claim is the lock, and the
//!    configuration number is its fencing token);
//! 2. **moves** every shard whose owner changes: freeze at the old owner, install its state
//!    at the new one, delete at the old one, each tagged `n + 1` and retried until the group
//!    answers (a group that is down holds the change up, as 2025's `TestJoinLeave5B` wants);
//! 3. **publishes** `n + 1` under [`CURRENT`] with a versioned put.
//!
//! A change that a controller claimed and did not publish (it crashed or was cut off) is
//! finished by the next controller that looks: [`Controller::init`] (2025's
//! `InitController`) and every later change do so before anything else. Two controllers
//! finishing the same change do the same idempotent steps. A controller that wakes up after
//! others moved on is fenced: the groups refuse requests older than what a shard has seen
//! ([`GrpAnswer::Stale`]) and its versioned puts fail, so it gives up with
//! [`ChangeError::Superseded`] having changed nothing.

use std::future::Future;

use flotilla_kv::lock::VersionedKv;
use flotilla_kv::KvError;
use flotilla_shardctrler::{Config, Gid, NO_GROUP};

use super::shardgrp::{GrpAnswer, GrpCommand};

/// The key of the configuration in force.
pub const CURRENT: &str = "shardctrler/config";
/// The key of the configuration being made (claimed, maybe not yet published).
pub const NEXT: &str = "shardctrler/next";

/// How a controller reaches the world: the configuration store, and the groups.
pub trait CtrlLinks {
    type Store: VersionedKv;
    fn store(&self) -> &Self::Store;
    /// One round of `command` over the group's servers until one executes it; `None` (after
    /// a pause) if none did (the group may be down, or this controller cut off).
    fn call_group(
        &self,
        gid: Gid,
        servers: &[String],
        command: GrpCommand,
    ) -> impl Future<Output = Option<GrpAnswer>>;
}

/// Why a change did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// Another controller made this configuration number, or a later one, first.
    #[error("superseded: configuration {0} was made by another controller")]
    Superseded(u64),
    /// The asked configuration does not follow the current one.
    #[error("configuration {asked} does not follow the current {current}")]
    NotNext { asked: u64, current: u64 },
    /// The store holds something that is not a configuration.
    #[error("the store's {key} is not a configuration: {why}")]
    Corrupt { key: &'static str, why: String },
}

/// One controller (2025's `ShardCtrler`).
pub struct Controller<L> {
    links: L,
    finishing: std::cell::RefCell<Option<Finishing>>,
}

/// The change a controller is finishing (steps 2 and 3) right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finishing {
    /// The configuration being made.
    pub next: Config,
    /// Whether it is the one this controller was asked to make (not another controller's
    /// claimed change it is finishing for them).
    pub own: bool,
}

impl<L: CtrlLinks> Controller<L> {
    pub fn new(links: L) -> Self {
        Controller {
            links,
            finishing: std::cell::RefCell::new(None),
        }
    }

    /// The change this controller is in the middle of, if any: what a controller that
    /// was cut off leaves for the next one to finish.
    pub fn finishing(&self) -> Option<Finishing> {
        self.finishing.borrow().clone()
    }

    pub fn links(&self) -> &L {
        &self.links
    }

    /// 2025's `InitConfig`: stores the first configuration (once; later calls change
    /// nothing).
    pub async fn init_config(&self, first: &Config) {
        let json = first.to_json();
        let store = self.links.store();
        // Version 0 means "the key must not exist": only the first call writes.
        let _ = store.put(CURRENT, &json, 0).await;
        let _ = store.put(NEXT, &json, 0).await;
    }

    /// 2025's `InitController`: finishes a change a previous controller claimed and did not
    /// publish.
    pub async fn init(&self) -> Result<(), ChangeError> {
        let (current, version) = self.read(CURRENT).await?;
        let (next, _) = self.read(NEXT).await?;
        if next.num == current.num + 1 {
            self.finish(&current, version, &next, false).await?;
        }
        Ok(())
    }

    /// 2025's `Query`: the configuration in force.
    pub async fn query(&self) -> Result<Config, ChangeError> {
        Ok(self.read(CURRENT).await?.0)
    }

    /// 2025's `ChangeConfigTo`: makes `next` the configuration in force, moving the shards.
    pub async fn change_to(&self, next: &Config) -> Result<(), ChangeError> {
        let store = self.links.store();
        loop {
            let (current, version) = self.read(CURRENT).await?;
            if next.num <= current.num {
                return Err(ChangeError::Superseded(next.num));
            }
            if next.num != current.num + 1 {
                return Err(ChangeError::NotNext {
                    asked: next.num,
                    current: current.num,
                });
            }
            let (claimed, claim_version) = self.read(NEXT).await?;
            if claimed.num == next.num {
                if &claimed == next {
                    // Ours (an earlier attempt whose reply was lost) or an identical one.
                    return self.finish(&current, version, next, true).await;
                }
                // Another controller's change to this number: finish it for them; ours
                // was computed from a configuration that is no longer current.
                self.finish(&current, version, &claimed, false).await?;
                return Err(ChangeError::Superseded(next.num));
            }
            match store.put(NEXT, &next.to_json(), claim_version).await {
                Ok(()) => return self.finish(&current, version, next, true).await,
                // Someone else claimed meanwhile, or our claim's fate is unknown: look again.
                Err(KvError::Version | KvError::Maybe | KvError::NoKey) => continue,
            }
        }
    }

    /// Steps 2 and 3 of a claimed change from `current` (stored at `version`) to `next`
    /// (`own`: the change this controller was asked to make).
    async fn finish(
        &self,
        current: &Config,
        version: u64,
        next: &Config,
        own: bool,
    ) -> Result<(), ChangeError> {
        *self.finishing.borrow_mut() = Some(Finishing {
            next: next.clone(),
            own,
        });
        let result = self.move_and_publish(current, version, next).await;
        *self.finishing.borrow_mut() = None;
        result
    }

    async fn move_and_publish(
        &self,
        current: &Config,
        version: u64,
        next: &Config,
    ) -> Result<(), ChangeError> {
        assert_eq!(
            next.num,
            current.num + 1,
            "a change goes to the next configuration"
        );
        for shard in 0..next.shards.len() {
            let (from, to) = (current.owner(shard), next.owner(shard));
            if from == to {
                continue;
            }
            if let Err(e) = self.move_shard(shard, current, next).await {
                // Finished and published by another controller, or superseded.
                let (now, _) = self.read(CURRENT).await?;
                return if &now == next { Ok(()) } else { Err(e) };
            }
        }
        match self
            .links
            .store()
            .put(CURRENT, &next.to_json(), version)
            .await
        {
            Ok(()) => Ok(()),
            Err(_) => {
                // Published by another controller finishing the same change, or by us in
                // an attempt whose reply was lost — or superseded.
                let (now, _) = self.read(CURRENT).await?;
                if &now == next {
                    Ok(())
                } else {
                    Err(ChangeError::Superseded(next.num))
                }
            }
        }
    }

    /// Moves one shard from its owner in `current` to its owner in `next`.
    async fn move_shard(
        &self,
        shard: usize,
        current: &Config,
        next: &Config,
    ) -> Result<(), ChangeError> {
        let num = next.num;
        let (from, to) = (current.owner(shard), next.owner(shard));
        let servers =
            |config: &Config, gid: Gid| config.groups.get(&gid).cloned().unwrap_or_default();
        let state = if from == NO_GROUP {
            // Every group had left: the shard starts empty at its new owner.
            Some(flotilla_kv::KvServer::new().snapshot())
        } else {
            let freeze = GrpCommand::Freeze { shard, num };
            match self
                .call(num, from, &servers(current, from), freeze)
                .await?
            {
                GrpAnswer::Frozen(state) => Some(state),
                // Deleted at the old owner at this number: installed already (a delete
                // only ever follows the install of the same change).
                GrpAnswer::Gone { num: at } if at == num => None,
                _ => return Err(ChangeError::Superseded(num)),
            }
        };
        if let Some(state) = state {
            if to != NO_GROUP {
                let install = GrpCommand::Install { shard, num, state };
                match self.call(num, to, &servers(next, to), install).await? {
                    GrpAnswer::Done => {}
                    _ => return Err(ChangeError::Superseded(num)),
                }
            }
            if from != NO_GROUP {
                let delete = GrpCommand::Delete { shard, num };
                match self
                    .call(num, from, &servers(current, from), delete)
                    .await?
                {
                    GrpAnswer::Done => {}
                    _ => return Err(ChangeError::Superseded(num)),
                }
            }
        }
        Ok(())
    }

    /// Sends a shard command of the change to configuration `num` until the group executes
    /// it, for as long as that change is not published: a group that is down holds the
    /// change up, but a controller finishing a change others published long ago (and
    /// maybe retired its groups) gives up.
    async fn call(
        &self,
        num: u64,
        gid: Gid,
        servers: &[String],
        command: GrpCommand,
    ) -> Result<GrpAnswer, ChangeError> {
        loop {
            if let Some(answer) = self.links.call_group(gid, servers, command.clone()).await {
                return Ok(answer);
            }
            if self.read(CURRENT).await?.0.num >= num {
                return Err(ChangeError::Superseded(num));
            }
        }
    }

    async fn read(&self, key: &'static str) -> Result<(Config, u64), ChangeError> {
        let (json, version) = match self.links.store().get(key).await {
            Ok(found) => found,
            Err(e) => {
                return Err(ChangeError::Corrupt {
                    key,
                    why: format!("not stored ({e}); InitConfig first"),
                })
            }
        };
        let config = Config::from_json(&json).map_err(|why| ChangeError::Corrupt { key, why })?;
        Ok((config, version))
    }
}
