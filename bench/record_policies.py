"""The record's policies and predictors on the trace suite: the table in docs/benchmarks.md.

    .venv/bin/python bench/record_policies.py [bench/workloads/*.fstrace.xz]

Each trace is replayed (record/replay.py: the primary's own record, eviction and predictor code)
with the record bounded to 1/16 and 1/4 of the trace's volume, at 1 MiB and 64 KiB extents and
lookahead 4, under each eviction policy; then the default policy under each predictor. The clean
lag is 15 ms (10 ms RTT plus 5 ms of fdatasync, record/replay.py), as ``foresync tune --rtt 10ms``.
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

from foresync.nbd import trace
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

HERE = Path(__file__).parent
CONFIGS = [(16, 1 << 20), (16, 65536), (4, 1 << 20), (4, 65536)]


def main() -> None:
    paths = sys.argv[1:] or sorted(str(p) for p in (HERE / "workloads").glob("*.fstrace.xz"))
    print("| trace | writes | bound | extent | lru | generations | **s3fifo** | vs best claimed "
          "| s3fifo + history |")
    print("|---|--:|---|---|--:|--:|--:|--:|--:|")
    for path in paths:
        size, records = trace.decode(lzma.decompress(Path(path).read_bytes()), path)
        writes = writes_of(records)
        name = Path(path).name.removesuffix(".fstrace.xz")
        for fraction, extent_size in CONFIGS:
            capacity = size // fraction // extent_size
            ratios = {e: replay(writes, size, ReplayConfig(extent_size, capacity, e, 4)).miss_ratio
                      for e in Eviction}
            history = replay(writes, size, ReplayConfig(extent_size, capacity, Eviction.S3FIFO, 4,
                                                        "history")).miss_ratio
            claimed = min(ratios[Eviction.LRU], ratios[Eviction.GENERATIONS])
            change = (ratios[Eviction.S3FIFO] - claimed) / claimed if claimed else 0.0
            print(f"| {name} | {len(writes)} | 1/{fraction} ({size // fraction >> 20} MiB) | "
                  f"{extent_size >> 10} KiB | {ratios[Eviction.LRU]:.2%} | "
                  f"{ratios[Eviction.GENERATIONS]:.2%} | **{ratios[Eviction.S3FIFO]:.2%}** | "
                  f"{change:+.0%} | {history:.2%} |", flush=True)


if __name__ == "__main__":
    main()
