//! etcd's own `etcdctl` (v3 API; Debian package `etcd-client` 3.4) runs one script of put,
//! get, del, txn, compaction, watch, lease, member list and endpoint status commands against
//! a real etcd (Debian `etcd-server` 3.4, three members on loopback, started here) and
//! against a 3-node Flotilla cluster (`flotilla cluster up`). Each command's output is
//! normalized (revisions relative to the store's first, lease and member ids by role, raft
//! term and index, sizes, versions, addresses) and the two are compared command by command.
//! A difference fails the test unless the command is in [`ACCEPTED`], with its reason.
//!
//! The normalizer is itself checked: the same script against a second etcd cluster (other
//! ports, names, ids, leader) must normalize to exactly the first one's outputs.
//!
//! Where etcd or etcdctl is missing the test installs it with apt-get, and fails saying so
//! if that cannot be done: it never passes without having run them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// The bound on any one wait: a cluster starting, a command, a watcher's events.
const WAIT: Duration = Duration::from_secs(30);

/// The bound on one etcdctl command (its own `--command-timeout` is 5 s).
const COMMAND_WAIT: Duration = Duration::from_secs(15);

/// How long the script's 2 s lease (etcd's minimum TTL at its default timing) may take to
/// expire and take its key along.
const EXPIRY_WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------
// The script
// ------------------------------------------------------------------------------------------

/// What a step does with its etcdctl command.
#[derive(Clone, Copy)]
enum Kind {
    /// Runs it to its end.
    Run,
    /// Reruns it (bounded by [`EXPIRY_WAIT`]) until it prints this.
    Until(&'static str),
    /// Starts it in the background as the named watcher; the step's output is empty.
    Watch(&'static str),
    /// Waits (bounded) until the named watcher has printed this many events; the step's
    /// output says whether it did.
    Events(&'static str, usize),
    /// Waits as [`Kind::Events`], then stops the watcher; the step's output is all it
    /// printed.
    Stop(&'static str, usize),
}

/// One etcdctl command of the script.
#[derive(Clone)]
struct Step {
    /// Split at white space. `{R+N}` is the store's first revision plus N (a fresh etcd's
    /// first is 1); `{lease:X}` the id of the lease granted as X (leases are named a, b, ...
    /// in the order of their `lease grant`).
    args: &'static str,
    /// Standard input (txn's compares, success and failure operations).
    stdin: Option<String>,
    /// How the report names it, if not by its arguments.
    name: Option<String>,
    /// Whether it succeeds against etcd (checked: a script etcd does not follow is wrong).
    ok: bool,
    /// Sent to every member's endpoint, not only to one follower's.
    all: bool,
    kind: Kind,
}

fn run(args: &'static str) -> Step {
    Step {
        args,
        stdin: None,
        name: None,
        ok: true,
        all: false,
        kind: Kind::Run,
    }
}

/// `etcdctl txn`: if every compare holds, the success operations, else the failure ones.
fn txn(args: &'static str, compares: &[&str], success: &[&str], failure: &[&str]) -> Step {
    let section = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    Step {
        stdin: Some(format!(
            "{}\n{}\n{}\n",
            section(compares),
            section(success),
            section(failure)
        )),
        name: Some(format!(
            "{args} if {} then [{}] else [{}]",
            compares.join(" && "),
            success.join("; "),
            failure.join("; ")
        )),
        ..run(args)
    }
}

impl Step {
    fn fails(self) -> Step {
        Step { ok: false, ..self }
    }
    fn all(self) -> Step {
        Step { all: true, ..self }
    }
    fn kind(self, kind: Kind) -> Step {
        Step { kind, ..self }
    }

    /// How the step is named in the report and in [`ACCEPTED`]: its arguments (a txn's
    /// with its compares and operations).
    fn name(&self) -> String {
        let mut name = self.name.clone().unwrap_or_else(|| self.args.to_string());
        match self.kind {
            Kind::Run => {}
            Kind::Until(out) => name += &format!(" (until it prints {out:?})"),
            Kind::Watch(w) => name = format!("[watcher {w}] {name}"),
            Kind::Events(w, n) => name = format!("[watcher {w}: {n} events]"),
            Kind::Stop(w, n) => name = format!("[watcher {w}: {n} events, stopped]"),
        }
        name
    }
}

/// Revisions after each write, relative to the first (R): the script's own bookkeeping,
/// which the `{R+N}` arguments rely on.
fn script() -> Vec<Step> {
    vec![
        // KV: puts and gets.
        run("get missing -w json"),
        run("put foo bar"), // R+1
        run("get foo"),
        run("get foo -w json"),
        run("get foo -w fields"),
        run("put foo baz --prev-kv"), // R+2
        run("put a/1 z"),             // R+3
        run("put a/3 x"),             // R+4
        run("put a/2 y"),             // R+5
        run("get --prefix a/"),
        run("get --prefix a/ --limit 2"),
        run("get --prefix a/ --limit 1 -w json"),
        run("get --prefix a/ --sort-by VALUE --order ASCEND"),
        run("get --prefix a/ --sort-by MODIFY --order DESCEND"),
        run("get --prefix a/ --sort-by CREATE --order DESCEND --limit 2"),
        run("get --prefix a/ --keys-only"),
        run("get --prefix a/ --keys-only -w json"),
        run("get --prefix a/ --print-value-only"),
        run("get --from-key a/2"),
        run("get a/1 a/3"),
        run("get foo --consistency=s"),
        run("get foo --rev {R+1}"),
        run("get --prefix a/ --rev {R+4} -w json"),
        // Deletes.
        run("del a/3 --prev-kv"), // R+6
        run("del missing"),
        run("put p/1 1"),                 // R+7
        run("put p/2 2"),                 // R+8
        run("del --prefix p/ --prev-kv"), // R+9
        run("get --prefix p/ -w json"),
        // Transactions (etcdctl reads compares, success and failure operations from
        // standard input).
        txn(
            "txn",
            &[r#"value("foo") = "baz""#, r#"ver("a/1") = "1""#],
            &["put foo qux", "get foo"],
            &["get foo"],
        ), // R+10
        txn(
            "txn",
            &[r#"value("foo") = "baz""#],
            &["put foo wrong"],
            &["put foo failed", "get foo"],
        ), // R+11
        txn(
            "txn",
            &[r#"create("a/1") = "{R+3}""#, r#"mod("a/2") < "{R+6}""#],
            &["del a/2"],
            &["put a/2 wrong"],
        ), // R+12
        txn(
            "txn -w json",
            &[r#"create("a/1") > "{R+3}""#],
            &["put a/1 wrong"],
            &["get a/1"],
        ),
        txn("txn", &[r#"ver("nope") = "0""#], &["put nope created"], &[]), // R+13
        txn(
            "txn",
            &[r#"value("nope") != "created""#],
            &["put nope wrong"],
            &[],
        ),
        txn(
            "txn -w json",
            &[r#"mod("foo") > "{R+1}""#],
            &["put t/1 x", "put t/2 y", "get t/ --prefix"],
            &[],
        ), // R+14
        txn("txn", &[], &["put t/1 x", "put t/1 y"], &[]).fails(), // duplicate key
        run("get --prefix t/ -w json"),
        run("get foo -w json"), // created at R+1, changed at R+2, R+10, R+11
        // Compaction.
        run("compaction {R+5}"),
        run("get foo --rev {R+2}").fails(),
        run("get foo --rev {R+99}").fails(),
        run("get --prefix a/ --rev {R+5}"),
        run("watch foo --rev {R+1}").fails(),
        // Watch: from the next revision, one event seen before the rest are made.
        run("watch --prefix w/ --prev-kv -w json --rev {R+15}").kind(Kind::Watch("prefix")),
        run("watch w/1 --rev {R+15}").kind(Kind::Watch("key")),
        run("put w/1 a"), // R+15
        run("").kind(Kind::Events("prefix", 1)),
        run("put w/1 b"),                                  // R+16
        run("del w/1"),                                    // R+17
        txn("txn", &[], &["put w/2 x", "put w/3 y"], &[]), // R+18
        run("del --prefix w/"),                            // R+19
        run("").kind(Kind::Stop("prefix", 7)),
        run("").kind(Kind::Stop("key", 3)),
        // Leases.
        run("lease grant 60"),              // a
        run("lease grant 60 -w json"),      // b
        run("put l/1 v --lease={lease:a}"), // R+20
        run("put l/2 v --lease={lease:a}"), // R+21
        run("lease timetolive {lease:a} --keys"),
        run("lease timetolive {lease:a} -w json"),
        run("lease keep-alive --once {lease:a}"),
        run("get l/1 -w json"),
        run("lease list"),
        run("lease revoke {lease:b}"),
        run("lease timetolive {lease:b}"),
        run("lease grant 2"),                 // c: expires within EXPIRY_WAIT
        run("put l/3 v --lease={lease:c}"),   // R+22
        run("get l/3").kind(Kind::Until("")), // its expiry deletes l/3: R+23
        run("lease timetolive {lease:c}"),
        run("get --prefix l/"),
        run("lease revoke {lease:a}"), // deletes l/1 and l/2: R+24
        run("lease list"),
        run("get --prefix l/"),
        run("get missing -w json"),
        run("lease revoke {lease:a}").fails(),
        run("lease keep-alive --once {lease:a}").fails(),
        run("put x y --lease=1234abcd").fails(),
        // The cluster.
        run("member list").all(),
        run("member list -w json").all(),
        run("endpoint status -w json").all(),
        run("endpoint status -w table").all(),
        run("endpoint status").all(),
        run("endpoint health").all(),
    ]
}

/// Commands whose outputs may differ, and why: each is reported, but does not fail the test.
const ACCEPTED: &[(&str, &str)] = &[];

// ------------------------------------------------------------------------------------------
// Running the script
// ------------------------------------------------------------------------------------------

/// A cluster as etcdctl sees it: each member's client address (etcdctl's endpoint) and
/// peer address, in member order.
struct Cluster {
    what: String,
    clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
}

/// One step's outcome on one system, normalized.
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    ok: bool,
    stdout: String,
    /// etcdctl's `Error:` lines (its JSON log lines are dropped).
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(f, "{}", if self.ok { "(succeeded)" } else { "(failed)" })?;
        write!(f, "{}", self.stdout)?;
        if !self.stdout.is_empty() && !self.stdout.ends_with('\n') {
            writeln!(f)?;
        }
        for line in self.stderr.lines() {
            writeln!(f, "stderr: {line}")?;
        }
        Ok(())
    }
}

/// What a command printed.
struct Raw {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program` with `args` to its end, bounded by `wait` (killed past it, and said so).
fn run_bounded(program: &Path, args: &[String], stdin: Option<&str>, wait: Duration) -> Raw {
    let mut child = Command::new(program)
        .args(args)
        .env("ETCDCTL_API", "3")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        let _ = pipe.write_all(input.as_bytes()); // dropped: end of input
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(wait) {
        Ok(output) => {
            let output = output.expect("wait for a child");
            Raw {
                ok: output.status.success(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            kill(pid);
            // The waiting thread reaps it.
            Raw {
                ok: false,
                stdout: String::new(),
                stderr: format!("Error: (the test) still running after {wait:?}, killed\n"),
            }
        }
    }
}

fn kill(pid: u32) {
    // SAFETY: kill(2) on a child of this process that has not been reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A background etcdctl (a watch): what it printed so far.
struct Watcher {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(program: &Path, args: &[String]) -> Watcher {
        let mut child = Command::new(program)
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let collect = |mut from: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let into = Arc::clone(&text);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    into.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped")));
        let stderr = collect(Box::new(child.stderr.take().expect("piped")));
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    /// The events printed so far: `PUT`/`DELETE` lines of the simple format, `Events` of
    /// each complete JSON line.
    fn events(&self) -> usize {
        let text = self.stdout.lock().unwrap().clone();
        let complete = &text[..text.rfind('\n').map_or(0, |at| at + 1)];
        complete
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(v) => v["Events"].as_array().map_or(0, Vec::len),
                Err(_) => usize::from(line == "PUT" || line == "DELETE"),
            })
            .sum()
    }

    /// Waits (bounded by [`WAIT`]) for `n` events; whether they came.
    fn wait_for(&mut self, n: usize) -> Raw {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.events();
            if seen >= n {
                return Raw {
                    ok: true,
                    stdout: format!("{n} events\n"),
                    stderr: String::new(),
                };
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                return Raw {
                    ok: false,
                    stdout: format!("{seen} events\n"),
                    stderr: format!(
                        "Error: (the test) {seen} of {n} events {}\n",
                        if exited.is_some() {
                            "when the watcher exited"
                        } else {
                            "after the deadline"
                        }
                    ),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self, n: usize) -> Raw {
        let waited = self.wait_for(n);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The readers end with the pipes; give them a moment (bounded) to push the rest.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.stdout) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stdout = self.stdout.lock().unwrap().clone();
        let mut stderr = self.stderr.lock().unwrap().clone();
        if !waited.ok {
            stderr += &waited.stderr;
        }
        Raw {
            ok: waited.ok,
            stdout,
            stderr,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcdctl against one cluster, and what the normalizer knows of it.
struct Session<'a> {
    etcdctl: &'a Path,
    cluster: &'a Cluster,
    names: Names,
    watchers: HashMap<&'static str, Watcher>,
}

impl Session<'_> {
    fn args(&self, step: &Step) -> Vec<String> {
        let endpoints = if step.all {
            self.cluster
                .clients
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            self.cluster.clients[self.names.one].to_string()
        };
        let mut args: Vec<String> = [
            "--endpoints",
            &endpoints,
            "--dial-timeout",
            "5s",
            "--command-timeout",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(step.args.split_whitespace().map(|a| self.names.fill(a)));
        args
    }

    fn raw(&self, args: &[String], stdin: Option<&str>) -> Raw {
        run_bounded(self.etcdctl, args, stdin, COMMAND_WAIT)
    }

    fn step(&mut self, step: &Step) -> Outcome {
        let args = self.args(step);
        let stdin = step.stdin.as_deref().map(|s| self.names.fill(s));
        let raw = match step.kind {
            Kind::Run => self.raw(&args, stdin.as_deref()),
            Kind::Until(want) => {
                let deadline = Instant::now() + EXPIRY_WAIT;
                loop {
                    let raw = self.raw(&args, stdin.as_deref());
                    if raw.ok && raw.stdout == want {
                        break raw;
                    }
                    if Instant::now() >= deadline {
                        break Raw {
                            ok: false,
                            stderr: raw.stderr
                                + &format!(
                                    "Error: (the test) still not {want:?} after {EXPIRY_WAIT:?}\n"
                                ),
                            ..raw
                        };
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Kind::Watch(name) => {
                let watcher = Watcher::start(self.etcdctl, &args);
                self.watchers.insert(name, watcher);
                Raw {
                    ok: true,
                    stdout: String::new(),
                    stderr: String::new(),
                }
            }
            Kind::Events(name, n) => self.watchers.get_mut(name).expect("started").wait_for(n),
            Kind::Stop(name, n) => self.watchers.remove(name).expect("started").stop(n),
        };
        if step.args.starts_with("lease grant") {
            self.names.learn_lease(&raw.stdout);
        }
        self.names.outcome(step, &raw)
    }
}

/// Runs the script against `cluster`: the normalized outcome of each step.
fn run_script(etcdctl: &Path, cluster: &Cluster) -> Vec<Outcome> {
    let names = Names::of(etcdctl, cluster);
    eprintln!(
        "{}: first revision {}, commands to member {} ({}), members {:?}",
        cluster.what, names.base, names.one, cluster.clients[names.one], names.members
    );
    let mut session = Session {
        etcdctl,
        cluster,
        names,
        watchers: HashMap::new(),
    };
    script()
        .iter()
        .map(|step| {
            let started = Instant::now();
            let outcome = session.step(step);
            if started.elapsed() > Duration::from_secs(2) {
                eprintln!(
                    "{}: {} took {:?}",
                    cluster.what,
                    step.name(),
                    started.elapsed()
                );
            }
            outcome
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// The normalizer
// ------------------------------------------------------------------------------------------

/// What is known of a cluster's identities, to name them in its outputs.
struct Names {
    /// The store's revision before the script: revisions are printed as `R+N`.
    base: i64,
    /// Members in endpoint order: id and label (`leader`, `follower1`, ...; `member0`, ...
    /// where the leader is not known).
    members: Vec<(u64, String)>,
    /// The member the commands go to (not `all`): the first follower.
    one: usize,
    /// Leases in the order they were granted: id and label (`a`, `b`, ...).
    leases: Vec<(u64, String)>,
    /// Address substitutions: `http://ADDR` and `ADDR` of each member's client and peer
    /// address.
    addrs: Vec<(String, String)>,
}

impl Names {
    /// Asks the cluster (bounded by [`WAIT`]) for its first revision, its members' ids and
    /// its leader: `endpoint status` of every endpoint, agreeing on a leader.
    fn of(etcdctl: &Path, cluster: &Cluster) -> Names {
        let all = cluster
            .clients
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let common = |endpoints: &str, rest: &[&str]| -> Vec<String> {
            [
                "--endpoints",
                endpoints,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "2s",
            ]
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
        };
        let deadline = Instant::now() + WAIT;
        let mut members: Vec<(u64, String)> = Vec::new();
        let status_args = common(&all, &["endpoint", "status", "-w", "json"]);
        loop {
            let raw = run_bounded(etcdctl, &status_args, None, COMMAND_WAIT);
            // Each endpoint's (member id, leader), in endpoint order.
            let json: Value = serde_json::from_str(&raw.stdout).unwrap_or_default();
            let rows: Vec<(u64, u64)> = cluster
                .clients
                .iter()
                .filter_map(|addr| {
                    let row = json
                        .as_array()?
                        .iter()
                        .find(|row| row["Endpoint"].as_str() == Some(&addr.to_string()))?;
                    let status = &row["Status"];
                    Some((
                        status["header"]["member_id"].as_u64()?,
                        status["leader"].as_u64()?,
                    ))
                })
                .collect();
            let leader = rows.first().map(|r| r.1).filter(|&l| l != 0);
            if raw.ok
                && rows.len() == cluster.clients.len()
                && leader.is_some()
                && rows.iter().all(|r| Some(r.1) == leader)
            {
                let mut followers = 0;
                for &(id, _) in &rows {
                    let label = if Some(id) == leader {
                        "leader".to_string()
                    } else {
                        followers += 1;
                        format!("follower{followers}")
                    };
                    members.push((id, label));
                }
                break;
            }
            if raw.stderr.contains("code = Unimplemented") {
                // No Status: members by position, and no ids known; wait for the KV.
                let get = common(&all, &["get", "missing"]);
                if run_bounded(etcdctl, &get, None, COMMAND_WAIT).ok {
                    members = (0..cluster.clients.len())
                        .map(|i| (0, format!("member{i}")))
                        .collect();
                    break;
                }
            }
            let last = raw.stdout + &raw.stderr;
            assert!(
                Instant::now() < deadline,
                "{}: no endpoint status of every member agreeing on a leader within {WAIT:?}; \
                 the last:\n{last}",
                cluster.what
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let one = members
            .iter()
            .position(|(_, label)| label != "leader")
            .unwrap_or(0);
        let get = common(
            &cluster.clients[one].to_string(),
            &["get", "missing", "-w", "json"],
        );
        let raw = run_bounded(etcdctl, &get, None, COMMAND_WAIT);
        let base = serde_json::from_str::<Value>(&raw.stdout)
            .ok()
            .and_then(|v| v["header"]["revision"].as_i64())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no header revision in `get missing -w json`: {}{}",
                    cluster.what, raw.stdout, raw.stderr
                )
            });
        let mut addrs = Vec::new();
        for (i, (_, label)) in members.iter().enumerate() {
            for (kind, addr) in [("client", cluster.clients[i]), ("peer", cluster.peers[i])] {
                addrs.push((format!("http://{addr}"), format!("<{label} {kind} URL>")));
                addrs.push((addr.to_string(), format!("<{label} {kind}>")));
            }
        }
        // Longest first, so that no address is replaced inside a longer one.
        addrs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Names {
            base,
            members,
            one,
            leases: Vec::new(),
            addrs,
        }
    }

    /// A step's argument or input with its placeholders filled in.
    fn fill(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out += &rest[..open];
            let close = rest[open..].find('}').expect("a closed placeholder") + open;
            let inner = &rest[open + 1..close];
            if let Some(n) = inner.strip_prefix("R+") {
                let n: i64 = n.parse().expect("{R+N}");
                out += &(self.base + n).to_string();
            } else if let Some(label) = inner.strip_prefix("lease:") {
                let id = self
                    .leases
                    .iter()
                    .find(|(_, l)| l.split(',').next() == Some(label))
                    .map_or(0, |(id, _)| *id); // an unknown lease: 0, refused
                out += &format!("{id:x}");
            } else {
                panic!("unknown placeholder {{{inner}}}");
            }
            rest = &rest[close + 1..];
        }
        out + rest
    }

    /// Learns the lease id that `lease grant` printed (simple or JSON output).
    fn learn_lease(&mut self, stdout: &str) {
        let mut granted = None;
        if let Some(rest) = stdout.strip_prefix("lease ") {
            if let Some((hex, tail)) = rest.split_once(' ') {
                if tail.starts_with("granted with TTL") {
                    granted = u64::from_str_radix(hex, 16).ok();
                }
            }
        } else if let Ok(v) = serde_json::from_str::<Value>(stdout) {
            if v.get("TTL").is_some() {
                granted = v["ID"].as_u64();
            }
        }
        if let Some(id) = granted {
            let mut label = ((b'a' + self.leases.len() as u8) as char).to_string();
            // A new lease with the id of one granted before (and revoked since) is named
            // so: etcd does not hand an id out twice.
            if let Some((_, old)) = self.leases.iter().find(|(known, _)| *known == id) {
                label = format!("{label}, the id of {old} again");
            }
            self.leases.push((id, label));
        }
    }

    fn member(&self, id: u64) -> Option<&str> {
        self.members
            .iter()
            .find(|(m, _)| *m == id && id != 0)
            .map(|(_, label)| label.as_str())
    }

    /// An id in an output: a member's or a lease's label, or what it is not.
    fn id(&self, id: u64) -> String {
        if let Some(label) = self.member(id) {
            return format!("<{label}>");
        }
        if let Some((_, label)) = self.leases.iter().rev().find(|(l, _)| *l == id) {
            return format!("<lease {label}>");
        }
        if id == 0 {
            "0".into()
        } else {
            "<unknown id>".into()
        }
    }

    fn hex_id(&self, hex: &str) -> String {
        match u64::from_str_radix(hex, 16) {
            Ok(id) => self.id(id),
            Err(_) => hex.to_string(),
        }
    }

    fn revision(&self, rev: i64) -> String {
        if rev == 0 {
            "0".into()
        } else {
            format!("R{:+}", rev - self.base)
        }
    }

    fn outcome(&self, step: &Step, raw: &Raw) -> Outcome {
        let mut stdout = self.addresses(&raw.stdout);
        let mut stderr = String::new();
        for line in raw.stderr.lines() {
            if line.contains(" is healthy: ") || line.contains(" is unhealthy: ") {
                // endpoint health writes its findings to stderr
                stdout += &self.addresses(line);
                stdout += "\n";
            } else if line.starts_with("Error:") || line.starts_with("watch was canceled") {
                stderr += &self.addresses(line);
                stderr += "\n";
            }
        }
        Outcome {
            ok: raw.ok,
            stdout: self.stdout(step, &stdout),
            stderr,
        }
    }

    /// Every member address replaced by its label.
    fn addresses(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (from, to) in &self.addrs {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(at) = rest.find(from.as_str()) {
                let after = &rest[at + from.len()..];
                out += &rest[..at];
                // A port is not part of a longer one.
                if after.starts_with(|c: char| c.is_ascii_digit()) {
                    out += from;
                } else {
                    out += to;
                }
                rest = after;
            }
            text = out + rest;
        }
        text
    }

    fn stdout(&self, step: &Step, text: &str) -> String {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            // Which member answers a command sent to every endpoint is etcdctl's choice;
            // endpoint status asks each in turn.
            let any = step.all && !step.args.starts_with("endpoint status");
            return self.json_lines(text, any);
        }
        let words: Vec<&str> = step.args.split_whitespace().collect();
        let lines: Vec<String> = match words.as_slice() {
            ["member", "list", ..] => sorted(text.lines().map(|l| self.member_line(l))),
            ["endpoint", "status", "-w", "table"] => self.table(text),
            ["endpoint", "status", ..] => sorted(text.lines().map(|l| self.status_line(l))),
            ["endpoint", "health", ..] => sorted(text.lines().map(took)),
            ["lease", "list", ..] => {
                let mut lines = text.lines();
                let first = lines.next().unwrap_or_default().to_string();
                let mut rest = sorted(lines.map(|l| self.hex_id(l)));
                rest.insert(0, first);
                rest
            }
            ["get", "-w", "fields", ..] | [_, _, "-w", "fields"] => {
                text.lines().map(|l| self.field_line(l)).collect()
            }
            _ => text.lines().map(|l| self.text_line(l)).collect(),
        };
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// `lease ID ...` lines, `compacted revision N`, `remaining(Ns)`.
    fn text_line(&self, line: &str) -> String {
        if let Some(n) = line.strip_prefix("compacted revision ") {
            if let Ok(n) = n.parse() {
                return format!("compacted revision {}", self.revision(n));
            }
        }
        let Some(rest) = line.strip_prefix("lease ") else {
            return line.to_string();
        };
        let (hex, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut tail = tail.to_string();
        // "granted with TTL(60s), remaining(59s)": the time left is checked to be close to
        // the TTL (a keep-alive or a fresh grant), not printed.
        if let (Some(ttl), Some(left)) = (
            between(&tail, "TTL(", "s)"),
            between(&tail, "remaining(", "s)"),
        ) {
            if let (Ok(ttl), Ok(left)) = (ttl.parse::<i64>(), left.parse::<i64>()) {
                let said = if left <= ttl && left >= ttl - 5 {
                    "<within 5s of the TTL>".to_string()
                } else {
                    format!("{left}s: not within 5s of the TTL")
                };
                tail = tail.replace(
                    &format!("remaining({left}s)"),
                    &format!("remaining({said})"),
                );
            }
        }
        // "attached keys([l/1 l/2])": in no particular order.
        if let Some(keys) = between(&tail, "attached keys([", "])") {
            let mut sorted: Vec<&str> = keys.split(' ').collect();
            sorted.sort();
            tail = tail.replace(keys, &sorted.join(" "));
        }
        format!("lease {} {tail}", self.hex_id(hex))
    }

    /// `ID, started, NAME, PEER, CLIENT, LEARNER`: the id by role, the name dropped (a
    /// member's name is whatever its operator chose).
    fn member_line(&self, line: &str) -> String {
        let mut cols: Vec<String> = line.split(", ").map(str::to_string).collect();
        if cols.len() >= 3 {
            cols[0] = self.hex_id(&cols[0]);
            cols[2] = "<name>".into();
        }
        cols.join(", ")
    }

    /// `ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX, RAFT
    /// APPLIED INDEX, ERRORS`.
    fn status_line(&self, line: &str) -> String {
        let cols: Vec<&str> = line.split(", ").collect();
        self.status_cells(&cols).join(", ")
    }

    fn status_cells(&self, cols: &[&str]) -> Vec<String> {
        cols.iter()
            .enumerate()
            .map(|(i, c)| match i {
                1 => self.hex_id(c),
                2 => "<version>".into(),
                3 => "<db size>".into(),
                6 => "<term>".into(),
                7 | 8 => "<index>".into(),
                _ => c.to_string(),
            })
            .collect()
    }

    /// A table: its border lines dropped, cells trimmed, rows sorted under the header.
    fn table(&self, text: &str) -> Vec<String> {
        let mut rows = text.lines().filter(|l| l.starts_with('|')).map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        });
        let Some(header) = rows.next() else {
            return Vec::new();
        };
        let mut out = vec![header.join(" | ")];
        out.extend(sorted(
            rows.map(|cells| self.status_cells(&cells).join(" | ")),
        ));
        out
    }

    /// `"Name" : value` of `-w fields`.
    fn field_line(&self, line: &str) -> String {
        let Some((name, value)) = line.split_once(" : ") else {
            return line.to_string();
        };
        let field = name.trim_matches('"');
        let value = match (field, value.parse::<i64>()) {
            ("ClusterID", _) => "<cluster>".into(),
            ("MemberID" | "Lease", _) => match value.parse::<u64>() {
                Ok(id) => self.id(id),
                Err(_) => value.to_string(),
            },
            ("RaftTerm", _) => "<term>".into(),
            ("Revision" | "CreateRevision" | "ModRevision", Ok(rev)) => self.revision(rev),
            _ => value.to_string(),
        };
        format!("{name} : {value}")
    }

    /// Each line that is JSON normalized and pretty-printed; a watch's responses become
    /// their events one by one (how a watch groups events into responses, and the header
    /// revision of each, depends on whether they are replayed or live).
    fn json_lines(&self, text: &str, any_member: bool) -> String {
        let mut out = String::new();
        for line in text.lines() {
            let Ok(mut v) = serde_json::from_str::<Value>(line) else {
                out += line;
                out += "\n";
                continue;
            };
            if let Some(events) = v.get_mut("Events") {
                for event in events.as_array_mut().into_iter().flatten() {
                    self.json(event, false, any_member);
                    out += &serde_json::to_string(event).unwrap();
                    out += "\n";
                }
                if v["Canceled"] == Value::Bool(true) || v["CompactRevision"] != 0 {
                    out += &format!(
                        "canceled, compact revision {}\n",
                        self.revision(v["CompactRevision"].as_i64().unwrap_or(0))
                    );
                }
                continue;
            }
            self.json(&mut v, true, any_member);
            out += &serde_json::to_string_pretty(&v).unwrap();
            out += "\n";
        }
        out
    }

    /// Normalizes a JSON value in place; `unordered` arrays (endpoint status rows, members,
    /// leases: in no particular order) are sorted; with `any_member` a header's member is
    /// only said to be one of the cluster's.
    fn json(&self, v: &mut Value, unordered: bool, any_member: bool) {
        match v {
            Value::Array(items) => {
                for item in items.iter_mut() {
                    self.json(item, false, any_member);
                }
                if unordered {
                    items.sort_by_key(|item| item.to_string());
                }
            }
            Value::Object(map) => {
                let granted = map.get("granted-ttl").and_then(Value::as_i64);
                for (key, value) in map.iter_mut() {
                    let number = value.as_i64();
                    let replacement = match (key.as_str(), number) {
                        ("member_id", _)
                            if any_member && self.member(value.as_u64().unwrap_or(0)).is_some() =>
                        {
                            Some("<a member>".into())
                        }
                        ("member_id" | "ID" | "id" | "leader" | "lease", _) if value.is_u64() => {
                            Some(self.id(value.as_u64().unwrap_or(0)))
                        }
                        (
                            "revision" | "create_revision" | "mod_revision" | "compact_revision",
                            Some(rev),
                        ) => Some(self.revision(rev)),
                        ("cluster_id", _) => Some("<cluster>".into()),
                        ("raft_term" | "raftTerm", _) => Some("<term>".into()),
                        ("raftIndex" | "raftAppliedIndex", _) => Some("<index>".into()),
                        ("dbSize" | "dbSizeInUse", _) => Some("<db size>".into()),
                        ("name", _) => Some("<name>".into()),
                        // The server's version; a key's version is a number.
                        ("version", None) => Some("<version>".into()),
                        ("ttl", Some(left)) => granted.map(|ttl| {
                            if left <= ttl && left >= ttl - 5 {
                                "<within 5s of the TTL>".into()
                            } else {
                                format!("{left}: not within 5s of the TTL")
                            }
                        }),
                        _ => None,
                    };
                    match replacement {
                        Some(r) => *value = Value::String(r),
                        None => {
                            let unordered = matches!(key.as_str(), "members" | "leases");
                            self.json(value, unordered, any_member)
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn sorted(lines: impl Iterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.collect();
    lines.sort();
    lines
}

/// `... took = 2.408253ms`: the time dropped.
fn took(line: &str) -> String {
    match line.split_once("took = ") {
        Some((head, _)) => format!("{head}took = <time>"),
        None => line.to_string(),
    }
}

fn between<'t>(text: &'t str, open: &str, close: &str) -> Option<&'t str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

// ------------------------------------------------------------------------------------------
// Comparing
// ------------------------------------------------------------------------------------------

/// A line diff of two outputs (`-` the reference's, `+` the other's).
fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence table, from the ends.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("      {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("    + {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("    - {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// Compares `other`'s outcomes with the reference's, step by step; prints the report, and
/// returns the steps that differ and are not accepted (by `accepted`).
fn compare(
    reference: &[Outcome],
    other: &[Outcome],
    other_name: &str,
    accepted: &[(&str, &str)],
) -> Vec<String> {
    let mut report = format!("etcdctl: etcd (-) against {other_name} (+), after normalizing\n");
    let mut failed = Vec::new();
    let (mut equal, mut allowed) = (0, 0);
    for ((step, want), got) in script().iter().zip(reference).zip(other) {
        let name = step.name();
        if want == got {
            equal += 1;
            report += &format!("equal    {name}\n");
            continue;
        }
        let why = accepted
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, why)| *why);
        match why {
            Some(why) => {
                allowed += 1;
                report += &format!("accepted {name}\n    (why: {why})\n");
            }
            None => {
                failed.push(name.clone());
                report += &format!("DIFFERS  {name}\n");
            }
        }
        report += &diff(&want.to_string(), &got.to_string());
    }
    report += &format!(
        "{equal} equal, {allowed} differing as accepted, {} differing\n",
        failed.len()
    );
    eprintln!("{report}");
    failed
}

// ------------------------------------------------------------------------------------------
// The programs: etcdctl and etcd installed, etcd and Flotilla started
// ------------------------------------------------------------------------------------------

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `program`, installed with apt-get from `package` if it is missing (after refreshing the
/// package lists if the first attempt fails); the test fails saying what was tried
/// otherwise. One install at a time (apt holds a lock).
fn installed(program: &str, package: &str) -> PathBuf {
    static APT: Mutex<()> = Mutex::new(());
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = on_path(program) {
        return found;
    }
    let needs = format!(
        "this test needs {program} (Debian package {package}: `apt-get install {package}`)"
    );
    let apt = on_path("apt-get")
        .unwrap_or_else(|| panic!("{needs}; it is missing and there is no apt-get"));
    let install: Vec<String> = ["install", "-y", "--no-install-recommends", package]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let apt_wait = Duration::from_secs(300);
    let mut tried = run_bounded(&apt, &install, None, apt_wait);
    if !tried.ok {
        let update = run_bounded(&apt, &["update".to_string()], None, apt_wait);
        assert!(
            update.ok,
            "{needs}; apt-get update failed:\n{}",
            update.stderr
        );
        tried = run_bounded(&apt, &install, None, apt_wait);
    }
    assert!(
        tried.ok,
        "{needs}; apt-get install {package} failed:\n{}",
        tried.stderr
    );
    on_path(program).unwrap_or_else(|| {
        panic!("{needs}; apt-get installed {package} but {program} is not on PATH")
    })
}

fn etcdctl() -> PathBuf {
    installed("etcdctl", "etcd-client")
}

/// An etcd cluster of three members on loopback, with its data in a temporary directory;
/// killed when dropped.
struct Etcd {
    cluster: Cluster,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts three members named `{prefix}0..2`; [`Names::of`] waits for them to elect.
    fn start(prefix: &str) -> Etcd {
        let etcd = installed("etcd", "etcd-server");
        let dir = tempfile::tempdir().unwrap();
        let addrs = flotilla_runtime::free_loopback_addrs(6);
        let (clients, peers) = (addrs[..3].to_vec(), addrs[3..].to_vec());
        let initial = (0..3)
            .map(|i| format!("{prefix}{i}=http://{}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..3)
            .map(|i| {
                let log = File::create(dir.path().join(format!("{prefix}{i}.log"))).unwrap();
                Command::new(&etcd)
                    .arg("--name")
                    .arg(format!("{prefix}{i}"))
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("{prefix}{i}")))
                    .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                    .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                    .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://{}", peers[i]),
                    ])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", prefix])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("start etcd")
            })
            .collect();
        Etcd {
            cluster: Cluster {
                what: format!("etcd ({prefix}0..2)"),
                clients,
                peers,
            },
            children,
            dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    eprintln!("--- {}: {}, last lines:", self.cluster.what, path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// `flotilla cluster up --nodes 3`: its nodes' peer and etcd API addresses, parsed from
/// what it prints; stopped with SIGINT at the end, killed with its nodes if dropped.
struct Flotilla {
    cluster: Cluster,
    child: Child,
    pids: Vec<u32>,
    dir: tempfile::TempDir,
}

impl Flotilla {
    fn start() -> Flotilla {
        let dir = tempfile::tempdir().unwrap();
        let stderr = File::create(dir.path().join("cluster-up.stderr")).unwrap();
        let mut child = Command::new(FLOTILLA)
            .args(["cluster", "up", "--nodes", "3", "--base-port", "0", "--dir"])
            .arg(dir.path().join("cluster"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("run flotilla cluster up");
        let stdout = child.stdout.take().unwrap();
        let mut up = Flotilla {
            cluster: Cluster {
                what: "flotilla (cluster up)".into(),
                clients: Vec::new(),
                peers: Vec::new(),
            },
            child,
            pids: Vec::new(),
            dir,
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // "  node I: ADDR (pid P)..." for each node, "etcd clients: --endpoints A,B,C", and
        // last a line saying Ctrl-C stops the cluster.
        let deadline = Instant::now() + WAIT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "cluster up: no line saying Ctrl-C stops the cluster ({e}); printed \
                     {printed:#?}\n{}",
                    up.logs()
                ),
            };
            printed.push(line.clone());
            if let Some(rest) = line.trim_start().strip_prefix("node ") {
                if let Some((_, rest)) = rest.split_once(": ") {
                    if let Some((addr, rest)) = rest.split_once(" (pid ") {
                        up.cluster.peers.push(addr.parse().unwrap());
                        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        up.pids.push(pid.parse().unwrap());
                    }
                }
            }
            if let Some(list) = line.strip_prefix("etcd clients: --endpoints ") {
                up.cluster.clients = list.split(',').map(|a| a.parse().unwrap()).collect();
            }
            if line.contains("Ctrl-C stops the cluster") {
                break;
            }
        }
        assert!(
            !up.cluster.clients.is_empty(),
            "flotilla cluster up printed no `etcd clients: --endpoints ...` line: its nodes \
             do not serve etcd's API (yet?); printed {printed:#?}"
        );
        assert_eq!(up.cluster.peers.len(), 3, "{printed:#?}");
        assert_eq!(up.cluster.clients.len(), 3, "{printed:#?}");
        up
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "cluster-up.stderr",
            "cluster/node-0.log",
            "cluster/node-1.log",
            "cluster/node-2.log",
        ] {
            let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            all += &format!("--- {name} (last lines):\n");
            for line in tail.iter().rev() {
                all += line;
                all += "\n";
            }
        }
        all
    }

    /// SIGINT, as Ctrl-C: cluster up stops its nodes and exits (bounded).
    fn stop(mut self) {
        // SAFETY: kill(2) on our child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cluster up still running {WAIT:?} after SIGINT\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "cluster up exited with {status} after SIGINT\n{}",
            self.logs()
        );
    }
}

impl Drop for Flotilla {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in &self.pids {
            // Only if it is still one of this cluster's nodes (not a process that got the
            // number since).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline).contains(&*self.dir.path().to_string_lossy())
            });
            if ours {
                kill(pid);
            }
        }
    }
}

/// The script's outcomes on a fresh etcd: the reference, run once for both tests.
fn reference() -> &'static [Outcome] {
    static REFERENCE: OnceLock<Vec<Outcome>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let etcdctl = etcdctl();
        let etcd = Etcd::start("etcd-a");
        let outcomes = run_script(&etcdctl, &etcd.cluster);
        // The script is etcd's behaviour: each command succeeds or fails as it says.
        let wrong: Vec<String> = script()
            .iter()
            .zip(&outcomes)
            .filter(|(step, outcome)| outcome.ok != step.ok)
            .map(|(step, _)| step.name())
            .collect();
        if !wrong.is_empty() {
            for (step, outcome) in script().iter().zip(&outcomes) {
                eprintln!("{}\n{outcome}", step.name());
            }
            panic!("the script is wrong about etcd (see its outputs above) in: {wrong:#?}");
        }
        outcomes
    })
}

/// The normalizer's own test: a second etcd (other ports, names, ids and perhaps another
/// member leading, other lease ids and timings) normalizes to exactly the first's outputs.
#[test]
fn etcdctl_outputs_of_two_etcd_clusters_normalize_to_equal() {
    let etcdctl = etcdctl();
    let reference = std::thread::spawn(|| reference().to_vec());
    let etcd = Etcd::start("other");
    let outcomes = run_script(&etcdctl, &etcd.cluster);
    drop(etcd);
    let reference = reference.join().expect("the reference run");
    let failed = compare(&reference, &outcomes, "a second etcd", &[]);
    assert!(
        failed.is_empty(),
        "two etcd clusters' outputs differ after normalizing (the normalizer misses \
         something) in: {failed:#?}"
    );
}

/// etcdctl against a 3-node Flotilla cluster: every command's normalized output as etcd's,
/// but for those in [`ACCEPTED`].
#[test]
fn etcdctl_outputs_of_flotilla_match_etcd() {
    let etcdctl = etcdctl();
    let reference = std::thread::spawn(|| reference().to_vec());
    let flotilla = Flotilla::start();
    let outcomes = run_script(&etcdctl, &flotilla.cluster);
    flotilla.stop();
    let reference = reference.join().expect("the reference run");
    let failed = compare(&reference, &outcomes, "flotilla", ACCEPTED);
    assert!(
        failed.is_empty(),
        "etcdctl's outputs from flotilla differ from etcd's (see the report above) in: \
         {failed:#?}"
    );
}
