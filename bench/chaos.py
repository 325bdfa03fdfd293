#!/usr/bin/env python3
"""Chaos on real processes (issue 11, item 4): a 3-node `flotilla kvraft serve` cluster, one
node per network namespace on a private bridge, concurrent `flotilla kv bench` clients from the
root namespace, and a seeded fault loop (SIGKILL + restart, SIGSTOP/SIGCONT, iptables
partitions, netem loss and delay). Afterwards everything is healed and checked: every history
must be linearizable (alone, and with the final reads appended), and no acknowledged append may
be lost. See bench/chaos.md.

--store shard runs the sharded store instead: each namespace (a "machine") runs controller node
i and node i of shard groups 100 and 101, each process on its own port; `flotilla shard bench`
clients; a mover that joins group 101 under load, then moves shards between the groups and makes
one group leave and join back, while single processes are killed or paused and machines are
partitioned or get lossy or slow links. Afterwards: every process restarted, both groups in the
configuration, the store settled (every node answers, at the latest configuration, serving its
shards), then the same checks, with the final reads through `flotilla shard get`.

--store etcd runs the kv mode's cluster with each node also serving etcd's v3 gRPC API
(`--grpc`, `--grpc-members`); the clients are `flotilla kv bench --etcd` (appends are Txn
compare-and-set loops on the key's mod_revision, requests fail over with --retry-for), the mixed
group does gets and appends only (a resent etcd put may apply twice), and the final reads are
etcd's own `etcdctl get`. Same faults, same checks.

Run as root:  sudo python3 bench/chaos.py --seconds 120 --seed 1
              sudo python3 bench/chaos.py --store shard --seconds 60 --seed 1
              sudo python3 bench/chaos.py --store etcd --seconds 60 --seed 1
Python 3 standard library only.
"""

import argparse
import json
import os
from pathlib import Path
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

NS_RE = re.compile(r"^flot-(\d+)-(\d+)$")         # namespaces: flot-<pid>-<i>
LINK_RE = re.compile(r"^flot[vb](\d+)(-\d+|-p)?$")   # root-side veths flotv<pid>-<i>, bridge flotb<pid>
CHAIN = "FLOTCHAOS"   # partitions
LOSS = "FLOTLOSS"     # random packet loss
PORT = 7400
GRPC_PORT = 7500      # --store etcd: each node's etcd gRPC API
STATUS_RE = re.compile(r"^node (\d+) (\S+): (\w+) term (\d+)(?: leader (\S+))? commit (\d+) applied (\d+)")
TOKEN_RE = re.compile(r"(\d+)\.(\d+)\.x*")        # one bench value: <client>.<n>.xxx


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, timeout=30, quiet=False, **kw):
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
    if not quiet and p.returncode != 0 and not check:
        pass
    return p


def die_with_parent():
    """preexec_fn: SIGKILL this child when chaos.py dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def pid_is_chaos(pid):
    """Whether pid is a live chaos.py (another run, whose namespaces must be left alone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"chaos.py" in f.read()
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# Tools and capability
# ----------------------------------------------------------------------------------------------

def ensure_tools():
    missing = [(tool, pkg) for tool, pkg in
               [("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables")]
               if shutil.which(tool) is None]
    if missing:
        pkgs = sorted({p for _, p in missing})
        log(f"installing {' '.join(pkgs)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], check=False, timeout=300, env=env)
        run(["apt-get", "install", "-y", "-q", *pkgs], check=False, timeout=600, env=env)
    still = [t for t, _ in missing if shutil.which(t) is None]
    return still


def capability_problem(tag, features):
    """None if namespaces, veths, bridges and iptables work here; else why not. Fills features
    with what the kernel offers for lossy and slow links (netem, iptables statistic, tbf)."""
    if os.geteuid() != 0:
        return "not running as root"
    still = ensure_tools()
    if still:
        return f"tools missing after apt-get: {', '.join(still)}"
    ns = f"flot-{tag}-probe"
    try:
        p = run(["ip", "netns", "add", ns], check=False)
        if p.returncode != 0:
            return f"cannot create a network namespace: {p.stderr.strip()}"
        ex = ["ip", "netns", "exec", ns]
        p = run(ex + ["iptables", "-S"], check=False)
        if p.returncode != 0:
            return f"iptables does not work inside a namespace: {p.stderr.strip()}"
        run(ex + ["ip", "link", "set", "lo", "up"], check=False)
        p = run(["ip", "link", "add", f"flotv{tag}-p", "type", "veth", "peer", "name", "flotp",
                 "netns", ns], check=False)
        if p.returncode != 0:
            return f"cannot create a veth pair: {p.stderr.strip()}"
        p = run(["ip", "link", "add", f"flotb{tag}", "type", "bridge"], check=False)
        if p.returncode != 0:
            return f"cannot create a bridge: {p.stderr.strip()}"
        run(["ip", "link", "del", f"flotb{tag}"], check=False)
        features["netem"] = run(ex + ["tc", "qdisc", "add", "dev", "flotp", "root", "netem",
                                      "delay", "1ms"], check=False).returncode == 0
        run(ex + ["tc", "qdisc", "del", "dev", "flotp", "root"], check=False)
        features["tbf"] = run(ex + ["tc", "qdisc", "add", "dev", "flotp", "root", "tbf", "rate",
                                    "1mbit", "burst", "16kb", "latency", "100ms"],
                              check=False).returncode == 0
        features["statistic"] = run(ex + ["iptables", "-A", "OUTPUT", "-m", "statistic", "--mode",
                                          "random", "--probability", "0.1", "-j", "DROP"],
                                    check=False).returncode == 0
        return None
    finally:
        run(["ip", "netns", "del", ns], check=False)
        run(["ip", "link", "del", f"flotv{tag}-p"], check=False)


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

def cleanup_leftovers():
    """Removes namespaces and links of earlier runs (their chaos.py is gone)."""
    removed = []
    out = run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name) or re.match(r"^flot-(\d+)-probe$", name)
        if not m or pid_is_chaos(int(m.group(1))):
            continue
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
        removed.append(f"netns {name}" + (f" (killed {len(pids)} processes)" if pids else ""))
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = LINK_RE.match(name)
        if m and not pid_is_chaos(int(m.group(1))):
            run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    return removed


class Net:
    def __init__(self, tag, subnet):
        self.tag = tag
        self.subnet = subnet                   # "10.213.0"
        self.bridge = f"flotb{tag}"
        self.ns = [f"flot-{tag}-{i}" for i in range(3)]
        self.host = [f"flotv{tag}-{i}" for i in range(3)]   # root side, on the bridge
        self.inner = [f"flotn{tag}-{i}" for i in range(3)]  # inside namespace i
        self.ip = [f"{subnet}.{i + 1}" for i in range(3)]
        self.client_ip = f"{subnet}.254"
        self.created = False

    def check_subnet_free(self):
        out = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        out += run(["ip", "-4", "route", "show"], check=False).stdout
        if re.search(r"\b" + re.escape(self.subnet) + r"\.", out):
            raise RuntimeError(f"subnet {self.subnet}.0/24 is already in use here; pick another "
                               f"with --subnet")

    def setup(self):
        self.check_subnet_free()
        self.created = True
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.client_ip}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for i in range(3):
            ns = self.ns[i]
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", self.host[i], "type", "veth", "peer", "name", self.inner[i],
                 "netns", ns])
            run(["ip", "link", "set", self.host[i], "master", self.bridge])
            run(["ip", "link", "set", self.host[i], "up"])
            ex = ["ip", "netns", "exec", ns]
            run(ex + ["ip", "link", "set", "lo", "up"])
            run(ex + ["ip", "addr", "add", f"{self.ip[i]}/24", "dev", self.inner[i]])
            run(ex + ["ip", "link", "set", self.inner[i], "up"])
            run(ex + ["iptables", "-N", CHAIN])
            run(ex + ["iptables", "-I", "INPUT", "-j", CHAIN])
            run(ex + ["iptables", "-I", "OUTPUT", "-j", CHAIN])
            run(ex + ["iptables", "-N", LOSS])
            run(ex + ["iptables", "-I", "INPUT", "-j", LOSS])
            run(ex + ["iptables", "-I", "OUTPUT", "-j", LOSS])
        # Connectivity: every node reaches the others and the clients.
        deadline = time.time() + 10
        for i in range(3 if shutil.which("ping") else 0):
            for target in [self.ip[j] for j in range(3) if j != i] + [self.client_ip]:
                while True:
                    p = run(["ip", "netns", "exec", self.ns[i], "ping", "-c", "1", "-W", "1",
                             target], check=False)
                    if p.returncode == 0:
                        break
                    if time.time() > deadline:
                        raise RuntimeError(f"namespace {self.ns[i]} cannot reach {target}")
                    time.sleep(0.2)

    def ex(self, i):
        return ["ip", "netns", "exec", self.ns[i]]

    # Partitions: DROP in the FLOTCHAOS chain of both namespaces.
    def cut(self, i, j):
        for a, b in ((i, j), (j, i)):
            run(self.ex(a) + ["iptables", "-A", CHAIN, "-s", self.ip[b], "-j", "DROP"])
            run(self.ex(a) + ["iptables", "-A", CHAIN, "-d", self.ip[b], "-j", "DROP"])

    def cut_clients(self, i):
        run(self.ex(i) + ["iptables", "-A", CHAIN, "-s", self.client_ip, "-j", "DROP"])
        run(self.ex(i) + ["iptables", "-A", CHAIN, "-d", self.client_ip, "-j", "DROP"])

    def heal_partitions(self):
        for i in range(3):
            run(self.ex(i) + ["iptables", "-F", CHAIN], check=False)

    # Lossy or slow link of node i: tc on both ends of its veth (the egress of each side), or,
    # for loss without netem, iptables' statistic match in the namespace (both directions).
    def qdisc(self, i, params):
        run(self.ex(i) + ["tc", "qdisc", "replace", "dev", self.inner[i], "root"] + params)
        run(["tc", "qdisc", "replace", "dev", self.host[i], "root"] + params)

    def loss_rule(self, i, probability):
        run(self.ex(i) + ["iptables", "-A", LOSS, "-s", f"{self.subnet}.0/24", "-m", "statistic",
                          "--mode", "random", "--probability", f"{probability:.2f}", "-j", "DROP"])

    def clear_link(self, i):
        run(self.ex(i) + ["tc", "qdisc", "del", "dev", self.inner[i], "root"], check=False,
            quiet=True)
        run(["tc", "qdisc", "del", "dev", self.host[i], "root"], check=False, quiet=True)
        run(self.ex(i) + ["iptables", "-F", LOSS], check=False)

    def teardown(self):
        if not self.created:
            return []
        left = []
        for i in range(3):
            pids = run(["ip", "netns", "pids", self.ns[i]], check=False).stdout.split()
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            run(["tc", "qdisc", "del", "dev", self.host[i], "root"], check=False)
            run(["ip", "netns", "del", self.ns[i]], check=False)
            run(["ip", "link", "del", self.host[i]], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        # Verify.
        nss = run(["ip", "netns", "list"], check=False).stdout
        links = run(["ip", "-o", "link", "show"], check=False).stdout
        for n in self.ns:
            if re.search(rf"^{re.escape(n)}\b", nss, re.M):
                left.append(n)
        for l in self.host + [self.bridge]:
            if re.search(rf": {re.escape(l)}[@:]", links):
                left.append(l)
        self.created = False
        return left


# ----------------------------------------------------------------------------------------------
# The server processes
# ----------------------------------------------------------------------------------------------

class ProcessSet:
    """The server processes of a run, each under a key of its own (a node id; a (cluster,
    machine) pair), each with its own command line, data directory and log file: starting one
    (its log appended to), SIGKILL, SIGSTOP and SIGCONT, noticing the ones that exited on their
    own, and killing them all at the end. A subclass says what runs: command(key), fname(key)
    (the name of its data directory and, with ".log", of its log, in dirpath) and label(key)
    (what the events call it)."""

    def __init__(self, dirpath, keys):
        self.dir = dirpath
        self.keys = list(keys)
        self.procs = {k: None for k in self.keys}     # key -> Popen, None while not running
        self.stopped = {k: False for k in self.keys}
        self.starts = Counter()
        self.unexpected_exits = []                   # (key, exit status, time)

    def command(self, key):
        raise NotImplementedError

    def fname(self, key):
        raise NotImplementedError

    def label(self, key):
        raise NotImplementedError

    def data(self, key):
        return os.path.join(self.dir, self.fname(key))

    def start(self, key):
        assert self.procs[key] is None
        logf = open(os.path.join(self.dir, self.fname(key) + ".log"), "ab")
        self.starts[key] += 1
        logf.write(f"\n==== chaos.py: start #{self.starts[key]} at {time.time():.3f} ====\n".encode())
        logf.flush()
        # `ip netns exec` execs the command in place (no fork): the pid is the server's.
        self.procs[key] = subprocess.Popen(self.command(key), stdin=subprocess.DEVNULL, stdout=logf,
                                           stderr=logf, start_new_session=True,
                                           preexec_fn=die_with_parent)
        logf.close()
        self.stopped[key] = False

    def kill(self, key):
        p = self.procs[key]
        if p is None:
            return
        try:
            p.send_signal(signal.SIGKILL)
        except OSError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.procs[key] = None
        self.stopped[key] = False

    def stop(self, key):
        self.procs[key].send_signal(signal.SIGSTOP)
        self.stopped[key] = True

    def cont(self, key):
        if self.procs[key] is not None:
            try:
                self.procs[key].send_signal(signal.SIGCONT)
            except OSError:
                pass
        self.stopped[key] = False

    def up(self, key):
        return self.procs[key] is not None and not self.stopped[key]

    def poll_exits(self):
        """Processes that exited on their own (not killed by us): a finding. Returns their keys."""
        out = []
        for key, p in self.procs.items():
            if p is not None and p.poll() is not None:
                self.unexpected_exits.append((key, p.returncode, time.time()))
                self.procs[key] = None
                self.stopped[key] = False
                out.append(key)
        return out

    def start_missing(self):
        for key in self.keys:
            if self.procs[key] is None:
                self.start(key)

    def shutdown(self):
        for p in self.procs.values():
            if p is not None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGKILL)
                except OSError:
                    pass
        for key, p in self.procs.items():
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                self.procs[key] = None


class Cluster(ProcessSet):
    """The replicated store (--store kv): `flotilla kvraft serve` node i in namespace i, all on
    PORT, keyed by i; and what `flotilla kvraft status` says of them (the leader)."""

    def __init__(self, exe, net, dirpath, extra, grpc=False):
        super().__init__(dirpath, range(3))
        self.exe = exe
        self.net = net
        self.extra = extra
        self.peers = ",".join(f"{ip}:{PORT}" for ip in net.ip)
        # With grpc, node i also serves etcd's API at grpc[i] (--store etcd).
        self.grpc = [f"{ip}:{GRPC_PORT}" for ip in net.ip] if grpc else []

    def fname(self, i):
        return f"node-{i}"

    def label(self, i):
        return f"node {i}"

    def command(self, i):
        return self.net.ex(i) + [self.exe, "kvraft", "serve", "--id", str(i), "--peers", self.peers,
                                 "--data", self.data(i), "--name", f"chaos{self.net.tag}"] + self.extra + \
            (["--grpc", self.grpc[i], "--grpc-members", ",".join(self.grpc)] if self.grpc else [])

    def status(self):
        """[(id, role, term, commit, applied)] of the answering nodes."""
        p = run([self.exe, "kvraft", "status", "--cluster", self.peers], check=False, timeout=10)
        nodes = []
        for line in p.stdout.splitlines():
            m = STATUS_RE.match(line)
            if m:
                nodes.append((int(m.group(1)), m.group(3), int(m.group(4)), int(m.group(6)),
                              int(m.group(7))))
        return nodes

    def leader(self):
        nodes = self.status()
        if not nodes:
            return None
        top = max(n[2] for n in nodes)
        for n in nodes:
            if n[1] == "Leader" and n[2] == top:
                return n[0]
        return None

    def wait_leader(self, within):
        deadline = time.time() + within
        while time.time() < deadline:
            l = self.leader()
            if l is not None:
                return l
            time.sleep(0.2)
        return None


# ----------------------------------------------------------------------------------------------
# Clients: groups of back-to-back `kv bench` rounds, each round a fresh key prefix and history
# ----------------------------------------------------------------------------------------------

class ClientGroup(threading.Thread):
    def __init__(self, name, exe, peers, dirpath, total_seconds, round_seconds, bench_args,
                 children, bench=("kv", "bench", "--cluster")):
        super().__init__(daemon=True)
        self.name_ = name
        self.bench = list(bench)               # the bench command and its address option
        self.exe = exe
        self.peers = peers
        self.dir = dirpath
        self.total = total_seconds
        self.round = round_seconds
        self.bench_args = bench_args
        self.children = children               # shared list, for teardown
        self.rounds = []                       # (history path, returncode, stdout tail)
        self.hung = []
        self.abort = threading.Event()

    def run(self):
        end = time.time() + self.total
        n = 0
        while n < 1000:
            left = end - time.time()
            if left < 1:
                break
            secs = min(self.round, left)
            n += 1
            hist = os.path.join(self.dir, f"{self.name_}-{n:03d}.jsonl")
            cmd = [self.exe, *self.bench, self.peers, "--seconds", f"{secs:.1f}",
                   "--history", hist] + self.bench_args
            if self.abort.is_set():
                break
            outp = open(hist + ".out", "w")
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=outp, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=die_with_parent)
            outp.close()
            self.children.append(p)
            # A clerk gives up on one operation after 60 s, so a round ends by secs + ~70 s.
            try:
                rc = p.wait(timeout=secs + 120)
            except subprocess.TimeoutExpired:
                self.hung.append(hist)
                p.kill()
                rc = p.wait()
            with open(hist + ".out") as f:
                tail = f.read().strip().splitlines()[-2:]
            self.rounds.append((hist, rc, tail))


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def read_history(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def flotilla_check(exe, path, budget):
    p = run([exe, "check", "--budget", str(budget), path], check=False, timeout=budget + 120)
    first = (p.stdout.strip().splitlines() or [p.stderr.strip() or "no output"])[0]
    if p.returncode == 0 and first.startswith("linearizable"):
        return "ok", first
    if first.startswith("unknown"):
        return "unknown", first
    return "violation", p.stdout.strip()[:4000] + p.stderr.strip()[:2000]


def final_get(exe, peers, key):
    """(value or None if no key, error or None)."""
    p = run([exe, "kv", "get", "--cluster", peers, key], check=False, timeout=120)
    if p.returncode == 0:
        line = p.stdout.rstrip("\n")
        value, sep, _ = line.rpartition("\t(version ")
        if not sep:
            return None, f"unparsable output {line!r}"
        return value, None
    if "no key" in p.stderr:
        return None, None
    return None, (p.stderr.strip() or f"exit {p.returncode}")[-300:]


def etcdctl_get(endpoints, key, attempts=5):
    """(value or None if no key, error or None) by etcd's own client: a linearizable get,
    tried again a few times if it fails (at most attempts x (5 s + 1 s))."""
    env = dict(os.environ, ETCDCTL_API="3")
    err = None
    for attempt in range(attempts):
        try:
            p = run(["etcdctl", "--endpoints", endpoints, "--command-timeout=5s", "get", key,
                     "--print-value-only"], check=False, timeout=30, env=env)
        except subprocess.TimeoutExpired:
            err = "etcdctl get: no exit within 30 s"
            continue
        if p.returncode == 0:
            out = p.stdout
            if out == "":
                return None, None          # no such key: etcdctl prints nothing
            return out[:-1] if out.endswith("\n") else out, None
        err = (p.stderr.strip() or f"exit {p.returncode}")[-300:]
        time.sleep(1)
    return None, f"after {attempts} attempts: {err}"


def check_appends(recs, finals):
    """Append-only durability check. For every key: the final value must split into bench values;
    every acknowledged append's value appears in it exactly once; no value appears twice; no value
    appears that no client tried to append; and, for every acknowledged append a with old value
    o (what the store returned), the final value starts with o + value(a): appends only ever
    extend a value, so anything else means an acknowledged state was lost or rewritten."""
    problems = []
    by_key = defaultdict(list)
    for r in recs:
        if r["op"] == "append":
            by_key[r["key"]].append(r)
        elif r["op"] == "put":
            problems.append(f"{r['key']}: a put in an append-only history")
    for key, ops in by_key.items():
        final = finals.get(key) or ""
        tokens = [m.group(0) for m in TOKEN_RE.finditer(final)]
        if "".join(tokens) != final:
            problems.append(f"{key}: final value does not split into bench values: {final[:200]!r}")
        count = Counter(tokens)
        acked = {r["value"] for r in ops if r["return"] is not None}
        tried = {r["value"] for r in ops}
        for v in sorted(acked):
            if count[v] == 0:
                problems.append(f"{key}: LOST acknowledged append {v!r}")
        for v, c in count.items():
            if c > 1:
                problems.append(f"{key}: value {v!r} appears {c} times (applied more than once)")
            if v not in tried:
                problems.append(f"{key}: value {v!r} was never appended to this key")
        for r in ops:
            if r["return"] is not None and r.get("output") is not None:
                if not final.startswith(r["output"] + r["value"]):
                    problems.append(f"{key}: acknowledged append {r['value']!r} returned old value "
                                    f"{r['output'][-60:]!r} (len {len(r['output'])}), but the "
                                    f"final value does not start with old+value")
    return problems


def failure_kind(f):
    if f.startswith("HANG"):
        return "hang"
    if "append check" in f:
        return "lost/duplicated appends"
    if "final reads NOT" in f:
        return "not linearizable with final reads"
    if "NOT linearizable" in f:
        return "not linearizable"
    if "final read failed" in f:
        return "final read failed"
    if "exited on its own" in f:
        return "node exit"
    return "other"


# ----------------------------------------------------------------------------------------------
# The sharded store (--store shard): three machines, each running controller node i and node i
# of shard groups 100 and 101, every process on a port of its own at the machine's address.
# Kills and pauses hit single processes; partitions and lossy or slow links hit machines.
# ----------------------------------------------------------------------------------------------

GIDS = (100, 101)
SHARD_CLUSTERS = ("ctrl",) + GIDS                  # the three Raft clusters
SHARDS = 12
SH_CONFIG_RE = re.compile(r"^configuration (\d+)$")
SH_GROUP_RE = re.compile(r"^  group (\d+): shards \[([\d, ]*)\] servers (\S+)$")
SH_NODE_RE = re.compile(r"^  group (\d+) node (\d+) (\S+): (\w+) term (\d+) commit (\d+) applied "
                        r"(\d+) at configuration (\d+) shards \{(.*)\} keys (\d+)$")
SH_NOANSWER_RE = re.compile(r"^  group (\d+) (\S+): no answer")
SH_APPLIED_RE = re.compile(r"configuration (\d+)")


def other_gid(g):
    return GIDS[1] if g == GIDS[0] else GIDS[0]


class ShardStatus:
    """`flotilla shard status`, parsed: the latest configuration (num, gid -> shards) and what
    every node of the configured groups says of itself."""

    def __init__(self, rc, out):
        self.rc = rc
        self.num = None
        self.assign = {}                       # gid -> [shards]
        self.nodes = []                        # dicts
        self.silent = []                       # (gid, addr) that did not answer
        for line in out.splitlines():
            m = SH_CONFIG_RE.match(line)
            if m:
                self.num = int(m.group(1))
                continue
            m = SH_GROUP_RE.match(line)
            if m:
                self.assign[int(m.group(1))] = [int(x) for x in m.group(2).replace(",", " ").split()]
                continue
            m = SH_NODE_RE.match(line)
            if m:
                shards = {}
                for part in m.group(9).split(","):
                    if ":" in part:
                        k, v = part.split(":")
                        shards[int(k)] = v.strip()
                self.nodes.append({"gid": int(m.group(1)), "id": int(m.group(2)),
                                   "role": m.group(4), "term": int(m.group(5)),
                                   "commit": int(m.group(6)), "applied": int(m.group(7)),
                                   "config": int(m.group(8)), "shards": shards,
                                   "keys": int(m.group(10))})
                continue
            m = SH_NOANSWER_RE.match(line)
            if m:
                self.silent.append((int(m.group(1)), m.group(2)))

    def owner(self):
        """[gid of shard s] from the configuration, or None if not known."""
        if self.num is None:
            return None
        own = [0] * SHARDS
        for g, ss in self.assign.items():
            for s in ss:
                if 0 <= s < SHARDS:
                    own[s] = g
        return own

    def leader(self, gid):
        ns = [n for n in self.nodes if n["gid"] == gid]
        if not ns:
            return None
        top = max(n["term"] for n in ns)
        for n in ns:
            if n["role"] == "Leader" and n["term"] == top:
                return n["id"]
        return None

    def settled(self, gids=GIDS):
        """(True, "") when exactly the groups gids are configured, every node answers, is at
        the latest configuration and serves exactly the shards it gives its group, and each
        group's nodes agree on commit and applied index; else (False, why not)."""
        if self.num is None:
            return False, "no configuration (controller unreachable?)"
        if sorted(self.assign) != sorted(gids):
            return False, f"configuration {self.num} has groups {sorted(self.assign)}"
        if self.silent:
            return False, f"no answer from {self.silent}"
        for g in gids:
            ns = [n for n in self.nodes if n["gid"] == g]
            if len(ns) != 3:
                return False, f"group {g}: {len(ns)} nodes answered"
            want = {s: "Serving" for s in self.assign[g]}
            for n in ns:
                if n["config"] != self.num:
                    return False, f"group {g} node {n['id']} at configuration {n['config']} < {self.num}"
                if n["shards"] != want:
                    return False, f"group {g} node {n['id']} shards {n['shards']}, want {sorted(want)} serving"
            if len({(n["commit"], n["applied"]) for n in ns}) != 1:
                return False, f"group {g}: commit/applied differ: {[(n['commit'], n['applied']) for n in ns]}"
            if self.leader(g) is None:
                return False, f"group {g}: no leader"
        return True, ""


class ShardStore(ProcessSet):
    """The sharded store's nine processes, keyed (cluster, i): cluster "ctrl" (`flotilla
    shardctrler serve`) or a gid (`flotilla shardkv serve`), i the machine; each cluster on a
    port of its own. Also its status and its admin commands (join, leave, move)."""

    def __init__(self, exe, net, dirpath, extra):
        super().__init__(dirpath, [(c, i) for c in SHARD_CLUSTERS for i in range(3)])
        self.exe = exe
        self.net = net
        self.extra = extra
        self.port = {c: PORT + k for k, c in enumerate(SHARD_CLUSTERS)}
        self.members = {c: [f"{ip}:{self.port[c]}" for ip in net.ip] for c in SHARD_CLUSTERS}
        self.ctrl = ",".join(self.members["ctrl"])

    def label(self, key):
        c, i = key
        return f"controller node {i}" if c == "ctrl" else f"group {c} node {i}"

    def fname(self, key):
        c, i = key
        return f"ctrl-{i}" if c == "ctrl" else f"g{c}-{i}"

    def command(self, key):
        c, i = key
        if c == "ctrl":
            sub = ["shardctrler", "serve"]
        else:
            sub = ["shardkv", "serve", "--gid", str(c), "--ctrl", self.ctrl]
        return self.net.ex(i) + [self.exe] + sub + [
            "--id", str(i), "--peers", ",".join(self.members[c]), "--data", self.data(key),
            "--name", f"chaos{self.net.tag}-{c}"] + self.extra

    def status(self, timeout=15):
        p = run([self.exe, "shard", "status", "--ctrl", self.ctrl], check=False, timeout=timeout)
        return ShardStatus(p.returncode, p.stdout)

    def admin(self, words, timeout=40):
        """One `flotilla shard join|leave|move`: ("ok", configuration), ("refused", why) or
        ("timeout", why) -- the last when the outcome is unknown (it may still take effect)."""
        p = run([self.exe, "shard", *words, "--ctrl", self.ctrl], check=False, timeout=timeout)
        if p.returncode == 0:
            m = SH_APPLIED_RE.search(p.stdout)
            return "ok", int(m.group(1)) if m else None
        if "refused" in p.stderr:
            return "refused", p.stderr.strip()[-200:]
        return "timeout", (p.stderr.strip() or f"exit {p.returncode}")[-200:]


class StoreHang(Exception):
    """The store did not come up (the failure is already recorded)."""


class Mover(threading.Thread):
    """Reconfigures the store under load until `end`: it first joins group 101 (the store
    starts with group 100 alone, so the first rebalance happens under load), then at random
    intervals moves a random shard to the group that does not hold it, and now and then makes
    one group leave and, a few seconds later, join back. Commands whose outcome is unknown are retried. It never lets
    both groups be out at once, even through a timed-out `leave` that takes effect late: once a
    leave of group X timed out, only X may leave from then on (an acknowledged leave's earlier
    attempts are deduplicated by the controller; a timed-out one may still commit later)."""

    def __init__(self, store, seed, end, ev, abort):
        super().__init__(daemon=True)
        self.store = store
        self.rng = random.Random(seed * 1000003 + 11)
        self.end = end
        self.ev = ev
        self.abort = abort
        self.stats = Counter()
        self.joined = {GIDS[0]: True, GIDS[1]: False}
        self.leave_timed_out = {g: False for g in GIDS}
        self.rejoin_at = {GIDS[1]: time.time() + 2}
        self.owner = None
        self.last_num = None
        self.error = None

    def command(self, words, what, attempts=4):
        """Runs a command until it is acknowledged or refused (bounded); returns the verdict."""
        verdict = "timeout"
        for n in range(attempts):
            if self.abort.is_set():
                break
            verdict, detail = self.store.admin(words)
            if verdict == "ok":
                self.last_num = detail
                self.ev(f"mover: {what}: configuration {detail}" + (f" (attempt {n + 1})" if n else ""))
                return verdict
            if verdict == "refused":
                self.stats["refused"] += 1
                self.ev(f"mover: {what} refused: {detail}")
                return verdict
            self.stats["timed out (retried)"] += 1
            self.ev(f"mover: {what}: outcome unknown ({detail}); retrying")
            if time.time() > self.end + 30:
                break
        return verdict

    def refresh(self):
        st = self.store.status(timeout=12)
        own = st.owner()
        if own is not None:
            self.owner = own
            present = set(st.assign)
            for g in GIDS:
                if self.joined[g] and g not in present:
                    # A leave that timed out took effect late: join it back soon.
                    self.stats["late leave seen"] += 1
                    self.ev(f"mover: group {g} is not in configuration {st.num}: a timed-out "
                            f"leave took effect late; joining it back")
                    self.joined[g] = False
                    self.rejoin_at[g] = time.time()
        return st

    def join_group(self, g):
        servers = ",".join(self.store.members[g])
        v = self.command(["join", "--gid", str(g), "--servers", servers], f"join of group {g}")
        if v in ("ok", "refused"):
            self.stats["joins"] += 1 if v == "ok" else 0
            self.joined[g] = True
            self.rejoin_at.pop(g, None)
            return True
        return False

    def run(self):
        try:
            self.loop()
        except Exception as e:   # a bug of this script: reported, never silent
            self.error = f"{type(e).__name__}: {e}"

    def loop(self):
        n = 0
        while time.time() < self.end and n < 2000 and not self.abort.is_set():
            n += 1
            self.abort.wait(self.rng.uniform(0.2, 2.0))
            if time.time() >= self.end or self.abort.is_set():
                break
            now = time.time()
            due = [g for g, t in self.rejoin_at.items() if t <= now]
            if due:
                self.join_group(due[0])
                continue
            both = all(self.joined.values())
            if both and self.rng.random() < 0.1:
                allowed = [g for g in GIDS if not self.leave_timed_out[other_gid(g)]]
                g = self.rng.choice(allowed)
                st = self.refresh()
                if not all(self.joined.values()) or st.num is None:
                    continue
                v = self.command(["leave", "--gid", str(g)], f"leave of group {g}")
                if v != "ok":
                    self.leave_timed_out[g] = self.leave_timed_out[g] or v == "timeout"
                if v == "ok":
                    self.stats["leaves"] += 1
                # Out (or maybe out): join it back in a few seconds either way.
                self.joined[g] = False
                self.rejoin_at[g] = time.time() + self.rng.uniform(2, 6)
                continue
            if not both:
                self.stats["moves skipped (one group out)"] += 1
                continue
            self.refresh()
            s = self.rng.randrange(SHARDS)
            before = self.owner[s] if self.owner else None
            if before in GIDS:
                g = other_gid(before)
            else:
                g = self.rng.choice(GIDS)
            v = self.command(["move", "--shard", str(s), "--gid", str(g)],
                             f"move of shard {s} from group {before} to {g}")
            if v == "ok":
                self.stats["moves"] += 1
                if before != g:
                    self.stats["moves to another group"] += 1
                if self.owner:
                    self.owner[s] = g


def final_reads(exe, ctrl, wanted, budget, per_read):
    """{(history, key): (value, error)} for every wanted pair, read by 8 threads; a read
    takes at most per_read seconds, and none starts once budget seconds have passed."""
    out = {}
    lock = threading.Lock()
    queue = list(reversed(wanted))
    deadline = time.time() + budget

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop()
            if time.time() > deadline:
                res = (None, f"not read: the final reads' budget ({budget} s) was spent")
            else:
                p = run([exe, "shard", "get", "--ctrl", ctrl, item[1]], check=False,
                        timeout=per_read)
                if p.returncode == 0:
                    res = (p.stdout[:-1] if p.stdout.endswith("\n") else p.stdout, None)
                elif "ErrNoKey" in p.stderr:
                    res = (None, None)
                else:
                    res = (None, (p.stderr.strip() or f"exit {p.returncode}")[-300:])
            with lock:
                out[item] = res

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=budget + per_read + 60)
    for item in wanted:
        out.setdefault(item, (None, "not read: a reader thread did not finish"))
    return out


# ----------------------------------------------------------------------------------------------
# The two stores under test: what run_chaos and FaultLoop need to know of each
# ----------------------------------------------------------------------------------------------

def other_machines(a):
    return [j for j in range(3) if j != a]


class Store:
    """What differs between the stores under test, for run_chaos and FaultLoop: the processes
    (self.procs, a ProcessSet, made by create), how the store comes up and settles, which
    process a kill or stop hits and which machine a partition cuts off (some faults go for the
    leader of a Raft cluster), the final reads and the store's own summary lines. The texts:
    `what` (the run is "N s of <what>"), `machine` (what events call a namespace), `title_note`
    (in the summary's title), `evidence_prefix`; `kinds` (the fault kinds drawn), `bench` (the
    bench command and its address option; the address is self.address)."""

    what = "faults"
    machine = "node"
    title_note = ""
    evidence_prefix = ""
    heal_from_tick = False    # see KvStore
    bench_extra = []          # more bench flags, for both groups
    mixed_append_share = "0.5"   # the mixed group's writes: this share appends, the rest puts

    def __init__(self, args):
        self.args = args
        self.procs = None
        self.address = None

    def partition(self, kind, rng):
        """([(a, b)] machine pairs to cut apart, machine cut from the clients too or None,
        description), or None when the partition needs a leader and none is known."""
        m = self.machine
        if kind == "part-bridge":
            a = rng.randrange(3)
            b, c = other_machines(a)
            return [(b, c)], None, f"bridge: {m} {a} reaches {b} and {c}, {b} and {c} cut from each other"
        if kind == "part-full":
            a = rng.randrange(3)
            return [(a, j) for j in other_machines(a)], a, f"{m} {a} cut from everyone, clients included"
        one = self.isolate(kind, rng)
        if one is None:
            return None
        a, desc = one
        return [(a, j) for j in other_machines(a)], None, desc

    def isolate(self, kind, rng):
        """The other partition kinds (part-leader and the store's own): (the machine to cut off
        from the two others, description), or None when no leader is known."""
        raise NotImplementedError

    def extra_fault(self, loop, kind, rng):
        """A fault of this store's own, tried before the drawn kind; True if it was done."""
        return False

    def start_background(self, fault_end, ev, abort):
        """Threads that work on the store beside the clients, until fault_end."""

    def stop_background(self):
        pass

    def read_note(self, n_keys):
        return f"with finals of {n_keys} keys"


class KvStore(Store):
    """--store kv: three `kvraft serve` nodes, node i on machine i. Kills and pauses hit any
    node (half the time the leader), at most --max-down at once; partitions isolate the leader
    or a follower, bridge, or cut a node off from everyone; --inject wipe-on-restart adds the
    wipe combination. Up and healed: a leader is elected; settled: the replicas converge; the
    final reads: `flotilla kv get`, one at a time."""

    kinds = ["kill", "stop", "part-leader", "part-follower", "part-bridge", "part-full",
             "netem-loss", "netem-delay"]
    bench = ("kv", "bench", "--cluster")
    # A fault is undone its drawn delay after the tick that drew it (before any leader lookup),
    # not after it is in place as with the sharded store: both as they always were, so that a
    # seed keeps its schedule.
    heal_from_tick = True

    def __init__(self, args):
        super().__init__(args)
        self.converged = False

    def intro(self):
        return f"seed {self.args.seed}, {self.args.seconds:.0f} s of faults"

    def create(self, net, rundir, extra):
        """Makes the processes; returns what the network line adds."""
        self.procs = Cluster(self.args.exe, net, rundir, extra)
        self.address = self.procs.peers
        return ""

    def bring_up(self, ev, failures):
        for i in self.procs.keys:
            self.procs.start(i)
        leader = self.procs.wait_leader(30)
        if leader is None:
            failures.append("HANG: no leader within 30 s of the start")
            raise RuntimeError("no leader at the start")
        ev(f"cluster up, leader {leader}")

    def pick_process(self, rng, down):
        """(node to kill or stop, " (leader)" or "", suffix of the fault's count), or None when
        too many are down."""
        up = [i for i in self.procs.keys if self.procs.up(i) and i not in down]
        if len(down) >= self.args.max_down or not up:
            return None
        want_leader = rng.random() < 0.5
        target = rng.choice(up)
        if want_leader:
            l = self.procs.leader()
            if l in up:
                return l, " (leader)", ""
        return target, "", ""

    def partition(self, kind, rng):
        rng.random()   # drawn (and unused) since the first version: kept, so seeds keep their schedules
        return super().partition(kind, rng)

    def isolate(self, kind, rng):
        l = self.procs.leader()
        if kind == "part-leader":
            if l is None:
                return None
            return l, f"leader {l} cut from nodes {other_machines(l)} (clients still reach it)"
        f = rng.choice(other_machines(l))   # part-follower
        return f, f"follower {f} cut from {other_machines(f)} (majority side {other_machines(f)} keeps leader {l})"

    def extra_fault(self, loop, kind, rng):
        """--inject wipe-on-restart: the combination under which a wiped node loses acknowledged
        writes: F2 lags behind a partition while L and F1 commit; F1 restarts wiped; then L is
        cut off and F2 rejoins, so {F1 (empty), F2 (stale)} is a majority."""
        if not (self.args.inject == "wipe-on-restart" and kind == "kill" and not loop.down
                and not loop.partition_active and rng.random() < 0.5):
            return False
        l = self.procs.leader()
        if l is None:
            return False
        net, ev = loop.net, loop.ev
        f1, f2 = rng.sample(other_machines(l), 2)
        net.cut(f2, l)
        net.cut(f2, f1)
        ev(f"fault wipe-combo: follower {f2} cut off, lagging (leader {l}, follower {f1} commit alone)")
        time.sleep(1.5)
        self.procs.kill(f1)
        shutil.rmtree(self.procs.data(f1), ignore_errors=True)
        loop.faults["wipe (injected)"] += 1
        net.heal_partitions()
        net.cut(l, f1)
        net.cut(l, f2)
        self.procs.start(f1)
        loop.partition_active = True
        loop.faults["wipe-combo"] += 1
        ev(f"fault wipe-combo: node {f1} SIGKILLed, data wiped, restarted; leader {l} cut from "
           f"{f1} and {f2}, who may now elect the stale {f2}; heal in 4s")
        loop.later(4, "partition (wipe-combo)", loop.heal_partition)
        return True

    def after_heal(self, ev, failures):
        leader = self.procs.wait_leader(30)
        if leader is None:
            failures.append("HANG: no leader within 30 s after healing everything")
            ev("!! no leader 30 s after the heal")
        else:
            ev(f"healed, leader {leader}")

    def settle(self, ev, failures):
        """Replicas converge: after the load, every node reaches the same commit index."""
        deadline = time.time() + 30
        while time.time() < deadline:
            st = self.procs.status()
            if len(st) == 3 and len({n[3] for n in st}) == 1 and len({n[4] for n in st}) == 1:
                self.converged = True
                return
            time.sleep(0.5)
        failures.append(f"HANG: replicas did not converge within 30 s: {self.procs.status()}")

    def final_reads(self, wanted):
        return {item: final_get(self.args.exe, self.address, item[1]) for item in wanted}

    def read_note(self, n_keys):
        return "with finals"

    def summary(self):
        starts = [self.procs.starts[i] for i in self.procs.keys]
        return [f"node starts: {starts} (first start included); "
                f"unexpected node exits: {len(self.procs.unexpected_exits)}"]

    def settled_note(self):
        return f"replicas converged: {self.converged}"


class EtcdStore(KvStore):
    """--store etcd: KvStore's cluster, each node also serving etcd's v3 gRPC API, driven
    through it: `kv bench --etcd` clients (appends are Txn compare-and-set loops, a failed or
    unanswered request fails over to the next node for up to 60 s), the mixed group gets and
    appends only (a resent put could apply twice: etcd does not deduplicate), and the final
    reads by etcdctl. Faults, bring-up, healing and settling are KvStore's."""

    title_note = " (etcd API: Txn compare-and-set appends, etcdctl final reads)"
    evidence_prefix = "etcd-"
    bench = ("kv", "bench", "--etcd")
    bench_extra = ["--retry-for", "60"]
    mixed_append_share = "1"

    def intro(self):
        return "etcd API, " + super().intro()

    def create(self, net, rundir, extra):
        self.procs = Cluster(self.args.exe, net, rundir, extra, grpc=True)
        self.address = ",".join(self.procs.grpc)
        return f", etcd gRPC on :{GRPC_PORT}"

    def final_reads(self, wanted):
        return {item: etcdctl_get(self.address, item[1]) for item in wanted}


class ShardedStore(Store):
    """--store shard: a ShardStore (controller and groups 100 and 101, node i of each on machine
    i), group 100 alone at the start and a Mover reconfiguring it under load. Kills and pauses
    hit single processes (group nodes half the time their group's leader), at most --max-down of
    each Raft cluster at once; partitions and lossy or slow links hit machines (part-leader: the
    machine of a group's leader; part-machine: any). Up: group 100 joined and settled; healed:
    the mover done, both groups in the configuration; settled: every node answers, at the
    latest configuration, serving its shards; the final reads: `flotilla shard get`, 8 at a
    time within --final-read-budget."""

    what = "faults and shard moves"
    machine = "machine"
    title_note = " (sharded store)"
    evidence_prefix = "shard-"
    kinds = ["kill", "stop", "part-leader", "part-machine", "part-bridge", "part-full",
             "netem-loss", "netem-delay"]
    bench = ("shard", "bench", "--ctrl")

    def __init__(self, args):
        super().__init__(args)
        self.mover = None
        self.settled = (False, "not reached")
        self.final_status = None

    def intro(self):
        return (f"sharded store: seed {self.args.seed}, {self.args.seconds:.0f} s of faults and "
                f"shard moves")

    def create(self, net, rundir, extra):
        self.procs = ShardStore(self.args.exe, net, rundir, extra)
        self.address = self.procs.ctrl
        port = self.procs.port
        return f"; controller port {port['ctrl']}, group 100 port {port[100]}, group 101 port {port[101]}"

    def bring_up(self, ev, failures):
        store = self.procs
        for key in store.keys:
            store.start(key)
        # Group 100 alone first; the mover joins 101 once the clients run.
        g = GIDS[0]
        deadline = time.time() + 60
        while True:
            v, detail = store.admin(["join", "--gid", str(g), "--servers",
                                     ",".join(store.members[g])])
            if v == "ok":
                ev(f"group {g} joined: configuration {detail}")
                break
            if time.time() > deadline:
                failures.append(f"HANG: group {g} could not join within 60 s: {detail}")
                raise StoreHang()
            time.sleep(0.5)
        deadline = time.time() + 60
        while True:
            st = store.status()
            ok, why = st.settled(gids=(g,))
            if ok:
                break
            if time.time() > deadline:
                failures.append(f"HANG: the store did not settle within 60 s of the start: {why}")
                raise StoreHang()
            time.sleep(0.5)
        ev(f"store up: configuration {st.num}, group {g} shards {st.assign[g]} leader "
           f"{st.leader(g)}; group {GIDS[1]} joins under load")

    def start_background(self, fault_end, ev, abort):
        self.mover = Mover(self.procs, self.args.seed, fault_end, ev, abort)
        self.mover.start()

    def stop_background(self):
        if self.mover is not None and self.mover.is_alive():
            self.mover.join(timeout=45)

    def pick_process(self, rng, down):
        """(process to kill or stop, " (leader)" or "", " controller" or " group" for the
        fault's count), or None when every cluster, or the drawn one, has too many down."""
        free = [c for c in SHARD_CLUSTERS if sum(1 for k in down if k[0] == c) < self.args.max_down]
        if not free:
            return None
        c = rng.choice(free)
        up = [k for k in self.procs.keys if k[0] == c and self.procs.up(k) and k not in down]
        if not up:
            return None
        target = rng.choice(up)
        count = " controller" if c == "ctrl" else " group"
        if c != "ctrl" and rng.random() < 0.5:
            l = self.procs.status(timeout=8).leader(c)
            if l is not None and (c, l) in up:
                return (c, l), " (leader)", count
        return target, "", count

    def isolate(self, kind, rng):
        if kind == "part-leader":
            g = rng.choice(GIDS)
            l = self.procs.status(timeout=8).leader(g)
            if l is None:
                return None
            return l, (f"machine {l} (group {g}'s leader) cut from machines {other_machines(l)} "
                       f"(clients still reach it)")
        a = rng.randrange(3)   # part-machine
        return a, f"machine {a} cut from machines {other_machines(a)} (clients still reach it)"

    def after_heal(self, ev, failures):
        mover = self.mover
        mover.join(timeout=120)
        if mover.is_alive():
            failures.append("HANG: the mover's last command did not end within 120 s of the heal")
            mover.abort.set()
            mover.join(timeout=60)
        if mover.error:
            failures.append(f"chaos.py error in the mover: {mover.error}")
        # Both groups in the configuration again (a group may be out, or maybe out).
        join_deadline = time.time() + 60
        while time.time() < join_deadline:
            st = self.procs.status()
            missing = [g for g in GIDS if st.num is not None and g not in st.assign]
            if st.num is not None and not missing:
                break
            for g in missing:
                if mover.join_group(g):
                    ev(f"heal: group {g} joined back")
            time.sleep(0.5)
        else:
            failures.append("HANG: both groups not in the configuration 60 s after the heal")
        ev("healed")

    def settle(self, ev, failures):
        """Settled: every node answers, at the latest configuration, serving its shards."""
        settle_deadline = time.time() + 60
        while True:
            self.final_status = self.procs.status()
            self.settled = self.final_status.settled()
            if self.settled[0] or time.time() > settle_deadline:
                break
            time.sleep(0.5)
        st = self.final_status
        if self.settled[0]:
            ev(f"settled at configuration {st.num}: " +
               ", ".join(f"group {g} shards {st.assign[g]}" for g in GIDS))
        else:
            failures.append(f"HANG: the store did not settle within 60 s after the clients: "
                            f"{self.settled[1]}")
            ev(f"!! not settled: {self.settled[1]}")

    def final_reads(self, wanted):
        # Within a budget: a shard no group serves would hold each read for the clerk's 60 s.
        return final_reads(self.args.exe, self.address, wanted, self.args.final_read_budget,
                           20 if self.settled[0] else 10)

    def summary(self):
        ms = self.mover.stats
        parts = [f"{ms['moves']} shard moves acknowledged ({ms['moves to another group']} to "
                 f"the group not holding the shard), {ms['leaves']} leaves, {ms['joins']} joins "
                 f"(101's first one included)"]
        parts += [f"{k} {ms[k]}" for k in ("timed out (retried)", "refused", "late leave seen",
                                            "moves skipped (one group out)") if ms[k]]
        parts.append(f"configuration at the end: {self.final_status.num if self.final_status else None}")
        starts = self.procs.starts
        return ["reconfigurations: " + "; ".join(parts),
                "process starts: " + ", ".join(
                    f"{c if c == 'ctrl' else 'g' + str(c)} {[starts[(c, i)] for i in range(3)]}"
                    for c in SHARD_CLUSTERS) + f" (first start included); unexpected exits: "
                f"{len(self.procs.unexpected_exits)}"]

    def settled_note(self):
        return (f"settled (all nodes answer, latest configuration, every shard served, replicas "
                f"agree): {self.settled[0]}")


# ----------------------------------------------------------------------------------------------
# The fault loop and the run
# ----------------------------------------------------------------------------------------------

class FaultLoop:
    """The seeded fault schedule, the same for both stores: every 1-4 s a fault of a kind drawn
    from store.kinds -- SIGKILL and restart, or SIGSTOP and SIGCONT, of the process
    store.pick_process chooses; a partition of the machines (store.partition); a lossy or slow
    link of one machine -- each undone after a drawn delay. A process that exits on its own is a
    finding and is started again. heal_all undoes whatever is still in force."""

    def __init__(self, args, features, net, store, rng, ev, failures):
        self.args = args
        self.features = features
        self.net = net
        self.store = store
        self.procs = store.procs
        self.rng = rng
        self.ev = ev
        self.failures = failures
        self.faults = Counter()
        self.pending = []                  # [due time, description, callable]
        self.partition_active = False
        self.link_on = [False, False, False]
        self.down = set()                  # processes killed or stopped, until healed
        self.tick = None                   # when the current fault was drawn

    def later(self, seconds, what, fn, since=None):
        """Runs fn (an event "heal: what") seconds after since (default: now)."""
        self.pending.append([(since or time.time()) + seconds, what, fn])

    def undo_later(self, seconds, what, fn):
        """later, for a drawn fault: from its tick or from now, as store.heal_from_tick says."""
        self.later(seconds, what, fn, since=self.tick if self.store.heal_from_tick else None)

    def restart(self, key):
        if self.args.inject == "wipe-on-restart":
            shutil.rmtree(self.procs.data(key), ignore_errors=True)
            self.faults["wipe (injected)"] += 1
        self.procs.start(key)
        self.down.discard(key)

    def cont(self, key):
        self.procs.cont(key)
        self.down.discard(key)

    def heal_partition(self):
        self.net.heal_partitions()
        self.partition_active = False

    def heal_link(self, i):
        self.net.clear_link(i)
        self.link_on[i] = False

    def run(self, fault_end):
        rng = self.rng
        next_fault = time.time() + rng.uniform(1, 4)
        iterations = 0
        max_iterations = int(self.args.seconds * 40) + 1000
        while time.time() < fault_end and iterations < max_iterations:
            iterations += 1
            now = time.time()
            for item in sorted([p for p in self.pending if p[0] <= now], key=lambda p: p[0]):
                self.pending.remove(item)
                self.ev(f"heal: {item[1]}")
                item[2]()
            for key in self.procs.poll_exits():
                label = self.procs.label(key)
                self.failures.append(f"{label} exited on its own (exit status "
                                     f"{self.procs.unexpected_exits[-1][1]}); see its log")
                self.ev(f"!! {label} exited on its own; restarting it")
                self.procs.start(key)
            if now >= next_fault:
                self.tick = now
                next_fault = now + rng.uniform(1, 4)
                kind = rng.choice(self.store.kinds)
                delay = rng.uniform(0.5, 3)
                if self.store.extra_fault(self, kind, rng):
                    pass
                elif kind in ("kill", "stop"):
                    self.process_fault(kind, delay)
                elif kind.startswith("part-"):
                    self.partition(kind)
                else:
                    self.link_fault(kind)
            time.sleep(0.05)

    def process_fault(self, kind, delay):
        pick = self.store.pick_process(self.rng, self.down)
        if pick is None:
            self.faults["skipped (too many down)"] += 1
            return
        target, lead, count = pick
        label = self.procs.label(target)
        self.down.add(target)
        if kind == "kill":
            self.procs.kill(target)
            self.ev(f"fault kill: SIGKILL {label}{lead}, restart in {delay:.1f}s")
            self.undo_later(delay, f"restart {label}", lambda t=target: self.restart(t))
        else:
            self.procs.stop(target)
            self.ev(f"fault stop: SIGSTOP {label}{lead}, SIGCONT in {delay:.1f}s")
            self.undo_later(delay, f"SIGCONT {label}", lambda t=target: self.cont(t))
        self.faults[kind + count] += 1

    def partition(self, kind):
        if self.partition_active:
            self.faults["skipped (partition active)"] += 1
            return
        heal_in = self.rng.uniform(1, 5)
        plan = self.store.partition(kind, self.rng)
        if plan is None:
            self.faults["skipped (no leader known)"] += 1
            return
        cuts, no_clients, desc = plan
        for a, b in cuts:
            self.net.cut(a, b)
        if no_clients is not None:
            self.net.cut_clients(no_clients)
        self.partition_active = True
        self.faults[kind] += 1
        self.ev(f"fault {kind}: {desc}, heal in {heal_in:.1f}s")
        self.undo_later(heal_in, f"partition ({kind})", self.heal_partition)

    def link_fault(self, kind):
        rng, net, m = self.rng, self.net, self.store.machine
        free = [i for i in range(3) if not self.link_on[i]]
        if not free:
            self.faults["skipped (netem everywhere)"] += 1
            return
        i = rng.choice(free)
        heal_in = rng.uniform(2, 8)
        if kind == "netem-loss":
            pct = rng.randint(10, 30)
            if self.features.get("netem"):
                net.qdisc(i, ["netem", "loss", f"{pct}%"])
                how = f"netem loss {pct}% on both ends of its veth"
            else:
                kind = "loss-iptables"
                net.loss_rule(i, pct / 100)
                how = f"iptables statistic: drop {pct}% of its packets, both ways"
        else:
            d = rng.randint(20, 100)
            if self.features.get("netem"):
                j = rng.randint(5, max(5, d // 2))
                net.qdisc(i, ["netem", "delay", f"{d}ms", f"{j}ms", "distribution", "normal"])
                how = f"netem delay {d}ms jitter {j}ms on both ends of its veth"
            else:
                kind = "slow-link-tbf"
                rate = rng.choice([64, 128, 256, 512])
                net.qdisc(i, ["tbf", "rate", f"{rate}kbit", "burst", "4kb", "latency", f"{d * 4}ms"])
                how = (f"tbf rate {rate}kbit (queueing delay up to {d * 4}ms, tail drops) on both "
                       f"ends of its veth")
        self.link_on[i] = True
        self.faults[kind] += 1
        self.ev(f"fault {kind}: {m} {i}: {how}, remove in {heal_in:.1f}s")
        self.undo_later(heal_in, f"link fault off {m} {i}", lambda t=i: self.heal_link(t))

    def heal_all(self):
        """Undoes every fault still in force: the pending heals, then every partition and link
        fault, SIGCONT to all; processes found exited on their own are findings; all run again."""
        for item in sorted(self.pending, key=lambda p: p[0]):
            item[2]()
        self.pending.clear()
        self.net.heal_partitions()
        for i in range(3):
            self.net.clear_link(i)
        for key in self.procs.keys:
            self.procs.cont(key)
        for key in self.procs.poll_exits():
            self.failures.append(f"{self.procs.label(key)} exited on its own after the faults")
        self.procs.start_missing()


def check_rounds(args, groups, got, ev, failures, note):
    """Every round's history checked alone and with the final reads (got) appended, and the
    append group's appends against the final values. Returns (totals, verdicts, lost,
    read_errors). Keys whose final read failed are reported and left out of the checks of the
    others."""
    totals = Counter()
    verdicts = Counter()
    lost = []
    read_errors = []
    for g in groups:
        for hist, rc, tail in g.rounds:
            name = os.path.basename(hist)
            if not os.path.exists(hist):
                failures.append(f"{name}: bench exited {rc} without a history: {tail}")
                continue
            recs = read_history(hist)
            for r in recs:
                totals[(g.name_, r["op"], "ack" if r["return"] is not None else "unknown")] += 1
            verdict, text = flotilla_check(args.exe, hist, args.check_budget)
            verdicts[("history", verdict)] += 1
            if verdict == "violation":
                failures.append(f"{name}: NOT linearizable: {text[:1500]}")
            elif verdict == "unknown":
                ev(f"{name}: checker undecided: {text}")
            keys = sorted({r["key"] for r in recs})
            finals = {}
            for k in keys:
                v, err = got[(hist, k)]
                if err:
                    read_errors.append(f"{name} {k}: {err}")
                else:
                    finals[k] = v
            with open(hist + ".finals.json", "w") as f:
                json.dump(finals, f)
            keys = [k for k in keys if k in finals]
            if not keys:
                continue
            # The history with the final reads appended (after every return) must still be
            # linearizable: a lost or rewritten write contradicts the final reads.
            top = max([r["call"] for r in recs] + [r["return"] or 0 for r in recs] + [0])
            ext = hist.replace(".jsonl", ".with-finals.jsonl")
            with open(ext, "w") as f:
                for r in recs:
                    f.write(json.dumps(r) + "\n")
                for n, k in enumerate(keys):
                    call = top + 1000 + 2 * n
                    f.write(json.dumps({"client": 100000 + n, "op": "get", "key": k,
                                        "value": "", "output": finals[k] or "",
                                        "call": call, "return": call + 1}) + "\n")
            verdict2, text2 = flotilla_check(args.exe, ext, args.check_budget)
            verdicts[("with-finals", verdict2)] += 1
            if verdict2 == "violation":
                failures.append(f"{name}: history + final reads NOT linearizable "
                                f"(an acknowledged write lost or changed): {text2[:1500]}")
            elif verdict2 == "unknown":
                ev(f"{os.path.basename(ext)}: checker undecided: {text2}")
            if g.name_ == "append":
                for p in check_appends([r for r in recs if r["key"] in finals], finals):
                    lost.append(f"{name} {p}")
            ev(f"checked {name}: {len(recs)} ops, {verdict}, {note(len(keys))} {verdict2}")
    for e in read_errors:
        failures.append(f"final read failed: {e}")
    for l in lost:
        failures.append(f"append check: {l}")
    return totals, verdicts, lost, read_errors


def run_chaos(args, features, tag, store):
    """One run against store (a KvStore or a ShardedStore): the network, the processes, the
    client groups, the fault loop (and the store's background threads), healing, settling, the
    checks and the summary; teardown whatever happens. Returns the exit status."""
    rng = random.Random(args.seed)
    log(f"{store.intro()}, inject={args.inject}, exe {args.exe}")
    log("link faults: " + ("netem loss and delay" if features.get("netem") else
                           "no netem in this kernel: loss with iptables statistic, slow links with tbf"
                           if features.get("statistic") and features.get("tbf") else
                           f"limited ({features})"))
    for old in os.listdir(tempfile.gettempdir()):   # run dirs of runs killed by SIGKILL
        m = re.match(r"^flotilla-chaos-(\d+)-", old)
        if m and not pid_is_chaos(int(m.group(1))):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), old), ignore_errors=True)
            log(f"removed leftover run directory {old}")
    rundir = tempfile.mkdtemp(prefix=f"flotilla-chaos-{tag}-")
    net = Net(tag, args.subnet)
    children = []
    groups = []
    tearing = {"down": False}
    failures = []          # strings: violations and hangs
    abort = threading.Event()
    events = open(os.path.join(rundir, "events.log"), "w")
    ev_lock = threading.Lock()

    def ev(msg):
        t = time.time() - t0
        with ev_lock:
            events.write(f"{t:8.3f} {msg}\n")
            events.flush()
            log(f"t={t:6.1f}s {msg}")

    def on_signal(signum, frame):
        if not tearing["down"]:
            raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    t0 = time.time()
    loop = None
    summary_lines = []
    exit_code = 0
    try:
        net.setup()
        extra = ["--segment-bytes", str(args.segment_bytes),
                 "--max-raft-state", str(args.max_raft_state)]
        ports = store.create(net, rundir, extra)
        log(f"network: bridge {net.bridge} {net.client_ip}/24, {store.machine}s {', '.join(net.ip)} "
            f"in {', '.join(net.ns)}{ports}; run dir {rundir}")
        store.bring_up(ev, failures)

        total = args.seconds + args.settle
        groups.append(ClientGroup("mixed", args.exe, store.address, rundir, total, args.round_seconds,
                                  ["--clients", str(args.clients), "--keys", str(args.mixed_keys),
                                   "--append-share", store.mixed_append_share, "--get-share", "0.5"]
                                  + store.bench_extra, children,
                                  bench=store.bench))
        if args.append_clients > 0:
            groups.append(ClientGroup("append", args.exe, store.address, rundir, total,
                                      args.round_seconds,
                                      ["--clients", str(args.append_clients), "--keys",
                                       str(args.append_keys), "--append-share", "1",
                                       "--get-share", "0.2", "--value-size", "8"] + store.bench_extra,
                                      children,
                                      bench=store.bench))
        for g in groups:
            g.start()
        fault_end = time.time() + args.seconds
        store.start_background(fault_end, ev, abort)

        loop = FaultLoop(args, features, net, store, rng, ev, failures)
        loop.run(fault_end)

        ev("fault loop over: healing everything")
        loop.heal_all()
        store.after_heal(ev, failures)

        # ---------------- wait for the clients ----------------
        deadline = time.time() + args.settle + args.round_seconds + 300
        for g in groups:
            g.join(timeout=max(1, deadline - time.time()))
            if g.is_alive():
                failures.append(f"HANG: client group {g.name_} still running past its bound")
                g.abort.set()
                for p in children:
                    if p.poll() is None:
                        p.kill()
                g.join(timeout=30)
            for h in g.hung:
                failures.append(f"HANG: bench round {h} did not finish within seconds+120 s")
        ev("clients done")
        for key in store.procs.poll_exits():
            failures.append(f"{store.procs.label(key)} exited on its own after the faults")

        store.settle(ev, failures)

        # ---------------- checks: the final reads of every round's keys first ----------------
        wanted = []
        for g in groups:
            for hist, rc, tail in g.rounds:
                if os.path.exists(hist):
                    wanted += [(hist, k) for k in sorted({r["key"] for r in read_history(hist)})]
        got = store.final_reads(wanted)
        ev(f"final reads: {len(wanted)} keys, {sum(1 for v in got.values() if v[1] is None)} read")
        totals, verdicts, lost, read_errors = check_rounds(args, groups, got, ev, failures,
                                                           store.read_note)

        # ---------------- summary ----------------
        s = summary_lines
        s.append(f"=== flotilla chaos summary{store.title_note}: seed {args.seed}, "
                 f"{args.seconds:.0f} s of {store.what}, inject={args.inject} ===")
        for g in groups:
            gname = g.name_
            ack = sum(v for (gn, op, st), v in totals.items() if gn == gname and st == "ack")
            unk = sum(v for (gn, op, st), v in totals.items() if gn == gname and st == "unknown")
            per = ", ".join(f"{op} {totals[(gname, op, 'ack')]}/{totals[(gname, op, 'unknown')]}"
                            for op in ("get", "put", "append")
                            if totals[(gname, op, 'ack')] + totals[(gname, op, 'unknown')])
            s.append(f"ops [{gname}] {len(g.rounds)} bench rounds: {ack} acknowledged, {unk} unknown "
                     f"(ack/unknown: {per})")
        s.append("faults: " + (", ".join(f"{k} {v}" for k, v in sorted(loop.faults.items())) or "none"))
        s += store.summary()
        s.append("linearizability: " + ", ".join(f"{a} {b}: {v}" for (a, b), v in sorted(verdicts.items())))
        s.append(f"lost/duplicated acknowledged appends (append group): {len(lost)}; "
                 f"final reads failed: {len(read_errors)}; {store.settled_note()}")
        cats = Counter(failure_kind(f) for f in failures)
        s.append(f"violations and hangs: {len(failures)}" +
                 (" (" + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())) + ")" if cats else ""))
        shown = Counter()
        for f in failures:
            k = failure_kind(f)
            shown[k] += 1
            if shown[k] <= 3:
                s.append("  - " + f.replace("\n", "\n    ")[:900])
        if failures:
            with open(os.path.join(rundir, "failures.txt"), "w") as fh:
                fh.write("\n".join(failures) + "\n")
    except StoreHang:
        summary_lines.append("the store did not come up: " + "; ".join(failures))
    except KeyboardInterrupt as e:
        failures.append(f"interrupted ({e})")
        summary_lines.append(f"interrupted ({e}); tearing down")
        exit_code = 130
    except Exception as e:  # setup trouble or a bug of this script
        failures.append(f"chaos.py error: {type(e).__name__}: {e}")
        summary_lines.append(f"chaos.py error: {type(e).__name__}: {e}")
        exit_code = 3
    finally:
        tearing["down"] = True
        abort.set()
        for g in groups:
            g.abort.set()
        for attempt in range(2):
            for p in list(children):
                if p.poll() is None:
                    try:
                        p.kill()
                        p.wait(timeout=10)
                    except Exception:
                        pass
            for g in groups:
                if g.is_alive():
                    g.join(timeout=5)
        store.stop_background()
        if store.procs is not None:
            store.procs.shutdown()
        left = net.teardown()
        events.close()
        if left:
            summary_lines.append(f"WARNING: could not remove {left}")
        else:
            summary_lines.append("teardown: namespaces, veths, bridge, rules and qdiscs removed")
        real = [f for f in failures if not f.startswith("interrupted") and not f.startswith("chaos.py error")]
        if real:
            dest = os.path.join(args.evidence, f"{store.evidence_prefix}seed{args.seed}-{args.inject}-"
                                               f"{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(dest, exist_ok=True)
            for name in os.listdir(rundir):
                src = os.path.join(rundir, name)
                if os.path.isfile(src):
                    shutil.copy2(src, dest)
            with open(os.path.join(dest, "summary.txt"), "w") as f:
                f.write("\n".join(summary_lines) + "\n")
                f.write(f"command: {' '.join(sys.argv)}\n")
            summary_lines.append(f"evidence (node logs, histories, final values, events) kept in {dest}")
        if args.keep:
            summary_lines.append(f"run directory kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
        print("\n".join(summary_lines), flush=True)
    if exit_code:
        return exit_code
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120, help="length of the fault loop (max 3600)")
    ap.add_argument("--seed", type=int, default=None, help="schedule seed (random if not given)")
    ap.add_argument("--exe", default=os.environ.get(
        "FLOTILLA", str(Path(__file__).resolve().parent.parent / "target" / "release" / "flotilla")))
    ap.add_argument("--subnet", default="10.213.0", help="a private /24, first three octets")
    ap.add_argument("--allow-skip", action="store_true",
                    help="exit 0 with a SKIPPED line when namespaces cannot be made here")
    ap.add_argument("--inject", choices=["none", "wipe-on-restart"], default="none",
                    help="break something on purpose to see that the checks notice")
    ap.add_argument("--round-seconds", type=float, default=15,
                    help="each bench process runs this long (a fresh key prefix each)")
    ap.add_argument("--settle", type=float, default=10,
                    help="the clients go on this long after the faults are healed")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--append-clients", type=int, default=4,
                    help="clients of the append-only group (0: none)")
    ap.add_argument("--append-keys", type=int, default=50)
    ap.add_argument("--max-down", type=int, default=1,
                    help="at most this many nodes killed or stopped at once (with --store shard: "
                         "in each Raft cluster, controller and groups)")
    ap.add_argument("--store", choices=["kv", "shard", "etcd"], default="kv",
                    help="kv: the replicated store (kvraft serve); shard: the sharded store "
                         "(a controller and groups 100, 101 on the three machines, shards moved "
                         "under load); etcd: kv's cluster driven through etcd's gRPC API")
    ap.add_argument("--mixed-keys", type=int, default=None,
                    help="keys of the mixed group's rounds (default 20; 36 with --store shard)")
    ap.add_argument("--segment-bytes", type=int, default=1 << 20)
    ap.add_argument("--max-raft-state", type=int, default=None,
                    help="snapshot threshold of every node (default 4 MiB; 1 MiB with --store shard)")
    ap.add_argument("--check-budget", type=int, default=120)
    ap.add_argument("--final-read-budget", type=int, default=120,
                    help="--store shard: seconds for all the final reads")
    ap.add_argument("--evidence", default="/tmp/chaos-evidence")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    args.seconds = max(1.0, min(args.seconds, 3600.0))
    if args.max_raft_state is None:
        args.max_raft_state = (1 << 20) if args.store == "shard" else (4 << 20)
    if args.mixed_keys is None:
        args.mixed_keys = 36 if args.store == "shard" else 20
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    tag = str(os.getpid())

    if not os.access(args.exe, os.X_OK):
        print(f"flotilla executable not found: {args.exe} (build it, or give --exe)")
        return 2

    features = {}
    problem = capability_problem(tag, features)
    if problem:
        if args.allow_skip:
            print(f"SKIPPED: chaos test needs network namespaces: {problem}")
            return 0
        print(f"cannot run: {problem} (give --allow-skip to skip instead)")
        return 2

    removed = cleanup_leftovers()
    for r in removed:
        log(f"removed leftover of an earlier run: {r}")

    store = {"shard": ShardedStore, "etcd": EtcdStore, "kv": KvStore}[args.store](args)
    if args.store == "etcd" and not shutil.which("etcdctl"):
        print("--store etcd needs etcd's etcdctl (the final reads) on PATH")
        return 2
    return run_chaos(args, features, tag, store)


if __name__ == "__main__":
    sys.exit(main())
