//! `flotilla kv bench`: bounded load against a real server, with latency figures and,
//! optionally, the history of every operation for the linearizability checker.
//!
//! Each client is one clerk on its own connection doing one operation at a time: half
//! `Get`s (`get_share` of them, half by default), the rest writes of unique values over `keys`
//! keys, for `duration`; `append_share` of
//! the writes are `Append`s (whose returned old values make any duplicate execution visible
//! to the checker), the rest `Put`s. An operation whose
//! clerk gave up is recorded with `"return": null` (its effect is unknown). Times are
//! nanoseconds since the start of the run, on one clock for all clients.
//!
//! Every run works under a key prefix of its own (`b<random>.k<i>`), so its keys start
//! empty, as the checker assumes, even against a store that already holds data (an earlier
//! bench's, say). Any clerk can drive the load ([`BenchClerk`]): the single server's
//! [`TcpClerk`] or a replicated cluster's.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_lincheck::history::{write_history, HistoryOp, HistoryRecord};

use crate::tcp::{ClerkOptions, TcpClerk};

/// What the load needs of a clerk: one operation at a time, each retried by the clerk
/// until it has an answer or gives up.
pub trait BenchClerk: Send + 'static {
    fn get(&mut self, key: &str) -> impl Future<Output = Result<Option<String>, String>> + Send;
    fn put(&mut self, key: &str, value: &str) -> impl Future<Output = Result<(), String>> + Send;
    fn append(
        &mut self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<String, String>> + Send;
    /// Requests sent again so far (for the report).
    fn resends(&self) -> u64;
}

impl BenchClerk for TcpClerk {
    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        match TcpClerk::get(self, key).await {
            Ok(found) => Ok(found.ok().map(|(value, _)| value)),
            Err(e) => Err(e.to_string()),
        }
    }
    async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        TcpClerk::put(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    async fn append(&mut self, key: &str, value: &str) -> Result<String, String> {
        TcpClerk::append(self, key, value)
            .await
            .map_err(|e| e.to_string())
    }
    fn resends(&self) -> u64 {
        self.resends
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub server: SocketAddr,
    pub clients: usize,
    pub duration: Duration,
    pub keys: usize,
    pub value_size: usize,
    /// Share of writes that are `Append`s (the rest are `Put`s).
    pub append_share: f64,
    /// Share of operations that are `Get`s.
    pub get_share: f64,
    pub history: Option<PathBuf>,
    pub clerk: ClerkOptions,
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub ops: u64,
    pub failed: u64,
    pub resends: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl BenchReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops in {:.2}s = {:.0} ops/s; latency p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; {} resends, {} failed",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.max.as_secs_f64() * 1e6,
            self.resends,
            self.failed
        )
    }
}

/// History times: nanoseconds since the run started, made strictly increasing across all
/// clients in the order they are taken. Two readings of a clock can be equal; if a return and
/// a later call (of the same client or another) tied, the checker would take them as
/// overlapping and accept histories it must reject (lincheck's tie rule).
struct Stamps {
    start: Instant,
    last: AtomicU64,
}

impl Stamps {
    fn new(start: Instant) -> Stamps {
        Stamps {
            start,
            last: AtomicU64::new(0),
        }
    }

    /// A time after every time handed out before this call began.
    fn next(&self) -> u64 {
        self.next_at(self.start.elapsed().as_nanos() as u64)
    }

    /// The stamp for a clock reading of `now`: `now`, or one past the last stamp if that is
    /// not smaller.
    fn next_at(&self, now: u64) -> u64 {
        let previous = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .expect("the update always succeeds");
        now.max(previous + 1)
    }
}

struct ClientResult {
    latencies: Vec<u64>,
    failed: u64,
    resends: u64,
    history: Vec<HistoryRecord>,
}

/// Runs the load; every client stops after `duration` (an operation in flight finishes or
/// gives up by its clerk's deadline).
pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(config.clients > 0, "--clients must be at least 1");
    let mut clerks = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        clerks.push(TcpClerk::connect(config.server, config.clerk).await?);
    }
    run_clerks(&config, clerks).await
}

/// Runs the load with these clerks, one client each (`config.server` and `config.clerk`
/// are not used).
pub async fn run_clerks<C: BenchClerk>(
    config: &BenchConfig,
    clerks: Vec<C>,
) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(!clerks.is_empty(), "--clients must be at least 1");
    anyhow::ensure!(config.keys > 0, "--keys must be at least 1");
    let prefix = format!("b{:08x}", crate::tcp::random_client_id() as u32);
    let start = Instant::now();
    let stamps = Arc::new(Stamps::new(start));
    let deadline = start + config.duration;
    let record = config.history.is_some();
    let tasks: Vec<_> = clerks
        .into_iter()
        .enumerate()
        .map(|(client, clerk)| {
            let config = config.clone();
            let stamps = stamps.clone();
            let prefix = prefix.clone();
            tokio::spawn(client_loop(
                client, clerk, config, prefix, stamps, deadline, record,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut history = Vec::new();
    let (mut failed, mut resends) = (0, 0);
    for task in tasks {
        let result = task.await?;
        latencies.extend(result.latencies);
        history.extend(result.history);
        failed += result.failed;
        resends += result.resends;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        Duration::from_nanos(latencies.get(i).copied().unwrap_or(0))
    };
    if let Some(path) = &config.history {
        history.sort_by_key(|r| r.call);
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        write_history(std::io::BufWriter::new(file), &history)?;
    }
    Ok(BenchReport {
        ops: latencies.len() as u64,
        failed,
        resends,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: Duration::from_nanos(latencies.last().copied().unwrap_or(0)),
    })
}

async fn client_loop<C: BenchClerk>(
    client: usize,
    mut clerk: C,
    config: BenchConfig,
    prefix: String,
    stamps: Arc<Stamps>,
    deadline: Instant,
    record: bool,
) -> ClientResult {
    let mut result = ClientResult {
        latencies: Vec::new(),
        failed: 0,
        resends: 0,
        history: Vec::new(),
    };
    let mut n = 0u64;
    // A cheap per-client sequence of choices; the mix needs no more.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ client as u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while Instant::now() < deadline {
        let key = format!("{prefix}.k{}", next() % config.keys as u64);
        let is_get = (next() % 1_000_000) as f64 / 1e6 < config.get_share;
        let call = stamps.next();
        let t = Instant::now();
        let (op, value, output, ok) = if is_get {
            match clerk.get(&key).await {
                Ok(found) => (
                    HistoryOp::Get,
                    String::new(),
                    Some(found.unwrap_or_default()),
                    true,
                ),
                Err(_) => (HistoryOp::Get, String::new(), None, false),
            }
        } else {
            let mut value = format!("{client}.{n}.");
            value.extend(std::iter::repeat_n(
                'x',
                config.value_size.saturating_sub(value.len()),
            ));
            n += 1;
            let append = (next() % 1_000_000) as f64 / 1e6 < config.append_share;
            if append {
                match clerk.append(&key, &value).await {
                    Ok(old) => (HistoryOp::Append, value, Some(old), true),
                    Err(_) => (HistoryOp::Append, value, None, false),
                }
            } else {
                let ok = clerk.put(&key, &value).await.is_ok();
                (HistoryOp::Put, value, None, ok)
            }
        };
        let latency = t.elapsed();
        let ret = stamps.next();
        if ok {
            result.latencies.push(latency.as_nanos() as u64);
        } else {
            result.failed += 1;
        }
        if record {
            result.history.push(HistoryRecord {
                client: client as i64,
                op,
                key,
                value,
                output,
                call,
                ret: ok.then_some(ret),
                version: None,
                error: None,
            });
        }
    }
    result.resends = clerk.resends();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_strictly_increase_across_threads_even_when_the_clock_stands_still() {
        let stamps = Arc::new(Stamps::new(Instant::now()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let stamps = stamps.clone();
                std::thread::spawn(move || {
                    (0..10_000u64)
                        .map(|k| match t {
                            // A clock that stands still, one that ticks, and the real one.
                            0 => stamps.next_at(7),
                            1 => stamps.next_at(k / 100),
                            _ => stamps.next(),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let mine = t.join().expect("thread");
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "one thread's stamps increase"
            );
            all.extend(mine);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no two stamps are equal");
    }
}
