#!/usr/bin/env python3
"""The table of benches/compare-llamacpp.sh, from its JSON-lines results.

  compare_table.py RESULTS.jsonl [MICROLLM_MODEL=LLAMACPP_GGUF ...]

Each results line is one test of one run: engine ("microllm" or "llama.cpp"),
model, round, test (pp64, tg128...), threads, tok_s (the run's median over its
reps). For every pair, test and thread count the table shows the median over
rounds of each engine's tok_s, the range (min..max) of those per-round medians,
and the ratio microllm / llama.cpp of the medians. Without pairs (or without any
microllm lines) it shows llama.cpp alone. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections import defaultdict


def test_key(test: str) -> tuple[int, int]:
    m = re.fullmatch(r"(pp|tg)(\d+)", test)
    return (0 if m.group(1) == "pp" else 1, int(m.group(2))) if m else (2, 0)


def fmt_rate(xs: list[float] | None) -> tuple[str, str]:
    if not xs:
        return "-", ""
    return f"{statistics.median(xs):.1f}", f"{min(xs):.1f}..{max(xs):.1f}"


def print_table(header: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    print(line(header))
    print("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|")
    for r in rows:
        print(line(r))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rates: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    tests, threads = set(), set()
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            rates[(r["engine"], os.path.normpath(r["model"]), r["test"], int(r["threads"]))].append(float(r["tok_s"]))
            tests.add(r["test"])
            threads.add(int(r["threads"]))
    pairs = [tuple(os.path.normpath(x) for x in p.split("=", 1)) for p in sys.argv[2:]]
    have_micro = any(k[0] == "microllm" for k in rates)
    tests_sorted = sorted(tests, key=test_key)
    name = os.path.basename

    if pairs and have_micro:
        header = ["test", "threads", "microllm model", "tok/s", "range", "llama.cpp model", "tok/s", "range",
                  "microllm/llama.cpp"]
        rows = []
        for m, lm in pairs:
            for test in tests_sorted:
                for t in sorted(threads):
                    a = rates.get(("microllm", m, test, t))
                    b = rates.get(("llama.cpp", lm, test, t))
                    if not a and not b:
                        continue
                    ratio = f"{statistics.median(a) / statistics.median(b):.3f}" if a and b else "-"
                    rows.append([test, str(t), name(m), *fmt_rate(a), name(lm), *fmt_rate(b), ratio])
        print_table(header, rows, {1, 3, 4, 6, 7, 8})
    else:
        models = []
        for k in rates:
            if k[0] == "llama.cpp" and k[1] not in models:
                models.append(k[1])
        header = ["test", "threads", "llama.cpp model", "tok/s", "range"]
        rows = []
        for lm in models:
            for test in tests_sorted:
                for t in sorted(threads):
                    b = rates.get(("llama.cpp", lm, test, t))
                    if b:
                        rows.append([test, str(t), name(lm), *fmt_rate(b)])
        print_table(header, rows, {1, 3, 4})


if __name__ == "__main__":
    main()
