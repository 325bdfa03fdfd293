//! The Raft protocol itself: one `step_*` function per role, in the manner of etcd's
//! `raft.go`. [`RawNode`](crate::RawNode) wraps this with the Ready/advance interface.
//!
//! Everything here is synchronous and deterministic: inputs are ticks, messages and
//! proposals; outputs accumulate in `msgs` and in the log's unstable part until the driver
//! takes them with `RawNode::ready`.

use crate::log::RaftLog;
use crate::progress::{FollowerProgress, Progress, ProgressState};
use crate::rng::SplitMix64;
use crate::types::*;
use crate::validate::{check_message, StepError};
use crate::Config;

pub(crate) struct Raft {
    pub id: NodeId,
    pub peers: Vec<NodeId>,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub log: RaftLog,

    /// Progress of each other peer; meaningful only while leader.
    progress: Vec<(NodeId, Progress)>,
    /// Votes received in the current election (candidate only).
    votes: Vec<(NodeId, bool)>,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: SplitMix64,
    pub(crate) cfg: Config,

    /// Messages produced since the last `Ready`.
    pub msgs: Vec<Message>,
    /// Followers in `Replicate` state need the entries proposed since the last `Ready`.
    pending_broadcast: bool,

    /// The last ReadIndex round this node started (as leader, in any term).
    read_seq: u64,
    /// Rounds waiting for a quorum's answer, oldest first (leader only).
    pending_reads: Vec<PendingRead>,
    /// Reads asked before this leader committed an entry of its term (leader only).
    reads_before_commit: Vec<Vec<u8>>,
    /// Confirmed reads, for the next `Ready`.
    pub read_states: Vec<ReadState>,
    /// A leadership transfer in progress (leader only): the target, and ticks since it began.
    transfer: Option<(NodeId, u32)>,
    /// Ticks since this node became leader (leader only; lease reads measure time with it).
    leader_ticks: u64,
    /// This leader told a follower to campaign at once (`TimeoutNow`), which bypasses the
    /// followers' leases: no lease read in this term any more.
    lease_given_up: bool,
    /// Ticks since this node last heard from a leader, or since it started (which counts as
    /// having just heard from one): see `honours_lease`.
    since_leader: u32,
}

/// One ReadIndex round: the reads it confirms, at the commit index when it started, and who
/// has answered it (or a later round).
struct PendingRead {
    seq: u64,
    index: Index,
    ctxs: Vec<Vec<u8>>,
    acks: Vec<NodeId>,
}

impl Raft {
    pub fn new(cfg: Config, hard_state: HardState, log: RaftLog) -> Self {
        assert!(cfg.peers.contains(&cfg.id), "peers must include this node");
        assert!(cfg.heartbeat_ticks > 0 && cfg.election_ticks > cfg.heartbeat_ticks);
        let mut raft = Raft {
            id: cfg.id,
            peers: cfg.peers.clone(),
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            progress: Vec::new(),
            votes: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            rng: SplitMix64::new(cfg.seed ^ cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            cfg,
            msgs: Vec::new(),
            pending_broadcast: false,
            read_seq: 0,
            pending_reads: Vec::new(),
            reads_before_commit: Vec::new(),
            read_states: Vec::new(),
            transfer: None,
            leader_ticks: 0,
            lease_given_up: false,
            since_leader: 0,
        };
        raft.reset_election_timer();
        raft
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    fn quorum(&self) -> usize {
        self.peers.len() / 2 + 1
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let spread = self.cfg.election_ticks as u64;
        self.randomized_election_timeout = self.cfg.election_ticks + self.rng.below(spread) as u32;
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_in_term(to, self.term, body);
    }

    fn send_in_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    /// Heard from a live leader within the minimum election timeout (only meaningful with
    /// check-quorum, which makes leaders step down when they lose their majority).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.cfg.election_ticks
    }

    /// Vote requests other than a transfer's are ignored (a higher term) or refused (our
    /// term): check-quorum's lease, and with lease reads also for `election_ticks` after this
    /// node last heard from any leader, whatever happened since. A leader may be serving
    /// reads on the strength of this node's answer, and two things make a node forget it
    /// answered: a restart, and a stale answer carrying a newer term (it takes the term and
    /// drops its leader, so `in_lease` no longer holds, and the candidate of that term asks
    /// in the node's own term).
    fn honours_lease(&self) -> bool {
        self.in_lease()
            || (self.cfg.lease_reads
                && self.cfg.check_quorum
                && self.since_leader < self.cfg.election_ticks)
    }

    /// A message from the leader of our term.
    fn heard_from_leader(&mut self, leader: NodeId) {
        self.leader = Some(leader);
        self.since_leader = 0;
        self.reset_election_timer();
    }

    // ---- role changes -------------------------------------------------------------------

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        let was_follower = self.role == Role::Follower;
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.pending_broadcast = false;
        // Reads not yet confirmed are dropped: the service times them out and asks the new
        // leader.
        self.pending_reads.clear();
        self.reads_before_commit.clear();
        self.transfer = None;
        // Figure 2 resets the election timer only on hearing from a leader or granting a
        // vote. A mere higher term (say, a candidate with a stale log) must not silence a
        // follower that could win; a leader or candidate stepping down starts afresh.
        if leader.is_some() || !was_follower {
            self.reset_election_timer();
        }
    }

    /// Election timeout: with pre-vote, first ask whether an election could be won.
    fn start_election(&mut self) {
        if self.cfg.pre_vote {
            self.pre_campaign();
        } else {
            self.campaign();
        }
    }

    fn pre_campaign(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = vec![(self.id, true)];
        self.reset_election_timer();
        if self.quorum() == 1 {
            self.campaign();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let term = self.term + 1;
        for peer in self.other_peers() {
            self.send_in_term(
                peer,
                term,
                MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                },
            );
        }
    }

    fn campaign(&mut self) {
        self.campaign_for(false);
    }

    /// A real election in the next term; `transfer`: asked for by the leader (`TimeoutNow`).
    fn campaign_for(&mut self, transfer: bool) {
        self.term += 1;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = vec![(self.id, true)];
        self.reset_election_timer();
        if self.quorum() == 1 {
            self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.other_peers() {
            self.send(
                peer,
                MessageBody::RequestVote {
                    last_log_index,
                    last_log_term,
                    transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.vote, Some(self.id), "a leader has voted for itself");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.leader_ticks = 0;
        self.lease_given_up = false;
        let next = self.log.last_index() + 1;
        self.progress = self
            .other_peers()
            .into_iter()
            .map(|p| (p, Progress::new(next)))
            .collect();
        if self.cfg.leader_noop {
            // Probes start at `next`, so the first message to each follower carries it.
            self.log.append(self.term, Vec::new());
            self.maybe_commit();
        }
        // Assert leadership at once: an append to everyone (it also probes their logs).
        for peer in self.other_peers() {
            self.send_append(peer, true);
        }
    }

    /// On a leader: follower `peer` restarted (its transport says so). What it acknowledged
    /// before may be gone if its storage lost an acknowledged tail (a damaged disk), and a
    /// leader that kept its match would take every rejection below it for a stale answer and
    /// never send it those entries again. So the leader forgets what it knew of the
    /// follower's log and probes it from the end, as after an election (keeping only whether
    /// it was heard from, for check-quorum). Lowering a match commits nothing (the commit
    /// index never goes back); it only makes the leader ask again.
    pub fn forget_progress(&mut self, peer: NodeId) {
        if self.role != Role::Leader || peer == self.id || !self.peers.contains(&peer) {
            return;
        }
        let next = self.log.last_index() + 1;
        let pr = self.progress_mut(peer);
        let recent_active = pr.recent_active;
        *pr = Progress::new(next);
        pr.recent_active = recent_active;
        self.send_append(peer, true);
    }

    /// Each follower's progress, in `peers` order; empty unless leader.
    pub fn follower_progress(&self) -> Vec<FollowerProgress> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        self.progress.iter().map(|(id, pr)| pr.view(*id)).collect()
    }

    fn other_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .copied()
            .filter(|&p| p != self.id)
            .collect()
    }

    // ---- inputs -----------------------------------------------------------------------------

    pub fn tick(&mut self) {
        self.since_leader = self.since_leader.saturating_add(1);
        match self.role {
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.election_elapsed += 1;
                if self.election_elapsed >= self.randomized_election_timeout {
                    self.start_election();
                }
            }
            Role::Leader => {
                self.leader_ticks += 1;
                for (_, pr) in self.progress.iter_mut() {
                    pr.ticks_since_send = pr.ticks_since_send.saturating_add(1);
                }
                if let Some((_, ticks)) = &mut self.transfer {
                    *ticks += 1;
                    if *ticks >= self.cfg.election_ticks {
                        // The target did not take over within an election timeout: lead on.
                        self.transfer = None;
                    }
                }
                self.election_elapsed += 1;
                if self.election_elapsed >= self.cfg.election_ticks {
                    self.election_elapsed = 0;
                    if self.cfg.check_quorum && !self.quorum_recently_active() {
                        // Cut off from a majority: stop accepting proposals that cannot commit.
                        let term = self.term;
                        self.become_follower(term, None);
                        return;
                    }
                }
                self.heartbeat_elapsed += 1;
                if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
                    self.heartbeat_elapsed = 0;
                    for peer in self.other_peers() {
                        self.send_append(peer, true);
                    }
                }
            }
        }
    }

    /// Counts peers heard from since the last check (plus self) and resets the marks.
    fn quorum_recently_active(&mut self) -> bool {
        let mut active = 1;
        for (_, pr) in self.progress.iter_mut() {
            if pr.recent_active {
                active += 1;
            }
            pr.recent_active = false;
        }
        active >= self.quorum()
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Index, Term), crate::NotLeader> {
        if self.role != Role::Leader {
            return Err(crate::NotLeader { hint: self.leader });
        }
        if let Some((target, _)) = self.transfer {
            // Leadership is on its way to `target`: a new entry would only delay it.
            return Err(crate::NotLeader { hint: Some(target) });
        }
        assert!(
            !(self.cfg.leader_noop && data.is_empty()),
            "with leader_noop, empty data marks a leader's no-op: propose a non-empty command"
        );
        let index = self.log.append(self.term, data);
        self.pending_broadcast = true;
        self.maybe_commit();
        Ok((index, self.term))
    }

    /// Leadership transfer (Raft thesis §3.10): brings `to`'s log up to date, then tells it
    /// to campaign at once (`TimeoutNow`). Meanwhile proposals are refused (hinting at `to`);
    /// the transfer is abandoned if `to` has not taken over within an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), crate::TransferError> {
        if self.role != Role::Leader {
            return Err(crate::TransferError::NotLeader(crate::NotLeader {
                hint: self.leader,
            }));
        }
        if to == self.id {
            return Ok(());
        }
        if !self.peers.contains(&to) {
            return Err(crate::TransferError::UnknownPeer(to));
        }
        self.transfer = Some((to, 0));
        if self.progress_mut(to).matched == self.log.last_index() {
            self.lease_given_up = true;
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// ReadIndex (Raft thesis §6.4): confirms that this node is still the leader, then hands
    /// back `ctx` with the commit index of the moment it was asked ([`ReadState`]). Until this
    /// leader has committed an entry of its own term its commit index may be behind, so the
    /// read waits for that first (with `Config::leader_noop` it comes at once).
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), crate::NotLeader> {
        if self.role != Role::Leader {
            return Err(crate::NotLeader { hint: self.leader });
        }
        if self.log.term(self.log.committed) == Some(self.term) {
            if self.lease_valid() {
                let index = self.log.committed;
                self.read_states.push(ReadState { index, ctx });
                return Ok(());
            }
            self.start_read_round(vec![ctx]);
        } else {
            self.reads_before_commit.push(ctx);
        }
        Ok(())
    }

    /// Lease reads ([`Config::lease_reads`]): a quorum (this leader included) answered this
    /// leader within the last `election_ticks / 2` ticks of its clock, in this term, and it
    /// has not handed its leadership on. Each of those followers refuses to vote for
    /// `election_ticks` of its own clock after hearing from it (check-quorum's lease), so no
    /// other leader can exist yet — if message delay plus clock drift stay under
    /// `election_ticks / 2` ticks.
    fn lease_valid(&self) -> bool {
        if !(self.cfg.lease_reads && self.cfg.check_quorum) || self.lease_given_up {
            return false;
        }
        let lease = u64::from(self.cfg.election_ticks / 2);
        let now = self.leader_ticks;
        let fresh = self
            .progress
            .iter()
            .filter(|(_, pr)| pr.last_heard.is_some_and(|t| now - t < lease))
            .count();
        fresh + 1 >= self.quorum()
    }

    /// Starts a round confirming `ctxs` at the current commit index.
    fn start_read_round(&mut self, ctxs: Vec<Vec<u8>>) {
        let index = self.log.committed;
        if self.quorum() == 1 {
            self.read_states
                .extend(ctxs.into_iter().map(|ctx| ReadState { index, ctx }));
            return;
        }
        self.read_seq += 1;
        let seq = self.read_seq;
        self.pending_reads.push(PendingRead {
            seq,
            index,
            ctxs,
            acks: Vec::new(),
        });
        for peer in self.other_peers() {
            self.send(peer, MessageBody::ReadProbe { seq });
        }
    }

    /// `from` answered round `seq`, which also vouches for every earlier round: each round a
    /// quorum (this leader included) has answered is confirmed, in order.
    fn confirm_reads(&mut self, from: NodeId, seq: u64) {
        for round in self.pending_reads.iter_mut().filter(|r| r.seq <= seq) {
            if !round.acks.contains(&from) {
                round.acks.push(from);
            }
        }
        let quorum = self.quorum();
        let confirmed = self
            .pending_reads
            .iter()
            .take_while(|r| r.acks.len() + 1 >= quorum)
            .count();
        for round in self.pending_reads.drain(..confirmed) {
            let index = round.index;
            self.read_states
                .extend(round.ctxs.into_iter().map(|ctx| ReadState { index, ctx }));
        }
    }

    /// Sends new entries to followers that are in `Replicate` state. Called when a `Ready` is
    /// assembled, so a burst of proposals travels in one message per follower.
    pub fn flush_broadcast(&mut self) {
        if !std::mem::take(&mut self.pending_broadcast) || self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        for peer in self.other_peers() {
            let pr = self.progress_mut(peer);
            if pr.state == ProgressState::Replicate && pr.next <= last {
                self.send_append(peer, false);
            }
        }
    }

    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        check_message(&m, self.id, &self.peers)?;
        self.check_against_state(&m)?;
        if m.term > self.term {
            let asks_for_vote = matches!(
                m.body,
                MessageBody::RequestVote {
                    transfer: false,
                    ..
                } | MessageBody::PreVote { .. }
            );
            if asks_for_vote && self.honours_lease() {
                // Our leader is alive: whoever asks has just lost touch with it. Ignoring
                // the request keeps a partitioned server from unseating a working leader.
                return Ok(());
            }
            match m.body {
                // A pre-vote changes nothing in the receiver; a granted pre-vote carries the
                // term we would campaign in, which we take only when we campaign.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::ReadProbe { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            // A stale sender: answer requests so it learns the new term and steps down.
            match m.body {
                MessageBody::AppendEntries { prev_log_index, .. } => {
                    let (index, term) = self.log.conflict_hint(prev_log_index);
                    let hint = ConflictHint { index, term };
                    self.send(
                        m.from,
                        MessageBody::AppendEntriesResponse(AppendOutcome::Rejected {
                            prev_log_index,
                            hint,
                        }),
                    );
                }
                MessageBody::InstallSnapshot { .. } => {
                    let hint = ConflictHint {
                        index: self.log.last_index() + 1,
                        term: None,
                    };
                    self.send(
                        m.from,
                        MessageBody::AppendEntriesResponse(AppendOutcome::Rejected {
                            prev_log_index: 0,
                            hint,
                        }),
                    );
                }
                MessageBody::RequestVote { .. } => {
                    self.send(m.from, MessageBody::RequestVoteResponse { granted: false });
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                MessageBody::ReadProbe { .. } => {
                    // In our newer term, so the stale leader steps down; with round 0, which no
                    // leader starts, so the answer confirms nothing even if it reaches the
                    // sender after it restarted and leads our term, its rounds counted anew.
                    self.send(m.from, MessageBody::ReadProbeResponse { seq: 0 });
                }
                _ => {}
            }
            return Ok(());
        }
        if let MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } = m.body
        {
            self.handle_pre_vote(m.from, m.term, last_log_index, last_log_term);
            return Ok(());
        }
        if let MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            transfer,
        } = m.body
        {
            self.handle_request_vote(m.from, last_log_index, last_log_term, transfer);
            return Ok(());
        }
        match self.role {
            Role::Follower => self.step_follower(m),
            Role::PreCandidate | Role::Candidate => self.step_candidate(m),
            Role::Leader => self.step_leader(m),
        }
        Ok(())
    }

    /// The checks of a message against this node's state, made before anything changes (see
    /// [`crate::validate`]).
    fn check_against_state(&self, m: &Message) -> Result<(), StepError> {
        if m.term < self.term {
            return Ok(()); // stale: answered with our term, never acted upon
        }
        match &m.body {
            MessageBody::AppendEntries { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::ReadProbe { .. }
            | MessageBody::TimeoutNow
                if m.term == self.term && self.role == Role::Leader =>
            {
                Err(StepError::TwoLeaders {
                    term: self.term,
                    other: m.from,
                })
            }
            MessageBody::AppendEntries { entries, .. } => {
                let committed = self.log.committed;
                let conflict = entries
                    .iter()
                    .take_while(|e| e.index <= committed)
                    .find(|e| self.log.term(e.index).is_some_and(|t| t != e.term));
                match conflict {
                    Some(e) => Err(StepError::ConflictsWithCommitted {
                        from: m.from,
                        index: e.index,
                        committed,
                    }),
                    None => Ok(()),
                }
            }
            MessageBody::ReadProbeResponse { seq }
                if m.term == self.term && self.role == Role::Leader && *seq > self.read_seq =>
            {
                Err(StepError::Malformed {
                    from: m.from,
                    detail: format!(
                        "answer to read round {seq}, never started (last {})",
                        self.read_seq
                    ),
                })
            }
            MessageBody::AppendEntriesResponse(outcome)
                if m.term == self.term && self.role == Role::Leader =>
            {
                // Only an acceptance beyond the log is impossible: `Accepted` answers an append
                // of the responder's own term, which this leader sent. A rejection beyond it
                // can be a correct peer's answer to an append of an earlier term (when this
                // node led with a longer log), stamped with the peer's newer term, which is
                // this leader's: it is ignored in `handle_append_response`.
                let AppendOutcome::Accepted { match_index: index } = *outcome else {
                    return Ok(());
                };
                let last = self.log.last_index();
                if index > last {
                    return Err(StepError::BeyondLog {
                        from: m.from,
                        index,
                        last,
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Would we vote for `candidate` in `term` (≥ ours)? Nothing changes here either way.
    fn handle_pre_vote(
        &mut self,
        candidate: NodeId,
        term: Term,
        last_log_index: Index,
        last_log_term: Term,
    ) {
        let free =
            term > self.term || (self.vote.is_none_or(|v| v == candidate) && self.leader.is_none());
        let granted = free && self.log.is_up_to_date(last_log_index, last_log_term);
        // A grant carries the asked term (so the asker does not take it for a newer term of
        // ours); a refusal carries our own.
        let reply_term = if granted { term } else { self.term };
        self.send_in_term(
            candidate,
            reply_term,
            MessageBody::PreVoteResponse { granted },
        );
    }

    fn handle_request_vote(
        &mut self,
        candidate: NodeId,
        last_log_index: Index,
        last_log_term: Term,
        transfer: bool,
    ) {
        // With lease reads the lease binds in our own term too (see `honours_lease`).
        let leased = self.cfg.lease_reads && !transfer && self.honours_lease();
        let can_vote = self.vote.is_none_or(|v| v == candidate) && self.leader.is_none() && !leased;
        let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if granted {
            self.vote = Some(candidate);
            self.reset_election_timer();
        }
        self.send(candidate, MessageBody::RequestVoteResponse { granted });
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.heard_from_leader(m.from);
                self.handle_append(
                    m.from,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                );
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.heard_from_leader(m.from);
                self.handle_snapshot(m.from, snapshot);
            }
            MessageBody::ReadProbe { seq } => {
                self.heard_from_leader(m.from);
                self.send(m.from, MessageBody::ReadProbeResponse { seq });
            }
            MessageBody::TimeoutNow => {
                // Our leader hands over: campaign now, without a pre-vote (the leader vouches
                // that our log is up to date) and past the others' leases.
                self.campaign_for(true);
            }
            _ => {} // stale responses from an earlier role
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntries { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::ReadProbe { .. } => {
                // Someone won this term: follow them.
                let term = self.term;
                self.become_follower(term, Some(m.from));
                self.step_follower(m);
            }
            MessageBody::RequestVoteResponse { granted } if self.role == Role::Candidate => {
                self.tally(m.from, granted, Self::become_leader);
            }
            // Only answers to the term we asked about count (refusals carry the refuser's term).
            MessageBody::PreVoteResponse { granted }
                if self.role == Role::PreCandidate && (m.term == self.term + 1 || !granted) =>
            {
                self.tally(m.from, granted, Self::campaign);
            }
            _ => {}
        }
    }

    /// Records one (pre-)vote; runs `won` on a majority of yes, steps down on a majority of no.
    fn tally(&mut self, from: NodeId, granted: bool, won: fn(&mut Self)) {
        if !self.votes.iter().any(|(p, _)| *p == from) {
            self.votes.push((from, granted));
        }
        let yes = self.votes.iter().filter(|(_, g)| *g).count();
        let no = self.votes.len() - yes;
        if yes >= self.quorum() {
            won(self);
        } else if no >= self.quorum() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn step_leader(&mut self, m: Message) {
        let now = self.leader_ticks;
        self.progress_mut(m.from).last_heard = Some(now);
        match m.body {
            MessageBody::AppendEntriesResponse(outcome) => {
                self.progress_mut(m.from).recent_active = true;
                self.handle_append_response(m.from, outcome);
            }
            MessageBody::ReadProbeResponse { seq } => {
                self.progress_mut(m.from).recent_active = true;
                self.confirm_reads(m.from, seq);
            }
            MessageBody::AppendEntries { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::ReadProbe { .. }
            | MessageBody::TimeoutNow => {
                unreachable!("refused by check_against_state: two leaders in one term")
            }
            _ => {
                self.progress_mut(m.from).recent_active = true;
            }
        }
    }

    // ---- follower side of replication ---------------------------------------------------

    fn handle_append(
        &mut self,
        leader: NodeId,
        mut prev_log_index: Index,
        mut prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: Index,
    ) {
        let snapshot_index = self.log.snapshot().index;
        if prev_log_index < snapshot_index {
            // Our snapshot already covers (committed) part of this message: skip that part.
            entries.retain(|e| e.index > snapshot_index);
            prev_log_index = snapshot_index;
            prev_log_term = self.log.snapshot().term;
        }
        if self.log.term(prev_log_index) != Some(prev_log_term) {
            let (index, term) = self.log.conflict_hint(prev_log_index);
            self.send(
                leader,
                MessageBody::AppendEntriesResponse(AppendOutcome::Rejected {
                    prev_log_index,
                    hint: ConflictHint { index, term },
                }),
            );
            return;
        }
        let last_new = self.log.merge(prev_log_index, entries);
        self.log.commit_to(leader_commit.min(last_new));
        self.send(
            leader,
            MessageBody::AppendEntriesResponse(AppendOutcome::Accepted {
                match_index: last_new,
            }),
        );
    }

    fn handle_snapshot(&mut self, leader: NodeId, snapshot: Snapshot) {
        let match_index = if snapshot.index > self.log.committed {
            let index = snapshot.index;
            self.log.install_snapshot(snapshot);
            index
        } else {
            // We already have (and may have applied) everything it covers.
            self.log.committed
        };
        self.send(
            leader,
            MessageBody::AppendEntriesResponse(AppendOutcome::Accepted { match_index }),
        );
    }

    // ---- leader side of replication -----------------------------------------------------

    fn progress_mut(&mut self, peer: NodeId) -> &mut Progress {
        &mut self
            .progress
            .iter_mut()
            .find(|(p, _)| *p == peer)
            .expect("progress for a peer of the group")
            .1
    }

    fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let last_index = self.log.last_index();
        match outcome {
            AppendOutcome::Accepted { match_index } => {
                let pr = self.progress_mut(from);
                let advanced = pr.acknowledge(match_index);
                let caught_up = pr.matched == last_index;
                if caught_up && self.transfer.is_some_and(|(target, _)| target == from) {
                    self.lease_given_up = true;
                    self.send(from, MessageBody::TimeoutNow);
                }
                if advanced && self.maybe_commit() {
                    // Tell everyone about the new commit index without waiting a heartbeat.
                    for peer in self.other_peers() {
                        self.send_append(peer, true);
                    }
                }
                self.fill_window(from);
            }
            AppendOutcome::Rejected { prev_log_index, .. } if prev_log_index > last_index => {
                // An answer to an append of an earlier term (see `check_against_state`).
            }
            AppendOutcome::Rejected {
                prev_log_index,
                hint,
            } => {
                let next = match hint.term.and_then(|t| self.log.last_index_of_term(t)) {
                    Some(index) => index + 1,
                    None => hint.index,
                };
                let pr = self.progress_mut(from);
                if pr.reject(prev_log_index, next) {
                    self.send_append(from, false);
                }
            }
        }
    }

    /// Sends `peer` what it is missing: in `Replicate`, appends until its window of
    /// unanswered messages is full or it has everything; otherwise at most one message.
    fn fill_window(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let max = self.cfg.max_inflight_messages.max(1);
        for _ in 0..max {
            let pr = self.progress_mut(peer);
            let (before, replicate) = (pr.next, pr.state == ProgressState::Replicate);
            if before > last || pr.inflight_full(max) {
                return;
            }
            self.send_append(peer, false);
            if !replicate || self.progress_mut(peer).next == before {
                return; // one probe or snapshot at a time, or nothing could be sent
            }
        }
    }

    /// Commits the highest index a quorum has, if it is from the current term (§5.4.2: older
    /// entries are committed only indirectly).
    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<Index> = self.progress.iter().map(|(_, pr)| pr.matched).collect();
        matched.push(self.log.last_index());
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matched[self.quorum() - 1];
        let advanced = quorum_index > self.log.committed
            && self.log.term(quorum_index) == Some(self.term)
            && self.log.commit_to(quorum_index);
        if advanced && !self.reads_before_commit.is_empty() {
            // The first commit of this term: the reads that waited for it can be confirmed.
            let ctxs = std::mem::take(&mut self.reads_before_commit);
            self.start_read_round(ctxs);
        }
        advanced
    }

    /// Sends `peer` what it needs next: entries from its `next` index, or the snapshot when
    /// those are compacted away. `heartbeat` sends even when nothing is new (and retries a
    /// paused probe).
    fn send_append(&mut self, peer: NodeId, heartbeat: bool) {
        let snapshot_index = self.log.snapshot().index;
        let snapshot_term = self.log.snapshot().term;
        let last = self.log.last_index();
        let committed = self.log.committed;
        let (max_count, max_bytes) = (
            self.cfg.max_entries_per_message,
            self.cfg.max_bytes_per_message,
        );
        let resend_ticks = self.cfg.snapshot_resend_ticks;
        let max_inflight = self.cfg.max_inflight_messages;
        let pr = self.progress_mut(peer);
        if pr.state == ProgressState::Snapshot || pr.next <= snapshot_index {
            let fresh = pr.state != ProgressState::Snapshot;
            if fresh || pr.snapshot_resend_due(resend_ticks) {
                if fresh {
                    pr.become_snapshot(snapshot_index);
                } else {
                    pr.pending_snapshot = snapshot_index;
                    pr.snapshot_resent();
                }
                let snapshot = self.log.snapshot().clone();
                self.send(peer, MessageBody::InstallSnapshot { snapshot });
            } else if heartbeat {
                // Keep the follower from campaigning while the snapshot is on its way; its
                // answer tells whether the snapshot arrived.
                self.send(
                    peer,
                    MessageBody::AppendEntries {
                        prev_log_index: snapshot_index,
                        prev_log_term: snapshot_term,
                        entries: Vec::new(),
                        leader_commit: committed,
                    },
                );
            }
            return;
        }
        // A probe waiting for its answer, or a follower with its window of unanswered appends
        // full: nothing new, except that a heartbeat goes out empty (its answer unpauses the
        // probe or frees the window, or shows what was lost).
        let hold_back =
            (pr.state == ProgressState::Probe && pr.paused) || pr.inflight_full(max_inflight);
        if hold_back && !heartbeat {
            return;
        }
        let next = pr.next;
        let prev_log_index = next - 1;
        let prev_log_term = self
            .log
            .term(prev_log_index)
            .expect("prev index is in the log");
        let entries = if next <= last && !hold_back {
            self.log.slice(next, last, max_count, max_bytes)
        } else {
            Vec::new()
        };
        self.progress_mut(peer)
            .sent(prev_log_index, entries.len() as u64);
        self.send(
            peer,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: committed,
            },
        );
    }
}
