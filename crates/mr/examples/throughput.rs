//! Measures the word splitter and the `wc` map task (release builds only make sense):
//!
//! ```text
//! cargo run --release -p flotilla-mr --example throughput [-- MEGABYTES]
//! ```
//!
//! The input is the eight texts of `shared/data/gutenberg` (or `$FLOTILLA_TEXTS`) repeated to MEGABYTES (default
//! 100). Reports MB/s (10^6 bytes per second) for: the splitter alone over memory, `wc`'s
//! map function over memory, and a whole `wc` map task (`run_map`, 10 reduce partitions)
//! over a file of that size.

use std::io::BufReader;
use std::time::Instant;

use flotilla_mr::apps::{by_name, AppSpec};
use flotilla_mr::task::{run_map, MapTask};
use flotilla_mr::words;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let megabytes: usize = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    let mut texts = Vec::new();
    for path in flotilla_mr::texts::lab_texts()? {
        texts.extend_from_slice(&std::fs::read(path)?);
    }
    let mut data = Vec::with_capacity(megabytes << 20);
    while data.len() < megabytes * 1_000_000 {
        data.extend_from_slice(&texts);
    }
    let mb = data.len() as f64 / 1e6;

    let best_of = |runs: usize, f: &mut dyn FnMut() -> u64| {
        let mut best = f64::MAX;
        let mut result = 0;
        for _ in 0..runs {
            let start = Instant::now();
            result = f();
            best = best.min(start.elapsed().as_secs_f64());
        }
        (best, result)
    };

    let (secs, count) = best_of(3, &mut || {
        let mut count = 0u64;
        let mut reader = BufReader::with_capacity(128 * 1024, &data[..]);
        words::for_each_word(&mut reader, |w| count += w.len() as u64 & 1).unwrap();
        count
    });
    println!(
        "words::for_each_word   {mb:8.1} MB  {:8.1} MB/s  ({count})",
        mb / secs
    );

    let wc = by_name(&AppSpec::builtin("wc"))?;
    let (secs, pairs) = best_of(3, &mut || {
        let mut pairs = 0u64;
        let mut reader = BufReader::with_capacity(128 * 1024, &data[..]);
        wc.map("x", &mut reader, &mut |_k: &str, _v: &str| {
            pairs += 1;
            Ok(())
        })
        .unwrap();
        pairs
    });
    println!(
        "wc map (in memory)     {mb:8.1} MB  {:8.1} MB/s  ({pairs} pairs)",
        mb / secs
    );

    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.txt");
    std::fs::write(&input, &data)?;
    drop(data);
    let (secs, _) = best_of(3, &mut || {
        let stats = run_map(
            wc.as_ref(),
            &MapTask {
                id: 0,
                attempt: 0,
                input_name: "input.txt",
                input_path: &input,
                input_span: None,
                n_reduce: 10,
                dir: dir.path(),
                memory_limit: 32 << 20,
            },
        )
        .unwrap();
        stats.pairs
    });
    println!("wc run_map (file)      {mb:8.1} MB  {:8.1} MB/s", mb / secs);
    Ok(())
}
