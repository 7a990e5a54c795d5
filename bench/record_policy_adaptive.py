"""The adaptive policy against s3fifo and the claimed policies on every trace (issue 14).

    .venv/bin/python bench/record_policy_adaptive.py [WINDOW,MARGIN,EXPLORE ...]

The rows of docs/benchmarks.md's policy table (every trace of bench/workloads at 1/16 and 1/4 of
its volume, 1 MiB and 64 KiB extents, lookahead 4, predictor next: bench/record_policies.py's
replay). For each variant of ``record/adaptive.py``'s WINDOW (writes), MARGIN and EXPLORE it prints each
row's miss ratios and the adaptive policy's change against the better claimed policy, then the
rows where it is above either claimed policy and the traces where it is >= 25% lower.
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

from foresync.nbd import trace
from foresync.record import adaptive
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

HERE = Path(__file__).parent
CONFIGS = [(16, 1 << 20), (16, 65536), (4, 1 << 20), (4, 65536)]  # as bench/record_policies.py


def main(argv: list[str]) -> None:
    variants = ([(int(a.split(",")[0]), float(a.split(",")[1]), int(a.split(",")[2])) for a in argv]
                or [(adaptive.WINDOW, adaptive.MARGIN, adaptive.EXPLORE)])
    traces = {}
    for path in sorted((HERE / "workloads").glob("*.fstrace.xz")):
        size, records = trace.decode(lzma.decompress(path.read_bytes()), str(path))
        traces[path.name.removesuffix(".fstrace.xz")] = (size, writes_of(records))

    def miss_ratio(name: str, fraction: int, extent_size: int, policy: Eviction) -> float:
        size, writes = traces[name]
        config = ReplayConfig(extent_size, size // fraction // extent_size, policy, 4)
        return replay(writes, size, config).miss_ratio

    fixed = {(name, fraction, es): {p: miss_ratio(name, fraction, es, p)
                                    for p in (Eviction.LRU, Eviction.GENERATIONS, Eviction.S3FIFO)}
             for name in traces for fraction, es in CONFIGS}
    for window, margin, explore in variants:
        adaptive.WINDOW, adaptive.MARGIN, adaptive.EXPLORE = window, margin, explore
        adaptive._DECAY = 0.5 ** (1 / window)
        print(f"\nWINDOW {window}, MARGIN {margin}, EXPLORE {explore}\n| trace | bound | extent | lru | generations | s3fifo "
              "| adaptive | vs best claimed |\n|---|---|---|--:|--:|--:|--:|--:|")
        above, wins = [], set()
        for (name, fraction, es), ratios in fixed.items():
            ratio = miss_ratio(name, fraction, es, Eviction.ADAPTIVE)
            best = min(ratios[Eviction.LRU], ratios[Eviction.GENERATIONS])
            change = (ratio - best) / best if best else 0.0
            print(f"| {name} | 1/{fraction} | {es >> 10} KiB | {ratios[Eviction.LRU]:.2%} "
                  f"| {ratios[Eviction.GENERATIONS]:.2%} | {ratios[Eviction.S3FIFO]:.2%} | **{ratio:.2%}** "
                  f"| {change:+.0%} |", flush=True)
            if ratio > best:
                above.append(f"{name} 1/{fraction} {es >> 10} KiB")
            if change <= -0.25:
                wins.add(name)
        print(f"above a claimed policy on {len(above)} rows {above}; >= 25% lower on {sorted(wins)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
