#!/usr/bin/env python3
"""What a preallocated log would save: the time of one fdatasync after a small append.

Three processes at once (as three nodes on one disk) each append WRITES records of SIZE
bytes to a file of their own and fdatasync after every one, in two ways:

- grow:   the append makes the file longer, so the sync must also write the inode (size);
- inplace: the file was filled with zeros and synced first, and each record overwrites
           the zeros, so the file's size never changes and the sync writes only data.

Prints the mean time per append+sync of each process, both ways, twice (alternating).
The files go to a temporary directory under DIR (default: the current one) and are removed.
Usage: python3 bench/fdatasync-prealloc.py [DIR]
"""
import multiprocessing as mp
import os
import sys
import tempfile
import time

WRITES, SIZE, PREFILL_MIB = 1500, 2048, 16


def one_writer(args):
    mode, path = args
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    try:
        if mode == "inplace":
            zeros = b"\0" * (1 << 20)
            for _ in range(PREFILL_MIB):
                os.write(fd, zeros)
            os.fsync(fd)
        record = b"x" * SIZE
        started = time.perf_counter()
        for i in range(WRITES):
            os.pwrite(fd, record, i * SIZE)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / WRITES * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "."
    with tempfile.TemporaryDirectory(dir=base) as d:
        for mode in ["grow", "inplace", "grow", "inplace"]:
            paths = [(mode, os.path.join(d, f"log{k}")) for k in range(3)]
            with mp.Pool(3) as pool:
                means = pool.map(one_writer, paths)
            print(f"{mode:8} " + " ".join(f"{m:.0f}" for m in means) + " µs per append+fdatasync")


if __name__ == "__main__":
    main()
