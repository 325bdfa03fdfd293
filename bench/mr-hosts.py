#!/usr/bin/env python3
"""Multi-host MapReduce (issue 14, point 5): `flotilla mr coordinator --no-shared-dir` and three
workers, each "host" a network namespace of its own on a private bridge, each process in a
directory of its own, no path shared for intermediates; one worker is killed with SIGKILL in the
middle of the job, and the job must still finish with the output of `flotilla mr sequential`.

What runs where:
  namespace 0 (10.231.14.1): the coordinator, in its own directory holding the inputs (a ~50 MB
      corpus made of copies of the lab's Gutenberg texts: 16 map tasks with --split-mb 4),
      `--no-shared-dir --app wc --reduce 8 --task-timeout 3 --progress lines`;
  namespaces 1-3 (10.231.14.2-4): one `flotilla mr worker` each, started in a fresh empty
      directory of its own with only --coordinator, as user nobody when the executable allows
      it (then a worker could not even read the coordinator's 0700 directory).
The namespaces' links are rate-limited with tbf (the coordinator's egress to 96 Mbit/s, each
worker's to 8 Mbit/s): unshaped, the whole job takes ~0.7 s here, too short to kill a worker at
a chosen point of it; shaped, the map phase (inputs shipped by the coordinator) takes ~5 s and
the reduce phase (map outputs fetched from the workers) ~2 s, like hosts on a modest network.

The kill (--kill-when, default all-maps): the first time the coordinator's progress says every
map task is done while at least 4 of the 8 reduces are not done, the worker that completed the
most map tasks (at least one, seen in its debug log) is SIGKILLed. Then at most 3 reduces are
running (one per worker), so at least one reduce is not handed out yet: it must fetch the dead
worker's outputs, fail, and the coordinator must run those maps again (the fetch-failure path,
the one this mode added). Progress lines come every 0.5 s, and the shaped reduce phase lasts ~2
s, so the trigger is not missed. --kill-when half-maps kills once half the maps are done instead
(the worker is then found gone by its silence, after --task-timeout).

Checks: the coordinator exits 0 within the budget (a job whose progress line does not change for
--stall-seconds, 20, is reported as a HANG, with gdb's backtraces of the coordinator's threads
when gdb is installed); the kill happened as planned; the final
progress line shows "maps rerun" > 0; `sort mr-out-* | grep .` equals the sequential output; no
intermediate file (mr-M-R, mr-M-R.A) ever appeared in the coordinator's directory (it is polled
every 10 ms during the job; the coordinator's own transient names for collected outputs,
mr-reduce-R.A and .mr-tmp-*, are allowed) and afterwards it holds exactly the inputs and
mr-out-0..7; every worker serves map outputs on its own namespace's address; the two surviving
workers exit and leave their directories empty (the killed one cannot remove its private
directory; what it left is shown).

Run as root (build first):
    cargo build --release -p flotilla-cli
    sudo python3 bench/mr-hosts.py [--exe target/release/flotilla] [--seconds-budget 120]
Exit status: 0 all checks passed, 1 a check failed, 2 cannot run (no executable, subnet in use,
setup error), 77 network namespaces not available here (not root, no veth or bridge, ...),
130 interrupted. Python 3 standard library only.
"""

import argparse
import ctypes
import os
from pathlib import Path
import pwd
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

NS_RE = re.compile(r"^mrh-(\d+)-(\d+|probe)$")         # namespaces: mrh-<pid>-<i>
LINK_RE = re.compile(r"^mrh[vb](\d+)(-\d+|-p)?$")     # veths mrhv<pid>-<i>, bridge mrhb<pid>
DIR_RE = re.compile(r"^flotilla-mrhosts-(\d+)-")      # the run's directories in the temp dir
PORT = 7231
N_REDUCE = 8
N_WORKERS = 3
PROGRESS_RE = re.compile(r"^maps (\d+)/(\d+), reduces (\d+)/(\d+), .*?(\d+) workers alive, "
                         r"(\d+) reissued(.*), ([\d.]+)s$")
INTERMEDIATE_RE = re.compile(r"^mr-\d+-\d+(\.\d+)?$")
OUTPUT_RE = re.compile(r"^mr-out-(\d+)$")
COLLECTING_RE = re.compile(r"^(mr-reduce-\d+\.\d+|\.mr-tmp-.*)$")
MAP_DONE_RE = re.compile(r"map task done task=(\d+)")
SERVING_RE = re.compile(r"serving map outputs bound=(\S+)")

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.2f}s] {msg}", flush=True)


def run(cmd, check=True, timeout=30, **kw):
    """Runs a short command (bounded by timeout); returns CompletedProcess."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        if check:
            raise RuntimeError(f"timed out after {timeout}s: {' '.join(cmd)}")
        return subprocess.CompletedProcess(cmd, 124, "", "timeout")
    if check and p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}): {' '.join(cmd)}: {p.stderr.strip()}")
    return p


try:   # resolved here: a preexec_fn must not import (another thread may hold the import lock)
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:
    _prctl = None


def die_with_parent():
    """preexec_fn: SIGKILL this child when this script dies, even by SIGKILL (Linux prctl)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def pid_is_ours(pid):
    """Whether pid is a live mr-hosts.py (another run, whose namespaces must be left alone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mr-hosts.py" in f.read()
    except OSError:
        return False


def kill_pid(pid):
    try:
        os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError):
        pass


# ----------------------------------------------------------------------------------------------
# Tools, capability, leftovers
# ----------------------------------------------------------------------------------------------

def ensure_tools():
    """Installs iproute2 (ip, tc) with apt-get if missing; returns the tools still missing."""
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing and shutil.which("apt-get"):
        log("installing iproute2 with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], check=False, timeout=300, env=env)
        run(["apt-get", "install", "-y", "-q", "iproute2"], check=False, timeout=600, env=env)
    return [t for t in ("ip", "tc") if shutil.which(t) is None]


def capability_problem(tag, shaped):
    """None if namespaces, veths, bridges (and tbf, when shaped) work here; else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    still = ensure_tools()
    if still:
        return f"tools missing: {', '.join(still)} (package iproute2)"
    ns = f"mrh-{tag}-probe"
    try:
        p = run(["ip", "netns", "add", ns], check=False)
        if p.returncode != 0:
            return f"cannot create a network namespace: {p.stderr.strip()}"
        p = run(["ip", "link", "add", f"mrhv{tag}-p", "type", "veth", "peer", "name", "mrhp",
                 "netns", ns], check=False)
        if p.returncode != 0:
            return f"cannot create a veth pair: {p.stderr.strip()}"
        p = run(["ip", "link", "add", f"mrhb{tag}", "type", "bridge"], check=False)
        if p.returncode != 0:
            return f"cannot create a bridge: {p.stderr.strip()}"
        run(["ip", "link", "del", f"mrhb{tag}"], check=False)
        if shaped:
            p = run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "mrhp", "root", "tbf",
                     "rate", "8mbit", "burst", "32kb", "latency", "300ms"], check=False)
            if p.returncode != 0:
                return (f"no tbf qdisc for rate limits: {p.stderr.strip()} (--coordinator-mbit 0 "
                        f"--worker-mbit 0 runs unshaped, but then the kill may come too late)")
        return None
    finally:
        run(["ip", "netns", "del", ns], check=False)
        run(["ip", "link", "del", f"mrhv{tag}-p"], check=False)


def cleanup_leftovers():
    """Removes namespaces, links and directories of earlier runs whose mr-hosts.py is gone."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if not m or pid_is_ours(int(m.group(1))):
            continue
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for p in pids:
            kill_pid(p)
        run(["ip", "netns", "del", name], check=False)
        removed.append(f"netns {name}" + (f" (killed {len(pids)} processes)" if pids else ""))
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = LINK_RE.match(name)
        if m and not pid_is_ours(int(m.group(1))):
            run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = DIR_RE.match(name)
        if m and not pid_is_ours(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            removed.append(f"directory {os.path.join(tmp, name)}")
    return removed


# ----------------------------------------------------------------------------------------------
# The network: namespace i has <subnet>.(i+1) on a veth whose other end is on the bridge
# ----------------------------------------------------------------------------------------------

class Net:
    def __init__(self, tag, subnet, count):
        self.subnet = subnet
        self.bridge = f"mrhb{tag}"
        self.ns = [f"mrh-{tag}-{i}" for i in range(count)]
        self.host = [f"mrhv{tag}-{i}" for i in range(count)]    # root side, on the bridge
        self.inner = [f"mrhn{tag}-{i}" for i in range(count)]   # inside namespace i
        self.ip = [f"{subnet}.{i + 1}" for i in range(count)]
        self.created = False

    def ex(self, i):
        return ["ip", "netns", "exec", self.ns[i]]

    def setup(self, rates_mbit):
        out = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        out += run(["ip", "-4", "route", "show"], check=False).stdout
        if re.search(r"\b" + re.escape(self.subnet) + r"\.", out):
            raise SetupError(f"subnet {self.subnet}.0/24 is already in use here; pick another "
                             f"with --subnet")
        self.created = True
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "link", "set", self.bridge, "up"])
        for i, ns in enumerate(self.ns):
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", self.host[i], "type", "veth", "peer", "name", self.inner[i],
                 "netns", ns])
            run(["ip", "link", "set", self.host[i], "master", self.bridge])
            run(["ip", "link", "set", self.host[i], "up"])
            run(self.ex(i) + ["ip", "link", "set", "lo", "up"])
            run(self.ex(i) + ["ip", "addr", "add", f"{self.ip[i]}/24", "dev", self.inner[i]])
            run(self.ex(i) + ["ip", "link", "set", self.inner[i], "up"])
            if rates_mbit[i] > 0:   # the namespace's egress
                run(self.ex(i) + ["tc", "qdisc", "add", "dev", self.inner[i], "root", "tbf",
                                  "rate", f"{rates_mbit[i]}mbit", "burst", "64kb",
                                  "latency", "300ms"])

    def teardown(self):
        """Kills what still runs in the namespaces, removes them; returns what is left."""
        if not self.created:
            return []
        for ns in self.ns:
            for p in run(["ip", "netns", "pids", ns], check=False).stdout.split():
                kill_pid(p)
        for i, ns in enumerate(self.ns):
            run(["ip", "netns", "del", ns], check=False)
            run(["ip", "link", "del", self.host[i]], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        nss = run(["ip", "netns", "list"], check=False).stdout
        links = run(["ip", "-o", "link", "show"], check=False).stdout
        left = [n for n in self.ns if re.search(rf"^{re.escape(n)}\b", nss, re.M)]
        left += [l for l in self.host + [self.bridge] if re.search(rf": {re.escape(l)}[@:]", links)]
        self.created = False
        return left


class SetupError(Exception):
    pass


class CheckFailed(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------

def build_corpus(dirpath, copies_per_file, files):
    """Writes `files` inputs, each the lab's texts concatenated copies_per_file times."""
    texts = sorted(Path("/work/shared/data/gutenberg").glob("pg-*.txt"))
    if not texts:
        raise SetupError("no lab texts in /work/shared/data/gutenberg/pg-*.txt")
    blob = b"".join(t.read_bytes() for t in texts)
    names = []
    for i in range(files):
        name = f"corpus-{i}.txt"
        (Path(dirpath) / name).write_bytes(blob * copies_per_file)
        names.append(name)
    return names, len(blob) * copies_per_file * files, len(texts)


def sorted_output(dirpath):
    """`sort mr-out* | grep .` (bytewise, as with LC_ALL=C)."""
    lines = []
    for f in sorted(Path(dirpath).iterdir()):
        if f.name.startswith("mr-out"):
            lines += [l for l in f.read_bytes().split(b"\n") if l.strip()]
    return sorted(lines)


def parse_progress(line):
    m = PROGRESS_RE.match(line)
    if not m:
        return None
    rerun = re.search(r"(\d+) maps rerun", m.group(7))
    return {"maps_done": int(m.group(1)), "maps": int(m.group(2)),
            "reduces_done": int(m.group(3)), "reduces": int(m.group(4)),
            "alive": int(m.group(5)), "reissued": int(m.group(6)),
            "rerun": int(rerun.group(1)) if rerun else 0, "secs": float(m.group(8)), "line": line}


class DirWatcher(threading.Thread):
    """Lists a directory every 10 ms, remembering every name ever seen in it."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.seen = set()
        self.stop = threading.Event()
        self.polls = 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.seen.update(os.listdir(self.path))
            except OSError:
                pass
            self.polls += 1
            self.stop.wait(0.01)


def pump(stream, logf, q, tag):
    """Copies a child's output lines to its log file and to q (as (tag, time, line))."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        logf.write(raw)
        logf.flush()
        q.put((tag, time.time(), line))
    q.put((tag, time.time(), None))


def worker_maps(logpath):
    """Map task ids this worker's debug log says it finished."""
    try:
        return [int(t) for t in MAP_DONE_RE.findall(Path(logpath).read_text(errors="replace"))]
    except OSError:
        return []


def dump_threads(pid, path, timeout):
    """Every thread's backtrace of process pid into path, with gdb if there is one; returns
    path, or None."""
    if shutil.which("gdb") is None:
        return None
    p = run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 40"], check=False,
            timeout=timeout)
    Path(path).write_text(p.stdout + p.stderr)
    return path if p.returncode == 0 else None


def nobody_ids(exe):
    """(uid, gid) of user nobody if nobody can execute exe (then the workers run as nobody,
    through setpriv), else None."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if shutil.which("setpriv") is None:
        return None
    p = run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", exe,
             "--version"], check=False, timeout=10)
    return (pw.pw_uid, pw.pw_gid) if p.returncode == 0 else None


def run_job(args, tag, deadline, out):
    """The whole test between network setup and teardown; appends transcript lines to out and
    raises CheckFailed on a failed check."""
    failures = []
    procs = {}     # name -> Popen
    logs = {}      # name -> log path
    dirs = {}
    net = Net(tag, args.subnet, 1 + N_WORKERS)
    watcher = None
    try:
        def left():
            return max(0.0, deadline - time.time())

        for role in ["coord", "ref", "logs"] + [f"w{i}" for i in range(1, N_WORKERS + 1)]:
            dirs[role] = tempfile.mkdtemp(prefix=f"flotilla-mrhosts-{tag}-{role}-")
        inputs, total, n_texts = build_corpus(dirs["coord"], args.copies, args.files)
        out.append(f"corpus: {len(inputs)} files, {total / 1e6:.1f} MB ({args.copies} copies of "
                   f"the {n_texts} lab texts each) in the coordinator's directory {dirs['coord']}")

        t = time.time()
        p = run([args.exe, "mr", "sequential", "--app", "wc", "--out", dirs["ref"]] +
                [os.path.join(dirs["coord"], n) for n in inputs],
                check=False, timeout=max(1, min(120, left())))
        if p.returncode != 0:
            raise SetupError(f"flotilla mr sequential failed ({p.returncode}): {p.stderr.strip()}")
        reference = sorted_output(dirs["ref"])
        out.append(f"reference: flotilla mr sequential --app wc, {len(reference)} lines, "
                   f"{time.time() - t:.1f}s")

        rates = [args.coordinator_mbit] + [args.worker_mbit] * N_WORKERS
        net.setup(rates)
        as_nobody = None if args.workers_as_root else nobody_ids(args.exe)
        if as_nobody:
            for i in range(1, N_WORKERS + 1):
                os.chown(dirs[f"w{i}"], *as_nobody)
        coord_addr = f"{net.ip[0]}:{PORT}"
        shaping = (f"egress limited with tbf: coordinator {args.coordinator_mbit} Mbit/s, "
                   f"workers {args.worker_mbit} Mbit/s each" if any(rates) else "links unshaped")
        out.append(f"network: bridge {net.bridge}; {shaping}")

        q = queue.Queue()

        def start(name, i, cmd, cwd, env=None, pipe_stdout=False):
            logs[name] = os.path.join(dirs["logs"], f"{name}.log")
            logf = open(logs[name], "ab")
            p = subprocess.Popen(net.ex(i) + cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if pipe_stdout else logf,
                                 stderr=subprocess.PIPE, start_new_session=True,
                                 preexec_fn=die_with_parent, env=env)
            procs[name] = p
            threading.Thread(target=pump, args=(p.stderr, logf, q, name), daemon=True).start()
            if pipe_stdout:
                threading.Thread(target=pump, args=(p.stdout, logf, q, name + ".out"),
                                 daemon=True).start()
            return p

        watcher = DirWatcher(dirs["coord"])
        watcher.start()
        coord_cmd = [args.exe, "mr", "coordinator", "--listen", coord_addr, "--no-shared-dir",
                     "--app", "wc", "--split-mb", "4", "--reduce", str(N_REDUCE),
                     "--task-timeout", "3", "--progress", "lines"] + inputs
        t_start = time.time()
        start("coordinator", 0, coord_cmd, dirs["coord"], pipe_stdout=True)
        out.append(f"ns {net.ns[0]} ({net.ip[0]}), cwd {dirs['coord']}: " +
                   " ".join(["flotilla"] + coord_cmd[1:-len(inputs)] + [inputs[0], "...",
                                                                        inputs[-1]]))

        progress = []          # parsed progress lines of the coordinator
        coord_lines = []       # its other stderr lines
        ready = False
        stop_wait = min(deadline, time.time() + 15)
        while not ready and time.time() < stop_wait:
            try:
                name, when, line = q.get(timeout=0.1)
            except queue.Empty:
                if procs["coordinator"].poll() is not None:
                    break
                continue
            if name == "coordinator.out" and line and "coordinator listening on" in line:
                ready = True
            elif name == "coordinator" and line is not None:
                pr = parse_progress(line)
                progress.append(pr) if pr else coord_lines.append(line)
        if ready:
            log(f"coordinator listening on {coord_addr} in {net.ns[0]}")
        else:
            raise SetupError("the coordinator did not say it listens within 15 s: " +
                             Path(logs["coordinator"]).read_text(errors="replace")[-2000:])

        worker_env = dict(os.environ, RUST_LOG="info,flotilla_mr::worker=debug")
        for i in range(1, N_WORKERS + 1):
            cmd = [args.exe, "mr", "worker", "--coordinator", coord_addr]
            if as_nobody:
                cmd = ["setpriv", f"--reuid={as_nobody[0]}", f"--regid={as_nobody[1]}",
                       "--clear-groups", "--pdeathsig", "SIGKILL"] + cmd
            start(f"w{i}", i, cmd, dirs[f"w{i}"], env=worker_env)
            out.append(f"ns {net.ns[i]} ({net.ip[i]}), cwd {dirs[f'w{i}']}: flotilla mr worker "
                       f"--coordinator {coord_addr} (as {'nobody' if as_nobody else 'root'})")

        log(f"{N_WORKERS} workers started in {', '.join(net.ns[1:])}")
        # ---- watch the coordinator's progress; kill the victim at the chosen point ----
        killed = None          # dict: which worker, when, what the coordinator said then
        last_change = time.time()
        stalled = False
        while procs["coordinator"].poll() is None and time.time() < deadline:
            if time.time() - last_change > args.stall_seconds:
                stalled = True
                break
            try:
                name, when, line = q.get(timeout=0.02)
            except queue.Empty:
                continue
            if name != "coordinator" or line is None:
                continue
            pr = parse_progress(line)
            if not pr:
                coord_lines.append(line)
                continue
            progress.append(pr)
            last_change = time.time()
            if killed is not None or pr["reduces_done"] >= pr["reduces"]:
                continue
            if args.kill_when == "all-maps":
                due = pr["maps_done"] == pr["maps"]
            else:
                due = pr["maps_done"] * 2 >= pr["maps"]
            if not due:
                continue
            done = {i: worker_maps(logs[f"w{i}"]) for i in range(1, N_WORKERS + 1)}
            victim = max(done, key=lambda i: (len(done[i]), -i))
            procs[f"w{victim}"].send_signal(signal.SIGKILL)
            killed = {"worker": victim, "at": time.time() - t_start, "line": line, "progress": pr,
                      "maps": sorted(done[victim])}
            log(f"SIGKILL to worker w{victim} ({net.ns[victim]}) after: {line}")
        finished = procs["coordinator"].poll() is not None
        if not finished:
            last = progress[-1]["line"] if progress else "(no progress line)"
            if stalled:
                failures.append(f"HANG: the coordinator's progress has not changed for "
                                f"{args.stall_seconds:.0f}s (the job's tasks take ~1 s each); its "
                                f"last line: {last}")
            else:
                failures.append(f"the coordinator did not finish within --seconds-budget "
                                f"{args.seconds_budget:.0f}s; its last line: {last}")
            dump = dump_threads(procs["coordinator"].pid, os.path.join(dirs["logs"],
                                "coordinator-threads.txt"), min(60, max(1, left())))
            if dump:
                out.append("the hung coordinator's thread backtraces (gdb): "
                           "coordinator-threads.txt in the evidence directory")
            procs["coordinator"].kill()
        rc = procs["coordinator"].wait(timeout=10)
        elapsed = time.time() - t_start
        log(f"coordinator exited with {rc}")

        # the surviving workers exit once the job is over (told so, or finding it gone)
        for i in range(1, N_WORKERS + 1):
            p = procs[f"w{i}"]
            try:
                p.wait(timeout=max(1, min(20, left())))
            except subprocess.TimeoutExpired:
                failures.append(f"worker w{i} still running 20 s after the job ended")
                p.kill()
                p.wait(timeout=10)
        time.sleep(0.2)     # let the pump threads drain
        watcher.stop.set()
        watcher.join(timeout=5)
        while True:
            try:
                name, when, line = q.get_nowait()
            except queue.Empty:
                break
            if name == "coordinator" and line is not None:
                pr = parse_progress(line)
                progress.append(pr) if pr else coord_lines.append(line)

        # ---------------- checks ----------------
        if finished and rc != 0:
            failures.append(f"the coordinator exited with {rc}; its last lines: "
                            + " | ".join(Path(logs["coordinator"]).read_text(errors="replace")
                                         .splitlines()[-5:]))
        final = progress[-1] if finished and progress else None
        if killed is None:
            failures.append(f"no worker was killed: the point --kill-when {args.kill_when} (with "
                            f"reduces still to do) never came")
        else:
            v, pr = killed["worker"], killed["progress"]
            out.append(f"KILL: SIGKILL to worker w{v} ({net.ns[v]}) at {killed['at']:.2f}s, after "
                       f"it finished map tasks {killed['maps']}; the coordinator had just said: "
                       f"{killed['line']}")
            if not killed["maps"]:
                failures.append(f"the killed worker w{v} had not finished a map task")
            # at most N_WORKERS reduces run at once: with more than that not done, one is not
            # handed out yet and needs the dead worker's outputs
            needed = pr["reduces"] - pr["reduces_done"] > N_WORKERS
            if args.kill_when == "all-maps" and not needed:
                left_r = pr["reduces"] - pr["reduces_done"]
                failures.append(f"the kill came too late: only {left_r} "
                                f"reduces were left, maybe all past fetching (a slower link, "
                                f"--worker-mbit, gives more time)")
            if killed["maps"] and (needed or args.kill_when == "half-maps") and finished:
                if final is None or final["rerun"] == 0:
                    failures.append("the final progress line shows no maps rerun, though the "
                                    "killed worker's map outputs were still needed")
        out.append("coordinator's final line: " + (final["line"] if final else "(none: it did "
                                                   "not finish)"))
        out.append(f"coordinator exit status {rc}" + ("" if finished else " (killed by this "
                   "script)") + f", job {elapsed:.1f}s wall clock from its start")
        gone = [l for l in coord_lines if "running it again" in l]
        if gone:
            out.append(f"coordinator: {len(gone)} map tasks rerun because their worker was found "
                       f"gone by silence, e.g. {gone[0].split('INFO ', 1)[-1]}")
        for i in range(1, N_WORKERS + 1):
            text = Path(logs[f"w{i}"]).read_text(errors="replace")
            served = SERVING_RE.findall(text)
            fails = [l for l in text.splitlines() if "task failed" in l]
            status = ("killed" if killed and killed["worker"] == i
                      else f"exit {procs[f'w{i}'].returncode}")
            out.append(f"worker w{i}: {status}, {len(MAP_DONE_RE.findall(text))} map tasks done, "
                       f"served at {', '.join(served) or '?'}, {len(fails)} failed tasks" +
                       (f" (first: {fails[0].split('WARN ', 1)[-1][:300]})" if fails else ""))
            for addr in served:
                if addr.rsplit(":", 1)[0] != net.ip[i]:
                    failures.append(f"worker w{i} served map outputs at {addr}, not on its "
                                    f"namespace's address {net.ip[i]}")
            if not (killed and killed["worker"] == i) and procs[f"w{i}"].returncode != 0:
                failures.append(f"worker w{i} exited with {procs[f'w{i}'].returncode}: "
                                f"{text.splitlines()[-1:] }")

        got = sorted_output(dirs["coord"])
        if not finished:
            pass    # the output and the directory are checked only after a finished job
        elif got == reference:
            out.append(f"output: sort mr-out-* | grep . equals the sequential output "
                       f"({len(got)} lines)")
        else:
            first = next((k for k, (a, b) in enumerate(zip(got, reference)) if a != b),
                         min(len(got), len(reference)))
            failures.append(f"output differs from the sequential one: {len(got)} lines against "
                            f"{len(reference)}; first difference at sorted line {first}: "
                            f"{got[first:first + 1]} vs {reference[first:first + 1]}")

        intermediates = sorted(n for n in watcher.seen if INTERMEDIATE_RE.match(n))
        odd = sorted(n for n in watcher.seen if n.startswith("mr-") and not OUTPUT_RE.match(n)
                     and not INTERMEDIATE_RE.match(n) and not COLLECTING_RE.match(n))
        transient = sorted(n for n in watcher.seen if COLLECTING_RE.match(n))
        shown = ", ".join(transient[:4]) + (", ..." if len(transient) > 4 else "")
        out.append(f"coordinator's directory: polled {watcher.polls} times; intermediate files "
                   f"seen: {len(intermediates)}; transient names of collected outputs seen: "
                   f"{len(transient)}" + (f" ({shown})" if transient else ""))
        if intermediates or odd:     # whether or not the job finished
            failures.append(f"mr-* files other than mr-out-* appeared in the coordinator's "
                            f"directory: {(intermediates + odd)[:10]}")
        now = sorted(os.listdir(dirs["coord"]))
        expect = sorted(inputs + [f"mr-out-{r}" for r in range(N_REDUCE)])
        if finished and now != expect:
            failures.append(f"the coordinator's directory holds {now}, not the inputs and "
                            f"mr-out-0..{N_REDUCE - 1}")

        for i in range(1, N_WORKERS + 1):
            entries = sorted(os.listdir(dirs[f"w{i}"]))
            if killed and killed["worker"] == i:
                out.append(f"worker w{i}'s directory after SIGKILL (it could not clean up): "
                           f"{entries or 'empty'}")
                if any(not e.startswith(".flotilla-mr-worker-") for e in entries):
                    failures.append(f"the killed worker's directory holds more than its private "
                                    f"directory: {entries}")
            elif entries and finished:
                failures.append(f"worker w{i}'s directory is not empty after the job: {entries}")
        if finished and all(not os.listdir(dirs[f"w{i}"]) for i in range(1, N_WORKERS + 1)
               if not (killed and killed["worker"] == i)):
            out.append("surviving workers' directories: empty after the job")
        if args.keep:
            out.append(f"kept: logs in {dirs['logs']}")
        if failures:
            keep = tempfile.mkdtemp(prefix="mr-hosts-evidence-", dir=args.evidence_parent)
            for name in os.listdir(dirs["logs"]):
                shutil.copy2(os.path.join(dirs["logs"], name), keep)
            out.append(f"evidence (process logs) kept in {keep}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # no interrupting the cleanup
            signal.signal(sig, signal.SIG_IGN)
        if watcher is not None:
            watcher.stop.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        left_over = net.teardown()
        if left_over:
            out.append(f"WARNING: could not remove {left_over}")
        else:
            out.append(f"teardown: {len(net.ns)} namespaces, their veths and the bridge removed")
        for role, d in dirs.items():
            if not (args.keep and role == "logs"):
                shutil.rmtree(d, ignore_errors=True)
    if failures:
        raise CheckFailed(failures)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    default_exe = Path(__file__).resolve().parent.parent / "target" / "release" / "flotilla"
    ap.add_argument("--exe", default=os.environ.get("FLOTILLA", str(default_exe)),
        help="the flotilla executable (default: target/release/flotilla of this repository)")
    ap.add_argument("--seconds-budget", type=float, default=120,
                    help="bound of the whole run, setup and teardown included (default 120)")
    ap.add_argument("--subnet", default="10.231.14", help="a private /24, first three octets")
    ap.add_argument("--kill-when", choices=["all-maps", "half-maps"], default="all-maps",
                    help="all-maps: once every map is done and more than 3 reduces are not "
                         "(the dead worker's outputs are fetched and found missing); half-maps: "
                         "once half the maps are done (it is found gone by its silence)")
    ap.add_argument("--coordinator-mbit", type=int, default=96,
                    help="egress rate of the coordinator's namespace, 0 = unlimited")
    ap.add_argument("--worker-mbit", type=int, default=8,
                    help="egress rate of each worker's namespace, 0 = unlimited")
    ap.add_argument("--copies", type=int, default=4, help="copies of the lab texts per input")
    ap.add_argument("--files", type=int, default=4, help="input files")
    ap.add_argument("--workers-as-root", action="store_true",
                    help="do not run the workers as user nobody")
    ap.add_argument("--stall-seconds", type=float, default=20,
                    help="a job whose progress does not change this long is hung (default 20)")
    ap.add_argument("--keep", action="store_true", help="keep the process logs")
    ap.add_argument("--evidence-parent", default=tempfile.gettempdir(),
                    help="where the logs of a failed run are kept")
    args = ap.parse_args()
    args.seconds_budget = max(10.0, min(args.seconds_budget, 3600.0))
    deadline = T0 + args.seconds_budget - 10     # leave time for teardown
    tag = str(os.getpid())

    # The processes run in other directories: a relative path would not find the program.
    args.exe = os.path.abspath(args.exe)
    if not os.access(args.exe, os.X_OK):
        print(f"flotilla executable not found: {args.exe} (cargo build --release -p flotilla-cli, "
              f"or give --exe)")
        return 2
    problem = capability_problem(tag, args.coordinator_mbit > 0 or args.worker_mbit > 0)
    if problem:
        print(f"SKIPPED (77): this test needs network namespaces: {problem}")
        return 77
    for r in cleanup_leftovers():
        log(f"removed a leftover of an earlier run: {r}")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    out = []
    status = 0
    try:
        run_job(args, tag, deadline, out)
    except CheckFailed as e:
        status = 1
        out += [f"FAILED: {f}" for f in e.args[0]]
    except SetupError as e:
        status = 2
        out.append(f"cannot run: {e}")
    except KeyboardInterrupt as e:
        status = 130
        out.append(f"interrupted ({e}); cleaned up")
    except RuntimeError as e:     # a setup command failed
        status = 2
        out.append(f"cannot run: {e}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    print("=== flotilla mr on separate hosts (issue 14.5): " +
          ("PASSED" if status == 0 else "FAILED" if status == 1 else "NOT RUN") + " ===")
    print("\n".join(out))
    print(f"whole run {time.time() - T0:.1f}s (budget {args.seconds_budget:.0f}s)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
