"""Sets of extents as sorted runs ``(first, count)``: the resync set of a pass (issue 19).

A full sync's resync set is every extent of the volume: a million entries at 1 TiB with 1 MiB
extents. As a Python ``set`` that is about 60 MB on each site; as runs it is one pair. Runs are
kept normalised (sorted, non-empty, neither overlapping nor touching), so equal sets compare
equal and the journal and the link carry the fewest pairs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

Runs = tuple[tuple[int, int], ...]


def runs_of(extents: Iterable[int]) -> Runs:
    """The runs of a set of extents (any order, duplicates allowed)."""
    out: list[tuple[int, int]] = []
    first = end = -1
    for extent in sorted(set(extents)):
        if extent == end:
            end += 1
            continue
        if end > first:
            out.append((first, end - first))
        first, end = extent, extent + 1
    if end > first:
        out.append((first, end - first))
    return tuple(out)


def normalise(runs: Iterable[tuple[int, int]]) -> Runs:
    """Sort and merge runs that overlap or touch; drop empty ones."""
    out: list[tuple[int, int]] = []
    for first, count in sorted(r for r in runs if r[1] > 0):
        if out and first <= out[-1][0] + out[-1][1]:
            last_first, last_count = out[-1]
            out[-1] = (last_first, max(last_first + last_count, first + count) - last_first)
        else:
            out.append((first, count))
    return tuple(out)


def union(a: Runs, b: Runs) -> Runs:
    return normalise((*a, *b)) if b else a


def expand(runs: Runs) -> Iterator[int]:
    for first, count in runs:
        yield from range(first, first + count)


def count(runs: Runs) -> int:
    return sum(n for _, n in runs)


def contains(runs: Runs, extent: int) -> bool:
    """Whether ``extent`` is in the (normalised) ``runs``: a binary search, O(log runs)."""
    index = bisect.bisect_right(runs, (extent, 1 << 62)) - 1
    return index >= 0 and runs[index][0] <= extent < runs[index][0] + runs[index][1]


def difference(a: Runs, b: Runs) -> Runs:
    """The extents of ``a`` not in ``b`` (both normalised), as normalised runs."""
    if not a or not b:
        return a
    out: list[tuple[int, int]] = []
    index = 0
    for first, count_ in a:
        start, end = first, first + count_
        while index < len(b) and b[index][0] + b[index][1] <= start:
            index += 1
        probe = index
        while start < end and probe < len(b) and b[probe][0] < end:
            cut_first, cut_end = b[probe][0], b[probe][0] + b[probe][1]
            if cut_first > start:
                out.append((start, cut_first - start))
            start = max(start, cut_end)
            probe += 1
        if start < end:
            out.append((start, end - start))
    return tuple(out)
