//! The handshake: a client of another service, version or magic is turned away with a clear
//! [`WireError::Handshake`] (and a warning on the server, which keeps serving); a client
//! facing something that is not a Flotilla server says so.

mod common;

use common::{bounded, read_until_closed, Logs, Req, Resp, TestServer, ECHO};
use flotilla_wire::{
    read_frame, write_frame, Client, Hello, HelloReply, Protocol, ServerConfig, WireError,
    DEFAULT_MAX_FRAME, MAGIC,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Level;

async fn connect(addr: std::net::SocketAddr, protocol: Protocol) -> Result<(), WireError> {
    Client::<Req, Resp>::connect(addr, protocol, DEFAULT_MAX_FRAME)
        .await
        .map(drop)
}

fn handshake_message(got: Result<(), WireError>) -> String {
    match got {
        Err(WireError::Handshake(message)) => message,
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_service_is_refused() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let other = Protocol {
        service: "mapreduce",
        version: ECHO.version,
    };
    let message = handshake_message(bounded(connect(server.addr, other)).await);
    assert!(message.contains("wrong service"), "{message}");
    assert!(message.contains("\"echo-test\""), "{message}");
    assert!(message.contains("\"mapreduce\""), "{message}");
    logs.wait_for(Level::WARN, "wrong service").await;
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_version_is_refused() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let newer = Protocol {
        service: ECHO.service,
        version: ECHO.version + 1,
    };
    let message = handshake_message(bounded(connect(server.addr, newer)).await);
    assert!(message.contains("wrong protocol version"), "{message}");
    assert!(
        message.contains("v3") && message.contains("v4"),
        "{message}"
    );
    logs.wait_for(Level::WARN, "wrong protocol version").await;
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_magic_is_refused() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut raw = bounded(TcpStream::connect(server.addr)).await.unwrap();
    let mut hello = Hello::new(ECHO);
    hello.magic = *b"NOTFLOTI";
    write_frame(&mut raw, &hello, DEFAULT_MAX_FRAME)
        .await
        .unwrap();
    let reply: HelloReply = bounded(read_frame(&mut raw, DEFAULT_MAX_FRAME))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.magic, MAGIC);
    let why = reply.refusal.expect("refused");
    assert!(
        why.contains("NOTFLOTI") && why.contains("FLOTILLA"),
        "{why}"
    );
    assert!(
        read_until_closed(&mut raw).await.is_empty(),
        "closed after the refusal"
    );
    logs.wait_for(Level::WARN, "not a Flotilla client").await;
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn non_flotilla_client_is_turned_away() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut raw = bounded(TcpStream::connect(server.addr)).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // "GET " read as a length is far over the handshake limit.
    let bytes = read_until_closed(&mut raw).await;
    if !bytes.is_empty() {
        let reply: HelloReply = postcard::from_bytes(&bytes[4..]).unwrap();
        assert!(reply.refusal.unwrap().contains("not a Flotilla hello"));
    }
    logs.wait_for(Level::WARN, "not a Flotilla hello").await;
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn server_with_wrong_magic_is_not_a_flotilla_server() {
    let (addr, fake) = common::fake_server(|mut stream| async move {
        let _: Option<Hello> = read_frame(&mut stream, DEFAULT_MAX_FRAME).await.unwrap();
        let reply = HelloReply {
            magic: *b"XXXXXXXX",
            service: ECHO.service.into(),
            version: ECHO.version,
            refusal: None,
        };
        write_frame(&mut stream, &reply, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    })
    .await;
    let message = handshake_message(bounded(connect(addr, ECHO)).await);
    assert!(message.contains("not a Flotilla server"), "{message}");
    assert!(message.contains("XXXXXXXX"), "{message}");
    bounded(fake).await.unwrap();
}

#[tokio::test]
async fn server_speaking_another_protocol_is_not_a_flotilla_server() {
    let (addr, fake) = common::fake_server(|mut stream| async move {
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
    })
    .await;
    let message = handshake_message(bounded(connect(addr, ECHO)).await);
    assert!(message.contains("not a Flotilla server"), "{message}");
    bounded(fake).await.unwrap();
}

#[tokio::test]
async fn server_closing_without_an_answer_fails_the_handshake() {
    let (addr, fake) = common::fake_server(|stream| async move { drop(stream) }).await;
    let got = bounded(connect(addr, ECHO)).await;
    // The close may come before or after our hello is written; either way it is reported.
    match got {
        Err(WireError::Handshake(message)) => {
            assert!(message.contains("without answering"), "{message}")
        }
        Err(WireError::Io(_)) => {}
        other => panic!("{other:?}"),
    }
    bounded(fake).await.unwrap();
}
