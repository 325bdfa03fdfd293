//! The recent changes of a store, revision by revision, for the watch streams that follow
//! it.
//!
//! A watch stream ([`crate::watch::WatchStream`]) must be fed every revision in order. The
//! applying side records each applied command's events here ([`RecentChanges::record`]);
//! a stream that has been fed up to revision `r` asks for what came after
//! ([`RecentChanges::since`]). The last [`RecentChanges::capacity`] revisions are kept;
//! a stream further behind (or a replica that just restored a snapshot, which records
//! nothing of the revisions in it) gets them rebuilt from the store's history, which is
//! slower but the same.
//!
//! Not part of the replicated state: two replicas with different recent changes answer
//! `since` alike.

use std::collections::VecDeque;

use crate::store::MvccStore;
use crate::types::{Event, KeyRange, MvccError, Revision};

/// One revision's changes, in the order they were made.
pub type RevisionChanges = (Revision, Vec<Event>);

/// The last revisions' changes.
#[derive(Clone, Debug)]
pub struct RecentChanges {
    revisions: VecDeque<RevisionChanges>,
    capacity: usize,
}

impl Default for RecentChanges {
    fn default() -> Self {
        Self::with_capacity(4096)
    }
}

impl RecentChanges {
    pub fn with_capacity(capacity: usize) -> Self {
        RecentChanges {
            revisions: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// An applied command made `events`, and the store is now at `revision` (a command
    /// that changed nothing records nothing).
    pub fn record(&mut self, revision: Revision, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Some((last, _)) = self.revisions.back() {
            assert!(*last < revision, "changes are recorded in revision order");
        }
        if self.revisions.len() == self.capacity {
            self.revisions.pop_front();
        }
        self.revisions.push_back((revision, events));
    }

    /// Forgets everything (the store was replaced by a snapshot).
    pub fn clear(&mut self) {
        self.revisions.clear();
    }

    /// Every revision after `after` up to `store`'s, each with its changes (none for a
    /// revision that changed nothing a watch sees), in order. Refused if revisions after
    /// `after` are compacted away.
    pub fn since(
        &self,
        store: &MvccStore,
        after: Revision,
    ) -> Result<Vec<RevisionChanges>, MvccError> {
        let current = store.revision();
        if after >= current {
            return Ok(Vec::new());
        }
        let first_kept = self.revisions.front().map(|(r, _)| *r);
        // Kept here if the first kept revision is at most the first one asked for and the
        // last one recorded is the store's (nothing was applied without being recorded).
        let covered = first_kept.is_some_and(|first| first <= after + 1)
            && self.revisions.back().map(|(r, _)| *r) == Some(current);
        let mut changes: Vec<RevisionChanges> = Vec::new();
        if covered {
            let start = self.revisions.partition_point(|(r, _)| *r <= after);
            changes.extend(self.revisions.range(start..).cloned());
        } else {
            for event in store.events_since(&KeyRange::prefix(""), after + 1)? {
                let revision = event.kv.mod_revision;
                match changes.last_mut() {
                    Some((r, events)) if *r == revision => events.push(event),
                    _ => changes.push((revision, vec![event])),
                }
            }
        }
        // Every revision in order, the ones without changes too.
        let mut out = Vec::with_capacity((current - after) as usize);
        let mut next = changes.into_iter().peekable();
        for revision in after + 1..=current {
            match next.peek() {
                Some((r, _)) if *r == revision => out.extend(next.next()),
                _ => out.push((revision, Vec::new())),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest};

    fn put(s: &mut MvccStore, recent: &mut RecentChanges, k: &str) {
        let (_, events) = s
            .put(&PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .unwrap();
        recent.record(s.revision(), events);
    }

    #[test]
    fn recent_changes_agree_with_the_history_whether_kept_or_rebuilt() {
        let mut s = MvccStore::new();
        let mut recent = RecentChanges::with_capacity(3);
        for k in ["a", "b", "a", "c", "d"] {
            put(&mut s, &mut recent, k);
        }
        let (_, events) = s.delete_range(&DeleteRangeRequest {
            range: KeyRange::prefix(""),
            prev_kv: false,
        });
        recent.record(s.revision(), events);
        assert_eq!(s.revision(), 7);
        let rebuilt = RecentChanges::with_capacity(3);
        for after in 1..=7 {
            let kept = recent.since(&s, after).unwrap();
            let from_history = rebuilt.since(&s, after).unwrap();
            assert_eq!(kept, from_history, "after {after}");
            let revisions: Vec<Revision> = kept.iter().map(|(r, _)| *r).collect();
            assert_eq!(revisions, (after + 1..=7).collect::<Vec<_>>());
        }
        assert_eq!(
            recent.since(&s, 6).unwrap()[0].1.len(),
            4,
            "one delete per key"
        );
        s.compact(6).unwrap();
        assert!(rebuilt.since(&s, 3).is_err(), "compacted away");
        assert_eq!(
            recent.since(&s, 5).unwrap().len(),
            2,
            "kept ones still served"
        );
    }
}
