//! 6.5840 Lab 1's test-mr.sh, check by check, with real processes: `flotilla mr coordinator`
//! and several `flotilla mr worker`s on the Project Gutenberg texts, outputs compared with
//! `flotilla mr sequential` and, for `wc` and `indexer`, with an independent in-memory
//! oracle that shares no code with the workers (`crates/mr/tests/oracle/mod.rs`). Plus the
//! bad inputs a real tool must refuse clearly.
//!
//! Like the script, every run happens in a scratch directory `mr-tmp` with the inputs given as
//! `../pg-*.txt`; every process has a deadline (45 s, or 120 s in the crash test) after which
//! it is killed and the test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../mr/tests/oracle/mod.rs"]
mod oracle;

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
const LIMIT: Duration = Duration::from_secs(45);
const CRASH_LIMIT: Duration = Duration::from_secs(120);

/// A scratch area: `root/pg-*.txt` (links to the shared texts) and the working dir `root/mr-tmp`.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    inputs: Vec<String>,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let mut inputs = Vec::new();
        let texts = flotilla_mr::texts::lab_texts().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(texts.len(), 8, "the 8 Gutenberg texts");
        for text in texts {
            let name = text.file_name().unwrap().to_str().unwrap().to_string();
            std::os::unix::fs::symlink(&text, root.join(&name)).expect("link input");
            inputs.push(format!("../{name}"));
        }
        let work = root.join("mr-tmp");
        std::fs::create_dir(&work).expect("mr-tmp");
        Scratch {
            _dir: dir,
            root,
            work,
            inputs,
        }
    }

    /// The sorted, blank-free lines of `sequential --app app`, run in a sibling directory so
    /// the input names are the same.
    fn oracle(&self, app: &str) -> Vec<String> {
        let dir = self.root.join(format!("oracle-{app}"));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(FLOTILLA)
            .current_dir(&dir)
            .args(["mr", "sequential", "--app", app])
            .args(&self.inputs)
            .status()
            .expect("run sequential");
        assert!(status.success(), "sequential {app} failed");
        sorted_outputs(&dir)
    }

    /// The inputs as the independent oracle takes them: `(name as given, path)`.
    fn named_inputs(&self) -> Vec<(String, PathBuf)> {
        self.inputs
            .iter()
            .map(|name| (name.clone(), self.work.join(name)))
            .collect()
    }

    fn coordinator(&self, extra: &[&str]) -> (Proc, String) {
        self.coordinator_over(&self.inputs, extra)
    }

    /// A coordinator over other inputs than the eight texts.
    fn coordinator_over(&self, inputs: &[String], extra: &[&str]) -> (Proc, String) {
        let mut child = Command::new(FLOTILLA)
            .current_dir(&self.work)
            .args(["mr", "coordinator", "--listen", "127.0.0.1:0"])
            .args(if extra.contains(&"--progress") {
                &[][..]
            } else {
                &["--progress", "none"][..]
            })
            .args(extra)
            .args(inputs)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.root.join("coordinator.err")).unwrap())
            .spawn()
            .expect("start coordinator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .trim()
            .strip_prefix("flotilla mr: coordinator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        (Proc::new("coordinator", child, LIMIT), addr)
    }

    /// What the (last) coordinator printed on stderr.
    fn coordinator_stderr(&self) -> String {
        std::fs::read_to_string(self.root.join("coordinator.err")).unwrap_or_default()
    }

    fn worker(&self, addr: &str, app: &str, limit: Duration) -> Proc {
        self.worker_with(addr, &["--app", app], None, limit)
    }

    /// A worker with these arguments after `--coordinator addr`, its stderr written to the
    /// file `root/<stderr>` if given.
    fn worker_with(
        &self,
        addr: &str,
        args: &[&str],
        stderr: Option<&str>,
        limit: Duration,
    ) -> Proc {
        let child = Command::new(FLOTILLA)
            .current_dir(&self.work)
            .args(["mr", "worker", "--coordinator", addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(match stderr {
                Some(name) => Stdio::from(std::fs::File::create(self.root.join(name)).unwrap()),
                None => Stdio::null(),
            })
            .spawn()
            .expect("start worker");
        Proc::new("worker", child, limit)
    }
}

/// A child process with a deadline; killed when dropped.
struct Proc {
    what: &'static str,
    child: Child,
    deadline: Instant,
}

impl Proc {
    fn new(what: &'static str, child: Child, limit: Duration) -> Proc {
        Proc {
            what,
            child,
            deadline: Instant::now() + limit,
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the exit; fails the test at the deadline.
    fn wait(&mut self) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < self.deadline,
                "{} did not exit within its time limit",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sort mr-out* | grep .` of a directory.
fn sorted_outputs(dir: &Path) -> Vec<String> {
    flotilla_mr::task::sorted_output_lines(dir).expect("read mr-out files")
}

fn wait_all(procs: &mut [Proc]) {
    for p in procs {
        p.wait();
    }
}

#[test]
fn wc() {
    let s = Scratch::new();
    let expected = s.oracle("wc");
    assert!(
        expected.len() > 10_000,
        "the oracle counted {} words",
        expected.len()
    );
    let (mut coordinator, addr) = s.coordinator(&[]);
    let mut workers: Vec<_> = (0..3).map(|_| s.worker(&addr, "wc", LIMIT)).collect();
    assert!(coordinator.wait().success());
    let lines = sorted_outputs(&s.work);
    assert_eq!(
        lines, expected,
        "wc output is not the same as the sequential output"
    );
    oracle::assert_agrees(&lines, &oracle::wc(&s.named_inputs()), "wc");
    wait_all(&mut workers); // workers exit on their own
}

#[test]
fn indexer() {
    let s = Scratch::new();
    let expected = s.oracle("indexer");
    let (_coordinator, addr) = s.coordinator(&[]);
    let _background = s.worker(&addr, "indexer", LIMIT);
    let mut foreground = s.worker(&addr, "indexer", LIMIT);
    assert!(foreground.wait().success());
    // A worker's exit means every output is final.
    let lines = sorted_outputs(&s.work);
    assert_eq!(
        lines, expected,
        "indexer output is not the same as the sequential output"
    );
    oracle::assert_agrees(&lines, &oracle::indexer(&s.named_inputs()), "indexer");
}

#[test]
fn map_parallelism() {
    let s = Scratch::new();
    let (_coordinator, addr) = s.coordinator(&[]);
    let _background = s.worker(&addr, "mtiming", LIMIT);
    let mut foreground = s.worker(&addr, "mtiming", LIMIT);
    assert!(foreground.wait().success());
    let lines = sorted_outputs(&s.work);
    let workers = lines.iter().filter(|l| l.starts_with("times-")).count();
    assert_eq!(workers, 2, "saw {workers} workers rather than 2");
    let parallel = lines
        .iter()
        .any(|l| l.starts_with("parallel") && l.split(' ').skip(1).any(|v| v == "2"));
    assert!(parallel, "map workers did not run in parallel: {lines:?}");
}

#[test]
fn reduce_parallelism() {
    let s = Scratch::new();
    let (_coordinator, addr) = s.coordinator(&[]);
    let _background = s.worker(&addr, "rtiming", LIMIT);
    let mut foreground = s.worker(&addr, "rtiming", LIMIT);
    assert!(foreground.wait().success());
    let lines = sorted_outputs(&s.work);
    let parallel = lines
        .iter()
        .filter(|l| l.len() == 3 && l.as_bytes()[0].is_ascii_lowercase() && l.ends_with(" 2"))
        .count();
    assert!(parallel >= 2, "too few parallel reduces: {lines:?}");
}

#[test]
fn job_count() {
    let s = Scratch::new();
    let (_coordinator, addr) = s.coordinator(&[]);
    let _w1 = s.worker(&addr, "jobcount", LIMIT);
    let mut w2 = s.worker(&addr, "jobcount", LIMIT);
    assert!(w2.wait().success());
    // Two late workers: the job is over, they must exit without doing harm.
    let _w3 = s.worker(&addr, "jobcount", LIMIT);
    let mut w4 = s.worker(&addr, "jobcount", LIMIT);
    assert!(w4.wait().success());
    let lines = sorted_outputs(&s.work);
    assert_eq!(
        lines,
        vec!["a 8".to_string()],
        "map jobs ran incorrect number of times"
    );
}

#[test]
fn early_exit() {
    let s = Scratch::new();
    let (coordinator, addr) = s.coordinator(&[]);
    let mut procs = vec![coordinator];
    procs.extend((0..3).map(|_| s.worker(&addr, "early_exit", LIMIT)));
    // Wait for the first process to exit, whichever it is.
    let deadline = Instant::now() + LIMIT;
    while !procs.iter_mut().any(|p| p.exited().is_some()) {
        assert!(
            Instant::now() < deadline,
            "nothing exited within the time limit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let initial = sorted_outputs(&s.work);
    wait_all(&mut procs);
    let last = sorted_outputs(&s.work);
    assert_eq!(initial, last, "output changed after first worker exited");
    assert_eq!(last.len(), 8, "one line per input: {last:?}");
}

#[test]
fn crash() {
    let s = Scratch::new();
    let expected = s.oracle("nocrash");
    let (mut coordinator, addr) = s.coordinator(&[]);
    coordinator.deadline = Instant::now() + CRASH_LIMIT;
    let mut workers = vec![s.worker(&addr, "crash", CRASH_LIMIT)];
    // Three restart loops: while the coordinator runs, keep a crash worker going in each,
    // replacing it a second after it exits (crashed or not).
    let mut restart_at: Vec<Option<Instant>> = vec![Some(Instant::now()); 3];
    let mut slots: Vec<Option<Proc>> = (0..3).map(|_| None).collect();
    while coordinator.exited().is_none() {
        assert!(
            Instant::now() < coordinator.deadline,
            "the crash test did not finish within 120 s"
        );
        for (slot, at) in slots.iter_mut().zip(restart_at.iter_mut()) {
            match slot {
                Some(p) => {
                    if p.exited().is_some() {
                        *slot = None;
                        *at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                None => {
                    if at.is_some_and(|t| Instant::now() >= t) {
                        *slot = Some(s.worker(&addr, "crash", CRASH_LIMIT));
                        *at = None;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(coordinator.wait().success());
    workers.extend(slots.into_iter().flatten());
    wait_all(&mut workers);
    assert_eq!(
        sorted_outputs(&s.work),
        expected,
        "crash output is not the same as the sequential output"
    );
}

// ---- slow tasks and bad workers ---------------------------------------------------------

/// Waits (polling, at most `limit`) until `path` exists.
fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exec-app arguments whose map prints `name<TAB>lines of the input`, after running `before`
/// (shell commands), and whose reduce passes the single value of each key through.
fn line_count_app(before: &str) -> Vec<String> {
    [
        "--app".to_string(),
        "exec".to_string(),
        "--map-cmd".to_string(),
        format!(r#"{before} printf '%s\t%s\n' "$1" "$(wc -l)""#),
        "--reduce-cmd".to_string(),
        "cat".to_string(),
    ]
    .to_vec()
}

/// The output `line_count_app` must give: `name lines` per input.
fn line_counts(s: &Scratch, inputs: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = inputs
        .iter()
        .map(|name| {
            let text = std::fs::read(s.work.join(name)).unwrap();
            let count = text.iter().filter(|&&b| b == b'\n').count();
            format!("{name} {count}")
        })
        .collect();
    lines.sort();
    lines
}

/// The line-count app whose first map task (of any worker) holds until the file `go` exists
/// (at most 45 s), after creating the file `started`: returns the app's arguments and the
/// two paths.
fn gated_line_count_app(s: &Scratch) -> (Vec<String>, PathBuf, PathBuf) {
    let started = s.root.join("started");
    let go = s.root.join("go");
    let gate = format!(
        r#"if mkdir {gate} 2>/dev/null; then : > {started}; i=0; while [ ! -e {go} ] && [ $i -lt 900 ]; do sleep 0.05; i=$((i+1)); done; fi;"#,
        gate = s.root.join("gate").display(),
        started = started.display(),
        go = go.display()
    );
    (line_count_app(&gate), started, go)
}

#[test]
fn a_task_longer_than_the_task_timeout_finishes_with_two_workers() {
    // One map task of three seconds, re-issued after one: the second worker takes it too,
    // and the first complete report must be accepted (formerly each report came from a
    // worker that no longer held the task, and the two took it from each other forever).
    let s = Scratch::new();
    let inputs = vec![s.inputs[0].clone()];
    let (mut coordinator, addr) = s.coordinator_over(&inputs, &["--task-timeout", "1"]);
    let app = line_count_app("sleep 3;");
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut workers: Vec<_> = (0..2)
        .map(|_| s.worker_with(&addr, &app, None, LIMIT))
        .collect();
    assert!(coordinator.wait().success(), "{}", s.coordinator_stderr());
    assert_eq!(sorted_outputs(&s.work), line_counts(&s, &inputs));
    wait_all(&mut workers);
}

#[test]
fn with_backup_tasks_a_straggler_does_not_hold_up_the_job() {
    // The first map task holds for up to 45 s (a straggler); the task timeout is a minute.
    // With --backup-tasks the other worker, finding nothing idle, runs a backup of it, and
    // the job ends with the backup's output, the straggler still stuck.
    let s = Scratch::new();
    let inputs = vec![s.inputs[0].clone(), s.inputs[1].clone()];
    let started_at = Instant::now();
    let (mut coordinator, addr) =
        s.coordinator_over(&inputs, &["--task-timeout", "60", "--backup-tasks"]);
    let (app, started, go) = gated_line_count_app(&s);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let _straggler = s.worker_with(&addr, &app, None, LIMIT);
    wait_for_file(&started, LIMIT);
    let _other = s.worker_with(&addr, &app, None, LIMIT);
    assert!(coordinator.wait().success(), "{}", s.coordinator_stderr());
    let took = started_at.elapsed();
    assert!(!go.exists());
    assert!(
        took < Duration::from_secs(25),
        "the job took {took:?}: it waited for the straggler"
    );
    assert_eq!(sorted_outputs(&s.work), line_counts(&s, &inputs));
}

#[test]
fn without_a_shared_dir_the_map_outputs_of_a_killed_worker_are_made_again() {
    // Worker A, alone, maps every input (shipped to it) and keeps the outputs; its first
    // reduce then holds until killed with SIGKILL. Worker B, started after, finds A's
    // outputs gone with it: the coordinator runs A's map tasks again on B, and B does the
    // reduces. Every worker has a directory of its own; no intermediate file is ever in the
    // coordinator's.
    let s = Scratch::new();
    let (mut coordinator, addr) = s.coordinator(&[
        "--no-shared-dir",
        "--reduce",
        "3",
        "--task-timeout",
        "2",
        "--progress",
        "lines",
    ]);
    let started = s.root.join("reduce-started");
    let hold = format!(
        r#": > {started}; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; cat"#,
        started = started.display()
    );
    let dir_a = s.root.join("host-a");
    let dir_b = s.root.join("host-b");
    for dir in [&dir_a, &dir_b] {
        std::fs::create_dir(dir).unwrap();
    }
    let app_a = line_count_app("");
    let mut app_a: Vec<&str> = app_a.iter().map(String::as_str).collect();
    *app_a.last_mut().unwrap() = &hold;
    let work_a = ["--work-dir", dir_a.to_str().unwrap()];
    let mut a = s.worker_with(&addr, &[&app_a[..], &work_a].concat(), None, LIMIT);
    wait_for_file(&started, LIMIT);
    // Every map task is done (the progress line comes within half a second).
    let deadline = Instant::now() + LIMIT;
    while !s.coordinator_stderr().contains("maps 8/8") {
        assert!(Instant::now() < deadline, "{}", s.coordinator_stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let a_files = std::fs::read_dir(&dir_a).unwrap().count();
    assert_eq!(a_files, 1, "worker A keeps its files in its own directory");
    a.child.kill().unwrap();
    a.wait();
    let app_b = line_count_app("");
    let app_b: Vec<&str> = app_b.iter().map(String::as_str).collect();
    let work_b = ["--work-dir", dir_b.to_str().unwrap()];
    let mut b = s.worker_with(&addr, &[&app_b[..], &work_b].concat(), None, LIMIT);
    assert!(coordinator.wait().success(), "{}", s.coordinator_stderr());
    b.wait();
    let last = s
        .coordinator_stderr()
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    assert!(last.contains("maps 8/8, reduces 3/3"), "{last}");
    assert!(
        last.contains("8 maps rerun"),
        "A's map tasks ran again: {last}"
    );
    assert_eq!(sorted_outputs(&s.work), line_counts(&s, &s.inputs));
    let mut left: Vec<String> = std::fs::read_dir(&s.work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["mr-out-0", "mr-out-1", "mr-out-2"]);
    assert_eq!(
        std::fs::read_dir(&dir_b).unwrap().count(),
        0,
        "worker B removed its directory when it exited"
    );
}

/// A worker whose map and reduce program does not exist: every task fails at once.
const BROKEN_WORKER: [&str; 6] = [
    "--app",
    "exec",
    "--map-cmd",
    "no-such-program-flotilla",
    "--reduce-cmd",
    "no-such-program-flotilla",
];

#[test]
fn a_worker_that_keeps_failing_is_dismissed_and_the_others_finish_the_job() {
    let s = Scratch::new();
    let (mut coordinator, addr) = s.coordinator(&["--task-timeout", "2"]);
    // The healthy worker holds its first map task until the broken worker is gone, so the
    // broken one meets the seven other map tasks first.
    let (app, started, go) = gated_line_count_app(&s);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut healthy = s.worker_with(&addr, &app, None, LIMIT);
    wait_for_file(&started, LIMIT);
    // Let the healthy worker's last request age past the task timeout: only its heartbeats
    // (every 0.5 s) show it is alive when the broken worker is dismissed; without them the
    // coordinator would see no live worker left and fail the job.
    std::thread::sleep(Duration::from_secs(3));
    let mut broken = s.worker_with(&addr, &BROKEN_WORKER, Some("broken.err"), LIMIT);
    let status = broken.wait();
    let said = std::fs::read_to_string(s.root.join("broken.err")).unwrap();
    assert!(
        !status.success() && said.contains("dismissed") && said.contains("no-such-program"),
        "the broken worker is dismissed with the reason ({status}): {said}"
    );
    std::fs::write(&go, "").unwrap();
    assert!(coordinator.wait().success(), "{}", s.coordinator_stderr());
    assert_eq!(sorted_outputs(&s.work), line_counts(&s, &s.inputs));
    healthy.wait();
}

#[test]
fn a_worker_that_cannot_see_the_shared_directory_is_dismissed_and_no_one_else_is_blamed() {
    // The blind worker's share is not mounted (its --job-dir is an empty directory): what it
    // writes no one else finds, and it finds nothing the others wrote. While the healthy
    // worker holds map task 0, the blind one runs the other maps, reads its own outputs and
    // reports reduces whose outputs the coordinator cannot put in place; later the healthy
    // worker finds the blind one's map outputs lost. Every one of these must count against
    // the blind worker alone: it is dismissed, and the healthy worker finishes the job with
    // every output in place.
    let s = Scratch::new();
    let (mut coordinator, addr) = s.coordinator(&["--task-timeout", "2"]);
    let (app, started, go) = gated_line_count_app(&s);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut healthy = s.worker_with(&addr, &app, None, LIMIT);
    wait_for_file(&started, LIMIT);
    let unmounted = s.root.join("unmounted");
    std::fs::create_dir(&unmounted).unwrap();
    let mut blind_args = app.clone();
    blind_args.extend(["--job-dir", unmounted.to_str().unwrap()]);
    let mut blind = s.worker_with(&addr, &blind_args, Some("blind.err"), LIMIT);
    let status = blind.wait();
    let said = std::fs::read_to_string(s.root.join("blind.err")).unwrap();
    assert!(
        !status.success() && said.contains("dismissed"),
        "the blind worker is dismissed ({status}): {said}"
    );
    std::fs::write(&go, "").unwrap();
    assert!(coordinator.wait().success(), "{}", s.coordinator_stderr());
    assert_eq!(sorted_outputs(&s.work), line_counts(&s, &s.inputs));
    assert!(
        healthy.wait().success(),
        "the healthy worker was not dismissed"
    );
    let left: Vec<_> = std::fs::read_dir(&s.work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("mr-") && !n.starts_with("mr-out-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_job_whose_only_worker_keeps_failing_fails_with_the_task_and_the_error() {
    let s = Scratch::new();
    let (mut coordinator, addr) = s.coordinator(&[]);
    let mut broken = s.worker_with(&addr, &BROKEN_WORKER, None, LIMIT);
    assert_eq!(coordinator.wait().code(), Some(1));
    let said = s.coordinator_stderr();
    assert!(
        said.contains("map task") && said.contains("no-such-program-flotilla"),
        "{said}"
    );
    assert!(!broken.wait().success());
}

// ---- bad input ----------------------------------------------------------------------------

fn run_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(FLOTILLA)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run flotilla");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn missing_or_directory_input_is_refused_before_anything_is_written() {
    let s = Scratch::new();
    let (code, out) = run_in(
        &s.work,
        &[
            "mr",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "../pg-grimm.txt",
            "../nope.txt",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("../nope.txt"),
        "the error names the input: {out}"
    );
    let (code, out) = run_in(
        &s.work,
        &["mr", "coordinator", "--listen", "127.0.0.1:0", ".."],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("directory"), "{out}");
    assert_eq!(
        std::fs::read_dir(&s.work).unwrap().count(),
        0,
        "nothing written"
    );
    let (code, out) = run_in(&s.work, &["mr", "sequential", "--app", "wc", "../nope.txt"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn unknown_application_is_refused_with_the_known_names() {
    let s = Scratch::new();
    let (code, out) = run_in(
        &s.work,
        &[
            "mr",
            "worker",
            "--coordinator",
            "127.0.0.1:9",
            "--app",
            "wordcount",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("wordcount") && out.contains("wc") && out.contains("indexer"),
        "{out}"
    );
}

#[test]
fn a_worker_refuses_a_server_of_another_protocol() {
    let s = Scratch::new();
    let mut kv = Command::new(FLOTILLA)
        .args(["kv", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a kv server");
    let mut line = String::new();
    BufReader::new(kv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let kv = Proc::new("kv server", kv, LIMIT);
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let (code, out) = run_in(
        &s.work,
        &["mr", "worker", "--coordinator", &addr, "--app", "wc"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("protocol") && out.contains("flotilla-kv"),
        "{out}"
    );
    drop(kv);
}

#[test]
fn binary_input_and_a_100_mb_line_are_handled() {
    let s = Scratch::new();
    // 100 MB in one line: "lorem " repeated, no newline; plus a file of binary garbage.
    let long = s.root.join("long.txt");
    let chunk = "lorem ipsum ".repeat(1 << 16);
    let mut text = String::with_capacity(100 << 20);
    while text.len() + chunk.len() <= 100 << 20 {
        text.push_str(&chunk);
    }
    std::fs::write(&long, &text).unwrap();
    let words = text.len() / 12;
    drop(text);
    let binary = s.root.join("binary.bin");
    let bytes: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&binary, bytes).unwrap();
    let inputs = ["../long.txt".to_string(), "../binary.bin".to_string()];
    let (mut coordinator, addr) = s.coordinator_over(&inputs, &[]);
    let mut workers: Vec<_> = (0..2).map(|_| s.worker(&addr, "wc", LIMIT)).collect();
    assert!(coordinator.wait().success());
    wait_all(&mut workers);
    let lines = sorted_outputs(&s.work);
    assert!(
        lines.contains(&format!("lorem {words}")),
        "lorem counted {words} times: {:?}",
        &lines[..lines.len().min(5)]
    );
    assert!(lines.contains(&format!("ipsum {words}")));
}

/// Whether process `pid` is running (a zombie is not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[test]
fn the_programs_of_a_worker_killed_with_sigkill_die_with_it() {
    // The map program writes its pid and becomes `sleep 60` (same pid): only the worker's
    // death can end it early, through PR_SET_PDEATHSIG.
    let s = Scratch::new();
    let inputs = vec![s.inputs[0].clone()];
    let (_coordinator, addr) = s.coordinator_over(&inputs, &["--task-timeout", "60"]);
    let pid_file = s.root.join("program.pid");
    let app = line_count_app(&format!(
        "echo $$ > {pid}.tmp && mv {pid}.tmp {pid}; exec sleep 60;",
        pid = pid_file.display()
    ));
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut worker = s.worker_with(&addr, &app, None, LIMIT);
    wait_for_file(&pid_file, LIMIT);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(running(pid), "the map program runs");
    worker.child.kill().unwrap(); // SIGKILL: the worker runs no cleanup of its own
    worker.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "the map program (pid {pid}) still runs 5 s after its worker was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
