//! Connections to many servers of one protocol, opened on first use and kept: what a clerk of
//! a replicated service (or a server calling another group's servers) holds.
//!
//! [`Pool::call`] bounds the whole attempt — connect, handshake, request and reply — by one
//! timeout, and forgets a connection that failed, so the next call to that server connects
//! afresh. One call at a time (`&mut self`), like [`Client`]. [`Pool::call_sized`] is the
//! same for a reply that may be large ([`Client::call_sized`]). [`SharedPool`] is a pool
//! for calls made at once (`&self`): each call takes a kept connection to its server, or
//! opens another, and gives it back when done.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Client, Protocol, WireError};

/// Kept connections, one per server address.
pub struct Pool<Req, Resp> {
    protocol: Protocol,
    max_frame: usize,
    connections: HashMap<SocketAddr, Client<Req, Resp>>,
}

/// Why a call failed, and whether the server may have received the request.
#[derive(Debug)]
pub enum CallFailure {
    /// The request was never written to a connection: no connection could be made (refused,
    /// timed out, handshake failed). The server cannot have acted on it; sending it again
    /// is safe even if it is not idempotent.
    NotSent(WireError),
    /// The request was (or may have been) sent and no reply came: the server may have acted
    /// on it.
    MaybeSent(WireError),
}

impl CallFailure {
    /// The error, whichever case.
    pub fn into_error(self) -> WireError {
        match self {
            CallFailure::NotSent(e) | CallFailure::MaybeSent(e) => e,
        }
    }
}

/// One attempt on `client` (or a new connection to `addr` if there is none, or if the server
/// has closed the kept one), all of it within `timeout` except, with `per_mib`, the time
/// [`Client::call_sized`] adds for a large reply. Gives back the connection if it can be
/// used again.
async fn attempt<Req: Serialize, Resp: DeserializeOwned>(
    client: Option<Client<Req, Resp>>,
    addr: SocketAddr,
    protocol: Protocol,
    max_frame: usize,
    request: &Req,
    timeout: Duration,
    per_mib: Option<Duration>,
) -> (Option<Client<Req, Resp>>, Result<Resp, CallFailure>) {
    let started = Instant::now();
    let mut client = match client.filter(|c| c.is_usable() && !c.peer_closed()) {
        Some(client) => client,
        None => match tokio::time::timeout(timeout, Client::connect(addr, protocol, max_frame))
            .await
            .unwrap_or(Err(WireError::Timeout(timeout)))
        {
            Ok(client) => client,
            Err(e) => return (None, Err(CallFailure::NotSent(e))),
        },
    };
    let left = timeout.saturating_sub(started.elapsed());
    let outcome = match per_mib {
        None => client.call(request, left).await,
        Some(per_mib) => client.call_sized(request, left, per_mib).await,
    };
    let outcome = match outcome {
        Err(WireError::Timeout(_)) if per_mib.is_none() => Err(WireError::Timeout(timeout)),
        other => other,
    };
    match outcome {
        // Its state is unknown (or the server is gone): the next call connects afresh.
        Err(e) => (None, Err(CallFailure::MaybeSent(e))),
        Ok(reply) => (Some(client), Ok(reply)),
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> Pool<Req, Resp> {
    /// An empty pool speaking `protocol`, frames limited to `max_frame` bytes.
    pub fn new(protocol: Protocol, max_frame: usize) -> Self {
        Pool {
            protocol,
            max_frame,
            connections: HashMap::new(),
        }
    }

    /// Sends `request` to `addr` and waits for its reply, all within `timeout`.
    pub async fn call(
        &mut self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, WireError> {
        self.call_with(addr, request, timeout, None).await
    }

    /// [`Pool::call`] for a reply that may be large: `timeout` bounds connecting, sending
    /// and the wait for the reply to start; a reply that is arriving when it runs out gets
    /// `per_mib` more per MiB of its frame ([`Client::call_sized`]).
    pub async fn call_sized(
        &mut self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
        per_mib: Duration,
    ) -> Result<Resp, WireError> {
        self.call_with(addr, request, timeout, Some(per_mib)).await
    }

    async fn call_with(
        &mut self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
        per_mib: Option<Duration>,
    ) -> Result<Resp, WireError> {
        let kept = self.connections.remove(&addr);
        let (client, outcome) = attempt(
            kept,
            addr,
            self.protocol,
            self.max_frame,
            request,
            timeout,
            per_mib,
        )
        .await;
        if let Some(client) = client {
            self.connections.insert(addr, client);
        }
        outcome.map_err(CallFailure::into_error)
    }

    /// Closes every kept connection.
    pub fn clear(&mut self) {
        self.connections.clear();
    }
}

/// Kept connections for calls made at once: each call takes an idle connection to its
/// server or opens one, and gives it back afterwards; at most `max_idle` are kept per server
/// (so the connections open are at most the calls in flight plus those kept).
pub struct SharedPool<Req, Resp> {
    protocol: Protocol,
    max_frame: usize,
    max_idle: usize,
    idle: Mutex<HashMap<SocketAddr, Vec<Client<Req, Resp>>>>,
}

impl<Req: Serialize, Resp: DeserializeOwned> SharedPool<Req, Resp> {
    /// An empty pool speaking `protocol`, frames limited to `max_frame` bytes, keeping at
    /// most `max_idle` idle connections per server.
    pub fn new(protocol: Protocol, max_frame: usize, max_idle: usize) -> Self {
        SharedPool {
            protocol,
            max_frame,
            max_idle,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// [`Pool::call`], for one of many calls at once.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, WireError> {
        self.try_call(addr, request, timeout)
            .await
            .map_err(CallFailure::into_error)
    }

    /// [`SharedPool::call`], saying on failure whether the request may have reached the
    /// server ([`CallFailure`]): what a caller needs to resend a request that is not
    /// idempotent only when that is safe.
    pub async fn try_call(
        &self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallFailure> {
        self.call_with(addr, request, timeout, None).await
    }

    /// [`Pool::call_sized`], for one of many calls at once.
    pub async fn call_sized(
        &self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
        per_mib: Duration,
    ) -> Result<Resp, WireError> {
        self.call_with(addr, request, timeout, Some(per_mib))
            .await
            .map_err(CallFailure::into_error)
    }

    async fn call_with(
        &self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
        per_mib: Option<Duration>,
    ) -> Result<Resp, CallFailure> {
        let kept = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&addr)
            .and_then(Vec::pop);
        let (client, outcome) = attempt(
            kept,
            addr,
            self.protocol,
            self.max_frame,
            request,
            timeout,
            per_mib,
        )
        .await;
        if let Some(client) = client {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let kept = idle.entry(addr).or_default();
            if kept.len() < self.max_idle {
                kept.push(client);
            }
        }
        outcome
    }

    /// Idle connections kept to `addr`.
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{serve, ServerConfig, DEFAULT_MAX_FRAME};

    const ECHO: Protocol = Protocol {
        service: "echo",
        version: 1,
    };

    /// A server answering `n` with `n + 1`: its address, what stops it, and its task.
    async fn echo_server() -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ECHO,
            ServerConfig::default(),
            |n: u64| Some(n + 1),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn calls_reuse_a_connection_and_reconnect_after_a_failure() {
        let (addr, stop, server) = echo_server().await;
        let mut pool: Pool<u64, u64> = Pool::new(ECHO, 1 << 16);
        let timeout = Duration::from_secs(5);
        assert_eq!(pool.call(addr, &1, timeout).await.unwrap(), 2);
        assert_eq!(pool.call(addr, &2, timeout).await.unwrap(), 3);
        assert_eq!(pool.connections.len(), 1, "one connection kept");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            pool.call(addr, &3, timeout).await.is_err(),
            "the server is gone"
        );
        assert!(
            pool.connections.is_empty(),
            "a failed connection is forgotten"
        );
    }

    /// A kept connection the server has closed is not written to: the pool connects again,
    /// and when that is refused the call fails as [`CallFailure::NotSent`], so a caller may
    /// resend a request that is not idempotent. One sent and not answered is `MaybeSent`.
    #[tokio::test]
    async fn a_request_that_never_left_is_told_apart_from_one_unanswered() {
        let (addr, stop, server) = echo_server().await;
        let pool: SharedPool<u64, u64> = SharedPool::new(ECHO, 1 << 16, 4);
        let timeout = Duration::from_secs(5);
        assert_eq!(pool.try_call(addr, &1, timeout).await.unwrap(), 2);
        assert_eq!(pool.idle(addr), 1, "the connection is kept");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        match pool.try_call(addr, &2, timeout).await {
            Err(CallFailure::NotSent(_)) => {}
            other => panic!("the server closed the kept connection and is gone: {other:?}"),
        }

        // A server that takes the request and never answers: the outcome is unknown.
        let (silent, _stop) = blob_server().await;
        let pool: SharedPool<u32, Vec<u8>> = SharedPool::new(BLOB, 1 << 16, 4);
        match pool.try_call(silent, &0, Duration::from_millis(200)).await {
            Err(CallFailure::MaybeSent(WireError::Timeout(_))) => {}
            other => panic!("an unanswered request: {other:?}"),
        }
    }

    const BLOB: Protocol = Protocol {
        service: "blob",
        version: 1,
    };

    /// A server answering `n` with `n` bytes (and 0 with nothing at all: a lost reply).
    async fn blob_server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            BLOB,
            ServerConfig::default(),
            |n: u32| (n > 0).then(|| vec![7u8; n as usize]),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop)
    }

    /// A proxy to `to` that passes requests on at once and replies at `bytes_per_sec`: a
    /// slow link.
    async fn slow_link(to: SocketAddr, bytes_per_sec: u64) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_server, mut to_server) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let secs = n as f64 / bytes_per_sec as f64;
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_large_reply_still_arriving_gets_time_for_its_size_and_a_silent_server_does_not() {
        let (server, _stop) = blob_server().await;
        // 3 MiB at 4 MiB/s take 0.75 s.
        let link = slow_link(server, 4 << 20).await;
        let timeout = Duration::from_millis(300);
        let per_mib = Duration::from_secs(5);
        let size = 3u32 << 20;
        let mut pool: Pool<u32, Vec<u8>> = Pool::new(BLOB, DEFAULT_MAX_FRAME);
        assert!(
            matches!(
                pool.call(link, &size, timeout).await,
                Err(WireError::Timeout(_))
            ),
            "call bounds the whole transfer by its timeout"
        );
        let reply = pool.call_sized(link, &size, timeout, per_mib).await;
        assert_eq!(reply.map(|r| r.len()).ok(), Some(size as usize));
        let again = pool.call_sized(link, &16, timeout, per_mib).await;
        assert_eq!(again.map(|r| r.len()).ok(), Some(16));

        // No reply at all: given up on after the timeout, not the size budget.
        let started = std::time::Instant::now();
        assert!(matches!(
            pool.call_sized(server, &0, timeout, per_mib).await,
            Err(WireError::Timeout(_))
        ));
        assert!(started.elapsed() < per_mib, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_shared_pool_serves_calls_at_once_and_keeps_a_bounded_number() {
        let (server, _stop) = blob_server().await;
        let pool: SharedPool<u32, Vec<u8>> = SharedPool::new(BLOB, DEFAULT_MAX_FRAME, 2);
        let timeout = Duration::from_secs(5);
        let (a, b, c, d) = tokio::join!(
            pool.call(server, &1, timeout),
            pool.call(server, &2, timeout),
            pool.call(server, &3, timeout),
            pool.call(server, &4, timeout),
        );
        let lens: Vec<usize> = [a, b, c, d].into_iter().map(|r| r.unwrap().len()).collect();
        assert_eq!(lens, [1, 2, 3, 4]);
        assert_eq!(pool.idle(server), 2, "at most max_idle kept");
        assert_eq!(pool.call(server, &5, timeout).await.unwrap().len(), 5);
        assert_eq!(pool.idle(server), 2);
    }
}
