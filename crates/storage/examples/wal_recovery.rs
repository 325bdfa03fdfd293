//! Recovery of a large log (issue 10's target: 1 M entries of 100 bytes in under 1 s and
//! under 2× the log's size in memory).
//!
//! `cargo run --release -p flotilla-storage --example wal_recovery -- [ENTRIES] [DIR]`
//! writes ENTRIES (default 1,000,000) entries of 100 bytes in batches of 1,000 into a fresh
//! directory under DIR (default: a temp dir), then runs itself as a child process that only
//! opens the log, so the child's peak memory (`VmHWM`) is recovery's alone. Prints the log
//! size, the open time and the peak.

use std::process::Command;
use std::time::Instant;

use flotilla_raft::{Entry, HardState};
use flotilla_storage::{Persist, Storage, WalStorage};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of the log's segments in `dir`.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| std::fs::metadata(p).expect("segment").len())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--open") {
        let dir = &args[2];
        let t = Instant::now();
        let (wal, recovered) = WalStorage::open(dir).expect("open");
        let took = t.elapsed();
        println!(
            "open: {} entries ({} segments) in {took:.2?}, peak RSS {} MiB",
            recovered.entries.len(),
            wal.segment_count(),
            peak_rss_kib() / 1024
        );
        return;
    }
    let count: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let base = match args.get(2) {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let dir = base.path().join("recovery");
    {
        let (mut wal, _) = WalStorage::open(&dir).expect("open");
        let per_batch = 1_000;
        for first in (1..=count).step_by(per_batch) {
            let last = (first + per_batch as u64 - 1).min(count);
            wal.persist(&Persist {
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(0),
                }),
                snapshot: None,
                entries: (first..=last)
                    .map(|index| Entry {
                        term: 1,
                        index,
                        data: vec![(index % 251) as u8; 100],
                    })
                    .collect(),
            })
            .expect("persist");
        }
    }
    let log = wal_bytes(&dir);
    println!("log: {count} entries of 100 B, {} MiB", log >> 20);
    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("--open")
        .arg(&dir)
        .output()
        .expect("child runs");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}
