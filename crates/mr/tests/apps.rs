//! The built-in applications' behaviour (spec §3) and the exec app's protocol.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use flotilla_mr::app::App;
use flotilla_mr::apps::{by_name, exec_app, AppSpec};
use flotilla_mr::exec::ExecApp;
use flotilla_mr::sequential::{sequential, sequential_exec};
use flotilla_mr::task::{
    output_path, run_map, run_reduce, run_reduce_exec, MapTask, ReduceTask, TaskError,
};
use flotilla_mr::texts::{lab_texts, lab_texts_dir};

fn app(name: &str) -> Box<dyn App> {
    by_name(&AppSpec::builtin(name)).unwrap()
}

/// The pairs `app.map` emits for `text`.
fn map_pairs(app: &dyn App, name: &str, text: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut reader: &[u8] = text;
    app.map(name, &mut reader, &mut |k: &str, v: &str| {
        pairs.push((k.to_owned(), v.to_owned()));
        Ok(())
    })
    .unwrap();
    pairs.sort();
    pairs
}

fn reduce(app: &dyn App, key: &str, values: &[&str]) -> String {
    let mut values = values.iter().map(|v| v.to_string());
    app.reduce(key, &mut values).unwrap()
}

/// Writes `(name, text)` inputs into `dir` and returns them as job inputs.
fn write_inputs(dir: &Path, texts: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
    texts
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            (name.to_string(), path)
        })
        .collect()
}

fn sequential_output(app: &dyn App, inputs: &[(String, PathBuf)]) -> String {
    let out = tempfile::tempdir().unwrap();
    sequential(app, inputs, out.path()).unwrap();
    std::fs::read_to_string(out.path().join("mr-out-0")).unwrap()
}

#[test]
fn wc_counts_words_like_the_lab() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(
        dir.path(),
        &[
            ("one.txt", "The cat sat.\nThe cat's hat: 2 cats, 1 hat!\n"),
            ("two.txt", "the CAT—café Ⅻ naïve\u{0301} sat"),
        ],
    );
    // Counted by hand: case-sensitive; "cat's" is "cat" + "s"; "Ⅻ" and the combining
    // accent are not letters; digits separate.
    let expected = "CAT 1\nThe 2\ncafé 1\ncat 2\ncats 1\nhat 2\nnaïve 1\ns 1\nsat 2\nthe 1\n";
    assert_eq!(sequential_output(app("wc").as_ref(), &inputs), expected);
}

#[test]
fn wc_maps_a_one_per_word_and_combines_them_into_counts() {
    let pairs = map_pairs(app("wc").as_ref(), "x", b"a b a c a b");
    let ones: Vec<(String, String)> = ["a", "a", "a", "b", "b", "c"]
        .iter()
        .map(|w| (w.to_string(), "1".to_string()))
        .collect();
    assert_eq!(pairs, ones, "the lab's map (pairs sorted)");
    assert_eq!(reduce(app("wc").as_ref(), "a", &["3", "1", "1"]), "5");
    // Its combiner sums counts, its own partial sums among them.
    assert!(app("wc").has_combiner());
    let mut partial = ["3", "1", "2"].into_iter();
    assert_eq!(app("wc").combine("a", &mut partial).unwrap(), "6");
    let mut bad = ["x".to_string()].into_iter();
    let err = app("wc").reduce("a", &mut bad).unwrap_err();
    assert!(err.to_string().contains("not a count"), "{err}");
    let mut bad = ["1", "-1"].into_iter();
    let err = app("wc").combine("a", &mut bad).unwrap_err();
    assert!(err.to_string().contains("not a count"), "{err}");
}

#[test]
fn wc_on_a_real_text_matches_a_plain_count() {
    let path = lab_texts_dir().join("pg-metamorphosis.txt");
    let bytes = std::fs::read(&path).unwrap();
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for word in flotilla_mr::words::words(&bytes) {
        *expected.entry(word).or_default() += 1;
    }
    let expected: String = expected.iter().map(|(w, n)| format!("{w} {n}\n")).collect();
    let inputs = vec![("../pg-metamorphosis.txt".to_string(), path)];
    assert_eq!(sequential_output(app("wc").as_ref(), &inputs), expected);
}

#[test]
fn indexer_lists_documents_per_word() {
    let pairs = map_pairs(app("indexer").as_ref(), "doc", b"b a b a c");
    assert_eq!(
        pairs,
        [
            ("a".into(), "doc".into()),
            ("b".into(), "doc".into()),
            ("c".into(), "doc".into())
        ]
    );
    assert_eq!(
        reduce(
            app("indexer").as_ref(),
            "w",
            &["../pg-tom_sawyer.txt", "../pg-grimm.txt"]
        ),
        "2 ../pg-grimm.txt,../pg-tom_sawyer.txt"
    );
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), &[("b.txt", "x y"), ("a.txt", "y z y")]);
    assert_eq!(
        sequential_output(app("indexer").as_ref(), &inputs),
        "x 1 b.txt\ny 2 a.txt,b.txt\nz 1 a.txt\n"
    );
}

#[test]
fn crash_and_nocrash_describe_each_input() {
    let text = "héllo\nworld".as_bytes();
    let pairs = map_pairs(app("nocrash").as_ref(), "../pg-x.txt", text);
    assert_eq!(
        pairs,
        [
            ("a".into(), "../pg-x.txt".into()),
            ("b".into(), "11".into()),
            ("c".into(), text.len().to_string()),
            ("d".into(), "xyzzy".into()),
        ]
    );
    // Values sorted as strings, not numbers.
    assert_eq!(
        reduce(app("nocrash").as_ref(), "c", &["9", "10", "100"]),
        "10 100 9"
    );
    assert_eq!(app("crash").name(), "crash");
}

#[test]
fn rtiming_and_early_exit_pairs() {
    let pairs = map_pairs(app("rtiming").as_ref(), "in", b"ignored");
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    assert!(pairs.iter().all(|(_, v)| v == "1"));
    assert_eq!(
        map_pairs(app("early_exit").as_ref(), "../pg-grimm.txt", b"..."),
        [("../pg-grimm.txt".into(), "1".into())]
    );
    assert_eq!(
        reduce(app("early_exit").as_ref(), "../pg-grimm.txt", &["1"]),
        "1"
    );
}

#[test]
fn app_specs() {
    let exec = exec_app(&AppSpec::exec("m", "r")).unwrap();
    assert_eq!((exec.map_cmd(), exec.reduce_cmd()), ("m", "r"));
    let err = by_name(&AppSpec::builtin("exec")).err().unwrap();
    assert!(err.to_string().contains("map command"), "{err}");
    assert!(exec_app(&AppSpec::builtin("wc")).is_err());
}

// ---------------------------------------------------------------------------------------
// exec

/// Word count in awk (ASCII letters only, so the texts below are ASCII).
const AWK_MAP: &str = r#"awk '{ n = split($0, w, /[^A-Za-z]+/); for (i = 1; i <= n; i++) if (w[i] != "") print w[i] "\t1" }'"#;
const AWK_REDUCE: &str = r#"awk -F '\t' '$1 != k { if (NR > 1) print k "\t" n; k = $1; n = 0 } { n += $2 } END { if (NR > 0) print k "\t" n }'"#;

fn awk_wc() -> ExecApp {
    ExecApp::new(AWK_MAP, AWK_REDUCE)
}

const ASCII_TEXTS: &[(&str, &str)] = &[
    ("one.txt", "The cat sat on the mat.\nThe cat's hat!\n"),
    ("two.txt", "a bat, a cat;\n\nthe END"),
    ("three.txt", ""),
];

#[test]
fn exec_word_count_matches_wc() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), ASCII_TEXTS);
    let expected = sequential_output(app("wc").as_ref(), &inputs);

    // The reference run with the reduce program once for the whole job.
    let out = tempfile::tempdir().unwrap();
    sequential_exec(&awk_wc(), &inputs, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        expected
    );

    // Distributed: program per map task, and per reduce task or per key.
    for per_task in [true, false] {
        let job = tempfile::tempdir().unwrap();
        for (id, (name, path)) in inputs.iter().enumerate() {
            let task = MapTask {
                id,
                attempt: 0,
                input_name: name,
                input_path: path,
                input_span: None,
                n_reduce: 3,
                dir: job.path(),
                memory_limit: 1 << 20,
            };
            run_map(&awk_wc(), &task).unwrap();
        }
        let mut lines = Vec::new();
        for id in 0..3 {
            let task = ReduceTask {
                id,
                map_attempts: &vec![0; inputs.len()],
                dir: job.path(),
                fetched: None,
                output: &output_path(job.path(), id),
            };
            let stats = if per_task {
                run_reduce_exec(&awk_wc(), &task).unwrap()
            } else {
                run_reduce(&awk_wc(), &task).unwrap()
            };
            let text = std::fs::read_to_string(output_path(job.path(), id)).unwrap();
            assert_eq!(stats.keys as usize, text.lines().count());
            lines.extend(text.lines().map(str::to_owned));
        }
        lines.sort();
        let mut want: Vec<String> = expected.lines().map(str::to_owned).collect();
        want.sort();
        assert_eq!(lines, want, "per_task = {per_task}");
    }
}

#[test]
fn exec_streams_a_large_input_through_the_programs() {
    // 8 MiB of input: far more than a pipe holds, in both directions.
    let dir = tempfile::tempdir().unwrap();
    let line = "alpha beta gamma delta epsilon zeta eta theta\n";
    let text = line.repeat(8 * 1024 * 1024 / line.len());
    let inputs = write_inputs(dir.path(), &[("big.txt", &text)]);
    let out = tempfile::tempdir().unwrap();
    let stats = sequential_exec(&awk_wc(), &inputs, out.path()).unwrap();
    assert_eq!(stats.maps[0].bytes_read, text.len() as u64);
    let n = text.len() / line.len();
    let expected: String = [
        "alpha", "beta", "delta", "epsilon", "eta", "gamma", "theta", "zeta",
    ]
    .iter()
    .map(|w| format!("{w} {n}\n"))
    .collect();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        expected
    );
}

#[test]
fn exec_passes_the_input_name_and_escapes_fields() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), &[("in put.txt", "ignored")]);
    // The name arrives as $1 and in FLOTILLA_INPUT_NAME; keys carry escaped tabs and
    // backslashes. (An escaped newline arrives too, but no output line can hold it: see
    // exec_processes.rs.)
    let map = r#"cat >/dev/null; printf '%s\t%s\n' "$1" "$FLOTILLA_INPUT_NAME"; printf 'tab\\there\tnew line\n'; printf 'back\\\\slash\t%s\n' "$FLOTILLA_PHASE""#;
    // Identity reduce: the first value of each key.
    let reduce = r#"awk -F '\t' '$1 != k { print $1 "\t" $2; k = $1 }'"#;
    let out = tempfile::tempdir().unwrap();
    sequential_exec(&ExecApp::new(map, reduce), &inputs, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        "back\\slash map\nin put.txt in put.txt\ntab\there new line\n"
    );
}

/// Runs an exec job over small ASCII inputs and returns its error.
fn exec_error(map: &str, reduce: &str) -> TaskError {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), ASCII_TEXTS);
    let out = tempfile::tempdir().unwrap();
    let err = sequential_exec(&ExecApp::new(map, reduce), &inputs, out.path()).unwrap_err();
    assert!(!out.path().join("mr-out-0").exists());
    err
}

fn assert_mentions(err: &TaskError, parts: &[&str]) {
    let message = err.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

#[test]
fn exec_map_errors_name_the_command_and_line() {
    let err = exec_error("cat >/dev/null; exit 3", AWK_REDUCE);
    assert_mentions(
        &err,
        &["cat >/dev/null; exit 3", "exit status: 3", "one.txt"],
    );

    let err = exec_error(r"printf 'a\t1\nno tab here\n'", AWK_REDUCE);
    assert_mentions(&err, &["output line 2", "no TAB"]);

    let err = exec_error(r"printf 'a\tb\tc\n'", AWK_REDUCE);
    assert_mentions(&err, &["output line 1", "more than one TAB"]);

    let err = exec_error(r"printf 'a\\q\t1\n'", AWK_REDUCE);
    assert_mentions(&err, &["output line 1", "unknown escape \\q"]);

    let err = exec_error("no-such-program-flotilla", AWK_REDUCE);
    assert_mentions(&err, &["no-such-program-flotilla", "exit status: 127"]);
}

#[test]
fn exec_reduce_errors_name_the_command_and_line() {
    // Prints a made-up key first.
    let err = exec_error(AWK_MAP, r"cat >/dev/null; printf 'zzz\t1\n'");
    assert_mentions(
        &err,
        &["output line 1", "\"zzz\"", "next input key is \"END\""],
    );

    // Prints every key twice.
    let err = exec_error(
        AWK_MAP,
        r#"awk -F '\t' '$1 != k { print $1 "\t1"; print $1 "\t1"; k = $1 }'"#,
    );
    assert_mentions(&err, &["output line 2", "\"END\""]);

    // Prints nothing.
    let err = exec_error(AWK_MAP, "cat >/dev/null");
    assert_mentions(&err, &["printed no line for input key \"END\"", "0 lines"]);

    // Fails.
    let err = exec_error(AWK_MAP, "cat >/dev/null; exit 7");
    assert_mentions(&err, &["exit status: 7"]);

    // Malformed.
    let err = exec_error(AWK_MAP, r"cat >/dev/null; echo oops");
    assert_mentions(&err, &["output line 1", "no TAB"]);
}

#[test]
fn exec_reduce_that_stops_reading_is_an_error() {
    // A reduce task of ~4 MiB: more than the pipe holds, so the writer sees the pipe close.
    let dir = tempfile::tempdir().unwrap();
    let text = "word ".repeat(800_000);
    let inputs = write_inputs(dir.path(), &[("big.txt", &text)]);
    let map = r#"awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'"#;
    let out = tempfile::tempdir().unwrap();
    let err = sequential_exec(
        &ExecApp::new(map, "head -c 100 >/dev/null"),
        &inputs,
        out.path(),
    )
    .unwrap_err();
    assert_mentions(&err, &["head -c 100", "before reading all of it"]);
}

/// The exec app from `examples/exec/` (the shell scripts the README points to).
#[test]
fn the_exec_example_scripts_work() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/exec");
    let map = format!("sh {}", examples.join("wc-map.sh").display());
    let reduce = format!("sh {}", examples.join("wc-reduce.sh").display());
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), ASCII_TEXTS);
    let out = tempfile::tempdir().unwrap();
    sequential_exec(&ExecApp::new(map, reduce), &inputs, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        sequential_output(app("wc").as_ref(), &inputs)
    );
}

#[test]
fn the_map_input_may_be_ignored() {
    // A map program that never reads its input is fine (like rtiming).
    let dir = tempfile::tempdir().unwrap();
    let text = "x".repeat(1 << 20);
    let inputs = write_inputs(dir.path(), &[("big.txt", &text)]);
    let out = tempfile::tempdir().unwrap();
    let map = r"printf 'k\tv\n'";
    let reduce = r#"awk -F '\t' '{ print $1 "\t" $2 }'"#;
    sequential_exec(&ExecApp::new(map, reduce), &inputs, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        "k v\n"
    );
}

/// The exec app through the generic App interface works too.
#[test]
fn exec_reduce_per_key_through_the_app_trait() {
    let exec = awk_wc();
    let mut values = ["1", "2", "3"].iter().map(|s| s.to_string());
    assert_eq!(exec.reduce("word", &mut values).unwrap(), "6");
    let mut reader: &[u8] = b"hi there hi";
    let mut pairs = Vec::new();
    exec.map(
        "n",
        &mut reader as &mut dyn BufRead,
        &mut |k: &str, v: &str| -> io::Result<()> {
            pairs.push(format!("{k}={v}"));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(pairs, ["hi=1", "there=1", "hi=1"]);
}

/// The Python example splits words exactly like the built-in wc: the whole job's output is
/// identical on the lab's texts (non-ASCII letters included).
#[test]
fn the_python_exec_example_equals_the_builtin_wc() {
    let python_works = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_works {
        eprintln!("python3 is not available: skipping");
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/exec");
    let map = format!("python3 '{}'", examples.join("wc_map.py").display());
    let reduce = format!("python3 '{}'", examples.join("wc_reduce.py").display());
    let mut inputs: Vec<(String, PathBuf)> = lab_texts()
        .unwrap()
        .into_iter()
        .map(|path| (path.display().to_string(), path))
        .collect();
    // Invalid UTF-8 and letters cut by the 64 KiB chunking of the script.
    let dir = tempfile::tempdir().unwrap();
    let mut odd = b"caf\xc3\xa9\xff\xfeab\xe4\xb8 ".repeat(9000);
    odd.extend_from_slice("中文ⅫAbc".as_bytes());
    let odd_path = dir.path().join("odd.txt");
    std::fs::write(&odd_path, &odd).unwrap();
    inputs.push(("odd".into(), odd_path));

    let out = tempfile::tempdir().unwrap();
    sequential_exec(&ExecApp::new(map, reduce), &inputs, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("mr-out-0")).unwrap(),
        sequential_output(app("wc").as_ref(), &inputs)
    );
}
