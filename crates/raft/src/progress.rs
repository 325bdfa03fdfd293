//! What a leader knows about one follower's log, and how it decides what to send next
//! (after etcd's `tracker.Progress`).
//!
//! - `Probe`: the leader does not know where the follower's log ends. It sends one
//!   `AppendEntries` with entries and waits for the answer before sending another, backing
//!   `next` up by whole terms on each rejection (a rejection asking elsewhere than
//!   `next - 1` answers an older append and is ignored). While it waits, heartbeats carry no
//!   entries (an empty append at the same point). A rejection of one backs `next` up as the
//!   probe's would; an acceptance (the follower has what precedes the probe) moves it to
//!   `Replicate` with the probe counted in flight, so the probe's entries are not sent again
//!   unless the follower shows it lacks them (a lost probe: the next heartbeat, asking at
//!   its end, is rejected). A lagging follower gets no batch it has not asked for by an
//!   answer, never one per heartbeat.
//! - `Replicate`: the follower is known to match up to `matched`; the leader streams new
//!   entries and advances `next` optimistically, as if every message arrived, with at most
//!   `Config::max_inflight_messages` appends unanswered (an acceptance frees every one up to
//!   its match index). A lost message shows up as a rejection of a later one (or of the
//!   next heartbeat), which drops the follower back to `Probe`.
//! - `Snapshot`: the entries the follower needs are compacted away; the leader has sent its
//!   snapshot. It sends it again only on evidence that it was lost — the follower answered
//!   a heartbeat after it and still lacks the snapshot's index — and not sooner than
//!   `snapshot_resend_ticks` after the last send, a wait that doubles with each resend (up
//!   to 8×), so a snapshot still on its way is not sent twice and a follower that cannot be
//!   reached is not sent one at all.
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
    /// Probe only, while paused: the last index the outstanding probe carried.
    pub probe_last: Index,
    /// Snapshot only: the index of the snapshot that was sent.
    pub pending_snapshot: Index,
    /// Leader ticks since the last snapshot was sent.
    pub ticks_since_send: u32,
    /// Snapshot only: the follower answered a heartbeat sent after the snapshot and still
    /// lacks its index.
    pub snapshot_missing: bool,
    /// Snapshot only: how many times the current snapshot was resent (the wait before the
    /// next resend is `snapshot_resend_ticks << resends`, at most 8×).
    pub snapshot_resends: u32,
    /// Replicate only: the last index of each append with entries not yet acknowledged,
    /// oldest first.
    pub inflight: std::collections::VecDeque<Index>,
    /// The leader's tick count when this follower was last heard from in this term (for
    /// lease reads).
    pub last_heard: Option<u64>,
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
            probe_last: 0,
            pending_snapshot: 0,
            ticks_since_send: 0,
            snapshot_missing: false,
            snapshot_resends: 0,
            inflight: std::collections::VecDeque::new(),
            last_heard: None,
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
        // An answer to a heartbeat sent while a probe was out (it has what precedes the
        // probe): the probe becomes one of the appends in flight, so its entries are not sent
        // a second time to a follower that has not answered them. Were it lost, the next
        // heartbeat, asking at its end, is rejected and the follower probed again.
        let outstanding_probe =
            (self.state == ProgressState::Probe && self.paused && self.probe_last > match_index)
                .then_some(self.probe_last);
        self.matched = match_index;
        self.next = self.next.max(match_index + 1);
        self.paused = false;
        while self
            .inflight
            .front()
            .is_some_and(|&last| last <= match_index)
        {
            self.inflight.pop_front();
        }
        match self.state {
            ProgressState::Probe => {
                self.state = ProgressState::Replicate;
                if let Some(last) = outstanding_probe {
                    self.next = self.next.max(last + 1);
                    self.inflight.push_back(last);
                }
            }
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
        if self.state == ProgressState::Snapshot {
            // A heartbeat sent after the snapshot (at its index or later) found it missing.
            if prev_log_index >= self.pending_snapshot {
                self.snapshot_missing = true;
            }
            return false;
        }
        if prev_log_index <= self.matched {
            return false; // stale: we already know better
        }
        if self.state == ProgressState::Probe && prev_log_index != self.next - 1 {
            // Every append in Probe asks at `next - 1`: this answers one sent before `next`
            // last moved (say, the rest of a pipeline that was lost) and says nothing new.
            // Acting on it would send another probe for each such rejection.
            return false;
        }
        self.next = hinted_next.clamp(self.matched + 1, prev_log_index);
        self.state = ProgressState::Probe;
        self.paused = false;
        self.inflight.clear();
        self.check();
        true
    }

    /// Records that entries `prev_log_index + 1 ..= prev_log_index + count` were sent.
    pub fn sent(&mut self, prev_log_index: Index, count: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next = self.next.max(prev_log_index + count + 1);
                if count > 0 {
                    self.inflight.push_back(prev_log_index + count);
                }
            }
            ProgressState::Probe if count > 0 => {
                self.paused = true;
                self.probe_last = prev_log_index + count;
            }
            ProgressState::Probe => {}
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
        self.snapshot_missing = false;
        self.snapshot_resends = 0;
        self.inflight.clear();
    }

    /// Snapshot only: whether to send the snapshot again now (see the module docs).
    pub fn snapshot_resend_due(&self, resend_ticks: u32) -> bool {
        let wait = resend_ticks.saturating_mul(1 << self.snapshot_resends.min(3));
        self.snapshot_missing && self.ticks_since_send >= wait
    }

    /// Snapshot only: the snapshot was sent again.
    pub fn snapshot_resent(&mut self) {
        self.ticks_since_send = 0;
        self.snapshot_missing = false;
        self.snapshot_resends = self.snapshot_resends.saturating_add(1);
    }

    /// Replicate only: as many appends are unanswered as `max` allows.
    pub fn inflight_full(&self, max: usize) -> bool {
        self.state == ProgressState::Replicate && self.inflight.len() >= max.max(1)
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
