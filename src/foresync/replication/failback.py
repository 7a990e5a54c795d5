"""The failback set: where a secondary's copy may differ from the primary it follows (claim 8).

Theory of operation. A secondary's durable record names every extent the primary may have
written without the write being durable here: the record's extents, the pending large ranges
(zero/trim ops journaled as one range), and the set of a resync pass that has not finished
(issue 19). Add the extents already known stale (a rolled-back resync, failed writes, discarded
local changes) and that is every extent where this copy may differ. When the secondary is
promoted, the set becomes its out-of-sync set, and a failback copies exactly it (plus what was
written since) back to the old primary. The daemon (``daemon/transitions.py``) and the seeded
simulator both compute it here, and the simulator checks a failback against it (invariant 6).
"""

from __future__ import annotations

from collections.abc import Iterable

from foresync.journal.format import RecordState
from foresync.record import runs as extent_runs
from foresync.record.predict import extents_of


def failback_set(state: RecordState, extent_size: int, stale: Iterable[int] = ()) -> set[int]:
    """Every extent the durable record ``state`` covers, and the ``stale`` ones."""
    extents = set(state.extents)
    extents.update(stale)
    extents.update(extent_runs.expand(state.resync))
    for offset, length in state.ranges.values():
        extents.update(extents_of(offset, length, extent_size))
    return extents
