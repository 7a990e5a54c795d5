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
import sys

from _policy_rows import Tally, Traces  # bench/_policy_rows.py: bench/ is on sys.path as a script

from foresync.record import eviction
from foresync.record.record import Eviction

GRID = list(itertools.product((1, 2, 4, 8), (20, 10, 5, 4), (1, 2, 4)))


def main(argv: list[str]) -> None:
    variants = [tuple(int(x) for x in arg.split(",")) for arg in argv] or GRID
    traces = Traces()
    claimed = {row: min(traces.miss_ratio(row, Eviction.LRU), traces.miss_ratio(row, Eviction.GENERATIONS))
               for row in traces.rows()}
    for ghost, small, gap in variants:
        eviction.GHOST_FACTOR, eviction.SMALL_FRACTION, eviction.REUSE_GAP_DIVISOR = ghost, small, gap
        tally = Tally()
        for row, best in claimed.items():
            tally.note(row, traces.miss_ratio(row, Eviction.S3FIFO), best)
        print(f"ghost x{ghost}, small 1/{small}, gap capacity/{gap}: {tally.summary()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
