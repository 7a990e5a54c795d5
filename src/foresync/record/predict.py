"""Which extents to add to the record on a miss (claims 18-19).

A host that writes extent e is likely to write e+1, e+2, ... next (sequential streams, journals,
log-structured filesystems), so a miss adds the extents it touches plus the next ``lookahead``
consecutive ones, clamped to the volume (``[record] predictor = "next"``, the claims' rule).
``"history"`` also learns from the misses themselves (``HistoryPredictor``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable
from typing import Protocol


def extents_of(offset: int, length: int, extent_size: int) -> range:
    """The extent indexes a byte range touches (an empty range touches none)."""
    if length <= 0:
        return range(0)
    return range(offset // extent_size, (offset + length - 1) // extent_size + 1)


def predict(touched: range, lookahead: int, extent_count: int) -> range:
    """The ``lookahead`` extents after the last touched one, clamped to the volume."""
    start = touched.stop
    return range(start, min(start + lookahead, extent_count))


class Predictor:
    """Which extents a miss should also add (the secondary decides, the primary mirrors it).

    ``candidates`` is pure; ``observe`` learns from a miss once its MISS is sent (primary) or
    received (secondary), so both sites that see the same misses in sequence order compute the
    same candidates. If they ever differ (a site restarted and forgot), only the primary's
    guess of what the ADDED will hold is wrong: a write it held back for that ADDED goes as a
    miss after all. Correctness never depends on a prediction.
    """

    name = "next"

    def candidates(self, touched: range, lookahead: int, extent_count: int) -> Iterable[int]:
        """Extents to add after the touched ones, best first (the budget takes a prefix)."""
        return predict(touched, lookahead, extent_count)

    def observe(self, touched: range) -> None:
        """A miss (or read-ahead) on ``touched`` went out: learn from it."""


class HistoryPredictor(Predictor):
    """"Next N" plus what the misses' history teaches, alternating, learned first:

    * co-written extents: after a miss on extent e the next miss began at f, so when e misses
      again, f (and what followed f) is likely next: a database checkpoint, an ext4 journal
      commit followed by its metadata blocks, a build writing the same object files;
    * a stride: three misses in a row ``d`` extents apart (d > 1) predict the next ones ``d``
      further on (a strided table scan, an allocator stepping through block groups).

    Memory is bounded: ``HISTORY_MAX`` successors, oldest forgotten first.
    """

    name = "history"
    HISTORY_MAX = 65536

    def __init__(self) -> None:
        self._after: OrderedDict[int, int] = OrderedDict()  # last extent of a miss -> next miss's first
        self._last: int | None = None
        self._start: int | None = None
        self._delta = 0
        self._stride = 0

    def candidates(self, touched: range, lookahead: int, extent_count: int) -> Iterable[int]:
        learned: list[int] = []
        extent = touched.stop - 1
        for _ in range(lookahead):
            follower = self._after.get(extent)
            if follower is None or follower in touched or follower in learned or follower >= extent_count:
                break
            learned.append(follower)
            extent = follower
        if self._stride > 1:
            for k in (1, 2):
                guess = touched.start + k * self._stride
                if guess < extent_count and guess not in learned and guess not in touched:
                    learned.append(guess)
        out: list[int] = []
        sequential = iter(predict(touched, lookahead, extent_count))
        for guess in learned:
            out.append(guess)
            ahead = next(sequential, None)
            if ahead is not None and ahead not in out:
                out.append(ahead)
        out.extend(e for e in sequential if e not in out)
        return out

    def observe(self, touched: range) -> None:
        after = self._after
        if self._last is not None and self._last != touched.start:
            after[self._last] = touched.start
            after.move_to_end(self._last)
            if len(after) > self.HISTORY_MAX:
                after.popitem(last=False)
        if self._start is not None:
            delta = touched.start - self._start
            self._stride = delta if delta == self._delta else 0
            self._delta = delta
        self._start, self._last = touched.start, touched.stop - 1


PREDICTORS: dict[str, type[Predictor]] = {"next": Predictor, "history": HistoryPredictor}


class Present(Protocol):
    def __contains__(self, extent: int, /) -> bool: ...


def read_ahead_due(touched: range, lookahead: int, extent_count: int, present: Present) -> bool:
    """Whether the record (``present``: members and adds in flight) ends within
    ``lookahead // 2 + 1`` extents of a sequential write to ``touched``: time to extend it."""
    if not lookahead:
        return False
    near = predict(touched, lookahead, extent_count)[: lookahead // 2 + 1]
    return not all(e in present for e in near)


def read_ahead_wanted(predictor: Predictor, touched: range, lookahead: int, extent_count: int,
                      present: Present) -> tuple[int, ...]:
    """The extents a read-ahead asks for: the predictor's first ``lookahead`` not ``present``."""
    ahead = predictor.candidates(touched, lookahead, extent_count)
    return tuple(e for e in ahead if e not in present)[:lookahead]


def additions(predictor: Predictor, touched: range, budget: int, lookahead: int, extent_count: int,
              present: Container[int]) -> list[int]:
    """What a miss adds: its touched extents not ``present``, then candidates, ``budget`` new at
    most (claims 18-19). The secondary's ``_add`` and the primary's mirror of it both use this."""
    new = [e for e in touched if e not in present]
    for extent in predictor.candidates(touched, lookahead, extent_count):
        if len(new) >= budget:
            break
        if extent not in present and extent not in new:
            new.append(extent)
    return new
