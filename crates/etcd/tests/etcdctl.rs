//! etcd's own command-line client against `serve` on loopback: `etcdctl` (Debian package
//! `etcd-client`, v3 API) runs put, get (one key, a prefix, sorted and limited, as JSON),
//! del, txn from standard input and compaction, and its outputs are checked. Where
//! `etcdctl` is missing the test installs it once with apt-get, and fails saying so if it
//! still cannot be had: it never passes without having run it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{TestServer, CLUSTER_ID, MEMBER_ID, WAIT};
use tokio::io::AsyncWriteExt;
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

#[tokio::test]
async fn etcdctl_commands_of_services_not_served_yet_fail_at_once() {
    let server = TestServer::start().await;
    let etcdctl = Etcdctl::new(&server).await;
    for args in [
        &["member", "list"][..],
        &["endpoint", "status"],
        &["lease", "grant", "10"],
        &["lease", "list"],
        &["auth", "enable"],
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
