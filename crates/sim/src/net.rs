//! The network model: 6.5840's labrpc, for one-way messages.
//!
//! Flotilla's protocols exchange one-way messages (a request and its response are two
//! messages), so each labrpc rule is applied to the leg it concerns:
//!
//! | labrpc behaviour | here |
//! |---|---|
//! | ends start disabled; `Enable(end)` | every directed link starts disabled; [`Network::set_link`] |
//! | unreliable: request delayed U[0,26] ms, then lost with p = 0.1 | same, for messages whose [`Payload::is_request`] is true |
//! | unreliable: reply lost with p = 0.1 | same, for response messages |
//! | long reordering: 2/3 of replies delayed 200 + U[0, U[0,2000]] ms | same, for responses |
//! | call to a disabled end / dead server fails | the message is dropped |
//! | reply of a server that died or was cut off meanwhile is suppressed | a message is delivered only if its link is still enabled and the receiver is the same incarnation as at send time |
//! | RPC count: +1 per call; bytes: request size at call, reply size on delivery | same: requests count (and their bytes) when sent, responses' bytes when delivered |
//! | per-server count: +1 per request dispatched; reset when the server restarts | same |
//!
//! Beyond labrpc, [`Network::set_duplication`] delivers a share of messages twice, each copy
//! with its own fate (the Raft sweep uses it; labrpc's own scenarios never do).
//!
//! Delivery happens in a task of its own, never inside `send`, so a sender can hold its own
//! state borrowed while sending. With zero delay, messages between a pair arrive in send
//! order; delays reorder them, as they would on a real network.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::{spawn, trace, with_rng};

/// The state of the wire, shared by the one-way [`Network`] and the RPC network
/// ([`crate::rpc::RpcNetwork`]): each draw below is one rule of labrpc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// Reliable: nothing is lost or delayed (beyond `latency`).
    pub reliable: bool,
    /// Two thirds of replies are delayed 200 + U[0, U[0, 2000]] ms.
    pub long_reordering: bool,
    /// A call to a cut-off or dead server fails after U[0, 7000) ms instead of U[0, 100) ms.
    pub long_delays: bool,
    /// Extra latency for every message, drawn uniformly from `[min, max]`.
    pub latency: (Duration, Duration),
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            reliable: true,
            long_reordering: false,
            long_delays: false,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// It arrives after this delay.
    Arrives(Duration),
    /// It is lost; a caller waiting for it learns so after this delay.
    Lost(Duration),
}

impl Fate {
    fn map_delay(self, f: impl FnOnce(Duration) -> Duration) -> Fate {
        match self {
            Fate::Arrives(d) => Fate::Arrives(f(d)),
            Fate::Lost(d) => Fate::Lost(f(d)),
        }
    }
}

impl Conditions {
    fn base_latency(&self, rng: &mut crate::Rng) -> Duration {
        let (lo, hi) = self.latency;
        lo + Duration::from_nanos(rng.below((hi - lo).as_nanos() as u64 + 1))
    }

    /// A request: unreliable nets delay it U[0, 26] ms, then lose 10 %.
    pub fn request(&self, rng: &mut crate::Rng) -> Fate {
        let mut delay = self.base_latency(rng);
        if !self.reliable {
            delay += Duration::from_millis(rng.below(27));
            if rng.below(1000) < 100 {
                return Fate::Lost(delay);
            }
        }
        Fate::Arrives(delay)
    }

    /// A reply: unreliable nets lose 10 %; long reordering delays two thirds of the rest.
    pub fn reply(&self, rng: &mut crate::Rng) -> Fate {
        let mut delay = self.base_latency(rng);
        if !self.reliable && rng.below(1000) < 100 {
            return Fate::Lost(delay);
        }
        if self.long_reordering && rng.below(900) < 600 {
            let spread = rng.below(2001);
            delay += Duration::from_millis(200 + rng.below(spread + 1));
        }
        Fate::Arrives(delay)
    }

    /// How long a call to a disabled end or a dead server takes to fail.
    pub fn failure_delay(&self, rng: &mut crate::Rng) -> Duration {
        Duration::from_millis(if self.long_delays {
            rng.below(7000)
        } else {
            rng.below(100)
        })
    }
}

/// What the network needs to know about a message.
pub trait Payload: 'static {
    /// Size on the wire, for the byte counters.
    fn wire_size(&self) -> usize;
    /// Requests count as RPCs and suffer request delays; responses suffer reply loss and
    /// long reordering.
    fn is_request(&self) -> bool;
}

/// Counters as labrpc keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rpc_total: u64,
    pub bytes_total: u64,
    pub dropped: u64,
    pub delivered: u64,
}

struct Node<M> {
    incarnation: u64,
    inbox: Rc<dyn Fn(usize, M)>,
    rpc_count: u64,
}

struct Inner<M> {
    links: Vec<Vec<bool>>,
    nodes: Vec<Option<Node<M>>>,
    next_incarnation: u64,
    conditions: Conditions,
    /// Per mille of sent messages that travel twice (each copy with its own fate).
    duplicate_per_mille: u64,
    duplicate_max_lag: Duration,
    stats: NetStats,
}

/// A network of `n` nodes numbered `0..n`. Cloning gives another handle to the same network.
pub struct Network<M> {
    inner: Rc<RefCell<Inner<M>>>,
}

impl<M> Clone for Network<M> {
    fn clone(&self) -> Self {
        Network {
            inner: self.inner.clone(),
        }
    }
}

const TRACE_SEND: u64 = 1 << 56;
const TRACE_DROP: u64 = 2 << 56;
const TRACE_DELIVER: u64 = 3 << 56;
const TRACE_DUPLICATE: u64 = 4 << 56;

impl<M: Payload> Network<M> {
    /// A reliable network with every link disabled and no node attached.
    pub fn new(n: usize) -> Self {
        Network {
            inner: Rc::new(RefCell::new(Inner {
                links: vec![vec![false; n]; n],
                nodes: (0..n).map(|_| None).collect(),
                next_incarnation: 1,
                conditions: Conditions::default(),
                duplicate_per_mille: 0,
                duplicate_max_lag: Duration::ZERO,
                stats: NetStats::default(),
            })),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A (re)started node: messages for `node` are now handed to `inbox(from, message)`.
    /// Messages sent to an earlier incarnation are never delivered to this one. Resets the
    /// node's RPC count, as a restarted labrpc server does.
    pub fn attach(&self, node: usize, inbox: impl Fn(usize, M) + 'static) {
        let inbox: Rc<dyn Fn(usize, M)> = Rc::new(inbox);
        let mut inner = self.inner.borrow_mut();
        let incarnation = inner.next_incarnation;
        inner.next_incarnation += 1;
        inner.nodes[node] = Some(Node {
            incarnation,
            inbox,
            rpc_count: 0,
        });
    }

    /// A crashed node: nothing is delivered to it until it is attached again.
    pub fn detach(&self, node: usize) {
        self.inner.borrow_mut().nodes[node] = None;
    }

    pub fn is_attached(&self, node: usize) -> bool {
        self.inner.borrow().nodes[node].is_some()
    }

    pub fn set_link(&self, from: usize, to: usize, enabled: bool) {
        self.inner.borrow_mut().links[from][to] = enabled;
    }

    pub fn link(&self, from: usize, to: usize) -> bool {
        self.inner.borrow().links[from][to]
    }

    pub fn set_reliable(&self, reliable: bool) {
        self.inner.borrow_mut().conditions.reliable = reliable;
    }

    pub fn is_reliable(&self) -> bool {
        self.inner.borrow().conditions.reliable
    }

    pub fn set_long_reordering(&self, on: bool) {
        self.inner.borrow_mut().conditions.long_reordering = on;
    }

    /// Every message additionally takes a delay drawn uniformly from `[min, max]`.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        assert!(min <= max);
        self.inner.borrow_mut().conditions.latency = (min, max);
    }

    /// Requests delivered to `node` since it was last attached (labrpc `GetCount`).
    pub fn rpc_count(&self, node: usize) -> u64 {
        self.inner.borrow().nodes[node]
            .as_ref()
            .map_or(0, |n| n.rpc_count)
    }

    pub fn stats(&self) -> NetStats {
        self.inner.borrow().stats.clone()
    }

    /// Duplicates `per_mille` of the messages sent from now on: beyond labrpc, which never
    /// delivers a request twice, but what a real network with retransmitting proxies (or a
    /// sender that retries) does. Each copy has its own fate, and the copy is held back a
    /// further U[0, `max_lag`] — a retransmission that arrives long after the original and
    /// after what was sent since. Counters count the copy as one more message.
    pub fn set_duplication(&self, per_mille: u64, max_lag: Duration) {
        let mut inner = self.inner.borrow_mut();
        inner.duplicate_per_mille = per_mille.min(1000);
        inner.duplicate_max_lag = max_lag;
    }
}

impl<M: Payload + Clone> Network<M> {
    /// Sends `msg` from `from` to `to`; it arrives later, or never (or, with duplication on,
    /// twice).
    pub fn send(&self, from: usize, to: usize, msg: M) {
        let (per_mille, max_lag) = {
            let inner = self.inner.borrow();
            (inner.duplicate_per_mille, inner.duplicate_max_lag)
        };
        if per_mille > 0 && with_rng(|rng| rng.below(1000) < per_mille) {
            trace(TRACE_DUPLICATE | ((from as u64) << 40) | ((to as u64) << 32));
            let lag = with_rng(|rng| rng.below(max_lag.as_nanos() as u64 + 1));
            self.send_once(from, to, msg.clone(), Duration::from_nanos(lag));
        }
        self.send_once(from, to, msg, Duration::ZERO);
    }
}

impl<M: Payload> Network<M> {
    fn send_once(&self, from: usize, to: usize, msg: M, lag: Duration) {
        let size = msg.wire_size() as u64;
        let is_request = msg.is_request();
        let mut inner = self.inner.borrow_mut();
        let event = ((from as u64) << 40) | ((to as u64) << 32) | size;
        trace(TRACE_SEND | event);
        if is_request {
            inner.stats.rpc_total += 1;
            inner.stats.bytes_total += size;
        }
        let target = match &inner.nodes[to] {
            Some(node) if inner.links[from][to] => node.incarnation,
            _ => {
                inner.stats.dropped += 1;
                trace(TRACE_DROP | event);
                return;
            }
        };
        let conditions = inner.conditions;
        drop(inner);
        let fate = with_rng(|rng| {
            if is_request {
                conditions.request(rng)
            } else {
                conditions.reply(rng)
            }
        });
        let Fate::Arrives(delay) = fate.map_delay(|d| d + lag) else {
            self.inner.borrow_mut().stats.dropped += 1;
            trace(TRACE_DROP | event);
            return;
        };
        let net = self.clone();
        spawn(async move {
            if !delay.is_zero() {
                crate::sleep(delay).await;
            }
            net.deliver(from, to, target, msg, size, is_request);
        });
    }

    fn deliver(
        &self,
        from: usize,
        to: usize,
        incarnation: u64,
        msg: M,
        size: u64,
        is_request: bool,
    ) {
        let mut inner = self.inner.borrow_mut();
        let event = ((from as u64) << 40) | ((to as u64) << 32) | size;
        let link = inner.links[from][to];
        let node = match inner.nodes[to].as_mut() {
            Some(node) if link && node.incarnation == incarnation => node,
            _ => {
                inner.stats.dropped += 1;
                trace(TRACE_DROP | event);
                return;
            }
        };
        if is_request {
            node.rpc_count += 1;
        }
        let inbox = node.inbox.clone();
        if is_request {
            inner.stats.delivered += 1;
        } else {
            inner.stats.bytes_total += size;
            inner.stats.delivered += 1;
        }
        drop(inner);
        trace(TRACE_DELIVER | event);
        inbox(from, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sync::channel, Runtime};

    #[derive(Clone)]
    struct Msg(bool);
    impl Payload for Msg {
        fn wire_size(&self) -> usize {
            10
        }
        fn is_request(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn counts_and_link_rules() {
        let rt = Runtime::new(3);
        rt.block_on(async {
            let net = Network::<Msg>::new(2);
            let (tx, mut rx) = channel();
            net.attach(1, move |from, m| {
                let _ = tx.send((from, m));
            });
            net.send(0, 1, Msg(true)); // link disabled: dropped but counted
            net.set_link(0, 1, true);
            net.send(0, 1, Msg(true));
            net.send(0, 1, Msg(false));
            crate::sleep(Duration::from_millis(1)).await;
            assert!(rx.try_recv().is_some());
            assert!(rx.try_recv().is_some());
            assert!(rx.try_recv().is_none());
            let stats = net.stats();
            assert_eq!(stats.rpc_total, 2);
            assert_eq!(
                stats.bytes_total, 30,
                "two requests sent + one response delivered"
            );
            assert_eq!(net.rpc_count(1), 1);
        });
    }

    #[test]
    fn unreliable_network_loses_about_a_tenth() {
        let rt = Runtime::new(5);
        rt.block_on(async {
            let net = Network::<Msg>::new(2);
            let (tx, mut rx) = channel();
            net.attach(1, move |from, m| {
                let _ = tx.send((from, m));
            });
            net.set_link(0, 1, true);
            net.set_reliable(false);
            for _ in 0..10_000 {
                net.send(0, 1, Msg(true));
            }
            crate::sleep(Duration::from_millis(100)).await;
            let mut got = 0;
            while rx.try_recv().is_some() {
                got += 1;
            }
            assert!((8800..9200).contains(&got), "delivered {got} of 10000");
        });
    }

    #[test]
    fn duplication_delivers_some_messages_twice() {
        let rt = Runtime::new(11);
        rt.block_on(async {
            let net = Network::<Msg>::new(2);
            let (tx, mut rx) = channel();
            net.attach(1, move |from, m| {
                let _ = tx.send((from, m));
            });
            net.set_link(0, 1, true);
            net.set_duplication(100, Duration::from_millis(50));
            for _ in 0..10_000 {
                net.send(0, 1, Msg(true));
            }
            crate::sleep(Duration::from_millis(50)).await;
            let mut got = 0;
            while rx.try_recv().is_some() {
                got += 1;
            }
            assert!((10_800..11_200).contains(&got), "delivered {got} of 10000");
        });
    }

    #[test]
    fn restart_drops_messages_for_the_old_incarnation() {
        let rt = Runtime::new(9);
        rt.block_on(async {
            let net = Network::<Msg>::new(2);
            let (tx, _rx_old) = channel();
            net.attach(1, move |from, m| {
                let _ = tx.send((from, m));
            });
            net.set_link(0, 1, true);
            net.set_latency(Duration::from_millis(5), Duration::from_millis(5));
            net.send(0, 1, Msg(true));
            let (tx, mut rx_new) = channel::<(usize, Msg)>();
            net.attach(1, move |from, m| {
                let _ = tx.send((from, m));
            });
            crate::sleep(Duration::from_millis(10)).await;
            assert!(rx_new.try_recv().is_none());
        });
    }
}
