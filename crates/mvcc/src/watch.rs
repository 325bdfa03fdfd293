//! Watches: one client stream's watchers and what each is owed, as a sans-IO state machine.
//!
//! A stream creates watchers on a key range from a start revision (etcd's
//! `WatchCreateRequest`); the hub answers with the watcher's id and the changes since the
//! start that the store still holds, then, fed every applied change in order
//! ([`WatchStream::on_applied`]), the changes each watcher's range covers, one response per
//! revision, with the store's revision in it. A start before the compaction is refused with
//! the compaction revision (the client re-reads and watches from there); a start in the
//! future waits for it.
//!
//! Guarantees: each watcher sees every change of its range from its start on exactly once,
//! in revision order, never a change before its start; a canceled watcher sees nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::MvccStore;
use crate::types::{Event, EventKind, KeyRange, Revision};

/// A watcher's id within its stream.
pub type WatchId = i64;

/// etcd's `WatchCreateRequest`, as the hub needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCreate {
    pub range: KeyRange,
    /// The first revision to report (0 or less: changes after the current revision).
    pub start_revision: Revision,
    /// Leave out puts (etcd's `NOPUT` filter).
    pub no_put: bool,
    /// Leave out deletes (`NODELETE`).
    pub no_delete: bool,
    pub prev_kv: bool,
    /// The id the client asks for (0: the hub picks the next free one).
    pub watch_id: WatchId,
}

/// etcd's `WatchResponse`, as the hub makes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub watch_id: WatchId,
    /// The store's revision when this was made (the response header's).
    pub revision: Revision,
    pub created: bool,
    pub canceled: bool,
    /// Set when the watcher could not start: its start is compacted away.
    pub compact_revision: Revision,
    pub cancel_reason: String,
    pub events: Vec<Event>,
}

impl WatchResponse {
    fn empty(watch_id: WatchId, revision: Revision) -> Self {
        WatchResponse {
            watch_id,
            revision,
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: String::new(),
            events: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Watcher {
    create: WatchCreate,
    /// The first revision not reported yet.
    next: Revision,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        self.create.range.contains(&event.kv.key)
            && !(self.create.no_put && event.kind == EventKind::Put)
            && !(self.create.no_delete && event.kind == EventKind::Delete)
    }

    fn shaped(&self, event: &Event) -> Event {
        let mut e = event.clone();
        if !self.create.prev_kv {
            e.prev_kv = None;
        }
        e
    }
}

/// One stream's watchers.
#[derive(Debug, Default)]
pub struct WatchStream {
    watchers: BTreeMap<WatchId, Watcher>,
    next_id: WatchId,
}

/// Why a create was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("etcdserver: mvcc: watcher id {0} already exists")]
    IdInUse(WatchId),
}

impl WatchStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Creates a watcher on `store` as it is now (every change up to its revision has been
    /// fed to this stream, or none is owed): the `created` response, then the changes since
    /// the start, one response per revision — or, for a start compacted away, a response
    /// that cancels it.
    pub fn create(
        &mut self,
        store: &MvccStore,
        create: WatchCreate,
    ) -> Result<Vec<WatchResponse>, WatchError> {
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return Err(WatchError::IdInUse(create.watch_id));
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let revision = store.revision();
        let mut created = WatchResponse::empty(id, revision);
        created.created = true;
        let start = if create.start_revision > 0 {
            create.start_revision
        } else {
            revision + 1
        };
        let replay = if start <= revision {
            match store.events_since(&create.range, start) {
                Ok(events) => events,
                Err(_) => {
                    // Created and canceled at once, as etcd answers.
                    created.canceled = true;
                    created.compact_revision = store.compacted();
                    created.cancel_reason =
                        "etcdserver: mvcc: required revision has been compacted".into();
                    return Ok(vec![created]);
                }
            }
        } else {
            Vec::new()
        };
        let watcher = Watcher {
            create,
            next: start.max(revision + 1),
        };
        let mut out = vec![created];
        // The replay, grouped by revision.
        let mut batch: Option<WatchResponse> = None;
        for event in replay.iter().filter(|e| watcher.wants(e)) {
            let rev = event.kv.mod_revision;
            if batch
                .as_ref()
                .is_some_and(|b| b.events[0].kv.mod_revision != rev)
            {
                out.extend(batch.take());
            }
            batch
                .get_or_insert_with(|| WatchResponse::empty(id, revision))
                .events
                .push(watcher.shaped(event));
        }
        out.extend(batch);
        self.watchers.insert(id, watcher);
        Ok(out)
    }

    /// Feeds the changes of one applied revision (in the order they were made); what each
    /// watcher is owed of them.
    pub fn on_applied(&mut self, revision: Revision, events: &[Event]) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        for (&id, watcher) in &mut self.watchers {
            if revision < watcher.next {
                continue; // before its start, or already replayed
            }
            // A skipped revision would be changes this watcher never sees.
            assert_eq!(
                revision, watcher.next,
                "watch {id}: revision {} was not fed to its stream",
                watcher.next
            );
            watcher.next = revision + 1;
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| watcher.wants(e))
                .map(|e| watcher.shaped(e))
                .collect();
            if !mine.is_empty() {
                let mut response = WatchResponse::empty(id, revision);
                response.events = mine;
                out.push(response);
            }
        }
        out
    }

    /// Cancels a watcher: its `canceled` response, or `None` if there is none such.
    pub fn cancel(&mut self, id: WatchId, revision: Revision) -> Option<WatchResponse> {
        self.watchers.remove(&id)?;
        let mut response = WatchResponse::empty(id, revision);
        response.canceled = true;
        Some(response)
    }

    /// A progress notification (etcd's `WatchProgressRequest`): an empty response carrying
    /// the store's revision, which tells the client it has seen everything up to it.
    pub fn progress(&self, revision: Revision) -> WatchResponse {
        // etcd sends it with watch id -1 to the stream as a whole.
        WatchResponse::empty(-1, revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest};

    fn put(s: &mut MvccStore, k: &str, v: &str) -> (Revision, Vec<Event>) {
        let (_, e) = s
            .put(&PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .unwrap();
        (s.revision(), e)
    }

    fn values(responses: &[WatchResponse]) -> Vec<(Revision, String)> {
        responses
            .iter()
            .flat_map(|r| r.events.iter())
            .map(|e| {
                (
                    e.kv.mod_revision,
                    String::from_utf8(e.kv.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_watcher_replays_from_its_start_then_follows_every_change_of_its_range_once() {
        let mut s = MvccStore::new();
        put(&mut s, "a/1", "x"); // 2
        put(&mut s, "b", "no"); // 3
        put(&mut s, "a/2", "y"); // 4
        let mut stream = WatchStream::new();
        let created = stream
            .create(
                &s,
                WatchCreate {
                    range: KeyRange::prefix("a/"),
                    start_revision: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(created[0].created);
        assert_eq!(
            values(&created),
            [(4, "y".to_string())],
            "from revision 3, only a/"
        );
        let id = created[0].watch_id;
        let (rev, events) = put(&mut s, "a/1", "z");
        let got = stream.on_applied(rev, &events);
        assert_eq!(values(&got), [(5, "z".to_string())]);
        assert!(
            got[0].events[0].prev_kv.is_none(),
            "no prev_kv unless asked"
        );
        let (rev, events) = put(&mut s, "b", "no");
        assert!(stream.on_applied(rev, &events).is_empty(), "not its range");
        let (_, events) = s.delete_range(&DeleteRangeRequest {
            range: KeyRange::prefix("a/"),
            prev_kv: false,
        });
        let got = stream.on_applied(s.revision(), &events);
        assert_eq!(got.len(), 1, "one response for the revision");
        assert_eq!(got[0].events.len(), 2);
        assert!(got[0].events.iter().all(|e| e.kind == EventKind::Delete));
        assert!(
            stream.on_applied(s.revision(), &events).is_empty(),
            "fed twice, seen once"
        );
        assert!(stream.cancel(id, s.revision()).unwrap().canceled);
        let (rev, events) = put(&mut s, "a/3", "after");
        assert!(stream.on_applied(rev, &events).is_empty(), "canceled");
    }

    #[test]
    fn filters_prev_kv_future_starts_and_compacted_starts() {
        let mut s = MvccStore::new();
        put(&mut s, "k", "1"); // 2
        let mut stream = WatchStream::new();
        let future = stream
            .create(
                &s,
                WatchCreate {
                    range: KeyRange::key("k"),
                    start_revision: 4,
                    prev_kv: true,
                    no_delete: true,
                    watch_id: 7,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((future.len(), future[0].watch_id), (1, 7));
        let taken = stream.create(
            &s,
            WatchCreate {
                watch_id: 7,
                ..Default::default()
            },
        );
        assert_eq!(taken, Err(WatchError::IdInUse(7)));
        let (rev, events) = put(&mut s, "k", "2"); // 3: before its start
        assert!(stream.on_applied(rev, &events).is_empty());
        let (rev, events) = put(&mut s, "k", "3"); // 4
        let got = stream.on_applied(rev, &events);
        assert_eq!(values(&got), [(4, "3".to_string())]);
        assert_eq!(got[0].events[0].prev_kv.as_ref().unwrap().value, b"2");
        let (_, events) = s.delete_range(&DeleteRangeRequest {
            range: KeyRange::key("k"),
            prev_kv: false,
        });
        assert!(
            stream.on_applied(s.revision(), &events).is_empty(),
            "no deletes asked"
        );
        s.compact(4).unwrap();
        let refused = stream
            .create(
                &s,
                WatchCreate {
                    range: KeyRange::key("k"),
                    start_revision: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(refused[0].created && refused[0].canceled);
        assert_eq!(refused[0].compact_revision, 4);
        assert_eq!(stream.len(), 1, "the refused watcher is not kept");
        assert_eq!(stream.progress(s.revision()).revision, s.revision());
    }
}
