//! Whole jobs in one process (`flotilla_mr::run`: the coordinator and workers over loopback):
//! what happens when a map task's accepted output disappears before the reduces read it.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flotilla_mr::app::{App, Emit};
use flotilla_mr::task::sorted_output_lines;
use flotilla_mr::{words, Job};

/// Word count (one pair per word) whose map of input `victim_of` first removes every
/// intermediate file of map task 0 — once, as a disk or an operator might lose them.
struct LosesMapZero {
    dir: PathBuf,
    victim_of: String,
    struck: AtomicBool,
}

impl App for LosesMapZero {
    fn name(&self) -> &str {
        "loses-map-zero"
    }

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        if name == self.victim_of && !self.struck.swap(true, Ordering::SeqCst) {
            for entry in std::fs::read_dir(&self.dir)? {
                let path = entry?.path();
                let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if file.starts_with("mr-0-") {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        words::try_for_each_word(contents, |word| emit(word, "1"))?;
        Ok(())
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        Ok(values.count().to_string())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_lost_map_output_is_made_again_and_the_job_completes() {
    let inputs_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let first = write(inputs_dir.path(), "first", "the cat sat on the mat");
    let second = write(inputs_dir.path(), "second", "the dog ate the cat");
    let app = Arc::new(LosesMapZero {
        dir: out.path().to_path_buf(),
        victim_of: second.clone(),
        struck: AtomicBool::new(false),
    });
    // One worker: map 0 runs first, then map 1 deletes its output before any reduce.
    let job = Job {
        workers: 1,
        n_reduce: 3,
        ..Job::new(vec![first, second], out.path())
    };
    let report = flotilla_mr::run(app.clone(), job).expect("the job completes");
    assert!(app.struck.load(Ordering::SeqCst));
    assert!(
        report.progress.maps_rerun >= 1,
        "map task 0 ran again: {:?}",
        report.progress
    );
    assert_eq!(
        sorted_output_lines(out.path()).unwrap(),
        ["ate 1", "cat 2", "dog 1", "mat 1", "on 1", "sat 1", "the 4"]
    );
}
