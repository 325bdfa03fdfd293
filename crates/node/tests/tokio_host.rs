//! The node loop on tokio: three nodes on a multi-threaded runtime, each behind an
//! `Arc<Mutex<RawNode>>`, with tokio channels for a network, a real clock for ticks and
//! `MemStorage` behind a `spawn_blocking` "sync". The same `flotilla_node::run` the
//! simulator's servers run elects a leader and commits what it is given; the host here is
//! the whole of what differs.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::{App, Event, Host, Input, Shared};
use flotilla_raft::{Config, DurableState, Entry, Message, Persist, RawNode, Snapshot};
use flotilla_storage::{MemStorage, Storage};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{interval, Interval, MissedTickBehavior};

struct TokioHost {
    inbox: UnboundedReceiver<Input>,
    peers: Vec<UnboundedSender<Input>>,
    ticks: Interval,
    storage: Arc<Mutex<MemStorage>>,
}

impl Host for TokioHost {
    type Error = Infallible;

    async fn next_event(&mut self) -> Event {
        tokio::select! {
            input = self.inbox.recv() => match input {
                Some(input) => Event::Input(input),
                None => Event::Stop,
            },
            _ = self.ticks.tick() => Event::Tick,
        }
    }

    fn try_input(&mut self) -> Option<Input> {
        self.inbox.try_recv().ok()
    }

    async fn persist(&mut self, batch: &Persist) -> Result<(), Infallible> {
        let (storage, batch) = (self.storage.clone(), batch.clone());
        tokio::task::spawn_blocking(move || {
            storage.with(|s| s.persist(&batch).expect("memory storage cannot fail"))
        })
        .await
        .expect("the sync task ran");
        Ok(())
    }

    fn raft_state_size(&self) -> u64 {
        self.storage.with(|s| s.raft_state_size())
    }

    fn send(&mut self, _node: &RawNode, message: Message) {
        let _ = self.peers[message.to as usize].send(Input::Message(message));
    }
}

/// Collects what is applied.
struct Applied(Arc<Mutex<Vec<Vec<u8>>>>);

impl App for Applied {
    fn apply_snapshot(&mut self, _snapshot: &Snapshot) {}
    fn apply(&mut self, entry: Entry, _raft_state_size: u64) -> Option<Vec<u8>> {
        if !entry.data.is_empty() {
            self.0.with(|a| a.push(entry.data));
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_tokio_elect_a_leader_and_commit() {
    let n = 3;
    let channels: Vec<_> = (0..n).map(|_| unbounded_channel()).collect();
    let senders: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
    let mut nodes = Vec::new();
    let mut applied = Vec::new();
    let mut tasks = Vec::new();
    for (id, (_, inbox)) in channels.into_iter().enumerate() {
        let mut config = Config::new(id as u64, (0..n as u64).collect());
        config.seed = id as u64 + 1;
        let node = Arc::new(Mutex::new(RawNode::new(config, DurableState::default())));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut ticks = interval(Duration::from_millis(5));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut host = TokioHost {
            inbox,
            peers: senders.clone(),
            ticks,
            storage: Arc::new(Mutex::new(MemStorage::new())),
        };
        let mut app = Applied(log.clone());
        let loop_node = node.clone();
        tasks.push(tokio::spawn(async move {
            flotilla_node::run(loop_node, &mut host, &mut app).await
        }));
        nodes.push(node);
        applied.push(log);
    }
    // Bounded: 10 s of real time for an election and three commits on every node. Each
    // value is proposed (again every 200 ms, should a leader change lose it) until every
    // node has applied it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for value in 1..=3u8 {
        let mut last_try: Option<tokio::time::Instant> = None;
        while !applied.iter().all(|a| a.with(|a| a.contains(&vec![value]))) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "value {value} was not applied on every node within 10 s"
            );
            if last_try.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
                for (id, node) in nodes.iter().enumerate() {
                    if node.with(|n| n.propose(vec![value]).is_ok()) {
                        let _ = senders[id].send(Input::Poke);
                        last_try = Some(tokio::time::Instant::now());
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Every node applied the same entries, the values in order (a retried value may appear
    // twice in a row).
    let first = applied[0].with(|a| a.clone());
    for log in &applied[1..] {
        let log = log.with(|a| a.clone());
        let common = log.len().min(first.len());
        assert_eq!(
            log[..common],
            first[..common],
            "nodes applied different entries"
        );
    }
    let mut values = first;
    values.dedup();
    assert_eq!(values, vec![vec![1], vec![2], vec![3]]);
    for task in tasks {
        task.abort();
    }
}
