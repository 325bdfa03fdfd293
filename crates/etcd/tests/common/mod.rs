//! A server on 127.0.0.1:0 over a [`MemoryBackend`] (its leases expiring, checked every
//! 50 ms), stopped when dropped.

#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_etcd::memory::ExpiryTask;
use flotilla_etcd::server::MemberInfo;
use flotilla_etcd::{serve_with, MemoryBackend, ServeOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CLUSTER_ID: u64 = 0x1234_5678_9abc_def0;
pub const MEMBER_ID: u64 = 0x0fed_cba9_8765_4321;

/// The bound on any one wait of these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// The member the test servers list.
pub fn member() -> MemberInfo {
    MemberInfo {
        id: MEMBER_ID,
        name: "m0".into(),
        peer_urls: vec!["http://127.0.0.1:2380".into()],
        client_urls: vec!["http://127.0.0.1:2379".into()],
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub backend: Arc<MemoryBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    _expiry: ExpiryTask,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServeOptions::default()).await
    }

    pub async fn start_with(options: ServeOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let backend =
            Arc::new(MemoryBackend::new(CLUSTER_ID, MEMBER_ID).with_members(vec![member()]));
        let expiry = backend.spawn_expiry(Duration::from_millis(50));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, Arc::clone(&backend), options, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            backend,
            stop: Some(stop),
            task: Some(task),
            _expiry: expiry,
        }
    }

    /// Stops the server and waits (bounded) until it has stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        let result = tokio::time::timeout(WAIT, task)
            .await
            .expect("the server stops within the bound once told to")
            .expect("the server task did not panic");
        result.expect("the server ran without a transport error");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
