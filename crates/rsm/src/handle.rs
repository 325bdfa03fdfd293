//! The caller's side of a replica: submit and read.

use std::marker::PhantomData;

use flotilla_node::Shared;
use flotilla_raft::{Index, RawNode};

use crate::{ReadError, Rsm, StateMachine, SubmitError};

/// Wakes a node loop (sends it a `Poke`) after something was asked directly on its node.
pub trait Wake {
    fn wake(&self);

    /// The handle just asked the node for the ReadIndex read `ctx` (a simulator checks its
    /// confirmation against what was applied at this moment).
    fn read_asked(&self, _ctx: &[u8]) {}
}

impl<F: Fn() + ?Sized> Wake for std::rc::Rc<F> {
    fn wake(&self) {
        (**self)()
    }
}

impl<F: Fn() + ?Sized> Wake for std::sync::Arc<F> {
    fn wake(&self) {
        (**self)()
    }
}

/// What callers (request handlers) hold to reach one replica: its Raft node, its [`Rsm`],
/// and a way to wake its node loop. Cheap to clone when its parts are.
pub struct RsmHandle<N, P, W, S> {
    node: N,
    rsm: P,
    wake: W,
    _sm: PhantomData<fn() -> S>,
}

impl<N: Clone, P: Clone, W: Clone, S> Clone for RsmHandle<N, P, W, S> {
    fn clone(&self) -> Self {
        RsmHandle {
            node: self.node.clone(),
            rsm: self.rsm.clone(),
            wake: self.wake.clone(),
            _sm: PhantomData,
        }
    }
}

impl<N, P, W, S> RsmHandle<N, P, W, S>
where
    N: Shared<RawNode>,
    P: Shared<Rsm<S>>,
    W: Wake,
    S: StateMachine,
{
    /// `wake` must make the node loop look for a `Ready` (send it a `Poke`).
    pub fn new(node: N, rsm: P, wake: W) -> Self {
        RsmHandle {
            node,
            rsm,
            wake,
            _sm: PhantomData,
        }
    }

    /// Proposes `command` and waits for its outcome (see the crate docs).
    pub async fn submit(&self, command: S::Command) -> Result<S::Output, SubmitError> {
        let data = postcard::to_allocvec(&command).expect("a command always encodes");
        // Lock order: node, then rsm (the loop never holds the rsm while taking the node).
        let outcome = self.node.with(|node| {
            if self.rsm.with(|r| r.is_stopped()) {
                return Err(SubmitError::Unknown);
            }
            match node.propose(data) {
                Ok((index, term)) => Ok(self.rsm.with(|r| r.expect_submit(index, term))),
                Err(not_leader) => Err(SubmitError::WrongLeader {
                    hint: not_leader.hint,
                }),
            }
        })?;
        self.wake.wake();
        outcome.await.unwrap_or(Err(SubmitError::Unknown))
    }

    /// Answers `query` linearizably without writing to the log (see the crate docs).
    pub async fn read(&self, query: S::Query) -> Result<S::Answer, ReadError> {
        let answer = self.node.with(|node| {
            if self.rsm.with(|r| r.is_stopped()) {
                return Err(ReadError::Unknown);
            }
            if !node.is_leader() {
                return Err(ReadError::WrongLeader {
                    hint: node.status().soft.leader,
                });
            }
            let (id, answer) = self.rsm.with(|r| r.expect_read(query));
            let ctx = id.to_le_bytes();
            match node.read_index(ctx.to_vec()) {
                Ok(()) => {
                    self.wake.read_asked(&ctx);
                    Ok(answer)
                }
                Err(not_leader) => {
                    self.rsm.with(|r| r.asked.remove(&id));
                    Err(ReadError::WrongLeader {
                        hint: not_leader.hint,
                    })
                }
            }
        })?;
        self.wake.wake();
        answer.await.unwrap_or(Err(ReadError::Unknown))
    }

    /// `(term, is leader)` of this replica's node, as 6.5840's `GetState`.
    pub fn state(&self) -> (u64, bool) {
        self.node.with(|n| {
            let status = n.status();
            (status.hard.term, n.is_leader())
        })
    }

    /// Runs `f` on the replica's state machine (tests read it this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        self.rsm.with(|r| f(r.state()))
    }

    /// Runs `f` on the replica's state machine and the log index it has applied through.
    pub fn with_applied_state<R>(&self, f: impl FnOnce(Index, &S) -> R) -> R {
        self.rsm.with(|r| f(r.applied(), r.state()))
    }
}
