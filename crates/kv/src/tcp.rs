//! The KV service over TCP: a thin tokio driver around [`KvServer`] and [`ClerkCore`].
//!
//! The server handles one request at a time under a mutex (each handler call is a few
//! hash-map operations), which makes every operation atomic and the service linearizable.
//! `drop_replies` executes a request but withholds that share of replies, so exactly-once can
//! be watched working over a real network: the clerk times out, resends, and the server
//! answers the retry from its duplicate table.
//!
//! The clerk resends on a timeout over the same connection (late replies are matched by
//! request id and discarded), reconnects when the connection breaks, and gives up only after
//! its overall deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_wire::{Client, Protocol, ServerConfig, WireError, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

use crate::clerk::{Answer, Call, ClerkCore};
use crate::protocol::{ClientId, KvError, Reply, Request};
use crate::server::KvServer;

/// The KV service's wire protocol.
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-kv",
    version: 1,
};

/// How a real server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Share of replies to withhold after executing the request, in [0, 1).
    pub drop_replies: f64,
    /// Seeds the reply-dropping decisions.
    pub seed: u64,
    pub max_frame: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            drop_replies: 0.0,
            seed: 0,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// A thread-safe coin for dropping replies: SplitMix64 over an atomic counter.
struct Coin {
    counter: AtomicU64,
    seed: u64,
    threshold: u64,
}

impl Coin {
    fn new(seed: u64, probability: f64) -> Self {
        Coin {
            counter: AtomicU64::new(0),
            seed,
            threshold: (probability.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    fn flip(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut z = self.seed.wrapping_add(
            self.counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) < self.threshold
    }
}

/// Serves a fresh KV store on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    assert!(
        (0.0..1.0).contains(&options.drop_replies),
        "drop_replies must be in [0, 1)"
    );
    let server = Arc::new(Mutex::new(KvServer::new()));
    let coin = Coin::new(options.seed, options.drop_replies);
    let config = ServerConfig {
        max_frame: options.max_frame,
        ..ServerConfig::default()
    };
    let handler = move |request: Request| {
        let reply = server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(request);
        (!coin.flip()).then_some(reply)
    };
    flotilla_wire::serve(listener, PROTOCOL, config, handler, shutdown).await
}

/// Why a TCP clerk gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClerkError {
    #[error("no reply from {addr} within {waited:?} ({attempts} attempts; last error: {last})")]
    GaveUp {
        addr: SocketAddr,
        waited: Duration,
        attempts: u32,
        last: String,
    },
    #[error("the server refused the request: {0}")]
    Refused(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: WireError,
    },
}

/// How patient a clerk is.
#[derive(Clone, Copy, Debug)]
pub struct ClerkOptions {
    /// Wait this long for one reply before resending.
    pub attempt_timeout: Duration,
    /// Give up after this long in total for one operation.
    pub deadline: Duration,
}

impl Default for ClerkOptions {
    fn default() -> Self {
        ClerkOptions {
            attempt_timeout: Duration::from_millis(100),
            deadline: Duration::from_secs(30),
        }
    }
}

/// A clerk talking to a real server.
pub struct TcpClerk {
    core: ClerkCore,
    addr: SocketAddr,
    options: ClerkOptions,
    connection: Option<Client<Request, Reply>>,
    /// Requests resent because a reply did not come in time (for statistics).
    pub resends: u64,
}

fn random_client_id() -> ClientId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

impl TcpClerk {
    /// Connects to the server at `addr` (the first connection must succeed).
    pub async fn connect(addr: SocketAddr, options: ClerkOptions) -> Result<Self, ClerkError> {
        let connection = tokio::time::timeout(
            options.deadline,
            Client::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME),
        )
        .await
        .unwrap_or(Err(WireError::Timeout(options.deadline)))
        .map_err(|source| ClerkError::Connect { addr, source })?;
        Ok(TcpClerk {
            core: ClerkCore::new(random_client_id()),
            addr,
            options,
            connection: Some(connection),
            resends: 0,
        })
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    async fn run(&mut self, mut call: Call) -> Result<Answer, ClerkError> {
        let started = Instant::now();
        let mut last = String::from("none");
        while started.elapsed() < self.options.deadline {
            if self.connection.as_ref().is_none_or(|c| !c.is_usable()) {
                let attempt = tokio::time::timeout(
                    self.options.attempt_timeout,
                    Client::connect(self.addr, PROTOCOL, DEFAULT_MAX_FRAME),
                );
                match attempt.await {
                    Ok(Ok(c)) => self.connection = Some(c),
                    Ok(Err(e)) => {
                        last = e.to_string();
                        tokio::time::sleep(self.options.attempt_timeout / 4).await;
                        continue;
                    }
                    Err(_) => {
                        last = "connect timed out".into();
                        continue;
                    }
                }
            }
            let connection = self.connection.as_mut().expect("connected above");
            if call.attempts() > 0 {
                self.resends += 1;
            }
            let request = call.request().clone();
            match connection
                .call(&request, self.options.attempt_timeout)
                .await
            {
                Ok(reply) => {
                    if let Some(answer) = self.core.finish(&call, reply) {
                        return Ok(answer);
                    }
                }
                Err(WireError::Remote(message)) => return Err(ClerkError::Refused(message)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(ClerkError::GaveUp {
            addr: self.addr,
            waited: started.elapsed(),
            attempts: call.attempts(),
            last,
        })
    }

    /// The value and version of `key`, or `NoKey`.
    pub async fn get(&mut self, key: &str) -> Result<Result<(String, u64), KvError>, ClerkError> {
        let call = self.core.get(key);
        match self.run(call).await? {
            Answer::Get(result) => Ok(result),
            other => unreachable!("get answered {other:?}"),
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), ClerkError> {
        let call = self.core.put(key, value);
        self.run(call).await.map(|_| ())
    }

    /// Appends and returns the value before.
    pub async fn append(&mut self, key: &str, value: &str) -> Result<String, ClerkError> {
        let call = self.core.append(key, value);
        match self.run(call).await? {
            Answer::Append(old) => Ok(old),
            other => unreachable!("append answered {other:?}"),
        }
    }

    /// The 2025 conditional put.
    pub async fn put_if_version(
        &mut self,
        key: &str,
        value: &str,
        version: u64,
    ) -> Result<Result<(), KvError>, ClerkError> {
        let call = self.core.put_if_version(key, value, version);
        match self.run(call).await? {
            Answer::PutIfVersion(result) => Ok(result),
            other => unreachable!("put answered {other:?}"),
        }
    }
}
