//! The combiner's table: a map task's pairs gathered by key as they are emitted, and
//! combined (the paper's §4.3) before any sorting, so that a task whose keys repeat — a word
//! count's words — holds one value per distinct key instead of a pair per emit.
//!
//! Emitting a pair costs one hash lookup (key → a small number and a count) and, for a value
//! other than the task's *common value* (the first value it emitted: a word count's `"1"`),
//! an append to a pending log; the common value is only counted, in the key's entry. So the
//! table's entries stay small and a word count's emit costs about what counting in the
//! mapper would. When the log passes [`PENDING_LIMIT`] (and at the end) it is grouped by
//! key (a counting sort) and each key's pending values — its earlier combined value, its
//! count of the common value, its logged values — are combined into one. The memory counted
//! ([`Gatherer::bytes`]) is the keys, their combined values and the log.

use std::collections::HashMap;

use crate::app::App;

use super::{shorten, TaskError};

/// Bytes of pending values (and their bookkeeping) after which they are combined.
const PENDING_LIMIT: usize = 1 << 20;

/// Memory counted per distinct key beyond its bytes and its combined value's: the table's
/// entry and slack, the key's box, the combined value's slot.
const KEY_OVERHEAD: usize = 64;

/// Memory counted per pending value beyond its bytes (its key number and end).
const PENDING_OVERHEAD: usize = 8;

/// A key's entry in the table.
#[derive(Clone, Copy)]
struct Slot {
    id: u32,
    /// Pending values of the key equal to the common value.
    commons: u32,
}

#[derive(Default)]
pub(super) struct Gatherer {
    /// Each distinct key's number, and its pending common values.
    ids: HashMap<Box<str>, Slot, foldhash::fast::RandomState>,
    /// The first value emitted: later values equal to it are only counted.
    common: Option<Box<str>>,
    /// By key number: the value its combined values came to so far.
    combined: Vec<Option<String>>,
    /// The values emitted since they were last combined: value `i` is of key
    /// `pending_ids[i]` and ends at `pending_ends[i]` in `pending_data`.
    pending_ids: Vec<u32>,
    pending_ends: Vec<u32>,
    pending_data: String,
    pending_bytes: usize,
    bytes: usize,
}

impl Gatherer {
    /// Bytes counted against the map task's memory limit.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn add(&mut self, app: &dyn App, key: &str, value: &str) -> Result<(), TaskError> {
        let common = self.common.get_or_insert_with(|| value.into());
        let is_common = **common == *value;
        let slot = match self.ids.get_mut(key) {
            Some(slot) => slot,
            None => {
                let id = u32::try_from(self.combined.len()).map_err(|_| {
                    TaskError::Invalid("more than 2^32 distinct keys in one map task".into())
                })?;
                self.combined.push(None);
                self.bytes += key.len() + KEY_OVERHEAD;
                self.ids
                    .entry(key.into())
                    .or_insert(Slot { id, commons: 0 })
            }
        };
        if is_common {
            slot.commons += 1;
            if slot.commons == u32::MAX {
                self.combine_pending(app)?;
            }
            return Ok(());
        }
        let id = slot.id;
        if self.pending_data.len() + value.len() > u32::MAX as usize {
            self.combine_pending(app)?;
        }
        self.pending_data.push_str(value);
        self.pending_ids.push(id);
        self.pending_ends.push(self.pending_data.len() as u32);
        let counted = value.len() + PENDING_OVERHEAD;
        self.pending_bytes += counted;
        self.bytes += counted;
        if self.pending_bytes > PENDING_LIMIT {
            self.combine_pending(app)?;
        }
        Ok(())
    }

    /// Combines every key's pending values (with its value so far) into its value.
    fn combine_pending(&mut self, app: &dyn App) -> Result<(), TaskError> {
        // Group the pending values by key: `order[starts[id]..starts[id + 1]]` are key
        // `id`'s, in the order they came.
        let keys = self.combined.len();
        let mut starts = vec![0u32; keys + 1];
        for &id in &self.pending_ids {
            starts[id as usize + 1] += 1;
        }
        for id in 0..keys {
            starts[id + 1] += starts[id];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; self.pending_ids.len()];
        for (i, &id) in self.pending_ids.iter().enumerate() {
            order[next[id as usize] as usize] = i as u32;
            next[id as usize] += 1;
        }
        let mut names: Vec<&str> = vec![""; keys];
        let mut commons = vec![0u32; keys];
        for (key, slot) in self.ids.iter_mut() {
            names[slot.id as usize] = key;
            commons[slot.id as usize] = std::mem::take(&mut slot.commons);
        }
        let common = self.common.as_deref().unwrap_or("");
        let (ends, data) = (&self.pending_ends, &self.pending_data);
        let value = |i: u32| {
            let i = i as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] as usize };
            &data[start..ends[i] as usize]
        };
        for id in 0..keys {
            let group = &order[starts[id] as usize..starts[id + 1] as usize];
            if group.is_empty() && commons[id] == 0 {
                continue;
            }
            let slot = &mut self.combined[id];
            let before = slot.as_ref().map_or(0, String::len);
            let result = match (slot.take(), group, commons[id]) {
                (None, [only], 0) => value(*only).to_owned(),
                (None, [], 1) => common.to_owned(),
                (previous, _, count) => {
                    let mut values = previous
                        .as_deref()
                        .into_iter()
                        .chain(std::iter::repeat_n(common, count as usize))
                        .chain(group.iter().map(|&i| value(i)));
                    combine_values(app, names[id], &mut values)?
                }
            };
            self.bytes = self.bytes - before + result.len();
            *slot = Some(result);
        }
        self.bytes -= self.pending_bytes;
        self.pending_bytes = 0;
        self.pending_ids.clear();
        self.pending_ends.clear();
        self.pending_data.clear();
        Ok(())
    }

    /// Hands every key with its one combined value to `take`, and empties the table (keeping
    /// its allocations).
    pub(super) fn drain(
        &mut self,
        app: &dyn App,
        mut take: impl FnMut(&str, &str) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        self.combine_pending(app)?;
        for (key, slot) in self.ids.drain() {
            if let Some(value) = self.combined[slot.id as usize].take() {
                take(&key, &value)?;
            }
        }
        self.combined.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// `app`'s combiner on `values` of `key`; its error is the task's.
pub(super) fn combine_values(
    app: &dyn App,
    key: &str,
    values: &mut dyn Iterator<Item = &str>,
) -> Result<String, TaskError> {
    app.combine(key, values)
        .map_err(|source| TaskError::Combine {
            app: app.name().to_owned(),
            key: shorten(key),
            source,
        })
}
