//! The rsm core driven by hand: each outcome rule on its own, without a simulator.

use flotilla_node::App;
use flotilla_raft::{Config, DurableState, Entry, HardState, Persist, RawNode, ReadState, Role};
use flotilla_raft::{Snapshot, SoftState};
use tokio::sync::oneshot::error::TryRecvError;

use super::*;

/// Counts: every command adds its value.
#[derive(Default)]
struct Sum(u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;
    type Query = ();
    type Answer = u64;
    fn apply(&mut self, x: u64) -> u64 {
        self.0 += x;
        self.0
    }
    fn query(&self, _: &()) -> u64 {
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(data.try_into().map_err(|_| "bad")?);
        Ok(())
    }
}

fn rsm(config: RsmConfig) -> Rsm<Sum> {
    Rsm::new(Sum::default(), config, &Snapshot::default()).unwrap()
}

fn entry(index: u64, term: u64, x: u64) -> Entry {
    Entry {
        index,
        term,
        data: postcard::to_allocvec(&x).unwrap(),
    }
}

fn noop(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Vec::new(),
    }
}

/// A node whose log holds one entry per term in `terms` (index 1, 2, …).
fn node_with_log(terms: &[u64]) -> RawNode {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| noop(i as u64 + 1, term))
        .collect();
    let durable = DurableState {
        hard_state: HardState {
            term: *terms.last().unwrap_or(&0),
            vote: None,
        },
        snapshot: Snapshot::default(),
        entries,
    };
    RawNode::new(Config::new(0, vec![0, 1, 2]), durable)
}

fn leader(term: u64) -> SoftState {
    SoftState {
        role: Role::Leader,
        leader: Some(0),
        term,
    }
}

#[test]
fn a_submission_gets_its_own_entrys_result() {
    let mut r = rsm(RsmConfig::default());
    let mut outcome = r.expect_submit(2, 1);
    r.apply(noop(1, 1), 0);
    assert_eq!(outcome.try_recv(), Err(TryRecvError::Empty));
    r.apply(entry(2, 1, 5), 0);
    assert_eq!(outcome.try_recv(), Ok(Ok(5)));
}

#[test]
fn another_terms_entry_at_the_index_answers_overwritten_not_its_result() {
    let mut r = rsm(RsmConfig::default());
    let mut outcome = r.expect_submit(1, 1);
    r.apply(entry(1, 2, 5), 0);
    assert_eq!(outcome.try_recv(), Ok(Err(SubmitError::Overwritten)));
    assert_eq!(r.state().0, 5, "the other entry is applied all the same");
}

#[test]
fn a_persisted_conflict_fails_the_replaced_submissions_at_once() {
    let mut r = rsm(RsmConfig::default());
    // Proposed at 2 and 3 in term 1; then another leader's term-2 entry is persisted at 2.
    let mut at2 = r.expect_submit(2, 1);
    let mut at3 = r.expect_submit(3, 1);
    let mut at1 = r.expect_submit(1, 1);
    let node = node_with_log(&[1, 2]);
    let batch = Persist {
        entries: vec![noop(2, 2)],
        ..Persist::default()
    };
    r.on_persisted(&node, &batch);
    assert_eq!(at2.try_recv(), Ok(Err(SubmitError::Overwritten)));
    assert_eq!(
        at3.try_recv(),
        Ok(Err(SubmitError::Overwritten)),
        "beyond the log now"
    );
    assert_eq!(at1.try_recv(), Err(TryRecvError::Empty), "still in the log");
}

#[test]
fn a_persisted_batch_of_ones_own_entries_replaces_nothing() {
    let mut r = rsm(RsmConfig::default());
    let mut at1 = r.expect_submit(1, 1);
    let mut at2 = r.expect_submit(2, 1);
    // Entry 2 is proposed but not yet persisted: only 1 is in this batch.
    let node = node_with_log(&[1, 1]);
    r.on_persisted(
        &node,
        &Persist {
            entries: vec![noop(1, 1)],
            ..Persist::default()
        },
    );
    assert_eq!(at1.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(at2.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn submissions_and_unconfirmed_reads_time_out_as_unknown() {
    let mut r = rsm(RsmConfig {
        timeout_ticks: 3,
        ..RsmConfig::default()
    });
    let mut submit = r.expect_submit(1, 1);
    let (_, mut read) = r.expect_read(());
    r.on_tick();
    r.on_tick();
    assert_eq!(submit.try_recv(), Err(TryRecvError::Empty));
    r.on_tick();
    assert_eq!(submit.try_recv(), Ok(Err(SubmitError::Unknown)));
    assert_eq!(read.try_recv(), Ok(Err(ReadError::Unknown)));
}

#[test]
fn a_confirmed_read_waits_until_its_index_is_applied() {
    let mut r = rsm(RsmConfig::default());
    let (id, mut read) = r.expect_read(());
    r.on_read_state(ReadState {
        index: 2,
        ctx: id.to_le_bytes().to_vec(),
    });
    r.apply(entry(1, 1, 3), 0);
    r.after_ready();
    assert_eq!(read.try_recv(), Err(TryRecvError::Empty));
    r.apply(entry(2, 1, 4), 0);
    r.after_ready();
    assert_eq!(
        read.try_recv(),
        Ok(Ok(7)),
        "sees every entry up to its index"
    );
}

#[test]
fn stepping_down_fails_unconfirmed_reads_but_keeps_submissions() {
    let mut r = rsm(RsmConfig::default());
    r.on_soft_state(&leader(1));
    let mut submit = r.expect_submit(1, 1);
    let (_, mut read) = r.expect_read(());
    r.on_soft_state(&SoftState {
        role: Role::Follower,
        leader: Some(2),
        term: 1,
    });
    assert_eq!(
        read.try_recv(),
        Ok(Err(ReadError::WrongLeader { hint: Some(2) }))
    );
    assert_eq!(
        submit.try_recv(),
        Err(TryRecvError::Empty),
        "an entry of a deposed leader may still commit"
    );
}

#[test]
fn stopping_fails_everything_waiting() {
    let mut r = rsm(RsmConfig::default());
    let mut submit = r.expect_submit(1, 1);
    let (_, mut read) = r.expect_read(());
    r.stop();
    assert_eq!(submit.try_recv(), Ok(Err(SubmitError::Unknown)));
    assert_eq!(read.try_recv(), Ok(Err(ReadError::Unknown)));
    assert!(r.is_stopped());
}

#[test]
fn snapshots_past_the_limit_once_per_size_reading() {
    let mut r = rsm(RsmConfig {
        max_raft_state: Some(100),
        ..RsmConfig::default()
    });
    assert_eq!(
        r.apply(entry(1, 1, 1), 100),
        None,
        "at the limit: not past it"
    );
    assert_eq!(
        r.apply(entry(2, 1, 1), 101),
        Some(2u64.to_le_bytes().to_vec())
    );
    assert_eq!(
        r.apply(entry(3, 1, 1), 101),
        None,
        "same reading: already taken"
    );
    assert_eq!(
        r.apply(entry(4, 1, 1), 150),
        Some(4u64.to_le_bytes().to_vec())
    );
}

#[test]
fn a_restart_restores_the_snapshot_and_applies_after_it() {
    let snapshot = Snapshot {
        index: 7,
        term: 2,
        data: 40u64.to_le_bytes().to_vec(),
    };
    let mut r = Rsm::new(Sum::default(), RsmConfig::default(), &snapshot).unwrap();
    assert_eq!((r.applied(), r.state().0), (7, 40));
    r.apply(entry(8, 2, 2), 0);
    assert_eq!(r.state().0, 42);
    assert!(Rsm::new(
        Sum::default(),
        RsmConfig::default(),
        &Snapshot {
            data: vec![1],
            ..snapshot
        }
    )
    .is_err());
}
