"""Record room held for the ADDED answers in flight, and read-ahead's view of the record.

Theory of operation (claims 11-12, 17-19). A miss goes with a *budget*: at most that many extents
the secondary may add to its record for it. Until its ADDED comes back (or the link drops, when it
never will) the primary holds that many record slots (``RecordCopy.reserved``), so no later miss
counts on room that is already promised, and it notes which extents the secondary is expected to
add: the secondary follows the same rule (``additions`` with the same predictor), so we know. A
write to such an extent waits for that ADDED and then goes as a hit (``will_add``), instead of
sending a second miss that reserves room again.

Read-ahead (lookahead mode): a sequential hit that comes within ``lookahead // 2 + 1`` extents of
the record's edge (counting what ADDEDs in flight will add) goes as a MISS with a budget for the
extents ahead of the stream (``read_ahead_due``, ``read_ahead_wanted``); it reserves the same way.

Pure: the record copy and the predictor are the core's, shared; an op carries its own budget and
expected extents, so a release needs nothing else.
"""

from __future__ import annotations

from foresync.record.predict import Predictor, additions, read_ahead_due, read_ahead_wanted
from foresync.record.record import RecordCopy
from foresync.replication.ordering import Op


class Reservations:
    """The extents ADDED answers in flight will add, and the record slots held for them.

    Also a container: an extent is *in* it if the record holds it or an ADDED in flight will add
    it (read-ahead's view of where the record ends)."""

    __slots__ = ("_extent_count", "_lookahead", "_predictor", "_record", "pending")

    def __init__(self, record: RecordCopy, predictor: Predictor, lookahead: int,
                 extent_count: int) -> None:
        self._record = record
        self._predictor = predictor
        self._lookahead = lookahead
        self._extent_count = extent_count
        self.pending: dict[int, int] = {}  # extent -> in-flight ADDEDs expected to add it

    def __contains__(self, extent: int, /) -> bool:
        return extent in self._record or extent in self.pending

    def will_add(self, extents: range) -> bool:
        """Whether every extent is recorded or will be once an ADDED in flight comes (and at
        least one such ADDED is in flight)."""
        pending = self.pending
        record = self._record
        return bool(pending) and all(e in record or e in pending for e in extents)

    def for_miss(self, touched: range, budget: int) -> tuple[int, ...]:
        """What the secondary will add for a miss (it follows the same rule, claims 18-19)."""
        return tuple(additions(self._predictor, touched, budget, self._lookahead,
                               self._extent_count, self._record))

    def read_ahead_due(self, extents: range) -> bool:
        """Whether the record (with the adds in flight) ends within ``lookahead // 2 + 1``
        extents of a sequential write to ``extents``."""
        return read_ahead_due(extents, self._lookahead, self._extent_count, self)

    def read_ahead_wanted(self, extents: range) -> tuple[int, ...]:
        return read_ahead_wanted(self._predictor, extents, self._lookahead, self._extent_count,
                                 self)

    def reserve(self, op: Op, budget: int, expected: tuple[int, ...]) -> None:
        """Hold ``budget`` record slots for what the secondary will add for ``op``, and note the
        extents expected, so that writes to them wait for this ADDED instead of missing again."""
        op.budget = budget
        self._record.reserved += budget
        op.expected_adds = expected
        pending = self.pending
        for extent in expected:
            pending[extent] = pending.get(extent, 0) + 1

    def release(self, op: Op) -> None:
        """A miss's or read-ahead's ADDED came, or never will (disconnect): release what
        ``reserve`` held for it."""
        pending = self.pending
        for extent in op.expected_adds:
            left = pending.get(extent, 0) - 1
            if left > 0:
                pending[extent] = left
            else:
                pending.pop(extent, None)
        op.expected_adds = ()
        self._record.reserved -= op.budget
        op.budget = 0
