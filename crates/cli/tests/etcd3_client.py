#!/usr/bin/env python3
"""A second etcd client, written by other people in another language: Python's etcd3
package (0.12; Debian python3-etcd3) runs its own operations against a fresh etcd v3
endpoint and checks every answer. Exit 0 if every check passed, 1 if any failed (each
failure printed), 2 if it could not run at all.

    etcd3_client.py --members N HOST:PORT[,HOST:PORT...]

Most operations go to the first endpoint; writes made through one endpoint are read back
through each of the others, and every endpoint is asked for the members and its status.
It deletes what an earlier run left under py/ first, and expects no particular revision:
the revisions it checks are those the server's own answers gave.

Run by crates/cli/tests/etcd_python.rs against a real etcd (so the checks are known to
be right) and against a Flotilla cluster.
"""

import argparse
import os
import queue
import sys
import threading
import time
import traceback

# etcd3 0.12's generated modules predate protobuf 4's C implementation; the pure-Python
# one reads them with any protobuf version (Debian's 3.21 reads them either way).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

try:
    import grpc
    import etcd3
    import etcd3.etcdrpc as etcdrpc
    from etcd3.events import DeleteEvent, PutEvent
except ImportError as e:  # the Rust test installs python3-etcd3; say what is missing
    print(f"cannot import etcd3 (Debian package python3-etcd3): {e}", file=sys.stderr)
    sys.exit(2)

WAIT = 15.0  # seconds: the bound on any one wait for an event or an expiry

failures = []


def check(name):
    """Runs the decorated function as one named check, recording any failure."""

    def run(f):
        started = time.monotonic()
        try:
            f()
            print(f"ok   {name} ({time.monotonic() - started:.2f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
        return f

    return run


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def true(cond, what):
    if not cond:
        raise AssertionError(what)


def rpc_code(f):
    """The gRPC status code that f() fails with (None if it succeeds)."""
    try:
        f()
    except grpc.RpcError as e:
        return e.code()
    return None


def wait_until(cond, what, bound=WAIT):
    deadline = time.monotonic() + bound
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound}s")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoints", help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--members", type=int, required=True)
    args = parser.parse_args()
    endpoints = args.endpoints.split(",")

    def connect(endpoint):
        host, port = endpoint.rsplit(":", 1)
        return etcd3.client(host=host, port=int(port), timeout=10)

    clients = [connect(e) for e in endpoints]
    c = clients[0]
    # A cluster just started may have no leader yet: the first request is retried
    # (bounded) until it is answered. It deletes what an earlier run left, if any.
    deadline = time.monotonic() + 30
    while True:
        try:
            c.delete_prefix("py/")
            break
        except Exception as e:  # noqa: BLE001 - unavailable, timed out: tried again
            if time.monotonic() > deadline:
                print(f"no answer from {endpoints[0]} within 30s: {e!r}")
                return 2
            time.sleep(0.1)

    @check("put and get: value, create/mod revision, version from the put's header")
    def _():
        r1 = c.put("py/a", "1").header.revision
        value, meta = c.get("py/a")
        eq(value, b"1", "value")
        eq(meta.key, b"py/a", "key")
        eq((meta.create_revision, meta.mod_revision, meta.version), (r1, r1, 1), "kv")
        r2 = c.put("py/a", "2", prev_kv=True)
        eq(r2.header.revision, r1 + 1, "the next revision")
        eq(r2.prev_kv.value, b"1", "prev_kv")
        eq(r2.prev_kv.mod_revision, r1, "prev_kv's mod revision")
        value, meta = c.get("py/a")
        eq(value, b"2", "value")
        eq((meta.create_revision, meta.mod_revision, meta.version), (r1, r1 + 1, 2), "kv")
        eq(c.get("py/missing"), (None, None), "an absent key")
        eq(c.get("py/a", serializable=True)[0], b"2", "a serializable read")

    @check("a write through one endpoint is read through every other")
    def _():
        for i, writer in enumerate(clients):
            rev = writer.put("py/everywhere", f"from {i}").header.revision
            for j, reader in enumerate(clients):
                value, meta = reader.get("py/everywhere")
                eq(value, f"from {i}".encode(), f"written via {i}, read via {j}")
                eq(meta.mod_revision, rev, f"mod revision via {j}")

    @check("get_prefix, sorted both ways, keys only; get_range; get_all")
    def _():
        for k, v in [("py/p/1", "z"), ("py/p/3", "x"), ("py/p/2", "y")]:
            c.put(k, v)
        got = [(m.key, v) for v, m in c.get_prefix("py/p/")]
        eq(got, [(b"py/p/1", b"z"), (b"py/p/2", b"y"), (b"py/p/3", b"x")], "by key")
        got = [m.key for _, m in c.get_prefix("py/p/", sort_order="descend")]
        eq(got, [b"py/p/3", b"py/p/2", b"py/p/1"], "descending")
        got = [v for v, _ in c.get_prefix("py/p/", sort_order="ascend", sort_target="value")]
        eq(got, [b"x", b"y", b"z"], "by value")
        got = [(m.key, v) for v, m in c.get_prefix("py/p/", keys_only=True)]
        eq(got, [(b"py/p/1", b""), (b"py/p/2", b""), (b"py/p/3", b"")], "keys only")
        got = [m.key for _, m in c.get_range("py/p/1", "py/p/3")]
        eq(got, [b"py/p/1", b"py/p/2"], "[py/p/1, py/p/3)")
        keys = [m.key for _, m in c.get_all()]
        true(b"py/p/2" in keys and b"py/a" in keys, f"get_all: {keys}")
        eq(c.get_prefix_response("py/p/").count, 3, "count")

    @check("delete one key, with prev_kv, and a prefix")
    def _():
        eq(c.delete("py/p/2"), True, "deleted")
        eq(c.delete("py/p/2"), False, "nothing left to delete")
        r = c.delete("py/p/3", prev_kv=True, return_response=True)
        eq((r.deleted, [kv.value for kv in r.prev_kvs]), (1, [b"x"]), "prev_kv")
        for k in ["py/q/1", "py/q/2", "py/q/3"]:
            c.put(k, "v")
        before = c.get_prefix_response("py/q/").header.revision
        r = c.delete_prefix("py/q/")
        eq(r.deleted, 3, "deleted by prefix")
        eq(r.header.revision, before + 1, "one revision for the whole range")
        eq(list(c.get_prefix("py/q/")), [], "the prefix is empty")

    @check("transactions: value, version, create and mod compares, both branches")
    def _():
        t = c.transactions
        rev = c.put("py/t", "v1").header.revision
        ok, responses = c.transaction(
            compare=[t.value("py/t") == "v1", t.version("py/t") == 1,
                     t.create("py/t") == rev, t.mod("py/t") < rev + 1],
            success=[t.put("py/t", "v2"), t.get("py/t")],
            failure=[t.put("py/t", "wrong")],
        )
        eq(ok, True, "succeeded")
        eq(len(responses), 2, "two responses")
        eq(responses[0].response_put.header.revision, rev + 1, "the put's revision")
        (value, meta), = responses[1]
        eq((value, meta.mod_revision, meta.version), (b"v2", rev + 1, 2), "read in the txn")
        ok, responses = c.transaction(
            compare=[t.value("py/t") == "v1"],
            success=[t.put("py/t", "wrong")],
            failure=[t.put("py/t", "v3"), t.get("py/t"), t.delete("py/u")],
        )
        eq(ok, False, "failed")
        eq(responses[1][0][0], b"v3", "the failure branch ran")
        eq(c.get("py/t")[0], b"v3", "the failure branch's put")
        ok, _ = c.transaction(compare=[t.version("py/t") > 5], success=[], failure=[])
        eq(ok, False, "version > 5")
        ok, _ = c.transaction(compare=[t.create("py/absent") == 0], success=[], failure=[])
        eq(ok, True, "an absent key's create revision is 0")
        ok, _ = c.transaction(compare=[t.value("py/t") != "v3"], success=[], failure=[])
        eq(ok, False, "!=")
        eq(c.replace("py/t", "v3", "v4"), True, "replace")
        eq(c.replace("py/t", "v3", "v5"), False, "replace of a changed value")
        eq(c.get("py/t")[0], b"v4", "after the replaces")
        eq(c.put_if_not_exists("py/t", "v6"), False, "put_if_not_exists on a key")
        eq(c.put_if_not_exists("py/new", "n"), True, "put_if_not_exists")

    @check("a lock (a lease and a create-revision compare): held, then released")
    def _():
        # (A contended acquire retries through tenacity, whose newer versions etcd3 0.12's
        # retry callback does not fit: the library's bug, so not exercised here.)
        lock = c.lock("py-lock", ttl=10)
        true(lock.acquire(timeout=5), "acquired")
        true(lock.is_acquired(), "held")
        (value, meta), = c.get_prefix("/locks/py-lock")
        eq(value, lock.uuid, "the holder's token under /locks/")
        true(meta.lease_id != 0, "on a lease")
        true(lock.release(), "released")
        true(not lock.is_acquired(), "not held after the release")
        eq(list(c.get_prefix("/locks/py-lock")), [], "the lock key gone")
        true(not lock.release(), "a second release finds nothing")

    @check("leases: grant, keys attached, time to live, refresh, revoke")
    def _():
        lease = c.lease(60)
        true(lease.id != 0, "an id")
        eq(lease.ttl, 60, "the granted TTL")
        c.put("py/l/1", "v", lease=lease)
        c.put("py/l/2", "v", lease=lease.id)
        eq(c.get("py/l/1")[1].lease_id, lease.id, "the key's lease")
        info = c.get_lease_info(lease.id)
        eq(info.grantedTTL, 60, "grantedTTL")
        true(55 <= info.TTL <= 60, f"TTL left {info.TTL}")
        eq(sorted(info.keys), [b"py/l/1", b"py/l/2"], "attached keys")
        refreshed = lease.refresh()
        eq([r.ID for r in refreshed], [lease.id], "keep-alive answer's id")
        eq(refreshed[0].TTL, 60, "keep-alive answer's TTL")
        # Through another endpoint too.
        eq(list(clients[-1].refresh_lease(lease.id))[0].TTL, 60, "refreshed elsewhere")
        lease.revoke()
        eq(list(c.get_prefix("py/l/")), [], "a revoked lease's keys are deleted")
        eq(c.get_lease_info(lease.id).TTL, -1, "a revoked lease's TTL")
        eq(rpc_code(lambda: c.revoke_lease(lease.id)), grpc.StatusCode.NOT_FOUND,
           "revoking it again")
        eq(rpc_code(lambda: c.put("py/l/3", "v", lease=0x1234abcd)),
           grpc.StatusCode.NOT_FOUND, "a put with an unknown lease")

    @check("a revoked lease's id is not granted again")
    def _():
        # etcd's ids are unique over time: a client still holding a revoked lease's id must
        # not be keeping someone else's lease alive with it.
        ids = []
        for _ in range(3):
            lease = c.lease(30)
            ids.append(lease.id)
            lease.revoke()
        eq(len(set(ids)), 3, f"distinct ids of leases granted one after another: {ids}")

    @check("a lease that is not kept alive expires, and its key with it")
    def _():
        lease = c.lease(2)
        c.put("py/e", "v", lease=lease)
        eq(c.get("py/e")[0], b"v", "the key before")
        wait_until(lambda: c.get("py/e") == (None, None), "the key gone")
        eq(c.get_lease_info(lease.id).TTL, -1, "the lease gone")
        for i, other in enumerate(clients):
            eq(other.get("py/e"), (None, None), f"gone on endpoint {i}")

    @check("watch with a callback: puts and a delete, in order, with prev_kv")
    def _():
        got = queue.Queue()
        watch_id = clients[-1].add_watch_callback("py/w", got.put, prev_kv=True)
        r1 = c.put("py/w", "1").header.revision
        r2 = c.put("py/w", "2").header.revision
        r3 = c.delete("py/w", return_response=True).header.revision
        events = []
        deadline = time.monotonic() + WAIT
        while len(events) < 3:
            response = got.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(response, Exception):
                raise response
            events.extend(response.events)
        clients[-1].cancel_watch(watch_id)
        eq([type(e) for e in events], [PutEvent, PutEvent, DeleteEvent], "event types")
        eq([e.mod_revision for e in events], [r1, r2, r3], "mod revisions")
        eq([e.value for e in events[:2]], [b"1", b"2"], "values")
        eq(events[1].prev_value, b"1", "prev_kv of the second put")
        eq(events[2].prev_value, b"2", "prev_kv of the delete")
        eq(events[0].version, 1, "version of the first put")

    @check("watch a prefix as an iterator, from a past revision, then cancel")
    def _():
        start = c.put("py/wp/1", "a").header.revision
        c.put("py/other", "not watched")
        c.put("py/wp/2", "b")
        c.delete("py/wp/1")
        iterator, cancel = c.watch_prefix("py/wp/", start_revision=start)
        seen = []

        def consume():
            for event in iterator:
                seen.append(event)
                if len(seen) == 4:
                    cancel()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        c.put("py/wp/3", "c")  # live, after the three replayed
        consumer.join(WAIT)
        true(not consumer.is_alive(), f"4 events within {WAIT}s; saw {len(seen)}")
        eq([(type(e), e.key) for e in seen],
           [(PutEvent, b"py/wp/1"), (PutEvent, b"py/wp/2"), (DeleteEvent, b"py/wp/1"),
            (PutEvent, b"py/wp/3")], "replayed then live, the prefix only")

    @check("watch_once times out when nothing happens, and sees the next change")
    def _():
        try:
            c.watch_once("py/quiet", timeout=0.3)
            raise AssertionError("an event on a key nobody wrote")
        except etcd3.exceptions.WatchTimedOut:
            pass
        result = queue.Queue()
        waiter = threading.Thread(
            target=lambda: result.put(c.watch_once("py/once", timeout=WAIT)), daemon=True)
        waiter.start()
        # watch_once registers its watch before it waits; write until it has seen one.
        deadline = time.monotonic() + WAIT
        while waiter.is_alive() and time.monotonic() < deadline:
            c.put("py/once", "x")
            waiter.join(0.2)
        event = result.get(timeout=1)
        eq((type(event), event.key, event.value), (PutEvent, b"py/once", b"x"), "the event")

    @check("compaction: old revisions refused, watching them canceled")
    def _():
        old = c.put("py/c", "old").header.revision
        now = c.put("py/c", "new").header.revision
        c.compact(now)
        stale = etcdrpc.RangeRequest(key=b"py/c", revision=old)
        eq(rpc_code(lambda: c.kvstub.Range(stale, 10)), grpc.StatusCode.OUT_OF_RANGE,
           "a read of a compacted revision")
        current = etcdrpc.RangeRequest(key=b"py/c", revision=now)
        eq(c.kvstub.Range(current, 10).kvs[0].value, b"new", "a read at the compaction")
        future = etcdrpc.RangeRequest(key=b"py/c", revision=now + 100)
        eq(rpc_code(lambda: c.kvstub.Range(future, 10)), grpc.StatusCode.OUT_OF_RANGE,
           "a read of a future revision")
        got = queue.Queue()
        try:
            c.add_watch_callback("py/c", got.put, start_revision=old)
            err = got.get(timeout=WAIT)
        except etcd3.exceptions.RevisionCompactedError as e:
            err = e
        true(isinstance(err, etcd3.exceptions.RevisionCompactedError),
             f"a watch from a compacted revision: {err!r}")
        eq(err.compacted_revision, now, "the compaction revision it reports")

    @check("members: every member listed by every endpoint, with its URLs")
    def _():
        lists = []
        for i, client in enumerate(clients):
            members = sorted(client.members, key=lambda m: m.id)
            eq(len(members), args.members, f"members listed by endpoint {i}")
            for m in members:
                true(m.id != 0, f"member id {m.id}")
                true(m.peer_urls and all(u.startswith("http") for u in m.peer_urls),
                     f"peer URLs {list(m.peer_urls)}")
                true(m.client_urls, f"client URLs of {m.id}")
            lists.append([(m.id, m.name, list(m.peer_urls), list(m.client_urls))
                          for m in members])
        true(all(lst == lists[0] for lst in lists), f"endpoints disagree: {lists}")
        listed = {u for _, _, _, urls in lists[0] for u in urls}
        for e in endpoints:
            true(f"http://{e}" in listed, f"endpoint {e} among the client URLs {listed}")

    @check("status: version, leader among the members, raft index and term")
    def _():
        leaders = set()
        for i, client in enumerate(clients):
            s = client.status()
            true(isinstance(s.version, str) and s.version, f"version {s.version!r}")
            true(s.leader is not None, f"endpoint {i}: the leader is no listed member")
            true(s.raft_term >= 1, f"raft term {s.raft_term}")
            true(s.raft_index >= 1, f"raft index {s.raft_index}")
            true(s.db_size >= 0, f"db size {s.db_size}")
            leaders.add(s.leader.id)
        eq(len(leaders), 1, "one leader for every endpoint")
        # The header of a response names the member that answered.
        ids = {m.id for m in c.members}
        for i, client in enumerate(clients):
            header = client.get_response("py/a").header
            true(header.member_id in ids, f"endpoint {i}: header member {header.member_id}")
            true(header.cluster_id != 0, f"endpoint {i}: cluster id")

    if failures:
        print(f"{len(failures)} checks failed: {failures}")
        return 1
    print("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
