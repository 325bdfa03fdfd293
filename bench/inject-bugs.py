#!/usr/bin/env python3
"""Bug-injection suite for the fault sweeps (`flotilla sim raft`, `flotilla sim kvraft`).

For each named bug: copy the tracked files of this tree into one scratch directory (outside
the repository), apply the bug as exact text replacements (each expected text must occur
exactly once in the pristine file, or the script stops: the tree has drifted and the bug
must be re-aimed), build `flotilla-cli` in the bug's profile(s) with one shared
CARGO_TARGET_DIR (so each rebuild is incremental), run

    <target>/<profile>/flotilla sim <raft|kvraft> --seeds N --fail-fast   (the bug's sweep)

under a wall timeout and an address-space limit, and record the first failing seed and the first line of its failure
message (the check that fired). A bug that passes all N seeds is reported as "survived N
seeds": that is a finding about the sweep, not an error of this script.

    bench/inject-bugs.py [--seeds N] [--out FILE] [NAME ...]   # no NAME: every bug
    bench/inject-bugs.py --list
    bench/inject-bugs.py --baseline-only --seeds 200           # the unmodified tree alone
    bench/inject-bugs.py --baseline [NAME ...]                 # baseline rows, then the bugs

Python 3.11, standard library only. Runs one cargo build at a time. Exit status: 0 when
every run finished (failures found, survivals, timeouts and memory limits are results), 1
when a build failed or the simulator died without reporting, 2 on a usage or drift error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository root
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    description: str
    edits: tuple[Edit, ...]
    profiles: tuple[str, ...] = ("release",)
    # Which fault sweep must catch it: `flotilla sim raft` or `flotilla sim kvraft`.
    sweep: str = "raft"


def bug(name, description, *edits, profiles=("release",), sweep="raft"):
    return Bug(name, description, tuple(Edit(*e) for e in edits), tuple(profiles), sweep)


LOG = "crates/raft/src/log.rs"
RAFT = "crates/raft/src/raft.rs"
RAWNODE = "crates/raft/src/rawnode.rs"
PROGRESS = "crates/raft/src/progress.rs"
WAL = "crates/storage/src/wal/mod.rs"
WAL_SEGMENT = "crates/storage/src/wal/segment.rs"
NODE = "crates/node/src/lib.rs"
RAFT_SIM_SERVER = "crates/raft-sim/src/server.rs"
RSM = "crates/rsm/src/lib.rs"
KVSERVER = "crates/kv/src/server.rs"
KVRAFT_SIM = "crates/kvraft/src/sim.rs"

BUGS: list[Bug] = [
    bug(
        "defect1",
        "RaftLog::install_snapshot, branch that discards the whole log: "
        "unstable_from = max(old unstable_from, snapshot.index + 1) instead of snapshot.index + 1 "
        "(the old defect: entries re-appended after the snapshot are never handed to storage)",
        (
            LOG,
            "            self.entries.clear();\n"
            "            self.unstable_from = snapshot.index + 1;\n",
            "            self.entries.clear();\n"
            "            self.unstable_from = self.unstable_from.max(snapshot.index + 1);\n",
        ),
    ),
    bug(
        "vote-not-persisted",
        "RawNode::ready: the persisted hard state carries vote None (the term is persisted, "
        "the vote never is)",
        (
            RAWNODE,
            "            rd.persist.hard_state = Some(hard);\n",
            "            rd.persist.hard_state = Some(HardState { vote: None, ..hard });\n",
        ),
    ),
    bug(
        "commit-by-minority",
        "Raft::maybe_commit: off by one in the sorted match indexes, matched[quorum - 2] "
        "instead of matched[quorum - 1] (3 servers: the leader's own last index; 5 servers: "
        "the second highest)",
        (
            RAFT,
            "        let quorum_index = matched[self.quorum() - 1];\n",
            "        let quorum_index = matched[self.quorum() - 2];\n",
        ),
    ),
    bug(
        "double-vote",
        "Raft::handle_request_vote: a follower grants whatever its recorded vote in the term "
        "(the vote check is skipped when role == Follower; candidates still refuse)",
        (
            RAFT,
            "        let can_vote = self.vote.is_none_or(|v| v == candidate) && self.leader.is_none();\n",
            "        let can_vote = (self.role == Role::Follower || self.vote.is_none_or(|v| v == candidate))\n"
            "            && self.leader.is_none();\n",
        ),
    ),
    bug(
        "double-vote-any-role",
        "Raft::handle_request_vote: the recorded vote is not consulted at all (can_vote = no "
        "known leader), so a candidate, whose vote is itself, grants another candidate too",
        (
            RAFT,
            "        let can_vote = self.vote.is_none_or(|v| v == candidate) && self.leader.is_none();\n",
            "        let can_vote = self.leader.is_none();\n",
        ),
    ),
    bug(
        "leader-with-one-vote-short",
        "Raft::tally: wins with quorum - 1 yes votes (self included); tally also counts "
        "pre-votes, so pre-candidates campaign one pre-vote short too",
        (
            RAFT,
            "        if yes >= self.quorum() {\n",
            "        if yes >= self.quorum() - 1 {\n",
        ),
    ),
    bug(
        "stale-term-adopted",
        "Raft::step: an AppendEntries of a lower term is not rejected; the server takes its "
        "term (vote cleared), follows its sender and handles the append",
        (
            RAFT,
            "        } else if m.term < self.term {\n",
            "        } else if m.term < self.term && matches!(m.body, MessageBody::AppendEntries { .. }) {\n"
            "            self.term = m.term;\n"
            "            self.vote = None;\n"
            "            self.become_follower(m.term, Some(m.from));\n"
            "        } else if m.term < self.term {\n",
        ),
    ),
    bug(
        "leader-drops-uncommitted-tail",
        "Raft::become_leader: truncates its log after its commit index before it starts "
        "replicating (two edits: RaftLog::truncate_from made pub(crate) so raft.rs can call it)",
        (
            LOG,
            "    fn truncate_from(&mut self, index: Index) {\n",
            "    pub(crate) fn truncate_from(&mut self, index: Index) {\n",
        ),
        (
            RAFT,
            "        let next = self.log.last_index() + 1;\n",
            "        let committed = self.log.committed;\n"
            "        self.log.truncate_from(committed + 1);\n"
            "        let next = self.log.last_index() + 1;\n",
        ),
    ),
    bug(
        "leader-replaces-its-last-entry",
        "RaftLog::append (the leader's proposals): the new entry replaces the last entry "
        "after the snapshot instead of going after it",
        (
            LOG,
            "        let index = self.last_index() + 1;\n",
            "        let index = self.last_index().max(self.first_index());\n"
            "        self.truncate_from(index);\n",
        ),
    ),
    bug(
        "votes-counted-twice",
        "Raft::tally: no check that the peer already answered, so a duplicated (pre-)vote "
        "response is counted again",
        (
            RAFT,
            "        if !self.votes.iter().any(|(p, _)| *p == from) {\n"
            "            self.votes.push((from, granted));\n"
            "        }\n",
            "        self.votes.push((from, granted));\n",
        ),
    ),
    bug(
        "read-kept-across-terms",
        "Raft::become_follower: ReadIndex rounds are not dropped on stepping down, so a "
        "leader elected again later confirms a read of its old term (whose index may miss "
        "writes committed in between)",
        (RAFT, "        self.pending_reads.clear();\n", ""),
    ),
    bug(
        "read-before-first-commit",
        "Raft::read_index: a read is confirmed at the commit index before the leader has "
        "committed an entry of its own term (that index may lag the group's)",
        (
            RAFT,
            "        if self.log.term(self.log.committed) == Some(self.term) {\n"
            "            self.start_read_round(vec![ctx]);",
            "        if true {\n"
            "            self.start_read_round(vec![ctx]);",
        ),
    ),
    bug(
        "read-without-quorum",
        "Raft::confirm_reads: every pending read is confirmed at the first answer, without "
        "waiting for a quorum",
        (
            RAFT,
            "            .take_while(|r| r.acks.len() + 1 >= quorum)\n",
            "            .take_while(|_| true)\n",
        ),
    ),
    bug(
        "wal-no-fdatasync",
        "WalStorage::append: the record is written but not fdatasync'ed (a batch is "
        "reported durable while it may still be lost)",
        (
            WAL,
            "        self.active.write_all(record).map_err(io_err(path))?;\n"
            "        self.active.sync_data().map_err(io_err(path))?;\n",
            "        self.active.write_all(record).map_err(io_err(path))?;\n",
        ),
    ),
    bug(
        "wal-no-payload-crc",
        "RecordReader::next_record (WAL replay): the payload CRC is not checked (the header "
        "CRC still is); a damaged payload that still decodes is replayed",
        (
            WAL_SEGMENT,
            "        if crc32fast::hash(&self.payload) != crc {\n",
            "        if crc == 0 && crc32fast::hash(&self.payload) != crc {\n",
        ),
    ),
    bug(
        "node-loop-ignores-storage-error",
        "flotilla_node::handle_ready: a failed persist is ignored and the Ready is sent and "
        "applied as if durable (fsyncgate: the process must stop instead)",
        (
            NODE,
            "            host.persist(&ready.persist).await?;\n",
            "            let _ = host.persist(&ready.persist).await;\n",
        ),
    ),
    bug(
        "sim-in-flight-after-wal-persist",
        "SimHost::persist (the harness): the batch is marked in flight only after the WAL "
        "persist returned, so a call failing after the batch's commit point leaves a durable "
        "batch the restart check does not expect (shows the sweep fails calls past the "
        "commit point)",
        (
            RAFT_SIM_SERVER,
            "            disk.in_flight = Some(batch.clone());\n"
            "            disk.wal\n"
            "                .as_mut()\n"
            "                .expect(\"a running server has its WAL open\")\n"
            "                .persist(batch)?;\n",
            "            disk.wal\n"
            "                .as_mut()\n"
            "                .expect(\"a running server has its WAL open\")\n"
            "                .persist(batch)?;\n"
            "            disk.in_flight = Some(batch.clone());\n",
        ),
    ),
    bug(
        "progress-next-not-past-match",
        "Progress::acknowledge: next is not moved past the acknowledged match index "
        "(breaks matched < next; checked profile asserts it, release shows what remains)",
        (
            PROGRESS,
            "        self.next = self.next.max(match_index + 1);\n",
            "",
        ),
        profiles=("checked", "release"),
    ),
    bug(
        "lease-without-quorum",
        "Raft::lease_valid: the lease holds whether or not a quorum answered recently (a "
        "leader cut off from its majority keeps answering reads from its lease)",
        (
            RAFT,
            "        fresh + 1 >= self.quorum()\n",
            "        fresh + 1 >= self.quorum() || true\n",
        ),
    ),
    bug(
        "lease-kept-after-transfer",
        "Raft::lease_valid: a leader that told a follower to take over keeps its lease",
        (
            RAFT,
            "        if !(self.cfg.lease_reads && self.cfg.check_quorum) || self.lease_given_up {\n",
            "        if !(self.cfg.lease_reads && self.cfg.check_quorum) {\n",
        ),
    ),
    # ---- the replicated KV service (flotilla sim kvraft) ----
    bug(
        "rsm-match-by-index",
        "Rsm::apply: a waiting submission takes the result of whatever entry is applied at "
        "its index, without comparing the entry's term with its own (another leader's entry "
        "there answers it)",
        (
            RSM,
            "                Some(output) if s.term == entry.term => Ok(output),\n",
            "                Some(output) => Ok(output),\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "read-before-applied",
        "Rsm::serve_reads: a confirmed read is answered at once, without waiting until the "
        "replica has applied up to its read index",
        (
            RSM,
            "            .partition(|(index, _)| *index <= applied);\n",
            "            .partition(|(index, _)| *index <= applied || true);\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "read-without-confirmation",
        "Rsm::expect_read: a read is queued as confirmed at index 0 instead of waiting for "
        "its ReadIndex round: a replica that believes it leads answers from its own state",
        (
            RSM,
            "        self.asked.insert(\n"
            "            id,\n"
            "            PendingRead {\n",
            "        self.confirmed.push((\n"
            "            0,\n"
            "            PendingRead {\n",
        ),
        (
            RSM,
            "                reply,\n"
            "            },\n"
            "        );\n"
            "        (id, answer)\n",
            "                reply,\n"
            "            },\n"
            "        ));\n"
            "        (id, answer)\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "dedup-off",
        "KvServer::once: a retried Put/Append of the clerk's latest sequence number runs "
        "again instead of getting its remembered outcome",
        (
            KVSERVER,
            "            Some(session) if seq == session.seq => return replay(&self.data, &session.outcome),\n",
            "            Some(session) if seq == session.seq && false => return replay(&self.data, &session.outcome),\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "snapshot-drops-sessions",
        "KvServer::snapshot: the duplicate-detection sessions are left out of the snapshot "
        "(a replica restored from it re-runs a retried write)",
        (
            KVSERVER,
            "        sessions.sort_unstable_by_key(|s| *s.0);\n",
            "        sessions.clear();\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "unknown-as-refused",
        "RaftTransport::run: an attempt whose outcome is unknown (lost call, Unknown reply) "
        "is counted as refused, so a later version mismatch is reported ErrVersion, not "
        "ErrMaybe",
        (
            KVRAFT_SIM,
            "                Some(ServerReply::Unknown) | None => self.cursor.borrow_mut().failed(None),\n",
            "                Some(ServerReply::Unknown) | None => {\n"
            "                    call.refused();\n"
            "                    self.cursor.borrow_mut().failed(None)\n"
            "                }\n",
        ),
        sweep="kvraft",
    ),
    bug(
        "loop-send-before-persist",
        "flotilla_node::handle_ready: a Ready's messages are sent before its batch is "
        "persisted (the shared node loop breaks etcd's rule)",
        (
            NODE,
            "        if !ready.persist.is_empty() {\n"
            "            host.persist(&ready.persist).await?;\n"
            "            node.with(|n| app.on_persisted(n, &ready.persist));\n"
            "        }\n"
            "        let messages = std::mem::take(&mut ready.messages);\n"
            "        node.with(|n| {\n"
            "            for message in messages {\n"
            "                host.send(n, message);\n"
            "            }\n"
            "        });\n",
            "        let messages = std::mem::take(&mut ready.messages);\n"
            "        node.with(|n| {\n"
            "            for message in messages {\n"
            "                host.send(n, message);\n"
            "            }\n"
            "        });\n"
            "        if !ready.persist.is_empty() {\n"
            "            host.persist(&ready.persist).await?;\n"
            "            node.with(|n| app.on_persisted(n, &ready.persist));\n"
            "        }\n",
        ),
        sweep="kvraft",
    ),
]

BY_NAME = {b.name: b for b in BUGS}
BASELINE = "none (baseline)"


def log(msg: str) -> None:
    print(f"[inject {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str, code: int = 2) -> None:
    print(f"inject-bugs: error: {msg}", file=sys.stderr)
    sys.exit(code)


# ---- the tree ---------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def tree_description() -> str:
    head = git("rev-parse", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return f"{head}" + (" (plus uncommitted changes to tracked files)" if dirty else "")


def patched_sources(b: Bug) -> dict[str, bytes]:
    """The bug's files with its edits applied to the pristine text; dies on any drift."""
    out: dict[str, str] = {}
    for e in b.edits:
        text = out.get(e.path)
        if text is None:
            text = (REPO / e.path).read_text()
        count = text.count(e.old)
        if count != 1:
            die(
                f"bug {b.name!r}: expected text found {count} times (want exactly 1) in "
                f"{e.path}; the tree has drifted, re-aim the injection:\n{e.old}"
            )
        out[e.path] = text.replace(e.old, e.new, 1)
    return {p: t.encode() for p, t in out.items()}


def sync_scratch(scratch: Path, files: list[str], overrides: dict[str, bytes]) -> list[str]:
    """Makes `scratch` hold exactly the tracked files (with `overrides`), writing only files
    whose content differs so that cargo rebuilds only what changed. Returns changed paths."""
    changed = []
    wanted = set(files)
    for rel in files:
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        data = overrides.get(rel)
        if data is None:
            data = src.read_bytes()
        dst = scratch / rel
        try:
            if dst.read_bytes() == data:
                continue
        except FileNotFoundError:
            dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        os.chmod(dst, src.stat().st_mode & 0o777)
        changed.append(rel)
    for path in scratch.rglob("*"):
        if path.is_file() and str(path.relative_to(scratch)) not in wanted:
            path.unlink()
            changed.append(f"(removed) {path.relative_to(scratch)}")
    return changed


# ---- build and sweep --------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    bug: str
    profile: str
    outcome: str  # "failed", "survived", "timeout", "memory limit", "build failed", "error"
    seed: int | None = None
    check: str = ""
    message: str = ""
    seeds_run: int | None = None
    seeds: int = 0
    wall: float = 0.0
    log: str = ""

    def seed_cell(self) -> str:
        if self.outcome == "failed":
            return str(self.seed)
        if self.outcome == "survived":
            verb = "passed" if self.bug == BASELINE else "survived"
            return f"{verb} {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if self.outcome == "timeout":
            return "timeout"
        if self.outcome == "memory limit":
            return "memory limit"
        return self.outcome

    def check_cell(self) -> str:
        if self.outcome == "failed":
            return self.check
        if self.outcome == "survived":
            return "none"
        return self.message


def run_group(
    cmd: list[str], env: dict, timeout: float, log_path: Path, cwd: Path | None = None,
    mem_limit: int | None = None,
) -> tuple[int | None, str, float]:
    """Runs `cmd` in its own process group, output to `log_path`; kills that group on
    timeout. `mem_limit` caps the child's address space (bytes). Returns (exit code or None
    on timeout, stdout+stderr text, wall seconds)."""

    def limit() -> None:
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    start = time.monotonic()
    with open(log_path, "w") as out:
        out.write("$ " + shlex.join(cmd) + (f"   (in {cwd})" if cwd else "") + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=limit,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, log_path.read_text(errors="replace"), time.monotonic() - start


def build(scratch: Path, target: Path, profile: str, timeout: float, log_path: Path) -> str | None:
    """Builds flotilla-cli in the scratch tree; returns None on success or a one-line reason."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    flag = ["--release"] if profile == "release" else ["--profile", profile]
    cmd = ["cargo", "build", "--locked", *flag, "-p", "flotilla-cli"]
    code, text, wall = run_group(cmd, env, timeout, log_path, cwd=scratch)
    if code is None:
        return f"build timeout after {timeout:.0f}s (log {log_path})"
    log(f"  build {profile}: exit {code} in {wall:.0f}s")
    if code != 0:
        errors = [l for l in text.splitlines() if l.startswith("error")]
        return f"build failed: {errors[0] if errors else f'exit {code}'} (log {log_path})"
    return None


FAILED = re.compile(r"^seed (\d+): FAILED: (.*)$")
SUMMARY = re.compile(r"^(\d+) seeds, (\d+) failures \(([\d.]+)s\)$")


# Which layer a failure message comes from (for the details table; a heuristic on the text).
KINDS = [
    (r"failed to reach agreement|only \d+ decided|expected one leader|test took longer",
     "liveness (cluster)"),
    (r"^(assertion .* failed: )?(acks backed by disk|votes backed by disk|election safety|"
     r"leader append-only|leader completeness|log matching|one vote per term|"
     r"durable term decreased|committed but not durable on a majority|state machine safety): ",
     "safety invariant (invariants.rs)"),
    (r"apply error", "applier check (cluster.rs)"),
    (r"the WAL recovered|the WAL does not open|WAL persist failed", "WAL recovery check (cluster.rs)"),
    (r"refused a message from a correct peer", "message validation (raft validate.rs)"),
]


def kind(message: str) -> str:
    for pattern, name in KINDS:
        if re.search(pattern, message):
            return name
    return "assertion in the code under test"


def first_line(message: str) -> str:
    """The first line of the panic message. The CLI prints a failure on one line (newlines
    turned into spaces); an assert_eq!'s `left:`/`right:` lines are cut off again here."""
    return re.split(r"\s{2,}left: ", message, maxsplit=1)[0].strip()


def sweep(
    bin_path: Path, kind: str, seeds: int, timeout: float, mem_gib: float, log_path: Path
) -> tuple[str, dict]:
    cmd = [str(bin_path), "sim", kind, "--seeds", str(seeds), "--fail-fast"]
    code, text, wall = run_group(cmd, dict(os.environ), timeout, log_path,
                                 mem_limit=int(mem_gib * 2**30))
    info: dict = {"wall": wall}
    failed = summary = None
    for line in text.splitlines():
        failed = failed or FAILED.match(line)
        summary = summary or SUMMARY.match(line)
    if summary:
        info["seeds_run"] = int(summary.group(1))
    if code is None:
        return "timeout", info | {"message": f"timeout after {timeout:.0f}s"}
    if failed:
        msg = failed.group(2)
        return "failed", info | {"seed": int(failed.group(1)), "message": msg, "check": first_line(msg)}
    if code == 0 and summary and int(summary.group(2)) == 0:
        return "survived", info
    if re.search(r"memory allocation of \d+ bytes failed", text):
        # The CLI names seeds only when they fail, so the runaway seed is not known here.
        return "memory limit", info | {
            "message": f"address space limit of {mem_gib:g} GiB hit; seed not reported "
            f"(the CLI prints only failed seeds) (log {log_path})"}
    tail = [l for l in text.splitlines() if l.strip()][-1:] or ["no output"]
    how = f"signal {-code}" if code < 0 else f"exit {code}"
    return "error", info | {"message": f"simulator died ({how}) without a report: {tail[0]}"}


# ---- report -----------------------------------------------------------------------------------


def clip(text: str, limit: int = 400) -> str:
    """Long messages (an assert_eq! of two whole logs) are cut; the sweep log has them."""
    return text if len(text) <= limit else text[:limit] + f" … ({len(text)} chars in all)"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: list[Result]) -> str:
    rows = ["| injected bug | profile | first failing seed | check that fired |", "|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| `{r.bug}` | {r.profile} | {md_cell(r.seed_cell())} | {md_cell(r.check_cell())} |"
            if r.bug != BASELINE
            else f"| {r.bug} | {r.profile} | {md_cell(r.seed_cell())} | {md_cell(r.check_cell())} |"
        )
    return "\n".join(rows)


def document(results: list[Result], args, started: str, tree: str, versions: str) -> str:
    cmd = "bench/inject-bugs.py " + shlex.join(sys.argv[1:])
    out = [
        "# Bug injection against the fault sweeps",
        "",
        f"- date: {started}",
        f"- tree tested: {tree}",
        f"- command: `{cmd.strip()}`",
        f"- toolchain: {versions}",
        f"- each run: `flotilla sim <sweep> --seeds {args.seeds} --fail-fast` (the bug's sweep: "
        "`raft`, or `kvraft` where the profile column says so), wall timeout "
        f"{args.timeout:.0f}s, address space limit {args.mem_limit:g} GiB; baseline runs: "
        f"{args.baseline_seeds} seeds",
        "- a replay needs the bug's build: `bench/inject-bugs.py NAME` leaves it in "
        "`<target-dir>/<profile>/flotilla`, then the replay command below",
        "",
        table(results),
        "",
        "## Details",
        "",
        "| injected bug | profile | seeds run | sweep wall (s) | replay | kind of check | full failure message |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        replay = (
            f"`flotilla sim {'kvraft' if 'kvraft' in r.profile else 'raft'} --seed {r.seed}`"
            if r.outcome == "failed" else ""
        )
        seeds_run = "" if r.seeds_run is None else str(r.seeds_run)
        what = kind(r.message) if r.outcome == "failed" else ""
        out.append(
            f"| {md_cell(r.bug)} | {r.profile} | {seeds_run} | {r.wall:.1f} | {replay} | "
            f"{what} | {md_cell(clip(r.message))} |"
        )
    out += ["", "## The injected bugs", ""]
    names = {r.bug for r in results}
    for b in BUGS:
        if b.name in names:
            files = ", ".join(sorted({e.path for e in b.edits}))
            out.append(f"- `{b.name}` ({files}; {', '.join(b.profiles)}): {b.description}")
    return "\n".join(out) + "\n"


# ---- main -------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(
        description="Inject known bugs into the Raft core / WAL and see which seed of the "
        "fault sweep catches each.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="bugs to inject (default: all)")
    p.add_argument("--seeds", type=int, default=2000, help="seeds per sweep (default 2000)")
    p.add_argument("--out", type=Path, help="also write the result document (Markdown) here")
    p.add_argument("--list", action="store_true", help="print the bug names and descriptions")
    p.add_argument("--baseline", action="store_true",
                   help="first run the unmodified tree (no injection) in each profile used")
    p.add_argument("--baseline-only", action="store_true",
                   help="run only the unmodified tree, in release and checked")
    p.add_argument("--baseline-seeds", type=int, default=None,
                   help="seeds for baseline runs (default: 200 with --baseline, --seeds with "
                   "--baseline-only)")
    p.add_argument("--timeout", type=float, default=900, help="wall timeout per sweep, s (900)")
    p.add_argument("--mem-limit", type=float, default=4, metavar="GIB",
                   help="address-space limit per sweep, GiB (4): a runaway seed aborts "
                   "instead of eating the machine")
    p.add_argument("--build-timeout", type=float, default=3600, help="per build, s (3600)")
    p.add_argument("--target-dir", type=Path,
                   default=Path(os.environ.get("INJECT_TARGET_DIR", REPO / "target-inject")),
                   help="shared CARGO_TARGET_DIR (default <repo>/target-inject)")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/flotilla-inject"),
                   help="scratch directory for the copied tree and logs (default /tmp/flotilla-inject)")
    args = p.parse_args()

    if args.list:
        width = max(len(b.name) for b in BUGS)
        for b in BUGS:
            prof = "" if b.profiles == ("release",) else f" [{', '.join(b.profiles)}]"
            print(f"{b.name:<{width}}  {b.description}{prof}")
        return 0
    if args.seeds < 1:
        die("--seeds must be at least 1")
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        die(f"unknown bug(s): {', '.join(unknown)} (see --list)")
    if args.baseline_only and args.names:
        die("--baseline-only takes no NAME")
    if args.baseline_seeds is None:
        args.baseline_seeds = args.seeds if args.baseline_only else 200

    bugs = [] if args.baseline_only else [BY_NAME[n] for n in args.names] or list(BUGS)
    # Check every injection against the pristine tree before building anything.
    patches = {b.name: patched_sources(b) for b in bugs}

    plan: list[tuple[str, str, dict[str, bytes], int, str]] = []
    if args.baseline or args.baseline_only:
        profiles = ["release", "checked"] if args.baseline_only else sorted(
            {pr for b in bugs for pr in b.profiles}, key=lambda x: x != "release")
        kinds = sorted({b.sweep for b in bugs} or {"raft", "kvraft"})
        plan += [(BASELINE, pr, {}, args.baseline_seeds, k) for pr in profiles for k in kinds]
    plan += [(b.name, pr, patches[b.name], args.seeds, b.sweep)
             for b in bugs for pr in b.profiles]

    scratch_tree = args.scratch / "tree"
    logs = args.scratch / "logs"
    scratch_tree.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    lock = open(args.scratch / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        die(f"another inject-bugs run holds {args.scratch / 'lock'}")

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tree = tree_description()
    versions = "; ".join(
        subprocess.run([t, "--version"], capture_output=True, text=True).stdout.strip()
        for t in ("rustc", "cargo")
    )
    files = tracked_files()
    log(f"tree {tree}; scratch {scratch_tree}; CARGO_TARGET_DIR {args.target_dir}")

    results: list[Result] = []
    status = 0
    for name, profile, overrides, seeds, kind in plan:
        log(f"{name} [{profile}, sim {kind}]")
        label = profile if kind == "raft" else f"{profile}, sim {kind}"
        changed = sync_scratch(scratch_tree, files, overrides)
        log(f"  scratch tree: {len(changed)} file(s) written")
        tag = f"{name.split()[0]}-{profile}"
        reason = build(scratch_tree, args.target_dir, profile, args.build_timeout,
                       logs / f"{tag}.build.log")
        if reason:
            results.append(Result(name, label, "build failed", message=reason, seeds=seeds))
            log(f"  {reason}")
            status = 1
            continue
        bin_path = args.target_dir / profile / "flotilla"
        outcome, info = sweep(bin_path, kind, seeds, args.timeout, args.mem_limit,
                              logs / f"{tag}-{kind}.sweep.log")
        r = Result(name, label, outcome, seeds=seeds, seeds_run=info.get("seeds_run"),
                   wall=info["wall"], seed=info.get("seed"), check=info.get("check", ""),
                   message=info.get("message", ""))
        if outcome == "error":
            status = 1
        results.append(r)
        log(f"  -> {r.seed_cell()}: {r.check_cell()[:160]} ({r.wall:.0f}s)")
    # Leave the scratch tree pristine for the next run's incremental build.
    sync_scratch(scratch_tree, files, {})

    print(table(results))
    if args.out:
        args.out.write_text(document(results, args, started, tree, versions))
        log(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
