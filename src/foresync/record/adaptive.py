"""An adaptive eviction policy: follow whichever of s3fifo and lru has regretted less lately.

Theory of operation. Neither policy is best on every workload (docs/benchmarks.md): s3fifo wins
where a few extents are written again and again among many written once (sqlite, git, pgbench),
least-recently-added where bursts of one-use extents come back a while later (ext4's metadata in
a build, the tails of appended logs). So this policy keeps both orders of the record's members
and follows one of them, learning which from its own mistakes (LeCaR's regret, Vietri et al.,
HotStorage 2018, made deterministic):

* every extent it evicts is remembered (its number only, at most ``capacity`` of them) with the
  expert that chose it;
* an extent added again while remembered (a miss or a prediction brings it back: it was evicted
  too early) is a *regret* of the expert that chose it;
* each expert's regrets and evictions are moving counts that forget with a half-life of about
  ``WINDOW`` writes; the policy follows lru only while lru's regrets per eviction (with a prior
  of one regret in ``PRIOR`` evictions) are ``MARGIN`` below s3fifo's, s3fifo otherwise;
* so that the rate of the expert not followed stays known, it makes the choice whenever it made
  fewer than one in ``EXPLORE`` of the recent evictions.

On the trace suite (bench/record_policy_adaptive.py, docs/benchmarks.md) this is at or below
both claimed policies on every row but one (log at 1/16 and 64 KiB extents, +8% against lru),
where s3fifo is above on two; it gives up part of s3fifo's lead on sqlite and git. So s3fifo
stays the default and this is selectable (``eviction = "adaptive"``).

An earlier version compared two ghost simulations of the write stream (names only, one per
expert): ghosts without the record's predictions and clean lag disagreed with the real record
(on the log trace lru's ghost missed twice as often as s3fifo's, the real lru 11% less) and
changed nothing (docs/benchmarks.md).

Whichever expert chooses, it chooses through the shared rule (``clean``, ``keep``): only clean
extents, never one the miss making room is about to write, exactly as s3fifo and the claimed
policies do (record.py). Memory is bounded: the orders hold the record's members, the memory of
evictions at most ``capacity`` numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterable

from foresync.record.eviction import S3Fifo

WINDOW = 4096  # writes: the regret counts forget with about this half-life
MARGIN = 0.3  # lru is followed only while its regret rate is at least 30% below s3fifo's
PRIOR = 8  # an expert with no evictions yet counts one regret in PRIOR
EXPLORE = 64  # the expert followed less makes at least 1 in EXPLORE of the recent evictions
_DECAY = 0.5 ** (1 / WINDOW)
_S3, _LRU = 0, 1


class Adaptive:
    """The record's order under both experts, and their regrets. Membership is the caller's."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._s3 = S3Fifo(capacity)
        self._lru: OrderedDict[int, None] = OrderedDict()  # members, oldest added first
        self._evicted_by: OrderedDict[int, int] = OrderedDict()  # extent -> expert, oldest first
        self._chooser = _S3  # the expert of the latest choice
        self.regrets = [0.0, 0.0]  # moving counts: s3fifo's, lru's
        self.evictions = [0.0, 0.0]  # moving counts of the extents each evicted
        self.chose = [0, 0]  # choices made by each expert (statistics)

    @property
    def ghost_hits(self) -> int:
        return self._s3.ghost_hits

    def ghosts(self) -> int:
        return self._s3.ghosts()

    def following_lru(self) -> bool:
        """Regrets per eviction (with a prior of one in ``PRIOR``), and every ``EXPLORE``-th
        choice by the expert chosen less in the window, so that its rate stays known."""
        rate = [(self.regrets[e] + 1.0 / PRIOR) / (self.evictions[e] + 1.0) for e in (_S3, _LRU)]
        lead = _LRU if rate[_LRU] < rate[_S3] * (1 - MARGIN) else _S3
        other = 1 - lead
        if self.evictions[other] * EXPLORE < self.evictions[lead]:
            return other == _LRU
        return lead == _LRU

    def added(self, extent: int) -> None:
        expert = self._evicted_by.pop(extent, None)
        if expert is not None:
            self.regrets[expert] += 1.0
        self._s3.added(extent)
        self._lru[extent] = None

    def adopted(self, extents: Iterable[int]) -> None:
        extents = list(extents)
        self._s3.adopted(extents)
        for extent in reversed(extents):  # old: first in line, as s3fifo queues them
            self._lru[extent] = None
            self._lru.move_to_end(extent, last=False)

    def written(self, extents: Iterable[int], seq: int) -> None:
        self._s3.written(extents, seq)
        self.regrets[_S3] *= _DECAY
        self.regrets[_LRU] *= _DECAY
        self.evictions[_S3] *= _DECAY
        self.evictions[_LRU] *= _DECAY

    def removed(self, extent: int) -> None:
        self._s3.removed(extent)
        self._lru.pop(extent, None)

    def evicted(self, extent: int) -> None:
        self._s3.evicted(extent)
        self._lru.pop(extent, None)
        self._evicted_by[extent] = self._chooser
        self.evictions[self._chooser] += 1.0
        self._evicted_by.move_to_end(extent)
        if len(self._evicted_by) > self.capacity:
            self._evicted_by.popitem(last=False)

    def choose(self, shortfall: int, clean: Callable[[int], bool], keep: Container[int],
               partial: bool = False) -> list[int] | None:
        """As ``S3Fifo.choose``, by the expert followed now."""
        if not self.following_lru():
            self._chooser = _S3
            self.chose[_S3] += 1
            return self._s3.choose(shortfall, clean, keep, partial)
        self._chooser = _LRU
        self.chose[_LRU] += 1
        chosen: list[int] = []
        for extent in self._lru:
            if len(chosen) >= shortfall:
                break
            if extent not in keep and clean(extent):
                chosen.append(extent)
        return chosen if partial or len(chosen) >= shortfall else None
