"""The adaptive policy against s3fifo and the claimed policies on every trace (issue 14).

    .venv/bin/python bench/record_policy_adaptive.py [WINDOW,MARGIN,EXPLORE ...]

The rows of docs/benchmarks.md's policy table (every trace of bench/workloads at 1/16 and 1/4 of
its volume, 1 MiB and 64 KiB extents, lookahead 4, predictor next: bench/record_policies.py's
replay). For each variant of ``record/adaptive.py``'s WINDOW (writes), MARGIN and EXPLORE it prints each
row's miss ratios and the adaptive policy's change against the better claimed policy, then the
rows where it is above either claimed policy and the traces where it is >= 25% lower.
"""

from __future__ import annotations

import sys

from _policy_rows import Tally, Traces  # bench/_policy_rows.py: bench/ is on sys.path as a script

from foresync.record import adaptive
from foresync.record.record import Eviction


def main(argv: list[str]) -> None:
    variants = ([(int(a.split(",")[0]), float(a.split(",")[1]), int(a.split(",")[2])) for a in argv]
                or [(adaptive.WINDOW, adaptive.MARGIN, adaptive.EXPLORE)])
    traces = Traces()
    fixed = {row: {p: traces.miss_ratio(row, p)
                   for p in (Eviction.LRU, Eviction.GENERATIONS, Eviction.S3FIFO)}
             for row in traces.rows()}
    for window, margin, explore in variants:
        adaptive.WINDOW, adaptive.MARGIN, adaptive.EXPLORE = window, margin, explore
        adaptive._DECAY = 0.5 ** (1 / window)
        print(f"\nWINDOW {window}, MARGIN {margin}, EXPLORE {explore}\n| trace | bound | extent | lru | generations | s3fifo "
              "| adaptive | vs best claimed |\n|---|---|---|--:|--:|--:|--:|--:|")
        tally = Tally()
        for row, ratios in fixed.items():
            name, fraction, es = row
            ratio = traces.miss_ratio(row, Eviction.ADAPTIVE)
            best = min(ratios[Eviction.LRU], ratios[Eviction.GENERATIONS])
            change = tally.note(row, ratio, best, detail=False)
            print(f"| {name} | 1/{fraction} | {es >> 10} KiB | {ratios[Eviction.LRU]:.2%} "
                  f"| {ratios[Eviction.GENERATIONS]:.2%} | {ratios[Eviction.S3FIFO]:.2%} | **{ratio:.2%}** "
                  f"| {change:+.0%} |", flush=True)
        print(tally.summary(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
