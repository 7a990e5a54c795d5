"""What the record policy benches share (bench/record_policy_adaptive.py, _streams.py,
_variants.py): the rows of docs/benchmarks.md's policy table and the tally of a policy against
the better claimed one.

A row is a trace of bench/workloads at a bound (1/16 or 1/4 of its volume) and an extent size
(1 MiB or 64 KiB), replayed with lookahead 4 and predictor next (bench/record_policies.py's
replay). The claims (15 and 16): the default policy misses no more than ``lru`` and
``generations`` on every row, and at least 25% less on some traces.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from foresync.nbd import trace
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

HERE = Path(__file__).parent
CONFIGS = [(16, 1 << 20), (16, 65536), (4, 1 << 20), (4, 65536)]  # as bench/record_policies.py
Writes = list[tuple[float, int, int, bool]]
Row = tuple[str, int, int]  # (trace, bound fraction, extent size in bytes)


class Traces:
    """Every trace of bench/workloads, decoded once."""

    def __init__(self) -> None:
        self.traces: dict[str, tuple[int, Writes]] = {}
        for path in sorted((HERE / "workloads").glob("*.fstrace.xz")):
            size, records = trace.decode(lzma.decompress(path.read_bytes()), str(path))
            self.traces[path.name.removesuffix(".fstrace.xz")] = (size, writes_of(records))

    def rows(self) -> Iterator[Row]:
        for name in self.traces:
            for fraction, extent_size in CONFIGS:
                yield name, fraction, extent_size

    def miss_ratio(self, row: Row, policy: Eviction) -> float:
        name, fraction, extent_size = row
        size, writes = self.traces[name]
        config = ReplayConfig(extent_size, size // fraction // extent_size, policy, 4)
        return replay(writes, size, config).miss_ratio


def label(row: Row) -> str:
    name, fraction, extent_size = row
    return f"{name} 1/{fraction} {extent_size >> 10} KiB"


@dataclass
class Tally:
    """One policy (or variant) against the better claimed policy, row by row."""

    above: list[str] = field(default_factory=list)  # rows where it misses more
    wins: set[str] = field(default_factory=set)  # traces where it misses at least 25% less

    def note(self, row: Row, ratio: float, best: float, detail: bool = True) -> float:
        """Count one row; its change against ``best``."""
        change = (ratio - best) / best if best else 0.0
        if ratio > best:
            self.above.append(f"{label(row)} {ratio:.2%} vs {best:.2%} ({change:+.0%})" if detail
                              else label(row))
        if change <= -0.25:
            self.wins.add(row[0])
        return change

    def summary(self) -> str:
        return (f"above a claimed policy on {len(self.above)} rows {self.above}; "
                f">= 25% lower on {sorted(self.wins)}")
