#!/usr/bin/env python3
"""Inclusive instructions per call of the functions whose name matches a pattern, from a
callgrind output file: `callgrind-per-call.py callgrind.out 'PolicyEngine::evaluate$'`.

Instruction counts do not depend on what else the machine is doing, so two builds can be
compared on a noisy host (scripts/bench-instructions.sh)."""

import re
import sys


def per_call(path, pattern):
    names, calls, inclusive = {}, {}, {}
    callee, pending = None, None
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            named = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
            if named:
                kind, ident, name = named.groups()
                if name:
                    names[ident] = name
                if kind == "cfn":
                    callee = ident
                continue
            counted = re.match(r"^calls=(\d+)", line)
            if counted:
                pending = int(counted.group(1))
                continue
            if pending is not None:
                fields = line.split()
                cost = int(fields[1]) if len(fields) > 1 else 0
                calls[callee] = calls.get(callee, 0) + pending
                inclusive[callee] = inclusive.get(callee, 0) + cost
                pending = None
    for ident, name in names.items():
        if re.search(pattern, name) and calls.get(ident):
            yield inclusive[ident] / calls[ident], calls[ident], name


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for cost, count, name in sorted(per_call(sys.argv[1], sys.argv[2]), reverse=True):
        print(f"{cost:10.0f} instructions/call  {count:7d} calls  {name[:100]}")


if __name__ == "__main__":
    main()
