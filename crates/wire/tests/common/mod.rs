//! Helpers shared by the integration tests: a test service, a server running it on a loopback
//! port, raw-socket helpers, and a capture of the server's log.

#![allow(dead_code)] // each test file uses its own subset

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_wire::{
    read_frame, serve, write_frame, Client, Hello, HelloReply, Protocol, ServerConfig,
    DEFAULT_MAX_FRAME,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The test service's protocol.
pub const ECHO: Protocol = Protocol {
    service: "echo-test",
    version: 3,
};

/// The bound on every wait that should succeed; reaching it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// `f`, or a test failure if it takes longer than [`WAIT`].
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("timed out waiting for something that should happen")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Req {
    Echo(String),
    Add(u64, u64),
    /// The handler drops the reply.
    DropReply,
    /// The handler panics.
    Panic,
    /// The handler replies with this many bytes.
    Bytes(u32),
    /// The handler waits for the test to open the gate (see [`gated_handler`]).
    Gate,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resp {
    Echo(String),
    Sum(u64),
    Bytes(Vec<u8>),
}

/// The test service (`Gate` answers at once).
pub fn handler(req: Req) -> Option<Resp> {
    match req {
        Req::Echo(s) => Some(Resp::Echo(s)),
        Req::Add(a, b) => Some(Resp::Sum(a + b)),
        Req::DropReply => None,
        Req::Panic => panic!("test handler told to panic"),
        Req::Bytes(n) => Some(Resp::Bytes(vec![0xAB; n as usize])),
        Req::Gate => Some(Resp::Echo("gate".into())),
    }
}

/// The test service whose `Gate` requests wait until the returned sender sends (or [`WAIT`]
/// passes). The handler blocks, in `block_in_place` so that the runtime's timers and sockets
/// keep going: use a multi-thread runtime.
pub fn gated_handler() -> (
    impl Fn(Req) -> Option<Resp> + Send + Sync + 'static,
    std::sync::mpsc::Sender<()>,
) {
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let handler = move |req: Req| match req {
        Req::Gate => {
            let opened =
                tokio::task::block_in_place(|| gate.lock().unwrap().recv_timeout(WAIT)).is_ok();
            Some(Resp::Echo(
                if opened {
                    "gate opened"
                } else {
                    "gate timed out"
                }
                .into(),
            ))
        }
        other => handler(other),
    };
    (handler, open)
}

/// A server of the test service on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, handler).await
    }

    pub async fn start_with<H>(config: ServerConfig, handler: H) -> Self
    where
        H: Fn(Req) -> Option<Resp> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, ECHO, config, handler, shutdown));
        TestServer { addr, stop, task }
    }

    /// Stops the server and checks that `serve` returned `Ok`.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        bounded(self.task).await.unwrap().unwrap();
    }

    /// A connected client of the test service.
    pub async fn client(&self) -> Client<Req, Resp> {
        self.client_with_max(DEFAULT_MAX_FRAME).await
    }

    pub async fn client_with_max(&self, max_frame: usize) -> Client<Req, Resp> {
        bounded(Client::connect(self.addr, ECHO, max_frame))
            .await
            .unwrap()
    }

    /// Checks that the server still answers a fresh client.
    pub async fn assert_serving(&self) {
        let mut client = self.client().await;
        let got = client.call(&Req::Add(20, 22), WAIT).await.unwrap();
        assert_eq!(got, Resp::Sum(42));
    }

    /// A raw socket past the handshake.
    pub async fn raw(&self) -> TcpStream {
        let mut stream = bounded(TcpStream::connect(self.addr)).await.unwrap();
        write_frame(&mut stream, &Hello::new(ECHO), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let reply: HelloReply = bounded(read_frame(&mut stream, DEFAULT_MAX_FRAME))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.refusal, None);
        stream
    }
}

/// Reads until the peer closes the connection (a reset counts as closed); returns the bytes.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match bounded(stream.read_to_end(&mut got)).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading until closed: {e}"),
    }
    got
}

/// A one-connection fake server on a loopback port running `script` on the connection.
pub async fn fake_server<F, Fut>(script: F) -> (SocketAddr, JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    (addr, task)
}

/// Captures the log lines (`LEVEL message key=value ...`) emitted on this thread while the
/// guard lives. With the default current-thread test runtime, that includes the server's.
#[derive(Clone)]
pub struct Logs(Arc<watch::Sender<Vec<String>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs(Arc::new(watch::Sender::new(Vec::new())));
        let guard = tracing::subscriber::set_default(Capture(logs.clone()));
        (logs, guard)
    }

    /// Waits (bounded) until a line at `level` containing `needle` has been logged.
    pub async fn wait_for(&self, level: tracing::Level, needle: &str) {
        let prefix = format!("{level} ");
        let mut rx = self.0.subscribe();
        let found = tokio::time::timeout(
            WAIT,
            rx.wait_for(|lines| {
                lines
                    .iter()
                    .any(|l| l.starts_with(&prefix) && l.contains(needle))
            }),
        )
        .await;
        if !matches!(found, Ok(Ok(_))) {
            panic!(
                "no {level} log containing {needle:?}; the log:\n{}",
                self.0.borrow().join("\n")
            );
        }
    }
}

struct Capture(Logs);

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0 .0.send_modify(|lines| lines.push(line.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
