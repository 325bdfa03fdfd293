//! The revisioned store: every key's history of changes, the current revision, compaction,
//! and the leases keys are attached to.
//!
//! Invariants (asserted in every build where they guard what a read returns):
//! - each key's records are in increasing (revision, sub) order, every revision at most
//!   `current`; a record is a put or a tombstone;
//! - after `compact(r)`, every key keeps at most one record at or before `r`, a put: reads
//!   at `r` or later see what they saw before, reads before `r` are refused;
//! - a key attached to a lease is in that lease's key set and the other way round.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::types::*;

/// At most this many operations in one transaction, nested ones counted (etcd's default
/// `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// One change of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    revision: Revision,
    /// The change's place within its revision (a transaction changes several keys).
    sub: u32,
    /// `None`: the key was deleted.
    put: Option<Put>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Put {
    create_revision: Revision,
    version: i64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    lease: LeaseId,
}

/// The store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvccStore {
    keys: BTreeMap<Vec<u8>, Vec<Record>>,
    current: Revision,
    /// Reads before this revision are refused; 0: nothing compacted.
    compacted: Revision,
    leases: BTreeMap<LeaseId, Lease>,
    /// The id the next lease granted without one gets (then the next free one after it).
    next_lease: LeaseId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    granted_ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

impl Default for MvccStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A write in progress: the revision it will make and the events so far.
struct Writing {
    revision: Revision,
    sub: u32,
    events: Vec<Event>,
}

impl Writing {
    fn wrote(&self) -> bool {
        self.sub > 0
    }
}

impl MvccStore {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        MvccStore {
            keys: BTreeMap::new(),
            current: 1,
            compacted: 0,
            leases: BTreeMap::new(),
            next_lease: 1,
        }
    }

    pub fn revision(&self) -> Revision {
        self.current
    }

    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// Keys that exist now.
    pub fn len(&self) -> usize {
        self.keys
            .values()
            .filter(|h| h.last().is_some_and(|r| r.put.is_some()))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_read_revision(&self, revision: Revision) -> Result<Revision, MvccError> {
        if revision <= 0 {
            return Ok(self.current);
        }
        if revision > self.current {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current: self.current,
            });
        }
        if revision < self.compacted {
            return Err(MvccError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        Ok(revision)
    }

    /// The keys of `range` in order, with their histories.
    fn histories<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<Record>)> + 'a> {
        if range.is_single() {
            return Box::new(self.keys.get_key_value(&range.key).into_iter());
        }
        let start = Bound::Included(range.key.clone());
        let end = if range.range_end == [0] {
            Bound::Unbounded
        } else if range.range_end <= range.key {
            return Box::new(std::iter::empty());
        } else {
            Bound::Excluded(range.range_end.clone())
        };
        Box::new(self.keys.range((start, end)))
    }

    /// The key as of `revision` (including changes of the transaction writing it).
    fn at(key: &[u8], history: &[Record], revision: Revision) -> Option<KeyValue> {
        let i = history.partition_point(|r| r.revision <= revision);
        let record = history[..i].last()?;
        let put = record.put.as_ref()?;
        Some(KeyValue {
            key: key.to_vec(),
            create_revision: put.create_revision,
            mod_revision: record.revision,
            version: put.version,
            value: put.value.clone(),
            lease: put.lease,
        })
    }

    /// etcd's Range.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let revision = self.check_read_revision(request.revision)?;
        Ok(self.range_at(request, revision))
    }

    fn range_at(&self, request: &RangeRequest, revision: Revision) -> RangeResponse {
        let within = |v: Revision, min: Revision, max: Revision| {
            (min <= 0 || v >= min) && (max <= 0 || v <= max)
        };
        let mut kvs: Vec<KeyValue> = self
            .histories(&request.range)
            .filter_map(|(k, h)| Self::at(k, h, revision))
            .collect();
        // etcd counts the keys of the range before the revision filters.
        let count = kvs.len() as i64;
        kvs.retain(|kv| {
            within(
                kv.mod_revision,
                request.min_mod_revision,
                request.max_mod_revision,
            ) && within(
                kv.create_revision,
                request.min_create_revision,
                request.max_create_revision,
            )
        });
        // etcd: no order given but a target other than the key means ascending.
        let order = match (request.sort_order, request.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        if order != SortOrder::None {
            let target = request.sort_target;
            kvs.sort_by(|a, b| {
                let by = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                // Stable, and ties in key order (the order they were read in).
                if order == SortOrder::Descend {
                    by.reverse()
                } else {
                    by
                }
            });
        }
        let mut more = false;
        if request.limit > 0 && kvs.len() as i64 > request.limit {
            kvs.truncate(request.limit as usize);
            more = true;
        }
        if request.count_only {
            kvs.clear();
        } else if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse { kvs, more, count }
    }

    /// Appends a change of `key` to its history at the write's revision, and its event.
    /// `prev` is the key's value before the change (as [`Self::at`] reads it at the write's
    /// revision), which the caller has already looked up.
    fn record(
        &mut self,
        writing: &mut Writing,
        key: &[u8],
        prev: Option<KeyValue>,
        put: Option<Put>,
    ) {
        let kv = match &put {
            Some(put) => KeyValue {
                key: key.to_vec(),
                create_revision: put.create_revision,
                mod_revision: writing.revision,
                version: put.version,
                value: put.value.clone(),
                lease: put.lease,
            },
            None => KeyValue {
                key: key.to_vec(),
                create_revision: 0,
                mod_revision: writing.revision,
                version: 0,
                value: Vec::new(),
                lease: 0,
            },
        };
        let kind = if put.is_some() {
            EventKind::Put
        } else {
            EventKind::Delete
        };
        let record = Record {
            revision: writing.revision,
            sub: writing.sub,
            put,
        };
        match self.keys.get_mut(key) {
            Some(history) => {
                if let Some(last) = history.last() {
                    assert!(
                        (last.revision, last.sub) < (writing.revision, writing.sub),
                        "a key's history goes forward"
                    );
                }
                history.push(record);
            }
            None => {
                self.keys.insert(key.to_vec(), vec![record]);
            }
        }
        writing.sub += 1;
        writing.events.push(Event {
            kind,
            kv,
            prev_kv: prev,
        });
    }

    fn detach(&mut self, key: &[u8], lease: LeaseId) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }

    fn put_in(
        &mut self,
        writing: &mut Writing,
        request: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let prev = self
            .keys
            .get(&request.key)
            .and_then(|h| Self::at(&request.key, h, writing.revision));
        if (request.ignore_value || request.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let lease = if request.ignore_lease {
            prev.as_ref().map_or(0, |p| p.lease)
        } else {
            request.lease
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(MvccError::LeaseNotFound(lease));
        }
        let value = if request.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            request.value.clone()
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (writing.revision, 1),
        };
        if let Some(p) = &prev {
            self.detach(&request.key, p.lease);
        }
        if lease != 0 {
            self.leases
                .get_mut(&lease)
                .expect("checked above")
                .keys
                .insert(request.key.clone());
        }
        let put = Put {
            create_revision,
            version,
            value,
            lease,
        };
        let prev_kv = if request.prev_kv { prev.clone() } else { None };
        self.record(writing, &request.key, prev, Some(put));
        Ok(PutResponse { prev_kv })
    }

    fn delete_in(
        &mut self,
        writing: &mut Writing,
        request: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let existing: Vec<KeyValue> = self
            .histories(&request.range)
            .filter_map(|(k, h)| Self::at(k, h, writing.revision))
            .collect();
        for kv in &existing {
            self.detach(&kv.key, kv.lease);
            self.record(writing, &kv.key, Some(kv.clone()), None);
        }
        DeleteRangeResponse {
            deleted: existing.len() as i64,
            prev_kvs: if request.prev_kv {
                existing
            } else {
                Vec::new()
            },
        }
    }

    fn begin(&self) -> Writing {
        Writing {
            revision: self.current + 1,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Makes the write's revision current if it changed anything; its events.
    fn commit(&mut self, writing: Writing) -> Vec<Event> {
        if writing.wrote() {
            self.current = writing.revision;
        }
        writing.events
    }

    /// etcd's Put: the response and the event.
    pub fn put(&mut self, request: &PutRequest) -> Result<(PutResponse, Vec<Event>), MvccError> {
        let mut writing = self.begin();
        let response = self.put_in(&mut writing, request)?;
        Ok((response, self.commit(writing)))
    }

    /// etcd's DeleteRange: a new revision only if a key was deleted.
    pub fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> (DeleteRangeResponse, Vec<Event>) {
        let mut writing = self.begin();
        let response = self.delete_in(&mut writing, request);
        (response, self.commit(writing))
    }

    fn compare_holds(&self, compare: &Compare, revision: Revision) -> bool {
        let mut kvs: Vec<Option<KeyValue>> = self
            .histories(&compare.range)
            .filter_map(|(k, h)| Self::at(k, h, revision))
            .map(Some)
            .collect();
        if kvs.is_empty() {
            // No key in the range (etcd: compared as one absent key): version, revisions
            // and lease 0; no value.
            kvs.push(None);
        }
        kvs.iter().all(|kv| {
            use std::cmp::Ordering;
            let ordering: Option<Ordering> = match (&compare.target, kv) {
                (CompareTarget::Version(v), kv) => {
                    Some(kv.as_ref().map_or(0, |k| k.version).cmp(v))
                }
                (CompareTarget::Create(r), kv) => {
                    Some(kv.as_ref().map_or(0, |k| k.create_revision).cmp(r))
                }
                (CompareTarget::Mod(r), kv) => {
                    Some(kv.as_ref().map_or(0, |k| k.mod_revision).cmp(r))
                }
                (CompareTarget::Lease(l), kv) => Some(kv.as_ref().map_or(0, |k| k.lease).cmp(l)),
                (CompareTarget::Value(v), Some(kv)) => Some(kv.value.as_slice().cmp(v.as_slice())),
                // etcd: an absent key fails every value compare.
                (CompareTarget::Value(_), None) => None,
            };
            match (ordering, compare.result) {
                (None, _) => false,
                (Some(o), CompareResult::Equal) => o == Ordering::Equal,
                (Some(o), CompareResult::NotEqual) => o != Ordering::Equal,
                (Some(o), CompareResult::Greater) => o == Ordering::Greater,
                (Some(o), CompareResult::Less) => o == Ordering::Less,
            }
        })
    }

    /// etcd's checks of a branch before a transaction runs: no key put twice, and no put of
    /// a key a delete of the branch covers; a nested transaction's branches are checked on
    /// their own, and what either may write is checked against the rest. Returns the keys
    /// put and the ranges deleted.
    fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), MvccError> {
        let mut dels: Vec<KeyRange> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) => Some(d.range.clone()),
                _ => None,
            })
            .collect();
        let mut puts = BTreeSet::new();
        for op in ops {
            if let RequestOp::Txn(t) = op {
                let (then_puts, then_dels) = Self::check_intervals(&t.success)?;
                let (else_puts, else_dels) = Self::check_intervals(&t.failure)?;
                for key in &then_puts {
                    if puts.contains(key) || dels.iter().any(|d| d.contains(key)) {
                        return Err(MvccError::DuplicateKey);
                    }
                    puts.insert(key.clone());
                }
                for key in &else_puts {
                    // Both branches may put one key: only one of them runs.
                    if (puts.contains(key) && !then_puts.contains(key))
                        || dels.iter().any(|d| d.contains(key))
                    {
                        return Err(MvccError::DuplicateKey);
                    }
                    puts.insert(key.clone());
                }
                dels.extend(then_dels);
                dels.extend(else_dels);
            }
        }
        for op in ops {
            if let RequestOp::Put(p) = op {
                if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
                    return Err(MvccError::DuplicateKey);
                }
                puts.insert(p.key.clone());
            }
        }
        Ok((puts, dels))
    }

    fn count_ops(ops: &[RequestOp]) -> usize {
        ops.iter()
            .map(|op| match op {
                RequestOp::Txn(t) => {
                    1 + Self::count_ops(&t.success).max(Self::count_ops(&t.failure))
                }
                _ => 1,
            })
            .sum()
    }

    /// Evaluates every compare the transaction will meet, nested ones included, on the
    /// store as it is before the transaction (as etcd does): the branch taken at each
    /// transaction, depth first.
    fn choose(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn
            .compare
            .iter()
            .all(|c| self.compare_holds(c, self.current));
        path.push(succeeded);
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let RequestOp::Txn(t) = op {
                self.choose(t, path);
            }
        }
    }

    /// Checks, on the store before the transaction, everything that could make an
    /// operation of the chosen branches fail, so that applying them cannot.
    fn validate(
        &self,
        txn: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<(), MvccError> {
        let succeeded = path.next().expect("a choice per transaction");
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    self.check_read_revision(r.revision)?;
                }
                RequestOp::Put(p) => {
                    if p.key.is_empty() {
                        return Err(MvccError::EmptyKey);
                    }
                    let prev = self
                        .keys
                        .get(&p.key)
                        .and_then(|h| Self::at(&p.key, h, self.current));
                    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
                        return Err(MvccError::KeyNotFound);
                    }
                    if !p.ignore_lease && p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(MvccError::LeaseNotFound(p.lease));
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => self.validate(t, path)?,
            }
        }
        Ok(())
    }

    fn txn_apply(
        &mut self,
        writing: &mut Writing,
        txn: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> TxnResponse {
        let succeeded = path.next().expect("a choice per transaction");
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                // Reads see the transaction's own writes before them (etcd's write view).
                RequestOp::Range(r) => {
                    let revision = if r.revision > 0 {
                        r.revision
                    } else {
                        writing.revision
                    };
                    ResponseOp::Range(self.range_at(r, revision))
                }
                RequestOp::Put(p) => ResponseOp::Put(
                    self.put_in(writing, p)
                        .expect("a validated put of a valid transaction applies"),
                ),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_in(writing, d)),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn_apply(writing, t, path)),
            });
        }
        TxnResponse {
            succeeded,
            responses,
        }
    }

    /// etcd's Txn: every compare (nested ones too) is judged on the store before it, then
    /// the chosen operations run at one new revision (if any writes). A transaction that
    /// would fail (a duplicate key, a put with an unknown lease, a read of a compacted
    /// revision, too many operations) is refused whole and changes nothing.
    pub fn txn(&mut self, txn: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        if Self::count_ops(&txn.success).max(Self::count_ops(&txn.failure)) > MAX_TXN_OPS {
            return Err(MvccError::TooManyOps);
        }
        Self::check_intervals(&txn.success)?;
        Self::check_intervals(&txn.failure)?;
        let mut path = Vec::new();
        self.choose(txn, &mut path);
        self.validate(txn, &mut path.iter().copied())?;
        let mut writing = self.begin();
        let response = self.txn_apply(&mut writing, txn, &mut path.iter().copied());
        Ok((response, self.commit(writing)))
    }

    /// etcd's Compact: reads before `revision` are refused from now on, and the history
    /// before it is dropped.
    pub fn compact(&mut self, revision: Revision) -> Result<(), MvccError> {
        if revision > self.current {
            return Err(MvccError::FutureRevision {
                requested: revision,
                current: self.current,
            });
        }
        if revision <= self.compacted {
            return Err(MvccError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        self.keys.retain(|_, history| {
            let i = history.partition_point(|r| r.revision <= revision);
            // Keep the last record at or before `revision` if it is a put.
            let keep_from = match history[..i].last() {
                Some(r) if r.put.is_some() => i - 1,
                _ => i,
            };
            history.drain(..keep_from);
            !history.is_empty()
        });
        self.compacted = revision;
        Ok(())
    }

    /// Every change in `range` at `start` or later, in order; refused if `start` is
    /// before the compaction (a watch from there cannot be served). As in etcd, a watch
    /// may start at the compaction revision itself (a client told "compacted" retries
    /// from there), whose deletes are gone with the compaction: only changes after it are
    /// complete.
    pub fn events_since(&self, range: &KeyRange, start: Revision) -> Result<Vec<Event>, MvccError> {
        if start > 0 && start < self.compacted {
            return Err(MvccError::Compacted {
                requested: start,
                compacted: self.compacted,
            });
        }
        let mut events: Vec<((Revision, u32), Event)> = Vec::new();
        for (key, history) in self.histories(range) {
            for (i, record) in history.iter().enumerate() {
                if record.revision < start {
                    continue;
                }
                let prev = i
                    .checked_sub(1)
                    .and_then(|j| Self::at(key, &history[..=j], history[j].revision));
                let (kind, kv) = match Self::at(key, &history[..=i], record.revision) {
                    Some(kv) => (EventKind::Put, kv),
                    None => (
                        EventKind::Delete,
                        KeyValue {
                            key: key.clone(),
                            create_revision: 0,
                            mod_revision: record.revision,
                            version: 0,
                            value: Vec::new(),
                            lease: 0,
                        },
                    ),
                };
                events.push((
                    (record.revision, record.sub),
                    Event {
                        kind,
                        kv,
                        prev_kv: prev,
                    },
                ));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Ok(events.into_iter().map(|(_, e)| e).collect())
    }

    /// Grants a lease (`id` 0: the store picks one). No revision: nothing is written.
    pub fn lease_grant(&mut self, id: LeaseId, ttl: i64) -> Result<LeaseId, MvccError> {
        let id = if id == 0 {
            while self.leases.contains_key(&self.next_lease) {
                self.next_lease += 1;
            }
            // Never handed out again, even once revoked: a client still holding the old
            // id must not keep another's lease alive.
            self.next_lease += 1;
            self.next_lease - 1
        } else {
            id
        };
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists(id));
        }
        self.leases.insert(
            id,
            Lease {
                granted_ttl: ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    /// Revokes a lease and deletes its keys (one revision, if it had any).
    pub fn lease_revoke(&mut self, id: LeaseId) -> Result<Vec<Event>, MvccError> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(MvccError::LeaseNotFound(id))?;
        let mut writing = self.begin();
        for key in &lease.keys {
            let prev = self
                .keys
                .get(key)
                .and_then(|h| Self::at(key, h, writing.revision));
            assert!(
                prev.as_ref().is_some_and(|kv| kv.lease == id),
                "a lease's key exists and is attached to it"
            );
            self.record(&mut writing, key, prev, None);
        }
        Ok(self.commit(writing))
    }

    pub fn lease(&self, id: LeaseId) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo {
            id,
            granted_ttl: l.granted_ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    pub fn leases(&self) -> Vec<LeaseId> {
        self.leases.keys().copied().collect()
    }

    /// Checks the invariants of the module docs (for a restored snapshot, and in tests).
    pub fn check(&self) -> Result<(), String> {
        if self.current < 1 || self.compacted > self.current {
            return Err(format!(
                "revision {} with compaction at {}",
                self.current, self.compacted
            ));
        }
        for (key, history) in &self.keys {
            if history.is_empty() {
                return Err(format!("key {key:?} without history"));
            }
            for pair in history.windows(2) {
                if (pair[0].revision, pair[0].sub) >= (pair[1].revision, pair[1].sub) {
                    return Err(format!("key {key:?}: history out of order"));
                }
            }
            if history.last().is_some_and(|r| r.revision > self.current) {
                return Err(format!(
                    "key {key:?}: a change after revision {}",
                    self.current
                ));
            }
            let at_or_before = history
                .iter()
                .filter(|r| r.revision <= self.compacted)
                .count();
            if at_or_before > 1
                || history
                    .first()
                    .is_some_and(|r| r.revision <= self.compacted && r.put.is_none())
            {
                return Err(format!(
                    "key {key:?}: history before the compaction at {}",
                    self.compacted
                ));
            }
            if let Some(kv) = Self::at(key, history, self.current) {
                if kv.lease != 0
                    && !self
                        .leases
                        .get(&kv.lease)
                        .is_some_and(|l| l.keys.contains(key))
                {
                    return Err(format!(
                        "key {key:?} on lease {} that does not list it",
                        kv.lease
                    ));
                }
            }
        }
        for (id, lease) in &self.leases {
            for key in &lease.keys {
                let on = self
                    .keys
                    .get(key)
                    .and_then(|h| Self::at(key, h, self.current))
                    .map(|kv| kv.lease);
                if on != Some(*id) {
                    return Err(format!("lease {id} lists {key:?}, which is on {on:?}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
