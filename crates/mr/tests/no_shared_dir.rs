//! Jobs whose hosts share no directory, and input splits: splits end at line boundaries and
//! keep their file's name; a job run with inputs shipped, map outputs served by the workers
//! that hold them and outputs collected gives the sequential output and leaves nothing
//! behind; the shuffle server serves what it has and refuses, without hanging, what it has
//! not.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_mr::apps::{by_name, AppSpec};
use flotilla_mr::coordinator::Input;
use flotilla_mr::sequential::sequential;
use flotilla_mr::server::{resolve_inputs, split_inputs};
use flotilla_mr::shuffle::{check_segment, fetch_segments, serve_intermediates, FetchError};
use flotilla_mr::task::{
    intermediate_path, read_intermediate, run_map, sorted_output_lines, MapTask,
};
use flotilla_mr::Job;

fn lab_inputs() -> Vec<String> {
    flotilla_mr::texts::lab_texts()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect()
}

fn sequential_lines(app: &str, inputs: &[String]) -> Vec<String> {
    let app = by_name(&AppSpec::builtin(app)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let named: Vec<(String, PathBuf)> = inputs
        .iter()
        .map(|i| (i.clone(), PathBuf::from(i)))
        .collect();
    sequential(app.as_ref(), &named, out.path()).unwrap();
    sorted_output_lines(out.path()).unwrap()
}

/// Equal outputs, or a short account of the first difference (not two outputs in full).
fn assert_same_lines(got: &[String], want: &[String]) {
    let first = got.iter().zip(want).position(|(g, w)| g != w);
    let cut = |line: &String| line.chars().take(200).collect::<String>();
    match first {
        Some(i) => panic!(
            "line {i} differs: got {:?}, want {:?} ({} and {} lines)",
            cut(&got[i]),
            cut(&want[i]),
            got.len(),
            want.len()
        ),
        None => assert_eq!(got.len(), want.len(), "as many lines"),
    }
}

fn whole(path: &Path) -> Input {
    resolve_inputs(&[path.to_str().unwrap().to_owned()])
        .unwrap()
        .remove(0)
}

#[test]
fn splits_end_at_line_boundaries_cover_their_file_and_keep_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    let mut text = Vec::new();
    for i in 0..2_000 {
        // Lines of 1 to 120 bytes, and one line far longer than a split.
        let len = if i == 700 { 5_000 } else { 1 + (i * 37) % 120 };
        text.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
        text.push(b'\n');
    }
    text.extend_from_slice(b"no newline at the end");
    std::fs::write(&path, &text).unwrap();
    let split = 1_000u64;
    let splits = split_inputs(vec![whole(&path)], split).unwrap();
    assert!(splits.len() > 50, "{} splits", splits.len());
    let mut next = 0;
    for (i, s) in splits.iter().enumerate() {
        assert_eq!(
            s.name,
            path.to_str().unwrap(),
            "a split keeps its file's name"
        );
        assert_eq!(
            s.start, next,
            "split {i} starts where the previous one ends"
        );
        let end = (s.start + s.bytes) as usize;
        let last = i == splits.len() - 1;
        if !last {
            assert_eq!(text[end - 1], b'\n', "split {i} ends with a whole line");
            assert!(s.bytes >= split, "split {i}: {} bytes", s.bytes);
            // It ends at the first line end from its nominal size on.
            let first_newline = text[(s.start + split - 1) as usize..]
                .iter()
                .position(|&b| b == b'\n')
                .unwrap();
            assert_eq!(end, (s.start + split) as usize + first_newline, "split {i}");
        } else {
            assert!(
                s.bytes <= split + split / 10,
                "no tiny last split but the file's end"
            );
        }
        next += s.bytes;
    }
    assert_eq!(next, text.len() as u64, "the splits cover the file");

    // A file up to a tenth over the size stays whole; so does a small one.
    for len in [10u64, 1_000, 1_100] {
        let small = dir.path().join(format!("small-{len}"));
        std::fs::write(&small, "x\n".repeat(len as usize / 2)).unwrap();
        let splits = split_inputs(vec![whole(&small)], split).unwrap();
        assert_eq!(splits.len(), 1, "{len} bytes");
        assert_eq!((splits[0].start, splits[0].bytes), (0, len));
    }
}

#[test]
fn a_job_over_splits_gives_the_output_of_whole_inputs() {
    // Word counts: each split read only its own bytes. The indexer's output names the
    // documents each word is in: each split was mapped under its file's name.
    let inputs = lab_inputs();
    for app in ["wc", "indexer"] {
        let out = tempfile::tempdir().unwrap();
        let job = Job {
            n_reduce: 5,
            split_bytes: 64 << 10,
            ..Job::new(inputs.clone(), out.path())
        };
        let report = flotilla_mr::run(Arc::from(by_name(&AppSpec::builtin(app)).unwrap()), job)
            .expect("the job completes");
        assert!(report.progress.maps > 40, "{:?}", report.progress);
        assert_same_lines(
            &sorted_output_lines(out.path()).unwrap(),
            &sequential_lines(app, &inputs),
        );
    }
}

#[test]
fn a_job_without_a_shared_dir_gives_the_sequential_output_and_leaves_only_its_outputs() {
    let inputs = lab_inputs();
    let out = tempfile::tempdir().unwrap();
    let job = Job {
        n_reduce: 7,
        workers: 3,
        split_bytes: 256 << 10,
        without_shared_dir: true,
        ..Job::new(inputs.clone(), out.path())
    };
    let app = Arc::from(by_name(&AppSpec::builtin("wc")).unwrap());
    let report = flotilla_mr::run(app, job).expect("the job completes");
    assert_eq!(report.progress.maps_rerun, 0, "{:?}", report.progress);
    assert_same_lines(
        &sorted_output_lines(out.path()).unwrap(),
        &sequential_lines("wc", &inputs),
    );
    let mut left: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let outputs: Vec<String> = (0..7).map(|r| format!("mr-out-{r}")).collect();
    assert_eq!(
        left, outputs,
        "no intermediate or temporary file in the output directory"
    );
}

/// A map output of map task 0 (attempt 0, 3 partitions) in `dir`.
fn write_map_output(dir: &Path) -> PathBuf {
    let input = dir.join("input.txt");
    std::fs::write(&input, "the cat sat on the mat\nthe dog ate the cat\n").unwrap();
    let app = by_name(&AppSpec::builtin("wc")).unwrap();
    run_map(
        app.as_ref(),
        &MapTask {
            id: 0,
            attempt: 0,
            input_name: "input.txt",
            input_path: &input,
            input_span: None,
            n_reduce: 3,
            dir,
            memory_limit: 1 << 20,
        },
    )
    .unwrap();
    input
}

/// Serves `dir`'s map outputs on a loopback port; the server stops when the runtime does.
async fn serve(dir: &Path) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_intermediates(
        listener,
        dir.to_path_buf(),
        std::future::pending(),
    ));
    addr
}

const TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shuffle_serves_a_segment_whole_and_checks_it() {
    let held = tempfile::tempdir().unwrap();
    write_map_output(held.path());
    let at = serve(held.path()).await;
    let here = tempfile::tempdir().unwrap();
    for reduce in 0..3 {
        let fetched = fetch_segments(&[at], &[0], reduce, here.path(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(fetched.segments.len(), 1);
        let (file, offset, len) =
            flotilla_mr::task::locate_segment(held.path(), 0, 0, reduce).unwrap();
        let mut expected = vec![0; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut expected, offset).unwrap();
        let (off, n) = fetched.segments[0];
        assert_eq!(n, len);
        let mut got = vec![0; n as usize];
        std::os::unix::fs::FileExt::read_exact_at(&fetched.file, &mut got, off).unwrap();
        assert_eq!(got, expected, "segment {reduce}, byte for byte");
        check_segment(at, 0, 0, reduce, TIMEOUT).await.unwrap();
    }
    assert!(!read_intermediate(held.path(), 0, 0, 1).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shuffle_says_lost_for_what_it_does_not_hold_intact() {
    let held = tempfile::tempdir().unwrap();
    write_map_output(held.path());
    let at = serve(held.path()).await;
    let here = tempfile::tempdir().unwrap();
    let lost_map = |result: Result<_, FetchError>| match result {
        Err(FetchError::Map { map, why }) => (map, why),
        Err(other) => panic!("a lost map output, not {other}"),
        Ok(_) => panic!("a lost map output, not a fetch"),
    };
    // Another attempt than the one it holds, or another map task: lost.
    let (map, why) = lost_map(fetch_segments(&[at], &[1], 0, here.path(), TIMEOUT).await);
    assert_eq!(map, 0);
    assert!(why.contains("missing"), "{why}");
    let (map, why) = lost_map(fetch_segments(&[at, at], &[0, 0], 0, here.path(), TIMEOUT).await);
    assert_eq!(map, 1);
    assert!(why.contains("missing"), "{why}");
    assert!(check_segment(at, 0, 1, 0, TIMEOUT).await.is_err());
    // A truncated file: every segment of it is lost, and the check says so too.
    let path = intermediate_path(held.path(), 0, 0, 0);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (map, why) = lost_map(fetch_segments(&[at], &[0], 2, here.path(), TIMEOUT).await);
    assert_eq!(map, 0);
    assert!(why.contains("corrupt"), "{why}");
    let why = check_segment(at, 0, 0, 2, TIMEOUT).await.unwrap_err();
    assert!(why.contains("corrupt"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_a_peer_that_is_gone_or_speaks_garbage_fails_in_time() {
    let here = tempfile::tempdir().unwrap();
    // Nobody listens at a port just freed.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // A peer that answers every connection with garbage, and one that never answers.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_at = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in garbage.incoming().take(4) {
            let _ = stream.and_then(|mut s| s.write_all(b"\xff\xff\xff\x7fHTTP/1.1 200 OK\r\n"));
        }
    });
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_at = silent.local_addr().unwrap();
    for at in [gone, garbage_at, silent_at] {
        let started = Instant::now();
        let result = fetch_segments(&[at], &[0], 0, here.path(), TIMEOUT).await;
        assert!(
            matches!(result, Err(FetchError::Map { map: 0, .. })),
            "{at}: {:?}",
            result.err()
        );
        assert!(check_segment(at, 0, 0, 0, TIMEOUT).await.is_err());
        assert!(
            started.elapsed() < 3 * TIMEOUT,
            "{at}: {:?}",
            started.elapsed()
        );
    }
    drop(silent);
}

#[test]
fn the_coordinator_answers_others_while_it_checks_a_served_output() {
    // The coordinator runs on a runtime of its own (two threads, as on a 2-core machine), so
    // that if it hangs the test's own calls still time out and fail.
    let coordinator_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = coordinator_runtime.handle().clone();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        clients.block_on(coordinator_answers_during_a_check(&handle))
    }));
    // A hung coordinator's runtime is left behind, not waited for (dropping it would wait
    // for its stuck threads).
    coordinator_runtime.shutdown_background();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

async fn coordinator_answers_during_a_check(coordinator_runtime: &tokio::runtime::Handle) {
    // A map output served at an address that accepts connections and never answers: the
    // coordinator's check of it waits its full timeout (5 s). Two reduces report it lost at
    // once; meanwhile another worker's messages must be answered at once — the check must
    // not hold the coordinator (it did: the second report then blocked a runtime thread on
    // the lock and, with two threads, nothing drove the check any more: the job hung).
    use flotilla_mr::protocol::{FromCoordinator, TaskId, ToCoordinator, PROTOCOL};
    use flotilla_mr::server::{run_coordinator, CoordinatorConfig, ProgressStyle};
    use flotilla_wire::Client;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_at = silent.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        inputs: vec![input.to_str().unwrap().to_owned()],
        n_reduce: 2,
        out_dir: dir.path().join("out"),
        task_timeout: Duration::from_secs(60),
        max_failures: 3,
        backup_tasks: false,
        split_bytes: u64::MAX,
        intermediates_on_workers: true,
        ship_inputs: false,
        collect_outputs: false,
        app: None,
        linger: Duration::from_millis(10),
        keep_intermediate: false,
        progress: ProgressStyle::None,
    };
    let coordinator = coordinator_runtime.spawn(run_coordinator(config, move |addr| {
        let _ = tx.send(addr);
    }));
    let addr = rx.await.unwrap();
    let connect = || async move {
        let connect = Client::<ToCoordinator, FromCoordinator>::connect(addr, PROTOCOL, 1 << 20);
        tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .expect("the coordinator answers a connection within 5 s")
    };
    let call_timeout = Duration::from_secs(15);
    let mut w1 = connect().await.unwrap();
    let reply = w1
        .call(&ToCoordinator::RequestTask { worker: 1 }, call_timeout)
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            FromCoordinator::Map {
                task: 0,
                attempt: 0,
                ..
            }
        ),
        "{reply:?}"
    );
    let done = ToCoordinator::TaskDone {
        worker: 1,
        task: TaskId::Map(0),
        attempt: 0,
        bytes: 6,
        served_at: Some(silent_at),
    };
    assert_eq!(
        w1.call(&done, call_timeout).await.unwrap(),
        FromCoordinator::Noted
    );
    let mut reporters = Vec::new();
    for (worker, reduce) in [(2u64, 0usize), (3, 1)] {
        let mut client = connect().await.unwrap();
        let reply = client
            .call(&ToCoordinator::RequestTask { worker }, call_timeout)
            .await
            .unwrap();
        assert!(
            matches!(reply, FromCoordinator::Reduce { task, .. } if task == reduce),
            "{reply:?}"
        );
        reporters.push(tokio::spawn(async move {
            let lost = ToCoordinator::MapOutputLost {
                worker,
                reduce,
                attempt: 0,
                map: 0,
                map_attempt: 0,
                error: "cannot fetch".into(),
            };
            client.call(&lost, call_timeout).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both checks are waiting now: a heartbeat and a request of another worker are answered.
    let mut w4 = connect().await.unwrap();
    for message in [
        ToCoordinator::Heartbeat { worker: 4 },
        ToCoordinator::RequestTask { worker: 4 },
    ] {
        let started = Instant::now();
        w4.call(&message, call_timeout).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{message:?} waited {:?} for the check",
            started.elapsed()
        );
    }
    // The checks time out: the output is lost, and both reports are answered.
    for reporter in reporters {
        let reply = reporter
            .await
            .unwrap()
            .expect("a lost-output report answered");
        assert_eq!(reply, FromCoordinator::Noted);
    }
    coordinator.abort();
    drop(silent);
}
