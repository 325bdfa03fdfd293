#!/usr/bin/env python3
"""Shard-group scaling with "one machine per group" emulated by CPU budgets.

`flotilla bench shardkv-scaling` runs 1/2/4 groups on this machine uncapped, so on a
small machine every group shares the same cores and more groups cannot add throughput.
This script gives every shard group its own fixed CPU budget instead: for each G it starts
`flotilla cluster up --groups G` (a 3-node controller and G groups of 3 `shardkv serve`
processes, gids 100, 101, ..., on loopback), puts the 3 processes of each group into a
cgroup (v1 cpu controller: cpu.cfs_quota_us / cpu.cfs_period_us) of its own, leaves the
controller and the load generator uncapped, runs `flotilla shard bench` with the same load
for every G, and prints a markdown table. `--cpu-per-group none` (or `--uncapped`) runs
without cgroups for comparison; several budgets may be given and land in one table.

Besides the bench's own numbers, every row shows the CPU the groups, the controller and the
load generator actually used during the measured run (from /proc/<pid>/stat and the load
generator's rusage), and for capped groups the share of CFS periods in which they were
throttled, so a row that does not scale says where the CPU went.

Everything is torn down in all cases (try/finally, also on Ctrl-C / SIGTERM): the cluster
gets SIGINT and is waited for (bounded, then SIGKILL to it and its nodes by pid), the
processes still in our cgroups are moved back and the cgroups removed, the temp dirs
deleted. Every wait is bounded. Must run as root when a budget is set.

Usage (from the repository root, after `cargo build --release -p flotilla-cli`):
    sudo python3 bench/shard-scaling.py                                # 1,2,4 groups at 0.4 CPU each
    sudo python3 bench/shard-scaling.py --cpu-per-group 0.4,none       # capped and uncapped, one table
    sudo python3 bench/shard-scaling.py --cpu-per-group 0.3 --groups 1,2,4 --clients 64 --seconds 10
    python3 bench/shard-scaling.py --uncapped                          # no cgroups (no root needed)
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_GID = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")

BENCH_RE = re.compile(
    r"(?P<clients>\d+) clients: (?P<ops>\d+) ops in (?P<secs>[\d.]+)s = (?P<rate>[\d.]+) ops/s; "
    r"latency p50 (?P<p50>[\d.]+) µs, p99 (?P<p99>[\d.]+) µs, max (?P<max>[\d.]+) µs; "
    r"(?P<resends>\d+) resends, (?P<failed>\d+) failed"
)


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cgroup v1 cpu


def cpu_mount():
    """The mount point of the cgroup v1 hierarchy with the cpu controller, or None."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "cgroup" and "cpu" in parts[3].split(","):
                    if os.path.exists(os.path.join(parts[1], "cpu.cfs_quota_us")):
                        return parts[1]
    except OSError:
        pass
    if os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        return "/sys/fs/cgroup/cpu"
    return None


def cpu_cgroup_of(pid):
    """The pid's cgroup path (relative) in the cpu hierarchy, "/" if not found."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(","):
                    return path
    except (OSError, ValueError):
        pass
    return "/"


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def read(path):
    with open(path) as f:
        return f.read()


def cgroup_procs(cg):
    try:
        return [int(x) for x in read(os.path.join(cg, "cgroup.procs")).split()]
    except OSError:
        return []


def throttle_stat(cg):
    out = {}
    try:
        for line in read(os.path.join(cg, "cpu.stat")).splitlines():
            k, v = line.split()
            out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


class Cgroups:
    """The cgroups this run created; `remove_all` moves what is left back and rmdirs."""

    def __init__(self, mount):
        self.mount = mount
        self.made = []  # (path, home) where home is the cgroup dir to move pids back into

    def create(self, name, home_rel, cpus, period_us, shares):
        home = os.path.join(self.mount, home_rel.lstrip("/"))
        path = os.path.join(home, name)
        os.mkdir(path)
        self.made.append((path, home))
        if shares:
            write(os.path.join(path, "cpu.shares"), shares)
        write(os.path.join(path, "cpu.cfs_period_us"), period_us)
        write(os.path.join(path, "cpu.cfs_quota_us"), max(1000, int(round(cpus * period_us))))
        return path

    def remove_all(self, within=10.0):
        problems = []
        for path, home in reversed(self.made):
            deadline = time.monotonic() + within
            while True:
                for pid in cgroup_procs(path):
                    try:
                        write(os.path.join(home, "cgroup.procs"), pid)
                    except OSError:
                        pass  # exited meanwhile
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        problems.append(f"{path}: {e} (pids {cgroup_procs(path)})")
                        break
                    time.sleep(0.1)
        self.made = []
        return problems


# ---------------------------------------------------------------- processes


def proc_children(ppid):
    """(pid, argv) of the live children of ppid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = read(f"/proc/{d}/stat")
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) != ppid or fields[0] == "Z":
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            out.append((int(d), argv))
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
        fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run_bounded(argv, timeout):
    """Runs argv to completion (killed after `timeout` s): (exit code, stdout, stderr, cpu s)."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    status, ru = None, None
    try:
        while True:
            pid, st, r = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                status, ru = st, r
                break
            if time.monotonic() > deadline:
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
    timed_out = time.monotonic() > deadline
    return (
        None if timed_out else p.returncode,
        out.read().decode(errors="replace"),
        err.read().decode(errors="replace"),
        ru.ru_utime + ru.ru_stime,
    )


class Cluster:
    """One `flotilla cluster up --groups G` in a temp dir."""

    def __init__(self, exe, groups, nodes, ready_within):
        self.exe = exe
        self.groups = groups
        self.nodes = nodes
        self.dir = tempfile.mkdtemp(prefix=f"flotilla-shard-scaling-g{groups}-")
        self.out_path = os.path.join(self.dir, "cluster-up.out")
        self.proc = None
        self.ctrl = None
        self.group_pids = {}  # gid -> [pid]
        self.ctrl_pids = []
        self.ready_within = ready_within

    def start(self):
        data = os.path.join(self.dir, "data")
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.exe, "cluster", "up", "--nodes", str(self.nodes), "--groups",
                 str(self.groups), "--dir", data, "--base-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # our Ctrl-C reaches only us; we stop it ourselves
            )
        deadline = time.monotonic() + self.ready_within
        while True:
            text = read(self.out_path)
            m = re.search(r"every group joined \(configuration \d+\); clients: --ctrl (\S+)", text)
            if m:
                self.ctrl = m.group(1)
                break
            if "not ready:" in text:
                raise RuntimeError(f"cluster up: not ready:\n{text}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"cluster up exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster up not ready within {self.ready_within:.0f} s:\n{text}")
            time.sleep(0.1)
        self.find_pids()
        return self

    def find_pids(self):
        gids = [FIRST_GID + k for k in range(self.groups)]
        self.group_pids = {g: [] for g in gids}
        self.ctrl_pids = []
        for pid, argv in proc_children(self.proc.pid):
            if "shardkv" in argv and "--gid" in argv:
                i = argv.index("--gid")
                gid = int(argv[i + 1]) if i + 1 < len(argv) else None
                if gid in self.group_pids:
                    self.group_pids[gid].append(pid)
            elif "shardctrler" in argv:
                self.ctrl_pids.append(pid)
        for gid, pids in self.group_pids.items():
            if len(pids) != self.nodes:
                raise RuntimeError(f"group {gid}: found pids {pids}, expected {self.nodes} nodes")
        if len(self.ctrl_pids) != self.nodes:
            raise RuntimeError(f"controller: found pids {self.ctrl_pids}, expected {self.nodes}")

    def all_pids(self):
        return self.ctrl_pids + [p for ps in self.group_pids.values() for p in ps]

    def stop(self, within=30.0):
        """SIGINT, bounded wait; then SIGKILL to it and its nodes. Problems as strings."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                problems.append(f"cluster up (pid {self.proc.pid}) still running {within:.0f} s after SIGINT; killed")
                kill_pid(self.proc.pid)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    problems.append(f"cluster up (pid {self.proc.pid}) survives SIGKILL")
        elif self.proc.returncode != 0:
            problems.append(f"cluster up had exited with {self.proc.returncode}")
        # Its nodes: cluster up stops them itself; whatever is left is killed by pid.
        known = self.all_pids()
        deadline = time.monotonic() + 5
        while any(alive(p) for p in known) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in known if alive(p)]
        if left:
            problems.append(f"nodes {left} outlived cluster up; killed")
            for p in left:
                kill_pid(p)
        return problems

    def tail_logs(self, lines=15):
        out = []
        for root, _, files in os.walk(self.dir):
            for f in sorted(files):
                if f.endswith(".log") or f == "cluster-up.out":
                    path = os.path.join(root, f)
                    try:
                        tail = read(path).splitlines()[-lines:]
                    except OSError:
                        continue
                    out.append(f"--- {os.path.relpath(path, self.dir)}\n" + "\n".join(tail))
        return "\n".join(out)

    def remove_dir(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- one point


def run_point(args, mount, groups, budget):
    """Measures `groups` groups at `budget` CPUs each (None = uncapped): a result dict."""
    cgroups = Cgroups(mount) if budget is not None else None
    cluster = Cluster(args.flotilla, groups, args.nodes, args.ready_within)
    problems = []
    failed = True
    try:
        cluster.start()
        cgs = {}
        if cgroups is not None:
            home = cpu_cgroup_of(cluster.proc.pid)
            for gid, pids in cluster.group_pids.items():
                cg = cgroups.create(f"flotilla-shard-scaling-{os.getpid()}-g{gid}", home, budget,
                                    args.period_us, args.shares)
                for pid in pids:
                    write(os.path.join(cg, "cgroup.procs"), pid)
                inside = set(cgroup_procs(cg))
                if not set(pids) <= inside:
                    raise RuntimeError(f"group {gid}: pids {pids} but {cg} holds {sorted(inside)}")
                cgs[gid] = cg
        bench = [args.flotilla, "shard", "bench", "--ctrl", cluster.ctrl, "--clients", str(args.clients),
                 "--keys", str(args.keys), "--value-size", str(args.value_size),
                 "--get-share", str(args.get_share)]
        if args.warmup > 0:
            code, out, err, _ = run_bounded(bench + ["--seconds", str(args.warmup)], args.warmup + args.bench_grace)
            if code != 0:
                raise RuntimeError(f"warm-up bench exited with {code}:\n{out}{err}")
        load = os.getloadavg()[0]
        before = {p: cpu_seconds(p) for p in cluster.all_pids()}
        thr_before = {g: throttle_stat(cg) for g, cg in cgs.items()}
        t0 = time.monotonic()
        code, out, err, client_cpu = run_bounded(bench + ["--seconds", str(args.seconds)],
                                                 args.seconds + args.bench_grace)
        wall = time.monotonic() - t0
        after = {p: cpu_seconds(p) for p in cluster.all_pids()}
        thr_after = {g: throttle_stat(cg) for g, cg in cgs.items()}
        if code != 0:
            raise RuntimeError(f"bench exited with {code}:\n{out}{err}")
        m = BENCH_RE.search(out)
        if not m:
            raise RuntimeError(f"cannot parse the bench output:\n{out}{err}")

        def used(pids):
            return sum(after[p] - before[p] for p in pids
                       if before.get(p) is not None and after.get(p) is not None) / wall

        per_group = [used(ps) for ps in cluster.group_pids.values()]
        throttled = []
        for g in cgs:
            periods = thr_after[g].get("nr_periods", 0) - thr_before[g].get("nr_periods", 0)
            thr = thr_after[g].get("nr_throttled", 0) - thr_before[g].get("nr_throttled", 0)
            throttled.append(thr / periods if periods else 0.0)
        lost = [p for p in cluster.all_pids() if after.get(p) is None]
        if lost:
            problems.append(f"nodes {lost} exited during the bench")
        failed = False
        return {
            "groups": groups,
            "budget": budget,
            "rate": float(m["rate"]),
            "ops": int(m["ops"]),
            "p50_ms": float(m["p50"]) / 1e3,
            "p99_ms": float(m["p99"]) / 1e3,
            "resends": int(m["resends"]),
            "failed": int(m["failed"]),
            "group_cpu": sum(per_group),
            "group_cpu_each": per_group,
            "throttled": (sum(throttled) / len(throttled)) if throttled else None,
            "ctrl_cpu": used(cluster.ctrl_pids),
            "client_cpu": client_cpu / wall,
            "load": load,
            "problems": problems,
        }
    finally:
        if failed and cluster.proc is not None:
            log(cluster.tail_logs())
        problems += cluster.stop()
        if cgroups is not None:
            problems += cgroups.remove_all()
        cluster.remove_dir()
        for p in problems:
            log(f"warning: {p}")


# ---------------------------------------------------------------- main


def parse_budgets(text):
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "uncapped", "off", "0"):
            out.append(None)
        else:
            v = float(part)
            if not 0.01 <= v <= os.cpu_count():
                raise argparse.ArgumentTypeError(f"budget {v} out of range [0.01, {os.cpu_count()}]")
            out.append(v)
    return out


def fmt_budget(b):
    return "uncapped" if b is None else f"{b:g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="1,2,4", help="group counts to measure (default 1,2,4)")
    ap.add_argument("--cpu-per-group", type=parse_budgets, default=[0.4],
                    help="CPU budget of each group, comma-separated list; 'none' = uncapped (default 0.4)")
    ap.add_argument("--uncapped", action="store_true", help="no cgroups at all (same as --cpu-per-group none)")
    ap.add_argument("--period-us", type=int, default=100_000, help="cpu.cfs_period_us (default 100000). A throttled group stalls for the rest of "
                         "its period, so p99 approaches the period; 10000 smooths that but with the "
                         "kernel's 5 ms bandwidth slice a group then gets somewhat less than its quota")
    ap.add_argument("--shares", type=int, default=None,
                    help="cpu.shares of each group's cgroup (default 1024 x nodes: under contention the "
                         "group weighs what its nodes would uncapped; 0 = leave the kernel's 1024)")
    ap.add_argument("--nodes", type=int, default=3, help="nodes per group and in the controller (default 3)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured bench seconds first (default 2; 0 = none)")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--get-share", type=float, default=0.0)
    ap.add_argument("--flotilla", default=os.path.join(REPO, "target", "release", "flotilla"),
                    help="the flotilla binary (default target/release/flotilla)")
    ap.add_argument("--ready-within", type=float, default=60.0, help="seconds for cluster up to be ready")
    ap.add_argument("--bench-grace", type=float, default=60.0, help="seconds a bench may overrun")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    if args.shares is None:
        args.shares = 1024 * args.nodes
    if not groups or min(groups) < 1:
        ap.error("--groups: positive integers")
    budgets = [None] if args.uncapped else args.cpu_per_group
    if not os.access(args.flotilla, os.X_OK):
        ap.error(f"{args.flotilla} not found: cargo build --release -p flotilla-cli")

    mount = None
    if any(b is not None for b in budgets):
        if os.geteuid() != 0:
            log("a CPU budget needs root (cgroups); run as root or with --uncapped")
            return 2
        mount = cpu_mount()
        if mount is None:
            log("the cgroup v1 cpu controller is missing (no cpu.cfs_quota_us under a cgroup mount, "
                "e.g. /sys/fs/cgroup/cpu); cannot cap the groups. Use --uncapped to run without.")
            return 2
        cores = os.cpu_count()
        for b in budgets:
            if b is not None and max(groups) * b > cores - 0.3:
                log(f"note: {max(groups)} groups x {b:g} CPU = {max(groups) * b:g} of {cores} cores; "
                    f"the controller and the load generator are left {cores - max(groups) * b:.2g}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    log(f"uptime at start: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    rows = []
    try:
        for b in budgets:
            for g in groups:
                log(f"{g} group(s), {fmt_budget(b)} CPU each: {args.clients} clients, {args.seconds:g} s ...")
                r = run_point(args, mount, g, b)
                rows.append(r)
                log(f"  {r['rate']:.0f} ops/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                    f"groups used {r['group_cpu']:.2f} CPU, client {r['client_cpu']:.2f}, "
                    f"controller {r['ctrl_cpu']:.2f}, load {r['load']:.2f}")
    except Interrupted as e:
        log(f"interrupted ({e}); cleaned up")
        return 130
    except Exception as e:  # noqa: BLE001 - report and exit non-zero after cleanup
        log(f"error: {e}")
        return 1
    finally:
        log(f"uptime at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        if rows:
            print_table(args, rows)
    return 0


def print_table(args, rows):
    print(f"\n{args.clients} clients, {args.seconds:g} s per point, {args.keys} keys, "
          f"{args.value_size} B values, get share {args.get_share:g}; {os.cpu_count()} cores; "
          f"cgroups: cfs period {args.period_us} µs, cpu.shares {args.shares or 1024}\n")
    print("| CPU/group | groups | CPU budget total | ops/s | p50 | p99 | resends | failed "
          "| groups used (each) | throttled | client CPU | ctrl CPU | load 1m |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["budget"]
        total = "uncapped" if b is None else f"{b * r['groups']:g}"
        each = "/".join(f"{c:.2f}" for c in r["group_cpu_each"])
        thr = "-" if r["throttled"] is None else f"{r['throttled'] * 100:.0f}%"
        print(f"| {fmt_budget(b)} | {r['groups']} | {total} | {r['rate']:.0f} | {r['p50_ms']:.1f} ms "
              f"| {r['p99_ms']:.1f} ms | {r['resends']} | {r['failed']} | {r['group_cpu']:.2f} ({each}) "
              f"| {thr} | {r['client_cpu']:.2f} | {r['ctrl_cpu']:.2f} | {r['load']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
