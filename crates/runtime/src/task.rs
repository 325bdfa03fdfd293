//! A node run as a task of this process rather than as a process of its own: for programs
//! that embed a node, and for tests that start and stop nodes on loopback.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::RunError;

/// What a node's serve function is given to learn when to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A node running on the current tokio runtime until [`NodeTask::stop`].
pub struct NodeTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), RunError>>,
}

impl NodeTask {
    /// Spawns `serve` (such as `flotilla_kvraft::tcp::serve(config, None, shutdown)`), handing it
    /// the shutdown future that [`NodeTask::stop`] resolves.
    pub fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = Result<(), RunError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        NodeTask {
            stop,
            task: tokio::spawn(serve(shutdown)),
        }
    }

    /// Stops the node and waits for it: how it ended (a storage error, if that stopped it
    /// first). A node that panicked passes the panic on; one whose runtime is shutting
    /// down (the task cancelled) has stopped.
    pub async fn stop(self) -> Result<(), RunError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

/// `n` loopback addresses with ports free now (another process could take one before a
/// node binds it: the node then says so).
pub fn free_loopback_addrs(n: usize) -> Vec<std::net::SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound socket's address"))
        .collect()
}
