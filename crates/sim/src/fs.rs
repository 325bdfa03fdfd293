//! A simulated file system that keeps, at a crash, only what was synced.
//!
//! [`SimFs`] is a cheap-to-clone handle to an in-memory tree of directories and files, with
//! the calls a write-ahead log makes (create, append, `set_len`, `fsync`/`fdatasync`, rename,
//! remove, create, list and sync a directory, read, stat). Every file has **durable content** and
//! **pending writes**; every directory has **durable entries** and **pending entry
//! operations** (link, rename, unlink). Reads see everything written, pending or not, as a
//! process sees its page cache. A crash ([`SimFs::crash`]) returns the file system a restarted
//! process finds, in which
//!
//! - synced data and synced directory entries are exactly as they were (never altered);
//! - each file keeps a random in-order prefix of its pending writes; the last kept write may
//!   be **torn** at a sector boundary ([`SECTOR`] = 512 bytes), and the kept unsynced bytes may
//!   read back **zero-filled** from a sector on (the size reached the disk, the data did not)
//!   or with a **flipped bit** — each as [`CrashFaults`] says;
//! - the pending directory operations of all directories keep a random in-order prefix
//!   (metadata is journaled: it reaches the disk in the order it was issued, or not at all);
//! - a file whose directory entry is not durable is gone, whatever its own data.
//!
//! As on Linux, syncing a file (`sync_all`, `sync_data`) makes its data and size durable but
//! **not** its directory entry: a new or renamed file survives a crash only after its
//! directory is synced ([`SimFs::sync_dir`]).
//!
//! # Syncs complete when the driver says so
//!
//! In the simulator a storage's `persist` runs in zero virtual time; its driver then sleeps
//! for the disk's sync latency and only then acts on the result (sends messages, answers a
//! client). A crash during that sleep is a crash *somewhere inside* the `persist` call, at an
//! instant the caller cannot observe: perhaps before its first write, perhaps between its
//! `fsync`s, perhaps after all of them.
//!
//! So calls are not final when they return. Every call since the last
//! [`SimFs::complete_syncs`] is **in flight**; `complete_syncs` says "the process got past
//! all of them" (the driver calls it when the sync latency has elapsed), and a sync issued
//! before it is then done: what it covered is durable. A crash while calls are in flight picks
//! a uniformly random point among them at which the process died: calls before that point
//! happened (syncs among them are done, in order), calls after it never happened (their
//! effects vanish even from the page cache), and what the calls before it wrote but no done
//! sync covered is unsynced data, subject to the faults above.
//!
//! This is faithful: a real process killed inside `persist` leaves exactly such a state —
//! the effects of a prefix of its calls, with the syncs among them done. And it loses nothing
//! the simulated process relied on, because nothing was acknowledged before the driver
//! completed the syncs. It is also *stronger* than treating every in-flight write as unsynced,
//! which would let a crash keep a later write while losing data an earlier, returned `fsync`
//! had made durable (a log record naming a snapshot file whose contents vanished): states no
//! real crash produces. A user that never calls `complete_syncs` is still sound — a crash
//! then happens at a random point of the whole history — but can prove nothing durable.
//!
//! # Injected errors
//!
//! [`SimFs::fail_from`] makes the `n`-th call from now and every call after it fail (the
//! countdown tests use to crash "after the k-th operation": let calls fail from `k` on, then
//! crash), and [`SimFs::inject`] installs a hook that may fail any call, seeing its number,
//! operation and path, with [`Fault::Eio`] or [`Fault::Enospc`]. A failed call changes
//! nothing. (Real `fsync` failures can drop dirty pages; a storage must treat any failed
//! call as "the disk state is unknown", which this model does not contradict.)
//!
//! # Determinism
//!
//! Everything is ordered (`BTreeMap`s, inode and call numbers); the only randomness is the
//! [`Rng`] passed to [`SimFs::crash`]. The same history and the same `Rng` state give the
//! same crashed file system.
//!
//! Paths are resolved from the root (`/`); a relative path is taken relative to the root,
//! `.` components are skipped and `..` is refused. Renames move entries within one directory
//! (what atomic-rename protocols do); a rename across directories is refused.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::Rng;

/// The granularity at which a crash tears a write.
pub const SECTOR: u64 = 512;

type Ino = u64;
type Seq = u64;
const ROOT: Ino = 0;

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// An error [`SimFs::inject`] or [`SimFs::fail_from`] makes a call return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An I/O error (`EIO`).
    Eio,
    /// The disk is full (`ENOSPC`).
    Enospc,
}

impl Fault {
    /// The `io::Error` a failed call returns; [`Fault::of`] recognises it.
    pub fn to_io_error(self) -> io::Error {
        io::Error::other(InjectedError(self))
    }

    /// The injected fault behind `error`, if it is one.
    pub fn of(error: &io::Error) -> Option<Fault> {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<InjectedError>())
            .map(|e| e.0)
    }
}

#[derive(Debug)]
struct InjectedError(Fault);

impl fmt::Display for InjectedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Fault::Eio => write!(f, "EIO: input/output error (injected)"),
            Fault::Enospc => write!(f, "ENOSPC: no space left on device (injected)"),
        }
    }
}

impl std::error::Error for InjectedError {}

/// The kinds of call a [`SimFs`] counts and can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    OpenAppend,
    Read,
    Write,
    SetLen,
    SyncFile,
    SyncDir,
    Rename,
    Remove,
    CreateDir,
    Stat,
}

/// One call, as an injection hook sees it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// Calls made on this file system before this one (failed ones included).
    pub number: u64,
    pub op: Op,
    /// The path the call names (for a file handle's calls, the path it was opened by; for a
    /// rename, the source).
    pub path: &'a Path,
}

/// What a crash does to data and directory operations that were not synced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrashFaults {
    /// Whether any unsynced write or directory operation can survive (a random in-order
    /// prefix of them does). `false`: the crash keeps exactly what was synced.
    pub keep_unsynced: bool,
    /// Probability that a file's last kept unsynced write is torn at a sector boundary.
    pub torn_write: f64,
    /// Probability that a file's last kept unsynced write reads as zeros from a sector
    /// boundary to its end (the file's size was updated, its data never written).
    pub zero_fill: f64,
    /// Probability that one bit of a file's kept unsynced bytes is flipped.
    pub bit_flip: f64,
}

impl CrashFaults {
    /// Only synced data and directory entries survive.
    pub const SYNCED_ONLY: CrashFaults = CrashFaults {
        keep_unsynced: false,
        torn_write: 0.0,
        zero_fill: 0.0,
        bit_flip: 0.0,
    };
    /// Unsynced writes survive as clean prefixes, undamaged.
    pub const PREFIX: CrashFaults = CrashFaults {
        keep_unsynced: true,
        torn_write: 0.0,
        zero_fill: 0.0,
        bit_flip: 0.0,
    };
    /// Everything this model can do, often.
    pub const ALL: CrashFaults = CrashFaults {
        keep_unsynced: true,
        torn_write: 0.5,
        zero_fill: 0.25,
        bit_flip: 0.25,
    };
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl FileOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, bytes } => {
                let offset = *offset as usize;
                let end = offset + bytes.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset..end].copy_from_slice(bytes);
            }
            FileOp::SetLen(len) => content.resize(*len as usize, 0),
        }
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { name: OsString, ino: Ino },
    Rename { from: OsString, to: OsString },
    Unlink { name: OsString },
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) {
        match self {
            DirOp::Link { name, ino } => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Rename { from, to } => {
                // Pending operations replay in issue order onto the durable entries, so the
                // source is there exactly as it was live when the rename was issued.
                let ino = entries
                    .remove(from)
                    .expect("a rename replays onto the entries it was issued against");
                entries.insert(to.clone(), ino);
            }
            DirOp::Unlink { name } => {
                entries.remove(name);
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct FileNode {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<(Seq, FileOp)>,
    open_handles: usize,
}

#[derive(Clone, Debug, Default)]
struct DirNode {
    durable: BTreeMap<OsString, Ino>,
    live: BTreeMap<OsString, Ino>,
    pending: Vec<(Seq, DirOp)>,
}

#[derive(Clone, Debug)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

type Hook = Box<dyn FnMut(&Call<'_>) -> Option<Fault>>;

struct State {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    /// Number of the next state-changing operation; ops and syncs are ordered by it.
    next_seq: Seq,
    /// First operation not yet known to have happened (see the module docs).
    in_flight_from: Seq,
    /// Syncs issued since the last `complete_syncs`: (their number, the node synced).
    in_flight_syncs: Vec<(Seq, Ino)>,
    calls: u64,
    fail_from: Option<(u64, Fault)>,
    hook: Option<Hook>,
    crashed: bool,
}

/// A handle to a simulated file system; clones share it. See the module docs.
#[derive(Clone)]
pub struct SimFs {
    state: Rc<RefCell<State>>,
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs::new()
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("SimFs")
            .field("nodes", &st.nodes.len())
            .field("calls", &st.calls)
            .field("in_flight_syncs", &st.in_flight_syncs.len())
            .field("crashed", &st.crashed)
            .finish()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", path.display()),
    )
}

/// The names along `path` from the root.
fn components(path: &Path) -> io::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(invalid(path, "`..` is not supported")),
            Component::Normal(name) => names.push(name),
        }
    }
    Ok(names)
}

impl State {
    fn new() -> State {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        State {
            nodes,
            next_ino: ROOT + 1,
            next_seq: 0,
            in_flight_from: 0,
            in_flight_syncs: Vec::new(),
            calls: 0,
            fail_from: None,
            hook: None,
            crashed: false,
        }
    }

    /// Counts a call and decides whether it fails.
    fn begin(&mut self, op: Op, path: &Path) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other(
                "this file system's machine crashed; use the one `crash` returned",
            ));
        }
        let number = self.calls;
        self.calls += 1;
        if let Some((from, fault)) = self.fail_from {
            if number >= from {
                return Err(fault.to_io_error());
            }
        }
        if let Some(hook) = self.hook.as_mut() {
            if let Some(fault) = hook(&Call { number, op, path }) {
                return Err(fault.to_io_error());
            }
        }
        Ok(())
    }

    fn seq(&mut self) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn dir(&self, ino: Ino) -> &DirNode {
        match &self.nodes[&ino] {
            Node::Dir(dir) => dir,
            Node::File(_) => unreachable!("inode {ino} is a file"),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> &mut DirNode {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(dir)) => dir,
            _ => unreachable!("inode {ino} is not a directory"),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> &mut FileNode {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(file)) => file,
            _ => unreachable!("inode {ino} is not a file"),
        }
    }

    /// The inode `path` names, if any.
    fn lookup(&self, path: &Path) -> io::Result<Option<Ino>> {
        let mut ino = ROOT;
        for name in components(path)? {
            match &self.nodes[&ino] {
                Node::Dir(dir) => match dir.live.get(name) {
                    Some(&child) => ino = child,
                    None => return Ok(None),
                },
                Node::File(_) => return Err(invalid(path, "a path component is a file")),
            }
        }
        Ok(Some(ino))
    }

    /// The directory holding `path`'s last component, and that component.
    fn parent<'p>(&self, path: &'p Path) -> io::Result<(Ino, &'p OsStr)> {
        let names = components(path)?;
        let (name, dirs) = names
            .split_last()
            .ok_or_else(|| invalid(path, "names no entry"))?;
        let mut ino = ROOT;
        for dir_name in dirs {
            match &self.nodes[&ino] {
                Node::Dir(dir) => ino = *dir.live.get(*dir_name).ok_or_else(|| not_found(path))?,
                Node::File(_) => return Err(invalid(path, "a path component is a file")),
            }
        }
        match self.nodes[&ino] {
            Node::Dir(_) => Ok((ino, name)),
            Node::File(_) => Err(invalid(path, "a path component is a file")),
        }
    }

    fn file_ino(&self, path: &Path) -> io::Result<Ino> {
        match self.lookup(path)? {
            None => Err(not_found(path)),
            Some(ino) => match self.nodes[&ino] {
                Node::File(_) => Ok(ino),
                Node::Dir(_) => Err(invalid(path, "is a directory")),
            },
        }
    }

    fn dir_op(&mut self, dir: Ino, op: DirOp) {
        let seq = self.seq();
        let node = self.dir_mut(dir);
        op.apply(&mut node.live);
        node.pending.push((seq, op));
    }

    fn file_op(&mut self, ino: Ino, op: FileOp) {
        let seq = self.seq();
        let node = self.file_mut(ino);
        op.apply(&mut node.live);
        node.pending.push((seq, op));
    }

    fn sync(&mut self, ino: Ino) {
        let seq = self.seq();
        self.in_flight_syncs.push((seq, ino));
    }

    /// The sync numbered `seq` of `ino` is done: what was issued on `ino` before it is
    /// durable.
    fn make_durable(&mut self, ino: Ino, seq: Seq) {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(file)) => {
                let done = file.pending.iter().take_while(|(s, _)| *s < seq).count();
                for (_, op) in file.pending.drain(..done) {
                    op.apply(&mut file.durable);
                }
            }
            Some(Node::Dir(dir)) => {
                let done = dir.pending.iter().take_while(|(s, _)| *s < seq).count();
                for (_, op) in dir.pending.drain(..done) {
                    op.apply(&mut dir.durable);
                }
            }
            None => {} // collected: nothing refers to it any more
        }
    }

    /// Drops the inodes nothing can reach any more: no live or durable entry, no pending
    /// link, no open handle.
    fn collect_garbage(&mut self) {
        let mut reachable = BTreeSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Some(Node::Dir(dir)) = self.nodes.get(&ino) {
                let linked = dir.pending.iter().filter_map(|(_, op)| match op {
                    DirOp::Link { ino, .. } => Some(ino),
                    _ => None,
                });
                for &child in dir.live.values().chain(dir.durable.values()).chain(linked) {
                    if reachable.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        self.nodes.retain(|ino, node| {
            reachable.contains(ino) || matches!(node, Node::File(f) if f.open_handles > 0)
        });
    }
}

impl SimFs {
    /// An empty file system: just the root directory, durable.
    pub fn new() -> SimFs {
        SimFs {
            state: Rc::new(RefCell::new(State::new())),
        }
    }

    /// Creates (or truncates) a file for writing, like `File::create`. Its directory entry
    /// is durable only after a [`sync_dir`](SimFs::sync_dir) of its directory.
    pub fn create(&self, path: impl AsRef<Path>) -> io::Result<SimFile> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::Create, path)?;
        let (dir, name) = st.parent(path)?;
        let ino = match st.dir(dir).live.get(name).copied() {
            Some(ino) => match st.nodes[&ino] {
                Node::File(_) => {
                    st.file_op(ino, FileOp::SetLen(0));
                    ino
                }
                Node::Dir(_) => return Err(invalid(path, "is a directory")),
            },
            None => {
                let ino = st.next_ino;
                st.next_ino += 1;
                st.nodes.insert(ino, Node::File(FileNode::default()));
                st.dir_op(
                    dir,
                    DirOp::Link {
                        name: name.to_os_string(),
                        ino,
                    },
                );
                ino
            }
        };
        Ok(self.handle(&mut st, ino, path))
    }

    /// Opens an existing file for appending, like `OpenOptions::new().append(true)`.
    pub fn open_append(&self, path: impl AsRef<Path>) -> io::Result<SimFile> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::OpenAppend, path)?;
        let ino = st.file_ino(path)?;
        Ok(self.handle(&mut st, ino, path))
    }

    fn handle(&self, st: &mut State, ino: Ino, path: &Path) -> SimFile {
        st.file_mut(ino).open_handles += 1;
        SimFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
        }
    }

    /// The file's whole content as the process sees it (synced or not).
    pub fn read(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::Read, path)?;
        let ino = st.file_ino(path)?;
        Ok(st.file_mut(ino).live.clone())
    }

    /// Renames `from` to `to` (in the same directory), atomically replacing a file at `to`.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let mut st = self.state.borrow_mut();
        st.begin(Op::Rename, from)?;
        let (dir, from_name) = st.parent(from)?;
        let (to_dir, to_name) = st.parent(to)?;
        if dir != to_dir {
            return Err(invalid(to, "rename across directories is not supported"));
        }
        if !st.dir(dir).live.contains_key(from_name) {
            return Err(not_found(from));
        }
        if let Some(target) = st.dir(dir).live.get(to_name) {
            if matches!(st.nodes[target], Node::Dir(_)) {
                return Err(invalid(to, "is a directory"));
            }
        }
        if from_name != to_name {
            st.dir_op(
                dir,
                DirOp::Rename {
                    from: from_name.to_os_string(),
                    to: to_name.to_os_string(),
                },
            );
        }
        Ok(())
    }

    /// Removes a file's directory entry.
    pub fn remove_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::Remove, path)?;
        st.file_ino(path)?;
        let (dir, name) = st.parent(path)?;
        st.dir_op(
            dir,
            DirOp::Unlink {
                name: name.to_os_string(),
            },
        );
        Ok(())
    }

    /// Creates a directory (its parent must exist). Durable after a sync of the parent.
    pub fn create_dir(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::CreateDir, path)?;
        let (parent, name) = st.parent(path)?;
        if st.dir(parent).live.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        st.nodes.insert(ino, Node::Dir(DirNode::default()));
        st.dir_op(
            parent,
            DirOp::Link {
                name: name.to_os_string(),
                ino,
            },
        );
        Ok(())
    }

    /// `fsync` of a directory: makes its entry operations issued so far durable (once the
    /// sync is done, see the module docs).
    pub fn sync_dir(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::SyncDir, path)?;
        match st.lookup(path)? {
            None => Err(not_found(path)),
            Some(ino) => match st.nodes[&ino] {
                Node::Dir(_) => {
                    st.sync(ino);
                    Ok(())
                }
                Node::File(_) => Err(invalid(path, "not a directory")),
            },
        }
    }

    /// What `path` names, if anything.
    pub fn kind(&self, path: impl AsRef<Path>) -> io::Result<Option<EntryKind>> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::Stat, path)?;
        Ok(st.lookup(path)?.map(|ino| match st.nodes[&ino] {
            Node::File(_) => EntryKind::File,
            Node::Dir(_) => EntryKind::Dir,
        }))
    }

    /// The names in a directory, sorted (counted and failed like a stat).
    pub fn list_dir(&self, path: impl AsRef<Path>) -> io::Result<Vec<OsString>> {
        let path = path.as_ref();
        let mut st = self.state.borrow_mut();
        st.begin(Op::Stat, path)?;
        match st.lookup(path)? {
            None => Err(not_found(path)),
            Some(ino) => match &st.nodes[&ino] {
                Node::Dir(dir) => Ok(dir.live.keys().cloned().collect()),
                Node::File(_) => Err(invalid(path, "not a directory")),
            },
        }
    }

    /// The calls in flight happened and the syncs among them are done (the driver calls
    /// this once the disk's sync latency has elapsed after a `persist`). Returns how many
    /// syncs that completed.
    pub fn complete_syncs(&self) -> usize {
        let mut st = self.state.borrow_mut();
        if st.crashed {
            return 0;
        }
        let syncs = std::mem::take(&mut st.in_flight_syncs);
        for &(seq, ino) in &syncs {
            st.make_durable(ino, seq);
        }
        st.in_flight_from = st.next_seq;
        st.collect_garbage();
        syncs.len()
    }

    /// Power loss. Returns the file system a restarted process finds (see the module docs);
    /// this handle and its files fail every call from now on.
    pub fn crash(&self, rng: &mut Rng, faults: &CrashFaults) -> SimFs {
        let mut st = self.state.borrow_mut();
        assert!(!st.crashed, "crash of a file system that already crashed");
        st.crashed = true;

        // The process died before operation `died_at`: later ones never happened.
        let died_at = st.in_flight_from + rng.below(st.next_seq - st.in_flight_from + 1);
        for (seq, ino) in std::mem::take(&mut st.in_flight_syncs) {
            if seq < died_at {
                st.make_durable(ino, seq);
            }
        }

        // Directory operations: one in-order prefix over all directories.
        let mut dir_ops: Vec<(Seq, Ino, DirOp)> = Vec::new();
        for (&ino, node) in &st.nodes {
            if let Node::Dir(dir) = node {
                dir_ops.extend(
                    dir.pending
                        .iter()
                        .filter(|(seq, _)| *seq < died_at)
                        .map(|(seq, op)| (*seq, ino, op.clone())),
                );
            }
        }
        dir_ops.sort_by_key(|(seq, _, _)| *seq);
        let kept_dir_ops = if faults.keep_unsynced {
            rng.below(dir_ops.len() as u64 + 1) as usize
        } else {
            0
        };
        let mut entries: BTreeMap<Ino, BTreeMap<OsString, Ino>> = st
            .nodes
            .iter()
            .filter_map(|(&ino, node)| match node {
                Node::Dir(dir) => Some((ino, dir.durable.clone())),
                Node::File(_) => None,
            })
            .collect();
        for (_, ino, op) in &dir_ops[..kept_dir_ops] {
            op.apply(entries.get_mut(ino).expect("a directory"));
        }

        // The tree a restart sees, each file with its kept unsynced writes.
        let mut nodes = BTreeMap::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            match &st.nodes[&ino] {
                Node::Dir(_) => {
                    let dir_entries = entries.remove(&ino).expect("each directory once");
                    stack.extend(dir_entries.values().rev());
                    nodes.insert(
                        ino,
                        Node::Dir(DirNode {
                            live: dir_entries.clone(),
                            durable: dir_entries,
                            pending: Vec::new(),
                        }),
                    );
                }
                Node::File(file) => {
                    let ops: Vec<&FileOp> = file
                        .pending
                        .iter()
                        .filter(|(seq, _)| *seq < died_at)
                        .map(|(_, op)| op)
                        .collect();
                    let content = crashed_content(rng, faults, &file.durable, &ops);
                    nodes.insert(
                        ino,
                        Node::File(FileNode {
                            live: content.clone(),
                            durable: content,
                            pending: Vec::new(),
                            open_handles: 0,
                        }),
                    );
                }
            }
        }
        let mut after = State::new();
        after.nodes = nodes;
        after.next_ino = st.next_ino;
        SimFs {
            state: Rc::new(RefCell::new(after)),
        }
    }

    /// An independent copy of this file system as it is now — durable and pending state, calls
    /// in flight — as if the disk and the page cache were imaged (without the fault hooks and
    /// open files). Lets a test crash the same state many ways.
    pub fn duplicate(&self) -> SimFs {
        let st = self.state.borrow();
        assert!(!st.crashed, "duplicate of a file system that crashed");
        let mut nodes = st.nodes.clone();
        for node in nodes.values_mut() {
            if let Node::File(file) = node {
                file.open_handles = 0;
            }
        }
        SimFs {
            state: Rc::new(RefCell::new(State {
                nodes,
                next_ino: st.next_ino,
                next_seq: st.next_seq,
                in_flight_from: st.in_flight_from,
                in_flight_syncs: st.in_flight_syncs.clone(),
                calls: st.calls,
                fail_from: None,
                hook: None,
                crashed: false,
            })),
        }
    }

    /// Makes the `n`-th call from now (0: the next one) and every call after it fail with
    /// `fault`, until [`clear_faults`](SimFs::clear_faults).
    pub fn fail_from(&self, n: u64, fault: Fault) {
        let mut st = self.state.borrow_mut();
        st.fail_from = Some((st.calls + n, fault));
    }

    /// Installs a hook that sees every call before it happens and may make it fail.
    pub fn inject(&self, hook: impl FnMut(&Call<'_>) -> Option<Fault> + 'static) {
        self.state.borrow_mut().hook = Some(Box::new(hook));
    }

    /// Removes the countdown and the hook.
    pub fn clear_faults(&self) {
        let mut st = self.state.borrow_mut();
        st.fail_from = None;
        st.hook = None;
    }

    /// Calls made so far (failed ones included).
    pub fn calls(&self) -> u64 {
        self.state.borrow().calls
    }

    /// Whether anything written, created, renamed or removed is not durable yet (including
    /// what in-flight syncs will make durable when completed).
    pub fn has_unsynced(&self) -> bool {
        let st = self.state.borrow();
        st.nodes.values().any(|node| match node {
            Node::File(file) => !file.pending.is_empty(),
            Node::Dir(dir) => !dir.pending.is_empty(),
        })
    }
}

/// `durable` plus a random prefix of `ops`, the last kept write possibly torn or
/// zero-filled, one bit of the kept unsynced bytes possibly flipped.
fn crashed_content(
    rng: &mut Rng,
    faults: &CrashFaults,
    durable: &[u8],
    ops: &[&FileOp],
) -> Vec<u8> {
    let mut content = durable.to_vec();
    if !faults.keep_unsynced || ops.is_empty() {
        return content;
    }
    let kept = rng.below(ops.len() as u64 + 1) as usize;
    let mut written: Vec<(u64, u64)> = Vec::new(); // (start, end) of the kept writes
    for (i, op) in ops[..kept].iter().enumerate() {
        match op {
            FileOp::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                let mut keep_to = end;
                if i + 1 == kept && rng.chance(faults.torn_write) {
                    keep_to = sector_boundary_in(rng, *offset, end);
                }
                FileOp::Write {
                    offset: *offset,
                    bytes: bytes[..(keep_to - offset) as usize].to_vec(),
                }
                .apply(&mut content);
                if i + 1 == kept && keep_to > *offset && rng.chance(faults.zero_fill) {
                    let from = sector_boundary_in(rng, *offset, keep_to);
                    content[from as usize..keep_to as usize].fill(0);
                }
                written.push((*offset, keep_to));
            }
            FileOp::SetLen(_) => op.apply(&mut content),
        }
    }
    let len = content.len() as u64;
    let ranges: Vec<(u64, u64)> = written
        .into_iter()
        .map(|(start, end)| (start, end.min(len)))
        .filter(|(start, end)| start < end)
        .collect();
    if !ranges.is_empty() && rng.chance(faults.bit_flip) {
        let &(start, end) = rng.pick(&ranges);
        let at = rng.range(start, end - 1) as usize;
        content[at] ^= 1 << rng.below(8);
    }
    content
}

/// A point in `[start, end)` at which a write of those bytes can be torn: `start` itself or
/// a sector boundary inside.
fn sector_boundary_in(rng: &mut Rng, start: u64, end: u64) -> u64 {
    assert!(start < end, "an empty write cannot be torn");
    let first_inner = (start / SECTOR + 1) * SECTOR;
    let inner = if first_inner < end {
        (end - 1 - first_inner) / SECTOR + 1
    } else {
        0
    };
    match rng.below(inner + 1) {
        0 => start,
        k => first_inner + (k - 1) * SECTOR,
    }
}

/// A file opened on a [`SimFs`]. Writes append at the end of the file, one call per `write`.
pub struct SimFile {
    fs: SimFs,
    ino: Ino,
    path: PathBuf,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .finish()
    }
}

impl SimFile {
    /// `fsync`: the file's data and size become durable (once the sync is done), not its
    /// directory entry.
    pub fn sync_all(&self) -> io::Result<()> {
        self.sync(Op::SyncFile)
    }

    /// `fdatasync`: the same as `sync_all` in this model (the size is needed to read the
    /// data back, so it is synced too).
    pub fn sync_data(&self) -> io::Result<()> {
        self.sync(Op::SyncFile)
    }

    fn sync(&self, op: Op) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        st.begin(op, &self.path)?;
        st.sync(self.ino);
        Ok(())
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        st.begin(Op::SetLen, &self.path)?;
        st.file_op(self.ino, FileOp::SetLen(len));
        Ok(())
    }
}

impl io::Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.fs.state.borrow_mut();
        st.begin(Op::Write, &self.path)?;
        let offset = st.file_mut(self.ino).live.len() as u64;
        st.file_op(
            self.ino,
            FileOp::Write {
                offset,
                bytes: buf.to_vec(),
            },
        );
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.fs.state.borrow_mut();
        if let Some(Node::File(file)) = st.nodes.get_mut(&self.ino) {
            file.open_handles -= 1;
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::io::Write;

    fn write_file(fs: &SimFs, path: &str, bytes: &[u8]) -> SimFile {
        let mut file = fs.create(path).unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn read(fs: &SimFs, path: &str) -> Option<Vec<u8>> {
        match fs.read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    #[test]
    fn synced_data_and_entries_survive_unsynced_ones_do_not() {
        let fs = SimFs::new();
        fs.create_dir("/d").unwrap();
        fs.sync_dir("/").unwrap();
        let mut file = write_file(&fs, "/d/a", b"hello");
        file.sync_all().unwrap();
        fs.sync_dir("/d").unwrap();
        file.write_all(b" world").unwrap();
        write_file(&fs, "/d/b", b"unsynced file");
        fs.complete_syncs();
        assert_eq!(read(&fs, "/d/a").unwrap(), b"hello world", "page cache");
        let after = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&after, "/d/a").unwrap(), b"hello");
        assert_eq!(read(&after, "/d/b"), None);
        // The crashed handle is dead.
        assert!(file.write_all(b"!").is_err());
        assert!(fs.read("/d/a").is_err());
    }

    #[test]
    fn a_file_fsync_does_not_make_its_directory_entry_durable() {
        let fs = SimFs::new();
        let file = write_file(&fs, "/a", b"data");
        file.sync_all().unwrap();
        fs.complete_syncs();
        let after = fs
            .clone()
            .crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&after, "/a"), None);

        let fs = SimFs::new();
        let file = write_file(&fs, "/a", b"data");
        file.sync_all().unwrap();
        fs.sync_dir("/").unwrap();
        fs.complete_syncs();
        let after = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&after, "/a").unwrap(), b"data");
    }

    #[test]
    fn an_unsynced_rename_can_be_lost_and_a_synced_one_cannot() {
        let fs = SimFs::new();
        write_file(&fs, "/old", b"old").sync_all().unwrap();
        write_file(&fs, "/tmp", b"new").sync_all().unwrap();
        fs.sync_dir("/").unwrap();
        fs.complete_syncs();
        fs.rename("/tmp", "/old").unwrap();
        assert_eq!(read(&fs, "/old").unwrap(), b"new");
        assert_eq!(read(&fs, "/tmp"), None);
        let lost = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&lost, "/old").unwrap(), b"old");
        assert_eq!(read(&lost, "/tmp").unwrap(), b"new");

        let fs = lost;
        fs.rename("/tmp", "/old").unwrap();
        fs.sync_dir("/").unwrap();
        fs.complete_syncs();
        let kept = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&kept, "/old").unwrap(), b"new");
        assert_eq!(read(&kept, "/tmp"), None);
    }

    /// A crash before `complete_syncs` happens at a random call of those in flight: every
    /// outcome is the effect of a prefix of the calls, with the syncs among them done.
    #[test]
    fn a_crash_in_flight_is_a_crash_at_one_of_the_calls() {
        let build = || {
            let fs = SimFs::new();
            let mut file = write_file(&fs, "/log", b"A");
            file.sync_all().unwrap();
            fs.sync_dir("/").unwrap();
            fs.complete_syncs();
            // In flight: write B, sync, write C, sync.
            file.write_all(b"B").unwrap();
            file.sync_data().unwrap();
            file.write_all(b"C").unwrap();
            file.sync_data().unwrap();
            fs
        };
        let mut seen = BTreeSet::new();
        let mut rng = Rng::new(7);
        for _ in 0..400 {
            let after = build().crash(&mut rng, &CrashFaults::PREFIX);
            seen.insert(read(&after, "/log").unwrap());
        }
        let expected: BTreeSet<Vec<u8>> = [&b"A"[..], b"AB", b"ABC"]
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(seen, expected);
        // Synced-only: "AB" needs the first sync done, so a crash can still find it.
        let mut seen = BTreeSet::new();
        for _ in 0..400 {
            let after = build().crash(&mut rng, &CrashFaults::SYNCED_ONLY);
            seen.insert(read(&after, "/log").unwrap());
        }
        assert_eq!(seen, expected);
        // Completed, nothing is lost.
        let fs = build();
        assert_eq!(fs.complete_syncs(), 2);
        let after = fs.crash(&mut rng, &CrashFaults::SYNCED_ONLY);
        assert_eq!(read(&after, "/log").unwrap(), b"ABC");
    }

    /// 1000 synced bytes, then 3000 unsynced ones (never zero) in one write, crashed.
    fn crash_after_unsynced_write(rng: &mut Rng, faults: &CrashFaults) -> (Vec<u8>, Vec<u8>) {
        let synced: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let unsynced: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8 | 1).collect();
        let fs = SimFs::new();
        let mut file = write_file(&fs, "/f", &synced);
        file.sync_all().unwrap();
        fs.sync_dir("/").unwrap();
        fs.complete_syncs();
        file.write_all(&unsynced).unwrap();
        fs.complete_syncs(); // the write certainly happened; it is not synced
        let after = fs.crash(rng, faults);
        let got = read(&after, "/f").unwrap();
        assert_eq!(&got[..synced.len()], &synced[..], "synced bytes altered");
        (got[synced.len()..].to_vec(), unsynced)
    }

    #[test]
    fn crash_never_alters_synced_bytes() {
        let mut rng = Rng::new(3);
        for _ in 0..500 {
            crash_after_unsynced_write(&mut rng, &CrashFaults::ALL);
        }
    }

    #[test]
    fn a_torn_write_ends_at_a_sector_boundary() {
        let mut rng = Rng::new(4);
        let faults = CrashFaults {
            torn_write: 1.0,
            ..CrashFaults::PREFIX
        };
        let mut lengths = BTreeSet::new();
        for _ in 0..300 {
            let (tail, unsynced) = crash_after_unsynced_write(&mut rng, &faults);
            assert_eq!(tail, unsynced[..tail.len()], "not a prefix");
            let end = 1000 + tail.len() as u64;
            assert!(
                tail.is_empty() || end.is_multiple_of(SECTOR),
                "torn at {end}"
            );
            lengths.insert(tail.len());
        }
        // Nothing, or up to each of the sector boundaries 1024 .. 3584.
        let expected: BTreeSet<usize> = std::iter::once(0)
            .chain((2..=7).map(|k| k * 512 - 1000))
            .collect();
        assert_eq!(lengths, expected);
    }

    #[test]
    fn a_zero_filled_tail_starts_at_a_sector_boundary() {
        let mut rng = Rng::new(5);
        let faults = CrashFaults {
            zero_fill: 1.0,
            ..CrashFaults::PREFIX
        };
        let mut zeroed = 0;
        for _ in 0..300 {
            let (tail, unsynced) = crash_after_unsynced_write(&mut rng, &faults);
            if tail.is_empty() {
                continue;
            }
            assert_eq!(tail.len(), unsynced.len());
            let from = tail.iter().position(|&b| b == 0).expect("zero-filled");
            assert_eq!(tail[..from], unsynced[..from]);
            assert!(tail[from..].iter().all(|&b| b == 0));
            assert!(from == 0 || (1000 + from) % 512 == 0, "zeros from {from}");
            zeroed += 1;
        }
        assert!(zeroed > 100, "{zeroed}");
    }

    #[test]
    fn a_bit_flip_changes_one_bit_of_the_kept_unsynced_bytes() {
        let mut rng = Rng::new(6);
        let faults = CrashFaults {
            bit_flip: 1.0,
            ..CrashFaults::PREFIX
        };
        let mut flipped_at = BTreeSet::new();
        for _ in 0..300 {
            let (tail, unsynced) = crash_after_unsynced_write(&mut rng, &faults);
            if tail.is_empty() {
                continue;
            }
            let diffs: Vec<usize> = (0..tail.len())
                .filter(|&i| tail[i] != unsynced[i])
                .collect();
            assert_eq!(diffs.len(), 1);
            assert_eq!((tail[diffs[0]] ^ unsynced[diffs[0]]).count_ones(), 1);
            flipped_at.insert(diffs[0]);
        }
        assert!(flipped_at.len() > 100, "flips land all over the write");
    }

    #[test]
    fn same_rng_same_crash() {
        let build = || {
            let fs = SimFs::new();
            fs.create_dir("/d").unwrap();
            for i in 0..5 {
                let mut file = write_file(&fs, &format!("/d/f{i}"), &vec![i as u8; 700 * i + 1]);
                if i % 2 == 0 {
                    file.sync_all().unwrap();
                }
                file.write_all(&[9; 1500]).unwrap();
            }
            fs.sync_dir("/").unwrap();
            fs.rename("/d/f1", "/d/f0").unwrap();
            fs
        };
        let outcome = |seed| {
            let after = build().crash(&mut Rng::new(seed), &CrashFaults::ALL);
            (0..5)
                .map(|i| read(&after, &format!("/d/f{i}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(outcome(11), outcome(11));
        // A duplicate crashes the same way as the original, independently of it.
        let original = build();
        let copy = original.duplicate();
        let a = original.crash(&mut Rng::new(11), &CrashFaults::ALL);
        let b = copy.crash(&mut Rng::new(11), &CrashFaults::ALL);
        for i in 0..5 {
            let path = format!("/d/f{i}");
            assert_eq!(read(&a, &path), read(&b, &path));
        }
        assert!((12..40).any(|seed| outcome(seed) != outcome(11)));
    }

    #[test]
    fn directory_operations_survive_as_an_in_order_prefix() {
        // create a, create b, rename a -> c, remove b: each kept prefix is a state some
        // instant had; nothing else appears.
        let live_states: Vec<Vec<&str>> =
            vec![vec![], vec!["a"], vec!["a", "b"], vec!["b", "c"], vec!["c"]];
        let mut seen = BTreeSet::new();
        let mut rng = Rng::new(5);
        for _ in 0..300 {
            let fs = SimFs::new();
            write_file(&fs, "/a", b"a").sync_all().unwrap();
            write_file(&fs, "/b", b"b").sync_all().unwrap();
            fs.rename("/a", "/c").unwrap();
            fs.remove_file("/b").unwrap();
            fs.complete_syncs();
            let after = fs.crash(&mut rng, &CrashFaults::PREFIX);
            let names: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .filter(|n| read(&after, &format!("/{n}")).is_some())
                .collect();
            assert!(live_states.contains(&names), "{names:?}");
            seen.insert(names);
        }
        assert_eq!(seen.len(), live_states.len());
    }

    #[test]
    fn injected_errors_fail_calls_and_change_nothing() {
        let fs = SimFs::new();
        let mut file = write_file(&fs, "/a", b"1");
        fs.fail_from(1, Fault::Enospc);
        file.write_all(b"2").unwrap(); // call 0 from the countdown: still fine
        let err = file.write_all(b"3").unwrap_err();
        assert_eq!(Fault::of(&err), Some(Fault::Enospc), "{err}");
        assert!(fs.sync_dir("/").is_err(), "every call after it fails too");
        fs.clear_faults();
        assert_eq!(read(&fs, "/a").unwrap(), b"12");

        // A hook fails exactly the calls it picks.
        fs.inject(|call| (call.op == Op::SyncFile).then_some(Fault::Eio));
        let err = file.sync_data().unwrap_err();
        assert_eq!(Fault::of(&err), Some(Fault::Eio));
        assert!(err.to_string().contains("EIO"), "{err}");
        file.write_all(b"4").unwrap();
        fs.sync_dir("/").unwrap();
        fs.complete_syncs();
        let after = fs.crash(&mut Rng::new(1), &CrashFaults::SYNCED_ONLY);
        // The failed sync made nothing durable: the file is linked, its data never synced.
        assert_eq!(read(&after, "/a").unwrap(), b"");
        assert!(Fault::of(&io::Error::other("x")).is_none());
    }

    #[test]
    fn paths_and_errors() {
        let fs = SimFs::new();
        assert_eq!(fs.kind("/").unwrap(), Some(EntryKind::Dir));
        assert_eq!(fs.kind(".").unwrap(), Some(EntryKind::Dir));
        fs.create_dir("x").unwrap();
        assert_eq!(fs.kind("/x").unwrap(), Some(EntryKind::Dir));
        assert_eq!(
            fs.create_dir("/x").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            fs.create("/y/z").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.read("/x/nothing").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(fs.read("/x").is_err());
        assert!(fs.kind("/x/../x").is_err());
        write_file(&fs, "/x/f", b"f");
        assert_eq!(fs.kind("./x/f").unwrap(), Some(EntryKind::File));
        assert!(fs.create("/x/f/g").is_err());
        assert!(fs.rename("/x/f", "/g").is_err(), "across directories");
        assert_eq!(
            fs.rename("/x/h", "/x/g").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.remove_file("/x/h").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(fs.remove_file("/x").is_err(), "a directory");
        fs.remove_file("/x/f").unwrap();
        assert_eq!(fs.kind("/x/f").unwrap(), None);
        assert!(fs.open_append("/x/f").is_err());
    }

    #[test]
    fn unreachable_files_are_collected() {
        let fs = SimFs::new();
        for round in 0..50 {
            let mut tmp = fs.create("/log.tmp").unwrap();
            tmp.write_all(&vec![round as u8; 10_000]).unwrap();
            tmp.sync_all().unwrap();
            drop(tmp);
            fs.rename("/log.tmp", "/log").unwrap();
            fs.sync_dir("/").unwrap();
            fs.complete_syncs();
        }
        // The root and the last log; the 49 replaced ones are gone.
        assert_eq!(fs.state.borrow().nodes.len(), 2);
        assert!(!fs.has_unsynced());
        assert_eq!(read(&fs, "/log").unwrap(), vec![49u8; 10_000]);
    }
}
