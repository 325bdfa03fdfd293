//! Bad frames from raw sockets: each ends its own connection, with a warning in the log, and
//! the server goes on serving everyone else.

mod common;

use common::{bounded, read_until_closed, Logs, Req, Resp, TestServer, ECHO, WAIT};
use flotilla_wire::{
    read_frame, write_frame, Client, Hello, Reply, Request, ServerConfig, WireError,
    DEFAULT_MAX_FRAME, MAGIC,
};
use tokio::io::AsyncWriteExt;
use tracing::Level;

/// The server's last frame on a connection it closed for a bad frame, if it got through.
fn farewell(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 4 + len, "exactly one frame, then the close");
    match postcard::from_bytes::<Reply<Resp>>(&bytes[4..]).unwrap() {
        Reply::Err { id: 0, message } => Some(message),
        other => panic!("unexpected last frame {other:?}"),
    }
}

#[tokio::test]
async fn oversized_frame_closes_that_connection_only() {
    let (logs, _guard) = Logs::capture();
    let config = ServerConfig {
        max_frame: 1000,
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await;
    let mut bystander = server.client().await;

    let mut raw = server.raw().await;
    raw.write_all(&1001u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[0; 10]).await.unwrap(); // the start of a payload that is never finished
    let bytes = read_until_closed(&mut raw).await;
    if let Some(message) = farewell(&bytes) {
        assert!(
            message.contains("1001 bytes exceeds the limit of 1000"),
            "{message}"
        );
    }
    logs.wait_for(Level::WARN, "exceeds the limit").await;

    let got = bystander.call(&Req::Add(1, 2), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(3));
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_payload_closes_that_connection_only() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut bystander = server.client().await;

    // A frame of valid length whose payload is no request: a varint that never ends.
    let mut raw = server.raw().await;
    raw.write_all(&16u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[0xFF; 16]).await.unwrap();
    let bytes = read_until_closed(&mut raw).await;
    let message = farewell(&bytes).expect("the whole frame was read, so the reason gets out");
    assert!(message.contains("bad request frame"), "{message}");
    logs.wait_for(Level::WARN, "bad request frame").await;

    // A good request with bytes left over.
    let mut raw = server.raw().await;
    let mut payload = postcard::to_stdvec(&Request {
        id: 1,
        body: Req::Add(1, 1),
    })
    .unwrap();
    payload.extend([0, 0]);
    raw.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&payload).await.unwrap();
    let message = farewell(&read_until_closed(&mut raw).await).unwrap();
    assert!(message.contains("2 bytes left over"), "{message}");

    // A request of another service's type: an enum variant this one does not have.
    let mut raw = server.raw().await;
    write_frame(
        &mut raw,
        &Request {
            id: 1,
            body: (200u8, "x"),
        },
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    assert!(farewell(&read_until_closed(&mut raw).await).is_some());

    let got = bystander.call(&Req::Add(3, 4), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(7));
    server.assert_serving().await;
    server.stop().await;
}

/// Random payloads of valid length: whatever each decodes to, nothing panics, each connection
/// ends when the sender closes, and the server keeps serving.
#[tokio::test]
async fn random_payloads_never_hurt_the_server() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..50 {
        let len = (next() % 64) as usize;
        let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut raw = server.raw().await;
        raw.write_all(&(len as u32).to_be_bytes()).await.unwrap();
        raw.write_all(&payload).await.unwrap();
        raw.shutdown().await.unwrap();
        read_until_closed(&mut raw).await;
    }
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn truncated_frame_is_handled() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut bystander = server.client().await;

    // After the handshake: the length says 100, 10 bytes come, then the close.
    let mut raw = server.raw().await;
    raw.write_all(&100u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[1; 10]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert!(read_until_closed(&mut raw).await.is_empty());
    logs.wait_for(Level::WARN, "in the middle of a frame").await;

    // During the handshake: half a hello.
    let mut raw = bounded(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let hello = postcard::to_stdvec(&Hello::new(ECHO)).unwrap();
    raw.write_all(&(hello.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&hello[..5]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert!(read_until_closed(&mut raw).await.is_empty());

    // Inside the length field.
    let mut raw = server.raw().await;
    raw.write_all(&[0, 0]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert!(read_until_closed(&mut raw).await.is_empty());

    let got = bystander.call(&Req::Add(5, 5), WAIT).await.unwrap();
    assert_eq!(got, Resp::Sum(10));
    server.assert_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn truncated_reply_fails_the_client_without_panic() {
    let (addr, fake) = common::fake_server(|mut stream| async move {
        let hello: Hello = read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hello.magic, MAGIC);
        let accept = flotilla_wire::HelloReply {
            magic: MAGIC,
            service: ECHO.service.into(),
            version: ECHO.version,
            refusal: None,
        };
        write_frame(&mut stream, &accept, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let _: Request<Req> = read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        stream.write_all(&100u32.to_be_bytes()).await.unwrap();
        stream.write_all(&[0; 10]).await.unwrap();
    })
    .await;
    let mut client: Client<Req, Resp> = bounded(Client::connect(addr, ECHO, DEFAULT_MAX_FRAME))
        .await
        .unwrap();
    let got = client.call(&Req::Add(1, 1), WAIT).await;
    assert!(matches!(got, Err(WireError::Truncated)), "{got:?}");
    assert!(!client.is_usable());
    bounded(fake).await.unwrap();
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let (logs, _guard) = Logs::capture();
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await;
    let mut silent = bounded(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    logs.wait_for(Level::WARN, "no handshake in time").await;
    server.assert_serving().await;
    server.stop().await;
}
