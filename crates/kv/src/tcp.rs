//! The KV service over TCP: a thin tokio driver around [`KvServer`] and [`ClerkCore`].
//!
//! The server handles one request at a time under a mutex (each handler call is a few
//! hash-map operations), which makes every operation atomic and the service linearizable.
//! `drop_replies` executes a request but withholds that share of replies, so exactly-once can
//! be watched working over a real network: the clerk times out, resends, and the server
//! answers the retry from its duplicate table.
//!
//! The clerk resends on a timeout over the same connection (late replies are matched by
//! request id and discarded), reconnects when the connection breaks (or the server closed it,
//! say for idling past its idle timeout), and gives up only after its overall deadline. A
//! write the server refuses for its size limits is an error at once ([`ClerkError::TooLarge`]),
//! as is a request too large for a frame.
//!
//! Limits ([`ServeOptions`]): the wire server's ([`ServerConfig`]: connections, handshake,
//! idle, read and write timeouts, frame size) and the store's ([`Limits`]: key and value
//! size). [`serve`] refuses to start with a value and key limit that a frame could not carry,
//! so every value the server accepts can also be read back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The wire server's limits, part of [`ServeOptions`].
pub use flotilla_wire::ServerConfig;
use flotilla_wire::{Client, Protocol, WireError, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

use crate::clerk::{Answer, Call, ClerkCore};
use crate::protocol::{ClientId, KvError, Reply, Request, TooLarge, MESSAGE_OVERHEAD};
use crate::server::{KvServer, Limits};

/// The KV service's wire protocol (v2: [`Reply::TooLarge`]).
pub const PROTOCOL: Protocol = Protocol {
    service: "flotilla-kv",
    version: 2,
};

/// How a real server runs.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Share of replies to withhold after executing the request, in [0, 1).
    pub drop_replies: f64,
    /// Seeds the reply-dropping decisions.
    pub seed: u64,
    /// Connections, timeouts and the frame size limit.
    pub wire: ServerConfig,
    /// Key and value size limits.
    pub limits: Limits,
}

impl ServeOptions {
    /// Checks that the options make sense together: a share of dropped replies in [0, 1),
    /// and frames large enough for the largest write the limits allow and for a `Get` reply
    /// carrying the largest value.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.drop_replies) {
            return Err(format!(
                "the share of dropped replies must be in [0, 1), not {}",
                self.drop_replies
            ));
        }
        let needed = self
            .limits
            .max_key
            .saturating_add(self.limits.max_value)
            .saturating_add(MESSAGE_OVERHEAD);
        if needed > self.wire.max_frame {
            return Err(format!(
                "a key of {} bytes with a value of {} bytes needs frames of {needed} bytes, over the frame limit of {} bytes: lower the key or value limit",
                self.limits.max_key, self.limits.max_value, self.wire.max_frame
            ));
        }
        Ok(())
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

/// Serves a fresh KV store on `listener` until `shutdown` resolves. Options that fail
/// [`ServeOptions::check`] are an `InvalidInput` error, before anything is served.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    options
        .check()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let server = Arc::new(Mutex::new(KvServer::with_limits(options.limits)));
    let coin = Coin::new(options.seed, options.drop_replies);
    let config = options.wire;
    let handler = move |request: Request| {
        let reply = server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(request);
        (!coin.flip()).then_some(reply)
    };
    flotilla_wire::serve(listener, PROTOCOL, config, handler, shutdown).await
}

/// Why a TCP clerk gave up. Each message includes its cause (there is no separate
/// `source`, so a chain-printing caller does not repeat it).
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
    /// The write breaks the server's size limits; nothing changed.
    #[error("write refused, nothing changed: {0}")]
    TooLarge(TooLarge),
    /// The request could not be sent at all (too large for a frame); nothing was sent.
    #[error("cannot send the request: {0}")]
    Unsendable(WireError),
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: SocketAddr, error: WireError },
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
    /// Connections opened after the first one, because the last one broke or the server
    /// closed it (for statistics).
    pub reconnects: u64,
}

/// A client id unlikely to be any other clerk's (random per process and call).
pub fn random_client_id() -> ClientId {
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
        .map_err(|error| ClerkError::Connect { addr, error })?;
        Ok(TcpClerk {
            core: ClerkCore::new(random_client_id()),
            addr,
            options,
            connection: Some(connection),
            resends: 0,
            reconnects: 0,
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
                    Ok(Ok(c)) => {
                        self.connection = Some(c);
                        self.reconnects += 1;
                    }
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
                Ok(reply) => match self.core.finish(&call, reply) {
                    Some(Answer::TooLarge(too_large)) => {
                        return Err(ClerkError::TooLarge(too_large))
                    }
                    Some(answer) => return Ok(answer),
                    None => {}
                },
                // For this request (the connection goes on): final.
                Err(WireError::Remote(message)) if connection.is_usable() => {
                    return Err(ClerkError::Refused(message))
                }
                // Refused before sending: no retry can fare better.
                Err(e @ (WireError::FrameTooLarge { .. } | WireError::Encode(_)))
                    if connection.is_usable() =>
                {
                    return Err(ClerkError::Unsendable(e))
                }
                // Anything else, including the server closing the connection with a reason
                // (an idle timeout, say): connect again and resend.
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

#[cfg(test)]
mod tests {
    use flotilla_wire::{read_frame, write_frame, Hello, HelloReply};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    /// The bound on every wait that should succeed; reaching it fails the test.
    const WAIT: Duration = Duration::from_secs(10);
    const NEVER: Duration = Duration::from_secs(3600);

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(WAIT, f)
            .await
            .expect("timed out waiting for something that should happen")
    }

    /// A server on a loopback port; stopped when dropped.
    struct TestServer {
        addr: SocketAddr,
        _stop: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Options where only what a test sets can fire.
    fn patient() -> ServeOptions {
        ServeOptions {
            wire: ServerConfig {
                handshake_timeout: NEVER,
                idle_timeout: NEVER,
                read_timeout: NEVER,
                write_timeout: NEVER,
                ..ServerConfig::default()
            },
            ..ServeOptions::default()
        }
    }

    async fn start(options: ServeOptions) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            _stop: stop,
            task,
        }
    }

    fn clerk_options() -> ClerkOptions {
        ClerkOptions {
            attempt_timeout: Duration::from_secs(1),
            deadline: WAIT,
        }
    }

    async fn clerk(server: &TestServer) -> TcpClerk {
        bounded(TcpClerk::connect(server.addr, clerk_options()))
            .await
            .unwrap()
    }

    /// Connects a clerk, retrying while the server refuses for its connection limit.
    async fn clerk_once_a_slot_is_free(server: &TestServer) -> TcpClerk {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match TcpClerk::connect(server.addr, clerk_options()).await {
                Ok(clerk) => return clerk,
                Err(e) if e.to_string().contains("connection limit") => {
                    assert!(tokio::time::Instant::now() < deadline, "no slot freed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("unexpected connect error: {e}"),
            }
        }
    }

    fn encoded_len<T: serde::Serialize>(message: &T) -> usize {
        postcard::to_stdvec(message).unwrap().len()
    }

    #[test]
    fn the_default_limits_fit_every_message_in_a_default_frame() {
        ServeOptions::default().check().unwrap();
        let limits = Limits::default();
        let key = "k".repeat(limits.max_key);
        let value = "v".repeat(limits.max_value);
        let put = flotilla_wire::Request {
            id: u64::MAX,
            body: Request::Put {
                key: key.clone(),
                value: value.clone(),
                client: u64::MAX,
                seq: u64::MAX,
            },
        };
        let get = flotilla_wire::Reply::Ok {
            id: u64::MAX,
            body: Reply::Value {
                value: value.clone(),
                version: u64::MAX,
            },
        };
        let put_if = flotilla_wire::Request {
            id: u64::MAX,
            body: Request::PutIfVersion {
                key: key.clone(),
                value: value.clone(),
                version: u64::MAX,
            },
        };
        for (what, len) in [
            ("put", encoded_len(&put)),
            ("get reply", encoded_len(&get)),
            ("put if version", encoded_len(&put_if)),
        ] {
            assert!(
                len <= key.len() + value.len() + MESSAGE_OVERHEAD,
                "{what}: {len} bytes"
            );
            assert!(len <= DEFAULT_MAX_FRAME, "{what}: {len} bytes");
        }
    }

    #[test]
    fn options_whose_frames_cannot_carry_a_value_are_refused() {
        let mut options = ServeOptions::default();
        options.limits.max_value = options.wire.max_frame;
        let why = options.check().unwrap_err();
        assert!(why.contains("over the frame limit"), "{why}");
        options.limits.max_value =
            options.wire.max_frame - options.limits.max_key - MESSAGE_OVERHEAD;
        options.check().unwrap();
        options.drop_replies = 1.0;
        assert!(options.check().is_err());
    }

    #[tokio::test]
    async fn serve_with_impossible_limits_is_an_error_not_a_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut options = ServeOptions::default();
        options.limits.max_value = usize::MAX;
        let got = bounded(serve(listener, options, std::future::pending())).await;
        let e = got.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    }

    #[tokio::test]
    async fn oversized_writes_are_refused_and_change_nothing() {
        let server = start(ServeOptions {
            limits: Limits {
                max_key: 8,
                max_value: 64,
            },
            ..patient()
        })
        .await;
        let mut clerk = clerk(&server).await;
        clerk.put("k", "v").await.unwrap();

        let got = clerk.put("k", &"x".repeat(65)).await;
        assert!(
            matches!(
                got,
                Err(ClerkError::TooLarge(TooLarge::Value { len: 65, max: 64 }))
            ),
            "{got:?}"
        );
        let message = got.unwrap_err().to_string();
        assert!(
            message.contains("nothing changed") && message.contains("limit of 64 bytes"),
            "{message}"
        );
        let got = clerk.append("k", &"x".repeat(64)).await;
        assert!(
            matches!(
                got,
                Err(ClerkError::TooLarge(TooLarge::Appended {
                    len: 65,
                    max: 64
                }))
            ),
            "{got:?}"
        );
        let got = clerk.put_if_version("k", &"x".repeat(65), 1).await;
        assert!(matches!(got, Err(ClerkError::TooLarge(_))), "{got:?}");
        let got = clerk.put("123456789", "v").await;
        assert!(
            matches!(
                got,
                Err(ClerkError::TooLarge(TooLarge::Key { len: 9, max: 8 }))
            ),
            "{got:?}"
        );
        // The stored value, its version and the absent key are as they were.
        assert_eq!(clerk.get("k").await.unwrap(), Ok(("v".to_string(), 1)));
        assert_eq!(clerk.get("123456789").await.unwrap(), Err(KvError::NoKey));
        // And the clerk goes on.
        assert_eq!(clerk.append("k", "w").await.unwrap(), "v");
    }

    #[tokio::test]
    async fn appends_stop_at_the_value_limit_and_the_value_can_always_be_read() {
        // The tightest limits a 1 KiB frame allows.
        let mut options = patient();
        options.wire.max_frame = 1024;
        options.limits = Limits {
            max_key: 8,
            max_value: 1024 - 8 - MESSAGE_OVERHEAD,
        };
        let max_value = options.limits.max_value;
        let server = start(options).await;
        let mut clerk = clerk(&server).await;
        let chunk = "0123456789".repeat(10);
        let mut expected = String::new();
        loop {
            assert!(
                expected.len() <= max_value,
                "the value grew past the limit to {} bytes",
                expected.len()
            );
            match clerk.append("kkkkkkkk", &chunk).await {
                Ok(old) => {
                    assert_eq!(old, expected);
                    expected.push_str(&chunk);
                }
                Err(ClerkError::TooLarge(TooLarge::Appended { len, max })) => {
                    assert_eq!(max as usize, max_value);
                    assert_eq!(len as usize, expected.len() + chunk.len());
                    break;
                }
                Err(e) => panic!("append failed: {e}"),
            }
            let (value, _) = clerk.get("kkkkkkkk").await.unwrap().unwrap();
            assert_eq!(value, expected);
        }
        assert!(expected.len() <= max_value && expected.len() + chunk.len() > max_value);
        let (value, _) = clerk.get("kkkkkkkk").await.unwrap().unwrap();
        assert_eq!(value, expected);
        // Topped up to the limit exactly, and still readable.
        let rest = "r".repeat(max_value - expected.len());
        clerk.append("kkkkkkkk", &rest).await.unwrap();
        let (value, _) = clerk.get("kkkkkkkk").await.unwrap().unwrap();
        assert_eq!(value.len(), max_value);
    }

    #[tokio::test]
    async fn a_clerk_reconnects_after_the_server_closes_its_idle_connection() {
        let mut options = patient();
        options.wire.idle_timeout = Duration::from_millis(50);
        let server = start(options).await;
        let mut clerk = clerk(&server).await;
        clerk.put("k", "v").await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut n = 0;
        // Pause past the idle timeout between operations until one has found its connection
        // closed; every operation succeeds regardless.
        while clerk.reconnects == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
            n += 1;
            assert_eq!(
                clerk.append("k", "+").await.unwrap(),
                format!("v{}", "+".repeat(n - 1))
            );
        }
        assert_eq!(
            clerk.get("k").await.unwrap().unwrap().0,
            format!("v{}", "+".repeat(n))
        );
    }

    #[tokio::test]
    async fn a_clerk_over_the_connection_limit_gets_a_clear_error() {
        let mut options = patient();
        options.wire.max_connections = 1;
        let server = start(options).await;
        let mut first = clerk(&server).await;
        let got = bounded(TcpClerk::connect(server.addr, clerk_options())).await;
        let message = match got {
            Err(e @ ClerkError::Connect { .. }) => e.to_string(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a second connection was accepted"),
        };
        assert!(
            message.contains("connection limit (1 connections)"),
            "{message}"
        );
        first.put("k", "v").await.unwrap();
        drop(first);
        let mut next = clerk_once_a_slot_is_free(&server).await;
        assert_eq!(next.get("k").await.unwrap(), Ok(("v".to_string(), 1)));
    }

    /// A raw connection that asks for the big value under `key` many times over and never
    /// reads a reply.
    async fn read_without_reading(server: &TestServer, key: &str) -> TcpStream {
        let mut stream = bounded(TcpStream::connect(server.addr)).await.unwrap();
        write_frame(&mut stream, &Hello::new(PROTOCOL), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let hello: HelloReply = bounded(read_frame(&mut stream, DEFAULT_MAX_FRAME))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hello.refusal, None);
        for id in 1..=64 {
            let request = flotilla_wire::Request {
                id,
                body: Request::Get {
                    key: key.into(),
                    ack: None,
                },
            };
            write_frame(&mut stream, &request, DEFAULT_MAX_FRAME)
                .await
                .unwrap();
        }
        stream
    }

    #[tokio::test]
    async fn a_client_that_never_reads_blocks_no_other_clerk() {
        let server = start(patient()).await;
        let mut clerk = clerk(&server).await;
        clerk.put("big", &"b".repeat(2 << 20)).await.unwrap();
        // 128 MiB of replies: more than the sockets buffer, so its connection stays stuck.
        let _stuck = read_without_reading(&server, "big").await;
        for n in 0..20 {
            clerk.put("k", &n.to_string()).await.unwrap();
            assert_eq!(clerk.get("k").await.unwrap().unwrap().0, n.to_string());
        }
        let mut another = clerk_once_a_slot_is_free(&server).await;
        assert_eq!(another.get("k").await.unwrap().unwrap().0, "19");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_closed_after_the_write_timeout() {
        let mut options = patient();
        options.wire.max_connections = 2;
        options.wire.write_timeout = Duration::from_millis(200);
        let server = start(options).await;
        let mut clerk = clerk(&server).await;
        clerk.put("big", &"b".repeat(2 << 20)).await.unwrap();
        // The clerk holds one slot, the client that never reads the other ...
        let _stuck = read_without_reading(&server, "big").await;
        // ... until the write timeout closes its connection: then a new clerk gets in.
        let mut next = clerk_once_a_slot_is_free(&server).await;
        assert_eq!(next.get("k").await.unwrap(), Err(KvError::NoKey));
        clerk.put("k", "v").await.unwrap();
    }
}
