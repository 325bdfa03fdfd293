//! fsyncgate, end to end in a real process: a single-node cluster on tokio runs the node
//! loop on the real `WalStorage` in a temp directory, over a file system whose `fdatasync`
//! starts failing after a while. The process must exit with
//! `STORAGE_FAILURE_EXIT_CODE` and a message naming the failure — never retry, never carry
//! on — and reopening the directory must recover a state in which every entry the node
//! applied (it applies only what was synced) is present.
//!
//! The test runs itself as the child process (`FLOTILLA_STORAGE_FAILURE_CHILD` set), so the
//! exit is a real process exit.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_node::{App, Event, Host, Input, Shared, STORAGE_FAILURE_EXIT_CODE};
use flotilla_raft::{Config, Entry, Message, Persist, RawNode, Snapshot};
use flotilla_storage::fs::{EntryKind, FileSystem, StdFs, WritableFile};
use flotilla_storage::{Storage, StorageError, WalStorage};

const CHILD: &str = "FLOTILLA_STORAGE_FAILURE_CHILD";
/// The `fdatasync` (counted from the node's start) that fails, and every one after it.
const FAILING_SYNC: u64 = 20;

/// `std::fs` whose `fdatasync` fails with EIO from the `FAILING_SYNC`-th call on.
#[derive(Clone, Debug, Default)]
struct FailingSyncs(Arc<AtomicU64>);

#[derive(Debug)]
struct FailingFile(File, Arc<AtomicU64>);

impl Write for FailingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl WritableFile for FailingFile {
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.1.fetch_add(1, Ordering::SeqCst) + 1 >= FAILING_SYNC {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl FileSystem for FailingSyncs {
    type File = FailingFile;
    type Reader = File;
    fn create(&self, path: &Path) -> io::Result<FailingFile> {
        Ok(FailingFile(StdFs.create(path)?, self.0.clone()))
    }
    fn open_append(&self, path: &Path) -> io::Result<FailingFile> {
        Ok(FailingFile(StdFs.open_append(path)?, self.0.clone()))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<File> {
        StdFs.open_read(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        StdFs.list_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.sync_dir(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        StdFs.kind(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdFs.exists(path)
    }
}

struct WalHost {
    inbox: tokio::sync::mpsc::UnboundedReceiver<Input>,
    ticks: tokio::time::Interval,
    wal: WalStorage<FailingSyncs>,
}

impl Host for WalHost {
    type Error = StorageError;

    async fn next_event(&mut self) -> Event {
        tokio::select! {
            input = self.inbox.recv() => match input {
                Some(input) => Event::Input(input),
                None => Event::Stop,
            },
            _ = self.ticks.tick() => Event::Tick,
        }
    }

    fn try_input(&mut self) -> Option<Input> {
        self.inbox.try_recv().ok()
    }

    async fn persist(&mut self, batch: &Persist) -> Result<(), StorageError> {
        self.wal.persist(batch)
    }

    fn raft_state_size(&self) -> u64 {
        self.wal.raft_state_size()
    }

    fn send(&mut self, _node: &RawNode, _message: Message) {
        unreachable!("a single node sends nothing")
    }
}

/// Appends each applied entry's data to `applied` in the directory, synced, so the parent
/// learns what the node applied before it died.
struct AppliedLog(File);

impl App for AppliedLog {
    fn apply_snapshot(&mut self, _snapshot: &Snapshot) {}
    fn apply(&mut self, entry: Entry, _raft_state_size: u64) -> Option<Vec<u8>> {
        if !entry.data.is_empty() {
            writeln!(
                self.0,
                "{} {}",
                entry.index,
                String::from_utf8_lossy(&entry.data)
            )
            .unwrap();
            self.0.sync_data().unwrap();
        }
        None
    }
}

/// The child: one node, proposing a value every few milliseconds until storage fails.
fn child(dir: &Path) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (wal, state) = WalStorage::open_on(
            FailingSyncs::default(),
            dir.join("raft"),
            Default::default(),
        )
        .expect("opens");
        let node = Arc::new(Mutex::new(RawNode::new(Config::new(0, vec![0]), state)));
        let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        let mut host = WalHost {
            inbox,
            ticks: tokio::time::interval(Duration::from_millis(2)),
            wal,
        };
        let mut app = AppliedLog(File::create(dir.join("applied")).unwrap());
        // Bounded in time: a node that does not stop on the failure is killed here.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            eprintln!("the node did not stop within 10 s of starting");
            std::process::exit(99);
        });
        let proposer = node.clone();
        tokio::spawn(async move {
            // Bounded: at most 10,000 proposals.
            for value in 0..10_000u32 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if proposer
                    .with(|n| n.propose(format!("v{value}").into_bytes()))
                    .is_ok()
                {
                    let _ = tx.send(Input::Poke);
                }
            }
        });
        match flotilla_node::run(node, &mut host, &mut app).await {
            Ok(()) => panic!("the loop stopped without an error"),
            Err(e) => flotilla_node::exit_after_storage_failure(0, e),
        }
    })
}

#[test]
fn a_failed_fsync_stops_the_node_process_with_a_clear_message_and_loses_nothing_applied() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_failed_fsync_stops_the_node_process_with_a_clear_message_and_loses_nothing_applied",
            "--nocapture",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(STORAGE_FAILURE_EXIT_CODE),
        "the node process must exit with the storage-failure code; stderr: {stderr}"
    );
    assert!(
        stderr.contains("node 0: storage failed")
            && stderr.contains("Input/output error")
            && stderr.contains("without retrying"),
        "{stderr}"
    );
    // Everything the node applied was synced before: a restart has it all.
    let applied = std::fs::read_to_string(dir.path().join("applied")).unwrap();
    let applied: Vec<(u64, String)> = applied
        .lines()
        .map(|l| {
            let (i, v) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), v.to_string())
        })
        .collect();
    assert!(applied.len() >= 5, "only {} entries applied", applied.len());
    let (_, recovered) = WalStorage::open(dir.path().join("raft")).expect("reopens");
    for (index, value) in &applied {
        let entry = recovered
            .entries
            .iter()
            .find(|e| e.index == *index)
            .unwrap_or_else(|| panic!("applied entry {index} lost"));
        assert_eq!(entry.data, value.as_bytes(), "entry {index}");
    }
}
