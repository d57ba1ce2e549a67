#!/usr/bin/env python3
"""A straightforward Python decoder of MethodSCRIPT data packages: the baseline of
`operando-bench methodscript` (the way a script in the lab would decode them).

Usage: methodscript_decode.py FILE   (one package per line, e.g. "Pda7F85F3Fu;ba48D503Dp,10,288")
Prints one JSON object: packages, seconds (decoding only, after the file is read), packages_per_s,
and a checksum of the decoded values so the work cannot be skipped.
"""
import json
import sys
import time

PREFIX = {"a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, " ": 1.0,
          "i": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def decode(line):
    """One package → list of (type, value, status, range)."""
    out = []
    for var in line[1:].rstrip("\n").split(";"):
        parts = var.split(",")
        field = parts[0]
        kind = field[:2]
        if field[2:].strip() == "nan":
            value = float("nan")
        else:
            value = (int(field[2:9], 16) - (1 << 27)) * PREFIX[field[9]]
        status = 0
        cr = None
        for meta in parts[1:]:
            if meta[0] == "1":
                status = int(meta[1], 16)
            elif meta[0] == "2":
                cr = int(meta[1:3], 16)
        out.append((kind, value, status, cr))
    return out


def main():
    with open(sys.argv[1]) as f:
        lines = f.readlines()
    start = time.perf_counter()
    total = 0.0
    for line in lines:
        for _, value, status, _ in decode(line):
            if value == value:
                total += value
            total += status
    seconds = time.perf_counter() - start
    print(json.dumps({"packages": len(lines), "seconds": seconds, "packages_per_s": len(lines) / seconds, "checksum": total}))


if __name__ == "__main__":
    main()
