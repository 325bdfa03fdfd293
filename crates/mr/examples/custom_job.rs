//! A MapReduce job written in Rust: implement [`App`] and run it.
//!
//! This one computes a histogram of word lengths over its input files:
//!
//! ```text
//! cargo run --release -p flotilla-mr --example custom_job -- OUT_DIR FILE...
//! ```
//!
//! It runs the job with `flotilla_mr::run`: a coordinator and two workers in this process,
//! talking over loopback as separate processes would, and writes `OUT_DIR/mr-out-0` …
//! `mr-out-2` with lines like `005 12345` (12345 words of five letters; lengths are
//! zero-padded so that the byte order of the keys is numeric order).

use std::io::{self, BufRead};
use std::process::ExitCode;
use std::sync::Arc;

use flotilla_mr::app::{App, Emit};
use flotilla_mr::words;
use flotilla_mr::Job;

struct WordLengths;

impl App for WordLengths {
    fn name(&self) -> &str {
        "word-lengths"
    }

    /// Counts the words of each length in this input, then emits one pair per length.
    fn map(&self, _name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        let mut counts = std::collections::BTreeMap::<usize, u64>::new();
        words::for_each_word(contents, |word| {
            *counts.entry(word.chars().count()).or_default() += 1;
        })?;
        for (length, count) in counts {
            emit(&format!("{length:03}"), &count.to_string())?;
        }
        Ok(())
    }

    /// Sums the counts of one length from every input.
    fn reduce(&self, key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        let mut total = 0u64;
        for value in values {
            total += value.parse::<u64>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {value:?}: {e}"))
            })?;
        }
        Ok(total.to_string())
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(out_dir), inputs) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: custom_job OUT_DIR FILE...");
        return ExitCode::from(2);
    };
    if inputs.is_empty() {
        eprintln!("usage: custom_job OUT_DIR FILE...");
        return ExitCode::from(2);
    }
    let mut job = Job::new(inputs, &out_dir);
    job.n_reduce = 3;
    match flotilla_mr::run(Arc::new(WordLengths), job) {
        Ok(report) => {
            let p = report.progress;
            println!(
                "{} map and {} reduce tasks done in {:.2}s; outputs in {out_dir}/mr-out-*",
                p.maps_done,
                p.reduces_done,
                report.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom_job: {e}");
            ExitCode::FAILURE
        }
    }
}
