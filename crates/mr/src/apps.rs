//! The built-in applications: the lab's eight `mrapps`, plus [`exec`] (external programs).
//!
//! | name | map | reduce |
//! |---|---|---|
//! | `wc` | `(word, "1")` per word (combined: one count per word) | sum of the counts |
//! | `indexer` | `(word, input name)` once per distinct word | `"<n> <distinct names sorted, comma-joined>"` |
//! | `mtiming` | `(times-<pid>, start time)`, `(parallel-<pid>, n)` | values sorted, space-joined |
//! | `rtiming` | `(a,"1")` … `(j,"1")` | `n` (concurrent reducers) |
//! | `jobcount` | marker file, sleep 2–5 s, `("a","x")` | number of marker files |
//! | `early_exit` | `(input name, "1")` | sleeps 3 s for `sherlock`/`tom` keys; count |
//! | `crash` | may exit or stall; `a`/`b`/`c`/`d` pairs | may exit or stall; values sorted, space-joined |
//! | `nocrash` | like `crash`, never exits or stalls | like `crash` |
//! | `exec` | external program (see [`crate::exec`]) | external program |
//!
//! Each produces exactly the output lines of its Go counterpart (see the behaviour catalogue,
//! `shared/spec/mapreduce.md` §3). Words are split by [`crate::words`] (Go's
//! `unicode.IsLetter`). `wc` maps as the lab's does, `(word, "1")` per word, and has a
//! combiner (a sum): a map task gathers each word's values as they come and writes one
//! count per word ([`crate::App::combine`]), so its memory and output are the input's
//! vocabulary rather than its size.
//!
//! The probing apps (`mtiming`, `rtiming`, `jobcount`) create marker files named
//! `mr-worker-…` in the **current working directory** and probe other workers' liveness by
//! pid (`/proc/<pid>` on Linux), exactly like the lab's, so they need workers that are
//! separate processes sharing that directory. `crash` exits the whole process on purpose.
//! An application's I/O failure (a marker file that cannot be created, …) is an error of the
//! task, never a panic.

use std::collections::HashSet;
use std::io::{self, BufRead};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::{App, Emit};
use crate::exec::{self, ExecApp};
use crate::words;

/// Names [`by_name`] knows, in the order of the table above.
pub const BUILTIN: &[&str] = &[
    "wc",
    "indexer",
    "mtiming",
    "rtiming",
    "jobcount",
    "early_exit",
    "crash",
    "nocrash",
    exec::NAME,
];

/// Which application to run: a built-in name, and for `exec` its two commands and the
/// time limit of one run of either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppSpec {
    pub name: String,
    pub map_cmd: Option<String>,
    pub reduce_cmd: Option<String>,
    /// For `exec`: [`ExecApp::with_cmd_timeout`].
    pub cmd_timeout: Option<std::time::Duration>,
}

impl AppSpec {
    /// A built-in app without commands.
    pub fn builtin(name: impl Into<String>) -> Self {
        AppSpec {
            name: name.into(),
            ..AppSpec::default()
        }
    }

    /// The exec app with its map and reduce commands.
    pub fn exec(map_cmd: impl Into<String>, reduce_cmd: impl Into<String>) -> Self {
        AppSpec {
            name: exec::NAME.to_owned(),
            map_cmd: Some(map_cmd.into()),
            reduce_cmd: Some(reduce_cmd.into()),
            cmd_timeout: None,
        }
    }
}

/// Why an [`AppSpec`] names no runnable app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSpecError {
    #[error("unknown app {name:?}; the apps are: {}", BUILTIN.join(", "))]
    Unknown { name: String },
    #[error("the exec app needs a {which} command")]
    MissingCommand { which: &'static str },
    #[error("app {name:?} takes no map or reduce command (only exec does)")]
    UnexpectedCommand { name: String },
    #[error(
        "app {name:?} runs no external program, so it takes no command time limit (only exec does)"
    )]
    UnexpectedTimeout { name: String },
}

/// The error of [`by_name`] (the name the rest of the crate uses).
pub type UnknownApp = AppSpecError;

/// The app `spec` names.
pub fn by_name(spec: &AppSpec) -> Result<Box<dyn App>, UnknownApp> {
    if spec.name == exec::NAME {
        return Ok(Box::new(exec_app(spec)?));
    }
    // Reported only for known names; an unknown name is the bigger problem.
    if BUILTIN.contains(&spec.name.as_str()) {
        if spec.map_cmd.is_some() || spec.reduce_cmd.is_some() {
            return Err(AppSpecError::UnexpectedCommand {
                name: spec.name.clone(),
            });
        }
        if spec.cmd_timeout.is_some() {
            return Err(AppSpecError::UnexpectedTimeout {
                name: spec.name.clone(),
            });
        }
    }
    let app: Box<dyn App> = match spec.name.as_str() {
        "wc" => Box::new(Wc),
        "indexer" => Box::new(Indexer),
        "mtiming" => Box::new(MTiming),
        "rtiming" => Box::new(RTiming),
        "jobcount" => Box::new(JobCount::default()),
        "early_exit" => Box::new(EarlyExit),
        "crash" => Box::new(Crash { faults: true }),
        "nocrash" => Box::new(Crash { faults: false }),
        _ => {
            return Err(AppSpecError::Unknown {
                name: spec.name.clone(),
            })
        }
    };
    Ok(app)
}

/// The [`ExecApp`] of an exec `spec` (for [`crate::task::run_reduce_exec`], which runs its
/// reduce program once per task).
pub fn exec_app(spec: &AppSpec) -> Result<ExecApp, UnknownApp> {
    if spec.name != exec::NAME {
        return Err(AppSpecError::Unknown {
            name: spec.name.clone(),
        });
    }
    let map_cmd = spec
        .map_cmd
        .as_deref()
        .ok_or(AppSpecError::MissingCommand { which: "map" })?;
    let reduce_cmd = spec
        .reduce_cmd
        .as_deref()
        .ok_or(AppSpecError::MissingCommand { which: "reduce" })?;
    Ok(ExecApp::new(map_cmd, reduce_cmd).with_cmd_timeout(spec.cmd_timeout))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads `contents` to the end; returns its length in bytes.
fn drain(contents: &mut dyn BufRead) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let len = match contents.fill_buf() {
            Ok(buf) => buf.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if len == 0 {
            return Ok(total);
        }
        contents.consume(len);
        total += len as u64;
    }
}

/// Values sorted byte-wise and joined with single spaces.
fn sorted_joined(values: &mut dyn Iterator<Item = String>, separator: &str) -> String {
    let mut values: Vec<String> = values.collect();
    values.sort_unstable();
    values.join(separator)
}

// ---------------------------------------------------------------------------------------
// wc

/// Sets of words: foldhash (fast, and seeded per process so that crafted input cannot
/// force collisions the way it could with a fixed hash).
type WordSet = HashSet<Box<str>, foldhash::fast::RandomState>;

/// Word count.
pub struct Wc;

impl App for Wc {
    fn name(&self) -> &str {
        "wc"
    }

    /// `(word, "1")` per word, as the lab's; the combiner makes the counts.
    fn map(&self, _name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        words::try_for_each_word(contents, |word| emit(word, "1"))?;
        Ok(())
    }

    /// A map task sums the counts of each word as it emits them, and again as it writes.
    fn has_combiner(&self) -> bool {
        true
    }

    /// A partial sum: the same as the reduce.
    fn combine(&self, key: &str, values: &mut dyn Iterator<Item = &str>) -> io::Result<String> {
        sum_counts(key, values)
    }

    fn reduce(&self, key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        sum_counts(key, values)
    }
}

/// `wc`'s sum of counts of `key` (for reduce and combine).
fn sum_counts<S: AsRef<str>>(key: &str, values: &mut dyn Iterator<Item = S>) -> io::Result<String> {
    let mut total: u64 = 0;
    for value in values {
        let value = value.as_ref();
        if value == "1" {
            // What map emits: most values are this.
            total = total
                .checked_add(1)
                .ok_or_else(|| invalid_data(format!("wc: the count of {key:?} overflows")))?;
            continue;
        }
        let count: u64 = value.parse().map_err(|_| {
            invalid_data(format!("wc: value {value:?} of key {key:?} is not a count"))
        })?;
        total = total
            .checked_add(count)
            .ok_or_else(|| invalid_data(format!("wc: the count of {key:?} overflows")))?;
    }
    Ok(total.to_string())
}

// ---------------------------------------------------------------------------------------
// indexer

/// Inverted index: which inputs contain each word.
pub struct Indexer;

impl App for Indexer {
    fn name(&self) -> &str {
        "indexer"
    }

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        let mut seen: WordSet = WordSet::default();
        words::for_each_word(contents, |word| {
            if !seen.contains(word) {
                seen.insert(word.into());
            }
        })?;
        for word in seen {
            emit(&word, name)?;
        }
        Ok(())
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        // Several map tasks may map one input (its splits): each name counts once.
        let mut names: Vec<String> = values.collect();
        names.sort_unstable();
        names.dedup();
        Ok(format!("{} {}", names.len(), names.join(",")))
    }
}

// ---------------------------------------------------------------------------------------
// mtiming, rtiming: parallelism probes

/// Whether a process with this pid exists (the lab's signal-0 probe).
#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Without `/proc`, every marker's process counts as alive.
#[cfg(not(target_os = "linux"))]
fn process_alive(pid: u32) -> bool {
    pid != 0
}

fn with_path<'a>(path: &'a str, what: &str) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_owned();
    move |e| io::Error::new(e.kind(), format!("cannot {what} {path}: {e}"))
}

/// The lab's `nparallel(phase)`: how many workers are inside a `phase` call right now,
/// counting this one. Creates `mr-worker-<phase>-<pid>` in the working directory, counts the
/// live workers' markers, sleeps one second, and removes its marker.
fn nparallel(phase: &str) -> io::Result<usize> {
    let pid = std::process::id();
    let own = format!("mr-worker-{phase}-{pid}");
    std::fs::write(&own, "x").map_err(with_path(&own, "create marker file"))?;
    let prefix = format!("mr-worker-{phase}-");
    let mut count = 0;
    let entries = std::fs::read_dir(".").map_err(with_path(".", "list"))?;
    for entry in entries {
        let entry = entry.map_err(with_path(".", "list"))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.parse::<u32>().is_ok_and(process_alive) {
            count += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(&own).map_err(with_path(&own, "remove marker file"))?;
    Ok(count)
}

/// Map-parallelism probe.
pub struct MTiming;

impl App for MTiming {
    fn name(&self) -> &str {
        "mtiming"
    }

    fn map(&self, _name: &str, _contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let n = nparallel("map")?;
        let pid = std::process::id();
        emit(&format!("times-{pid}"), &format!("{now:.1}"))?;
        emit(&format!("parallel-{pid}"), &n.to_string())
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        Ok(sorted_joined(values, " "))
    }
}

/// Reduce-parallelism probe.
pub struct RTiming;

impl App for RTiming {
    fn name(&self) -> &str {
        "rtiming"
    }

    fn map(&self, _name: &str, _contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        for key in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            emit(key, "1")?;
        }
        Ok(())
    }

    fn reduce(&self, _key: &str, _values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        Ok(nparallel("reduce")?.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// jobcount, early_exit

/// Counts map invocations through marker files.
#[derive(Default)]
pub struct JobCount {
    /// Map calls in this process so far.
    count: AtomicU64,
}

impl App for JobCount {
    fn name(&self) -> &str {
        "jobcount"
    }

    fn map(&self, _name: &str, _contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        let marker = format!("mr-worker-jobcount-{}-{n}", std::process::id());
        std::fs::write(&marker, "x").map_err(with_path(&marker, "create marker file"))?;
        std::thread::sleep(Duration::from_millis(2000 + random_below(3000)));
        emit("a", "x")
    }

    fn reduce(&self, _key: &str, _values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        let mut count = 0u64;
        for entry in std::fs::read_dir(".").map_err(with_path(".", "list"))? {
            let entry = entry.map_err(with_path(".", "list"))?;
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(b"mr-worker-jobcount")
            {
                count += 1;
            }
        }
        Ok(count.to_string())
    }
}

/// Slow reduces for two keys, to catch processes that exit before the job is done.
pub struct EarlyExit;

impl App for EarlyExit {
    fn name(&self) -> &str {
        "early_exit"
    }

    fn map(&self, name: &str, _contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        emit(name, "1")
    }

    fn reduce(&self, key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        if key.contains("sherlock") || key.contains("tom") {
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(values.count().to_string())
    }
}

// ---------------------------------------------------------------------------------------
// crash, nocrash

/// A uniformly random integer in `0..n` (`n > 0`) from OS randomness.
fn random_below(n: u64) -> u64 {
    assert!(n > 0, "random_below needs a non-empty range");
    // Rejection sampling: accept only below the largest multiple of n.
    let zone = u64::MAX - (u64::MAX - n + 1) % n;
    loop {
        let r = random_u64();
        if r <= zone {
            return r % n;
        }
    }
}

/// 64 random bits: from `/dev/urandom`, or, where that cannot be read, from std's
/// OS-seeded SipHash keys mixed with a counter and the clock.
fn random_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// Describes each input with four pairs; with `faults`, every call may first exit the
/// process (33%) or stall up to 10 s (33%).
pub struct Crash {
    pub faults: bool,
}

impl Crash {
    /// The lab's `maybeCrash`.
    fn maybe_crash(&self) {
        if !self.faults {
            return;
        }
        let r = random_below(1000);
        if r < 330 {
            std::process::exit(1);
        } else if r < 660 {
            std::thread::sleep(Duration::from_millis(random_below(10_000)));
        }
    }
}

impl App for Crash {
    fn name(&self) -> &str {
        if self.faults {
            "crash"
        } else {
            "nocrash"
        }
    }

    fn map(&self, name: &str, contents: &mut dyn BufRead, emit: &mut Emit<'_>) -> io::Result<()> {
        self.maybe_crash();
        let length = drain(contents)?;
        emit("a", name)?;
        emit("b", &name.len().to_string())?;
        emit("c", &length.to_string())?;
        emit("d", "xyzzy")
    }

    fn reduce(&self, _key: &str, values: &mut dyn Iterator<Item = String>) -> io::Result<String> {
        self.maybe_crash();
        Ok(sorted_joined(values, " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_below_stays_in_range_and_varies() {
        let draws: Vec<u64> = (0..200).map(|_| random_below(1000)).collect();
        assert!(draws.iter().all(|&r| r < 1000));
        assert!(draws.iter().any(|&r| r != draws[0]));
        assert_eq!(random_below(1), 0);
    }

    #[test]
    fn unknown_names_list_the_apps() {
        let err = by_name(&AppSpec::builtin("nope")).err().unwrap();
        let message = err.to_string();
        for name in BUILTIN {
            assert!(message.contains(name), "{message}");
        }
        assert_eq!(
            by_name(&AppSpec {
                name: "exec".into(),
                map_cmd: Some("cat".into()),
                ..AppSpec::default()
            })
            .err()
            .unwrap(),
            AppSpecError::MissingCommand { which: "reduce" }
        );
        assert!(matches!(
            by_name(&AppSpec {
                name: "wc".into(),
                map_cmd: Some("cat".into()),
                ..AppSpec::default()
            }),
            Err(AppSpecError::UnexpectedCommand { .. })
        ));
        assert!(matches!(
            by_name(&AppSpec {
                cmd_timeout: Some(std::time::Duration::from_secs(1)),
                ..AppSpec::builtin("wc")
            }),
            Err(AppSpecError::UnexpectedTimeout { .. })
        ));
        for name in BUILTIN.iter().filter(|n| **n != exec::NAME) {
            assert_eq!(by_name(&AppSpec::builtin(*name)).unwrap().name(), *name);
        }
        assert_eq!(
            by_name(&AppSpec::exec("cat", "cat")).unwrap().name(),
            "exec"
        );
    }
}
