//! `flotilla wal inspect` and `flotilla wal repair` as an operator runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use flotilla_raft::{Entry, HardState};
use flotilla_storage::{Persist, Storage, WalStorage};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(FLOTILLA)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn inspect_names_a_torn_tail_and_repair_cuts_it_after_asking() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = WalStorage::open(dir.path()).unwrap();
        for index in 1..=3 {
            wal.persist(&Persist {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(1),
                }),
                snapshot: None,
                entries: vec![Entry {
                    term: 2,
                    index,
                    data: vec![7; 30],
                }],
            })
            .unwrap();
        }
    }
    let log = flotilla_storage::wal::inspect(dir.path()).unwrap().segments[0]
        .path
        .clone();
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() - 5]).unwrap();
    let d = dir.path().to_str().unwrap();

    let out = run(&["wal", "inspect", d], "");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("3 good records")
            && shown.contains("torn tail in")
            && shown.contains("at byte"),
        "{shown}"
    );
    assert!(
        shown.contains("entries 2..=2, term 2 vote Some(1)"),
        "{shown}"
    );

    let out = run(&["wal", "repair", d], "n\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing changed"));
    assert_eq!(
        std::fs::metadata(&log).unwrap().len() as usize,
        bytes.len() - 5
    );

    let out = run(&["wal", "repair", "--yes", d], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("saved in"), "{}", text(&out));
    assert!(text(&run(&["wal", "inspect", d], "")).contains("clean"));
}

#[test]
fn a_directory_without_a_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["wal", "inspect", dir.path().to_str().unwrap()], "");
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("no log segments") && !shown.contains("panicked"),
        "{shown}"
    );
}
