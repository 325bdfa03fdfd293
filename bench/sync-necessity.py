#!/usr/bin/env python3
"""Proves each sync call of the WAL necessary: removes one at a time from
crates/storage/src/wal/mod.rs (the log) and crates/storage/src/wal/tools.rs (`flotilla wal
repair`) in a scratch worktree, runs the storage crate's tests, and prints which tests fail
without it (TESTING.md's table).

    python3 bench/sync-necessity.py [--only FILE] [WORKTREE]   # default: a fresh worktree of HEAD

`--only mod.rs` or `--only tools.rs` removes only that file's syncs. Every removal is
reverted before the next; the worktree is left clean.
"""
import os
import re
import subprocess
import sys

# (name, the code with the sync, the same code without it), per file
LOG_SYNCS = [
    ("append `sync_data`",
     "        self.active.sync_data().map_err(io_err(path))?;\n", ""),
    ("step 1 `snapshot.tmp` `sync_all`",
     "            .and_then(|()| file.write_all(data))\n            .and_then(|()| file.sync_all())\n",
     "            .and_then(|()| file.write_all(data))\n"),
    ("step 1 directory sync",
     "        sync_dir(&self.fs, &self.dir).map_err(before)?;\n", ""),
    ("new segment `segment.tmp` `sync_all`",
     "    file.write_all(&bytes)\n        .and_then(|()| file.sync_all())\n",
     "    file.write_all(&bytes)\n"),
    ("new segment directory sync",
     "    sync_dir(fs, dir)?;\n    Ok((path, bytes.len() as u64))\n",
     "    Ok((path, bytes.len() as u64))\n"),
    ("parent directory sync when creating the directory",
     "        Err(e) => return Err(io_err(dir)(e)),\n    }\n    sync_dir(fs, parent)\n",
     "        Err(e) => return Err(io_err(dir)(e)),\n    }\n    let _ = parent;\n    Ok(())\n"),
    ("`open`'s sync after cutting off a damaged record",
     "            active.sync_all().map_err(io_err(&last.path))?;\n        }\n", "        }\n"),
]

REPAIR_SYNCS = [
    ("repair: directory sync after moving a whole segment aside",
     "        // brings the damaged segment back.\n        sync_dir(fs, dir)?;\n",
     "        // brings the damaged segment back.\n"),
    ("repair: backup `sync_all`",
     "            .write_all(&bytes[offset as usize..])\n            .and_then(|()| saved.sync_all())\n",
     "            .write_all(&bytes[offset as usize..])\n"),
    ("repair: directory sync after writing the backup",
     "        drop(saved);\n        sync_dir(fs, dir)?;\n", "        drop(saved);\n"),
    ("repair: `sync_all` after cutting the segment",
     "        log.set_len(offset)\n            .and_then(|()| log.sync_all())\n",
     "        log.set_len(offset)\n"),
]

FILES = [
    ("crates/storage/src/wal/mod.rs", LOG_SYNCS),
    ("crates/storage/src/wal/tools.rs", REPAIR_SYNCS),
]


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def main():
    args = sys.argv[1:]
    only = None
    if args[:1] == ["--only"]:
        only, args = args[1], args[2:]
    tree = args[0] if args else "/tmp/wt-syncs"
    if not os.path.exists(tree):
        run(["git", "worktree", "add", "--detach", tree, "HEAD"], ".")
    env = dict(os.environ, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", "/work/target-syncs"))
    print("| sync | tests that fail without it |\n|---|---|")
    for file, syncs in FILES:
        if only is not None and not file.endswith(only):
            continue
        path = os.path.join(tree, file)
        original = open(path).read()
        try:
            for name, with_sync, without in syncs:
                assert original.count(with_sync) == 1, f"{name}: the code to remove is not unique"
                open(path, "w").write(original.replace(with_sync, without))
                out = subprocess.run(
                    ["cargo", "test", "-p", "flotilla-storage", "--release", "--no-fail-fast"],
                    cwd=tree, capture_output=True, text=True, env=env)
                failed = sorted(set(re.findall(r"^test (\S+) \.\.\. FAILED", out.stdout, re.M)))
                if "error[" in out.stderr:
                    failed = ["(does not compile)"]
                print(f"| {name} | {', '.join('`' + f + '`' for f in failed) or 'none'} |", flush=True)
        finally:
            open(path, "w").write(original)


if __name__ == "__main__":
    main()
