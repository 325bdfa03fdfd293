#!/usr/bin/env python3
"""etcd 3.4 against Flotilla through the same gRPC API and the same load generator (issue 13).

Starts a 3-member etcd cluster on loopback (Debian's `etcd-server`, installed with apt-get if
`etcd` is missing; data in a temp dir, etcd's defaults otherwise, so every commit is
fsynced), runs the bench matrix against it with `flotilla kv bench --etcd A1,A2,A3`, stops
it; then starts a 3-node Flotilla cluster (`flotilla cluster up --nodes 3 --base-port 0`,
each node's WAL fsynced on every batch, its etcd gRPC endpoints read from the line
`etcd clients: --endpoints A1,A2,A3`, once a leader is elected), runs the same matrix, stops it, and prints one
markdown table with both side by side (and, with --json, writes every figure).

The matrix (every run bounded: --seconds of load, killed after --seconds + --bench-grace):
puts at 1, 16, 64 and 256 clients; linearizable gets, serializable gets and a 90% get /
10% put mix at 64 clients. The clients share --conns HTTP/2 connections spread round-robin
over the three endpoints (as etcd's `benchmark --conns --clients`). Gets read keys of the
run's own fresh prefix (`flotilla kv bench` starts every run on new keys), so a get-only
run reads absent keys on both systems. Each row also shows the CPU the servers and the load
generator used during the run (/proc/<pid>/stat, rusage), and the 1-minute load average when
it started: the load generator shares the machine with the servers, and figures taken while
other jobs run are noisy.

Everything is torn down in all cases (try/finally, also on Ctrl-C / SIGTERM): etcd members
get SIGTERM, cluster up SIGINT, both waited for (bounded), then SIGKILL by pid; the temp dirs
are deleted unless --keep. All traffic is on 127.0.0.1.

Usage (from the repository root, after `cargo build --release -p flotilla-cli`):
    python3 bench/etcd-compare.py                               # both, 5 s per point
    python3 bench/etcd-compare.py --systems etcd --seconds 3    # etcd alone
    python3 bench/etcd-compare.py --json /tmp/etcd-compare.json --seconds 10
    python3 bench/etcd-compare.py --systems flotilla --flotilla-endpoints 127.0.0.1:7400,...   # a running cluster
Python 3 standard library only (and apt-get, as root, if etcd must be installed).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

BENCH_RE = re.compile(
    r"(?P<clients>\d+) clients: (?P<ops>\d+) ops in (?P<secs>[\d.]+)s = (?P<rate>[\d.]+) ops/s; "
    r"latency p50 (?P<p50>[\d.]+) µs, p99 (?P<p99>[\d.]+) µs, max (?P<max>[\d.]+) µs; "
    r"(?P<resends>\d+) resends, (?P<failed>\d+) failed"
)
FAILURE_RE = re.compile(r"^first failure: (.*)$", re.M)
ENDPOINTS_RE = re.compile(r"etcd clients: --endpoints (\S+)")
LEADER_RE = re.compile(r"node \d+ leads term \d+")

# (label, clients flag name, get share, serializable)
POINTS = [
    ("put", "put_clients", 0.0, False),
    ("get, linearizable", "read_clients", 1.0, False),
    ("get, serializable", "read_clients", 1.0, True),
    ("90% get / 10% put", "read_clients", 0.9, False),
]


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read(path):
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------- processes


def proc_children(ppid):
    """Pids of the live children of ppid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = read(f"/proc/{d}/stat").rsplit(")", 1)[1].split()
            if int(fields[1]) == ppid and fields[0] != "Z":
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_seconds(pid):
    """utime + stime of a live pid in seconds (None if gone)."""
    try:
        fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def alive(pid):
    try:
        return read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_proc(proc, sig, name, within):
    """Sends sig, waits up to `within` s, then SIGKILL. Problems as strings."""
    problems = []
    if proc is None:
        return problems
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            problems.append(f"{name} (pid {proc.pid}) still running {within:.0f} s after {sig.name}; killed")
            kill_pid(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append(f"{name} (pid {proc.pid}) survives SIGKILL")
    return problems


def run_bounded(argv, timeout):
    """Runs argv to completion (killed after `timeout` s): (exit code or None if killed,
    stdout, stderr, cpu seconds)."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    status, ru, timed_out = None, None, False
    try:
        while True:
            pid, st, r = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                status, ru = st, r
                break
            if time.monotonic() > deadline:
                timed_out = True
                kill_pid(p.pid)
                _, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
    finally:
        if status is None:  # interrupted: do not leave it behind
            kill_pid(p.pid)
            try:
                os.wait4(p.pid, 0)
            except ChildProcessError:
                pass
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return (
        None if timed_out else p.returncode,
        out.read().decode(errors="replace"),
        err.read().decode(errors="replace"),
        ru.ru_utime + ru.ru_stime,
    )


def free_ports(n):
    """n distinct free loopback ports (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def fs_type(path):
    p = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return p.stdout.strip()


def tail(path, lines=15):
    try:
        return f"--- {path}\n" + "\n".join(read(path).splitlines()[-lines:])
    except OSError:
        return f"--- {path}: (none)"


# ---------------------------------------------------------------- the systems


def ensure_etcd(exe):
    """The etcd binary: `exe` if it runs, else installs Debian's etcd-server."""
    found = shutil.which(exe)
    if found is None:
        if os.geteuid() != 0:
            raise RuntimeError(f"{exe} not found and not root: apt-get install etcd-server first")
        log("etcd not found: apt-get install -y etcd-server ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "etcd-server"]):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
        found = shutil.which(exe)
        if found is None:
            raise RuntimeError(f"etcd-server installed but {exe} is not on PATH")
    p = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    version = p.stdout.splitlines()[0] if p.stdout else "etcd (version unknown)"
    return found, version.strip()


class Etcd:
    """A 3-member etcd cluster on loopback, data in `root`."""

    name = "etcd"

    def __init__(self, exe, root, members, ready_within):
        self.exe = exe
        self.dir = tempfile.mkdtemp(prefix="etcd-compare-etcd-", dir=root)
        self.members = members
        self.ready_within = ready_within
        self.procs = []
        self.endpoints = []

    def start(self):
        ports = free_ports(2 * self.members)
        client = [f"http://127.0.0.1:{p}" for p in ports[: self.members]]
        peer = [f"http://127.0.0.1:{p}" for p in ports[self.members:]]
        initial = ",".join(f"e{i}={peer[i]}" for i in range(self.members))
        token = f"etcd-compare-{os.getpid()}"
        for i in range(self.members):
            logf = open(os.path.join(self.dir, f"e{i}.log"), "wb")
            argv = [self.exe, "--name", f"e{i}", "--data-dir", os.path.join(self.dir, f"e{i}"),
                    "--listen-client-urls", client[i], "--advertise-client-urls", client[i],
                    "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", token]
            self.procs.append(subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))
            logf.close()
        deadline = time.monotonic() + self.ready_within
        pending = list(client)
        while pending:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd e{i} exited with {p.returncode}:\n{self.logs()}")
            url = pending[0]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        pending.pop(0)
                        continue
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy within {self.ready_within:.0f} s at {url}:\n{self.logs()}")
            time.sleep(0.2)
        self.endpoints = [u.removeprefix("http://") for u in client]
        return self

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        problems = []
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for i, p in enumerate(self.procs):
            problems += stop_proc(p, signal.SIGTERM, f"etcd e{i}", 15)
        return problems

    def logs(self):
        return "\n".join(tail(os.path.join(self.dir, f"e{i}.log")) for i in range(len(self.procs)))


class Flotilla:
    """`flotilla cluster up --nodes 3 --base-port 0` in a temp dir (or a running cluster)."""

    name = "flotilla"

    def __init__(self, exe, root, nodes, ready_within, endpoints=None):
        self.exe = exe
        self.dir = tempfile.mkdtemp(prefix="etcd-compare-flotilla-", dir=root)
        self.out_path = os.path.join(self.dir, "cluster-up.out")
        self.nodes = nodes
        self.ready_within = ready_within
        self.proc = None
        self.node_pids = []
        self.endpoints = endpoints.split(",") if endpoints else []
        self.external = bool(endpoints)

    def start(self):
        if self.external:
            return self
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.exe, "cluster", "up", "--nodes", str(self.nodes),
                 "--dir", os.path.join(self.dir, "data"), "--base-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # our Ctrl-C reaches only us; we stop it ourselves
            )
        deadline = time.monotonic() + self.ready_within
        while True:
            text = read(self.out_path)
            m = ENDPOINTS_RE.search(text)
            if m and LEADER_RE.search(text):
                self.endpoints = m.group(1).split(",")
                break
            if m and "no leader yet" in text:
                raise RuntimeError(f"cluster up: no leader:\n{text}")
            if "not ready:" in text:
                raise RuntimeError(f"cluster up: not ready:\n{text}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"cluster up exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cluster up printed no 'etcd clients: --endpoints' line within "
                    f"{self.ready_within:.0f} s (does this build serve etcd's gRPC API?):\n{text}")
            time.sleep(0.1)
        self.node_pids = proc_children(self.proc.pid)
        if len(self.node_pids) != self.nodes:
            raise RuntimeError(f"cluster up: found node pids {self.node_pids}, expected {self.nodes}")
        return self

    def pids(self):
        return list(self.node_pids)

    def stop(self):
        problems = stop_proc(self.proc, signal.SIGINT, "cluster up", 30)
        if self.proc is not None and self.proc.returncode not in (0, None, -signal.SIGINT):
            problems.append(f"cluster up exited with {self.proc.returncode}")
        deadline = time.monotonic() + 5
        while any(alive(p) for p in self.node_pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in self.node_pids if alive(p)]
        if left:
            problems.append(f"nodes {left} outlived cluster up; killed")
            for p in left:
                kill_pid(p)
        return problems

    def logs(self):
        out = [tail(self.out_path)]
        for root, _, files in os.walk(self.dir):
            for f in sorted(files):
                if f.endswith(".log"):
                    out.append(tail(os.path.join(root, f)))
        return "\n".join(out)


# ---------------------------------------------------------------- one point


def bench_argv(args, endpoints, clients, get_share, serializable, seconds):
    argv = [args.flotilla, "kv", "bench", "--etcd", ",".join(endpoints),
            "--conns", str(args.conns), "--clients", str(clients), "--seconds", str(seconds),
            "--keys", str(args.keys), "--value-size", str(args.value_size),
            "--get-share", str(get_share), "--request-timeout", str(args.request_timeout)]
    if serializable:
        argv.append("--serializable")
    return argv


def run_point(args, system, label, clients, get_share, serializable):
    grace = args.request_timeout + args.bench_grace
    if args.warmup > 0:
        code, out, err, _ = run_bounded(
            bench_argv(args, system.endpoints, clients, get_share, serializable, args.warmup),
            args.warmup + grace)
        if code != 0:
            raise RuntimeError(f"{system.name} {label} warm-up: bench exited with {code}:\n{out}{err}")
    load = os.getloadavg()[0]
    pids = system.pids()
    before = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    code, out, err, client_cpu = run_bounded(
        bench_argv(args, system.endpoints, clients, get_share, serializable, args.seconds),
        args.seconds + grace)
    wall = time.monotonic() - t0
    after = {p: cpu_seconds(p) for p in pids}
    if code != 0:
        raise RuntimeError(f"{system.name} {label} at {clients} clients: bench exited with {code}:\n{out}{err}")
    m = BENCH_RE.search(out)
    if not m:
        raise RuntimeError(f"cannot parse the bench output:\n{out}{err}")
    fail = FAILURE_RE.search(out)
    server_cpu = sum(after[p] - before[p] for p in pids
                     if before.get(p) is not None and after.get(p) is not None) / wall
    lost = [p for p in pids if after.get(p) is None]
    if lost:
        raise RuntimeError(f"{system.name}: servers {lost} exited during the bench:\n{system.logs()}")
    return {
        "system": system.name,
        "load": label,
        "clients": clients,
        "conns": min(args.conns, clients),
        "get_share": get_share,
        "serializable": serializable,
        "ops": int(m["ops"]),
        "seconds": float(m["secs"]),
        "rate": float(m["rate"]),
        "p50_ms": float(m["p50"]) / 1e3,
        "p99_ms": float(m["p99"]) / 1e3,
        "max_ms": float(m["max"]) / 1e3,
        "failed": int(m["failed"]),
        "first_failure": fail.group(1) if fail else None,
        "server_cpu": server_cpu if pids else None,
        "client_cpu": client_cpu / wall,
        "loadavg": load,
    }


def matrix(args):
    points = []
    for label, which, share, ser in POINTS:
        for c in getattr(args, which):
            points.append((label, c, share, ser))
    return points


def run_system(args, system, rows):
    log(f"{system.name}: starting ...")
    try:
        system.start()
        log(f"{system.name}: endpoints {','.join(system.endpoints)}")
        for label, clients, share, ser in matrix(args):
            r = run_point(args, system, label, clients, share, ser)
            rows.append(r)
            cpu = "" if r["server_cpu"] is None else f", servers {r['server_cpu']:.2f} CPU"
            log(f"  {system.name} {label} x{clients}: {r['rate']:.0f} ops/s, p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, {r['failed']} failed{cpu}, client {r['client_cpu']:.2f} CPU, "
                f"load {r['loadavg']:.2f}")
            if r["first_failure"]:
                log(f"    first failure: {r['first_failure']}")
    except Interrupted:
        raise
    except Exception:
        log(system.logs())
        raise
    finally:
        for p in system.stop():
            log(f"warning: {p}")
        if not args.keep:
            shutil.rmtree(system.dir, ignore_errors=True)
        else:
            log(f"{system.name}: kept {system.dir}")


# ---------------------------------------------------------------- the table


def fmt_ms(v):
    return f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def print_table(args, rows, etcd_version):
    by = {(r["system"], r["load"], r["clients"]): r for r in rows}
    systems = [s for s in args.systems if any(r["system"] == s for r in rows)]
    print(f"\n{etcd_version}; 3 members/nodes on 127.0.0.1, fsync on; `flotilla kv bench --etcd`, "
          f"{args.seconds:g} s per point after {args.warmup:g} s warm-up, {args.conns} HTTP/2 connections "
          f"(at most one per client), {args.keys} keys, {args.value_size} B values; {os.cpu_count()} cores "
          f"shared by servers and load generator\n")
    head = "| load | clients |"
    rule = "|---|---|"
    for s in systems:
        head += f" {s} ops/s | p50 | p99 | failed | servers CPU |"
        rule += "---|---|---|---|---|"
    if len(systems) == 2:
        head += " Flotilla / etcd |"
        rule += "---|"
    print(head + " load 1m |")
    print(rule + "---|")
    for label, clients, _, _ in matrix(args):
        line = f"| {label} | {clients} |"
        loads = []
        for s in systems:
            r = by.get((s, label, clients))
            if r is None:
                line += " — | | | | |"
                continue
            cpu = "—" if r["server_cpu"] is None else f"{r['server_cpu']:.2f}"
            line += f" {r['rate']:,.0f} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {r['failed']} | {cpu} |"
            loads.append(f"{r['loadavg']:.1f}")
        if len(systems) == 2:
            a, b = by.get(("etcd", label, clients)), by.get(("flotilla", label, clients))
            line += f" {b['rate'] / a['rate']:.2f}× |" if a and b and a["rate"] else " — |"
        print(line + f" {'/'.join(loads)} |")
    e, f = by.get(("etcd", "put", 64)), by.get(("flotilla", "put", 64))
    el, fl = by.get(("etcd", "get, linearizable", 64)), by.get(("flotilla", "get, linearizable", 64))
    if e and f:
        ok = f["rate"] >= 3 * e["rate"] and f["p99_ms"] <= e["p99_ms"]
        print(f"\ntarget puts at 64 clients ≥ 3× etcd with p99 no worse: {f['rate'] / e['rate']:.2f}×, "
              f"p99 {fmt_ms(f['p99_ms'])} vs {fmt_ms(e['p99_ms'])}: {'met' if ok else 'NOT met'}")
    if el and fl:
        ok = fl["rate"] >= 3 * el["rate"]
        print(f"target linearizable gets ≥ 3× etcd: {fl['rate'] / el['rate']:.2f}×: {'met' if ok else 'NOT met'}")


# ---------------------------------------------------------------- main


def int_list(text):
    out = [int(x) for x in text.split(",") if x.strip()]
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("positive integers, comma-separated")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="etcd,flotilla", help="which to measure, in order (default etcd,flotilla)")
    ap.add_argument("--put-clients", type=int_list, default=[1, 16, 64, 256], help="default 1,16,64,256")
    ap.add_argument("--read-clients", type=int_list, default=[64],
                    help="clients of the get and mixed loads (default 64)")
    ap.add_argument("--conns", type=int, default=8, help="HTTP/2 connections per run (default 8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1; 0 = none)")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--request-timeout", type=float, default=5.0, help="a request not answered by then fails")
    ap.add_argument("--flotilla", default=os.path.join(REPO, "target", "release", "flotilla"),
                    help="the flotilla binary (default target/release/flotilla)")
    ap.add_argument("--cluster-flotilla", default=None,
                    help="the flotilla binary that runs the Flotilla cluster (default: --flotilla)")
    ap.add_argument("--etcd", default="etcd", help="the etcd binary (default: etcd on PATH, else apt-get)")
    ap.add_argument("--flotilla-endpoints", default=None,
                    help="bench a running Flotilla cluster at these gRPC endpoints instead of starting one")
    ap.add_argument("--data-root", default=None,
                    help="where the temp data dirs go (default: the system's temp dir; must not be tmpfs "
                         "for fsync to cost what it does on a disk)")
    ap.add_argument("--ready-within", type=float, default=60.0, help="seconds for a cluster to be ready")
    ap.add_argument("--bench-grace", type=float, default=30.0, help="seconds a bench may overrun")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = ap.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or any(s not in ("etcd", "flotilla") for s in args.systems):
        ap.error("--systems: etcd and/or flotilla")
    if args.seconds <= 0 or args.seconds > 600:
        ap.error("--seconds must be in (0, 600]")
    if not os.access(args.flotilla, os.X_OK):
        ap.error(f"{args.flotilla} not found: cargo build --release -p flotilla-cli")
    root = args.data_root or tempfile.gettempdir()
    if fs_type(root) in ("tmpfs", "ramfs"):
        log(f"warning: {root} is {fs_type(root)}: fsync costs nothing there; give --data-root on a disk")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    log(f"uptime at start: {uptime()}")
    rows, etcd_version, status = [], "etcd not run", 0
    try:
        for name in args.systems:
            if name == "etcd":
                exe, etcd_version = ensure_etcd(args.etcd)
                log(etcd_version)
                run_system(args, Etcd(exe, root, 3, args.ready_within), rows)
            else:
                run_system(args, Flotilla(args.cluster_flotilla or args.flotilla, root, 3, args.ready_within,
                                          args.flotilla_endpoints), rows)
    except Interrupted as e:
        log(f"interrupted ({e}); cleaned up")
        status = 130
    except Exception as e:  # noqa: BLE001 - report and exit non-zero after cleanup
        log(f"error: {e}")
        status = 1
    finally:
        log(f"uptime at end: {uptime()}")
        if rows:
            print_table(args, rows, etcd_version)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"etcd": etcd_version, "config": {k: v for k, v in vars(args).items()},
                           "uptime_end": uptime(), "rows": rows}, f, indent=1)
            log(f"results written to {args.json}")
    if status == 0 and any(r["failed"] for r in rows):
        log("some requests failed (see the failed column)")
        status = 3
    return status


if __name__ == "__main__":
    sys.exit(main())
