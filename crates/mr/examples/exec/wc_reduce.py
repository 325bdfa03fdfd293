#!/usr/bin/env python3
"""Word count for the exec app, reduce side.

stdin holds every pair of the reduce task, one `key<TAB>value` line each, sorted by key, so
the values of a key are consecutive. Print one `key<TAB>result` line per distinct key, in
the order the keys arrive: here the sum of the counts. Keys and values are passed through
as bytes, so no decoding or escaping is needed.
"""
import sys


def main():
    out = sys.stdout.buffer
    key, total = None, 0
    for line in sys.stdin.buffer:
        k, _, value = line.rstrip(b"\n").partition(b"\t")
        if k != key:
            if key is not None:
                out.write(key + b"\t" + str(total).encode() + b"\n")
            key, total = k, 0
        total += int(value)
    if key is not None:
        out.write(key + b"\t" + str(total).encode() + b"\n")


if __name__ == "__main__":
    main()
