#!/usr/bin/env python3
"""Copy an example nginx.conf for the tests, replacing site values.

usage: render.py SRC DEST OLD NEW [OLD NEW ...]
Each OLD must occur exactly once in SRC: an example that changed under the
tests fails loudly instead of being tested with its production values.
"""
import sys


def main():
    src, dest, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
    if len(pairs) % 2:
        sys.exit("render.py: OLD without NEW")
    with open(src) as f:
        text = f.read()
    for old, new in zip(pairs[::2], pairs[1::2]):
        n = text.count(old)
        if n != 1:
            sys.exit(f"render.py: {src}: {old!r} occurs {n} times, want 1")
        text = text.replace(old, new)
    with open(dest, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
