#!/usr/bin/env python3
"""Lists every test that did not run in the last ctest run, and fails CI on them.

ctest counts a Python suite whose tests were skipped (unittest's `skipped '...'`) or a
GoogleTest binary with GTEST_SKIP as passed; only a whole suite that exits 77 shows as
skipped. This reads ctest's full log (Testing/Temporary/LastTest.log) and prints each
skipped test under its ctest name, so a skip is never hidden behind "100% tests passed".

  report-skips.py BUILD_DIR [--fail-except NAME ...]

With --fail-except, exits 1 when a test skipped in a ctest test not named there (CI: the
real-node suites may skip when their cluster is not built; nothing else may).
"""
import argparse
import os
import re
import sys

TESTING = re.compile(r"^\d+/\d+ Testing: (\S+)")
PY_SKIP = re.compile(r"^(test\S*) \(([^)]*)\)(?: \.\.\.)? .*?skipped '(.*)'$")
PY_SKIP_NEXT = re.compile(r"^.*\.\.\. skipped '(.*)'$")
GTEST_SKIP = re.compile(r"^\[  SKIPPED \] (\S+) \(\d+ ms\)$")
WHOLE = re.compile(r"^(SKIPPED: .*)$")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir")
    ap.add_argument("--fail-except", nargs="*", default=None, metavar="NAME")
    args = ap.parse_args()
    log = os.path.join(args.build_dir, "Testing", "Temporary", "LastTest.log")
    if not os.path.exists(log):
        print(f"report-skips: no {log} (ctest did not run)")
        return 0
    skips = []  # (ctest name, what)
    current = "?"
    pending_py = None
    with open(log, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            m = TESTING.match(line)
            if m:
                current = m.group(1)
                continue
            m = GTEST_SKIP.match(line)
            if m and (current, m.group(1)) not in skips:
                skips.append((current, m.group(1)))
                continue
            m = PY_SKIP.match(line)
            if m:
                skips.append((current, f"{m.group(1)}: {m.group(3)}"))
                continue
            if line.startswith("test") and " ... " not in line and "(" in line:
                pending_py = line.split(" ")[0]  # a test with a docstring: the result comes later
                continue
            m = PY_SKIP_NEXT.match(line)
            if m and pending_py:
                skips.append((current, f"{pending_py}: {m.group(1)}"))
                pending_py = None
                continue
            m = WHOLE.match(line)
            if m:
                skips.append((current, m.group(1)))
    if not skips:
        print("skipped: none")
        return 0
    print(f"skipped: {len(skips)}")
    for name, what in skips:
        print(f"  {name}: {what}")
    if args.fail_except is not None:
        bad = sorted({name for name, _ in skips if name not in args.fail_except})
        if bad:
            print(f"report-skips: tests skipped in {', '.join(bad)}; in CI every one of them must run "
                  "(scripts/test.sh installs and builds what they need)")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
