//! The etcd load generator (`flotilla kv bench --etcd`) against `serve` over a
//! `MemoryBackend` on loopback: every put it counts is in the store (and no other), the
//! history of a mixed run is linearizable, serializable gets work, and an endpoint that
//! refuses or never answers fails the run or its requests within the bounds, never hangs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_etcd::bench::{self, EtcdBenchReport, EtcdLoad};
use flotilla_etcd::pb::etcdserverpb::{kv_client::KvClient, RangeRequest, RangeResponse};
use flotilla_etcd::{serve, MemoryBackend};
use flotilla_kv::bench::BenchConfig;
use flotilla_kv::tcp::ClerkOptions;
use flotilla_lincheck::{history, CheckResult};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The bound on every wait here.
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
}

/// A server on 127.0.0.1:0 until the sender is dropped.
async fn server() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let backend = Arc::new(MemoryBackend::new(1, 2));
    tokio::spawn(serve(listener, backend, async {
        let _ = stopped.await;
    }));
    (addr.to_string(), stop)
}

fn config(clients: usize, millis: u64, get_share: f64) -> BenchConfig {
    BenchConfig {
        server: "127.0.0.1:0".parse().unwrap(),
        clients,
        duration: Duration::from_millis(millis),
        keys: 20,
        value_size: 32,
        append_share: 0.0,
        get_share,
        history: None,
        clerk: ClerkOptions::default(),
    }
}

fn load(endpoints: Vec<String>, conns: usize) -> EtcdLoad {
    EtcdLoad {
        endpoints,
        conns,
        ..EtcdLoad::default()
    }
}

/// The store's revision and how many keys it holds, values of `len` bytes.
/// Every key of the store at `endpoint` (a Range from `\0` to the end of the key space).
async fn range_all(endpoint: &str) -> RangeResponse {
    let mut kv = KvClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connect");
    kv.range(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
}

async fn store(endpoint: &str, len: usize) -> (i64, usize) {
    let all = range_all(endpoint).await;
    for found in &all.kvs {
        assert_eq!(found.value.len(), len, "a value of the configured size");
    }
    (all.header.expect("header").revision, all.kvs.len())
}

fn no_failures(result: &EtcdBenchReport) {
    assert_eq!(
        result.report.failed, 0,
        "no request fails: {:?}",
        result.first_error
    );
    assert_eq!(result.first_error, None);
}

#[tokio::test]
async fn every_counted_put_is_in_the_store() {
    let (endpoint, _stop) = server().await;
    // Two endpoint entries (the same server) and 3 connections: round-robin, shared.
    let load = load(vec![endpoint.clone(), endpoint.clone()], 3);
    let result = within("the puts", bench::run(&load, &config(8, 300, 0.0)))
        .await
        .expect("the run");
    no_failures(&result);
    assert_eq!(result.conns, 3);
    assert!(
        result.report.ops >= 200,
        "a few hundred puts at least: {}",
        result.report
    );
    assert!(result.report.p50 <= result.report.p99 && result.report.p99 <= result.report.max);
    // Each put is one revision (the store starts at 1): the counted puts are all applied,
    // and nothing else was.
    let (revision, keys) = store(&endpoint, 32).await;
    assert_eq!(revision as u64, 1 + result.report.ops, "{}", result.report);
    assert!(keys > 0 && keys <= 20, "{keys} keys of the 20");
}

#[tokio::test]
async fn a_mixed_run_is_linearizable_and_serializable_gets_work() {
    let (endpoint, _stop) = server().await;
    let path =
        std::env::temp_dir().join(format!("flotilla-etcd-bench-{}.jsonl", std::process::id()));
    let mut mixed = config(6, 300, 0.9);
    mixed.keys = 3;
    mixed.history = Some(path.clone());
    let result = within(
        "the mixed run",
        bench::run(&load(vec![endpoint.clone()], 2), &mixed),
    )
    .await
    .expect("the run");
    no_failures(&result);
    let file = std::fs::File::open(&path).expect("the history");
    let records = history::read_history(std::io::BufReader::new(file)).expect("parse");
    let _ = std::fs::remove_file(&path);
    assert_eq!(records.len() as u64, result.report.ops);
    let gets = records
        .iter()
        .filter(|r| r.op == history::HistoryOp::Get)
        .count();
    let found = records
        .iter()
        .filter(|r| r.op == history::HistoryOp::Get && r.output.as_deref() != Some(""))
        .count();
    assert!(
        gets > records.len() / 2 && found > 0,
        "{gets} gets, {found} found a value"
    );
    match history::check_records(&records, Duration::from_secs(20)).expect("check") {
        CheckResult::Ok => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }

    let serializable = EtcdLoad {
        serializable: true,
        ..load(vec![endpoint], 1)
    };
    let result = within(
        "serializable gets",
        bench::run(&serializable, &config(4, 200, 1.0)),
    )
    .await
    .expect("the run");
    no_failures(&result);
    assert!(result.report.ops >= 100, "{}", result.report);
}

#[tokio::test]
async fn an_endpoint_that_refuses_fails_the_run_at_once() {
    // A port nothing listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = listener.local_addr().expect("address").to_string();
    drop(listener);
    let (good, _stop) = server().await;
    let start = Instant::now();
    // The good endpoint first: the second connection goes to the refusing one.
    let error = within(
        "the refused run",
        bench::run(&load(vec![good, endpoint.clone()], 2), &config(4, 300, 0.5)),
    )
    .await
    .expect_err("a refusing endpoint fails the run");
    let message = format!("{error:#}");
    assert!(
        message.contains("cannot connect") && message.contains(&endpoint),
        "the failure names the endpoint: {message}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "at once: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_endpoint_that_never_answers_gives_errors_not_a_hang() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let silent = EtcdLoad {
        request_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        ..load(vec![endpoint], 1)
    };
    let start = Instant::now();
    match within("the silent run", bench::run(&silent, &config(3, 300, 0.5))).await {
        // The connection is not made: a clear failure.
        Err(error) => assert!(format!("{error:#}").contains("cannot connect"), "{error:#}"),
        // Or it is, and every request fails by its timeout.
        Ok(result) => {
            assert_eq!(result.report.ops, 0, "{}", result.report);
            assert!(result.report.failed >= 3, "{}", result.report);
            let error = result.first_error.expect("the first failure's reason");
            assert!(error.contains("no answer within"), "{error}");
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        start.elapsed()
    );
}

/// The history file of one run, read back, and removed.
fn read_back(path: &std::path::Path) -> Vec<history::HistoryRecord> {
    let file = std::fs::File::open(path).expect("the history");
    let records = history::read_history(std::io::BufReader::new(file)).expect("parse");
    let _ = std::fs::remove_file(path);
    records
}

/// Every key's value, by key.
async fn all_values(endpoint: &str) -> std::collections::HashMap<String, String> {
    range_all(endpoint)
        .await
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).expect("UTF-8 key"),
                String::from_utf8(kv.value).expect("UTF-8 value"),
            )
        })
        .collect()
}

#[tokio::test]
async fn concurrent_compare_and_set_appends_apply_each_acknowledged_token_once() {
    let (endpoint, _stop) = server().await;
    let path = std::env::temp_dir().join(format!(
        "flotilla-etcd-bench-cas-{}.jsonl",
        std::process::id()
    ));
    // 6 clerks on 2 keys: the compares collide all the time.
    let mut appends = config(6, 400, 0.2);
    appends.keys = 2;
    appends.value_size = 8;
    appends.append_share = 1.0;
    appends.history = Some(path.clone());
    let result = within(
        "the appends",
        bench::run(&load(vec![endpoint.clone()], 3), &appends),
    )
    .await
    .expect("the run");
    no_failures(&result);
    let records = read_back(&path);
    let acked: Vec<_> = records
        .iter()
        .filter(|r| r.op == history::HistoryOp::Append && r.ret.is_some())
        .collect();
    assert!(acked.len() >= 50, "{} appends acknowledged", acked.len());
    let values = all_values(&endpoint).await;
    for r in &acked {
        let value = values.get(&r.key).expect("an appended key exists");
        assert_eq!(
            value.matches(r.value.as_str()).count(),
            1,
            "{} once in {}'s value",
            r.value,
            r.key
        );
        let old = r
            .output
            .as_deref()
            .expect("an acknowledged append's old value");
        assert!(
            value.starts_with(&format!("{old}{}", r.value)),
            "the old value returned is what the append extended"
        );
    }
    let tokens: usize = values.values().map(|v| v.matches('.').count() / 2).sum();
    assert_eq!(tokens, acked.len(), "no token but the acknowledged ones");
    match history::check_records(&records, Duration::from_secs(20)).expect("check") {
        CheckResult::Ok => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }
}

#[tokio::test]
async fn with_retry_for_a_dead_first_endpoint_fails_over_to_the_second() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("address").to_string();
    drop(listener);
    let (good, _stop) = server().await;
    // Without retries the dead endpoint fails the run (an_endpoint_that_refuses_...); with
    // them every clerk that starts on it moves on.
    let failover = EtcdLoad {
        retry_for: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..load(vec![dead, good.clone()], 1)
    };
    let path = std::env::temp_dir().join(format!(
        "flotilla-etcd-bench-failover-{}.jsonl",
        std::process::id()
    ));
    let mut mixed = config(4, 300, 0.5);
    mixed.keys = 2;
    mixed.append_share = 1.0;
    mixed.history = Some(path.clone());
    let result = within("the failover run", bench::run(&failover, &mixed))
        .await
        .expect("the run");
    no_failures(&result);
    assert_eq!(result.conns, 2, "one connection per endpoint");
    assert!(result.report.ops >= 20, "{}", result.report);
    assert!(
        result.report.resends >= 1,
        "the clerks on the dead endpoint resent: {}",
        result.report
    );
    let records = read_back(&path);
    match history::check_records(&records, Duration::from_secs(20)).expect("check") {
        CheckResult::Ok => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }
}
