//! Three KV-on-Raft nodes over real TCP on loopback, each with its WAL in its own temporary
//! directory, in one process: writes survive the leader stopping, a restarted node catches
//! up from the leader and is then needed for a majority, and the whole cluster stopped and
//! started again recovers everything from its disks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_kvraft::tcp::{self, ClusterClerk, ClusterClerkOptions};
use flotilla_runtime::peer::{connect, PeerIntro};
use flotilla_runtime::{ClusterId, NodeConfig};
use flotilla_wire::WireError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bound on the whole test; reaching it fails it.
const WHOLE_TEST: Duration = Duration::from_secs(120);

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), flotilla_runtime::RunError>>,
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn start(cluster: &ClusterId, id: u64, dir: &Path) -> Running {
    let config = NodeConfig::new(cluster.clone(), id, dir.to_path_buf());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tcp::serve(config, async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

async fn stop(node: Running) {
    let _ = node.stop.send(());
    node.task.await.unwrap().unwrap();
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

/// Garbage on the node's port — bytes that are no handshake, and a malformed Raft message on
/// an accepted peer link — costs only that connection: the node logs it, closes it, and goes
/// on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_closes_that_connection_and_the_node_serves_on() {
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
        let serving = || async {
            for _ in 0..500 {
                if tcp::status(addr, Duration::from_millis(200)).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        assert!(serving().await, "the node never answered");
        // Not a handshake: a length far over the handshake's limit, then noise.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the node kept a garbage connection open");
        // An accepted peer link, then a frame whose payload is no Raft message.
        let intro = PeerIntro {
            cluster: cluster.clone(),
            from: 1,
            to: 0,
            incarnation: 7,
        };
        let mut link = connect(addr, &intro)
            .await
            .expect("the introduction is accepted");
        link.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), link.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the node kept a link carrying garbage open");
        assert!(serving().await, "the node stopped serving after garbage");
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
