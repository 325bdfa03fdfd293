//! Connections to many servers of one protocol, opened on first use and kept: what a clerk of
//! a replicated service (or a server calling another group's servers) holds.
//!
//! [`Pool::call`] bounds the whole attempt — connect, handshake, request and reply — by one
//! timeout, and forgets a connection that failed, so the next call to that server connects
//! afresh. One call at a time (`&mut self`), like [`Client`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Client, Protocol, WireError};

/// Kept connections, one per server address.
pub struct Pool<Req, Resp> {
    protocol: Protocol,
    max_frame: usize,
    connections: HashMap<SocketAddr, Client<Req, Resp>>,
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
        let attempt = async {
            if self.connections.get(&addr).is_none_or(|c| !c.is_usable()) {
                let client = Client::connect(addr, self.protocol, self.max_frame).await?;
                self.connections.insert(addr, client);
            }
            let client = self.connections.get_mut(&addr).expect("connected above");
            client.call(request, timeout).await
        };
        let outcome = tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(WireError::Timeout(timeout)));
        if outcome.is_err() {
            self.connections.remove(&addr);
        }
        outcome
    }

    /// Closes every kept connection.
    pub fn clear(&mut self) {
        self.connections.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{serve, ServerConfig};

    const ECHO: Protocol = Protocol {
        service: "echo",
        version: 1,
    };

    #[tokio::test]
    async fn calls_reuse_a_connection_and_reconnect_after_a_failure() {
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
}
