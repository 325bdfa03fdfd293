//! A Prometheus text endpoint (`--metrics ADDR`, `GET /metrics`): the node's role, term,
//! commit and applied index, log and snapshot size, client writes proposed here, the
//! latency of its log syncs as a histogram, and bytes sent to each peer.
//!
//! The HTTP side is the least a scraper needs: one request per connection, its head read
//! up to 8 KiB within 5 s, any path answered with the metrics (HTTP/1.1, `Connection:
//! close`); at most 64 scrapes at once.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::report::{NodeReport, StorageStats};

/// Upper bounds of the sync-latency buckets, in microseconds.
pub const SYNC_BUCKETS_MICROS: [u64; 11] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`SYNC_BUCKETS_MICROS`] (not cumulative), then one for larger.
    counts: [AtomicU64; SYNC_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        let bucket = SYNC_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(SYNC_BUCKETS_MICROS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (k, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = SYNC_BUCKETS_MICROS
                .get(k)
                .map_or("+Inf".to_string(), |&b| format!("{}", b as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Counters the node keeps for the endpoint besides its report.
#[derive(Debug)]
pub struct Counters {
    /// The storage figures the host keeps current after each persist.
    pub(crate) storage: StorageStats,
    pub sync_latency: Histogram,
    /// Client writes proposed on this node (as leader).
    pub proposals: AtomicU64,
    /// Bytes written to each peer's link (index: node id).
    pub bytes_sent: Vec<AtomicU64>,
}

impl Counters {
    pub fn new(members: usize) -> Self {
        Counters {
            storage: StorageStats::default(),
            sync_latency: Histogram::default(),
            proposals: AtomicU64::new(0),
            bytes_sent: (0..members).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The exposition text for `report` and `counters`.
pub fn render(report: &NodeReport, counters: &Counters) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "flotilla_raft_is_leader",
        "1 if this node leads.",
        u64::from(report.role == "Leader"),
    );
    gauge(
        "flotilla_raft_term",
        "The node's current term.",
        report.term,
    );
    gauge(
        "flotilla_raft_commit_index",
        "Highest index known committed.",
        report.commit,
    );
    gauge(
        "flotilla_raft_applied_index",
        "Highest index applied.",
        report.applied,
    );
    gauge(
        "flotilla_raft_last_index",
        "Last index of the log.",
        report.last_index,
    );
    gauge(
        "flotilla_raft_snapshot_index",
        "Index the snapshot covers.",
        report.snapshot_index,
    );
    gauge(
        "flotilla_wal_log_bytes",
        "Bytes of the log's segments.",
        report.log_bytes,
    );
    gauge("flotilla_wal_segments", "Log segments.", report.segments);
    gauge(
        "flotilla_wal_snapshot_bytes",
        "Bytes of the snapshot.",
        report.snapshot_bytes,
    );
    let _ = writeln!(
        out,
        "# HELP flotilla_proposals_total Client writes proposed on this node.\n# TYPE flotilla_proposals_total counter\nflotilla_proposals_total {}",
        counters.proposals.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP flotilla_peer_sent_bytes_total Bytes written to each peer's link.\n# TYPE flotilla_peer_sent_bytes_total counter"
    );
    for (peer, sent) in counters.bytes_sent.iter().enumerate() {
        if peer as u64 != report.id {
            let _ = writeln!(
                out,
                "flotilla_peer_sent_bytes_total{{peer=\"{peer}\"}} {}",
                sent.load(Ordering::Relaxed)
            );
        }
    }
    counters.sync_latency.render(
        "flotilla_wal_sync_seconds",
        "Time to make one batch durable (write and fdatasync).",
        &mut out,
    );
    out
}

const MAX_HEAD: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the endpoint until the task is aborted; `text` renders the metrics at each scrape.
pub async fn serve(listener: TcpListener, text: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(64));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // too many scrapes at once: dropped
        };
        let text = Arc::clone(&text);
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return warn!(%peer, "metrics: no complete request head");
            }
            let body = text();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_observation() {
        let h = Histogram::default();
        for micros in [10, 60, 60, 2_000, 1_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let mut out = String::new();
        h.render("x", "help", &mut out);
        for line in [
            "x_bucket{le=\"0.00005\"} 1",
            "x_bucket{le=\"0.0001\"} 3",
            "x_bucket{le=\"0.0025\"} 4",
            "x_bucket{le=\"0.1\"} 4",
            "x_bucket{le=\"+Inf\"} 5",
            "x_count 5",
            "x_sum 1.00213",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
    }
}
