//! Raft's safety properties, checked as events happen on every server of a simulated group.
//!
//! The harness ([`crate::cluster`]) calls in at five moments — a `Ready` is taken, a message is
//! sent, a write is synced, a server restarts, an entry is applied — and each check compares
//! what a server *says* with what its disk *holds*. A disk's "synced state" is what the server
//! would find after a crash at that instant.
//!
//! - **Election safety**, observed twice: at most one server becomes leader per term (from the
//!   role changes in `Ready`s), and every `AppendEntries` or `InstallSnapshot` of a term comes
//!   from one server (per message, so a leader that never reports its role is still caught).
//! - **Leader append-only**: while a server leads, what it persists only extends its synced
//!   log, with entries of its own term.
//! - **Log matching**: if two logs hold an entry with the same index and term, the logs are
//!   identical up to it. Checked incrementally: the first time any server persists the entry
//!   (index, term), its command and the term of its predecessor are recorded; every later
//!   persist of (index, term) anywhere must agree. By induction on the index this is log
//!   matching.
//! - **Acknowledgements are backed by the disk**: when a server sends
//!   `Accepted { match_index }` or grants a vote, its synced state already holds that index
//!   (with the term its log has there) or that vote. A message made in a term older than the
//!   synced one is exempt: the server moved to a newer term within the same `Ready`, and what
//!   it said was true when it said it (a later leader may rightly have replaced the entries, and
//!   an old term's vote can no longer be used).
//! - **One vote per term, terms never go back**: per server, across restarts, the synced term
//!   never decreases and the synced vote of a term never changes; no server grants votes to two
//!   candidates in one term (per message); a restarted server recovers at least the term and
//!   vote it had synced.
//! - **Committed ⇒ durable on a majority**: when an index is first applied anywhere, a
//!   majority of servers' synced state holds that index with that term, or a snapshot
//!   covering it.
//! - **Leader completeness**: an entry committed in term T is in the log of every leader of a
//!   later term (unless that leader's snapshot covers it). The checker does not see commit
//!   terms, so it bounds them: when an entry is first applied anywhere, the leader that
//!   committed it had a term no higher than the highest leader term seen so far. A leader of
//!   a term above that bound must hold the entry. (A leader of an older term may legitimately
//!   be elected later in real time — delayed votes — and need not.)
//! - **State machine safety** is the applier's check (no two servers apply different
//!   commands at one index), done in [`crate::cluster`].
//!
//! A violation panics with a description; the test or sweep reports the seed.

use std::collections::{BTreeMap, HashMap};

use flotilla_raft::{
    AppendOutcome, DurableState, Message, MessageBody, RawNode, ReadState, Ready, Role,
};

#[derive(Default)]
pub struct Invariants {
    /// term → the server that became leader in it (from role changes).
    leaders: BTreeMap<u64, usize>,
    /// term → the server that sent `AppendEntries`/`InstallSnapshot` in it.
    senders_as_leader: HashMap<u64, usize>,
    /// (server, term) → the candidate it granted its vote to.
    votes_granted: HashMap<(usize, u64), u64>,
    /// Per server: the highest synced term, and (term → vote) as synced.
    synced_terms: HashMap<usize, u64>,
    synced_votes: HashMap<(usize, u64), u64>,
    /// (index, term) → (hash of the command, term of the previous entry if known).
    entries: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// index → (term of the entry applied there, upper bound of the term it was committed in).
    applied: BTreeMap<u64, (u64, u64)>,
    /// ReadIndex reads asked (by context): the highest index applied anywhere when asked.
    /// Reads asked and not yet forgotten, by (server, context).
    reads_asked: HashMap<(usize, Vec<u8>), u64>,
    /// Reads confirmed so far.
    pub reads_confirmed: u64,
    pub checks: u64,
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Invariants {
    /// Called with the node right after it produced `rd`, before `rd.persist` is written;
    /// `synced` is the server's synced state at that moment.
    pub fn on_ready(&mut self, server: usize, node: &RawNode, rd: &Ready, synced: &DurableState) {
        self.checks += 1;
        if let Some(soft) = rd.soft_state {
            if soft.role == Role::Leader {
                if let Some(&other) = self.leaders.get(&soft.term) {
                    assert_eq!(
                        other, server,
                        "election safety: term {} has two leaders: {other} and {server}",
                        soft.term
                    );
                }
                if let Some(&other) = self.senders_as_leader.get(&soft.term) {
                    assert_eq!(
                        other, server,
                        "election safety: {server} leads term {}, in which {other} sent appends",
                        soft.term
                    );
                }
                self.leaders.insert(soft.term, server);
                self.check_leader_completeness(server, node, soft.term);
            }
        }
        let status = node.status();
        if status.soft.role == Role::Leader {
            if let Some(first) = rd.persist.entries.first() {
                let synced_last = synced.last_index();
                assert!(
                    first.index > synced_last,
                    "leader append-only: leader {server} of term {} rewrites its synced log from \
                     index {} (synced through {synced_last})",
                    status.hard.term,
                    first.index
                );
                for e in &rd.persist.entries {
                    assert_eq!(
                        e.term, status.hard.term,
                        "leader append-only: leader {server} of term {} persists entry {} of term {}",
                        status.hard.term, e.index, e.term
                    );
                }
            }
        }
        for entry in &rd.persist.entries {
            let prev = entry.index.checked_sub(1).and_then(|p| node.term_at(p));
            let key = (entry.index, entry.term);
            let value = (hash(&entry.data), prev);
            match self.entries.get_mut(&key) {
                None => {
                    self.entries.insert(key, value);
                }
                Some(known) => {
                    assert_eq!(
                        known.0, value.0,
                        "log matching: server {server} holds a different command at index {} term {}",
                        entry.index, entry.term
                    );
                    match (known.1, value.1) {
                        (Some(a), Some(b)) => assert_eq!(
                            a, b,
                            "log matching: server {server}: entry {}/{} follows term {b}, elsewhere term {a}",
                            entry.index, entry.term
                        ),
                        (None, Some(b)) => known.1 = Some(b),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Called just before `m` leaves `server`, with the server's node and synced state.
    pub fn on_send(&mut self, server: usize, node: &RawNode, m: &Message, synced: &DurableState) {
        self.checks += 1;
        let synced_term = synced.hard_state.term;
        match &m.body {
            MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                let sender = *self.senders_as_leader.entry(m.term).or_insert(server);
                assert_eq!(
                    sender, server,
                    "election safety: {server} and {sender} both send appends in term {}",
                    m.term
                );
                if let Some(&leader) = self.leaders.get(&m.term) {
                    assert_eq!(
                        leader, server,
                        "election safety: {server} sends appends in term {}, which {leader} leads",
                        m.term
                    );
                }
            }
            MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index }) => {
                assert!(
                    m.term <= synced_term,
                    "acks backed by disk: server {server} acknowledges in term {} but has synced \
                     only term {synced_term}",
                    m.term
                );
                if m.term == synced_term {
                    let index = *match_index;
                    let backed = index <= synced.snapshot.index
                        || (synced.term_at(index).is_some()
                            && synced.term_at(index) == node.term_at(index));
                    assert!(
                        backed,
                        "acks backed by disk: server {server} acknowledges index {index} in term \
                         {} but its disk holds {:?} there (synced through {}, snapshot {}; its \
                         log says {:?})",
                        m.term,
                        synced.term_at(index),
                        synced.last_index(),
                        synced.snapshot.index,
                        node.term_at(index)
                    );
                }
            }
            MessageBody::RequestVoteResponse { granted: true } => {
                assert!(
                    m.term <= synced_term,
                    "votes backed by disk: server {server} votes in term {} but has synced only \
                     term {synced_term}",
                    m.term
                );
                if m.term == synced_term {
                    assert_eq!(
                        synced.hard_state.vote,
                        Some(m.to),
                        "votes backed by disk: server {server} votes for {} in term {} but its \
                         disk records {:?}",
                        m.to,
                        m.term,
                        synced.hard_state.vote
                    );
                }
                let vote = *self.votes_granted.entry((server, m.term)).or_insert(m.to);
                assert_eq!(
                    vote, m.to,
                    "one vote per term: server {server} votes for {vote} and {} in term {}",
                    m.to, m.term
                );
            }
            _ => {}
        }
    }

    /// Called after a write of `server` was synced, with the synced state.
    pub fn on_sync(&mut self, server: usize, synced: &DurableState) {
        self.checks += 1;
        let hs = synced.hard_state;
        let highest = self.synced_terms.entry(server).or_insert(0);
        assert!(
            hs.term >= *highest,
            "durable term decreased: server {server} synced term {} after term {highest}",
            hs.term
        );
        *highest = hs.term;
        if let Some(vote) = hs.vote {
            let recorded = *self.synced_votes.entry((server, hs.term)).or_insert(vote);
            assert_eq!(
                recorded, vote,
                "one vote per term: server {server} synced votes for {recorded} and {vote} in term {}",
                hs.term
            );
        }
    }

    /// Called when `server` restarts from `recovered`.
    pub fn on_restart(&mut self, server: usize, recovered: &DurableState) {
        // A new incarnation asks its own reads; the old one's can no longer be confirmed.
        self.reads_asked.retain(|(asker, _), _| *asker != server);
        self.checks += 1;
        let hs = recovered.hard_state;
        let highest = self.synced_terms.get(&server).copied().unwrap_or(0);
        assert!(
            hs.term >= highest,
            "durable term decreased: server {server} restarts in term {} after syncing term \
             {highest}",
            hs.term
        );
        if let Some(&vote) = self.synced_votes.get(&(server, hs.term)) {
            assert_eq!(
                hs.vote,
                Some(vote),
                "one vote per term: server {server} restarts in term {} without its vote for {vote}",
                hs.term
            );
        }
        self.on_sync(server, recovered);
    }

    /// A ReadIndex read `ctx` was asked while `applied_anywhere` was the highest index any
    /// server had applied.
    pub fn on_read_asked(&mut self, server: usize, ctx: &[u8], applied_anywhere: u64) {
        let earlier = self
            .reads_asked
            .insert((server, ctx.to_vec()), applied_anywhere);
        assert!(
            earlier.is_none(),
            "read contexts are unique per server incarnation"
        );
    }

    /// *Read safety*: a confirmed read must see every write applied anywhere before it was
    /// asked, so its index is at least the highest index applied when it was asked.
    pub fn on_read_confirmed(&mut self, server: usize, read: &ReadState) {
        self.checks += 1;
        self.reads_confirmed += 1;
        let asked = (server, read.ctx.clone());
        let floor = *self.reads_asked.get(&asked).unwrap_or_else(|| {
            panic!(
                "read safety: server {server} confirms a read never asked: {:?}",
                read.ctx
            )
        });
        assert!(
            read.index >= floor,
            "read safety: server {server} confirms read {:?} at index {}, but index {floor} was \
             applied before it was asked",
            read.ctx,
            read.index
        );
    }

    /// Called when `server` applies entry (`index`, `term`); `holders` counts the servers
    /// whose synced state covers that entry, out of `servers`.
    pub fn on_apply(
        &mut self,
        server: usize,
        index: u64,
        term: u64,
        holders: impl FnOnce() -> usize,
        servers: usize,
    ) {
        self.checks += 1;
        if let Some(&(applied_term, _)) = self.applied.get(&index) {
            assert_eq!(
                applied_term, term,
                "state machine safety: server {server} applies index {index} from term {term}, \
                 others from term {applied_term}"
            );
            return;
        }
        let holders = holders();
        assert!(
            holders > servers / 2,
            "committed but not durable on a majority: index {index} (term {term}) is applied by \
             server {server} while only {holders} of {servers} disks hold it"
        );
        let commit_term_bound = self.leaders.keys().next_back().copied().unwrap_or(0);
        self.applied.insert(index, (term, commit_term_bound));
    }

    fn check_leader_completeness(&self, server: usize, node: &RawNode, term: u64) {
        let snapshot_index = node.status().snapshot_index;
        for (&index, &(applied_term, commit_term_bound)) in self.applied.range(snapshot_index + 1..)
        {
            if commit_term_bound >= term {
                continue;
            }
            let has = node.term_at(index);
            assert_eq!(
                has,
                Some(applied_term),
                "leader completeness: leader {server} of term {term} lacks applied entry {index} (term {applied_term})"
            );
        }
    }

    /// Terms that had a leader, with the leader.
    pub fn leaders(&self) -> &BTreeMap<u64, usize> {
        &self.leaders
    }
}

/// Each check against the smallest violation of it (the sweep shows they fire in real runs;
/// these show each fires for its own reason, and stays quiet where it must).
#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::{Config, Entry, HardState, Persist, Snapshot};

    fn entries(terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Entry {
                index: k as u64 + 1,
                term,
                data: vec![k as u8],
            })
            .collect()
    }

    fn state(term: u64, vote: Option<u64>, log: &[u64]) -> DurableState {
        DurableState {
            hard_state: HardState { term, vote },
            snapshot: Snapshot::default(),
            entries: entries(log),
        }
    }

    /// Node 0 of {0, 1, 2} restarted from `durable`.
    fn node(durable: &DurableState) -> RawNode {
        RawNode::new(Config::new(0, vec![0, 1, 2]), durable.clone())
    }

    /// A one-server group's node, leader of its term, with entries 1..=3 synced.
    fn leader() -> (RawNode, DurableState) {
        let mut synced = state(1, Some(0), &[1, 1, 1]);
        let mut node = RawNode::new(Config::new(0, vec![0]), synced.clone());
        for _ in 0..200 {
            node.tick();
            if node.is_leader() {
                break;
            }
        }
        assert!(node.is_leader());
        let rd = node.ready();
        synced.apply(&rd.persist);
        node.advance();
        (node, synced)
    }

    fn send(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
        Message {
            from,
            to,
            term,
            body,
        }
    }

    fn accepted(match_index: u64) -> MessageBody {
        MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index })
    }

    #[test]
    #[should_panic(expected = "leader append-only")]
    fn a_leader_rewriting_its_synced_log_is_caught() {
        let (node, synced) = leader();
        let term = node.status().hard.term;
        let rd = Ready {
            persist: Persist {
                entries: vec![Entry {
                    index: 2,
                    term,
                    data: vec![9],
                }],
                ..Persist::default()
            },
            ..Ready::default()
        };
        Invariants::default().on_ready(0, &node, &rd, &synced);
    }

    #[test]
    fn a_leader_appending_after_its_synced_log_is_fine() {
        let (node, synced) = leader();
        let term = node.status().hard.term;
        let rd = Ready {
            persist: Persist {
                entries: vec![Entry {
                    index: synced.last_index() + 1,
                    term,
                    data: vec![9],
                }],
                ..Persist::default()
            },
            ..Ready::default()
        };
        Invariants::default().on_ready(0, &node, &rd, &synced);
    }

    #[test]
    #[should_panic(expected = "election safety: 1 and 0 both send appends in term 4")]
    fn two_servers_sending_appends_in_one_term_are_caught() {
        let synced = state(4, None, &[1]);
        let mut inv = Invariants::default();
        let append = MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 0,
        };
        inv.on_send(0, &node(&synced), &send(0, 2, 4, append.clone()), &synced);
        inv.on_send(0, &node(&synced), &send(0, 2, 5, append.clone()), &synced);
        inv.on_send(1, &node(&synced), &send(1, 2, 4, append), &synced);
    }

    #[test]
    #[should_panic(expected = "acks backed by disk")]
    fn an_ack_beyond_the_synced_log_is_caught() {
        let synced = state(2, None, &[1, 1]);
        let in_memory = node(&state(2, None, &[1, 1, 2]));
        Invariants::default().on_send(0, &in_memory, &send(0, 1, 2, accepted(3)), &synced);
    }

    #[test]
    fn acks_covered_by_the_disk_or_from_an_older_term_are_fine() {
        let synced = state(3, None, &[1, 1]);
        let n = node(&synced);
        let mut inv = Invariants::default();
        inv.on_send(0, &n, &send(0, 1, 3, accepted(2)), &synced);
        // Made in term 2, before this server moved to term 3 in the same Ready.
        inv.on_send(0, &n, &send(0, 1, 2, accepted(7)), &synced);
    }

    #[test]
    #[should_panic(expected = "acks backed by disk")]
    fn an_ack_whose_term_the_disk_does_not_know_is_caught() {
        let synced = state(2, None, &[1, 1]);
        Invariants::default().on_send(0, &node(&synced), &send(0, 1, 3, accepted(1)), &synced);
    }

    #[test]
    #[should_panic(expected = "votes backed by disk")]
    fn a_vote_the_disk_does_not_record_is_caught() {
        let synced = state(3, None, &[]);
        let grant = MessageBody::RequestVoteResponse { granted: true };
        Invariants::default().on_send(0, &node(&synced), &send(0, 2, 3, grant), &synced);
    }

    #[test]
    #[should_panic(expected = "one vote per term: server 0 votes for 1 and 2 in term 3")]
    fn two_votes_in_one_term_are_caught_per_message() {
        let mut inv = Invariants::default();
        let grant = MessageBody::RequestVoteResponse { granted: true };
        let for_1 = state(3, Some(1), &[]);
        inv.on_send(0, &node(&for_1), &send(0, 1, 3, grant.clone()), &for_1);
        // Older than the synced term: exempt from the disk check, not from this one.
        let later = state(4, None, &[]);
        inv.on_send(0, &node(&later), &send(0, 2, 3, grant), &later);
    }

    #[test]
    #[should_panic(expected = "durable term decreased")]
    fn a_synced_term_going_back_is_caught() {
        let mut inv = Invariants::default();
        inv.on_sync(0, &state(5, None, &[]));
        inv.on_sync(0, &state(4, None, &[]));
    }

    #[test]
    #[should_panic(expected = "one vote per term")]
    fn a_synced_vote_that_changes_within_its_term_is_caught() {
        let mut inv = Invariants::default();
        inv.on_sync(0, &state(5, Some(1), &[]));
        inv.on_sync(0, &state(5, Some(2), &[]));
    }

    #[test]
    #[should_panic(expected = "restarts in term 5 without its vote for 1")]
    fn a_restart_that_forgets_its_vote_is_caught() {
        let mut inv = Invariants::default();
        inv.on_sync(0, &state(5, Some(1), &[]));
        inv.on_restart(0, &state(5, None, &[]));
    }

    #[test]
    #[should_panic(expected = "durable term decreased: server 0 restarts in term 3")]
    fn a_restart_in_an_older_term_is_caught() {
        let mut inv = Invariants::default();
        inv.on_sync(0, &state(5, None, &[]));
        inv.on_restart(0, &state(3, None, &[]));
    }

    #[test]
    #[should_panic(expected = "committed but not durable on a majority")]
    fn applying_what_a_minority_holds_is_caught() {
        Invariants::default().on_apply(0, 1, 1, || 2, 5);
    }

    #[test]
    fn applying_what_a_majority_holds_is_fine_and_counted_once() {
        let mut inv = Invariants::default();
        inv.on_apply(0, 1, 1, || 3, 5);
        inv.on_apply(
            1,
            1,
            1,
            || unreachable!("counted at the first apply only"),
            5,
        );
    }

    #[test]
    #[should_panic(expected = "state machine safety")]
    fn two_terms_applied_at_one_index_are_caught() {
        let mut inv = Invariants::default();
        inv.on_apply(0, 1, 1, || 3, 5);
        inv.on_apply(1, 1, 2, || 3, 5);
    }

    #[test]
    #[should_panic(expected = "read safety: server 1 confirms read [7] at index 4, but index 5")]
    fn a_read_missing_an_earlier_write_is_caught() {
        let mut inv = Invariants::default();
        inv.on_read_asked(0, &[6], 5);
        inv.on_read_confirmed(
            0,
            &flotilla_raft::ReadState {
                index: 5,
                ctx: vec![6],
            },
        );
        inv.on_read_confirmed(
            0,
            &flotilla_raft::ReadState {
                index: 9,
                ctx: vec![6],
            },
        );
        inv.on_read_asked(1, &[7], 5);
        inv.on_read_confirmed(
            1,
            &flotilla_raft::ReadState {
                index: 4,
                ctx: vec![7],
            },
        );
    }

    #[test]
    #[should_panic(expected = "confirms a read never asked")]
    fn a_read_never_asked_is_caught() {
        Invariants::default().on_read_confirmed(
            0,
            &flotilla_raft::ReadState {
                index: 1,
                ctx: vec![1],
            },
        );
    }
}
