//! Three KV-on-Raft nodes over real TCP on loopback, each with its WAL in its own temporary
//! directory, in one process: writes survive the leader stopping, a restarted node catches
//! up from the leader and is then needed for a majority, and the whole cluster stopped and
//! started again recovers everything from its disks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_kvraft::tcp::{
    self, ClusterClerk, ClusterClerkOptions, NodeReply, NodeRequest, PROTOCOL,
};
use flotilla_runtime::peer::{connect, PeerIntro};
use flotilla_runtime::{free_loopback_addrs, ClusterId, NodeConfig, NodeTask, PortConfig};
use flotilla_wire::{
    read_frame, write_frame, Client, Hello, HelloReply, Reply as WireReply, Request as WireRequest,
    WireError, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME,
};

/// The bound on the whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(120);

type Running = NodeTask;

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    free_loopback_addrs(n)
}

fn start(cluster: &ClusterId, id: u64, dir: &Path) -> Running {
    start_with(NodeConfig::new(cluster.clone(), id, dir.to_path_buf()))
}

fn start_with(config: NodeConfig) -> Running {
    NodeTask::spawn(|shutdown| tcp::serve(config, None, shutdown))
}

async fn stop(node: Running) {
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_the_leader_stopping_and_a_restarted_node_catches_up() {
    tokio::time::timeout(WHOLE_TEST, scenario())
        .await
        .expect("the test took too long");
}

async fn scenario() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = ClusterId {
        name: "test".into(),
        members: free_addrs(3),
    };
    let mut nodes: Vec<Option<Running>> = (0..3)
        .map(|i| Some(start(&cluster, i, dirs[i as usize].path())))
        .collect();
    let mut clerk = ClusterClerk::new(cluster.members.clone(), 7, ClusterClerkOptions::default());
    for k in 0..50 {
        clerk.put(&format!("k{k}"), &format!("v{k}")).await.unwrap();
    }
    assert_eq!(clerk.append("log", "a").await.unwrap(), "");

    // Stop the leader (the node that answered last).
    let leader = cluster
        .members
        .iter()
        .position(|&a| a == clerk.leader_guess())
        .unwrap();
    stop(nodes[leader].take().unwrap()).await;
    for k in 50..100 {
        clerk.put(&format!("k{k}"), &format!("v{k}")).await.unwrap();
    }
    assert_eq!(clerk.append("log", "b").await.unwrap(), "a");
    for k in 0..100 {
        let (value, _) = clerk.get(&format!("k{k}")).await.unwrap().unwrap();
        assert_eq!(value, format!("v{k}"));
    }

    // Restart it, then stop another: the two left need the restarted node, which must have
    // caught up on what was written while it was down.
    nodes[leader] = Some(start(&cluster, leader as u64, dirs[leader].path()));
    let other = (0..3).find(|&i| i != leader).unwrap();
    stop(nodes[other].take().unwrap()).await;
    assert_eq!(clerk.append("log", "c").await.unwrap(), "ab");
    for k in 0..100 {
        let (value, _) = clerk.get(&format!("k{k}")).await.unwrap().unwrap();
        assert_eq!(value, format!("v{k}"));
    }
    // Everything stops and starts again: all of it comes back from the disks.
    for node in nodes.iter_mut().filter_map(Option::take) {
        stop(node).await;
    }
    let nodes: Vec<_> = (0..3)
        .map(|i| start(&cluster, i, dirs[i as usize].path()))
        .collect();
    assert_eq!(clerk.append("log", "d").await.unwrap(), "abc");
    for k in 0..100 {
        let (value, _) = clerk.get(&format!("k{k}")).await.unwrap().unwrap();
        assert_eq!(value, format!("v{k}"));
    }
    for node in nodes {
        stop(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_or_taking_the_node_for_another_is_refused() {
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterId {
            name: "test".into(),
            members: free_addrs(3),
        };
        let node = start(&cluster, 0, dir.path());
        let addr = cluster.members[0];
        let intro = |cluster: &ClusterId, from, to| PeerIntro {
            cluster: cluster.clone(),
            from,
            to,
            incarnation: 1,
        };
        let refusal = |result: Result<_, WireError>| match result {
            Err(WireError::Handshake(why)) => why,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(_) => panic!("accepted"),
        };
        // The right introduction is accepted (once the node listens).
        let accepted = loop {
            match connect(addr, &intro(&cluster, 1, 0)).await {
                Err(WireError::Io(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => break other,
            }
        };
        assert!(accepted.is_ok(), "{:?}", accepted.err());
        let other_name = ClusterId {
            name: "other".into(),
            ..cluster.clone()
        };
        let why = refusal(connect(addr, &intro(&other_name, 1, 0)).await);
        assert!(
            why.contains("cluster mismatch") && why.contains("\"other\""),
            "{why}"
        );
        let mut other_list = cluster.clone();
        other_list.members.swap(1, 2);
        let why = refusal(connect(addr, &intro(&other_list, 1, 0)).await);
        assert!(why.contains("cluster mismatch"), "{why}");
        let why = refusal(connect(addr, &intro(&cluster, 1, 2)).await);
        assert!(why.contains("this is node 0"), "{why}");
        let why = refusal(connect(addr, &intro(&cluster, 0, 0)).await);
        assert!(why.contains("not another member"), "{why}");
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// Garbage on the node's port costs only what it is: bytes that are no handshake close that
/// connection; on an accepted peer link, a frame that does not decode and a message not from
/// the introduced peer are each logged and dropped, and the link goes on: the vote request
/// sent after them is stepped (the node takes its term, not the misaddressed message's);
/// a frame over the peer limit closes the link. The node serves on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_costs_only_the_garbage_and_the_node_serves_on() {
    use flotilla_raft::{Message, MessageBody};
    use flotilla_wire::FrameWriter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterId {
            name: "test".into(),
            members: free_addrs(3),
        };
        // Only node 0 runs: it answers status requests, and accepts node 1's link.
        let node = start(&cluster, 0, dir.path());
        let addr = cluster.members[0];
        assert!(serving(addr).await, "the node never answered");
        // Not a handshake: a length far over the handshake's limit, then noise.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the node kept a garbage connection open");
        // An accepted peer link: a frame whose payload is no Raft message, a vote request
        // that claims to come from node 2, then node 1's own vote request.
        let intro = PeerIntro {
            cluster: cluster.clone(),
            from: 1,
            to: 0,
            incarnation: 7,
        };
        let mut link = connect(addr, &intro)
            .await
            .expect("the introduction is accepted");
        let term_before = tcp::status(addr, Duration::from_secs(1))
            .await
            .unwrap()
            .term;
        let vote = |from, term| Message {
            from,
            to: 0,
            term,
            body: MessageBody::RequestVote {
                last_log_index: 1_000,
                last_log_term: 1_000,
                transfer: false,
            },
        };
        let (misaddressed, honest) = (term_before + 50, term_before + 40);
        link.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let mut writer = FrameWriter::new(1 << 20);
        writer
            .write_frame(&mut link, &vote(2, misaddressed))
            .await
            .unwrap();
        writer
            .write_frame(&mut link, &vote(1, honest))
            .await
            .unwrap();
        let mut term = term_before;
        for _ in 0..500 {
            term = tcp::status(addr, Duration::from_secs(1))
                .await
                .unwrap()
                .term;
            if term != term_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            term, honest,
            "after garbage and a misaddressed vote request, the peer's own request was not \
             stepped (term {term_before} before, {misaddressed} misaddressed, {honest} sent)"
        );
        // A frame over the peer limit cannot be skipped: the link is closed.
        link.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), link.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "the node kept a link open after an oversized frame"
        );
        assert!(
            serving(addr).await,
            "the node stopped serving after garbage"
        );
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// The KV size limits hold on the cluster's client port: a key over the limit is refused
/// with `TooLarge` and changes nothing, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_the_limit_is_refused_and_changes_nothing() {
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterId {
            name: "test".into(),
            members: free_addrs(1),
        };
        let node = start(&cluster, 0, dir.path());
        let mut clerk =
            ClusterClerk::new(cluster.members.clone(), 1, ClusterClerkOptions::default());
        let long = "k".repeat(flotilla_kv::server::DEFAULT_MAX_KEY + 1);
        match clerk.put(&long, "v").await {
            Err(flotilla_kv::tcp::ClerkError::TooLarge(_)) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            clerk.get(&long).await.unwrap().is_err(),
            "the refused key exists"
        );
        clerk.put("k", "v").await.unwrap();
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// Waits (at most 5 s) until the node at `addr` answers a status request.
async fn serving(addr: SocketAddr) -> bool {
    for _ in 0..500 {
        if tcp::status(addr, Duration::from_millis(200)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A one-member cluster on a free port, its node started with `port` as its port's limits.
fn one_node(dir: &Path, port: PortConfig) -> (SocketAddr, Running) {
    let cluster = ClusterId {
        name: "test".into(),
        members: free_addrs(1),
    };
    let mut config = NodeConfig::new(cluster.clone(), 0, dir.to_path_buf());
    config.port = port;
    (cluster.members[0], start_with(config))
}

/// How long a test waits for the node to close a connection its limits say it closes.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Reads `stream` until the node closes it (at most [`CLOSE_BOUND`]); how long that took.
async fn closed_by_the_node(stream: &mut tokio::net::TcpStream) -> Result<Duration, String> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut rest = Vec::new();
    match tokio::time::timeout(CLOSE_BOUND, stream.read_to_end(&mut rest)).await {
        Err(_) => Err(format!("still open after {CLOSE_BOUND:?}")),
        // A reset is a close too.
        Ok(_) if rest.is_empty() => Ok(started.elapsed()),
        Ok(_) => Err(format!("{} unexpected bytes before the close", rest.len())),
    }
}

/// The value limit holds like the key limit: a `Put` of a value one byte over the limit,
/// and an `Append` that would make one, are refused with `TooLarge` saying which limit and
/// by how much; the key keeps its value and version, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_limit_is_refused_and_changes_nothing() {
    use flotilla_kv::protocol::TooLarge;
    use flotilla_kv::server::DEFAULT_MAX_VALUE as MAX;
    use flotilla_kv::tcp::ClerkError;
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let (addr, node) = one_node(dir.path(), PortConfig::default());
        let mut clerk = ClusterClerk::new(vec![addr], 1, ClusterClerkOptions::default());
        clerk.put("k", "before").await.unwrap();
        let before = clerk.get("k").await.unwrap().unwrap();
        match clerk.put("k", &"v".repeat(MAX + 1)).await {
            Err(e @ ClerkError::TooLarge(TooLarge::Value { len, max }))
                if len == MAX as u64 + 1 && max == MAX as u64 =>
            {
                let said = e.to_string();
                assert!(
                    said.contains(&format!(
                        "the value of {} bytes is over the server's limit of {MAX} bytes",
                        MAX + 1
                    )),
                    "{said}"
                );
            }
            other => panic!("expected TooLarge::Value, got {other:?}"),
        }
        assert_eq!(clerk.get("k").await.unwrap().unwrap(), before);
        let tail = "v".repeat(MAX + 1 - "before".len());
        match clerk.append("k", &tail).await {
            Err(ClerkError::TooLarge(TooLarge::Appended { len, max }))
                if len == MAX as u64 + 1 && max == MAX as u64 => {}
            other => panic!("expected TooLarge::Appended, got {other:?}"),
        }
        assert_eq!(clerk.get("k").await.unwrap().unwrap(), before);
        clerk.put("k2", "v").await.unwrap();
        assert_eq!(clerk.get("k2").await.unwrap().unwrap().0, "v");
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// `PortConfig::max_frame`: a client frame over the port's limit gets a reply saying so
/// (for the whole connection, which the node then closes); nothing is stored, and the node
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frame_over_the_ports_limit_is_refused_with_a_reply() {
    const MAX_FRAME: usize = 4 << 10;
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let port = PortConfig {
            max_frame: MAX_FRAME,
            ..PortConfig::default()
        };
        let (addr, node) = one_node(dir.path(), port);
        // Once this is written the node leads: a write it took would be stored.
        let mut clerk = ClusterClerk::new(vec![addr], 1, ClusterClerkOptions::default());
        clerk.put("small", "v").await.unwrap();
        // The client's own limit is the default: the node's is what refuses.
        let mut client =
            Client::<NodeRequest, NodeReply>::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME)
                .await
                .unwrap();
        let put = NodeRequest::Kv(flotilla_kv::Request::Put {
            key: "big".into(),
            value: "v".repeat(2 * MAX_FRAME),
            client: 9,
            seq: 1,
        });
        match client.call(&put, Duration::from_secs(10)).await {
            Err(WireError::Remote(why)) => assert!(
                why.contains(&format!("exceeds the limit of {MAX_FRAME} bytes")),
                "{why}"
            ),
            other => panic!("expected the node's refusal, got {other:?}"),
        }
        assert!(!client.is_usable(), "the connection is still in use");
        assert!(
            clerk.get("big").await.unwrap().is_err(),
            "the refused write was stored"
        );
        clerk.put("small", "w").await.unwrap();
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

type NodeClient = Client<NodeRequest, NodeReply>;

/// Connects to the node at `addr`, retrying for at most 5 s while it is not listening yet
/// or still holds the slot of a connection the test closed.
async fn connect_when_free(addr: SocketAddr) -> NodeClient {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let connect = NodeClient::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME);
        if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no free connection slot in 5 s");
}

/// Whether `client`'s connection answers a status request.
async fn answers(client: &mut NodeClient) -> bool {
    let call = client.call(&NodeRequest::Status, Duration::from_secs(5));
    matches!(call.await, Ok(NodeReply::Status(_)))
}

/// Asserts that a connection to `addr` is closed before its handshake is answered.
async fn refused(addr: SocketAddr, limit: usize) {
    let connect = NodeClient::connect(addr, PROTOCOL, DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("a connection over the limit of {limit} was accepted"),
        Err(_) => panic!("a connection over the limit was neither served nor closed"),
    }
}

/// `PortConfig::max_connections`: with that many connections open, the next is closed
/// before its handshake is answered, while the open ones keep being served; once one closes
/// its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_open_ones_keep_working() {
    const LIMIT: usize = 3;
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let port = PortConfig {
            max_connections: LIMIT,
            ..PortConfig::default()
        };
        let (addr, node) = one_node(dir.path(), port);
        let mut open = Vec::new();
        for _ in 0..LIMIT {
            let mut client = connect_when_free(addr).await;
            assert!(answers(&mut client).await);
            open.push(client);
        }
        // Each open connection has answered, so they (and nothing else) hold the slots.
        refused(addr, LIMIT).await;
        refused(addr, LIMIT).await;
        for client in &mut open {
            assert!(answers(client).await, "an open connection stopped working");
        }
        // One closes: its slot goes to the next, and the limit holds again.
        drop(open.pop());
        let mut client = connect_when_free(addr).await;
        assert!(answers(&mut client).await);
        open.push(client);
        refused(addr, LIMIT).await;
        for client in &mut open {
            assert!(answers(client).await, "an open connection stopped working");
        }
        drop(open);
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// `PortConfig::idle_timeout`: a client connection that sends nothing after a reply is
/// closed by the node once the timeout has passed (not before), and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(300);
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let port = PortConfig {
            idle_timeout: IDLE,
            ..PortConfig::default()
        };
        let (addr, node) = one_node(dir.path(), port);
        assert!(serving(addr).await, "the node never answered");
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        write_frame(&mut raw, &Hello::new(PROTOCOL), HANDSHAKE_MAX_FRAME)
            .await
            .unwrap();
        let hello: HelloReply = read_frame(&mut raw, HANDSHAKE_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hello.refusal, None);
        // The node's idle clock starts after it has answered this, so after `asked`.
        let asked = Instant::now();
        let request = WireRequest {
            id: 1,
            body: NodeRequest::Status,
        };
        write_frame(&mut raw, &request, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let reply: WireReply<NodeReply> = read_frame(&mut raw, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                reply,
                WireReply::Ok {
                    id: 1,
                    body: NodeReply::Status(_)
                }
            ),
            "{reply:?}"
        );
        let took = closed_by_the_node(&mut raw).await.unwrap();
        assert!(
            asked.elapsed() >= IDLE,
            "closed {took:?} after the reply, {:?} after the request",
            asked.elapsed()
        );
        assert!(serving(addr).await, "the node stopped serving");
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// `PortConfig::handshake_timeout`: a connection that sends nothing, and one that sends
/// half a hello, are both closed once the timeout has passed, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_complete_handshake_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncWriteExt;
    const HANDSHAKE: Duration = Duration::from_millis(300);
    tokio::time::timeout(WHOLE_TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let port = PortConfig {
            handshake_timeout: HANDSHAKE,
            ..PortConfig::default()
        };
        let (addr, node) = one_node(dir.path(), port);
        assert!(serving(addr).await, "the node never answered");
        let mut hello = Vec::new();
        flotilla_wire::encode_frame(&mut hello, &Hello::new(PROTOCOL), HANDSHAKE_MAX_FRAME)
            .unwrap();
        for sent in [0, hello.len() / 2] {
            let connected = Instant::now();
            let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
            raw.write_all(&hello[..sent]).await.unwrap();
            let took = closed_by_the_node(&mut raw)
                .await
                .unwrap_or_else(|e| panic!("{sent} bytes of a hello: {e}"));
            assert!(
                connected.elapsed() >= HANDSHAKE,
                "{sent} bytes of a hello: closed after {took:?}"
            );
        }
        assert!(serving(addr).await, "the node stopped serving");
        stop(node).await;
    })
    .await
    .expect("the test took too long");
}

/// `GET /metrics` over a plain TCP connection: the body of a `200 OK`, its length checked.
async fn scrape(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: flotilla\r\nAccept: text/plain\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8(response).map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of the head in {response:?}"))?;
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{head}");
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert!(
            header("content-type").is_some_and(|t| t.starts_with("text/plain")),
            "{head}"
        );
        assert_eq!(
            header("content-length"),
            Some(body.len().to_string()),
            "{head}"
        );
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| Err("no response in 5 s".into()))
}

/// Prometheus text as (series, value) in the order given: `name` or `name{labels}`. Every
/// line that is not a comment must be a series and a number.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number in {l:?}")),
            };
            (series.to_string(), value)
        })
        .collect()
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
        .1
}

/// Each node of a 3-node cluster with `--metrics` serves `GET /metrics` over HTTP: after
/// some writes, exactly one says it leads; the leader's term, commit and applied index
/// cover the writes; the proposals counted cover them; every node's WAL sync histogram is
/// cumulative with a count of at least one sync; and the leader counts at least the bytes
/// of the written values sent to each of its two peers (and no series for itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_report_role_term_indexes_proposals_syncs_and_bytes_per_peer() {
    const WRITES: u64 = 20;
    const VALUE: usize = 200;
    tokio::time::timeout(WHOLE_TEST, async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs = free_addrs(6);
        let cluster = ClusterId {
            name: "test".into(),
            members: addrs[..3].to_vec(),
        };
        let metrics = &addrs[3..];
        let nodes: Vec<_> = (0..3)
            .map(|i| {
                let mut config =
                    NodeConfig::new(cluster.clone(), i, dirs[i as usize].path().into());
                config.metrics = Some(metrics[i as usize]);
                start_with(config)
            })
            .collect();
        let mut clerk =
            ClusterClerk::new(cluster.members.clone(), 5, ClusterClerkOptions::default());
        for k in 0..WRITES {
            clerk
                .put(&format!("k{k}"), &"v".repeat(VALUE))
                .await
                .unwrap();
        }
        // Wait (bounded) for a settled view: one node leads and has applied every write.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (leader, scrapes) = loop {
            let mut scrapes = Vec::new();
            for &addr in metrics {
                scrapes.push(samples(&scrape(addr).await.unwrap()));
            }
            let leaders: Vec<usize> = (0..3)
                .filter(|&i| sample(&scrapes[i], "flotilla_raft_is_leader") == 1.0)
                .collect();
            if let [leader] = leaders[..] {
                let term = sample(&scrapes[leader], "flotilla_raft_term");
                if sample(&scrapes[leader], "flotilla_raft_applied_index") >= WRITES as f64
                    && scrapes.iter().all(|s| sample(s, "flotilla_raft_term") <= term)
                {
                    break (leader, scrapes);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no single leader of the highest term having applied {WRITES} writes in 20 s: {scrapes:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let on_leader = |series: &str| sample(&scrapes[leader], series);
        for (i, scrape) in scrapes.iter().enumerate() {
            let leads = sample(scrape, "flotilla_raft_is_leader");
            assert_eq!(leads, f64::from(i == leader), "node {i}");
        }
        assert!(on_leader("flotilla_raft_term") >= 1.0);
        let commit = on_leader("flotilla_raft_commit_index");
        let applied = on_leader("flotilla_raft_applied_index");
        assert!(commit >= WRITES as f64, "commit index {commit}");
        assert!(
            applied >= WRITES as f64 && applied <= commit,
            "applied {applied}, commit {commit}"
        );
        assert!(on_leader("flotilla_raft_last_index") >= commit);
        for scrape in &scrapes {
            let term = sample(scrape, "flotilla_raft_term");
            assert!(
                term <= on_leader("flotilla_raft_term"),
                "a term past the leader's"
            );
            assert!(
                sample(scrape, "flotilla_raft_applied_index")
                    <= sample(scrape, "flotilla_raft_commit_index")
            );
        }
        // Every write was proposed on whichever node led when it was made.
        let proposals: f64 = scrapes
            .iter()
            .map(|s| sample(s, "flotilla_proposals_total"))
            .sum();
        assert!(
            proposals >= WRITES as f64,
            "{proposals} proposals counted for {WRITES} writes"
        );
        // Every node made its log durable at least once: a cumulative histogram.
        for (i, scrape) in scrapes.iter().enumerate() {
            let buckets: Vec<(f64, f64)> = scrape
                .iter()
                .filter_map(|(series, count)| {
                    let le = series
                        .strip_prefix("flotilla_wal_sync_seconds_bucket{le=\"")?
                        .strip_suffix("\"}")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    Some((le, *count))
                })
                .collect();
            assert_eq!(
                buckets.len(),
                flotilla_runtime::metrics::SYNC_BUCKETS_MICROS.len() + 1,
                "node {i}: {buckets:?}"
            );
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "node {i}: not cumulative: {buckets:?}"
            );
            let count = sample(scrape, "flotilla_wal_sync_seconds_count");
            assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "node {i}");
            assert!(count >= 1.0, "node {i}: no sync counted");
            assert!(
                sample(scrape, "flotilla_wal_sync_seconds_sum") > 0.0,
                "node {i}"
            );
        }
        // The leader sent every value to both followers, so at least their bytes.
        for peer in 0..3 {
            let series = format!("flotilla_peer_sent_bytes_total{{peer=\"{peer}\"}}");
            let sent = scrapes[leader]
                .iter()
                .find(|(s, _)| *s == series)
                .map(|s| s.1);
            if peer == leader {
                assert_eq!(sent, None, "the leader counts bytes sent to itself");
            } else {
                let sent = sent.unwrap_or_else(|| panic!("no {series}"));
                assert!(
                    sent >= (WRITES as usize * VALUE) as f64,
                    "{sent} bytes to node {peer}, which got {WRITES} values of {VALUE} bytes"
                );
            }
        }
        for node in nodes {
            stop(node).await;
        }
    })
    .await
    .expect("the test took too long");
}

/// Once `stop` has returned, the node's port is closed, every connection with it: a kept
/// connection reads the close at once (before any request is written on it), and a new one
/// is refused. A pool that checks a kept connection before reuse then never writes a
/// request to a node that is gone, so a forwarded request is known not to have been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_nodes_port_and_connections_are_closed_when_stop_returns() {
    let task = async {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let (addr, node) = one_node(dir.path(), PortConfig::default());
            assert!(serving(addr).await, "the node never answered");
            let mut kept = Vec::new();
            for _ in 0..8 {
                let mut client = connect_when_free(addr).await;
                assert!(answers(&mut client).await);
                kept.push(client);
            }
            stop(node).await;
            for (i, client) in kept.iter().enumerate() {
                assert!(
                    client.peer_closed(),
                    "round {round}: kept connection {i} still open after stop returned"
                );
            }
            let connect = tokio::net::TcpStream::connect(addr).await;
            assert!(
                connect.is_err(),
                "round {round}: a new connection was accepted after stop returned"
            );
        }
    };
    tokio::time::timeout(WHOLE_TEST, task)
        .await
        .expect("the test took too long");
}
