//! # flotilla-node: the one node loop
//!
//! A [`RawNode`] only computes; something must feed it ticks and messages and carry out each
//! [`Ready`]. That something is written once, here, and every Flotilla server runs it: the
//! simulator's servers (the Lab 3 harness, the KV service's tests, the fault sweeps) and the
//! real TCP servers. A test of the simulator is therefore a test of the loop that runs for
//! real; only the few hundred lines of each [`Host`] differ.
//!
//! The loop ([`run`]) owns no I/O. It is generic over three small interfaces:
//! - [`Host`]: the world — the next input or tick (the host's clock and inbox), durable
//!   storage ([`Host::persist`] returns once the batch is synced), and the transport
//!   ([`Host::send`]); plus observation hooks the simulator uses to check invariants.
//! - [`App`]: what the node replicates — committed entries and snapshots to apply, read
//!   states to serve, ticks for its own timeouts — and when to compact the log.
//! - [`Shared`]: how the node is shared with the code that proposes to it (a client
//!   request handler): `Rc<RefCell<_>>` on the single-threaded simulator, `Arc<Mutex<_>>`
//!   on tokio. The loop never holds the node across an `await`.
//!
//! ## What it guarantees (the driver contract of `flotilla_raft::rawnode`)
//! For every `Ready`, in this order:
//! 1. its `persist` batch is handed to [`Host::persist`] and the loop waits until it is
//!    durable — **before** any of its messages is sent and before anything is applied
//!    (etcd's rule: persist before you send). A storage error stops the node;
//! 2. its messages are sent;
//! 3. its snapshot, then its committed entries, are applied in index order, each exactly
//!    once per incarnation of the node; a compaction the app asks for at an entry happens
//!    right after that entry is applied;
//! 4. its read states are handed to the app (after the entries, so a read at index `i`
//!    finds every entry up to `i` of this `Ready` applied);
//! 5. `advance()`.
//!
//! Inputs that arrive together are stepped together before the next `Ready` is taken, so a
//! busy node persists and sends in batches (group commit comes for free).

use std::cell::RefCell;
use std::fmt::Display;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use flotilla_raft::{
    Entry, Message, NodeId, Persist, RawNode, ReadState, Ready, Snapshot, SoftState, StepError,
};

/// Something shared between the node loop and the code that calls into the same value
/// (proposals from request handlers, status queries). [`Shared::with`] runs `f` with
/// exclusive access; callers never hold it across an `await`.
pub trait Shared<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

impl<T> Shared<T> for Rc<RefCell<T>> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

impl<T> Shared<T> for Arc<Mutex<T>> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // A panic while holding the lock already failed the node; its state is still the
        // core's own (every core method leaves it consistent or panics on a broken
        // invariant, which stops the process in release builds too).
        let mut guard = self.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// Something for the node to act on.
#[derive(Debug)]
pub enum Input {
    /// A message from a peer.
    Message(Message),
    /// Someone proposed, asked for a read or a transfer directly on the node: look for a
    /// `Ready`.
    Poke,
    /// The transport saw peer `0` start again (a new incarnation of its process): a leader
    /// probes its log anew ([`RawNode::peer_restarted`]).
    PeerRestarted(NodeId),
}

/// What [`Host::next_event`] woke up for.
#[derive(Debug)]
pub enum Event {
    Input(Input),
    /// A tick of the node's logical clock is due.
    Tick,
    /// The node is being shut down: the loop returns.
    Stop,
}

/// The world a node runs in: clock and inbox, storage, transport. See the crate docs.
pub trait Host {
    /// A storage failure. The loop stops on the first one and returns it.
    type Error: Display;

    /// Waits for the next input, or for the next tick if it is due first.
    fn next_event(&mut self) -> impl Future<Output = Event>;

    /// An input that has already arrived, without waiting (the loop steps every input that
    /// is there before it takes the next `Ready`).
    fn try_input(&mut self) -> Option<Input>;

    /// Makes `batch` durable; resolves once it survives a crash.
    fn persist(&mut self, batch: &Persist) -> impl Future<Output = Result<(), Self::Error>>;

    /// Bytes of persisted Raft state without the snapshot (6.5840's `RaftStateSize`), as of
    /// the last completed [`Host::persist`].
    fn raft_state_size(&self) -> u64;

    /// Sends `message` (best effort: the network may lose it). `node` is the sender's state
    /// at the moment of sending, for hosts that check invariants.
    fn send(&mut self, node: &RawNode, message: Message);

    /// A peer's message the core refused as malformed. The default drops it: the core has
    /// already left its state untouched.
    fn refused(&mut self, _from: NodeId, _error: StepError) {}

    /// Sees each `Ready` before it is carried out (invariant checks, narration).
    fn observe_ready(&mut self, _node: &RawNode, _ready: &Ready) {}

    /// Sees each committed entry just before the app applies it.
    fn observe_apply(&mut self, _entry: &Entry) {}

    /// Sees each read state before the app gets it.
    fn observe_read(&mut self, _read: &ReadState) {}
}

/// What a node replicates. Every method runs on the loop, never concurrently with another.
pub trait App {
    /// The node's role, leader or term changed.
    fn on_soft_state(&mut self, _soft: &SoftState) {}

    /// `batch` is durable (it was persisted before this `Ready`'s messages went out); `node`
    /// is the node's state now. An app that waits for its own proposals learns here when
    /// another leader's entries replaced them (`node.term_at(index)` differs, or the log
    /// no longer reaches the index).
    fn on_persisted(&mut self, _node: &RawNode, _batch: &Persist) {}

    /// One tick of the node's clock passed (the app's own timeouts count these).
    fn on_tick(&mut self) {}

    /// Replace the applied state by `snapshot` (a leader sent it; everything up to its index
    /// is committed).
    fn apply_snapshot(&mut self, snapshot: &Snapshot);

    /// Applies one committed entry (empty `data`: a leader's no-op). `raft_state_size` is the
    /// host's [`Host::raft_state_size`]. Returning `Some(data)` asks the loop to compact the
    /// log up to this entry with `data` as the snapshot.
    fn apply(&mut self, entry: Entry, raft_state_size: u64) -> Option<Vec<u8>>;

    /// A ReadIndex read this node asked for is confirmed at `read.index`.
    fn on_read_state(&mut self, _read: ReadState) {}

    /// Every entry and read state of the current `Ready` has been handed over.
    fn after_ready(&mut self) {}
}

impl<A: App + ?Sized> App for Box<A> {
    fn on_soft_state(&mut self, soft: &SoftState) {
        (**self).on_soft_state(soft)
    }
    fn on_persisted(&mut self, node: &RawNode, batch: &Persist) {
        (**self).on_persisted(node, batch)
    }
    fn on_tick(&mut self) {
        (**self).on_tick()
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        (**self).apply_snapshot(snapshot)
    }
    fn apply(&mut self, entry: Entry, raft_state_size: u64) -> Option<Vec<u8>> {
        (**self).apply(entry, raft_state_size)
    }
    fn on_read_state(&mut self, read: ReadState) {
        (**self).on_read_state(read)
    }
    fn after_ready(&mut self) {
        (**self).after_ready()
    }
}

/// The exit status of a node process stopped by a storage failure (`EX_IOERR` of
/// `sysexits.h`), so a supervisor can tell it from a crash or a clean stop.
pub const STORAGE_FAILURE_EXIT_CODE: i32 = 74;

/// What a node process does when [`run`] returns a storage error (fsyncgate): after a failed
/// write or `fsync` nobody knows what the disk holds, so the node must not retry, must not
/// go on from its in-memory state, and must not answer anyone again. It reports `error`
/// (at `error` level through `tracing`, and on stderr in case no subscriber is installed)
/// and exits with [`STORAGE_FAILURE_EXIT_CODE`]. A restart reopens the storage and recovers
/// exactly what was synced.
pub fn exit_after_storage_failure(node: impl Display, error: impl Display) -> ! {
    tracing::error!(%node, %error, "storage failed: the node stops (a restart recovers what was synced)");
    eprintln!(
        "flotilla: node {node}: storage failed: {error}; the node stops without retrying (a restart recovers what was synced)"
    );
    std::process::exit(STORAGE_FAILURE_EXIT_CODE)
}

/// Runs the node until the host says [`Event::Stop`] (then `Ok`) or storage fails (then the
/// error; nothing of the failed `Ready` was sent or applied). A process that gets the error
/// calls [`exit_after_storage_failure`].
pub async fn run<N, H, A>(node: N, host: &mut H, app: &mut A) -> Result<(), H::Error>
where
    N: Shared<RawNode>,
    H: Host,
    A: App + ?Sized,
{
    loop {
        match host.next_event().await {
            Event::Stop => return Ok(()),
            Event::Tick => {
                node.with(|n| n.tick());
                app.on_tick();
            }
            Event::Input(first) => node.with(|n| {
                let mut input = Some(first);
                while let Some(next) = input.take().or_else(|| host.try_input()) {
                    match next {
                        Input::Message(message) => {
                            let from = message.from;
                            if let Err(error) = n.step(message) {
                                host.refused(from, error);
                            }
                        }
                        Input::PeerRestarted(peer) => n.peer_restarted(peer),
                        Input::Poke => {}
                    }
                }
            }),
        }
        handle_ready(&node, host, app).await?;
    }
}

/// Carries out every pending `Ready` of `node`, in the order of the crate docs.
pub async fn handle_ready<N, H, A>(node: &N, host: &mut H, app: &mut A) -> Result<(), H::Error>
where
    N: Shared<RawNode>,
    H: Host,
    A: App + ?Sized,
{
    loop {
        let ready = node.with(|n| {
            n.has_ready().then(|| {
                let ready = n.ready();
                host.observe_ready(n, &ready);
                ready
            })
        });
        let Some(mut ready) = ready else {
            return Ok(());
        };
        if let Some(soft) = &ready.soft_state {
            app.on_soft_state(soft);
        }
        if !ready.persist.is_empty() {
            host.persist(&ready.persist).await?;
            node.with(|n| app.on_persisted(n, &ready.persist));
        }
        let messages = std::mem::take(&mut ready.messages);
        node.with(|n| {
            for message in messages {
                host.send(n, message);
            }
        });
        if let Some(snapshot) = &ready.snapshot_to_apply {
            app.apply_snapshot(snapshot);
        }
        for entry in ready.committed_entries {
            host.observe_apply(&entry);
            let index = entry.index;
            if let Some(data) = app.apply(entry, host.raft_state_size()) {
                node.with(|n| n.compact(index, data))
                    .unwrap_or_else(|e| panic!("the app asked to compact at {index}: {e}"));
            }
        }
        for read in ready.read_states {
            host.observe_read(&read);
            app.on_read_state(read);
        }
        app.after_ready();
        node.with(|n| n.advance());
    }
}
