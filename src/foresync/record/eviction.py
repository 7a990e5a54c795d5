"""S3-FIFO eviction adapted to the record: recency and frequency of writes, clean extents only.

Theory of operation. The claims' policies look only at the order extents were *added*:
least-recently-added (claim 15) and generations (claim 16) both evict an extent the host has
written a thousand times since it was added before one a prediction added and nobody wrote. The
record is a cache of "extents about to be written", so the right signal is the write stream:

* A new extent enters a small FIFO queue ``small`` (about a tenth of the capacity). Most extents
  a miss or a prediction adds are written once or never again (a sequential stream passes, a
  prediction misses); they leave from here quickly, and only they are remembered in ``ghost``
  (extent numbers only, at most ``capacity`` of them).
* An extent written again while in ``small`` moves to the main queue when it reaches the queue's
  tail; an extent added again while its number is still a ghost goes straight to ``main``: it was
  evicted too early once.
* ``main`` is a CLOCK: each reuse raises the extent's counter (at most ``FREQ_MAX``); at the tail
  an extent with a non-zero counter is given another lap with the counter lowered by one,
  otherwise it is chosen.

This is S3-FIFO (Yang et al., SOSP 2023) with one change the record needs: an extent may be
chosen only while it is *clean* (its latest write durable on both sites, record.py) and not one
of the extents the miss making room is about to write. A dirty or kept extent at a tail is
passed over (it keeps its counter), so the policy can never drop an extent whose data the
secondary may still lack. If the preferred queue has too few clean extents, the other queue is
tried; if there are not enough clean extents in all, nothing is chosen and the miss waits for
the watermark, exactly as with the claimed policies.

Choosing is split from evicting like the other policies: ``choose`` never changes membership
(only the queues' order and the counters, which any later ``choose`` would change the same way),
and ``evicted`` removes what the caller really evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterable

FREQ_MAX = 3  # a write counter saturates here: three more laps at most before eviction
SMALL_FRACTION = 10  # ``small`` targets capacity / SMALL_FRACTION extents (S3-FIFO's 10%)
# A write counts as a reuse only capacity / REUSE_GAP_DIVISOR writes after the last one counted:
# a burst of small writes filling one extent (a database's WAL, a log's appends) is one use, not
# FREQ_MAX. Without it, s3fifo missed 2.3x as often as lru on pgbench at 1/4 of the volume and
# 64 KiB extents (3.93% against 1.68%); with it, 1.67% (docs/benchmarks.md).
REUSE_GAP_DIVISOR = 2
# ``ghost`` remembers capacity x GHOST_FACTOR evicted extents. Longer memories (2, 4, 8) changed
# no row of the docs table for the better, and raised pgbench at 1/16 and 64 KiB from 15.99% to
# 16.28-16.31% (bench/record_policy_variants.py, docs/benchmarks.md).
GHOST_FACTOR = 1


class S3Fifo:
    """The queues of one record copy. Membership is the caller's; this holds only the order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.small_target = max(1, capacity // SMALL_FRACTION)
        self._small: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._main: OrderedDict[int, None] = OrderedDict()  # the CLOCK's tail is the first
        self._freq: dict[int, int] = {}  # member -> reuses counted since added (or its last lap)
        self._counted: dict[int, int] = {}  # member -> seq of its last counted reuse or its adding
        self._seq = 0  # the latest write seq seen
        self.reuse_gap = max(1, capacity // REUSE_GAP_DIVISOR)
        self._ghost: OrderedDict[int, None] = OrderedDict()  # recently evicted from ``small``
        self.ghost_hits = 0  # additions that found their extent's ghost (statistics)

    def added(self, extent: int) -> None:
        if self._ghost.pop(extent, 0) is None:
            self.ghost_hits += 1
            self._main[extent] = None
        else:
            self._small[extent] = None
        self._freq[extent] = 0
        self._counted[extent] = self._seq

    def adopted(self, extents: Iterable[int]) -> None:
        """Extents of a record adopted wholesale: old and unwritten, first in line in ``main``."""
        for extent in extents:
            self._main[extent] = None
            self._main.move_to_end(extent, last=False)
            self._freq[extent] = 0
            self._counted[extent] = self._seq

    def written(self, extents: Iterable[int], seq: int) -> None:
        """Write ``seq`` touched ``extents``. It counts as a reuse of a member only if at least
        ``reuse_gap`` writes came since its last counted one (or its addition)."""
        self._seq = seq
        freq, counted, gap = self._freq, self._counted, self.reuse_gap
        for extent in extents:
            count = freq.get(extent)
            if count is not None and count < FREQ_MAX and seq - counted[extent] >= gap:
                freq[extent] = count + 1
                counted[extent] = seq

    def removed(self, extent: int) -> None:
        """Gone from the record without being chosen (the secondary's record was adopted)."""
        self._small.pop(extent, None)
        self._main.pop(extent, None)
        self._freq.pop(extent, None)
        self._counted.pop(extent, None)

    def evicted(self, extent: int) -> None:
        if self._small.pop(extent, 0) is None:
            self._ghost[extent] = None
            if len(self._ghost) > self.capacity * GHOST_FACTOR:
                self._ghost.popitem(last=False)
        self._main.pop(extent, None)
        self._freq.pop(extent, None)
        self._counted.pop(extent, None)

    def ghosts(self) -> int:
        return len(self._ghost)

    def choose(self, shortfall: int, clean: Callable[[int], bool], keep: Container[int],
               partial: bool = False) -> list[int] | None:
        """At least ``shortfall`` clean extents to evict, not in ``keep``; None if there are not
        enough (with ``partial``, as many as there are, up to ``shortfall``: eviction ahead of
        need). ``clean`` is the record's test (the deliberate bug replaces it)."""
        chosen: list[int] = []
        taken: set[int] = set()

        def usable(extent: int) -> bool:
            return extent not in taken and extent not in keep and clean(extent)

        if len(self._small) > self.small_target:
            self._from_small(shortfall, usable, chosen, taken, promote=True)
        if len(chosen) < shortfall:
            self._from_main(shortfall, usable, chosen, taken)
        if len(chosen) < shortfall:
            # Too few clean extents in ``main``: take clean ones from ``small`` after all, even
            # ones written again (being clean, they cost no more than any other miss later).
            self._from_small(shortfall, usable, chosen, taken, promote=False)
        return chosen if partial or len(chosen) >= shortfall else None

    def _from_small(self, shortfall: int, usable: Callable[[int], bool], chosen: list[int],
                    taken: set[int], promote: bool) -> None:
        """Oldest first: a written-again extent moves to ``main`` (``promote``), an unwritten
        clean one is chosen. Stops when ``small`` is down to its target (``promote``) or when
        enough are chosen."""
        freq = self._freq
        left = len(self._small) - self.small_target
        for extent in list(self._small):
            if len(chosen) >= shortfall or (promote and left <= 0):
                return
            if promote and freq[extent] > 0:
                del self._small[extent]
                self._main[extent] = None
                freq[extent] = 0
                left -= 1
            elif usable(extent):
                chosen.append(extent)
                taken.add(extent)
                left -= 1

    def _from_main(self, shortfall: int, usable: Callable[[int], bool], chosen: list[int],
                   taken: set[int]) -> None:
        """The CLOCK hand: the extent at the tail goes round to the head, its counter lowered by
        one, or is chosen at zero. Dirty and kept extents go round untouched. It stops once a
        whole lap chose nothing and lowered nothing (too few clean extents), so a lap costs
        at most one pass and FREQ_MAX + 1 laps choose every clean extent there is."""
        freq, main = self._freq, self._main
        idle = 0  # extents passed over since the last one chosen or lowered
        while len(chosen) < shortfall and idle < len(main):
            extent = next(iter(main))
            main.move_to_end(extent)
            if not usable(extent):
                idle += 1  # dirty, kept or already chosen
            elif freq[extent] > 0:
                freq[extent] -= 1
                idle = 0
            else:
                chosen.append(extent)
                taken.add(extent)
                idle = 0
