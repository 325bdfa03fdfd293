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
//! connection `i mod conns`. By default nothing is retried: a request that fails or is not
//! answered within `request_timeout` counts as failed (the report says how many, and
//! [`EtcdBenchReport`] the first failure's reason), and an endpoint that cannot be connected
//! to within `connect_timeout` fails the run before it starts.
//!
//! With `retry_for` (`--retry-for SECONDS`) the clients fail over instead: the connections
//! are made lazily (at least one per endpoint; a node down at the start is fine), and a
//! request that fails or is not answered moves the clerk to the next endpoint and is sent
//! again (counted as a resend), until it succeeds or `retry_for` has passed since the
//! operation began; then the operation fails as without retries (an unknown outcome in the
//! history). A get is a read and safe to resend. A resent put may apply twice (etcd has no
//! request deduplication), so a history with resent puts may be rejected by the checker
//! although the store is right: loads under faults use gets and appends only.
//!
//! etcd's API has no append; [`EtcdClerk`]'s append is a compare-and-set loop of `Txn`s
//! (see [`EtcdClerk::append`]), so `append_share` works here as with Flotilla's protocol.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_kv::bench::{run_clerks, BenchClerk, BenchConfig, BenchReport};
use tonic::transport::{Channel, Endpoint};

use crate::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op, response_op, Compare, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest,
};

/// How to reach the servers.
#[derive(Clone, Debug)]
pub struct EtcdLoad {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// HTTP/2 connections shared by the clients (at most one per client; with `retry_for`,
    /// at least one per endpoint).
    pub conns: usize,
    /// Gets as serializable reads (any member's own state) instead of linearizable ones.
    pub serializable: bool,
    /// A request not answered within this long counts as failed.
    pub request_timeout: Duration,
    /// Each connection must be made within this long.
    pub connect_timeout: Duration,
    /// Zero: nothing is retried. Otherwise a failed request is sent again to the next
    /// endpoint until this long has passed since its operation began.
    pub retry_for: Duration,
}

impl Default for EtcdLoad {
    fn default() -> Self {
        EtcdLoad {
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 4,
            serializable: false,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retry_for: Duration::ZERO,
        }
    }
}

/// One client: etcd's `KV` service over one of the shared connections (and, with
/// `retry_for`, the others to fail over to, one per endpoint).
pub struct EtcdClerk {
    /// The connection in use is `kvs[at]`; with retries, the next endpoint's is `kvs[at + 1]`.
    kvs: Vec<KvClient<Channel>>,
    at: usize,
    serializable: bool,
    timeout: Duration,
    retry_for: Duration,
    resends: u64,
    first_error: Arc<Mutex<Option<String>>>,
}

/// A key's value and `mod_revision` (`""` and 0 when it is absent).
type Seen = (String, i64);

impl EtcdClerk {
    /// A clerk on `channel` (a connection made by [`connect`]), without failover.
    pub fn new(channel: Channel, load: &EtcdLoad) -> EtcdClerk {
        EtcdClerk::over(vec![channel], load)
    }

    /// A clerk on `channels[0]` that fails over to the next ones in turn (with
    /// `load.retry_for`).
    pub fn over(channels: Vec<Channel>, load: &EtcdLoad) -> EtcdClerk {
        assert!(!channels.is_empty(), "a clerk needs a connection");
        EtcdClerk {
            kvs: channels.into_iter().map(KvClient::new).collect(),
            at: 0,
            serializable: load.serializable,
            timeout: load.request_timeout,
            retry_for: load.retry_for,
            resends: 0,
            first_error: Arc::default(),
        }
    }

    /// Notes a failure (the first of all clerks sharing `first_error` is kept).
    fn failed(&self, error: String) -> String {
        let mut first = self.first_error.lock().expect("not poisoned");
        if first.is_none() {
            *first = Some(error.clone());
        }
        error
    }

    /// One request to the current endpoint, within `timeout`.
    async fn once<T, F>(
        &self,
        what: &str,
        call: impl FnOnce(KvClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, call(self.kvs[self.at].clone())).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("{what}: {:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    /// After a failed request of an operation that began at `began`: `Err` (noted) if it
    /// is not to be retried; otherwise moves to the next endpoint, counts the resend and
    /// waits a little (all endpoints may be down for a while).
    async fn retry(&mut self, began: Instant, error: String) -> Result<(), String> {
        if self.retry_for.is_zero() || began.elapsed() >= self.retry_for {
            return Err(self.failed(error));
        }
        self.at = (self.at + 1) % self.kvs.len();
        self.resends += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    /// Sends `call` (a read, or a write safe to send again) until it is answered or the
    /// retries are over.
    async fn call<T, F>(
        &mut self,
        what: &str,
        call: impl Fn(KvClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let began = Instant::now();
        loop {
            match self.once(what, &call).await {
                Ok(answer) => return Ok(answer),
                Err(error) => self.retry(began, error).await?,
            }
        }
    }

    fn range_request(&self, key: &str, serializable: bool) -> RangeRequest {
        RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        }
    }

    /// The first key of a range's answer: its value and mod revision; absent: `("", 0)`.
    fn seen(&self, response: &RangeResponse) -> Result<Option<Seen>, String> {
        match response.kvs.first() {
            None => Ok(None),
            Some(found) => match String::from_utf8(found.value.clone()) {
                Ok(value) => Ok(Some((value, found.mod_revision))),
                Err(_) => Err(self.failed("range: the value is not UTF-8".into())),
            },
        }
    }
}

/// Whether the bench token `token` (`<client>.<n>.x*`, unique in the run) is one of the
/// tokens `value` is made of, and if so the part of `value` before it. Bench values are
/// concatenations of such tokens; a value that does not split into them is searched for
/// `token` as a plain substring.
fn find_token<'a>(value: &'a str, token: &str) -> Option<&'a str> {
    let bytes = value.as_bytes();
    let mut at = 0;
    let mut starts = Vec::new();
    while at < bytes.len() {
        starts.push(at);
        let mut i = at;
        for _ in 0..2 {
            let digits = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == digits || i >= bytes.len() || bytes[i] != b'.' {
                return value.find(token).map(|i| &value[..i]);
            }
            i += 1;
        }
        while i < bytes.len() && bytes[i] == b'x' {
            i += 1;
        }
        if &value[at..i] == token {
            return Some(&value[..at]);
        }
        at = i;
    }
    None
}

impl BenchClerk for EtcdClerk {
    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        let request = self.range_request(key, self.serializable);
        let response = self
            .call("range", |mut kv| {
                let request = request.clone();
                async move { kv.range(request).await }
            })
            .await?;
        Ok(self.seen(&response)?.map(|(value, _)| value))
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        self.call("put", |mut kv| {
            let request = request.clone();
            async move { kv.put(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Appends `value` (a bench token, unique in the run) to `key` with compare-and-set
    /// `Txn`s and returns the old value the append extended:
    ///
    /// 1. a linearizable `Range` of `key`: its value `old` and mod revision `r` (absent:
    ///    `""` and 0);
    /// 2. `Txn { compare: mod_revision(key) == r, success: Put(key, old + value), failure:
    ///    Range(key) }`; if the compare held, the append is done and `old` is the answer;
    ///    if not, the failure branch's value and mod revision are the new `old` and `r`, and
    ///    2 is repeated.
    ///
    /// A `Txn` whose outcome is unknown (no answer in time, `UNAVAILABLE`, a transport
    /// error) may yet apply. With retries, the clerk fails over and reads the key again
    /// (and it looks at every value it reads from then on, failure branches included):
    ///
    /// - If the token is in the value, one of this operation's `Txn`s applied (no one else
    ///   writes the token, and appends only extend a value, so it stays). The answer is the
    ///   part of the value before the token, which is exactly the `old` that `Txn` compared
    ///   against: its compare fixed the state it applied to (mod revision `r` is one
    ///   version of the key, whose value is `old`), and it wrote `old + value`.
    /// - If not, the compare-and-set is tried again from the value read. A late old `Txn`
    ///   cannot also succeed: every `Txn` of this operation compares the key's
    ///   mod_revision, revisions only grow, and a successful one changes it; so of the
    ///   `Txn`s comparing against the same `r` at most one matches, and one comparing an
    ///   older `r` never does. If the old one wins, the new one's failure branch shows the
    ///   token and the operation ends as above. The token is thus in the value at most once.
    ///
    /// Without retries, or when `retry_for` is over, an unknown outcome fails the
    /// operation (recorded as unknown in the history).
    async fn append(&mut self, key: &str, value: &str) -> Result<String, String> {
        let began = Instant::now();
        let read = self.range_request(key, false);
        let mut known: Option<Seen> = None;
        loop {
            let (old, revision) = match known.take() {
                Some(seen) => seen,
                None => {
                    let answer = self
                        .once("append: range", |mut kv| {
                            let read = read.clone();
                            async move { kv.range(read).await }
                        })
                        .await;
                    match answer {
                        Ok(response) => self.seen(&response)?.unwrap_or_default(),
                        Err(error) => {
                            self.retry(began, error).await?;
                            continue;
                        }
                    }
                }
            };
            // Only a Txn of this operation can have put the token there.
            if let Some(before) = find_token(&old, value) {
                return Ok(before.to_string());
            }
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.as_bytes().to_vec(),
                    target_union: Some(TargetUnion::ModRevision(revision)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: format!("{old}{value}").into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(read.clone())),
                }],
            };
            match self
                .once("append: txn", |mut kv| async move { kv.txn(txn).await })
                .await
            {
                Ok(response) if response.succeeded => return Ok(old),
                Ok(response) => {
                    let range = match response.responses.into_iter().next() {
                        Some(crate::pb::etcdserverpb::ResponseOp {
                            response: Some(response_op::Response::ResponseRange(range)),
                        }) => range,
                        _ => {
                            return Err(self.failed(
                                "append: txn: the failure branch did not answer a range".into(),
                            ))
                        }
                    };
                    known = Some(self.seen(&range)?.unwrap_or_default());
                }
                // Unknown outcome: read again (known is None), then look for the token.
                Err(error) => self.retry(began, error).await?,
            }
        }
    }

    fn resends(&self) -> u64 {
        self.resends
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
/// that could not be reached. With `retry_for`, the connections are lazy (made, and made
/// again, when a request needs them): a node down at the start is no failure.
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
        if !load.retry_for.is_zero() {
            channels.push(channel.connect_lazy());
            continue;
        }
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
/// `config.clients` clerks over `min(load.conns, clients)` connections (with `retry_for`,
/// at least one per endpoint; client `i` starts on connection `i mod conns` and fails over
/// to one connection of each other endpoint in turn).
pub async fn run(load: &EtcdLoad, config: &BenchConfig) -> anyhow::Result<EtcdBenchReport> {
    anyhow::ensure!(config.clients > 0, "--clients must be at least 1");
    let mut conns = load.conns.min(config.clients);
    if !load.retry_for.is_zero() {
        conns = conns.max(load.endpoints.len());
    }
    let load = EtcdLoad {
        conns,
        ..load.clone()
    };
    let channels = connect(&load).await?;
    let first_error = Arc::new(Mutex::new(None));
    let endpoints = load.endpoints.len().max(1);
    let clerks = (0..config.clients)
        .map(|i| {
            let first = i % channels.len();
            let mut mine = vec![channels[first].clone()];
            if !load.retry_for.is_zero() {
                // Connection j goes to endpoint j mod endpoints, and there is one for each.
                let endpoint = first % endpoints;
                mine.extend((1..endpoints).map(|k| channels[(endpoint + k) % endpoints].clone()));
            }
            EtcdClerk {
                first_error: Arc::clone(&first_error),
                ..EtcdClerk::over(mine, &load)
            }
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
    use super::{find_token, uri};

    #[test]
    fn tokens_are_found_whole() {
        assert_eq!(find_token("1.2.xx12.3.x", "12.3.x"), Some("1.2.xx"));
        assert_eq!(find_token("12.1000.3.4.", "2.1000."), None);
        assert_eq!(find_token("12.1000.3.4.", "3.4."), Some("12.1000."));
        assert_eq!(find_token("", "3.4."), None);
        assert_eq!(find_token("other3.4.", "3.4."), Some("other"));
    }

    #[test]
    fn endpoints_without_a_scheme_are_http() {
        assert_eq!(uri("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(uri("https://h:1"), "https://h:1");
    }
}
