"""The secondary's side of RESYNC_PROGRESS: when a pass's extents may leave its resync set.

Theory of operation (issue 19). The primary names extents it is done with as of a seq (their
data went, or was found identical, with every earlier write on the ordered stream, and what it
read for them is durable on its side). Here they may leave the journaled resync set only once
that seq is durable (``durable``): before that a crash could lose their data while the set no
longer says they may differ. A RESYNC_SET arriving meanwhile puts extents back in the pass
(``readded``): an earlier progress must not take them out again. A new connection drops what
is queued (``clear``): the set then only stays larger, which is safe.

Pure: runs in, runs out.
"""

from __future__ import annotations

from collections import deque

from foresync.faults import Faults
from foresync.record import runs as extent_runs


class SetProgress:
    """RESYNC_PROGRESS received and not yet durable here: (seq, runs), in stream order."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._queued: deque[tuple[int, extent_runs.Runs]] = deque()

    def __bool__(self) -> bool:
        return bool(self._queued)

    def add(self, seq: int, runs: extent_runs.Runs) -> None:
        self._queued.append((seq, extent_runs.normalise(runs)))

    def readded(self, runs: extent_runs.Runs) -> None:
        """A RESYNC_SET put ``runs`` back in the pass."""
        if self._queued:
            self._queued = deque((seq, extent_runs.difference(done, runs)) for seq, done in self._queued)

    def durable(self, durable_seq: int) -> extent_runs.Runs:
        """The extents whose progress is durable now (they leave the set), no longer queued."""
        done: extent_runs.Runs = ()
        queued = self._queued
        while queued and (queued[0][0] <= durable_seq or self._faults.resume_before_durable):
            done = extent_runs.union(done, queued.popleft()[1])  # the fault: deliberately wrong
        return done

    def clear(self) -> None:
        self._queued.clear()
