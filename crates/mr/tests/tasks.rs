//! Map and reduce tasks on a shared directory: equivalence with the sequential reference,
//! spilling, atomic outputs, and every kind of bad input.

use std::io::{self, BufRead, Read};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flotilla_mr::app::{App, Emit};
use flotilla_mr::apps::{by_name, AppSpec};
use flotilla_mr::sequential::{sequential, sequential_with};
use flotilla_mr::task::{
    intermediate_path, output_path, read_intermediate, run_map, run_reduce, MapTask, ReduceTask,
    Reducer, TaskError, REDUCE_FAN_IN, SPILL_FAN_IN, TEMP_PREFIX,
};
use flotilla_mr::words;

mod oracle;

/// The lab's eight inputs, named as the lab's script names them.
fn gutenberg_inputs() -> Vec<(String, PathBuf)> {
    let inputs: Vec<(String, PathBuf)> = flotilla_mr::texts::lab_texts()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|path| {
            let name = format!("../{}", path.file_name().unwrap().to_str().unwrap());
            (name, path)
        })
        .collect();
    assert_eq!(inputs.len(), 8, "eight texts");
    inputs
}

/// Runs every map task, then every reduce task, in `dir`; returns the reduce stats.
fn run_job(
    app: &dyn App,
    inputs: &[(String, PathBuf)],
    n_reduce: usize,
    dir: &Path,
    memory_limit: usize,
) -> u64 {
    let mut spills = 0;
    for (id, (name, path)) in inputs.iter().enumerate() {
        let stats = run_map(
            app,
            &MapTask {
                id,
                attempt: 0,
                input_name: name,
                input_path: path,
                input_span: None,
                n_reduce,
                dir,
                memory_limit,
            },
        )
        .unwrap();
        assert_eq!(stats.bytes_read, std::fs::metadata(path).unwrap().len());
        spills += stats.spills;
    }
    for id in 0..n_reduce {
        run_reduce(
            app,
            &ReduceTask {
                id,
                map_attempts: &vec![0; inputs.len()],
                dir,
                fetched: None,
                output: &output_path(dir, id),
            },
        )
        .unwrap();
    }
    spills
}

/// `sort mr-out* | grep .` as a list of lines.
fn sorted_outputs(dir: &Path) -> Vec<String> {
    flotilla_mr::task::sorted_output_lines(dir).unwrap()
}

fn sequential_lines(app: &dyn App, inputs: &[(String, PathBuf)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    sequential(app, inputs, dir.path()).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["mr-out-0"], "only the output is left behind");
    let text = std::fs::read_to_string(dir.path().join("mr-out-0")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // mrsequential writes keys in order: check the key column is sorted byte-wise.
    let keys: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys sorted and distinct"
    );
    let mut sorted = lines;
    sorted.sort();
    sorted
}

/// Names of leftover temporary files in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(TEMP_PREFIX))
        .collect()
}

/// Runs `app_name` as a job of map and reduce tasks, compares the output with the
/// sequential reference (and returns it), and checks how intermediate files are linked.
fn check_distributed_equals_sequential(app_name: &str) -> Vec<String> {
    let app = by_name(&AppSpec::builtin(app_name)).unwrap();
    let inputs = gutenberg_inputs();
    let expected = sequential_lines(app.as_ref(), &inputs);
    assert!(!expected.is_empty());
    let dir = tempfile::tempdir().unwrap();
    run_job(app.as_ref(), &inputs, 10, dir.path(), 32 << 20);
    let lines = sorted_outputs(dir.path());
    assert_eq!(lines, expected, "{app_name}");
    assert!(temp_files(dir.path()).is_empty());
    for m in 0..8 {
        let inode = std::fs::metadata(intermediate_path(dir.path(), m, 0, 0))
            .unwrap()
            .ino();
        for r in 0..10 {
            let meta = std::fs::metadata(intermediate_path(dir.path(), m, 0, r)).unwrap();
            assert!(meta.is_file());
            assert_eq!(
                meta.ino(),
                inode,
                "mr-{m}-{r} is a link to map task {m}'s file"
            );
        }
    }
    lines
}

#[test]
fn wc_distributed_equals_sequential_and_the_oracle() {
    let lines = check_distributed_equals_sequential("wc");
    oracle::assert_agrees(&lines, &oracle::wc(&gutenberg_inputs()), "wc");
}

#[test]
fn indexer_distributed_equals_sequential_and_the_oracle() {
    let lines = check_distributed_equals_sequential("indexer");
    oracle::assert_agrees(&lines, &oracle::indexer(&gutenberg_inputs()), "indexer");
}

#[test]
fn nocrash_distributed_equals_sequential() {
    let _ = check_distributed_equals_sequential("nocrash");
    // And the content is what the lab expects: four lines describing the eight inputs.
    let inputs = gutenberg_inputs();
    let app = by_name(&AppSpec::builtin("nocrash")).unwrap();
    let lines = sequential_lines(app.as_ref(), &inputs);
    let mut names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let mut sizes: Vec<String> = inputs
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len().to_string())
        .collect();
    sizes.sort();
    let mut name_lengths: Vec<String> = inputs.iter().map(|(n, _)| n.len().to_string()).collect();
    name_lengths.sort();
    assert_eq!(
        lines,
        [
            format!("a {}", names.join(" ")),
            format!("b {}", name_lengths.join(" ")),
            format!("c {}", sizes.join(" ")),
            format!("d {}", ["xyzzy"; 8].join(" ")),
        ]
    );
    assert!(lines[2].contains("138885") && lines[2].contains("594262"));
}

/// The lab's wc: one `(word, "1")` per occurrence — lots of pairs, for the spill path.
struct EveryWord;

impl App for EveryWord {
    fn name(&self) -> &str {
        "every-word"
    }

    fn map(&self, _name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        words::try_for_each_word(contents, |word| emit(word, "1")).map(|_| ())
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        Ok(values.count().to_string())
    }
}

/// `(word, "1")` per occurrence with a combiner that sums (`fail_on` makes it fail).
struct CombinedWords {
    fail_on: Option<&'static str>,
}

fn sum_counts(values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
    let mut total = 0u64;
    for value in values {
        total += value
            .parse::<u64>()
            .map_err(|_| io::Error::other(format!("{value:?} is not a count")))?;
    }
    Ok(total.to_string())
}

impl App for CombinedWords {
    fn name(&self) -> &str {
        "combined-words"
    }

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        EveryWord.map(name, contents, emit)
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        sum_counts(values)
    }

    fn has_combiner(&self) -> bool {
        true
    }

    fn combine(&self, key: &str, values: &mut dyn Iterator<Item = &str>) -> io::Result<String> {
        if self.fail_on == Some(key) {
            return Err(io::Error::other("this combiner refuses this key"));
        }
        sum_counts(&mut values.map(str::to_owned))
    }
}

/// Per word a weight of 1 to 3 (from its length and where it is), summed; with or without a
/// combiner (the map's first value, the combiner's "common value", is whatever comes first).
struct WeightedWords {
    combiner: bool,
}

impl App for WeightedWords {
    fn name(&self) -> &str {
        "weighted-words"
    }

    fn map(&self, _name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        let mut n = 0usize;
        words::try_for_each_word(contents, |word| {
            n += 1;
            let weight = ["1", "2", "3", "12", "1"][(word.len() + n / 7) % 5];
            emit(word, weight)
        })
        .map(|_| ())
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        sum_counts(values)
    }

    fn has_combiner(&self) -> bool {
        self.combiner
    }

    fn combine(&self, _key: &str, values: &mut dyn Iterator<Item = &str>) -> io::Result<String> {
        sum_counts(&mut values.map(str::to_owned))
    }
}

#[test]
fn a_combiner_over_values_of_every_kind_gives_the_output_without_it() {
    // All eight texts, twice, in one map task: megabytes of values other than the first, so
    // the pending ones are combined several times, with the common ones counted apart; a
    // small memory limit moves the table to the sort buffer and spills too.
    let texts = tempfile::tempdir().unwrap();
    let all = texts.path().join("all.txt");
    let mut bytes = Vec::new();
    for _ in 0..2 {
        for (_, path) in gutenberg_inputs() {
            bytes.extend(std::fs::read(path).unwrap());
        }
    }
    std::fs::write(&all, &bytes).unwrap();
    let inputs = vec![("all.txt".to_string(), all)];
    let expected = sequential_lines(&WeightedWords { combiner: false }, &inputs);
    for limit in [64 << 20, 256 << 10] {
        let dir = tempfile::tempdir().unwrap();
        run_job(
            &WeightedWords { combiner: true },
            &inputs,
            4,
            dir.path(),
            limit,
        );
        assert_eq!(sorted_outputs(dir.path()), expected, "memory limit {limit}");
    }
}

#[test]
fn with_a_combiner_a_map_task_holds_its_vocabulary_not_a_pair_per_word() {
    // A text whose pairs ("1" per word) take several times a memory limit that its distinct
    // words fit in: gathered by key and combined as they come, the task never spills; every
    // pair goes through the sort buffer without (the combiner running only as runs are
    // written), and it spills.
    let inputs = gutenberg_inputs();
    let (name, path) = inputs
        .iter()
        .max_by_key(|(_, path)| std::fs::metadata(path).unwrap().len())
        .unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let words = words::words(text.as_bytes());
    let distinct: std::collections::HashSet<&String> = words.iter().collect();
    // What the task counts: per distinct word its bytes and some 100 more, and 5 bytes per
    // value not combined yet.
    let vocabulary: usize = distinct.iter().map(|w| w.len() + 110).sum();
    let limit = vocabulary + 5 * words.len();
    let pairs: usize = words.iter().map(|w| w.len() + 1 + 16).sum();
    assert!(
        pairs > limit + limit / 2,
        "{pairs} bytes of pairs, limit {limit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let task = MapTask {
        id: 0,
        attempt: 0,
        input_name: name,
        input_path: path,
        input_span: None,
        n_reduce: 3,
        dir: dir.path(),
        memory_limit: limit,
    };
    let stats = run_map(&CombinedWords { fail_on: None }, &task).unwrap();
    assert_eq!(stats.spills, 0, "{stats:?}");
    assert_eq!(stats.pairs as usize, words.len());
    let without = run_map(&EveryWord, &task).unwrap();
    assert!(without.spills > 0, "{without:?}");
}

#[test]
fn the_combiner_leaves_one_record_per_key_in_every_run_and_output() {
    let inputs = gutenberg_inputs();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    // One input, a 16 KiB limit: dozens of spills, merged in levels, all combined.
    let (name, path) = &inputs[4];
    let counts: std::collections::HashMap<String, String> =
        sequential_lines(wc.as_ref(), &inputs[4..5])
            .into_iter()
            .map(|line| {
                let (word, count) = line.split_once(' ').unwrap();
                (word.to_owned(), count.to_owned())
            })
            .collect();
    let dir = tempfile::tempdir().unwrap();
    let task = MapTask {
        id: 0,
        attempt: 0,
        input_name: name,
        input_path: path,
        input_span: None,
        n_reduce: 3,
        dir: dir.path(),
        memory_limit: 16 * 1024,
    };
    let stats = run_map(&CombinedWords { fail_on: None }, &task).unwrap();
    assert!(stats.spills as usize > 2 * SPILL_FAN_IN, "{stats:?}");
    let mut records = 0;
    for r in 0..3 {
        let pairs = read_intermediate(dir.path(), 0, 0, r).unwrap();
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "bucket {r}: one record per key, in order"
        );
        for (word, count) in &pairs {
            assert_eq!(Some(count), counts.get(word), "{word}'s combined count");
        }
        records += pairs.len();
    }
    assert_eq!(records, counts.len(), "every word once");
    assert!(records < stats.pairs as usize / 5, "{records} of {stats:?}");

    // No spill at all: frequent words have thousands of values in the one in-memory run,
    // which the combiner takes a batch at a time.
    let dir = tempfile::tempdir().unwrap();
    let whole = MapTask {
        dir: dir.path(),
        memory_limit: 64 << 20,
        ..task
    };
    let stats = run_map(&CombinedWords { fail_on: None }, &whole).unwrap();
    assert_eq!(stats.spills, 0, "{stats:?}");
    let mut records = 0;
    for r in 0..3 {
        for (word, count) in read_intermediate(dir.path(), 0, 0, r).unwrap() {
            assert_eq!(Some(&count), counts.get(&word), "{word}'s combined count");
            records += 1;
        }
    }
    assert_eq!(records, counts.len(), "every word once");
    assert!(
        counts
            .values()
            .any(|c| c.parse::<u64>().unwrap() > 3 * 1024),
        "a word with several batches of values"
    );

    // A whole job with the combiner everywhere gives wc's output.
    let dir = tempfile::tempdir().unwrap();
    run_job(
        &CombinedWords { fail_on: None },
        &inputs,
        10,
        dir.path(),
        256 * 1024,
    );
    assert_eq!(
        sorted_outputs(dir.path()),
        sequential_lines(wc.as_ref(), &inputs)
    );

    // A combiner's error fails the map task, naming the key; nothing is published.
    let dir = tempfile::tempdir().unwrap();
    let task = MapTask {
        dir: dir.path(),
        ..task
    };
    let err = run_map(
        &CombinedWords {
            fail_on: Some("the"),
        },
        &task,
    )
    .unwrap_err();
    assert!(
        matches!(&err, TaskError::Combine { key, .. } if key == "the"),
        "{err}"
    );
    assert!(!intermediate_path(dir.path(), 0, 0, 0).exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn spills_under_a_small_memory_limit_keep_the_output_exact() {
    let inputs = gutenberg_inputs();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let expected = sequential_lines(wc.as_ref(), &inputs);

    // Two inputs with a 64 KiB limit: dozens of spills each, so runs are merged in levels.
    let dir = tempfile::tempdir().unwrap();
    let (name, path) = &inputs[4];
    let stats = run_map(
        &EveryWord,
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: name,
            input_path: path,
            input_span: None,
            n_reduce: 3,
            dir: dir.path(),
            memory_limit: 64 * 1024,
        },
    )
    .unwrap();
    assert!(stats.spills as usize > 2 * SPILL_FAN_IN, "{stats:?}");
    assert!(stats.pairs > 100_000, "{stats:?}");
    let mut pairs = 0;
    for r in 0..3 {
        let records = read_intermediate(dir.path(), 0, 0, r).unwrap();
        assert!(
            records.windows(2).all(|w| w[0].0 <= w[1].0),
            "bucket {r} sorted"
        );
        assert!(records.iter().all(|(_, v)| v == "1"));
        pairs += records.len() as u64;
    }
    assert_eq!(pairs, stats.pairs, "no pair lost or duplicated by spilling");
    assert!(temp_files(dir.path()).is_empty());

    // The whole job, spilling everywhere, gives wc's exact output.
    let dir = tempfile::tempdir().unwrap();
    let spills = run_job(&EveryWord, &inputs, 10, dir.path(), 256 * 1024);
    assert!(spills > 8, "{spills} spills");
    assert_eq!(sorted_outputs(dir.path()), expected);

    // The sequential reference spills too, with the same result.
    let dir = tempfile::tempdir().unwrap();
    let stats = sequential_with(
        &EveryWord,
        Reducer::PerKey(&EveryWord),
        &inputs,
        dir.path(),
        100_000,
    )
    .unwrap();
    assert!(stats.maps.iter().all(|m| m.spills > 0));
    let mut lines: Vec<String> = std::fs::read_to_string(dir.path().join("mr-out-0"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, expected);
}

#[test]
fn a_spilling_map_holds_at_most_spill_fan_in_run_readers_whatever_n_reduce() {
    // With no memory at all every pair is a spill: SPILL_FAN_IN² - 1 distinct words leave
    // SPILL_FAN_IN - 1 merged runs and SPILL_FAN_IN - 1 single spills for the final merge,
    // over 1000 partitions. Each open run reader holds a 64 KiB buffer; a merge that opened
    // every partition's segments at once would hold SPILL_FAN_IN × 1000 of them, and a final
    // merge of all those runs 2 × (SPILL_FAN_IN - 1).
    let words = SPILL_FAN_IN * SPILL_FAN_IN - 1;
    let text: Vec<String> = (0..words)
        .map(|i| {
            let (high, low) = (i / 26, i % 26);
            [b'a' + high as u8, b'a' + low as u8, b'x']
                .iter()
                .map(|&b| b as char)
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, text.join(" ")).unwrap();
    let n_reduce = 1000;
    let stats = run_map(
        &EveryWord,
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: "in",
            input_path: &input,
            input_span: None,
            n_reduce,
            dir: dir.path(),
            memory_limit: 0,
        },
    )
    .unwrap();
    assert_eq!(stats.spills as usize, words, "{stats:?}");
    assert!(
        (1..=SPILL_FAN_IN).contains(&stats.peak_spill_readers),
        "{} run readers open at once (at most {SPILL_FAN_IN} allowed)",
        stats.peak_spill_readers
    );
    let mut found = Vec::new();
    for r in 0..n_reduce {
        found.extend(read_intermediate(dir.path(), 0, 0, r).unwrap());
    }
    found.sort();
    let mut expected: Vec<(String, String)> =
        text.into_iter().map(|w| (w, "1".to_string())).collect();
    expected.sort();
    assert_eq!(found, expected, "every pair exactly once");
}

#[test]
fn a_zero_memory_limit_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "b a c a b a d e f g h a").unwrap();
    let stats = run_map(
        &EveryWord,
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: "in",
            input_path: &input,
            input_span: None,
            n_reduce: 2,
            dir: dir.path(),
            memory_limit: 0,
        },
    )
    .unwrap();
    assert_eq!(stats.spills, 12);
    run_reduce(
        &EveryWord,
        &ReduceTask {
            id: 0,
            map_attempts: &[0],
            dir: dir.path(),
            fetched: None,
            output: &output_path(dir.path(), 0),
        },
    )
    .unwrap();
    run_reduce(
        &EveryWord,
        &ReduceTask {
            id: 1,
            map_attempts: &[0],
            dir: dir.path(),
            fetched: None,
            output: &output_path(dir.path(), 1),
        },
    )
    .unwrap();
    assert_eq!(
        sorted_outputs(dir.path()),
        ["a 4", "b 2", "c 1", "d 1", "e 1", "f 1", "g 1", "h 1"]
    );
}

/// Writes a small job's intermediate files (two maps, two reduces) and returns its dir.
fn small_job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    for (id, text) in ["the cat and the hat", "a cat a bat the end"]
        .iter()
        .enumerate()
    {
        let input = dir.path().join(format!("input-{id}"));
        std::fs::write(&input, text).unwrap();
        run_map(
            wc.as_ref(),
            &MapTask {
                id,
                attempt: 0,
                input_name: "x",
                input_path: &input,
                input_span: None,
                n_reduce: 2,
                dir: dir.path(),
                memory_limit: 1 << 20,
            },
        )
        .unwrap();
    }
    dir
}

fn reduce_small_job(dir: &Path, id: usize) -> Result<(), TaskError> {
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    run_reduce(
        wc.as_ref(),
        &ReduceTask {
            id,
            map_attempts: &[0, 0],
            dir,
            fetched: None,
            output: &output_path(dir, id),
        },
    )
    .map(|_| ())
}

/// The reduce task fails, says `expect`, and leaves neither output nor temporary files.
fn assert_reduce_fails(dir: &Path, id: usize, expect: &[&str]) {
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    assert_reduce_fails_with(wc.as_ref(), dir, id, expect);
}

/// [`assert_reduce_fails`] with another application's reduce. The failure must also be
/// marked as a lost output of the map task whose file it names, which the coordinator runs
/// again.
fn assert_reduce_fails_with(app: &dyn App, dir: &Path, id: usize, expect: &[&str]) {
    let err = run_reduce(
        app,
        &ReduceTask {
            id,
            map_attempts: &[0, 0],
            dir,
            fetched: None,
            output: &output_path(dir, id),
        },
    )
    .unwrap_err();
    let message = err.to_string();
    for part in expect {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
    let map = err.unreadable_map().unwrap_or_else(|| {
        panic!("{message:?} should be marked as a map task's unreadable output")
    });
    assert!(
        message.contains(&format!("mr-{map}-")),
        "{message:?} is about the file of map task {map}"
    );
    assert!(!output_path(dir, id).exists(), "no output after a failure");
    assert!(
        temp_files(dir).is_empty(),
        "no temporary files after a failure"
    );
}

#[test]
fn intact_intermediate_files_reduce_fine() {
    let dir = small_job();
    reduce_small_job(dir.path(), 0).unwrap();
    reduce_small_job(dir.path(), 1).unwrap();
    assert_eq!(
        sorted_outputs(dir.path()),
        ["a 2", "and 1", "bat 1", "cat 2", "end 1", "hat 1", "the 3"]
    );
}

#[test]
fn a_missing_intermediate_file_is_an_error() {
    let dir = small_job();
    let path = intermediate_path(dir.path(), 1, 0, 0);
    std::fs::remove_file(&path).unwrap();
    assert_reduce_fails(dir.path(), 0, &["missing", "mr-1-0", "map task 1"]);
}

/// The documented layout of an intermediate file (segments, index, footer), checked here
/// independently of the implementation: returns each segment's byte range.
fn segments_of(bytes: &[u8]) -> Vec<Range<usize>> {
    let n = bytes.len();
    assert_eq!(&bytes[n - 8..], b"FLMRIX01", "footer magic");
    let n_reduce = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[n - 20..n - 16].try_into().unwrap());
    let index_start = n - 20 - 16 * n_reduce;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[index_start..n - 20]);
    hasher.update(&bytes[n - 16..n - 8]);
    assert_eq!(hasher.finalize(), crc, "index CRC");
    let mut ranges = Vec::new();
    for entry in bytes[index_start..n - 20].chunks_exact(16) {
        let offset = u64::from_le_bytes(entry[..8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(entry[8..].try_into().unwrap()) as usize;
        assert_eq!(offset, ranges.last().map_or(0, |r: &Range<usize>| r.end));
        ranges.push(offset..offset + len);
    }
    assert_eq!(
        ranges.last().unwrap().end,
        index_start,
        "segments tile the data"
    );
    for range in &ranges {
        assert_eq!(&bytes[range.start..range.start + 8], b"FLMRKV01");
    }
    ranges
}

/// An intermediate file with the given segment bytes, index entries and partition count,
/// its index checksummed correctly (so only what is under test is wrong).
fn container(segments: &[&[u8]], index: &[(u64, u64)], n_reduce: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = segments.concat();
    let mut entries = Vec::new();
    for (offset, len) in index {
        entries.extend_from_slice(&offset.to_le_bytes());
        entries.extend_from_slice(&len.to_le_bytes());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&entries);
    hasher.update(&n_reduce.to_le_bytes());
    bytes.extend_from_slice(&entries);
    bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
    bytes.extend_from_slice(&n_reduce.to_le_bytes());
    bytes.extend_from_slice(b"FLMRIX01");
    bytes
}

/// A well-formed intermediate file holding `segments`.
fn container_of(segments: &[&[u8]]) -> Vec<u8> {
    let mut index = Vec::new();
    let mut offset = 0;
    for segment in segments {
        index.push((offset, segment.len() as u64));
        offset += segment.len() as u64;
    }
    container(segments, &index, segments.len() as u64)
}

#[test]
fn every_name_of_a_map_task_is_one_file() {
    let dir = small_job();
    for m in 0..2 {
        let names: Vec<_> = (0..2)
            .map(|r| intermediate_path(dir.path(), m, 0, r))
            .collect();
        let metas: Vec<_> = names
            .iter()
            .map(|p| std::fs::metadata(p).unwrap())
            .collect();
        assert_eq!(metas[0].ino(), metas[1].ino(), "one inode for map task {m}");
        assert_eq!(
            metas[0].nlink(),
            2,
            "and no other name (no temporary link left)"
        );
        let bytes = std::fs::read(&names[0]).unwrap();
        assert_eq!(segments_of(&bytes).len(), 2, "one segment per reduce task");
    }
    assert!(temp_files(dir.path()).is_empty());
    // Rebuilding the file from its own segments gives it back byte for byte: nothing in it
    // but the segments, the index and the footer.
    let bytes = std::fs::read(intermediate_path(dir.path(), 0, 0, 0)).unwrap();
    let ranges = segments_of(&bytes);
    assert_eq!(
        container_of(&[&bytes[ranges[0].clone()], &bytes[ranges[1].clone()]]),
        bytes
    );
}

#[test]
fn a_truncated_intermediate_file_is_corrupt() {
    let dir = small_job();
    let path = intermediate_path(dir.path(), 0, 0, 1);
    let bytes = std::fs::read(&path).unwrap();
    let ranges = segments_of(&bytes);
    let (zero, one) = (ranges[0].clone(), ranges[1].clone());
    assert!(one.len() > 30);
    let n = bytes.len();
    // Cut in the footer, the index, segment 1 (trailer, a record, right after its header),
    // between the segments, in segment 0, and to nothing.
    for cut in [
        n - 1,
        n - 8,
        n - 19,
        n - 20,
        n - 21,
        n - 36,
        one.end,
        one.end - 1,
        one.end - 10,
        one.end - 17,
        one.start + 12,
        one.start + 8,
        one.start + 3,
        one.start,
        zero.end - 1,
        zero.start + 8,
        19,
        3,
        0,
    ] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_reduce_fails(dir.path(), 1, &["mr-0-1", "corrupt"]);
        assert_reduce_fails(dir.path(), 0, &["mr-0-0", "corrupt"]);
    }
}

#[test]
fn a_flipped_byte_is_caught() {
    let dir = small_job();
    let path = intermediate_path(dir.path(), 0, 0, 1);
    let bytes = std::fs::read(&path).unwrap();
    let ranges = segments_of(&bytes);
    // Every byte of the file belongs to a segment (read by its reduce task only) or to the
    // index and footer (read by every reduce task): each one flipped is caught by each task
    // that reads it. (Records reach the application before their segment's trailer is
    // checked, so wc's reduce could fail first on a damaged value, with its own error; a
    // reduce that accepts any value lets the check speak.)
    for position in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x20;
        // The names are links to one file: writing through one damages all of them.
        std::fs::write(&path, &damaged).unwrap();
        let segment = ranges.iter().position(|range| range.contains(&position));
        let readers: Vec<usize> = match segment {
            Some(r) => vec![r],
            None => (0..ranges.len()).collect(),
        };
        for r in readers {
            let name = format!("mr-0-{r}");
            assert_reduce_fails_with(&EveryWord, dir.path(), r, &[&name, "corrupt"]);
        }
    }
    assert_eq!(ranges.last().unwrap().end + 2 * 16 + 20, bytes.len());
    std::fs::write(&path, &bytes).unwrap();
    let segment = |r: usize| &bytes[ranges[r].clone()];
    let write = |contents: &[u8]| std::fs::write(&path, contents).unwrap();

    // Garbage after segment 1's trailer, with an index that covers it.
    let mut longer = segment(1).to_vec();
    longer.push(0);
    write(&container_of(&[segment(0), &longer]));
    assert_reduce_fails(dir.path(), 1, &["unexpected bytes after the trailer"]);
    // A segment cut short by its index entry.
    let shorter = &segment(1)[..segment(1).len() - 1];
    write(&container_of(&[segment(0), shorter]));
    assert_reduce_fails(dir.path(), 1, &["mr-0-1", "corrupt", "truncated"]);
    // A foreign file, and foreign bytes as a segment.
    write(b"{\"Key\":\"a\",\"Value\":\"1\"}\n");
    assert_reduce_fails(dir.path(), 1, &["mr-0-1", "wrong magic"]);
    write(b"FLMRIX01");
    assert_reduce_fails(dir.path(), 1, &["mr-0-1", "corrupt"]);
    write(&container_of(&[
        segment(0),
        b"{\"Key\":\"a\",\"Value\":\"1\"}\n",
    ]));
    assert_reduce_fails(dir.path(), 1, &["mr-0-1", "wrong magic"]);
    // A huge length field is refused before anything is allocated.
    let mut huge = segment(1)[..8].to_vec();
    huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    write(&container_of(&[segment(0), &huge]));
    assert_reduce_fails(dir.path(), 1, &["truncated", "claims"]);

    // Indexes with a valid checksum that do not describe the file are refused too.
    let (a, b) = (segment(0).len() as u64, segment(1).len() as u64);
    let both = [segment(0), segment(1)];
    for (index, n_reduce) in [
        (vec![(0, a), (a + 1, b - 1)], 2), // a gap
        (vec![(0, a), (a - 1, b + 1)], 2), // an overlap
        (vec![(0, a), (a, b - 1)], 2),     // bytes left over
        (vec![(0, a), (a, b + 1)], 2),     // past the segments, into the index
        (vec![(0, a), (a, u64::MAX)], 2),  // overflowing
        (vec![(1, a - 1), (a, b)], 2),     // not from offset 0
        (vec![(b, a), (0, b)], 2),         // out of order
        (vec![(0, a + b)], 1),             // no partition 1
        (vec![(0, a), (a, b)], 1 << 60),   // an index larger than the file
        (vec![(0, a), (a, b)], u64::MAX),  // an overflowing index size
    ] {
        write(&container(&both, &index, n_reduce));
        assert_reduce_fails(dir.path(), 1, &["mr-0-1", "corrupt"]);
    }
    write(&container(&[&both.concat()], &[(0, a + b)], 1));
    assert_reduce_fails(
        dir.path(),
        1,
        &["mr-0-1", "corrupt", "none for reduce task 1"],
    );
    // Bytes between the last segment and the index, which no segment reader would notice.
    write(&container(
        &[segment(0), segment(1), b"x"],
        &[(0, a), (a, b)],
        2,
    ));
    for r in 0..2 {
        let name = format!("mr-0-{r}");
        assert_reduce_fails(dir.path(), r, &[&name, "corrupt", "segments end at"]);
    }
    write(&container(&both, &[(0, a), (a, b)], 2));
    reduce_small_job(dir.path(), 1).unwrap();
    std::fs::remove_file(output_path(dir.path(), 1)).unwrap();

    // A directory in place of the file.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert_reduce_fails(dir.path(), 1, &["not a regular file"]);
}

fn map_one(
    app: &dyn App,
    input: &Path,
    dir: &Path,
) -> Result<flotilla_mr::task::MapStats, TaskError> {
    run_map(
        app,
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: "input",
            input_path: input,
            input_span: None,
            n_reduce: 4,
            dir,
            memory_limit: 1 << 20,
        },
    )
}

#[test]
fn a_missing_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let missing = dir.path().join("no-such-file.txt");
    let err = map_one(wc.as_ref(), &missing, dir.path()).unwrap_err();
    assert!(matches!(err, TaskError::OpenInput { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("no-such-file.txt") && message.contains("cannot open input"),
        "{message}"
    );
    assert!(!intermediate_path(dir.path(), 0, 0, 0).exists());
}

#[test]
fn a_directory_as_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let err = map_one(wc.as_ref(), dir.path(), dir.path()).unwrap_err();
    assert!(matches!(err, TaskError::InputIsDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn binary_input_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("binary");
    // Every byte value, invalid UTF-8 sequences, a few letters, NULs: 256 KiB of it.
    let mut data = Vec::new();
    let mut state: u32 = 12345;
    while data.len() < 256 * 1024 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.push((state >> 16) as u8);
        if data.len() % 1000 == 0 {
            data.extend_from_slice("é中\u{0}abc\u{FFFD}".as_bytes());
        }
    }
    std::fs::write(&input, &data).unwrap();
    for name in ["wc", "indexer", "nocrash"] {
        let app = by_name(&AppSpec::builtin(name)).unwrap();
        let stats = map_one(app.as_ref(), &input, dir.path()).unwrap();
        assert_eq!(stats.bytes_read, data.len() as u64);
        for r in 0..4 {
            run_reduce(
                app.as_ref(),
                &ReduceTask {
                    id: r,
                    map_attempts: &[0],
                    dir: dir.path(),
                    fetched: None,
                    output: &output_path(dir.path(), r),
                },
            )
            .unwrap();
        }
        for line in sorted_outputs(dir.path()) {
            let key = line.split(' ').next().unwrap();
            if name != "nocrash" {
                assert!(key.chars().all(words::is_letter), "{key:?}");
            }
        }
    }
}

#[test]
fn an_empty_input_writes_every_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty");
    std::fs::write(&input, "").unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let stats = map_one(wc.as_ref(), &input, dir.path()).unwrap();
    assert_eq!((stats.pairs, stats.bytes_read), (0, 0));
    for r in 0..4 {
        assert!(read_intermediate(dir.path(), 0, 0, r).unwrap().is_empty());
        run_reduce(
            wc.as_ref(),
            &ReduceTask {
                id: r,
                map_attempts: &[0],
                dir: dir.path(),
                fetched: None,
                output: &output_path(dir.path(), r),
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(output_path(dir.path(), r)).unwrap(), b"");
    }
}

#[test]
fn a_rerun_map_task_replaces_its_files_harmlessly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "one two two three three three").unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    map_one(wc.as_ref(), &input, dir.path()).unwrap();
    let first: Vec<_> = (0..4)
        .map(|r| read_intermediate(dir.path(), 0, 0, r).unwrap())
        .collect();
    map_one(wc.as_ref(), &input, dir.path()).unwrap();
    let second: Vec<_> = (0..4)
        .map(|r| read_intermediate(dir.path(), 0, 0, r).unwrap())
        .collect();
    assert_eq!(first, second);
    assert!(temp_files(dir.path()).is_empty());
}

/// Runs map task 0 of `EveryWord` over `text` with 4 reduce tasks.
fn map_text(dir: &Path, text: &str) {
    let input = dir.join(format!("input-{}", text.len()));
    std::fs::write(&input, text).unwrap();
    map_one(&EveryWord, &input, dir).unwrap();
}

/// Every reduce task's output of a job whose only map task is map task 0.
fn reduce_all(dir: &Path) -> Vec<String> {
    for id in 0..4 {
        run_reduce(
            &EveryWord,
            &ReduceTask {
                id,
                map_attempts: &[0],
                dir,
                fetched: None,
                output: &output_path(dir, id),
            },
        )
        .unwrap();
    }
    sorted_outputs(dir)
}

#[test]
fn a_rerun_map_task_replaces_every_name_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = "alpha beta beta gamma delta epsilon zeta eta theta iota kappa";
    let second = "lambda mu mu nu xi omicron pi rho sigma tau upsilon alpha";
    map_text(dir.path(), first);
    let old_inode = std::fs::metadata(intermediate_path(dir.path(), 0, 0, 0))
        .unwrap()
        .ino();
    let old_bytes = std::fs::read(intermediate_path(dir.path(), 0, 0, 2)).unwrap();
    let mut old_handle = std::fs::File::open(intermediate_path(dir.path(), 0, 0, 2)).unwrap();

    map_text(dir.path(), second);
    let inodes: Vec<u64> = (0..4)
        .map(|r| {
            std::fs::metadata(intermediate_path(dir.path(), 0, 0, r))
                .unwrap()
                .ino()
        })
        .collect();
    assert!(inodes.iter().all(|&i| i == inodes[0]), "{inodes:?}");
    assert_ne!(
        inodes[0], old_inode,
        "a new file, not the old one rewritten"
    );
    // A reader that had the old file open still reads it whole and unchanged.
    let mut still = Vec::new();
    old_handle.read_to_end(&mut still).unwrap();
    assert_eq!(still, old_bytes);
    // Reduce sees exactly the second input, nothing of the first.
    let wanted = [
        "alpha 1",
        "lambda 1",
        "mu 2",
        "nu 1",
        "omicron 1",
        "pi 1",
        "rho 1",
        "sigma 1",
        "tau 1",
        "upsilon 1",
        "xi 1",
    ];
    assert_eq!(reduce_all(dir.path()), wanted);
    let pairs: usize = (0..4)
        .map(|r| read_intermediate(dir.path(), 0, 0, r).unwrap().len())
        .sum();
    assert_eq!(pairs, 12);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn readers_never_see_a_missing_or_partial_intermediate_file() {
    let dir = tempfile::tempdir().unwrap();
    let texts = ["one two three four five six", "seven eight nine ten eleven"];
    let mut versions = texts.iter().map(|text| {
        map_text(dir.path(), text);
        (0..4)
            .map(|r| read_intermediate(dir.path(), 0, 0, r).unwrap())
            .collect::<Vec<_>>()
    });
    let (first, second) = (versions.next().unwrap(), versions.next().unwrap());
    assert_ne!(first, second);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..60 {
                map_text(dir.path(), texts[round % 2]);
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
            for (r, (a, b)) in first.iter().zip(&second).enumerate() {
                // Never missing, never corrupt, never a mixture: one version or the other.
                let pairs = read_intermediate(dir.path(), 0, 0, r).unwrap();
                assert!(pairs == *a || pairs == *b, "mr-0-{r}: {pairs:?}");
                reads += 1;
            }
        }
    });
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn zero_reduce_tasks_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "x").unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let err = run_map(
        wc.as_ref(),
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: "in",
            input_path: &input,
            input_span: None,
            n_reduce: 0,
            dir: dir.path(),
            memory_limit: 1024,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("n_reduce"), "{err}");
}

/// An app whose map or reduce fails on request.
struct Failing {
    in_map: bool,
}

impl App for Failing {
    fn name(&self) -> &str {
        "failing"
    }

    fn map(&self, _name: &str, _contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        emit("k", "v")?;
        if self.in_map {
            return Err(io::Error::other("map says no"));
        }
        Ok(())
    }

    fn reduce(&self, key: &str, _values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        Err(io::Error::other(format!("reduce says no to {key}")))
    }
}

#[test]
fn application_errors_fail_the_task_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "x").unwrap();
    let err = map_one(&Failing { in_map: true }, &input, dir.path()).unwrap_err();
    assert!(matches!(err, TaskError::Map { .. }), "{err:?}");
    assert!(
        err.to_string().contains("failing") && err.to_string().contains("map says no"),
        "{err}"
    );
    assert!(!intermediate_path(dir.path(), 0, 0, 0).exists());

    map_one(&Failing { in_map: false }, &input, dir.path()).unwrap();
    let r = flotilla_mr::partition::bucket("k", 4);
    let err = run_reduce(
        &Failing { in_map: false },
        &ReduceTask {
            id: r,
            map_attempts: &[0],
            dir: dir.path(),
            fetched: None,
            output: &output_path(dir.path(), r),
        },
    )
    .unwrap_err();
    assert!(matches!(err, TaskError::Reduce { .. }), "{err:?}");
    assert_eq!(
        err.unreadable_map(),
        None,
        "the application failed, not an input"
    );
    assert!(err.to_string().contains("reduce says no to k"), "{err}");
    assert!(!output_path(dir.path(), r).exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn sequential_fails_cleanly_on_a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let wc = by_name(&AppSpec::builtin("wc")).unwrap();
    let mut inputs = gutenberg_inputs();
    inputs.push((
        "../pg-missing.txt".into(),
        dir.path().join("pg-missing.txt"),
    ));
    let err = sequential(wc.as_ref(), &inputs, dir.path()).unwrap_err();
    assert!(err.to_string().contains("pg-missing.txt"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no output and no scratch directory left");
}

#[test]
fn a_reduce_over_more_map_tasks_than_its_fan_in() {
    let dir = tempfile::tempdir().unwrap();
    let n_map = 2 * REDUCE_FAN_IN + 3;
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for id in 0..n_map {
        let input = dir.path().join(format!("input-{id}"));
        let text = format!("common w{} w{} x{id}", id % 7, id % 3);
        for word in words::words(text.as_bytes()) {
            *expected.entry(word).or_default() += 1;
        }
        std::fs::write(&input, text).unwrap();
        run_map(
            &EveryWord,
            &MapTask {
                id,
                attempt: 0,
                input_name: "in",
                input_path: &input,
                input_span: None,
                n_reduce: 2,
                dir: dir.path(),
                memory_limit: 1 << 20,
            },
        )
        .unwrap();
    }
    let mut pairs = 0;
    for id in 0..2 {
        let stats = run_reduce(
            &EveryWord,
            &ReduceTask {
                id,
                map_attempts: &vec![0; n_map],
                dir: dir.path(),
                fetched: None,
                output: &output_path(dir.path(), id),
            },
        )
        .unwrap();
        pairs += stats.pairs;
    }
    assert_eq!(pairs, expected.values().sum::<u64>());
    let mut want: Vec<String> = expected.iter().map(|(w, n)| format!("{w} {n}")).collect();
    want.sort();
    assert_eq!(sorted_outputs(dir.path()), want);
    assert!(temp_files(dir.path()).is_empty());

    // A damaged file in the second group is still named in the error.
    let damaged = intermediate_path(dir.path(), REDUCE_FAN_IN + 5, 0, 1);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = segments_of(&bytes)[1].end - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let err = run_reduce(
        &EveryWord,
        &ReduceTask {
            id: 1,
            map_attempts: &vec![0; n_map],
            dir: dir.path(),
            fetched: None,
            output: &output_path(dir.path(), 1),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("mr-{}-1", REDUCE_FAN_IN + 5)),
        "{err}"
    );
    assert_eq!(err.unreadable_map(), Some(REDUCE_FAN_IN + 5), "{err}");
}

#[test]
fn a_reduce_reads_the_attempt_of_each_map_task_it_is_told_to() {
    // Two attempts of map task 0 that produced different pairs (a map function that is not
    // deterministic): each keeps its own files, and a reduce reads the one it names.
    let dir = tempfile::tempdir().unwrap();
    for (attempt, text) in [(0, "apple"), (1, "banana"), (2, "cherry")] {
        let input = dir.path().join(format!("input-{attempt}"));
        std::fs::write(&input, text).unwrap();
        run_map(
            &EveryWord,
            &MapTask {
                id: 0,
                attempt,
                input_name: "in",
                input_path: &input,
                input_span: None,
                n_reduce: 1,
                dir: dir.path(),
                memory_limit: 1 << 20,
            },
        )
        .unwrap();
    }
    assert!(dir.path().join("mr-0-0").is_file());
    assert!(dir.path().join("mr-0-0.1").is_file());
    assert_eq!(
        intermediate_path(dir.path(), 0, 2, 0),
        dir.path().join("mr-0-0.2")
    );
    for (attempt, expected) in [(1, "banana 1"), (0, "apple 1"), (2, "cherry 1")] {
        run_reduce(
            &EveryWord,
            &ReduceTask {
                id: 0,
                map_attempts: &[attempt],
                dir: dir.path(),
                fetched: None,
                output: &output_path(dir.path(), 0),
            },
        )
        .unwrap();
        assert_eq!(sorted_outputs(dir.path()), [expected]);
    }
    // An attempt that wrote nothing is a lost output of that map task.
    let err = run_reduce(
        &EveryWord,
        &ReduceTask {
            id: 0,
            map_attempts: &[3],
            dir: dir.path(),
            fetched: None,
            output: &output_path(dir.path(), 0),
        },
    )
    .unwrap_err();
    assert_eq!(err.unreadable_map(), Some(0), "{err}");
}

#[test]
fn a_missing_job_directory_is_the_workers_problem_not_a_lost_output() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("not-mounted");
    let err = run_reduce(
        &EveryWord,
        &ReduceTask {
            id: 0,
            map_attempts: &[0, 0],
            dir: &gone,
            fetched: None,
            output: &output_path(&gone, 0),
        },
    )
    .unwrap_err();
    assert_eq!(err.unreadable_map(), None, "{err}");
    assert!(err.to_string().contains("not-mounted"), "{err}");
}
