//! What a leader knows about one follower's log, and how it decides what to send next
//! (after etcd's `tracker.Progress`).
//!
//! - `Probe`: the leader does not know where the follower's log ends. It sends one
//!   `AppendEntries` and waits for the answer (or the next heartbeat) before sending another,
//!   backing `next` up by whole terms on each rejection.
//! - `Replicate`: the follower is known to match up to `matched`; the leader streams new
//!   entries and advances `next` optimistically, as if every message arrived. A lost message
//!   shows up as a rejection of a later one, which drops the follower back to `Probe`.
//! - `Snapshot`: the entries the follower needs are compacted away; the leader has sent its
//!   snapshot and resends it only after `snapshot_resend_ticks` without an answer.
//!
//! Invariant: `matched < next`.

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// What [`crate::Status`] shows of one follower, on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: crate::types::NodeId,
    /// Highest index known to match the leader's log.
    pub matched: Index,
    /// Next index the leader will send.
    pub next: Index,
    pub state: ProgressState,
    /// Probe only: a message is outstanding and the leader waits for its answer.
    pub paused: bool,
    /// Heard from since the last check-quorum check.
    pub recent_active: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// Probe only: a message is outstanding.
    pub paused: bool,
    /// Snapshot only: the index of the snapshot that was sent.
    pub pending_snapshot: Index,
    /// Leader ticks since the last snapshot was sent.
    pub ticks_since_send: u32,
    /// Heard from since the last quorum check.
    pub recent_active: bool,
}

impl Progress {
    pub fn new(next: Index) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            paused: false,
            pending_snapshot: 0,
            ticks_since_send: 0,
            recent_active: false,
        }
    }

    /// The public view of this progress, for follower `id`.
    pub fn view(&self, id: crate::types::NodeId) -> FollowerProgress {
        FollowerProgress {
            id,
            matched: self.matched,
            next: self.next,
            state: self.state,
            paused: self.paused,
            recent_active: self.recent_active,
        }
    }

    /// The follower matches up to `match_index`. Returns true if `matched` advanced.
    pub fn acknowledge(&mut self, match_index: Index) -> bool {
        if match_index < self.matched {
            return false; // a stale, reordered answer
        }
        let advanced = match_index > self.matched;
        self.matched = match_index;
        self.next = self.next.max(match_index + 1);
        self.paused = false;
        match self.state {
            ProgressState::Probe => self.state = ProgressState::Replicate,
            ProgressState::Snapshot if match_index >= self.pending_snapshot => {
                self.state = ProgressState::Replicate;
            }
            _ => {}
        }
        self.check();
        advanced
    }

    /// The follower rejected a message whose `prev_log_index` it lacks; `hinted_next` is the
    /// leader's reading of its conflict hint. Returns true if the leader should send again.
    pub fn reject(&mut self, prev_log_index: Index, hinted_next: Index) -> bool {
        if prev_log_index <= self.matched || self.state == ProgressState::Snapshot {
            return false; // stale: we already know better
        }
        self.next = hinted_next.clamp(self.matched + 1, prev_log_index);
        self.state = ProgressState::Probe;
        self.paused = false;
        self.check();
        true
    }

    /// Records that entries `prev_log_index + 1 ..= prev_log_index + count` were sent.
    pub fn sent(&mut self, prev_log_index: Index, count: u64) {
        match self.state {
            ProgressState::Replicate => self.next = self.next.max(prev_log_index + count + 1),
            ProgressState::Probe => self.paused = true,
            ProgressState::Snapshot => {
                unreachable!("entries are not sent while a snapshot is pending")
            }
        }
        self.check();
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = snapshot_index;
        self.ticks_since_send = 0;
    }

    fn check(&self) {
        debug_assert!(
            self.matched < self.next,
            "matched {} >= next {}",
            self.matched,
            self.next
        );
    }
}
