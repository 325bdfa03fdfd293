//! Request/response calls over the simulated network, as labrpc's `Call` behaves.
//!
//! Servers attach a handler (`Fn(Request) -> Response`, run when a request arrives, or one
//! that returns a future of the response); clients
//! are ends created with [`RpcNetwork::add_client`], each with an enable flag per server.
//! [`RpcNetwork::call`] returns `Some(reply)` or `None`, and `None` never says whether the
//! handler ran — exactly the uncertainty an exactly-once service must handle:
//!
//! - end disabled or server dead: `None` after U[0, 100) ms (U[0, 7000) ms with long delays);
//! - unreliable: the request waits U[0, 26] ms and is lost with p = 0.1 (handler not run);
//! - the handler runs (the server's RPC count goes up); if the server was restarted or the
//!   end disabled meanwhile, the reply is suppressed;
//! - unreliable: the reply is lost with p = 0.1 (handler did run);
//! - long reordering: two thirds of replies arrive 200–2200 ms late.
//!
//! Counters follow labrpc: every call counts one RPC and its request bytes; reply bytes count
//! when a reply is delivered.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::net::{Conditions, Fate, NetStats, Payload};
use crate::{sleep, trace, with_rng};

/// A client end's identity on an [`RpcNetwork`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(usize);

/// A server's request handler: the reply comes when the future resolves.
type Handler<Req, Resp> = Rc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Resp>>>>;

struct Server<Req, Resp> {
    incarnation: u64,
    handler: Handler<Req, Resp>,
    rpc_count: u64,
}

struct Inner<Req, Resp> {
    servers: Vec<Option<Server<Req, Resp>>>,
    /// `clients[c][s]`: may client `c` reach server `s`?
    clients: Vec<Vec<bool>>,
    next_incarnation: u64,
    conditions: Conditions,
    stats: NetStats,
}

/// A network of `n` servers and any number of client ends. Cloning shares it.
pub struct RpcNetwork<Req, Resp> {
    inner: Rc<RefCell<Inner<Req, Resp>>>,
}

impl<Req, Resp> Clone for RpcNetwork<Req, Resp> {
    fn clone(&self) -> Self {
        RpcNetwork {
            inner: self.inner.clone(),
        }
    }
}

const TRACE_CALL: u64 = 4 << 56;
const TRACE_FAIL: u64 = 5 << 56;
const TRACE_REPLY: u64 = 6 << 56;

impl<Req: Payload, Resp: Payload> RpcNetwork<Req, Resp> {
    pub fn new(servers: usize) -> Self {
        RpcNetwork {
            inner: Rc::new(RefCell::new(Inner {
                servers: (0..servers).map(|_| None).collect(),
                clients: Vec::new(),
                next_incarnation: 1,
                conditions: Conditions::default(),
                stats: NetStats::default(),
            })),
        }
    }

    /// A new client end, able to reach every server.
    pub fn add_client(&self) -> ClientId {
        let mut inner = self.inner.borrow_mut();
        let n = inner.servers.len();
        inner.clients.push(vec![true; n]);
        ClientId(inner.clients.len() - 1)
    }

    pub fn set_client_link(&self, client: ClientId, server: usize, enabled: bool) {
        self.inner.borrow_mut().clients[client.0][server] = enabled;
    }

    /// A (re)started server. Its RPC count starts from zero; replies to requests that reached
    /// an earlier incarnation are suppressed.
    pub fn attach(&self, server: usize, handler: impl Fn(Req) -> Resp + 'static) {
        self.attach_async(server, move |req| std::future::ready(handler(req)));
    }

    /// Like [`RpcNetwork::attach`], for a handler that takes time (a replicated server waits
    /// for its log to commit). The reply leaves when the handler's future resolves, and is
    /// suppressed if the server died or the end was cut meanwhile.
    pub fn attach_async<F>(&self, server: usize, handler: impl Fn(Req) -> F + 'static)
    where
        F: Future<Output = Resp> + 'static,
    {
        let handler: Handler<Req, Resp> = Rc::new(move |req| Box::pin(handler(req)));
        let mut inner = self.inner.borrow_mut();
        let incarnation = inner.next_incarnation;
        inner.next_incarnation += 1;
        inner.servers[server] = Some(Server {
            incarnation,
            handler,
            rpc_count: 0,
        });
    }

    /// A crashed server.
    pub fn detach(&self, server: usize) {
        self.inner.borrow_mut().servers[server] = None;
    }

    pub fn conditions(&self) -> Conditions {
        self.inner.borrow().conditions
    }

    pub fn set_conditions(&self, conditions: Conditions) {
        self.inner.borrow_mut().conditions = conditions;
    }

    pub fn set_reliable(&self, reliable: bool) {
        self.inner.borrow_mut().conditions.reliable = reliable;
    }

    pub fn rpc_count(&self, server: usize) -> u64 {
        self.inner.borrow().servers[server]
            .as_ref()
            .map_or(0, |s| s.rpc_count)
    }

    pub fn stats(&self) -> NetStats {
        self.inner.borrow().stats.clone()
    }

    fn live_incarnation(&self, client: ClientId, server: usize) -> Option<u64> {
        let inner = self.inner.borrow();
        let server_state = inner.servers[server].as_ref()?;
        inner.clients[client.0][server].then_some(server_state.incarnation)
    }

    /// Calls `server` with `req`. `None`: the call failed, and the handler may or may not
    /// have run.
    pub async fn call(&self, client: ClientId, server: usize, req: Req) -> Option<Resp> {
        let event = ((client.0 as u64) << 40) | ((server as u64) << 32);
        let conditions = {
            let mut inner = self.inner.borrow_mut();
            inner.stats.rpc_total += 1;
            inner.stats.bytes_total += req.wire_size() as u64;
            inner.conditions
        };
        trace(TRACE_CALL | event);
        let Some(incarnation) = self.live_incarnation(client, server) else {
            sleep(with_rng(|r| conditions.failure_delay(r))).await;
            return self.failed(event);
        };
        let delay = match with_rng(|r| conditions.request(r)) {
            Fate::Lost(delay) => {
                sleep(delay).await;
                return self.failed(event);
            }
            Fate::Arrives(delay) => delay,
        };
        if !delay.is_zero() {
            sleep(delay).await;
        }
        // The request reaches the server picked at call time, if it is still that one.
        let handler = {
            let mut inner = self.inner.borrow_mut();
            match inner.servers[server].as_mut() {
                Some(s) if s.incarnation == incarnation => {
                    s.rpc_count += 1;
                    s.handler.clone()
                }
                _ => {
                    drop(inner);
                    return self.failed(event);
                }
            }
        };
        let resp = handler(req).await;
        // The reply is suppressed if the server died or the end was cut meanwhile.
        if self.live_incarnation(client, server) != Some(incarnation) {
            return self.failed(event);
        }
        match with_rng(|r| conditions.reply(r)) {
            Fate::Lost(_) => self.failed(event),
            Fate::Arrives(delay) => {
                if !delay.is_zero() {
                    sleep(delay).await;
                }
                let mut inner = self.inner.borrow_mut();
                inner.stats.bytes_total += resp.wire_size() as u64;
                inner.stats.delivered += 1;
                trace(TRACE_REPLY | event);
                Some(resp)
            }
        }
    }

    fn failed(&self, event: u64) -> Option<Resp> {
        self.inner.borrow_mut().stats.dropped += 1;
        trace(TRACE_FAIL | event);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{now, Runtime};
    use std::cell::Cell;
    use std::time::Duration;

    #[derive(Debug)]
    struct Num(u64);
    impl Payload for Num {
        fn wire_size(&self) -> usize {
            8
        }
        fn is_request(&self) -> bool {
            true
        }
    }

    #[test]
    fn calls_succeed_and_fail_by_labrpc_rules() {
        let rt = Runtime::new(11);
        rt.block_on(async {
            let net = RpcNetwork::<Num, Num>::new(1);
            let runs = Rc::new(Cell::new(0));
            let r = runs.clone();
            net.attach(0, move |Num(x)| {
                r.set(r.get() + 1);
                Num(x + 1)
            });
            let c = net.add_client();
            assert_eq!(net.call(c, 0, Num(1)).await.map(|n| n.0), Some(2));
            assert_eq!(net.rpc_count(0), 1);

            net.set_client_link(c, 0, false);
            let t0 = now();
            assert!(net.call(c, 0, Num(1)).await.is_none());
            assert!(now() - t0 < Duration::from_millis(100));
            net.set_conditions(Conditions {
                long_delays: true,
                ..net.conditions()
            });
            let mut slowest = Duration::ZERO;
            for _ in 0..50 {
                let t0 = now();
                assert!(net.call(c, 0, Num(1)).await.is_none());
                slowest = slowest.max(now() - t0);
            }
            assert!(slowest > Duration::from_secs(1) && slowest < Duration::from_secs(7));
            assert_eq!(runs.get(), 1, "no handler runs for a disabled end");

            net.set_client_link(c, 0, true);
            net.set_reliable(false);
            let (mut ok, total) = (0, 2000);
            for _ in 0..total {
                if net.call(c, 0, Num(1)).await.is_some() {
                    ok += 1;
                }
            }
            // 0.9 × 0.9 = 81 % succeed; about 90 % of calls ran the handler.
            assert!((1540..1700).contains(&ok), "{ok} of {total} succeeded");
            let ran = runs.get() - 1;
            assert!((1720..1880).contains(&ran), "{ran} handler runs");
            let stats = net.stats();
            assert_eq!(stats.rpc_total, 1 + 51 + total as u64);
        });
    }
}
