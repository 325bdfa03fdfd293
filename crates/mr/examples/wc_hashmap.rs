//! The single-process baseline of the word-count benchmark (`bench/mr-wc-1gb.sh`): the
//! simplest fast word count, to measure what MapReduce's coordinator, workers, intermediate
//! files and sorting cost against it.
//!
//! ```text
//! cargo run --release -p flotilla-mr --example wc_hashmap -- --out FILE INPUT...
//! ```
//!
//! One thread: each input is read in 1 MiB chunks, split into words exactly as the `wc` app
//! splits them ([`flotilla_mr::words`]), and counted in one `HashMap<String, u64>` (foldhash,
//! as `wc`'s mapper). FILE gets one `word count` line per word, sorted by word: the same
//! lines as `flotilla mr sequential --app wc` over the same inputs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};

use flotilla_mr::words;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.iter().position(|a| a == "--out") {
        Some(i) if i + 1 < args.len() => args.drain(i..i + 2).nth(1).expect("two arguments"),
        _ => return Err("usage: wc_hashmap --out FILE INPUT...".into()),
    };
    let mut counts: HashMap<String, u64, foldhash::fast::RandomState> = HashMap::default();
    for input in &args {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(input)?);
        words::for_each_word(&mut reader, |word| match counts.get_mut(word) {
            Some(count) => *count += 1,
            None => {
                counts.insert(word.to_owned(), 1);
            }
        })?;
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_unstable();
    let mut writer = BufWriter::with_capacity(1 << 20, File::create(&out)?);
    for (word, count) in &sorted {
        writeln!(writer, "{word} {count}")?;
    }
    writer.flush()?;
    Ok(())
}
