//! The k-way merge of sorted record sources, one implementation for the map side (spill
//! runs) and the reduce side (map outputs), and the grouping of its records by key.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::path::Path;

use crate::exec::PairSource;

use super::format::{RecordSource, RecordWriter};
use super::*;

/// The smallest key of one source, waiting in the merge heap (its value waits in
/// [`Merger::values`], so that taking a value never disturbs the heap).
struct Head {
    key: String,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .as_bytes()
            .cmp(other.key.as_bytes())
            .then(self.source.cmp(&other.source))
    }
}

/// A k-way merge of sorted sources: records in key order (ties in source order).
///
/// The current record is the top of the heap; advancing refills it in place from its
/// source and lets the heap sift it down (one sift instead of a pop and a push).
pub(super) struct Merger<S> {
    sources: Vec<S>,
    heap: BinaryHeap<Reverse<Head>>,
    /// The value of each source's record in the heap.
    values: Vec<String>,
    started: bool,
    pub(super) pairs: u64,
}

impl<S: RecordSource> Merger<S> {
    pub(super) fn new(sources: Vec<S>) -> Self {
        Merger {
            heap: BinaryHeap::with_capacity(sources.len()),
            values: vec![String::new(); sources.len()],
            sources,
            started: false,
            pairs: 0,
        }
    }

    /// Moves to the next record; `false` once every source is exhausted.
    pub(super) fn advance(&mut self) -> Result<bool, TaskError> {
        if !self.started {
            self.started = true;
            for source in 0..self.sources.len() {
                let mut key = String::new();
                if self.sources[source].next_into(&mut key, &mut self.values[source])? {
                    self.heap.push(Reverse(Head { key, source }));
                }
            }
        } else if let Some(mut top) = self.heap.peek_mut() {
            let Reverse(head) = &mut *top;
            let source = head.source;
            if !self.sources[source].next_into(&mut head.key, &mut self.values[source])? {
                PeekMut::pop(top);
            }
            // Dropping `top` sifts the refilled record down to its place.
        }
        let more = !self.heap.is_empty();
        if more {
            self.pairs += 1;
        }
        Ok(more)
    }

    fn top(&self) -> &Head {
        &self.heap.peek().expect("advance returned true").0
    }

    pub(super) fn key(&self) -> &str {
        &self.top().key
    }

    pub(super) fn value(&self) -> &str {
        &self.values[self.top().source]
    }

    fn take_value(&mut self) -> String {
        let source = self.top().source;
        std::mem::take(&mut self.values[source])
    }
}

impl<S: RecordSource + Send> PairSource for Merger<S> {
    fn next_pair(&mut self) -> Result<Option<(&str, &str)>, TaskError> {
        if self.advance()? {
            Ok(Some((self.key(), self.value())))
        } else {
            Ok(None)
        }
    }
}

/// Where a [`GroupValues`] iterator stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GroupState {
    /// The merger is on the group's first record, not yet handed out.
    AtFirst,
    /// Inside the group.
    InGroup,
    /// The merger is on the first record of the next group.
    NextGroup,
    /// The merge is exhausted.
    End,
    /// Reading failed; the error is kept.
    Failed,
}

/// The values of one key, pulled from the merge as the reduce function asks for them.
pub(super) struct GroupValues<'m, S> {
    pub(super) merger: &'m mut Merger<S>,
    pub(super) key: &'m str,
    pub(super) state: GroupState,
    pub(super) error: Option<TaskError>,
}

impl<S: RecordSource> Iterator for GroupValues<'_, S> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        match self.state {
            GroupState::AtFirst => {
                self.state = GroupState::InGroup;
                Some(self.merger.take_value())
            }
            GroupState::InGroup => match self.merger.advance() {
                Ok(true) if self.merger.key() == self.key => Some(self.merger.take_value()),
                Ok(true) => {
                    self.state = GroupState::NextGroup;
                    None
                }
                Ok(false) => {
                    self.state = GroupState::End;
                    None
                }
                Err(e) => {
                    self.error = Some(e);
                    self.state = GroupState::Failed;
                    None
                }
            },
            GroupState::NextGroup | GroupState::End | GroupState::Failed => None,
        }
    }
}

/// A merge failed reading or in the application's combiner (already a [`TaskError`]), or
/// writing.
pub(super) enum MergeError {
    Task(TaskError),
    Write(io::Error),
}

impl From<io::Error> for MergeError {
    fn from(e: io::Error) -> Self {
        MergeError::Write(e)
    }
}

/// Merges sorted `sources` into `writer`; returns the writer's output and byte count.
pub(super) fn merge_into<S: RecordSource, W: Write>(
    sources: Vec<S>,
    mut writer: RecordWriter<W>,
) -> Result<(W, u64), MergeError> {
    let mut merger = Merger::new(sources);
    while merger.advance().map_err(MergeError::Task)? {
        writer
            .write(merger.key().as_bytes(), merger.value().as_bytes())
            .map_err(MergeError::Write)?;
    }
    Ok(writer.finish()?)
}

/// Converts a [`MergeError`], naming `path` for write errors.
pub(super) fn merge_error(path: &Path) -> impl FnOnce(MergeError) -> TaskError + '_ {
    move |e| match e {
        MergeError::Task(e) => e,
        MergeError::Write(e) => TaskError::io("write", path)(e),
    }
}
