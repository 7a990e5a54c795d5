"""Variants of the s3fifo policy against the claimed policies on every trace (issue 14).

    .venv/bin/python bench/record_policy_variants.py [GHOST,SMALL,GAP ...]

The target: the default policy misses no more than ``lru`` (claim 15) and ``generations``
(claim 16) on every trace at every bound and extent size of the docs' table, and at least 25%
less on at least two traces. Each argument is a variant of ``record/eviction.py``'s constants:
GHOST (``GHOST_FACTOR``: ghost memory in capacities), SMALL (``SMALL_FRACTION``: the small queue
is capacity / SMALL) and GAP (``REUSE_GAP_DIVISOR``: a reuse counts capacity / GAP writes after
the last). Default: the grid of docs/benchmarks.md, 1-8 x 20-4 x 1-4. The replay is
bench/record_policies.py's (lookahead 4, predictor next, 15 ms clean lag). For each variant it
prints the rows where s3fifo misses more than the better claimed policy, and the traces where
it misses at least 25% less.
"""

from __future__ import annotations

import itertools
import lzma
import sys
from pathlib import Path

from foresync.nbd import trace
from foresync.record import eviction
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

HERE = Path(__file__).parent
CONFIGS = [(16, 1 << 20), (16, 65536), (4, 1 << 20), (4, 65536)]  # as bench/record_policies.py
GRID = list(itertools.product((1, 2, 4, 8), (20, 10, 5, 4), (1, 2, 4)))


def main(argv: list[str]) -> None:
    variants = [tuple(int(x) for x in arg.split(",")) for arg in argv] or GRID
    traces = {}
    for path in sorted((HERE / "workloads").glob("*.fstrace.xz")):
        size, records = trace.decode(lzma.decompress(path.read_bytes()), str(path))
        traces[path.name.removesuffix(".fstrace.xz")] = (size, writes_of(records))

    def miss_ratio(name: str, fraction: int, extent_size: int, policy: Eviction) -> float:
        size, writes = traces[name]
        config = ReplayConfig(extent_size, size // fraction // extent_size, policy, 4)
        return replay(writes, size, config).miss_ratio

    claimed = {(name, fraction, es): min(miss_ratio(name, fraction, es, Eviction.LRU),
                                         miss_ratio(name, fraction, es, Eviction.GENERATIONS))
               for name in traces for fraction, es in CONFIGS}
    for ghost, small, gap in variants:
        eviction.GHOST_FACTOR, eviction.SMALL_FRACTION, eviction.REUSE_GAP_DIVISOR = ghost, small, gap
        above, wins = [], set()
        for (name, fraction, es), best in claimed.items():
            ratio = miss_ratio(name, fraction, es, Eviction.S3FIFO)
            change = (ratio - best) / best if best else 0.0
            if ratio > best:
                above.append(f"{name} 1/{fraction} {es >> 10} KiB {ratio:.2%} vs {best:.2%} ({change:+.0%})")
            if change <= -0.25:
                wins.add(name)
        print(f"ghost x{ghost}, small 1/{small}, gap capacity/{gap}: above a claimed policy on "
              f"{len(above)} rows {above}; >= 25% lower on {sorted(wins)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
