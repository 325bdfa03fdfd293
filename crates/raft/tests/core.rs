//! Unit scenarios for the Raft core, driven by hand: nodes exchange messages through a
//! queue that the test controls, with no simulator in between.

use flotilla_raft::{
    Config, DurableState, Entry, HardState, Message, MessageBody, RawNode, Snapshot,
};

/// A few nodes and the messages in flight between them.
struct Group {
    nodes: Vec<RawNode>,
    in_flight: Vec<Message>,
    applied: Vec<Vec<(u64, Vec<u8>)>>,
}

impl Group {
    fn new(states: Vec<DurableState>) -> Self {
        let n = states.len() as u64;
        let nodes = states
            .into_iter()
            .enumerate()
            .map(|(i, s)| RawNode::new(Config::new(i as u64, (0..n).collect()), s))
            .collect::<Vec<_>>();
        let len = nodes.len();
        Group {
            nodes,
            in_flight: Vec::new(),
            applied: vec![Vec::new(); len],
        }
    }

    /// Collects every node's Ready (persisting is implicit: we just check its order rules).
    fn flush(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while node.has_ready() {
                let rd = node.ready();
                for e in rd.committed_entries {
                    self.applied[i].push((e.index, e.data));
                }
                self.in_flight.extend(rd.messages);
                node.advance();
            }
        }
    }

    /// Delivers messages until none is left, dropping those `drop` says to.
    fn deliver(&mut self, drop: impl Fn(&Message) -> bool) {
        self.flush();
        while !self.in_flight.is_empty() {
            for m in std::mem::take(&mut self.in_flight) {
                if !drop(&m) {
                    let to = m.to as usize;
                    self.nodes[to].step(m).expect("a valid message");
                }
            }
            self.flush();
        }
    }

    fn elect(&mut self, id: usize, drop: impl Fn(&Message) -> bool + Copy) {
        for _ in 0..200 {
            if self.nodes[id].is_leader() {
                return;
            }
            self.nodes[id].tick();
            self.deliver(drop);
        }
        panic!("node {id} did not become leader");
    }
}

fn entries(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, &term)| Entry {
            term,
            index: k as u64 + 1,
            data: vec![k as u8 + 1],
        })
        .collect()
}

fn state(term: u64, terms: &[u64]) -> DurableState {
    DurableState {
        hard_state: HardState { term, vote: None },
        snapshot: Snapshot::default(),
        entries: entries(terms),
    }
}

#[test]
fn single_node_commits_alone() {
    let mut g = Group::new(vec![DurableState::default()]);
    g.elect(0, |_| false);
    let (index, term) = g.nodes[0].propose(b"x".to_vec()).unwrap();
    assert_eq!((index, term), (1, 1));
    g.flush();
    assert_eq!(g.applied[0], vec![(1, b"x".to_vec())]);
}

#[test]
fn follower_rejects_proposals_with_a_hint() {
    let mut g = Group::new(vec![
        DurableState::default(),
        DurableState::default(),
        DurableState::default(),
    ]);
    g.elect(0, |_| false);
    let err = g.nodes[1].propose(b"x".to_vec()).unwrap_err();
    assert_eq!(err.hint, Some(0));
}

/// Figure 8 of the Raft paper: a leader must not commit an entry from an earlier term by
/// counting replicas; it commits only once an entry of its own term is on a majority.
#[test]
fn earlier_term_entry_is_not_committed_by_counting() {
    // Node 0 has (1,1),(2,2) and is at term 3; node 1 has only (1,1); node 2 has (1,1),(2,3)?
    // Keep it to the essential: node 0 will lead term 4 and replicate its term-2 entry.
    let mut g = Group::new(vec![state(3, &[1, 2]), state(3, &[1]), state(3, &[1])]);
    // Node 2 is cut off; node 0 is elected by node 1 and brings it index 2 (term 2).
    let cut = |m: &Message| m.to == 2 || m.from == 2;
    g.elect(0, cut);
    g.deliver(cut);
    let s0 = g.nodes[0].status();
    assert_eq!(
        g.nodes[1].status().last_index,
        2,
        "follower got the old entry"
    );
    assert_eq!(
        s0.commit, 0,
        "term-2 entry on a majority must not be committed in term {}",
        s0.hard.term
    );
    // A current-term entry on the majority commits it and everything before it.
    let (index, _) = g.nodes[0].propose(b"new".to_vec()).unwrap();
    g.deliver(cut);
    assert_eq!(g.nodes[0].status().commit, index);
    assert_eq!(
        g.applied[0].iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

/// A vote is in the same Ready as the hard state that records it, so a driver that persists
/// before sending can never vote twice in a term across a crash.
#[test]
fn vote_is_persisted_in_the_ready_that_sends_it() {
    let mut voter = RawNode::new(Config::new(1, vec![0, 1, 2]), DurableState::default());
    voter
        .step(Message {
            from: 0,
            to: 1,
            term: 5,
            body: MessageBody::RequestVote {
                transfer: false,
                last_log_index: 0,
                last_log_term: 0,
            },
        })
        .expect("a valid message");
    let rd = voter.ready();
    assert_eq!(
        rd.persist.hard_state,
        Some(HardState {
            term: 5,
            vote: Some(0)
        })
    );
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: true })));
}

/// The leader backs a follower up a whole term per rejection, not an entry at a time.
#[test]
fn conflicting_follower_is_repaired_in_few_round_trips() {
    // Leader-to-be: 50 entries of term 1 then 50 of term 3. Follower: 50 of term 1 then 50 of term 2.
    let leader_terms: Vec<u64> = (0..100).map(|k| if k < 50 { 1 } else { 3 }).collect();
    let follower_terms: Vec<u64> = (0..100).map(|k| if k < 50 { 1 } else { 2 }).collect();
    let mut g = Group::new(vec![
        state(3, &leader_terms),
        state(3, &follower_terms),
        state(3, &follower_terms[..50]),
    ]);
    g.elect(0, |_| false);
    let mut appends = 0;
    g.flush();
    while !g.in_flight.is_empty() {
        for m in std::mem::take(&mut g.in_flight) {
            if m.to == 1 && matches!(m.body, MessageBody::AppendEntries { .. }) {
                appends += 1;
            }
            let to = m.to as usize;
            g.nodes[to].step(m).expect("a valid message");
        }
        g.flush();
    }
    let f = g.nodes[1].status();
    assert_eq!((f.last_index, f.last_term), (100, 3));
    assert!(appends <= 4, "{appends} appends to repair the follower");
}

#[test]
fn install_snapshot_replaces_a_lagging_log() {
    let mut g = Group::new(vec![
        DurableState::default(),
        DurableState::default(),
        DurableState::default(),
    ]);
    g.elect(0, |_| false);
    let cut2 = |m: &Message| m.to == 2 || m.from == 2;
    for k in 0..20u8 {
        g.nodes[0].propose(vec![k]).unwrap();
    }
    g.deliver(cut2);
    g.nodes[0].compact(15, b"state@15".to_vec()).unwrap();
    let rd = g.nodes[0].ready();
    assert_eq!(rd.persist.snapshot.as_ref().map(|s| s.index), Some(15));
    g.nodes[0].advance();
    // Reconnect node 2: it needs entries the leader compacted away.
    for _ in 0..10 {
        g.nodes[0].tick();
    }
    let mut installed = None;
    g.flush();
    while !g.in_flight.is_empty() {
        for m in std::mem::take(&mut g.in_flight) {
            let to = m.to as usize;
            g.nodes[to].step(m).expect("a valid message");
        }
        for (i, node) in g.nodes.iter_mut().enumerate() {
            while node.has_ready() {
                let rd = node.ready();
                if i == 2 {
                    if let Some(s) = rd.snapshot_to_apply {
                        installed = Some(s.index);
                        assert_eq!(
                            rd.persist.snapshot.as_ref().map(|p| p.index),
                            Some(s.index),
                            "persisted with it"
                        );
                    }
                    if let Some(first) = rd.committed_entries.first() {
                        assert_eq!(first.index, installed.expect("snapshot first") + 1);
                    }
                }
                g.in_flight.extend(rd.messages);
                node.advance();
            }
        }
    }
    assert_eq!(installed, Some(15));
    assert_eq!(g.nodes[2].status().last_index, 20);
}

/// Pre-vote: a server cut off from the group keeps timing out but never raises its term, so
/// when it comes back the leader is undisturbed.
#[test]
fn a_partitioned_server_does_not_inflate_the_term() {
    let mut g = Group::new(vec![
        DurableState::default(),
        DurableState::default(),
        DurableState::default(),
    ]);
    let cut2 = |m: &Message| m.to == 2 || m.from == 2;
    g.elect(0, cut2);
    let term = g.nodes[0].status().hard.term;
    let isolated_term = g.nodes[2].status().hard.term;
    for _ in 0..500 {
        for node in g.nodes.iter_mut() {
            node.tick();
        }
        g.deliver(cut2);
    }
    assert_eq!(
        g.nodes[2].status().hard.term,
        isolated_term,
        "the isolated server's term did not move"
    );
    assert!(g.nodes[0].is_leader());
    // Heal: the old leader stays leader in the same term.
    for _ in 0..50 {
        for node in g.nodes.iter_mut() {
            node.tick();
        }
        g.deliver(|_| false);
    }
    assert!(g.nodes[0].is_leader(), "the leader was not unseated");
    assert_eq!(g.nodes[0].status().hard.term, term);
}

/// Without pre-vote the same partition does raise the isolated server's term: the test above
/// measures something.
#[test]
fn without_pre_vote_the_isolated_server_campaigns_in_new_terms() {
    let n = 3u64;
    let mut nodes: Vec<RawNode> = (0..n)
        .map(|i| {
            let mut cfg = Config::new(i, (0..n).collect());
            cfg.pre_vote = false;
            RawNode::new(cfg, DurableState::default())
        })
        .collect();
    for _ in 0..500 {
        nodes[2].tick();
        if nodes[2].has_ready() {
            nodes[2].ready(); // messages go nowhere: node 2 is cut off
            nodes[2].advance();
        }
    }
    assert!(nodes[2].status().hard.term > 3);
}

/// A follower whose disk lost entries it had acknowledged (a damaged tail cut at restart)
/// rejects every append below the leader's record of its match, which the leader takes for
/// stale answers: it is stuck until the leader hears that it restarted
/// (`RawNode::peer_restarted`), forgets its match, and probes it again.
#[test]
fn a_restarted_follower_that_lost_acknowledged_entries_catches_up_once_reported() {
    let mut g = Group::new(vec![DurableState::default(); 3]);
    g.elect(0, |_| false);
    let term = g.nodes[0].status().hard.term;
    for k in 0..10u8 {
        g.nodes[0].propose(vec![k + 1]).unwrap();
        g.deliver(|_| false);
    }
    let last = g.nodes[0].status().last_index;
    assert_eq!(g.nodes[2].status().last_index, last);
    // Follower 2 restarts with only its first 5 entries.
    let mut lost = state(term, &[term; 5]);
    lost.entries
        .iter_mut()
        .for_each(|e| e.data = vec![e.index as u8]);
    g.nodes[2] = RawNode::new(Config::new(2, vec![0, 1, 2]), lost);
    // Heartbeats and new entries alone do not repair it.
    for k in 10..15u8 {
        g.nodes[0].propose(vec![k + 1]).unwrap();
        for _ in 0..20 {
            g.nodes[0].tick();
            g.deliver(|_| false);
        }
    }
    let leader_last = g.nodes[0].status().last_index;
    assert!(
        g.nodes[2].status().last_index < leader_last,
        "the follower caught up without the report: the scenario no longer shows the problem"
    );
    g.nodes[0].peer_restarted(2);
    g.deliver(|_| false);
    let f = g.nodes[2].status();
    assert_eq!(
        f.last_index, leader_last,
        "the reported follower is repaired"
    );
    assert_eq!(f.commit, g.nodes[0].status().commit);
}
