"""A resync into the secondary, measured from the secondary's own side (issue 17).

Theory of operation. The primary chooses what a pass sends, but the secondary knows enough to
show the same progress, total, done, rate and ETA, without any extra message on the link:

- **Total.** In sync mode every pass starts with RESYNC_SET: the runs of extents it may change
  here, which the core journals (``RecordState.resync``) before anything after it lands. That
  set is the pass's extent list, exactly as the primary counts its total (extents times the
  extent size). It spans reconnects: the set stays until RESYNC_DONE, so the total is of
  everything that may still change here until this copy is consistent again. A full sync (this
  site sent checksums of every extent) covers the whole volume in either mode. Only an
  incremental pass in async mode has no set here (the primary keeps the list to itself); its
  total is what arrived so far and ``total_known`` says so.
- **Done.** Extents of the pass received at least once (a bitmap: an extent re-sent after a
  reconnect counts once), times the extent size. A full sync first compares, and an extent
  found identical is never sent: the primary sweeps the volume in extent order, so a resync
  write for extent ``e`` means every extent below ``e`` has been compared (the sweep position).
  There the compare phase's done is the sweep position, and the whole pass's done is the larger
  of it and the extents received. RESYNC_DONE makes done equal to total.
- **Rates** count from the first resync write of the current session (the primary's pass starts
  afresh at each WELCOME), so ETA = remaining / rate as on the primary.

Pure: the adapter passes ``now`` (monotonic) and the set from the core's state; no I/O.
"""

from __future__ import annotations

from foresync.record import runs as extent_runs
from foresync.replication.progress import ResyncProgress


class ResyncWatch:
    def __init__(self, *, size: int, extent_size: int) -> None:
        self._extent_size = extent_size
        self._extent_count = -(-size // extent_size)
        self._seen = bytearray(-(-self._extent_count // 8))  # extents received this pass
        self._seen_count = 0
        self._runs: extent_runs.Runs = ()  # RESYNC_SETs received this pass
        self._sweep = 0  # 1 + the highest extent received this session (a full sync's position)
        self._session_started = 0.0  # monotonic: the first resync write of this session
        self._session_bytes = 0  # resync bytes received this session
        self.received_bytes = 0  # resync bytes received this pass (every session)
        self._counted = False  # this pass is counted in ``passes``
        self._passes = 0
        self._last_total = 0  # of the last finished pass: shown as done once it is over
        self._last_full = False
        self._last_sent = 0  # ... and the bytes of its extents that were sent (received here)

    # -- events from the adapter ------------------------------------------------------------------

    def session_started(self) -> None:
        """A primary connected: its pass (if any) starts afresh, sweeping from extent 0."""
        self._sweep = 0
        self._session_started = 0.0
        self._session_bytes = 0

    def set_received(self, runs: extent_runs.Runs) -> None:
        """RESYNC_SET: these extents belong to the pass (the core journals them)."""
        self._runs = extent_runs.union(self._runs, extent_runs.normalise(runs))
        self._count_pass()

    def received(self, offset: int, length: int, now: float) -> None:
        """A resync write landed here (one extent at most, from its start)."""
        if not self._session_started:
            self._session_started = now
            self._count_pass()
        self._session_bytes += length
        self.received_bytes += length
        extent = offset // self._extent_size
        if 0 <= extent < self._extent_count:
            byte, bit = divmod(extent, 8)
            if not self._seen[byte] & (1 << bit):
                self._seen[byte] |= 1 << bit
                self._seen_count += 1
            self._sweep = max(self._sweep, extent + 1)

    def finished(self, full: bool, set_runs: extent_runs.Runs = ()) -> None:
        """RESYNC_DONE: the pass is over (``full``: it was a full sync). The core has already
        cleared its set, so the total comes from the sets received here (``set_runs``: the
        core's, from before a restart, if still known)."""
        self._count_pass()
        self._last_total = self.total_bytes(set_runs, full)
        self._last_full = full
        self._last_sent = min(self._last_total, self._seen_count * self._extent_size)
        self._seen = bytearray(len(self._seen))
        self._seen_count = 0
        self._runs = ()
        self._counted = False
        self.session_started()
        self.received_bytes = 0

    def _count_pass(self) -> None:
        if not self._counted:
            self._counted = True
            self._passes += 1

    # -- the view ---------------------------------------------------------------------------------

    def total_bytes(self, set_runs: extent_runs.Runs, full: bool) -> int:
        """The pass's total: the whole volume for a full sync, else the resync sets (sync mode;
        ``set_runs``: the core's journaled set, which survives a restart here), else (async,
        incremental) what arrived so far."""
        if full:
            return self._extent_count * self._extent_size
        runs = extent_runs.union(self._runs, set_runs) if set_runs else self._runs
        if runs:
            return max(extent_runs.count(runs), self._seen_count) * self._extent_size
        return self._seen_count * self._extent_size

    def total_known(self, set_runs: extent_runs.Runs, full: bool) -> bool:
        return full or bool(self._runs or set_runs)

    def progress(self, *, active: bool, set_runs: extent_runs.Runs, full: bool,
                 now: float) -> ResyncProgress:
        """The pass as the primary would report it, from here. ``active``: this copy waits for a
        pass to finish; ``set_runs``: the core's journaled resync set; ``full``: this site sent
        checksums of every extent (a full sync that compares first)."""
        size = self._extent_size
        if not active:
            total = self._last_total
            compare = total if self._last_full else 0
            sent = self._last_sent if self._last_full else total
            return ResyncProgress(total, total, 0, False, compare, compare, 0, sent, sent,
                                  self._passes, 0)
        total = self.total_bytes(set_runs, full)
        received = self._seen_count * size
        elapsed = now - self._session_started if self._session_started else 0.0
        rate = int(self._session_bytes / elapsed) if elapsed > 0 else 0
        set_extents = extent_runs.count(set_runs)
        if full:
            compare_done = min(total, self._sweep * size)
            compare_rate = int(compare_done / elapsed) if elapsed > 0 else 0
            done = min(total, max(received, compare_done))
            return ResyncProgress(done, total, rate, True, total, compare_done, compare_rate,
                                  received, received, self._passes, set_extents)
        done = min(total, received)
        return ResyncProgress(done, total, rate, True, 0, 0, 0, total, done, self._passes,
                              set_extents)
