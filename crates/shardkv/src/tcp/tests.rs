//! The clerk and a group's links against stand-in controller and group servers on loopback,
//! each answering what a real one would not.

use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_kv::Reply;
use flotilla_shardctrler::ctrler::CtrlAnswer;
use flotilla_shardctrler::tcp::{CtrlNodeReply, CtrlNodeRequest, PROTOCOL as CTRL_PROTOCOL};
use flotilla_wire::ServerConfig;

use super::*;

/// Serves `handler` on a free loopback port for the rest of the test's runtime.
async fn stand_in<Req, Resp>(
    protocol: Protocol,
    handler: impl Fn(Req) -> Option<Resp> + Send + Sync + 'static,
) -> SocketAddr
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flotilla_wire::serve(
        listener,
        protocol,
        ServerConfig::default(),
        handler,
        std::future::pending(),
    ));
    addr
}

/// A controller that answers every query with `config`.
async fn controller_answering(config: Config) -> SocketAddr {
    stand_in(CTRL_PROTOCOL, move |_: CtrlNodeRequest| {
        Some(CtrlNodeReply::Ctrl(Replied::Done(CtrlAnswer::Config(
            config.clone(),
        ))))
    })
    .await
}

/// Configuration 1: every shard at group 100, served at `server`.
fn all_at(server: SocketAddr) -> Config {
    let mut config = Config::empty(SHARDING.shards());
    config.num = 1;
    config.shards = vec![100; SHARDING.shards()];
    config.groups.insert(100, vec![server.to_string()]);
    config
}

fn options(deadline: Duration) -> ShardClerkOptions {
    ShardClerkOptions {
        deadline,
        ..ShardClerkOptions::default()
    }
}

#[test]
fn a_clerk_of_no_controller_is_an_error() {
    assert!(TcpShardClerk::new(vec![], 1, ShardClerkOptions::default()).is_err());
}

#[tokio::test]
async fn a_configuration_of_another_shape_from_the_controller_is_not_used() {
    let mut short = all_at(([127, 0, 0, 1], 9).into());
    short.shards.truncate(11);
    let mut stray = all_at(([127, 0, 0, 1], 9).into());
    stray.shards[5] = 7;
    for bad in [short, stray] {
        let ctrl = controller_answering(bad.clone()).await;
        let mut clerk = TcpCtrlClerk::new(vec![ctrl], 1).unwrap();
        let t = Duration::from_secs(5);
        let answer = query_controller(&mut clerk, Some(1), t, t).await;
        assert!(answer.is_err(), "{bad:?} taken: {answer:?}");
    }
    let good = all_at(([127, 0, 0, 1], 9).into());
    let ctrl = controller_answering(good.clone()).await;
    let mut clerk = TcpCtrlClerk::new(vec![ctrl], 1).unwrap();
    let t = Duration::from_secs(5);
    assert_eq!(query_controller(&mut clerk, Some(1), t, t).await, Ok(good));
}

#[tokio::test]
async fn a_clerk_given_a_configuration_without_shards_gives_up_without_a_panic() {
    let mut empty = Config::empty(0);
    empty.num = 1;
    let ctrl = controller_answering(empty).await;
    let mut clerk = TcpShardClerk::new(vec![ctrl], 1, options(Duration::from_secs(1))).unwrap();
    match clerk.put("k", "v").await {
        Err(ClerkError::GaveUp { last, .. }) => {
            assert!(last.contains("no usable configuration"), "{last}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_clerks_deadline_bounds_its_controller_queries() {
    // A controller that takes connections and never says a word: every attempt at it
    // waits its whole timeout (4 s), and the controller clerk's own deadline is 30 s.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ctrl = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut clerk = TcpShardClerk::new(vec![ctrl], 1, options(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), clerk.get("k")).await;
    let waited = started.elapsed();
    assert!(
        matches!(outcome, Ok(Err(ClerkError::GaveUp { .. }))),
        "{outcome:?} after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");
}

#[tokio::test]
async fn a_reply_that_does_not_fit_is_resent_not_taken_for_a_refusal() {
    // The group's first answer to the Get is a write's; the next is the value.
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let group = stand_in(PROTOCOL, move |_: GroupNodeRequest| {
        let reply = match count.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::Done,
            _ => Reply::Value {
                value: "v".into(),
                version: 1,
            },
        };
        Some(GroupNodeReply::Group(Replied::Done(GroupAnswer::Kv(reply))))
    })
    .await;
    let ctrl = controller_answering(all_at(group)).await;
    let mut clerk = TcpShardClerk::new(vec![ctrl], 1, options(Duration::from_secs(10))).unwrap();
    let got = clerk.get("k").await;
    assert!(
        matches!(&got, Ok(Ok((value, 1))) if value == "v"),
        "{got:?}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// A proxy to `to` that passes requests on at once and replies at `bytes_per_sec`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_takes_longer_than_a_call_to_transfer_still_arrives() {
    // 12 MiB at 4 MiB/s: 3 s, more than CALL_TIMEOUT.
    const SIZE: usize = 12 << 20;
    let group = stand_in(PROTOCOL, |request: GroupNodeRequest| match request {
        GroupNodeRequest::Group(GroupRequest::Fetch { .. }) => Some(GroupNodeReply::Group(
            Replied::Done(GroupAnswer::Shard(vec![1; SIZE])),
        )),
        _ => None,
    })
    .await;
    let link = slow_link(group, 4 << 20).await;
    let pool = group_pool();
    let started = Instant::now();
    let fetched = call_group_over(
        &pool,
        &[link.to_string()],
        GroupRequest::Fetch { num: 1, shard: 0 },
    )
    .await;
    let took = started.elapsed();
    match fetched {
        Some(Replied::Done(GroupAnswer::Shard(state))) => assert_eq!(state.len(), SIZE),
        other => panic!("after {took:?}: {other:?}"),
    }
    assert!(took > CALL_TIMEOUT, "the link was not slow: {took:?}");
}
