//! An unbounded multi-producer, single-consumer channel between simulated tasks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Chan<T> {
    queue: VecDeque<T>,
    waiter: Option<Waker>,
    senders: usize,
    receiver_alive: bool,
}

pub struct Sender<T> {
    chan: Rc<RefCell<Chan<T>>>,
}

pub struct Receiver<T> {
    chan: Rc<RefCell<Chan<T>>>,
}

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Rc::new(RefCell::new(Chan {
        queue: VecDeque::new(),
        waiter: None,
        senders: 1,
        receiver_alive: true,
    }));
    (Sender { chan: chan.clone() }, Receiver { chan })
}

impl<T> Sender<T> {
    /// Queues `value`; returns it back if the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut chan = self.chan.borrow_mut();
        if !chan.receiver_alive {
            return Err(value);
        }
        chan.queue.push_back(value);
        if let Some(w) = chan.waiter.take() {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.borrow_mut().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut chan = self.chan.borrow_mut();
        chan.senders -= 1;
        if chan.senders == 0 {
            if let Some(w) = chan.waiter.take() {
                w.wake();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// The next value, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| {
            let mut chan = self.chan.borrow_mut();
            if let Some(v) = chan.queue.pop_front() {
                return Poll::Ready(Some(v));
            }
            if chan.senders == 0 {
                return Poll::Ready(None);
            }
            chan.waiter = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    pub fn try_recv(&mut self) -> Option<T> {
        self.chan.borrow_mut().queue.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut chan = self.chan.borrow_mut();
        chan.receiver_alive = false;
        chan.queue.clear();
    }
}
