//! Configurations: which group serves each shard, and which servers make up each group.
//!
//! A [`Config`] is one numbered step of the controller's history. Every change (a join, a
//! leave, a move) makes the next number; a configuration, once made, never changes. The
//! rebalance is deterministic (groups visited in ascending id, shards in ascending number),
//! so every replica of the controller computes the same configurations, and it moves as
//! few shards as possible:
//!
//! - after a join, only shards that end on a joining group change owner;
//! - after a leave, only shards of the leaving groups change owner;
//! - afterwards every shard belongs to a group (when there is one), and the shard counts of
//!   the groups differ by at most one (groups beyond the number of shards get none).
//!
//! Two shardings use this: 6.5840's 2024 labs (10 shards, a key's shard is its first byte
//! mod 10) and 2025's (12 shards, FNV-1a of the key mod 12): [`Sharding`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A replica group's id. 0 is no group: the owner of every shard before the first join.
pub type Gid = u64;

/// The group id that owns nothing.
pub const NO_GROUP: Gid = 0;

/// How keys map to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sharding {
    /// 6.5840 2024: 10 shards; a key's shard is its first byte mod 10 (the empty key: 0).
    FirstByte10,
    /// 6.5840 2025: 12 shards; 32-bit FNV-1a of the key's bytes mod 12.
    Fnv12,
}

impl Sharding {
    pub fn shards(self) -> usize {
        match self {
            Sharding::FirstByte10 => 10,
            Sharding::Fnv12 => 12,
        }
    }

    /// The shard of `key`.
    pub fn shard_of(self, key: &str) -> usize {
        match self {
            Sharding::FirstByte10 => key.as_bytes().first().map_or(0, |&b| b as usize % 10),
            Sharding::Fnv12 => fnv1a_32(key.as_bytes()) as usize % 12,
        }
    }
}

fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Why a change was refused. The configuration is left as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConfigError {
    #[error("group {0} is already in the configuration")]
    AlreadyJoined(Gid),
    #[error("group {0} is not in the configuration")]
    NotJoined(Gid),
    #[error("group id 0 means no group; it cannot join")]
    ReservedGid,
    #[error("group {gid} has no servers")]
    NoServers { gid: Gid },
    #[error("server {server:?} already belongs to group {owner}")]
    ServerTaken { server: String, owner: Gid },
    #[error("nothing to do: no groups given")]
    Empty,
    #[error("there is no shard {shard}: shards are 0..{shards}")]
    NoShard { shard: usize, shards: usize },
}

/// One configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// Its number: 0 for the empty configuration, one more for each change.
    pub num: u64,
    /// The owner of each shard ([`NO_GROUP`] when there are no groups).
    pub shards: Vec<Gid>,
    /// Each group's servers, in the order they were given.
    pub groups: BTreeMap<Gid, Vec<String>>,
}

impl Config {
    /// Configuration 0: no groups, every shard at [`NO_GROUP`].
    pub fn empty(shards: usize) -> Self {
        Config {
            num: 0,
            shards: vec![NO_GROUP; shards],
            groups: BTreeMap::new(),
        }
    }

    /// The owner of `shard`.
    pub fn owner(&self, shard: usize) -> Gid {
        self.shards[shard]
    }

    /// The shards `gid` owns, ascending.
    pub fn shards_of(&self, gid: Gid) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|&s| self.shards[s] == gid)
            .collect()
    }

    /// 2025's `IsMember`: `gid` owns at least one shard.
    pub fn owns_any(&self, gid: Gid) -> bool {
        self.shards.contains(&gid)
    }

    /// The next configuration with `groups` added and the shards rebalanced.
    pub fn join(&self, groups: &BTreeMap<Gid, Vec<String>>) -> Result<Config, ConfigError> {
        if groups.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut next = self.successor();
        for (&gid, servers) in groups {
            if gid == NO_GROUP {
                return Err(ConfigError::ReservedGid);
            }
            if next.groups.contains_key(&gid) {
                return Err(ConfigError::AlreadyJoined(gid));
            }
            if servers.is_empty() {
                return Err(ConfigError::NoServers { gid });
            }
            for server in servers {
                if let Some((&owner, _)) = next.groups.iter().find(|(_, s)| s.contains(server)) {
                    return Err(ConfigError::ServerTaken {
                        server: server.clone(),
                        owner,
                    });
                }
            }
            next.groups.insert(gid, servers.clone());
        }
        next.rebalance();
        Ok(next)
    }

    /// The next configuration without `gids`, their shards given to the others.
    pub fn leave(&self, gids: &[Gid]) -> Result<Config, ConfigError> {
        if gids.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut next = self.successor();
        for gid in gids {
            if next.groups.remove(gid).is_none() {
                return Err(ConfigError::NotJoined(*gid));
            }
        }
        next.rebalance();
        Ok(next)
    }

    /// The next configuration with `shard` at `gid` and nothing else changed (no
    /// rebalance: a later join or leave may move it again).
    pub fn moved(&self, shard: usize, gid: Gid) -> Result<Config, ConfigError> {
        if shard >= self.shards.len() {
            return Err(ConfigError::NoShard {
                shard,
                shards: self.shards.len(),
            });
        }
        if !self.groups.contains_key(&gid) {
            return Err(ConfigError::NotJoined(gid));
        }
        let mut next = self.successor();
        next.shards[shard] = gid;
        Ok(next)
    }

    fn successor(&self) -> Config {
        let mut next = self.clone();
        next.num += 1;
        next
    }

    /// Gives every shard without a live owner to the least-loaded group, then moves shards
    /// from the most-loaded group to the least-loaded one until their counts differ by at
    /// most one. Ties go to the smallest gid; the shard moved is the lowest-numbered one.
    fn rebalance(&mut self) {
        if self.groups.is_empty() {
            self.shards.iter_mut().for_each(|s| *s = NO_GROUP);
            return;
        }
        let mut load: BTreeMap<Gid, usize> = self.groups.keys().map(|&g| (g, 0)).collect();
        for gid in &self.shards {
            if let Some(n) = load.get_mut(gid) {
                *n += 1;
            }
        }
        let least = |load: &BTreeMap<Gid, usize>| {
            let (&gid, &n) = load
                .iter()
                .min_by_key(|&(&g, &n)| (n, g))
                .expect("at least one group");
            (gid, n)
        };
        for shard in 0..self.shards.len() {
            if !load.contains_key(&self.shards[shard]) {
                let (gid, _) = least(&load);
                self.shards[shard] = gid;
                *load.get_mut(&gid).expect("a group") += 1;
            }
        }
        loop {
            let (&most, &most_n) = load
                .iter()
                .max_by_key(|&(&g, &n)| (n, std::cmp::Reverse(g)))
                .expect("at least one group");
            let (least_gid, least_n) = least(&load);
            if most_n < least_n + 2 {
                break;
            }
            let shard = self
                .shards
                .iter()
                .position(|&g| g == most)
                .expect("the most-loaded group has shards");
            self.shards[shard] = least_gid;
            *load.get_mut(&most).expect("a group") -= 1;
            *load.get_mut(&least_gid).expect("a group") += 1;
        }
    }

    /// The configuration's own consistency (every shard at a group of it, or all at
    /// [`NO_GROUP`] when it has none), for checks and for decoding one from outside.
    pub fn validate(&self) -> Result<(), String> {
        for (shard, gid) in self.shards.iter().enumerate() {
            let ok = if self.groups.is_empty() {
                *gid == NO_GROUP
            } else {
                *gid == NO_GROUP || self.groups.contains_key(gid)
            };
            if !ok {
                return Err(format!(
                    "shard {shard} is at group {gid}, not in the configuration"
                ));
            }
        }
        Ok(())
    }

    /// [`Config::validate`], and the shape a store of `shards` shards can use: exactly
    /// `shards` shard owners, no group 0 among the groups, and servers for every group.
    /// What a group or clerk checks of a configuration that came from another process
    /// before it indexes the shards by number or adopts it.
    pub fn validate_for(&self, shards: usize) -> Result<(), String> {
        if self.shards.len() != shards {
            return Err(format!(
                "configuration {} has {} shards, not {shards}",
                self.num,
                self.shards.len()
            ));
        }
        if self.groups.contains_key(&NO_GROUP) {
            return Err(format!(
                "configuration {} has a group 0 (no group)",
                self.num
            ));
        }
        if let Some((gid, _)) = self.groups.iter().find(|(_, servers)| servers.is_empty()) {
            return Err(format!(
                "configuration {}: group {gid} has no servers",
                self.num
            ));
        }
        self.validate()
            .map_err(|e| format!("configuration {}: {e}", self.num))
    }

    /// 2025's `String()`: the configuration as JSON (how the 2025 controller stores it).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a configuration encodes")
    }

    /// 2025's `FromString`.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
