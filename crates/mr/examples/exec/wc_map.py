#!/usr/bin/env python3
"""Word count for the exec app, map side, splitting words exactly like the built-in wc.

    flotilla mr worker --app exec --map-cmd 'python3 examples/exec/wc_map.py' \
                                  --reduce-cmd 'python3 examples/exec/wc_reduce.py'

The input arrives on stdin (its name is sys.argv[1] when the --map-cmd command passes "$1", and
is in the FLOTILLA_INPUT_NAME environment variable). A word is a maximal run of Unicode
letters (general category L, which is what str.isalpha tests); invalid UTF-8 counts as
U+FFFD, a separator. The input is read in chunks, so its size does not matter. Prints one
line word<TAB>count per distinct word (words hold no tab, newline or backslash, so nothing
needs escaping).
"""
import io
import itertools
import sys
from collections import Counter


def main():
    source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="")
    counts = Counter()
    carry = ""  # a word that may continue in the next chunk
    while True:
        chunk = source.read(1 << 16)
        if not chunk:
            break
        runs = [(is_word, "".join(run)) for is_word, run in itertools.groupby(carry + chunk, str.isalpha)]
        carry = runs.pop()[1] if runs and runs[-1][0] else ""
        counts.update(text for is_word, text in runs if is_word)
    if carry:
        counts[carry] += 1
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
    for word, count in counts.items():
        out.write(f"{word}\t{count}\n")
    out.flush()


if __name__ == "__main__":
    main()
