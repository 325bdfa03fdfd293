//! etcd's own command-line client against `serve` on loopback: `etcdctl` (Debian package
//! `etcd-client`, v3 API) runs put, get (one key, a prefix, sorted and limited, as JSON),
//! del, txn from standard input and compaction; watch (as a running child whose output
//! lines are read, and interactively for a progress request); lease grant, keep-alive,
//! time to live, list, revoke and a key vanishing with its expired lease; member list and
//! endpoint status; and its outputs are checked. Where
//! `etcdctl` is missing the test installs it once with apt-get, and fails saying so if it
//! still cannot be had: it never passes without having run it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestServer, CLUSTER_ID, MEMBER_ID, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::OnceCell;

/// What a command printed and whether it succeeded.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a program to its end, bounded by [`WAIT`] (killed past it).
async fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Run, String> {
    let mut command = tokio::process::Command::new(program);
    command
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
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("writing to {}: {e}", program.display()))?;
        drop(pipe); // end of input
    }
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} {args:?} did not finish within {WAIT:?}",
                program.display()
            )
        })?
        .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
    Ok(Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `etcdctl`, installed once with apt-get if it is missing (after refreshing the package
/// lists if the first install attempt fails); an error that says what was tried otherwise.
async fn find_etcdctl() -> Result<PathBuf, String> {
    if let Some(found) = on_path("etcdctl") {
        return Ok(found);
    }
    let apt = on_path("apt-get")
        .ok_or("etcdctl is not installed and there is no apt-get to install it with")?;
    let install = ["install", "-y", "--no-install-recommends", "etcd-client"];
    let mut tried = run(&apt, &install, None).await?;
    if !tried.ok {
        let update = run(&apt, &["update"], None).await?;
        if !update.ok {
            return Err(format!("apt-get update failed:\n{}", update.stderr));
        }
        tried = run(&apt, &install, None).await?;
    }
    if !tried.ok {
        return Err(format!(
            "apt-get install etcd-client failed:\n{}",
            tried.stderr
        ));
    }
    on_path("etcdctl")
        .ok_or_else(|| "apt-get installed etcd-client but etcdctl is not on PATH".into())
}

async fn etcdctl_path() -> PathBuf {
    static FOUND: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    match FOUND.get_or_init(find_etcdctl).await {
        Ok(path) => path.clone(),
        Err(why) => panic!(
            "this test needs etcdctl (Debian package etcd-client: `apt-get install \
             etcd-client`), and it could not be had: {why}"
        ),
    }
}

struct Etcdctl {
    program: PathBuf,
    endpoint: String,
}

impl Etcdctl {
    async fn new(server: &TestServer) -> Etcdctl {
        Etcdctl {
            program: etcdctl_path().await,
            endpoint: server.addr.to_string(),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec![
            "--endpoints",
            &self.endpoint,
            "--dial-timeout",
            "5s",
            "--command-timeout",
            "5s",
        ];
        all.extend_from_slice(args);
        run(&self.program, &all, stdin)
            .await
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// Starts a command that runs until stopped (`watch`, `lease keep-alive`), its output
    /// read line by line; killed when dropped.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut all = vec!["--endpoints", &self.endpoint, "--dial-timeout", "5s"];
        all.extend_from_slice(args);
        let mut child = tokio::process::Command::new(&self.program)
            .args(&all)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcdctl {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        Running {
            what: format!("etcdctl {args:?}"),
            stdin: child.stdin.take(),
            lines: BufReader::new(stdout).lines(),
            _child: child,
        }
    }

    /// The output of a command that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None).await
    }

    async fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let r = self.run(args, stdin).await;
        assert!(
            r.ok,
            "etcdctl {args:?} failed\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// The error output of a command that must fail.
    async fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args, None).await;
        assert!(!r.ok, "etcdctl {args:?} should fail\nstdout: {}", r.stdout);
        r.stderr
    }
}

/// A command running in the background.
struct Running {
    what: String,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Running {
    /// The next line it prints (bounded by [`WAIT`]).
    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("{} ended its output", self.what),
            Ok(Err(e)) => panic!("reading {}: {e}", self.what),
            Err(_) => panic!("{} printed nothing more within {WAIT:?}", self.what),
        }
    }

    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            lines.push(self.line().await);
        }
        lines
    }

    /// Writes a line to its standard input.
    async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to etcdctl");
        stdin.flush().await.expect("flush");
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn etcdctl_put_get_del_txn_compaction() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;

    assert_eq!(etcdctl.ok(&["put", "foo", "bar"]).await, "OK\n"); // revision 2
    assert_eq!(etcdctl.ok(&["get", "foo"]).await, "foo\nbar\n");

    // The JSON output shows the wire fields: header and key-value numbers and bytes.
    let got = json(&etcdctl.ok(&["get", "foo", "-w", "json"]).await);
    let header = &got["header"];
    assert_eq!(header["cluster_id"].as_u64(), Some(CLUSTER_ID), "{got}");
    assert_eq!(header["member_id"].as_u64(), Some(MEMBER_ID), "{got}");
    assert_eq!(header["revision"].as_i64(), Some(2), "{got}");
    assert_eq!(header["raft_term"].as_u64(), Some(1), "{got}");
    let kv = &got["kvs"][0];
    assert_eq!(kv["key"], "Zm9v", "base64 of foo: {got}");
    assert_eq!(kv["value"], "YmFy", "base64 of bar: {got}");
    assert_eq!(kv["create_revision"].as_i64(), Some(2), "{got}");
    assert_eq!(kv["mod_revision"].as_i64(), Some(2), "{got}");
    assert_eq!(kv["version"].as_i64(), Some(1), "{got}");
    assert_eq!(got["count"].as_i64(), Some(1), "{got}");

    for (k, v) in [("a/1", "z"), ("a/3", "x"), ("a/2", "y")] {
        assert_eq!(etcdctl.ok(&["put", k, v]).await, "OK\n"); // revisions 3, 4, 5
    }
    assert_eq!(
        etcdctl.ok(&["get", "--prefix", ""]).await,
        "a/1\nz\na/2\ny\na/3\nx\nfoo\nbar\n",
        "every key, in key order"
    );
    assert_eq!(
        etcdctl
            .ok(&[
                "get",
                "--prefix",
                "a/",
                "--limit",
                "2",
                "--order",
                "DESCEND",
                "--sort-by",
                "KEY"
            ])
            .await,
        "a/3\nx\na/2\ny\n"
    );
    assert_eq!(
        etcdctl
            .ok(&[
                "get",
                "--prefix",
                "a/",
                "--order",
                "ASCEND",
                "--sort-by",
                "VALUE"
            ])
            .await,
        "a/3\nx\na/2\ny\na/1\nz\n"
    );
    let keys = json(
        &etcdctl
            .ok(&["get", "--prefix", "a/", "--keys-only", "-w", "json"])
            .await,
    );
    assert_eq!(keys["count"].as_i64(), Some(3), "{keys}");
    let listed: Vec<_> = keys["kvs"]
        .as_array()
        .unwrap_or_else(|| panic!("{keys}"))
        .iter()
        .map(|kv| (kv["key"].as_str(), kv.get("value")))
        .collect();
    // a/1, a/2, a/3 in base64, without values.
    assert_eq!(
        listed,
        [
            (Some("YS8x"), None),
            (Some("YS8y"), None),
            (Some("YS8z"), None)
        ],
        "{keys}"
    );

    assert_eq!(etcdctl.ok(&["del", "foo"]).await, "1\n"); // revision 6
    assert_eq!(etcdctl.ok(&["get", "foo"]).await, "");
    assert_eq!(etcdctl.ok(&["del", "foo"]).await, "0\n");
    assert_eq!(
        etcdctl.ok(&["put", "foo", "again", "--prev-kv"]).await,
        "OK\n",
        "no previous key to show" // revision 7
    );
    assert_eq!(
        etcdctl.ok(&["del", "foo", "--prev-kv"]).await,
        "1\nfoo\nagain\n" // revision 8
    );

    // A compare-and-set from standard input: compares, success ops, failure ops.
    let cas = "value(\"a/1\") = \"z\"\n\nput a/1 zz\nget a/1\n\nget a/1\n\n";
    assert_eq!(
        etcdctl.ok_with(&["txn"], Some(cas)).await, // revision 9
        "SUCCESS\n\nOK\n\na/1\nzz\n"
    );
    assert_eq!(
        etcdctl.ok_with(&["txn"], Some(cas)).await,
        "FAILURE\n\na/1\nzz\n"
    );
    let by_version = "ver(\"a/2\") = \"1\"\nmod(\"a/3\") < \"5\"\n\ndel a/2\n\n\n";
    assert_eq!(
        etcdctl.ok_with(&["txn"], Some(by_version)).await, // revision 10
        "SUCCESS\n\n1\n"
    );
    let rev = json(&etcdctl.ok(&["get", "a/1", "-w", "json"]).await);
    assert_eq!(rev["header"]["revision"].as_i64(), Some(10), "{rev}");
    // Created at 3, changed by the txn at 9: two puts.
    let kv = &rev["kvs"][0];
    assert_eq!(kv["create_revision"].as_i64(), Some(3), "{rev}");
    assert_eq!(kv["mod_revision"].as_i64(), Some(9), "{rev}");
    assert_eq!(kv["version"].as_i64(), Some(2), "{rev}");

    // Reads of old revisions, then a compaction.
    assert_eq!(etcdctl.ok(&["get", "a/1", "--rev", "3"]).await, "a/1\nz\n");
    assert_eq!(
        etcdctl.ok(&["compaction", "9"]).await,
        "compacted revision 9\n"
    );
    let e = etcdctl.fails(&["get", "a/1", "--rev", "3"]).await;
    assert!(
        e.contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    let e = etcdctl.fails(&["get", "a/1", "--rev", "99"]).await;
    assert!(
        e.contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
    assert_eq!(etcdctl.ok(&["get", "a/1", "--rev", "9"]).await, "a/1\nzz\n");

    server.stop().await;
}

/// The store's revision, as `etcdctl get` reports it.
async fn store_revision(etcdctl: &Etcdctl) -> i64 {
    let got = json(&etcdctl.ok(&["get", "none", "-w", "json"]).await);
    got["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("{got}"))
}

#[tokio::test]
async fn etcdctl_watch() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;
    etcdctl.ok(&["put", "foo/a", "1"]).await; // 2

    // A prefix from revision 2 with previous values: the history first, then each change
    // as it is made (the watch starts from a known revision, so none can be missed).
    let mut watch = etcdctl.spawn(&["watch", "--prefix", "foo/", "--rev", "2", "--prev-kv"]);
    assert_eq!(watch.lines(3).await, ["PUT", "foo/a", "1"]);
    etcdctl.ok(&["put", "foo/b", "2"]).await; // 3
    assert_eq!(watch.lines(3).await, ["PUT", "foo/b", "2"]);
    etcdctl.ok(&["put", "bar", "not watched"]).await; // 4
    etcdctl.ok(&["put", "foo/a", "11"]).await; // 5
    assert_eq!(
        watch.lines(5).await,
        ["PUT", "foo/a", "1", "foo/a", "11"],
        "the previous value, then the new one"
    );
    assert_eq!(etcdctl.ok(&["del", "foo/a"]).await, "1\n"); // 6
    assert_eq!(
        watch.lines(5).await,
        ["DELETE", "foo/a", "11", "foo/a", ""],
        "a delete: the previous value, then the key without one"
    );
    // A transaction that changes two watched keys: both events.
    let txn = "\nput foo/c 3\nput foo/d 4\n\n\n";
    etcdctl.ok_with(&["txn"], Some(txn)).await; // 7
    assert_eq!(
        watch.lines(6).await,
        ["PUT", "foo/c", "3", "PUT", "foo/d", "4"]
    );

    // A key, from now on, as JSON: the header's revision and the event.
    let from = store_revision(&etcdctl).await + 1;
    let mut json_watch = etcdctl.spawn(&["watch", "bar", "-w", "json", "--rev", &from.to_string()]);
    etcdctl.ok(&["put", "bar", "seen"]).await; // 8
    let got = json(&json_watch.line().await);
    assert_eq!(got["Header"]["revision"].as_i64(), Some(8), "{got}");
    assert_eq!(
        got["Header"]["cluster_id"].as_u64(),
        Some(CLUSTER_ID),
        "{got}"
    );
    let event = &got["Events"][0];
    assert_eq!(event["kv"]["key"], "YmFy", "base64 of bar: {got}");
    assert_eq!(event["kv"]["value"], "c2Vlbg==", "base64 of seen: {got}");
    assert_eq!(event["kv"]["mod_revision"].as_i64(), Some(8), "{got}");
    assert_eq!(event["kv"]["version"].as_i64(), Some(2), "{got}");
    assert!(event.get("type").is_none(), "PUT is the zero value: {got}");
    drop(json_watch);

    // Interactive: a watch, then a progress request, answered with the store's revision.
    let mut interactive = etcdctl.spawn(&["watch", "-i"]);
    interactive.say("watch foo/b").await;
    // The progress request may reach the server before the watch is created: ask until
    // the answer comes (bounded), as the watch's creation is not printed.
    let started = Instant::now();
    loop {
        interactive.say("progress").await;
        let line =
            tokio::time::timeout(Duration::from_millis(500), interactive.lines.next_line()).await;
        if let Ok(line) = line {
            let line = line.expect("read").expect("etcdctl watch -i runs");
            assert_eq!(line, "progress notify: 8");
            break;
        }
        assert!(started.elapsed() < WAIT, "no progress notification");
    }
    etcdctl.ok(&["put", "foo/b", "22"]).await; // 9
    assert_eq!(interactive.lines(3).await, ["PUT", "foo/b", "22"]);
    drop(interactive);

    // The first watch saw nothing it should not have: its next event is the put at 9.
    assert_eq!(watch.lines(5).await, ["PUT", "foo/b", "2", "foo/b", "22"]);
    drop(watch);

    // From a compacted revision: canceled, and etcdctl says why.
    assert_eq!(
        etcdctl.ok(&["compaction", "5"]).await,
        "compacted revision 5\n"
    );
    let r = etcdctl
        .run(&["watch", "--prefix", "foo/", "--rev", "2"], None)
        .await;
    assert!(!r.ok, "the watch is canceled: {}", r.stdout);
    assert!(
        r.stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{}",
        r.stderr
    );
    server.stop().await;
}

/// The lease id in a line `lease <16 hex digits> ...`.
fn lease_id(line: &str) -> String {
    let id = line
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not a lease line: {line}"));
    assert_eq!(id.len(), 16, "{line}");
    id.to_string()
}

#[tokio::test]
async fn etcdctl_leases() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;

    let granted = etcdctl.ok(&["lease", "grant", "60"]).await;
    let id = lease_id(&granted);
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    let lease_flag = format!("--lease={id}");
    etcdctl.ok(&["put", "k1", "v", &lease_flag]).await;
    etcdctl.ok(&["put", "k2", "v", &lease_flag]).await;
    let got = json(&etcdctl.ok(&["get", "k1", "-w", "json"]).await);
    assert_eq!(
        got["kvs"][0]["lease"].as_i64(),
        Some(i64::from_str_radix(&id, 16).unwrap()),
        "{got}"
    );

    let ttl = etcdctl.ok(&["lease", "timetolive", &id, "--keys"]).await;
    // Seconds left: 60 or a little less, however slow this machine is.
    let remaining = (50..=60).map(|left| {
        format!("lease {id} granted with TTL(60s), remaining({left}s), attached keys([k1 k2])\n")
    });
    assert!(remaining.into_iter().any(|want| want == ttl), "{ttl}");
    assert_eq!(
        etcdctl.ok(&["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        etcdctl.ok(&["lease", "list"]).await,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        etcdctl.ok(&["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        etcdctl.ok(&["get", "--prefix", "k"]).await,
        "",
        "its keys are gone"
    );
    assert_eq!(
        etcdctl.ok(&["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    let e = etcdctl.fails(&["lease", "revoke", &id]).await;
    assert!(e.contains("etcdserver: requested lease not found"), "{e}");
    let e = etcdctl.fails(&["lease", "keep-alive", "--once", &id]).await;
    assert!(e.contains("etcdserver: requested lease not found"), "{e}");
    assert_eq!(etcdctl.ok(&["lease", "list"]).await, "found 0 leases\n");

    // A lease kept alive by `etcdctl lease keep-alive` outlives its TTL (2 s, raised from
    // 1); revoked, the keep-alive says so and ends.
    let granted = etcdctl.ok(&["lease", "grant", "1"]).await;
    let id = lease_id(&granted);
    assert_eq!(
        granted,
        format!("lease {id} granted with TTL(2s)\n"),
        "raised to the minimum"
    );
    let started = Instant::now();
    etcdctl
        .ok(&["put", "kept", "v", &format!("--lease={id}")])
        .await;
    let mut keep_alive = etcdctl.spawn(&["lease", "keep-alive", &id]);
    // etcd's client renews every third of the TTL: well past 2 s after 6 renewals.
    for _ in 0..6 {
        assert_eq!(
            keep_alive.line().await,
            format!("lease {id} keepalived with TTL(2)")
        );
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        etcdctl.ok(&["get", "kept"]).await,
        "kept\nv\n",
        "kept alive"
    );
    etcdctl.ok(&["lease", "revoke", &id]).await;
    loop {
        let line = keep_alive.line().await;
        if line == format!("lease {id} expired or revoked.") {
            break;
        }
        assert_eq!(line, format!("lease {id} keepalived with TTL(2)"));
    }
    drop(keep_alive);

    // A lease not kept alive: its key vanishes once the 2 s are up, not before.
    let granted = etcdctl.ok(&["lease", "grant", "2"]).await;
    let started = Instant::now();
    let id = lease_id(&granted);
    etcdctl
        .ok(&["put", "brief", "v", &format!("--lease={id}")])
        .await;
    while !etcdctl.ok(&["get", "brief"]).await.is_empty() {
        assert!(started.elapsed() < WAIT, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "expired early: {:?}",
        started.elapsed()
    );
    assert_eq!(
        etcdctl.ok(&["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn etcdctl_member_list_and_endpoint_status() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;
    // Three commands, two keys, revision 4: each number told apart from the others.
    etcdctl.ok(&["put", "k1", "v"]).await; // 2
    etcdctl.ok(&["put", "k2", "v"]).await; // 3
    etcdctl.ok(&["put", "k1", "w"]).await; // 4

    let member = format!("{MEMBER_ID:x}");
    assert_eq!(
        etcdctl.ok(&["member", "list"]).await,
        format!("{member}, started, m0, http://127.0.0.1:2380, http://127.0.0.1:2379, false\n")
    );
    let got = json(&etcdctl.ok(&["member", "list", "-w", "json"]).await);
    assert_eq!(
        got["header"]["cluster_id"].as_u64(),
        Some(CLUSTER_ID),
        "{got}"
    );
    assert_eq!(
        got["header"]["member_id"].as_u64(),
        Some(MEMBER_ID),
        "{got}"
    );
    assert_eq!(got["header"]["raft_term"].as_u64(), Some(1), "{got}");
    let members = got["members"].as_array().unwrap_or_else(|| panic!("{got}"));
    assert_eq!(members.len(), 1, "{got}");
    assert_eq!(members[0]["ID"].as_u64(), Some(MEMBER_ID), "{got}");
    assert_eq!(members[0]["name"], "m0", "{got}");
    assert_eq!(members[0]["peerURLs"][0], "http://127.0.0.1:2380", "{got}");
    assert_eq!(
        members[0]["clientURLs"][0], "http://127.0.0.1:2379",
        "{got}"
    );

    let status = flotilla_etcd::Backend::status(&*server.backend);
    let got = json(&etcdctl.ok(&["endpoint", "status", "-w", "json"]).await);
    let s = &got[0]["Status"];
    assert_eq!(got[0]["Endpoint"], server.addr.to_string(), "{got}");
    assert_eq!(
        s["header"]["cluster_id"].as_u64(),
        Some(CLUSTER_ID),
        "{got}"
    );
    assert_eq!(s["header"]["member_id"].as_u64(), Some(MEMBER_ID), "{got}");
    assert_eq!(s["header"]["revision"].as_i64(), Some(4), "{got}");
    assert_eq!(s["version"], "3.4.23", "{got}");
    assert_eq!(s["leader"].as_u64(), Some(MEMBER_ID), "{got}");
    assert_eq!(s["raftTerm"].as_u64(), Some(1), "{got}");
    assert_eq!(s["raftIndex"].as_u64(), Some(status.raft_index), "{got}");
    assert_eq!(s["raftIndex"].as_u64(), Some(3), "three commands: {got}");
    assert_eq!(
        s["raftAppliedIndex"].as_u64(),
        Some(status.raft_applied_index),
        "{got}"
    );
    assert_eq!(s["dbSize"].as_i64(), Some(status.db_size), "{got}");
    assert_eq!(s["dbSize"].as_i64(), Some(2), "{got}");
    assert!(s.get("errors").is_none(), "no errors: {got}");
    // The table row: endpoint, member id, version, size, leader, learner, term, indexes.
    let row = etcdctl.ok(&["endpoint", "status"]).await;
    assert!(
        row.starts_with(&format!("{}, {member}, 3.4.23, ", server.addr)),
        "{row}"
    );
    assert!(row.ends_with(", true, false, 1, 3, 3, \n"), "{row}");
    server.stop().await;
}

#[tokio::test]
async fn etcdctl_commands_not_served_fail_at_once() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;
    for args in [
        &["auth", "enable"][..],
        &["defrag"],
        &["alarm", "list"],
        &["member", "add", "m1", "--peer-urls=http://127.0.0.1:2381"],
        &["move-leader", "1"],
        &["endpoint", "hashkv"],
    ] {
        let started = std::time::Instant::now();
        let e = etcdctl.fails(args).await;
        // Answered, not timed out: etcdctl's command timeout is 5 s.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "etcdctl {args:?} took {:?}: {e}",
            started.elapsed()
        );
        assert!(e.contains("code = Unimplemented"), "etcdctl {args:?}: {e}");
    }
    server.stop().await;
}
