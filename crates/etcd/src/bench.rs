//! Load through etcd's gRPC API (`flotilla kv bench --etcd A1,A2,A3`): the same load
//! generator for etcd itself and for Flotilla's etcd-compatible nodes.
//!
//! The load is [`flotilla_kv::bench`]'s: `clients` concurrent clients, each doing one
//! operation at a time for the configured duration (gets, `get_share` of them, and puts of
//! values of `value_size` bytes over `keys` keys under a prefix of the run's own), with its
//! latency figures (p50, p99, max) and, if asked, the history for `flotilla check`. What this
//! module adds is the clerk: [`EtcdClerk`] speaks etcd's `KV` service through the generated
//! tonic client, a get being a `Range` of one key (linearizable, or serializable if asked)
//! and a put a `Put`.
//!
//! As etcd's own `benchmark` tool (`--conns`, `--clients`), the clients share a few HTTP/2
//! connections: `conns` connections, spread round-robin over the endpoints, client `i` on
//! connection `i mod conns`. Nothing is retried: a request that fails or is not answered
//! within `request_timeout` counts as failed (the report says how many, and
//! [`EtcdBenchReport`] the first failure's reason). An endpoint that cannot be connected to
//! within `connect_timeout` fails the run before it starts.
//!
//! etcd's API has no append: [`run`] refuses `append_share > 0`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_kv::bench::{run_clerks, BenchClerk, BenchConfig, BenchReport};
use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};

/// How to reach the servers.
#[derive(Clone, Debug)]
pub struct EtcdLoad {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// HTTP/2 connections shared by the clients (at most one per client).
    pub conns: usize,
    /// Gets as serializable reads (any member's own state) instead of linearizable ones.
    pub serializable: bool,
    /// A request not answered within this long counts as failed.
    pub request_timeout: Duration,
    /// Each connection must be made within this long.
    pub connect_timeout: Duration,
}

impl Default for EtcdLoad {
    fn default() -> Self {
        EtcdLoad {
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 4,
            serializable: false,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One client: etcd's `KV` service over one of the shared connections.
pub struct EtcdClerk {
    kv: KvClient<Channel>,
    serializable: bool,
    timeout: Duration,
    first_error: Arc<Mutex<Option<String>>>,
}

impl EtcdClerk {
    /// A clerk on `channel` (a connection made by [`connect`]).
    pub fn new(channel: Channel, load: &EtcdLoad) -> EtcdClerk {
        EtcdClerk {
            kv: KvClient::new(channel),
            serializable: load.serializable,
            timeout: load.request_timeout,
            first_error: Arc::default(),
        }
    }

    /// Notes a failure (the first of all clerks sharing `first_error` is kept).
    fn failed(&self, what: &str, error: String) -> String {
        let error = format!("{what}: {error}");
        let mut first = self.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(error.clone());
        }
        error
    }

    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                Err(self.failed(what, format!("{:?}: {}", status.code(), status.message())))
            }
            Err(_) => Err(self.failed(what, format!("no answer within {:?}", self.timeout))),
        }
    }
}

impl BenchClerk for EtcdClerk {
    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: self.serializable,
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        let response = self.call("range", kv.range(request)).await?;
        match response.kvs.first() {
            None => Ok(None),
            Some(found) => match String::from_utf8(found.value.clone()) {
                Ok(value) => Ok(Some(value)),
                Err(_) => Err(self.failed("range", "the value is not UTF-8".into())),
            },
        }
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut kv = self.kv.clone();
        self.call("put", kv.put(request)).await.map(|_| ())
    }

    async fn append(&mut self, _key: &str, _value: &str) -> Result<String, String> {
        Err(self.failed("append", "etcd's API has no append".into()))
    }

    fn resends(&self) -> u64 {
        0
    }
}

/// `host:port` as the URI tonic wants (`http://` unless a scheme is given).
fn uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens `conns` HTTP/2 connections, round-robin over the endpoints (connection `i` to
/// endpoint `i mod endpoints`), each within `connect_timeout`; fails naming the endpoint
/// that could not be reached.
pub async fn connect(load: &EtcdLoad) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!load.endpoints.is_empty(), "no etcd endpoint given");
    anyhow::ensure!(load.conns > 0, "--conns must be at least 1");
    let mut channels = Vec::with_capacity(load.conns);
    for i in 0..load.conns {
        let endpoint = &load.endpoints[i % load.endpoints.len()];
        let uri = uri(endpoint);
        let channel = Endpoint::from_shared(uri.clone())
            .map_err(|e| anyhow::anyhow!("bad etcd endpoint {endpoint:?}: {e}"))?
            .connect_timeout(load.connect_timeout)
            .tcp_nodelay(true);
        // connect_timeout bounds the TCP connect; the outer timeout bounds the whole
        // (HTTP/2 handshake included) against a peer that accepts and never answers.
        let channel = match tokio::time::timeout(load.connect_timeout, channel.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                // The causes, each once (some layers repeat their source's words).
                let mut cause = String::new();
                let mut last = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    let text = s.to_string();
                    if text != last {
                        cause += &format!(": {text}");
                    }
                    last = text;
                    source = s.source();
                }
                anyhow::bail!("cannot connect to etcd endpoint {uri}: {e}{cause}")
            }
            Err(_) => anyhow::bail!(
                "cannot connect to etcd endpoint {uri}: no connection within {:?}",
                load.connect_timeout
            ),
        };
        channels.push(channel);
    }
    Ok(channels)
}

/// A run's report and why its first failed request failed, if one did.
#[derive(Clone, Debug)]
pub struct EtcdBenchReport {
    pub report: BenchReport,
    pub first_error: Option<String>,
    /// Connections the clients shared.
    pub conns: usize,
}

/// Runs `config`'s load (its `server` and `clerk` are not used) through etcd's API:
/// `config.clients` clerks over `min(load.conns, clients)` connections.
pub async fn run(load: &EtcdLoad, config: &BenchConfig) -> anyhow::Result<EtcdBenchReport> {
    anyhow::ensure!(config.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(
        config.append_share == 0.0,
        "etcd's API has no append: --append-share must be 0 with --etcd"
    );
    let load = EtcdLoad {
        conns: load.conns.min(config.clients),
        ..load.clone()
    };
    let channels = connect(&load).await?;
    let first_error = Arc::new(Mutex::new(None));
    let clerks = (0..config.clients)
        .map(|i| EtcdClerk {
            first_error: Arc::clone(&first_error),
            ..EtcdClerk::new(channels[i % channels.len()].clone(), &load)
        })
        .collect();
    let report = run_clerks(config, clerks).await?;
    let first_error = first_error.lock().expect("not poisoned").take();
    Ok(EtcdBenchReport {
        report,
        first_error,
        conns: channels.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::uri;

    #[test]
    fn endpoints_without_a_scheme_are_http() {
        assert_eq!(uri("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(uri("https://h:1"), "https://h:1");
    }
}
