//! The exec app's programs are kept on a leash (`program.rs`): each runs in its own process
//! group, the group is killed when a task stops early, what a program leaves behind is
//! killed when it ends, and `--task-cmd-timeout` kills a program that runs too long. Every
//! test here leaves a background `sleep 60` in the program's group and checks that it is
//! gone when the task is over.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_mr::exec::ExecApp;
use flotilla_mr::sequential::sequential_exec;
use flotilla_mr::task::TaskError;

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

/// Waits up to 5 s for process `pid` to stop running.
fn assert_stops_running(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still running 5 s after its task ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shell commands that start `sleep 60` in the background, with its stdout and stderr away
/// from the task's pipes, and write its pid to `pid_file`.
fn leave_a_sleeper(pid_file: &Path) -> String {
    format!(
        "sleep 60 >/dev/null 2>&1 </dev/null & echo $! > {};",
        pid_file.display()
    )
}

fn read_pid(pid_file: &Path) -> u32 {
    let text = std::fs::read_to_string(pid_file).expect("the program wrote the pid file");
    text.trim().parse().expect("a pid")
}

/// Runs `app` over one small input and returns its result and how long it took.
fn run(app: &ExecApp) -> (Result<(), TaskError>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = sequential_exec(app, &[("in.txt".into(), input)], out.path()).map(|_| ());
    (result, started.elapsed())
}

const MAP: &str = r#"awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'"#;
const REDUCE: &str =
    r#"awk -F '\t' '{ n[$1] += $2 } END { for (k in n) print k "\t" n[k] }' | sort"#;

#[test]
fn a_map_program_past_its_time_limit_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleeper.pid");
    let map = format!("{} sleep 60", leave_a_sleeper(&pid_file));
    let app = ExecApp::new(map.clone(), REDUCE).with_cmd_timeout(Some(Duration::from_millis(500)));
    let (result, took) = run(&app);
    let err = result.expect_err("the map program runs for a minute");
    let message = err.to_string();
    assert!(
        message.contains("ran longer than its limit of 500ms") && message.contains(&map),
        "{message}"
    );
    assert!(took < Duration::from_secs(20), "the task took {took:?}");
    assert_stops_running(read_pid(&pid_file), "the map program's background sleep");
}

#[test]
fn a_reduce_program_past_its_time_limit_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleeper.pid");
    let reduce = format!("{} cat >/dev/null; sleep 60", leave_a_sleeper(&pid_file));
    let app = ExecApp::new(MAP, reduce).with_cmd_timeout(Some(Duration::from_millis(500)));
    let (result, took) = run(&app);
    let message = result.expect_err("the reduce program sleeps").to_string();
    assert!(message.contains("ran longer than its limit"), "{message}");
    assert!(took < Duration::from_secs(20), "the task took {took:?}");
    assert_stops_running(read_pid(&pid_file), "the reduce program's background sleep");
}

#[test]
fn a_program_within_its_time_limit_is_not_disturbed() {
    let app = ExecApp::new(MAP, REDUCE).with_cmd_timeout(Some(Duration::from_secs(30)));
    let (result, _) = run(&app);
    result.expect("a quick job within a 30 s limit");
}

#[test]
fn a_task_that_fails_kills_everything_its_program_started() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleeper.pid");
    // A malformed line fails the task while the program still runs (it waits for its
    // background sleep).
    let map = format!("{} echo 'no tab here'; wait", leave_a_sleeper(&pid_file));
    let (result, took) = run(&ExecApp::new(map, REDUCE));
    let message = result.expect_err("a malformed map line").to_string();
    assert!(message.contains("no TAB"), "{message}");
    assert!(took < Duration::from_secs(20), "the task took {took:?}");
    assert_stops_running(read_pid(&pid_file), "the map program's background sleep");
}

#[test]
fn what_a_successful_program_leaves_running_is_killed_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleeper.pid");
    let map = format!("{} {MAP}", leave_a_sleeper(&pid_file));
    let (result, _) = run(&ExecApp::new(map, REDUCE));
    result.expect("the job itself is fine");
    assert_stops_running(read_pid(&pid_file), "the map program's background sleep");
}

#[test]
fn a_reduce_result_with_a_newline_is_refused_not_written_raw() {
    // The reduce program's result for each key is "two\nlines" (escaped in the protocol).
    let reduce = r#"awk -F '\t' '$1 != k { print $1 "\ttwo\\nlines"; k = $1 }'"#;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let app = ExecApp::new(MAP, reduce);
    let err = sequential_exec(&app, &[("in.txt".into(), input)], out.path()).unwrap_err();
    assert!(
        matches!(err, TaskError::NewlineInOutput { part: "result", .. }),
        "{err}"
    );
    assert!(
        !out.path().join("mr-out-0").exists(),
        "no output is published"
    );
}
