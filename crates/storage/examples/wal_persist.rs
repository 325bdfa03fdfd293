//! Throughput and latency of `WalStorage` on the real file system, and the time `open` takes
//! to replay a long log.
//!
//! `cargo run --release -p flotilla-storage --example wal_persist -- [BATCHES] [DIR]`
//!
//! Appends BATCHES (default 2000) batches of one 100-byte entry plus a hard state, each made
//! durable by its own `fdatasync`, and prints persists per second with p50/p99/max latency.
//! Then writes a second log of 200 batches of 500 such entries (100 000 entries, ~15 MB) and
//! times `open`'s replay of it (best of 5). DIR (default: the system's temp directory) says
//! which disk is measured.

use std::time::{Duration, Instant};

use flotilla_raft::{Entry, HardState};
use flotilla_storage::{Persist, Storage, WalStorage};

fn batch(index: u64) -> Persist {
    Persist {
        hard_state: Some(HardState {
            term: index / 100 + 1,
            vote: Some(1),
        }),
        entries: vec![Entry {
            index,
            term: index / 100 + 1,
            data: vec![index as u8; 100],
        }],
        ..Persist::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: u64 = args
        .next()
        .map(|a| a.parse().expect("BATCHES must be a number"))
        .unwrap_or(2000);
    let base = match args.next() {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");

    let dir = base.path().join("persist");
    let (mut wal, _) = WalStorage::open(&dir).expect("open");
    let mut latencies = Vec::with_capacity(batches as usize);
    let start = Instant::now();
    for index in 1..=batches {
        let t = Instant::now();
        wal.persist(&batch(index)).expect("persist");
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "persist (1 entry of 100 B + hard state, fdatasync each): {batches} batches in {:.2?}: {:.0}/s, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        total,
        batches as f64 / total.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(Duration::ZERO),
    );
    drop(wal);

    // Replay: a long log, opened several times; the best time is reported.
    let dir = base.path().join("replay");
    let (mut wal, _) = WalStorage::open(&dir).expect("open");
    let (records, per_record) = (200u64, 500u64);
    for r in 0..records {
        let first = r * per_record + 1;
        let entries = (first..first + per_record)
            .flat_map(|index| batch(index).entries)
            .collect();
        wal.persist(&Persist {
            entries,
            ..Persist::default()
        })
        .expect("persist");
    }
    drop(wal);
    let batches = records * per_record;
    let replays = 5;
    let mut log_len = 0;
    let mut segments = 0;
    let best = (0..replays)
        .map(|_| {
            let t = Instant::now();
            let (wal, recovered) = WalStorage::open(&dir).expect("reopen");
            let elapsed = t.elapsed();
            assert_eq!(recovered.last_index(), batches);
            (log_len, segments) = (wal.log_bytes(), wal.segment_count());
            elapsed
        })
        .min()
        .expect("at least one replay");
    println!(
        "open (replay {records} records of {per_record} entries, {log_len} B in {segments} segment(s)): best of {replays} {:.2?} ({:.0} MB/s)",
        best,
        log_len as f64 / best.as_secs_f64() / 1e6
    );
}
