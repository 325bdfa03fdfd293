//! The persistence contract seen from outside: whatever a node says to a peer must be backed
//! by what it handed to storage in that `Ready` or earlier.
//!
//! Each test drives one node by hand, applies every `Ready`'s `persist` to a
//! [`DurableState`] (the reference storage: `DurableState::apply` is what every storage
//! replays through) and checks each outgoing message against it:
//! - `Accepted { match_index }` ⇒ the durable log holds `match_index` with the term the
//!   node's own log has there (or a snapshot covers it), and agrees with the node's log on
//!   every index up to it;
//! - a granted vote ⇒ the durable hard state records that vote in that term.

use flotilla_raft::{
    AppendOutcome, Config, DurableState, Entry, HardState, Message, MessageBody, RawNode, Snapshot,
};

/// A node under test, the durable state its storage would hold, and what it sent.
struct Harness {
    node: RawNode,
    durable: DurableState,
    sent: Vec<Message>,
}

impl Harness {
    fn new(id: u64, peers: Vec<u64>, durable: DurableState) -> Self {
        Harness {
            node: RawNode::new(Config::new(id, peers), durable.clone()),
            durable,
            sent: Vec::new(),
        }
    }

    /// Takes every pending `Ready`: persists, then checks each message against the durable
    /// state, then "sends" it (records it).
    fn ready(&mut self) {
        while self.node.has_ready() {
            let rd = self.node.ready();
            self.durable.apply(&rd.persist);
            for m in rd.messages {
                check_backed(&self.durable, &m);
                self.sent.push(m);
            }
            self.node.advance();
        }
    }
}

fn check_backed(durable: &DurableState, m: &Message) {
    match &m.body {
        MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index }) => {
            assert!(
                *match_index <= durable.snapshot.index || durable.term_at(*match_index).is_some(),
                "node {} acknowledges index {match_index} but storage holds only up to {} \
                 (snapshot {}): {m:?}",
                m.from,
                durable.last_index(),
                durable.snapshot.index
            );
        }
        MessageBody::RequestVoteResponse { granted: true } => {
            assert_eq!(
                durable.hard_state,
                HardState {
                    term: m.term,
                    vote: Some(m.to)
                },
                "node {} grants a vote that storage does not record",
                m.from
            );
        }
        _ => {}
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8, term as u8],
    }
}

fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// Review's reproduction of the lost-suffix bug: a follower whose persisted log is longer
/// than, and conflicts with, an incoming snapshot discards its log; entries that arrive before
/// its next `Ready` must still be handed to storage before it acknowledges them.
#[test]
fn entries_after_a_conflicting_snapshot_are_persisted_before_they_are_acknowledged() {
    let durable = DurableState {
        hard_state: HardState {
            term: 1,
            vote: None,
        },
        snapshot: Snapshot::default(),
        entries: (1..=10).map(|i| entry(i, 1)).collect(),
    };
    let mut f = Harness::new(1, vec![0, 1, 2], durable);
    f.node
        .step(message(
            0,
            1,
            2,
            MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    index: 5,
                    term: 2,
                    data: b"state@5".to_vec(),
                },
            },
        ))
        .expect("a valid message");
    f.node
        .step(message(
            0,
            1,
            2,
            MessageBody::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: (4..=8).map(|i| entry(i, 2)).collect(),
                leader_commit: 5,
            },
        ))
        .expect("a valid message");
    f.ready();
    assert_eq!(f.durable.snapshot.index, 5);
    assert_eq!(
        f.durable.entries,
        (6..=8).map(|i| entry(i, 2)).collect::<Vec<_>>(),
        "the entries after the snapshot are durable"
    );
    assert!(f.sent.iter().any(|m| matches!(
        m.body,
        MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index: 8 })
    )));
}

/// A tiny deterministic generator (SplitMix64): the test needs no RNG crate.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A history of leaders that a correct group could have had: `logs[t]` is the log of the
/// leader of term `t`, `committed[t]` what it had committed. Each leader keeps at least the
/// committed prefix of the one before and appends entries of its own term, so all the logs
/// agree wherever index and term agree (log matching) and every committed entry is in every
/// later leader's log (leader completeness).
struct History {
    logs: Vec<Vec<Entry>>,
    committed: Vec<u64>,
}

impl History {
    fn generate(g: &mut Gen, terms: u64) -> History {
        let mut logs = vec![Vec::new()];
        let mut committed = vec![0];
        for term in 1..=terms {
            let prev = logs.last().expect("term 0");
            let floor = *committed.last().expect("term 0");
            let keep = g.range(floor, prev.len() as u64) as usize;
            let mut log: Vec<Entry> = prev[..keep].to_vec();
            for _ in 0..g.range(0, 8) {
                let index = log.len() as u64 + 1;
                log.push(Entry {
                    index,
                    term,
                    data: vec![index as u8, term as u8, g.next() as u8],
                });
            }
            committed.push(g.range(floor, log.len() as u64));
            logs.push(log);
        }
        History { logs, committed }
    }

    /// A message that the leader (or a candidate) of `term` could have sent to node 1.
    fn message(&self, g: &mut Gen, term: u64) -> Message {
        let log = &self.logs[term as usize];
        let committed = self.committed[term as usize];
        let leader = if term & 1 == 0 { 0 } else { 2 };
        let body = match g.range(0, 9) {
            0..=5 => {
                let prev = g.range(0, log.len() as u64);
                let count = g.range(0, 6).min(log.len() as u64 - prev);
                MessageBody::AppendEntries {
                    prev_log_index: prev,
                    prev_log_term: if prev == 0 {
                        0
                    } else {
                        log[prev as usize - 1].term
                    },
                    entries: log[prev as usize..(prev + count) as usize].to_vec(),
                    leader_commit: committed.min(g.range(0, log.len() as u64)),
                }
            }
            6 | 7 if committed > 0 => {
                let index = g.range(1, committed);
                MessageBody::InstallSnapshot {
                    snapshot: Snapshot {
                        index,
                        term: log[index as usize - 1].term,
                        data: format!("state@{index}").into_bytes(),
                    },
                }
            }
            _ => {
                // A candidate of `term` whose log is the previous leader's, cut somewhere.
                let base = &self.logs[term as usize - 1];
                let len = g.range(0, base.len() as u64);
                MessageBody::RequestVote {
                    transfer: false,
                    last_log_index: len,
                    last_log_term: if len == 0 {
                        0
                    } else {
                        base[len as usize - 1].term
                    },
                }
            }
        };
        message(leader, 1, term, body)
    }
}

/// Random but legal message sequences against one follower, with `Ready`s taken at random
/// points (so several messages often land between two of them) and crashes that restart the
/// node from its durable state. Every acknowledgement and vote must be backed by storage, in
/// the term it was given in, and every applied entry must be the committed one.
#[test]
fn a_follower_never_acknowledges_what_its_storage_lacks() {
    for seed in 0..3000u64 {
        let mut g = Gen(seed);
        let terms = g.range(2, 6);
        let history = History::generate(&mut g, terms);
        // Start from some prefix of an early leader's log, as if restarted.
        let start_term = g.range(0, 1);
        let start_log = &history.logs[start_term as usize];
        let start_len = g.range(0, start_log.len() as u64) as usize;
        let durable = DurableState {
            hard_state: HardState {
                term: start_term,
                vote: None,
            },
            snapshot: Snapshot::default(),
            entries: start_log[..start_len].to_vec(),
        };
        let mut f = Harness::new(1, vec![0, 1, 2], durable);
        let last_term = history.logs.len() as u64 - 1;
        let mut term = 1;
        for _ in 0..g.range(5, 60) {
            if g.chance(25) && term < last_term {
                term += 1;
            }
            // Mostly the current leader; sometimes a stale or a future one.
            let from_term = match g.range(0, 9) {
                0 => g.range(1, term),
                1 => g.range(term, last_term),
                _ => term,
            };
            let m = history.message(&mut g, from_term);
            f.node
                .step(m)
                .unwrap_or_else(|e| panic!("seed {seed}: a legal message refused: {e}"));
            if g.chance(40) {
                f.ready_checked(&history, seed);
            }
            if g.chance(3) {
                f.ready_checked(&history, seed);
                // Crash and restart: only what storage holds survives.
                f.node = RawNode::new(Config::new(1, vec![0, 1, 2]), f.durable.clone());
            }
        }
        f.ready_checked(&history, seed);
    }
}

impl Harness {
    /// [`Harness::ready`] plus the checks that need the history: acknowledged prefixes equal
    /// the acknowledged leader's log, applied entries equal the committed ones.
    fn ready_checked(&mut self, history: &History, seed: u64) {
        while self.node.has_ready() {
            let rd = self.node.ready();
            self.durable.apply(&rd.persist);
            for m in &rd.messages {
                check_backed_in_history(&self.durable, m, history, seed);
            }
            let final_log = history.logs.last().expect("a term");
            for e in &rd.committed_entries {
                assert_eq!(
                    Some(e),
                    final_log.get(e.index as usize - 1),
                    "seed {seed}: applied entry {} is not the committed one",
                    e.index
                );
            }
            self.sent.extend(rd.messages);
            self.node.advance();
        }
    }
}

fn check_backed_in_history(durable: &DurableState, m: &Message, history: &History, seed: u64) {
    // A message given in an older term than storage records was true when it was made: the
    // node moved on to a newer term within the same `Ready` (a later leader may rightly have
    // replaced what it acknowledged, and an old vote can no longer be used).
    if m.term != durable.hard_state.term {
        assert!(m.term < durable.hard_state.term, "seed {seed}: {m:?}");
        return;
    }
    match &m.body {
        MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index }) => {
            let leader_log = &history.logs[m.term as usize];
            let from = durable.snapshot.index + 1;
            for index in from..=*match_index {
                assert_eq!(
                    durable.entries.get((index - from) as usize),
                    leader_log.get(index as usize - 1),
                    "seed {seed}: node {} acknowledges {match_index} in term {} but storage \
                     differs from that leader's log at {index} (durable: snapshot {}, last {})",
                    m.from,
                    m.term,
                    durable.snapshot.index,
                    durable.last_index()
                );
            }
        }
        MessageBody::RequestVoteResponse { granted: true } => {
            assert_eq!(
                durable.hard_state.vote,
                Some(m.to),
                "seed {seed}: a vote granted in term {} is not in storage",
                m.term
            );
        }
        _ => {}
    }
}
