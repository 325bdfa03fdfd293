//! The server's resource limits ([`ServerConfig`]): connection count, idle, read and write
//! timeouts. Each test configures one limit small (the others out of the way), drives a
//! misbehaving client into it and waits, with a bounded deadline, for the server to act.

mod common;

use std::time::Duration;

use common::{bounded, read_until_closed, Logs, Req, Resp, TestServer, ECHO, WAIT};
use flotilla_wire::{
    read_frame, write_frame, Client, Reply, Request, ServerConfig, WireError, DEFAULT_MAX_FRAME,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Level;

/// Long enough never to fire during a test.
const NEVER: Duration = Duration::from_secs(3600);

/// A configuration where only the limits a test sets can fire.
fn patient() -> ServerConfig {
    ServerConfig {
        handshake_timeout: NEVER,
        idle_timeout: NEVER,
        read_timeout: NEVER,
        write_timeout: NEVER,
        ..ServerConfig::default()
    }
}

/// The message of the one `Reply::Err` (id 0) frame the server sent before closing.
fn farewell(bytes: &[u8]) -> String {
    assert!(bytes.len() > 4, "no last frame before the close: {bytes:?}");
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 4 + len, "exactly one frame, then the close");
    match postcard::from_bytes::<Reply<Resp>>(&bytes[4..]).unwrap() {
        Reply::Err { id: 0, message } => message,
        other => panic!("unexpected last frame {other:?}"),
    }
}

async fn connect(server: &TestServer) -> Result<Client<Req, Resp>, WireError> {
    bounded(Client::connect(server.addr, ECHO, DEFAULT_MAX_FRAME)).await
}

/// Connects, retrying while the server refuses for its connection limit, until [`WAIT`].
async fn connect_once_a_slot_is_free(server: &TestServer) -> Client<Req, Resp> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect(server).await {
            Ok(client) => return client,
            Err(WireError::Handshake(m)) if m.contains("connection limit") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no connection slot freed within {WAIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected connect error {e}"),
        }
    }
}

#[tokio::test]
async fn a_connection_over_the_limit_is_refused_with_a_clear_error() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig {
        max_connections: 2,
        ..patient()
    })
    .await;
    let mut first = connect(&server).await.unwrap();
    let _second = connect(&server).await.unwrap();

    let third = connect(&server).await;
    match &third {
        Err(WireError::Handshake(m)) => assert!(
            m.contains("refused") && m.contains("connection limit (2 connections)"),
            "{m}"
        ),
        other => panic!("the third connection was not refused: {other:?}"),
    }
    logs.wait_for(Level::WARN, "at the connection limit").await;

    // The connections within the limit are unaffected, and closing one frees its slot.
    assert_eq!(
        first.call(&Req::Add(1, 2), WAIT).await.unwrap(),
        Resp::Sum(3)
    );
    drop(first);
    let mut again = connect_once_a_slot_is_free(&server).await;
    assert_eq!(
        again.call(&Req::Add(2, 2), WAIT).await.unwrap(),
        Resp::Sum(4)
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..patient()
    })
    .await;

    // Silent right after the handshake.
    let mut silent = server.raw().await;
    let message = farewell(&read_until_closed(&mut silent).await);
    assert!(message.contains("idle for 200ms"), "{message}");
    logs.wait_for(Level::DEBUG, "idle connection, closing")
        .await;

    // Silent after a reply: the timer runs from the last reply.
    let mut once = server.raw().await;
    let request = Request {
        id: 1,
        body: Req::Add(1, 1),
    };
    write_frame(&mut once, &request, DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    let reply: Reply<Resp> = bounded(read_frame(&mut once, DEFAULT_MAX_FRAME))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply,
        Reply::Ok {
            id: 1,
            body: Resp::Sum(2)
        }
    );
    let message = farewell(&read_until_closed(&mut once).await);
    assert!(message.contains("idle"), "{message}");

    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_sent_slowly_is_cut_off_after_the_read_timeout() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig {
        read_timeout: Duration::from_millis(200),
        ..patient()
    })
    .await;
    let mut bystander = server.client().await;

    // The start of a request, and then nothing more (the connection stays open).
    let mut slow = server.raw().await;
    slow.write_all(&100u32.to_be_bytes()).await.unwrap();
    slow.write_all(&[1; 10]).await.unwrap();
    let message = farewell(&read_until_closed(&mut slow).await);
    assert!(message.contains("not complete within 200ms"), "{message}");
    logs.wait_for(Level::WARN, "not complete in time").await;

    assert_eq!(
        bystander.call(&Req::Add(3, 4), WAIT).await.unwrap(),
        Resp::Sum(7)
    );
    server.stop().await;
}

/// A raw connection that asks for far more reply bytes than the socket buffers hold, and
/// never reads a byte of them.
async fn flood_without_reading(server: &TestServer) -> TcpStream {
    let mut stream = server.raw().await;
    for id in 1..=32 {
        let request = Request {
            id,
            body: Req::Bytes(4 << 20),
        };
        write_frame(&mut stream, &request, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }
    stream
}

#[tokio::test]
async fn a_client_that_never_reads_blocks_no_one() {
    let server = TestServer::start(patient()).await;
    let mut before = server.client().await;
    let _stuck = flood_without_reading(&server).await;
    // 128 MiB of replies cannot all be buffered: its connection's task is stuck writing,
    // and everyone else is served, old and new connections alike.
    for n in 0..20 {
        assert_eq!(
            before.call(&Req::Add(n, 1), WAIT).await.unwrap(),
            Resp::Sum(n + 1)
        );
    }
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_after_the_write_timeout() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig {
        max_connections: 1,
        write_timeout: Duration::from_millis(200),
        ..patient()
    })
    .await;
    let _stuck = flood_without_reading(&server).await;
    logs.wait_for(Level::WARN, "does not take its reply").await;
    // Its slot is free again (the only one: the stuck connection is really gone).
    let mut next = connect_once_a_slot_is_free(&server).await;
    assert_eq!(
        next.call(&Req::Add(1, 1), WAIT).await.unwrap(),
        Resp::Sum(2)
    );
    server.stop().await;
}
