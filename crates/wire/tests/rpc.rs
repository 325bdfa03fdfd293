//! The request/response path over real loopback sockets: replies, concurrency, lost and late
//! replies, errors for one request, and shutdown.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, gated_handler, handler, Req, Resp, TestServer, WAIT};
use flotilla_wire::DEFAULT_MAX_FRAME;
use flotilla_wire::{read_frame, write_frame, Client, Reply, Request, ServerConfig, WireError};

#[tokio::test]
async fn round_trip() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut client = server.client().await;
    for i in 0..500 {
        let got = client.call(&Req::Add(i, 1), WAIT).await.unwrap();
        assert_eq!(got, Resp::Sum(i + 1));
    }
    let text = "héllo, flotilla ⛵".to_string();
    let got = client.call(&Req::Echo(text.clone()), WAIT).await.unwrap();
    assert_eq!(got, Resp::Echo(text));
    // A reply far larger than the read buffer.
    let got = client.call(&Req::Bytes(3 << 20), WAIT).await.unwrap();
    assert_eq!(got, Resp::Bytes(vec![0xAB; 3 << 20]));
    assert!(client.is_usable());
    assert_eq!(client.peer_addr(), server.addr);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients() {
    const CLIENTS: u64 = 16;
    const CALLS: u64 = 300;
    let handled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&handled);
    let server = TestServer::start_with(ServerConfig::default(), move |req| {
        counter.fetch_add(1, Ordering::Relaxed);
        handler(req)
    })
    .await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS {
                let got = client.call(&Req::Add(c * 1_000_000, i), WAIT).await;
                assert_eq!(got.unwrap(), Resp::Sum(c * 1_000_000 + i));
            }
        }));
    }
    for task in tasks {
        bounded(task).await.unwrap();
    }
    assert_eq!(handled.load(Ordering::Relaxed), CLIENTS * CALLS);
    server.stop().await;
}

#[tokio::test]
async fn dropped_reply_times_out_and_the_connection_stays_in_step() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut client = server.client().await;
    for round in 0..3 {
        let lost = client
            .call(&Req::DropReply, Duration::from_millis(50))
            .await;
        assert!(matches!(lost, Err(WireError::Timeout(_))), "{lost:?}");
        assert!(client.is_usable());
        let text = format!("after lost reply {round}");
        let got = client.call(&Req::Echo(text.clone()), WAIT).await.unwrap();
        assert_eq!(got, Resp::Echo(text));
    }
    server.stop().await;
}

#[tokio::test]
async fn dropped_reply_leaves_nothing_in_the_stream() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut raw = server.raw().await;
    let first = Request {
        id: 1,
        body: Req::DropReply,
    };
    let second = Request {
        id: 2,
        body: Req::Echo("second".into()),
    };
    write_frame(&mut raw, &first, DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    write_frame(&mut raw, &second, DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    // The first frame back is the reply to the second request: nothing was sent for the first.
    let reply: Reply<Resp> = bounded(read_frame(&mut raw, DEFAULT_MAX_FRAME))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply,
        Reply::Ok {
            id: 2,
            body: Resp::Echo("second".into())
        }
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reply_is_discarded_not_paired_with_the_next_request() {
    let (handler, open_gate) = gated_handler();
    let server = TestServer::start_with(ServerConfig::default(), handler).await;
    let mut client = server.client().await;
    // The handler is still working when the call gives up ...
    let late = client.call(&Req::Gate, Duration::from_millis(50)).await;
    assert!(matches!(late, Err(WireError::Timeout(_))), "{late:?}");
    // ... then finishes, and its reply arrives ahead of the next one.
    open_gate.send(()).unwrap();
    let got = client.call(&Req::Echo("next".into()), WAIT).await.unwrap();
    assert_eq!(got, Resp::Echo("next".into()));
    let got = client.call(&Req::Add(1, 2), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(3));
    server.stop().await;
}

#[tokio::test]
async fn cancelled_call_does_not_desynchronise_the_connection() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut client = server.client().await;
    // Drop a call future after its first poll: it has sent its request and awaits the reply
    // (the server, on this same thread, has not run yet).
    let abandoned = Req::Echo("abandoned".into());
    {
        let call = client.call(&abandoned, WAIT);
        tokio::pin!(call);
        assert!(!futures_poll_once(call.as_mut()).await);
    }
    for i in 0..10 {
        let got = client.call(&Req::Add(i, i), WAIT).await.unwrap();
        assert_eq!(got, Resp::Sum(2 * i));
    }
    server.stop().await;
}

/// Polls a future once and reports whether it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx).is_ready())
    })
    .await
}

#[tokio::test]
async fn handler_panic_is_an_error_for_that_request_only() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut client = server.client().await;
    let got = client.call(&Req::Panic, WAIT).await;
    assert!(
        matches!(&got, Err(WireError::Remote(m)) if m.contains("test handler told to panic")),
        "{got:?}"
    );
    assert!(client.is_usable());
    let got = client.call(&Req::Add(2, 2), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(4));
    server.stop().await;
}

#[tokio::test]
async fn reply_over_the_server_limit_is_an_error_for_that_request_only() {
    let config = ServerConfig {
        max_frame: 1024,
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let got = client.call(&Req::Bytes(4096), WAIT).await;
    assert!(
        matches!(&got, Err(WireError::Remote(m)) if m.contains("exceeds the limit of 1024")),
        "{got:?}"
    );
    assert!(client.is_usable());
    let got = client.call(&Req::Bytes(100), WAIT).await.unwrap();
    assert_eq!(got, Resp::Bytes(vec![0xAB; 100]));
    server.stop().await;
}

#[tokio::test]
async fn request_over_the_client_limit_is_refused_before_sending() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut client = server.client_with_max(1024).await;
    let got = client.call(&Req::Echo("x".repeat(2000)), WAIT).await;
    assert!(
        matches!(got, Err(WireError::FrameTooLarge { max: 1024, .. })),
        "{got:?}"
    );
    assert!(client.is_usable());
    let got = client.call(&Req::Echo("small".into()), WAIT).await.unwrap();
    assert_eq!(got, Resp::Echo("small".into()));
    // A reply over the client's limit breaks the connection (its frame cannot be skipped).
    let got = client.call(&Req::Bytes(4096), WAIT).await;
    assert!(
        matches!(got, Err(WireError::FrameTooLarge { .. })),
        "{got:?}"
    );
    assert!(!client.is_usable());
    let got = client.call(&Req::Add(1, 1), WAIT).await;
    assert!(matches!(got, Err(WireError::Closed)), "{got:?}");
    server.stop().await;
}

#[tokio::test]
async fn request_over_the_server_limit_closes_that_connection_only() {
    let config = ServerConfig {
        max_frame: 1024,
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await;
    let mut other = server.client().await;
    let mut client = server.client().await;
    let got = client.call(&Req::Echo("x".repeat(2000)), WAIT).await;
    // The server says why before closing; if it closed with our bytes unread, the kernel may
    // report a reset instead.
    assert!(
        matches!(&got, Err(WireError::Remote(m)) if m.contains("exceeds the limit of 1024"))
            || matches!(&got, Err(WireError::Io(_))),
        "{got:?}"
    );
    assert!(!client.is_usable());
    let got = other.call(&Req::Add(1, 1), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(2));
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let server = TestServer::start(ServerConfig::default()).await;
    let addr = server.addr;
    let mut client = server.client().await;
    assert_eq!(
        client.call(&Req::Add(1, 1), WAIT).await.unwrap(),
        Resp::Sum(2)
    );
    server.stop().await;
    let got = client.call(&Req::Add(1, 1), WAIT).await;
    assert!(
        matches!(got, Err(WireError::Closed | WireError::Io(_))),
        "{got:?}"
    );
    assert!(!client.is_usable());
    let again = bounded(Client::<Req, Resp>::connect(
        addr,
        common::ECHO,
        DEFAULT_MAX_FRAME,
    ))
    .await;
    assert!(matches!(again, Err(WireError::Io(_))), "{again:?}");
}
