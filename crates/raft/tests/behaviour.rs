//! Behaviour the safety checks cannot see but users rely on: leases and check-quorum, timer
//! resets, pre-vote refusals, what a `Ready` carries after a restart, probing, and the reference
//! storage rules. Each test pins one rule that a plausible slip would break without any
//! safety property noticing (found by mutation testing; see TESTING.md).

use flotilla_raft::{
    Config, DurableState, Entry, FollowerProgress, HardState, Message, MessageBody, Persist,
    ProgressState, RawNode, ReadState, Role, Snapshot, TransferError,
};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8],
    }
}

fn state(term: u64, vote: Option<u64>, terms: &[u64]) -> DurableState {
    DurableState {
        hard_state: HardState { term, vote },
        snapshot: Snapshot::default(),
        entries: terms
            .iter()
            .enumerate()
            .map(|(k, &t)| entry(k as u64 + 1, t))
            .collect(),
    }
}

fn node(id: u64, durable: DurableState) -> RawNode {
    RawNode::new(Config::new(id, vec![0, 1, 2]), durable)
}

/// Takes every pending `Ready`, returning the messages.
fn drain(node: &mut RawNode) -> Vec<Message> {
    let mut out = Vec::new();
    while node.has_ready() {
        let rd = node.ready();
        out.extend(rd.messages);
        node.advance();
    }
    out
}

/// Node 0 of {0, 1, 2} (pre-vote off) campaigns and gets both votes: returns its term.
fn win_election(leader: &mut RawNode) -> u64 {
    assert!(ticks_until_it_speaks(leader, 200).is_some());
    let term = leader.status().hard.term;
    for peer in [1, 2] {
        leader
            .step(from(
                peer,
                0,
                term,
                MessageBody::RequestVoteResponse { granted: true },
            ))
            .expect("valid");
    }
    assert!(leader.is_leader());
    drain(leader);
    term
}

/// Three nodes and a link filter: messages between `a` and `b` for which `cut(a, b)` holds are
/// dropped.
struct Net {
    nodes: Vec<RawNode>,
}

impl Net {
    fn new() -> Net {
        Net {
            nodes: (0..3).map(|i| node(i, DurableState::default())).collect(),
        }
    }

    /// One tick for everyone, then messages delivered until the network is quiet.
    fn tick(&mut self, cut: impl Fn(u64, u64) -> bool) {
        for n in self.nodes.iter_mut() {
            n.tick();
        }
        let mut in_flight: Vec<Message> = self.nodes.iter_mut().flat_map(drain).collect();
        while !in_flight.is_empty() {
            for m in std::mem::take(&mut in_flight) {
                if !cut(m.from, m.to) {
                    let to = m.to as usize;
                    self.nodes[to].step(m).expect("a valid message");
                }
            }
            in_flight = self.nodes.iter_mut().flat_map(drain).collect();
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.is_leader())
    }

    fn elect_someone(&mut self) -> usize {
        for _ in 0..300 {
            self.tick(|_, _| false);
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader");
    }
}

/// Check-quorum's lease: a follower that lost only its link to the leader cannot win the
/// others' (pre-)votes while they still hear the leader, so the leader is not unseated.
#[test]
fn a_follower_cut_off_from_the_leader_alone_does_not_unseat_it() {
    let mut net = Net::new();
    let leader = net.elect_someone() as u64;
    let term = net.nodes[leader as usize].status().hard.term;
    let lonely = (leader + 1) % 3;
    let cut = |a: u64, b: u64| (a == leader && b == lonely) || (a == lonely && b == leader);
    for _ in 0..600 {
        net.tick(cut);
    }
    assert_eq!(
        net.leader(),
        Some(leader as usize),
        "the leader was unseated"
    );
    assert_eq!(net.nodes[leader as usize].status().hard.term, term);
}

/// Check-quorum: a leader that hears from no majority for an election timeout steps down, so
/// it stops taking proposals that cannot commit.
#[test]
fn a_leader_cut_off_from_everyone_steps_down_within_two_election_timeouts() {
    let mut net = Net::new();
    let leader = net.elect_someone() as u64;
    let election_ticks = Config::new(0, vec![0]).election_ticks;
    let alone = |a: u64, b: u64| a == leader || b == leader;
    for _ in 0..2 * election_ticks {
        net.tick(alone);
    }
    assert!(
        !net.nodes[leader as usize].is_leader(),
        "the isolated leader still leads"
    );
    assert!(net.nodes[leader as usize].propose(b"x".to_vec()).is_err());
}

/// Ticks until `n` sends something (it campaigns or pre-campaigns); at most `limit`.
fn ticks_until_it_speaks(n: &mut RawNode, limit: u32) -> Option<u32> {
    drain(n);
    (1..=limit).find(|_| {
        n.tick();
        !drain(n).is_empty()
    })
}

/// A higher term alone — here a candidate whose stale log it refuses — does not reset a
/// follower's election timer (Figure 2 resets it only on hearing a leader or granting a vote):
/// the follower, which could win, times out exactly when its twin that heard nothing does.
#[test]
fn a_refused_stale_candidate_does_not_delay_the_followers_election() {
    let mut listener = node(1, state(2, None, &[1, 2, 2]));
    let mut twin = node(1, state(2, None, &[1, 2, 2]));
    for _ in 0..25 {
        listener.tick();
        twin.tick();
    }
    listener
        .step(Message {
            from: 2,
            to: 1,
            term: 5,
            body: MessageBody::RequestVote {
                transfer: false,
                last_log_index: 1,
                last_log_term: 1,
            },
        })
        .expect("valid");
    let refused = drain(&mut listener);
    assert!(refused
        .iter()
        .any(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: false })));
    assert_eq!(listener.status().hard.term, 5);
    let a = ticks_until_it_speaks(&mut listener, 200);
    let b = ticks_until_it_speaks(&mut twin, 200);
    assert!(a.is_some());
    assert_eq!(a, b, "the refused request moved the election timer");
}

/// A candidate that learns of a higher term steps down and starts its election timer afresh:
/// it waits at least a full election timeout before it campaigns again.
#[test]
fn a_candidate_stepping_down_waits_a_full_election_timeout() {
    let mut cfg = Config::new(1, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let election_ticks = cfg.election_ticks;
    let mut n = RawNode::new(cfg, DurableState::default());
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    assert_eq!(n.status().soft.role, Role::Candidate);
    // Most of a timeout later, a refusal from a higher term arrives.
    for _ in 0..election_ticks - 2 {
        n.tick();
    }
    n.step(Message {
        from: 0,
        to: 1,
        term: 9,
        body: MessageBody::RequestVoteResponse { granted: false },
    })
    .expect("valid");
    drain(&mut n);
    assert_eq!(n.status().soft.role, Role::Follower);
    let waited = ticks_until_it_speaks(&mut n, 200).expect("campaigns again");
    assert!(
        waited >= election_ticks,
        "campaigned again after {waited} ticks"
    );
}

fn pre_vote(from: u64, term: u64, last: (u64, u64)) -> Message {
    Message {
        from,
        to: 1,
        term,
        body: MessageBody::PreVote {
            last_log_index: last.0,
            last_log_term: last.1,
        },
    }
}

fn pre_vote_answer(n: &mut RawNode) -> bool {
    drain(n)
        .iter()
        .find_map(|m| match m.body {
            MessageBody::PreVoteResponse { granted } => Some(granted),
            _ => None,
        })
        .expect("an answer")
}

/// Pre-votes for the node's own term are given as real votes would be: only to the candidate
/// it voted for, and never while it knows a leader; a higher term is free.
#[test]
fn pre_votes_in_the_current_term_follow_the_vote() {
    let voted_for_0 = || node(1, state(4, Some(0), &[1]));
    let mut n = voted_for_0();
    n.step(pre_vote(2, 4, (1, 1))).expect("valid");
    assert!(!pre_vote_answer(&mut n), "granted to a second candidate");
    let mut n = voted_for_0();
    n.step(pre_vote(0, 4, (1, 1))).expect("valid");
    assert!(
        pre_vote_answer(&mut n),
        "refused to the candidate it voted for"
    );
    let mut n = voted_for_0();
    n.step(pre_vote(2, 5, (1, 1))).expect("valid");
    assert!(pre_vote_answer(&mut n), "a higher term is free");
    // Knowing a leader in the term: refused even to the candidate voted for.
    let mut n = voted_for_0();
    n.step(Message {
        from: 2,
        to: 1,
        term: 4,
        body: MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 0,
        },
    })
    .expect("valid");
    drain(&mut n);
    // Past the lease, so only the leader rule can refuse.
    for _ in 0..Config::new(0, vec![0]).election_ticks {
        n.tick();
        if n.has_ready() {
            break;
        }
    }
    let mut n2 = n;
    n2.step(pre_vote(0, 4, (1, 1))).expect("valid");
    let answers = drain(&mut n2);
    assert!(answers
        .iter()
        .all(|m| !matches!(m.body, MessageBody::PreVoteResponse { granted: true })));
}

/// A restarted node hands storage nothing it already has: its first `Ready` persists no
/// entries and no hard state.
#[test]
fn a_restarted_node_persists_nothing_it_recovered() {
    let mut n = node(1, state(3, Some(2), &[1, 2, 3]));
    n.tick();
    n.step(Message {
        from: 2,
        to: 1,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 3,
            entries: vec![],
            leader_commit: 3,
        },
    })
    .expect("valid");
    let rd = n.ready();
    assert_eq!(
        rd.persist,
        Persist::default(),
        "re-persisted recovered state"
    );
    assert_eq!(rd.committed_entries.len(), 3);
    n.advance();
}

/// A new leader probes each follower with an empty append at the end of its log (the
/// follower's answer tells where to start), and a follower in probe gets one append at a time:
/// new proposals wait for its answer.
#[test]
fn a_new_leader_probes_with_empty_appends_and_waits_for_answers() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let mut n = RawNode::new(cfg, state(1, None, &[1, 1]));
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    let term = n.status().hard.term;
    for from in [1, 2] {
        n.step(Message {
            from,
            to: 0,
            term,
            body: MessageBody::RequestVoteResponse { granted: true },
        })
        .expect("valid");
    }
    assert!(n.is_leader());
    let probes = drain(&mut n);
    for m in &probes {
        match &m.body {
            MessageBody::AppendEntries {
                prev_log_index,
                entries,
                ..
            } => {
                assert_eq!(*prev_log_index, 2, "probe at the end of the log");
                assert!(entries.is_empty(), "a probe carries no entries");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(probes.len(), 2);
    n.propose(b"new".to_vec()).expect("leader");
    let after = drain(&mut n);
    assert!(
        after
            .iter()
            .all(|m| !matches!(m.body, MessageBody::AppendEntries { .. })),
        "appends sent to followers still being probed: {after:?}"
    );
}

/// After compaction the log reports where it now starts.
#[test]
fn status_reports_the_first_index_after_compaction() {
    let mut cfg = Config::new(0, vec![0]);
    cfg.pre_vote = false;
    let mut n = RawNode::new(cfg, DurableState::default());
    for _ in 0..200 {
        if n.is_leader() {
            break;
        }
        n.tick();
        drain(&mut n);
    }
    assert!(n.is_leader(), "a group of one elects itself");
    for k in 0..6u8 {
        n.propose(vec![k]).expect("leader");
    }
    drain(&mut n);
    assert_eq!(n.status().first_index, 1);
    n.compact(4, b"state@4".to_vec()).expect("applied");
    drain(&mut n);
    let status = n.status();
    assert_eq!((status.first_index, status.snapshot_index), (5, 4));
    assert_eq!(status.last_index, 6);
}

/// `Persist::is_empty` and `DurableState::covers`, the reference storage's small rules.
#[test]
fn reference_storage_rules() {
    assert!(Persist::default().is_empty());
    let with_vote = Persist {
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
        }),
        ..Persist::default()
    };
    assert!(!with_vote.is_empty());
    let mut s = state(2, None, &[1, 1, 2, 2]);
    s.apply(&Persist {
        snapshot: Some(Snapshot {
            index: 2,
            term: 1,
            data: b"two".to_vec(),
        }),
        ..Persist::default()
    });
    assert!(
        s.covers(1, 7),
        "an index under the snapshot is covered, whatever the term"
    );
    assert!(
        s.covers(2, 1) && !s.covers(2, 2),
        "the snapshot's own index has its term"
    );
    assert!(s.covers(4, 2) && !s.covers(4, 1) && !s.covers(5, 2));
    // An older snapshot changes nothing; one at the same index replaces the data.
    let before = s.clone();
    s.apply(&Persist {
        snapshot: Some(Snapshot {
            index: 1,
            term: 1,
            data: b"one".to_vec(),
        }),
        ..Persist::default()
    });
    assert_eq!(s, before);
    s.apply(&Persist {
        snapshot: Some(Snapshot {
            index: 2,
            term: 1,
            data: b"two again".to_vec(),
        }),
        ..Persist::default()
    });
    assert_eq!(s.snapshot.data, b"two again");
    assert_eq!(s.entries, before.entries);
}

fn from(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// A pre-candidate that a majority refuses goes back to being a follower at once, without
/// campaigning; late pre-vote grants never make a candidate campaign again.
#[test]
fn pre_vote_refusals_and_late_grants() {
    let mut n = node(1, state(3, None, &[1]));
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    assert_eq!(n.status().soft.role, Role::PreCandidate);
    for peer in [0, 2] {
        n.step(from(
            peer,
            1,
            3,
            MessageBody::PreVoteResponse { granted: false },
        ))
        .expect("valid");
    }
    assert_eq!(
        n.status().soft.role,
        Role::Follower,
        "refused by a majority"
    );
    assert_eq!(n.status().hard.term, 3, "no campaign");
    // Now campaign for real (pre-votes granted), then late grants arrive.
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    n.step(from(
        0,
        1,
        4,
        MessageBody::PreVoteResponse { granted: true },
    ))
    .expect("valid");
    drain(&mut n);
    assert_eq!(n.status().soft.role, Role::Candidate);
    assert_eq!(n.status().hard.term, 4);
    n.step(from(
        2,
        1,
        4,
        MessageBody::PreVoteResponse { granted: true },
    ))
    .expect("valid");
    n.step(from(
        0,
        1,
        5,
        MessageBody::PreVoteResponse { granted: true },
    ))
    .expect("valid");
    drain(&mut n);
    assert_eq!(
        (n.status().soft.role, n.status().hard.term),
        (Role::Candidate, 4),
        "a late pre-vote grant started another election"
    );
}

/// After a rejection naming a term the leader also has, the leader resends from just after its
/// own last entry of that term (the fast backup), not from further back.
#[test]
fn a_rejection_with_a_known_term_backs_up_to_the_leaders_last_entry_of_it() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let mut leader = RawNode::new(cfg, state(4, None, &[1, 1, 2, 2, 4]));
    let term = win_election(&mut leader);
    // Follower 1 has 1,1,2,2,2,2,3: at index 5 it holds term 2, whose run starts at 3.
    leader
        .step(from(
            1,
            0,
            term,
            MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Rejected {
                prev_log_index: 5,
                hint: flotilla_raft::ConflictHint {
                    index: 3,
                    term: Some(2),
                },
            }),
        ))
        .expect("valid");
    let resent = drain(&mut leader);
    let prev = resent.iter().find_map(|m| match &m.body {
        MessageBody::AppendEntries { prev_log_index, .. } if m.to == 1 => Some(*prev_log_index),
        _ => None,
    });
    assert_eq!(
        prev,
        Some(4),
        "resend after the leader's last entry of term 2"
    );
}

/// A leader whose follower 1 needs its snapshot, and the snapshot's index.
fn leader_owing_a_snapshot() -> (RawNode, u64, u64) {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    for k in 0..5u8 {
        leader.propose(vec![k]).expect("leader");
    }
    // Follower 2 acknowledges everything, so entries commit; follower 1 stays silent.
    let last = leader.status().last_index;
    leader
        .step(from(
            2,
            0,
            term,
            MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted {
                match_index: last,
            }),
        ))
        .expect("valid");
    drain(&mut leader);
    leader.compact(last, b"all".to_vec()).expect("applied");
    drain(&mut leader);
    (leader, term, last)
}

/// Ticks the leader `ticks` times; follower 1 answers each heartbeat it gets with `answer`
/// (if any). Returns the ticks at which a snapshot went to follower 1.
fn snapshot_sends(
    leader: &mut RawNode,
    term: u64,
    ticks: u32,
    answer: Option<flotilla_raft::AppendOutcome>,
) -> Vec<u32> {
    let mut sends = Vec::new();
    for t in 0..ticks {
        leader.tick();
        let out = drain(leader);
        for m in out.iter().filter(|m| m.to == 1) {
            match &m.body {
                MessageBody::InstallSnapshot { .. } => sends.push(t),
                MessageBody::AppendEntries { .. } => {
                    if let Some(answer) = answer {
                        leader
                            .step(from(1, 0, term, MessageBody::AppendEntriesResponse(answer)))
                            .expect("valid");
                    }
                }
                _ => {}
            }
        }
    }
    sends
}

/// A follower that never answers is sent the snapshot once, not once per interval: nothing
/// says it was lost (and a snapshot to an unreachable follower is wasted).
#[test]
fn a_snapshot_is_not_resent_to_a_follower_that_never_answers() {
    let (mut leader, term, _) = leader_owing_a_snapshot();
    let resend = Config::new(0, vec![0]).snapshot_resend_ticks;
    let sends = snapshot_sends(&mut leader, term, 10 * resend, None);
    assert_eq!(sends.len(), 1, "snapshot sent at ticks {sends:?}");
}

/// A follower that answers heartbeats but still lacks the snapshot's index gets it again,
/// after `snapshot_resend_ticks`, then after twice, four, eight times that (capped).
#[test]
fn a_snapshot_found_missing_is_resent_with_a_doubling_wait() {
    let (mut leader, term, last) = leader_owing_a_snapshot();
    let resend = Config::new(0, vec![0]).snapshot_resend_ticks;
    let lacks_it = flotilla_raft::AppendOutcome::Rejected {
        prev_log_index: last,
        hint: flotilla_raft::ConflictHint {
            index: 1,
            term: None,
        },
    };
    let sends = snapshot_sends(&mut leader, term, 40 * resend, Some(lacks_it));
    let gaps: Vec<u32> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(sends.len() >= 4, "snapshot sent at ticks {sends:?}");
    for (k, gap) in gaps.iter().enumerate() {
        let wait = resend << (k as u32).min(3);
        assert!(
            *gap >= wait && *gap < wait + resend,
            "resend {k} after {gap} ticks, want about {wait} (sends {sends:?})"
        );
    }
}

/// A follower whose answer shows the snapshot arrived is never sent it again.
#[test]
fn a_snapshot_that_arrived_is_not_resent() {
    let (mut leader, term, last) = leader_owing_a_snapshot();
    let resend = Config::new(0, vec![0]).snapshot_resend_ticks;
    let has_it = flotilla_raft::AppendOutcome::Accepted { match_index: last };
    let sends = snapshot_sends(&mut leader, term, 10 * resend, Some(has_it));
    assert_eq!(sends.len(), 1, "snapshot sent at ticks {sends:?}");
    assert_eq!(leader.status().progress[0].state, ProgressState::Replicate);
}

/// `has_ready` sees a change of term alone (a refusal from a higher term: nothing to send) and
/// a change of role alone (a leader stepping down by check-quorum).
#[test]
fn has_ready_sees_a_new_term_or_role_alone() {
    let mut n = node(1, state(3, None, &[1]));
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    n.step(from(
        0,
        1,
        7,
        MessageBody::PreVoteResponse { granted: false },
    ))
    .expect("valid");
    assert!(n.has_ready(), "a new term to persist");
    let rd = n.ready();
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persist.hard_state.map(|h| h.term), Some(7));
    n.advance();

    let mut net = Net::new();
    let leader = net.elect_someone();
    drain(&mut net.nodes[leader]);
    for _ in 0..Config::new(0, vec![0]).election_ticks * 2 {
        net.nodes[leader].tick();
        if !net.nodes[leader].is_leader() {
            break;
        }
        // Its heartbeats go nowhere.
        let rd = net.nodes[leader].ready();
        net.nodes[leader].advance();
        drop(rd);
    }
    assert!(!net.nodes[leader].is_leader());
    assert!(net.nodes[leader].has_ready(), "the role change is news");
    let rd = net.nodes[leader].ready();
    assert_eq!(rd.soft_state.map(|s| s.role), Some(Role::Follower));
}

/// A snapshot the service took itself is persisted but not handed back to apply: the service
/// already has that state.
#[test]
fn a_snapshot_the_service_took_is_not_handed_back_to_apply() {
    let mut cfg = Config::new(0, vec![0]);
    cfg.pre_vote = false;
    let mut n = RawNode::new(cfg, DurableState::default());
    for _ in 0..200 {
        if n.is_leader() {
            break;
        }
        n.tick();
        drain(&mut n);
    }
    for k in 0..3u8 {
        n.propose(vec![k]).expect("leader");
    }
    drain(&mut n);
    n.compact(3, b"state@3".to_vec()).expect("applied");
    let rd = n.ready();
    assert_eq!(rd.persist.snapshot.as_ref().map(|s| s.index), Some(3));
    assert!(rd.snapshot_to_apply.is_none());
    assert_eq!(n.entry(2), None, "compacted away");
    n.advance();
    n.propose(b"four".to_vec()).expect("leader");
    assert_eq!(n.entry(4).map(|e| e.data.clone()), Some(b"four".to_vec()));
}

/// The error texts name what went wrong.
#[test]
fn errors_say_what_went_wrong() {
    let not_leader = flotilla_raft::NotLeader { hint: Some(2) };
    assert_eq!(not_leader.to_string(), "not the leader; try node 2");
    assert_eq!(
        flotilla_raft::NotLeader { hint: None }.to_string(),
        "not the leader; leader unknown"
    );
    let err = flotilla_raft::CompactError::NotApplied {
        index: 9,
        applied: 4,
    };
    assert!(err.to_string().contains("9") && err.to_string().contains("4"));
}

/// Requests are what labrpc counts as RPCs; responses travel back on them.
#[test]
fn requests_and_responses() {
    let requests = [
        MessageBody::RequestVote {
            transfer: false,
            last_log_index: 0,
            last_log_term: 0,
        },
        MessageBody::PreVote {
            last_log_index: 0,
            last_log_term: 0,
        },
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
        },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot::default(),
        },
    ];
    assert!(requests.iter().all(MessageBody::is_request));
    let responses = [
        MessageBody::RequestVoteResponse { granted: true },
        MessageBody::PreVoteResponse { granted: false },
        MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted {
            match_index: 0,
        }),
    ];
    assert!(!responses.iter().any(MessageBody::is_request));
}

/// Election timeouts are spread over `[election_ticks, 2 × election_ticks)` across seeds, so
/// servers rarely time out together (split votes).
#[test]
fn election_timeouts_spread_over_their_whole_range() {
    let base = Config::new(0, vec![0]).election_ticks;
    let mut seen = std::collections::BTreeMap::new();
    for seed in 0..600u64 {
        let mut cfg = Config::new(1, vec![0, 1, 2]);
        cfg.seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut n = RawNode::new(cfg, DurableState::default());
        let at = ticks_until_it_speaks(&mut n, 3 * base).expect("times out");
        assert!((base..2 * base).contains(&at), "timeout {at}");
        *seen.entry(at).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len() as u32, base, "every timeout in the range occurs");
    let most = seen.values().max().copied().unwrap_or(0);
    assert!(most < 60, "one timeout drawn {most} of 600 times");
}

/// Requests from a stale term are answered with this node's term, so their sender learns it
/// and steps down: a refused vote or pre-vote, and for a stale snapshot a rejection naming
/// where this node's log ends.
#[test]
fn stale_requests_are_answered_with_the_current_term() {
    let requests = [
        MessageBody::RequestVote {
            transfer: false,
            last_log_index: 9,
            last_log_term: 2,
        },
        MessageBody::PreVote {
            last_log_index: 9,
            last_log_term: 2,
        },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: 2,
                term: 2,
                data: vec![],
            },
        },
    ];
    for body in requests {
        let mut n = node(1, state(5, None, &[1, 1, 1]));
        n.step(from(0, 1, 2, body.clone())).expect("valid");
        let answers = drain(&mut n);
        assert_eq!(answers.len(), 1, "one answer to {body:?}");
        let answer = &answers[0];
        assert_eq!((answer.to, answer.term), (0, 5));
        match (&body, &answer.body) {
            (MessageBody::RequestVote { .. }, MessageBody::RequestVoteResponse { granted }) => {
                assert!(!granted)
            }
            (MessageBody::PreVote { .. }, MessageBody::PreVoteResponse { granted }) => {
                assert!(!granted)
            }
            (
                MessageBody::InstallSnapshot { .. },
                MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Rejected {
                    hint,
                    ..
                }),
            ) => assert_eq!(hint.index, 4, "the log ends at 3"),
            other => panic!("unexpected answer {other:?}"),
        }
        assert_eq!(n.status().hard.term, 5);
    }
}

/// A leader streaming to a follower in replicate state sends each new entry once: the next
/// append starts after what the previous one carried, before any answer arrives.
#[test]
fn a_replicating_follower_gets_each_new_entry_once() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    // Follower 1 answers the probe: it matches at 0, so it replicates from now on.
    leader
        .step(from(
            1,
            0,
            term,
            MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted {
                match_index: 0,
            }),
        ))
        .expect("valid");
    drain(&mut leader);
    let mut carried = Vec::new();
    for k in 0..3u8 {
        leader.propose(vec![k]).expect("leader");
        for m in drain(&mut leader) {
            if let (1, MessageBody::AppendEntries { entries, .. }) = (m.to, &m.body) {
                carried.extend(entries.iter().map(|e| e.index));
            }
        }
    }
    assert_eq!(carried, vec![1, 2, 3], "each entry sent once, in order");
}

/// While a snapshot is on its way, an answer about an older index (a stale ack) does not end
/// the wait, so the snapshot is not sent again before its resend interval.
#[test]
fn a_stale_answer_does_not_resend_a_pending_snapshot() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    for k in 0..5u8 {
        leader.propose(vec![k]).expect("leader");
    }
    let last = leader.status().last_index;
    let ack = |match_index| {
        MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted { match_index })
    };
    leader.step(from(2, 0, term, ack(last))).expect("valid");
    drain(&mut leader);
    leader.compact(last, b"all".to_vec()).expect("applied");
    drain(&mut leader);
    // A heartbeat finds follower 1 behind the snapshot: the snapshot goes out.
    let mut sent = 0;
    for _ in 0..Config::new(0, vec![0]).heartbeat_ticks {
        leader.tick();
        sent += drain(&mut leader)
            .iter()
            .filter(|m| m.to == 1 && matches!(m.body, MessageBody::InstallSnapshot { .. }))
            .count();
    }
    assert_eq!(sent, 1);
    leader.step(from(1, 0, term, ack(0))).expect("valid");
    let again = drain(&mut leader)
        .iter()
        .filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count();
    assert_eq!(
        again, 0,
        "the stale answer made the leader resend its snapshot"
    );
}

/// Pre-votes are not votes: a pre-candidate that holds pre-vote grants and then receives a late
/// real vote from its earlier candidacy in the same term must not add them up to a majority.
#[test]
fn pre_vote_grants_and_a_late_real_vote_do_not_make_a_leader() {
    let peers: Vec<u64> = (0..5).collect();
    // A candidacy in term 1 (pre-votes granted by 1 and 2) that gets no real votes in time.
    let mut n = RawNode::new(Config::new(0, peers), DurableState::default());
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    for peer in [1, 2] {
        n.step(from(
            peer,
            0,
            1,
            MessageBody::PreVoteResponse { granted: true },
        ))
        .expect("valid");
    }
    drain(&mut n);
    assert_eq!(
        (n.status().soft.role, n.status().hard.term),
        (Role::Candidate, 1)
    );
    // Its election times out: a new pre-candidacy, still in term 1, and one pre-vote grant.
    assert!(ticks_until_it_speaks(&mut n, 200).is_some());
    assert_eq!(n.status().soft.role, Role::PreCandidate);
    n.step(from(
        3,
        0,
        2,
        MessageBody::PreVoteResponse { granted: true },
    ))
    .expect("valid");
    // Node 1's real vote for term 1 arrives late.
    n.step(from(
        1,
        0,
        1,
        MessageBody::RequestVoteResponse { granted: true },
    ))
    .expect("valid");
    drain(&mut n);
    assert!(
        !n.is_leader(),
        "leader of term 1 on one pre-vote, its own vote and one late real vote"
    );
}

/// An acknowledgement that makes an entry committed is answered at once: the new commit index
/// goes to both followers (to the lagging one with the entry) and the entry to the service,
/// in the same `Ready`; no one waits for the next heartbeat.
#[test]
fn a_new_commit_index_is_applied_and_broadcast_at_once() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    let accepted = |match_index| {
        MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted { match_index })
    };
    leader.step(from(1, 0, term, accepted(0))).expect("valid");
    leader.propose(vec![7]).expect("leader");
    drain(&mut leader);
    assert!(!leader.has_ready());
    // Follower 1's ack makes entry 1 committed (leader and follower 1: a majority).
    leader.step(from(1, 0, term, accepted(1))).expect("valid");
    assert!(leader.has_ready());
    let rd = leader.ready();
    let commits: Vec<(u64, u64)> = rd
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendEntries { leader_commit, .. } => Some((m.to, leader_commit)),
            _ => None,
        })
        .collect();
    assert_eq!(commits, [(1, 1), (2, 1)], "{:?}", rd.messages);
    assert_eq!(
        rd.committed_entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        [1]
    );
    leader.advance();
}

/// Check-quorum's lease ends after exactly `election_ticks` ticks without hearing from the
/// leader: a vote request then is answered (one tick earlier it is ignored), so a group whose
/// leader died elects a new one without waiting a tick longer than the rule says.
#[test]
fn the_lease_ends_after_exactly_one_minimum_election_timeout() {
    let heartbeat = |n: &mut RawNode| {
        n.step(from(
            1,
            0,
            1,
            MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: Vec::new(),
                leader_commit: 0,
            },
        ))
        .expect("valid");
        drain(n);
    };
    let vote_request = from(
        2,
        0,
        2,
        MessageBody::RequestVote {
            transfer: false,
            last_log_index: 0,
            last_log_term: 0,
        },
    );
    // A seed whose election timeout is longer than the minimum, so the follower is still
    // waiting (not campaigning) when the lease ends.
    let mut tested = 0;
    for seed in 0..50u64 {
        let mut cfg = Config::new(0, vec![0, 1, 2]);
        cfg.pre_vote = false;
        cfg.seed = seed;
        let ticks = cfg.election_ticks;
        let mut n = RawNode::new(cfg.clone(), DurableState::default());
        heartbeat(&mut n);
        let mut spoke = false;
        for _ in 0..ticks {
            n.tick();
            spoke |= !drain(&mut n).is_empty();
        }
        if spoke {
            continue; // this seed's timeout is the minimum: it campaigned
        }
        // One tick before the end of the lease the request is ignored...
        let mut early = RawNode::new(cfg, DurableState::default());
        heartbeat(&mut early);
        for _ in 0..ticks - 1 {
            early.tick();
            drain(&mut early);
        }
        early.step(vote_request.clone()).expect("valid");
        assert!(
            drain(&mut early).is_empty(),
            "seed {seed}: ignored in the lease"
        );
        // ...and at its end it is granted.
        n.step(vote_request.clone()).expect("valid");
        let answers = drain(&mut n);
        assert!(
            answers
                .iter()
                .any(|m| m.to == 2 && m.body == MessageBody::RequestVoteResponse { granted: true }),
            "seed {seed}: granted after the lease: {answers:?}"
        );
        tested += 1;
    }
    assert!(
        tested > 10,
        "only {tested} seeds with a long enough timeout"
    );
}

/// A leader's `Status` shows each follower's match, next and state as they change; any other
/// role shows none.
#[test]
fn status_shows_each_followers_progress_on_the_leader() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    let mut leader = RawNode::new(cfg, DurableState::default());
    assert!(leader.status().progress.is_empty(), "a follower shows none");
    assert!(ticks_until_it_speaks(&mut leader, 200).is_some());
    assert!(
        leader.status().progress.is_empty(),
        "a candidate shows none"
    );
    let term = leader.status().hard.term;
    for peer in [1, 2] {
        leader
            .step(from(
                peer,
                0,
                term,
                MessageBody::RequestVoteResponse { granted: true },
            ))
            .expect("valid");
    }
    drain(&mut leader);
    // Follower 1's vote made it leader; follower 2's, arriving after, shows it active.
    let probe = |id, recent_active| FollowerProgress {
        id,
        matched: 0,
        next: 1,
        state: ProgressState::Probe,
        // The first probe carried no entries (the log is empty): nothing to wait for.
        paused: false,
        recent_active,
    };
    assert_eq!(leader.status().progress, [probe(1, false), probe(2, true)]);
    leader
        .step(from(
            1,
            0,
            term,
            MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted {
                match_index: 0,
            }),
        ))
        .expect("valid");
    leader.propose(vec![1]).expect("leader");
    drain(&mut leader);
    let status = leader.status();
    assert_eq!(
        status.progress[0],
        FollowerProgress {
            id: 1,
            matched: 0,
            next: 2,
            state: ProgressState::Replicate,
            paused: false,
            recent_active: true,
        }
    );
    assert_eq!(status.progress[1].state, ProgressState::Probe);
}

/// Three servers holding two uncommitted entries of term 1 elect a leader. Without the no-op
/// nothing commits until a client writes (a leader may not count replicas of an earlier
/// term's entries, §5.4.2); with `leader_noop` the leader's no-op commits, and the earlier
/// entries with it, with no proposal at all.
#[test]
fn a_leaders_noop_commits_earlier_terms_entries_without_a_client_write() {
    for noop in [false, true] {
        let mut net = Net {
            nodes: (0..3)
                .map(|i| {
                    let mut cfg = Config::new(i, vec![0, 1, 2]);
                    cfg.leader_noop = noop;
                    RawNode::new(cfg, state(1, None, &[1, 1]))
                })
                .collect(),
        };
        let l = net.elect_someone();
        for _ in 0..20 {
            net.tick(|_, _| false);
        }
        let status = net.nodes[l].status();
        assert!(status.hard.term > 1);
        if noop {
            assert_eq!(status.last_index, 3, "the no-op follows the old entries");
            assert_eq!(
                net.nodes[l].entry(3).map(|e| e.data.clone()),
                Some(Vec::new())
            );
            assert_eq!(
                net.nodes[l].entry(3).map(|e| e.term),
                Some(status.hard.term)
            );
            for n in &net.nodes {
                assert_eq!(n.status().commit, 3, "committed everywhere");
            }
        } else {
            assert_eq!((status.last_index, status.commit), (2, 0));
        }
    }
}

/// A single server's no-op commits at once.
#[test]
fn a_lone_leaders_noop_commits_at_once() {
    let mut cfg = Config::new(0, vec![0]);
    cfg.leader_noop = true;
    let mut n = RawNode::new(cfg, state(1, None, &[1]));
    for _ in 0..100 {
        n.tick();
        drain(&mut n);
        if n.is_leader() {
            break;
        }
    }
    assert!(n.is_leader());
    assert_eq!((n.status().last_index, n.status().commit), (2, 2));
}

#[test]
#[should_panic(expected = "empty data marks a leader's no-op")]
fn with_leader_noop_an_empty_proposal_is_refused() {
    let mut cfg = Config::new(0, vec![0]);
    cfg.leader_noop = true;
    let mut n = RawNode::new(cfg, DurableState::default());
    while !n.is_leader() {
        n.tick();
        drain(&mut n);
    }
    let _ = n.propose(Vec::new());
}

/// Committed entries are handed out at most `max_committed_bytes_per_ready` of payload per
/// `Ready` (at least one entry, even a larger one), in order, with `has_ready` true until
/// every committed entry is out.
#[test]
fn committed_entries_come_in_bounded_batches() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.max_committed_bytes_per_ready = 250;
    let mut n = RawNode::new(cfg, DurableState::default());
    let sizes = [100, 100, 100, 100, 400, 10, 10];
    let entries: Vec<Entry> = sizes
        .iter()
        .enumerate()
        .map(|(k, &len)| Entry {
            index: k as u64 + 1,
            term: 1,
            data: vec![k as u8; len],
        })
        .collect();
    n.step(from(
        1,
        0,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries,
            leader_commit: sizes.len() as u64,
        },
    ))
    .expect("valid");
    let mut batches = Vec::new();
    while n.has_ready() {
        let rd = n.ready();
        if !rd.committed_entries.is_empty() {
            batches.push(
                rd.committed_entries
                    .iter()
                    .map(|e| e.index)
                    .collect::<Vec<_>>(),
            );
        }
        n.advance();
    }
    assert_eq!(batches, vec![vec![1, 2], vec![3, 4], vec![5], vec![6, 7]]);
    assert_eq!(n.status().applied, 7);
}

/// A leader of a 3-group elected in term `term` with pre-vote off, probes answered: follower
/// 1 matches everything the leader has (it replicates), follower 2 is left probing.
fn leader_of_three(noop: bool) -> (RawNode, u64) {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.leader_noop = noop;
    let mut leader = RawNode::new(cfg, DurableState::default());
    assert!(ticks_until_it_speaks(&mut leader, 200).is_some());
    let term = leader.status().hard.term;
    leader
        .step(from(
            1,
            0,
            term,
            MessageBody::RequestVoteResponse { granted: true },
        ))
        .expect("valid");
    assert!(leader.is_leader());
    drain(&mut leader);
    (leader, term)
}

fn accepted(match_index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Accepted { match_index })
}

/// Takes every pending `Ready`, returning the messages and the confirmed reads.
fn drain_reads(node: &mut RawNode) -> (Vec<Message>, Vec<ReadState>) {
    let (mut messages, mut reads) = (Vec::new(), Vec::new());
    while node.has_ready() {
        let rd = node.ready();
        messages.extend(rd.messages);
        reads.extend(rd.read_states);
        node.advance();
    }
    (messages, reads)
}

fn read(index: u64, ctx: &[u8]) -> ReadState {
    ReadState {
        index,
        ctx: ctx.to_vec(),
    }
}

/// ReadIndex: a read is confirmed by a majority's answer to a round started after it was
/// asked, with the commit index of that moment; it appends nothing to the log; an answer to
/// an earlier round confirms only earlier reads.
#[test]
fn read_index_is_confirmed_by_a_quorum_and_appends_nothing() {
    let (mut leader, term) = leader_of_three(true);
    leader.step(from(1, 0, term, accepted(1))).expect("valid");
    drain(&mut leader);
    assert_eq!(leader.status().commit, 1, "the no-op is committed");
    leader.read_index(b"a".to_vec()).expect("leader");
    let (sent, reads) = drain_reads(&mut leader);
    assert!(reads.is_empty(), "not before a quorum answers");
    let probes: Vec<_> = sent
        .iter()
        .map(|m| (m.to, m.body.clone()))
        .filter(|(_, b)| matches!(b, MessageBody::ReadProbe { .. }))
        .collect();
    assert_eq!(
        probes,
        [
            (1, MessageBody::ReadProbe { seq: 1 }),
            (2, MessageBody::ReadProbe { seq: 1 })
        ]
    );
    leader.read_index(b"b".to_vec()).expect("leader");
    drain(&mut leader);
    // An answer to round 1 confirms "a" (leader + 1 = a majority), not "b" (round 2).
    leader
        .step(from(2, 0, term, MessageBody::ReadProbeResponse { seq: 1 }))
        .expect("valid");
    assert_eq!(drain_reads(&mut leader).1, [read(1, b"a")]);
    leader
        .step(from(1, 0, term, MessageBody::ReadProbeResponse { seq: 2 }))
        .expect("valid");
    assert_eq!(drain_reads(&mut leader).1, [read(1, b"b")]);
    assert_eq!(leader.status().last_index, 1, "reads append nothing");
    // An answer to a round never started is refused.
    assert!(leader
        .step(from(1, 0, term, MessageBody::ReadProbeResponse { seq: 9 }))
        .is_err());
}

/// Before a new leader has committed an entry of its term, its commit index may lag the
/// group's: a read waits for that first commit (without a no-op, a client's write).
#[test]
fn a_read_waits_for_the_leaders_first_commit_in_its_term() {
    let (mut leader, term) = leader_of_three(false);
    leader.read_index(b"r".to_vec()).expect("leader");
    let (sent, reads) = drain_reads(&mut leader);
    assert!(reads.is_empty());
    assert!(!sent
        .iter()
        .any(|m| matches!(m.body, MessageBody::ReadProbe { .. })));
    leader.step(from(1, 0, term, accepted(0))).expect("valid");
    leader.propose(vec![1]).expect("leader");
    drain(&mut leader);
    leader.step(from(1, 0, term, accepted(1))).expect("valid");
    let (sent, reads) = drain_reads(&mut leader);
    assert!(reads.is_empty());
    assert!(sent
        .iter()
        .any(|m| m.body == MessageBody::ReadProbe { seq: 1 }));
    leader
        .step(from(1, 0, term, MessageBody::ReadProbeResponse { seq: 1 }))
        .expect("valid");
    assert_eq!(drain_reads(&mut leader).1, [read(1, b"r")]);
}

/// A leader that learns of a newer term from a read round steps down and confirms nothing;
/// a follower answers a round with its seq and takes it as word from its leader; a lone
/// server confirms at once; a follower refuses to read.
#[test]
fn read_rounds_step_down_answer_and_refuse() {
    let (mut leader, term) = leader_of_three(true);
    leader.step(from(1, 0, term, accepted(1))).expect("valid");
    drain(&mut leader);
    leader.read_index(b"x".to_vec()).expect("leader");
    drain(&mut leader);
    leader
        .step(from(
            2,
            0,
            term + 1,
            MessageBody::ReadProbeResponse { seq: 1 },
        ))
        .expect("valid");
    assert!(!leader.is_leader());
    assert!(drain_reads(&mut leader).1.is_empty());
    assert!(leader.read_index(b"y".to_vec()).is_err());
    // Elected again later, it never confirms the read of its old term: that read's index may
    // miss writes committed in between.
    assert!(ticks_until_it_speaks(&mut leader, 200).is_some());
    let new_term = leader.status().hard.term;
    leader
        .step(from(
            1,
            0,
            new_term,
            MessageBody::RequestVoteResponse { granted: true },
        ))
        .expect("valid");
    assert!(leader.is_leader());
    drain(&mut leader);
    leader
        .step(from(1, 0, new_term, accepted(2)))
        .expect("valid");
    drain(&mut leader);
    leader.read_index(b"new".to_vec()).expect("leader");
    drain(&mut leader);
    leader
        .step(from(
            1,
            0,
            new_term,
            MessageBody::ReadProbeResponse { seq: 2 },
        ))
        .expect("valid");
    assert_eq!(drain_reads(&mut leader).1, [read(2, b"new")]);

    let mut follower = node(1, DurableState::default());
    follower
        .step(from(0, 1, 3, MessageBody::ReadProbe { seq: 7 }))
        .expect("valid");
    let answers = drain(&mut follower);
    assert_eq!(
        answers
            .iter()
            .map(|m| (m.to, m.term, m.body.clone()))
            .collect::<Vec<_>>(),
        [(0, 3, MessageBody::ReadProbeResponse { seq: 7 })]
    );
    assert_eq!(follower.status().soft.leader, Some(0));

    let mut cfg = Config::new(0, vec![0]);
    cfg.leader_noop = true;
    let mut lone = RawNode::new(cfg, DurableState::default());
    while !lone.is_leader() {
        lone.tick();
        drain(&mut lone);
    }
    lone.read_index(b"z".to_vec()).expect("leader");
    assert_eq!(drain_reads(&mut lone).1, [read(1, b"z")]);
}

/// Leadership transfer: the leader brings a lagging target up to date, tells it to campaign,
/// and the target wins the next term at once — past check-quorum's leases, which would make
/// the other servers ignore an ordinary candidate while their leader is alive.
#[test]
fn leadership_moves_to_the_target_within_a_few_ticks() {
    let mut net = Net::new();
    let old = net.elect_someone();
    let target = (old + 1) % 3;
    let term = net.nodes[old].status().hard.term;
    // The target misses five entries.
    for k in 0..5u8 {
        net.nodes[old].propose(vec![k]).expect("leader");
    }
    net.tick(|a, b| a == target as u64 || b == target as u64);
    let last = net.nodes[old].status().last_index;
    assert!(net.nodes[target].status().last_index < last);
    net.nodes[old]
        .transfer_leader(target as u64)
        .expect("leader");
    for _ in 0..5 {
        net.tick(|_, _| false);
    }
    assert_eq!(net.leader(), Some(target), "the target leads");
    let status = net.nodes[target].status();
    assert_eq!(status.hard.term, term + 1, "in the very next term");
    assert!(
        status.last_index >= last,
        "with every entry of the old leader"
    );
    assert!(!net.nodes[old].is_leader());
}

/// While a transfer is pending proposals are refused, naming the target; a transfer that
/// cannot complete is abandoned after an election timeout and the leader leads on.
#[test]
fn a_stuck_transfer_refuses_proposals_then_is_abandoned() {
    let mut net = Net::new();
    let l = net.elect_someone();
    let target = (l + 1) % 3;
    let cut = |a: u64, b: u64| a == target as u64 || b == target as u64;
    net.nodes[l].transfer_leader(target as u64).expect("leader");
    assert_eq!(
        net.nodes[l].propose(vec![1]),
        Err(flotilla_raft::NotLeader {
            hint: Some(target as u64)
        })
    );
    let election_ticks = Config::new(0, vec![0]).election_ticks;
    for _ in 0..election_ticks {
        net.tick(cut);
    }
    assert_eq!(net.leader(), Some(l), "still the leader");
    assert!(net.nodes[l].propose(vec![2]).is_ok(), "transfer abandoned");
}

#[test]
fn transfer_refusals() {
    let mut net = Net::new();
    let l = net.elect_someone();
    let follower = (l + 1) % 3;
    assert_eq!(
        net.nodes[follower].transfer_leader(l as u64),
        Err(TransferError::NotLeader(flotilla_raft::NotLeader {
            hint: Some(l as u64)
        }))
    );
    assert_eq!(
        net.nodes[l].transfer_leader(9),
        Err(TransferError::UnknownPeer(9))
    );
    assert_eq!(net.nodes[l].transfer_leader(l as u64), Ok(()));
    // Only a leader sends TimeoutNow: one sent to the leader of its own term is refused.
    let term = net.nodes[l].status().hard.term;
    assert!(net.nodes[l]
        .step(from(
            follower as u64,
            l as u64,
            term,
            MessageBody::TimeoutNow
        ))
        .is_err());
    assert!(
        net.nodes[l].propose(vec![1]).is_ok(),
        "to itself: nothing to do"
    );
}

/// Entries carried by the messages to `to`, counting each `AppendEntries` with entries.
fn appends_with_entries(out: &[Message], to: u64) -> usize {
    out.iter()
        .filter(|m| {
            m.to == to
                && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
        })
        .count()
}

fn accepted_from(from_peer: u64, term: u64, match_index: u64) -> Message {
    from(from_peer, 0, term, accepted(match_index))
}

/// A follower that does not answer is sent one batch of entries, then heartbeats without
/// entries: it is probed once per round trip, not sent a full batch every heartbeat. Its
/// answer to a heartbeat does not bring the batch again either, unless it shows the batch
/// was lost.
#[test]
fn a_lagging_follower_is_probed_not_flooded() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let heartbeat = cfg.heartbeat_ticks;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    for k in 0..100u8 {
        leader.propose(vec![k]).expect("leader");
    }
    let mut out = drain(&mut leader);
    for _ in 0..10 * heartbeat {
        leader.tick();
        out.extend(drain(&mut leader));
    }
    assert_eq!(
        appends_with_entries(&out, 1),
        1,
        "one batch, then empty probes"
    );
    let heartbeats = out
        .iter()
        .filter(|m| m.to == 1 && matches!(m.body, MessageBody::AppendEntries { .. }))
        .count();
    assert!(heartbeats >= 10, "still heartbeats: {heartbeats}");
    // It answers a heartbeat: it has what precedes the batch, which counts as in flight and
    // is not sent again (it may only be slow)...
    leader.step(accepted_from(1, term, 0)).expect("valid");
    assert_eq!(
        appends_with_entries(&drain(&mut leader), 1),
        0,
        "the unanswered batch sent again"
    );
    let progress = leader.status().progress[0];
    assert_eq!(
        (progress.state, progress.next),
        (ProgressState::Replicate, 101)
    );
    // ...until the next heartbeat, asking at its end, is rejected: it was lost, and the
    // follower gets it again, once.
    let mut out = Vec::new();
    for _ in 0..heartbeat {
        leader.tick();
        out.extend(drain(&mut leader));
    }
    let asks_at_100 = |m: &Message| {
        m.to == 1
            && matches!(
                m.body,
                MessageBody::AppendEntries {
                    prev_log_index: 100,
                    ..
                }
            )
    };
    assert!(out.iter().any(asks_at_100), "{out:?}");
    assert_eq!(appends_with_entries(&out, 1), 0);
    leader.step(rejected_at(1, term, 100, 1)).expect("valid");
    assert_eq!(appends_with_entries(&drain(&mut leader), 1), 1);
}

/// In `Replicate`, at most `max_inflight_messages` appends with entries are unanswered; an
/// acknowledgement frees those it covers, and heartbeats meanwhile carry no entries.
#[test]
fn at_most_max_inflight_appends_are_unanswered() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg.max_inflight_messages = 3;
    cfg.max_entries_per_message = 1;
    let heartbeat = cfg.heartbeat_ticks;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    leader.step(accepted_from(1, term, 0)).expect("valid");
    drain(&mut leader);
    let mut out = Vec::new();
    for k in 0..10u8 {
        leader.propose(vec![k]).expect("leader");
        out.extend(drain(&mut leader));
    }
    for _ in 0..3 * heartbeat {
        leader.tick();
        out.extend(drain(&mut leader));
    }
    assert_eq!(
        appends_with_entries(&out, 1),
        3,
        "a full window, then nothing new"
    );
    // Acknowledging the first two frees two slots.
    leader.step(accepted_from(1, term, 2)).expect("valid");
    let out = drain(&mut leader);
    assert_eq!(appends_with_entries(&out, 1), 2);
    assert_eq!(leader.status().progress[0].state, ProgressState::Replicate);
}

/// A leader with `lease_reads` whose quorum answered recently confirms a read at once,
/// without a `ReadProbe` round; after half an election timeout of silence, after giving its
/// leadership away, or without the flag, it asks the quorum again.
#[test]
fn lease_reads_are_answered_at_once_only_while_the_lease_holds() {
    let lease_leader = |lease_reads: bool| {
        let mut cfg = Config::new(0, vec![0, 1, 2]);
        cfg.pre_vote = false;
        cfg.leader_noop = true;
        cfg.lease_reads = lease_reads;
        let mut leader = RawNode::new(cfg, DurableState::default());
        let term = win_election(&mut leader);
        leader.step(accepted_from(1, term, 1)).expect("valid"); // the no-op commits
        drain(&mut leader);
        (leader, term)
    };
    let probes = |out: &[Message]| {
        out.iter()
            .filter(|m| matches!(m.body, MessageBody::ReadProbe { .. }))
            .count()
    };
    let (mut leader, term) = lease_leader(true);
    leader.read_index(b"a".to_vec()).expect("leader");
    let (out, reads) = drain_reads(&mut leader);
    assert_eq!((probes(&out), reads), (0, vec![read(1, b"a")]));

    // Silence for half an election timeout: the lease has run out.
    let half = Config::new(0, vec![0]).election_ticks / 2;
    for _ in 0..half {
        leader.tick();
    }
    drain(&mut leader);
    leader.read_index(b"b".to_vec()).expect("leader");
    let (out, reads) = drain_reads(&mut leader);
    assert!(probes(&out) > 0 && reads.is_empty(), "asked the quorum");

    // Heard from again: the lease is back, until a transfer gives it up.
    leader.step(accepted_from(2, term, 1)).expect("valid");
    drain(&mut leader);
    leader.read_index(b"c".to_vec()).expect("leader");
    assert_eq!(drain_reads(&mut leader).1, vec![read(1, b"c")]);
    leader.transfer_leader(2).expect("a member");
    drain(&mut leader);
    leader.step(accepted_from(2, term, 1)).expect("valid");
    drain(&mut leader);
    assert!(
        leader.read_index(b"d".to_vec()).is_err() || {
            let (out, reads) = drain_reads(&mut leader);
            probes(&out) > 0 && reads.is_empty()
        }
    );

    // Without the flag: always a round.
    let (mut leader, _) = lease_leader(false);
    leader.read_index(b"e".to_vec()).expect("leader");
    let (out, reads) = drain_reads(&mut leader);
    assert!(probes(&out) > 0 && reads.is_empty());
}

/// A ReadProbe from a stale term is answered in the newer term with round 0, which confirms
/// nothing: the sender, should it have restarted and become leader of that newer term (its
/// rounds counted from 1 again), must not take it for an answer to one of its new rounds
/// (found by the sweep at seed 916 once leaders served lease reads).
#[test]
fn a_stale_read_probe_is_answered_with_a_round_that_confirms_nothing() {
    let mut follower = node(2, state(8, None, &[]));
    follower
        .step(from(1, 2, 7, MessageBody::ReadProbe { seq: 2 }))
        .expect("valid");
    let answers: Vec<_> = drain(&mut follower)
        .into_iter()
        .map(|m| (m.to, m.term, m.body))
        .collect();
    assert_eq!(answers, [(1, 8, MessageBody::ReadProbeResponse { seq: 0 })]);

    // A leader with a round pending takes round 0 as no confirmation.
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.leader_noop = true;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    leader.step(accepted_from(1, term, 1)).expect("valid");
    drain(&mut leader);
    leader.read_index(b"r".to_vec()).expect("leader");
    drain(&mut leader);
    leader
        .step(from(2, 0, term, MessageBody::ReadProbeResponse { seq: 0 }))
        .expect("valid");
    assert!(
        drain_reads(&mut leader).1.is_empty(),
        "round 0 confirms nothing"
    );
    leader
        .step(from(2, 0, term, MessageBody::ReadProbeResponse { seq: 1 }))
        .expect("valid");
    assert_eq!(drain_reads(&mut leader).1, [read(1, b"r")]);
}

// ---- lease reads: the voters' side ---------------------------------------------------------

/// Three servers with lease reads, each with the durable state its `Ready`s persisted, so
/// one can crash and restart from it.
struct LeaseGroup {
    nodes: Vec<RawNode>,
    disks: Vec<DurableState>,
    /// Reads confirmed, per server.
    reads: Vec<Vec<ReadState>>,
}

fn lease_reads_config(id: u64) -> Config {
    let mut cfg = Config::new(id, vec![0, 1, 2]);
    cfg.lease_reads = true;
    cfg.leader_noop = true;
    cfg.seed = 7;
    cfg
}

impl LeaseGroup {
    fn new() -> Self {
        LeaseGroup {
            nodes: (0..3)
                .map(|i| RawNode::new(lease_reads_config(i), DurableState::default()))
                .collect(),
            disks: vec![DurableState::default(); 3],
            reads: vec![Vec::new(); 3],
        }
    }

    fn ready(&mut self, i: usize) -> Vec<Message> {
        let mut out = Vec::new();
        while self.nodes[i].has_ready() {
            let rd = self.nodes[i].ready();
            self.disks[i].apply(&rd.persist);
            out.extend(rd.messages);
            self.reads[i].extend(rd.read_states);
            self.nodes[i].advance();
        }
        out
    }

    /// Delivers everything sent until the network is quiet, dropping what `cut` says.
    fn settle(&mut self, cut: &dyn Fn(u64, u64) -> bool) {
        loop {
            let sent: Vec<Message> = (0..3).flat_map(|i| self.ready(i)).collect();
            if sent.is_empty() {
                return;
            }
            for m in sent {
                if !cut(m.from, m.to) {
                    let to = m.to as usize;
                    self.nodes[to].step(m).expect("a valid message");
                }
            }
        }
    }

    /// One tick for everyone (the servers' clocks run at the same rate), then delivery.
    fn tick(&mut self, cut: &dyn Fn(u64, u64) -> bool) {
        for n in self.nodes.iter_mut() {
            n.tick();
        }
        self.settle(cut);
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.is_leader())
    }
}

/// The lease's premise is that every server that answered the leader ignores other
/// candidates for an election timeout. A server that crashes and restarts at once has
/// forgotten it answered: were it to vote at once, a server cut off from the leader could
/// win with it, commit a write, and the old leader — its lease still valid on that server's
/// answer — would serve a read that misses the write. With lease reads, a restarted server
/// waits an election timeout before it votes, so this cannot happen.
#[test]
fn a_restarted_voter_does_not_let_a_lease_read_miss_a_write() {
    let mut g = LeaseGroup::new();
    let open = |_: u64, _: u64| false;
    for _ in 0..300 {
        g.tick(&open);
        if g.leader().is_some() {
            break;
        }
    }
    let leader = g.leader().expect("a leader") as u64;
    for _ in 0..5 {
        g.tick(&open);
    }
    let (voter, lonely) = ((leader + 1) % 3, (leader + 2) % 3);
    // `lonely` loses its links to the leader and, after an election timeout, campaigns;
    // `voter` hears the leader and ignores it. The moment it campaigns again, `voter`
    // crashes and restarts, and the leader's messages to it are lost from then on.
    let apart = move |a: u64, b: u64| (a == leader && b == lonely) || (a == lonely && b == leader);
    let mut restarted = false;
    let mut written = None;
    for _ in 0..400 {
        for n in g.nodes.iter_mut() {
            n.tick();
        }
        let campaigns = g.ready(lonely as usize).into_iter().collect::<Vec<_>>();
        let asks = campaigns.iter().any(|m| {
            matches!(
                m.body,
                MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }
            )
        });
        if asks && !restarted && g.nodes[leader as usize].status().commit > 0 {
            let v = voter as usize;
            g.nodes[v] = RawNode::new(lease_reads_config(voter), g.disks[v].clone());
            restarted = true;
        }
        let cut = move |a: u64, b: u64| {
            apart(a, b)
                || (restarted && ((a == leader && b == voter) || (a == voter && b == leader)))
        };
        for m in campaigns {
            if !cut(m.from, m.to) {
                let to = m.to as usize;
                g.nodes[to].step(m).expect("a valid message");
            }
        }
        g.settle(&cut);
        if g.nodes[lonely as usize].is_leader() && written.is_none() {
            let (index, _) = g.nodes[lonely as usize]
                .propose(b"w".to_vec())
                .expect("leader");
            g.settle(&cut);
            if g.nodes[lonely as usize].status().commit >= index {
                written = Some(index);
            }
        }
        if let Some(index) = written {
            // Asked after the write committed: a linearizable read must see it.
            if g.nodes[leader as usize].read_index(b"r".to_vec()).is_ok() {
                g.settle(&cut);
                for r in &g.reads[leader as usize] {
                    assert!(
                        r.index >= index,
                        "stale read: the old leader answered at {} after {index} committed",
                        r.index
                    );
                }
            }
            return;
        }
        if restarted && !g.nodes[leader as usize].is_leader() {
            // What the rule leads to: the restarted voter ignored the candidate, and the old
            // leader, cut off from a majority, stepped down before anyone else could win.
            return;
        }
    }
    assert!(restarted, "the schedule never restarted the voter");
}

/// The voters' side of the lease, rule by rule: with lease reads, a server ignores or refuses
/// vote requests (other than a transfer's) for `election_ticks` after it last heard from a
/// leader — also after a restart, and after a stale answer carrying a newer term made it
/// forget its leader (the candidate of that term then asks in the server's own term).
/// Without lease reads a restarted server votes at once.
#[test]
fn with_lease_reads_a_voter_honours_the_lease_after_a_restart_and_a_newer_term() {
    let config = |lease: bool| {
        let mut cfg = Config::new(1, vec![0, 1, 2]);
        cfg.lease_reads = lease;
        cfg
    };
    let election_ticks = config(true).election_ticks;
    let vote_request = |term, transfer| {
        from(
            2,
            1,
            term,
            MessageBody::RequestVote {
                last_log_index: 1,
                last_log_term: 1,
                transfer,
            },
        )
    };
    let vote = |n: &mut RawNode, m: Message| {
        n.step(m).expect("valid");
        drain(n).into_iter().find_map(|m| match m.body {
            MessageBody::RequestVoteResponse { granted } => Some(granted),
            _ => None,
        })
    };
    let mut safe = RawNode::new(config(false), state(3, None, &[1]));
    assert_eq!(vote(&mut safe, vote_request(4, false)), Some(true));
    let mut leased = RawNode::new(config(true), state(3, None, &[1]));
    for _ in 0..election_ticks - 1 {
        leased.tick();
        drain(&mut leased);
    }
    assert_eq!(
        vote(&mut leased, vote_request(4, false)),
        None,
        "voted within an election timeout of a restart"
    );
    leased.tick();
    drain(&mut leased);
    assert_eq!(vote(&mut leased, vote_request(4, false)), Some(true));

    let mut n = RawNode::new(config(true), state(3, None, &[1]));
    for _ in 0..election_ticks {
        n.tick();
        drain(&mut n);
    }
    let heartbeat = MessageBody::AppendEntries {
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![],
        leader_commit: 1,
    };
    n.step(from(0, 1, 3, heartbeat)).expect("valid");
    drain(&mut n);
    n.step(from(
        2,
        1,
        4,
        MessageBody::PreVoteResponse { granted: false },
    ))
    .expect("valid");
    drain(&mut n);
    assert_eq!((n.status().hard.term, n.status().soft.leader), (4, None));
    assert_eq!(
        vote(&mut n, vote_request(4, false)),
        Some(false),
        "voted in its own term within the lease"
    );
    assert_eq!(
        vote(&mut n, vote_request(4, true)),
        Some(true),
        "a transfer's vote refused"
    );
}

fn rejected_at(from_peer: u64, term: u64, prev_log_index: u64, hint_index: u64) -> Message {
    from(
        from_peer,
        0,
        term,
        MessageBody::AppendEntriesResponse(flotilla_raft::AppendOutcome::Rejected {
            prev_log_index,
            hint: flotilla_raft::ConflictHint {
                index: hint_index,
                term: None,
            },
        }),
    )
}

/// When one of several appends in flight is lost, the follower rejects every later one. The
/// first rejection sends one probe; the others ask at indexes the leader has since backed
/// away from and say nothing new, so they send nothing (with a full window of 256, each
/// would otherwise send another full-size probe).
#[test]
fn rejections_of_a_lost_pipeline_send_one_probe() {
    let mut cfg = Config::new(0, vec![0, 1, 2]);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg.max_entries_per_message = 1;
    let mut leader = RawNode::new(cfg, DurableState::default());
    let term = win_election(&mut leader);
    leader.step(accepted_from(1, term, 0)).expect("valid");
    drain(&mut leader);
    for k in 1..=4u8 {
        leader.propose(vec![k]).expect("leader");
        drain(&mut leader);
    }
    // The append of entry 1 was lost: those at 1, 2 and 3 are rejected (its log is empty).
    let mut out = Vec::new();
    for prev_log_index in 1..=3 {
        leader
            .step(rejected_at(1, term, prev_log_index, 1))
            .expect("valid");
        out.extend(drain(&mut leader));
    }
    assert_eq!(
        appends_with_entries(&out, 1),
        1,
        "one probe, from the start"
    );
}
