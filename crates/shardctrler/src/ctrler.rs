//! The shard controller as a replicated state machine (6.5840 2024 `shardctrler`): the
//! history of configurations, changed by `Join`, `Leave` and `Move` commands through the
//! log and read by `Query` through ReadIndex.
//!
//! Guarantees:
//! - Every replica computes the same configurations (the rebalance is deterministic).
//! - A change is applied exactly once however often its clerk resends it: each carries the
//!   clerk's (client, seq); the controller remembers each clerk's last change and its result.
//!   The table is replicated and snapshotted with the configurations.
//! - A refused change (a gid joined twice, a leave of an absent gid, …) makes no
//!   configuration; its error is the result, remembered like any other.
//! - `Query(None)` and `Query(Some(n))` for `n` at or past the latest answer the latest
//!   configuration; an older number answers that configuration, which never changes.

use std::collections::BTreeMap;

use flotilla_node::Shared;
use flotilla_raft::RawNode;
use flotilla_rsm::{Replied, Rsm, RsmHandle, StateMachine, Wake};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, Gid};

/// A change to the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add groups (one new configuration for all of them) and rebalance.
    Join(BTreeMap<Gid, Vec<String>>),
    /// Remove groups and give their shards to the others.
    Leave(Vec<Gid>),
    /// Put one shard at one group; nothing else moves.
    Move { shard: usize, gid: Gid },
}

/// A change as a clerk sends it: (client, seq) make its retries one change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCommand {
    pub client: u64,
    pub seq: u64,
    pub change: Change,
}

/// What a change did: the number of the configuration it made, or why it made none.
pub type ChangeResult = Result<u64, ConfigError>;

/// A clerk's request to a controller replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrlRequest {
    Change(ChangeCommand),
    /// The configuration numbered so, or the latest (`None`, or a number past it).
    Query(Option<u64>),
}

/// A replica's answer to a [`CtrlRequest`] that was executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrlAnswer {
    Changed(ChangeResult),
    Config(Config),
}

/// The controller's replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    /// Every configuration, `configs[n].num == n`.
    configs: Vec<Config>,
    /// Each clerk's last change: its seq and result.
    sessions: BTreeMap<u64, (u64, ChangeResult)>,
}

impl Controller {
    /// A controller holding only configuration 0, of `shards` shards.
    pub fn new(shards: usize) -> Self {
        Controller {
            configs: vec![Config::empty(shards)],
            sessions: BTreeMap::new(),
        }
    }

    pub fn latest(&self) -> &Config {
        self.configs
            .last()
            .expect("configuration 0 is always there")
    }

    /// The configuration numbered `num`, or the latest.
    pub fn config(&self, num: Option<u64>) -> &Config {
        match num {
            Some(n) if (n as usize) < self.configs.len() => &self.configs[n as usize],
            _ => self.latest(),
        }
    }

    fn change(&mut self, change: &Change) -> ChangeResult {
        let latest = self.latest();
        let next = match change {
            Change::Join(groups) => latest.join(groups)?,
            Change::Leave(gids) => latest.leave(gids)?,
            Change::Move { shard, gid } => latest.moved(*shard, *gid)?,
        };
        assert_eq!(
            next.num as usize,
            self.configs.len(),
            "configurations are numbered in order"
        );
        let num = next.num;
        self.configs.push(next);
        Ok(num)
    }
}

impl StateMachine for Controller {
    type Command = ChangeCommand;
    type Output = ChangeResult;
    type Query = Option<u64>;
    type Answer = Config;

    fn apply(&mut self, command: ChangeCommand) -> ChangeResult {
        if let Some((seq, result)) = self.sessions.get(&command.client) {
            if command.seq <= *seq {
                // A retry of the last change (or an older duplicate no one waits for).
                return result.clone();
            }
        }
        let result = self.change(&command.change);
        self.sessions
            .insert(command.client, (command.seq, result.clone()));
        result
    }

    fn query(&self, num: &Option<u64>) -> Config {
        self.config(*num).clone()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("the controller encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let restored: Controller = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        for (n, config) in restored.configs.iter().enumerate() {
            if config.num != n as u64 {
                return Err(format!("configuration {n} is numbered {}", config.num));
            }
            config.validate()?;
        }
        if restored.configs.is_empty() {
            return Err("a controller snapshot without configuration 0".into());
        }
        *self = restored;
        Ok(())
    }
}

/// Executes one clerk request on a controller replica: changes through the log, queries
/// through ReadIndex.
pub async fn serve<N, P, W>(
    replica: &RsmHandle<N, P, W, Controller>,
    request: CtrlRequest,
) -> Replied<CtrlAnswer>
where
    N: Shared<RawNode>,
    P: Shared<Rsm<Controller>>,
    W: Wake,
{
    match request {
        CtrlRequest::Query(num) => match replica.read(num).await {
            Ok(config) => Replied::Done(CtrlAnswer::Config(config)),
            Err(e) => Replied::from_read(Err(e)),
        },
        CtrlRequest::Change(command) => match replica.submit(command).await {
            Ok(result) => Replied::Done(CtrlAnswer::Changed(result)),
            Err(e) => Replied::from_submit(Err(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(client: u64, seq: u64, gid: Gid) -> ChangeCommand {
        ChangeCommand {
            client,
            seq,
            change: Change::Join([(gid, vec![format!("s{gid}")])].into()),
        }
    }

    #[test]
    fn a_retried_change_applies_once_and_answers_the_same() {
        let mut c = Controller::new(10);
        assert_eq!(c.apply(join(7, 1, 1)), Ok(1));
        assert_eq!(c.apply(join(7, 1, 1)), Ok(1), "the retry");
        assert_eq!(c.latest().num, 1);
        assert_eq!(
            c.apply(join(8, 1, 1)),
            Err(ConfigError::AlreadyJoined(1)),
            "another clerk's join of the same gid is a new change, refused"
        );
        assert_eq!(c.apply(join(8, 1, 2)), Err(ConfigError::AlreadyJoined(1)));
        assert_eq!(c.apply(join(8, 2, 2)), Ok(2));
        assert_eq!(c.query(&None).num, 2);
        assert_eq!(c.query(&Some(0)), Config::empty(10));
        assert_eq!(c.query(&Some(99)).num, 2);
    }

    #[test]
    fn snapshots_restore_and_bad_ones_are_refused() {
        let mut c = Controller::new(10);
        c.apply(join(1, 1, 5)).unwrap();
        let mut d = Controller::new(10);
        d.restore(&c.snapshot()).unwrap();
        assert_eq!(d, c);
        assert!(d.restore(b"\xff\xff").is_err());
        let mut bad = c.clone();
        bad.configs[1].num = 4;
        assert!(d
            .restore(&bad.snapshot())
            .unwrap_err()
            .contains("numbered 4"));
        assert_eq!(d, c, "a refused snapshot changes nothing");
    }
}
