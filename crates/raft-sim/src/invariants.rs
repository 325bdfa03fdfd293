//! Raft's safety properties, checked on every `Ready` of every server.
//!
//! - **Election safety**: at most one leader per term.
//! - **Log matching**: if two logs hold an entry with the same index and term, the logs are
//!   identical up to it. Checked incrementally: the first time any server persists the entry
//!   (index, term), its command and the term of its predecessor are recorded; every later
//!   persist of (index, term) anywhere must agree. By induction on the index this is log
//!   matching.
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

use flotilla_raft::{RawNode, Ready, Role};

#[derive(Default)]
pub struct Invariants {
    leaders: BTreeMap<u64, usize>,
    /// (index, term) → (hash of the command, term of the previous entry if known).
    entries: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// index → (term of the entry applied there, upper bound of the term it was committed in).
    applied: BTreeMap<u64, (u64, u64)>,
    pub checks: u64,
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Invariants {
    /// Called with the node right after it produced `rd`.
    pub fn on_ready(&mut self, server: usize, node: &RawNode, rd: &Ready) {
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
                self.leaders.insert(soft.term, server);
                self.check_leader_completeness(server, node, soft.term);
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
        for entry in &rd.committed_entries {
            if let Some(&(term, _)) = self.applied.get(&entry.index) {
                assert_eq!(
                    term, entry.term,
                    "state machine safety: server {server} applies index {} from term {}, others from term {term}",
                    entry.index, entry.term
                );
            } else {
                let commit_term_bound = self.leaders.keys().next_back().copied().unwrap_or(0);
                self.applied
                    .insert(entry.index, (entry.term, commit_term_bound));
            }
        }
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
