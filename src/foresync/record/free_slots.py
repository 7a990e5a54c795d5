"""Free record slots kept ready, while misses have had to wait for room (issue 14).

Theory of operation. A miss waits only for its own round trip if it finds room in the record; if
every slot is taken by extents whose latest write is not yet durable on both sites (or held for
ADDEDs in flight), it also waits for the next durable watermark (a *room wait*), which about
doubles its latency. Keeping slots free ahead of need avoids that: whenever the watermark moves
and fewer than ``low`` slots are free, clean extents are evicted (the policy's own choice) up to
``high`` free, and a miss takes its predictions only if ``low`` slots stay free after them.

Held-free slots are slots the record does not use, though: replayed on the trace suite at 1/16 of
the volume, always keeping them raised the miss ratio by 2-12% relative (sqlite 4.78% to 5.17% at
64 KiB extents, log 0.83% to 0.98%), on traces where no miss ever waited for room. So the reserve
is kept only while it is needed: from a room wait until ``window`` misses in a row (one record's
worth, ``capacity``) have found room without waiting. A workload the watermark keeps up with
never pays for it; one whose misses outrun the watermark gets it at its first wait.

The marks are a sixteenth and an eighth of the capacity (4 and 8 of 64 slots), at least 1 and 2;
a record under 4 slots keeps none. Pure: the primary (replication/primary.py) and the replay of
``foresync tune`` (replay.py) feed it the same events, so both decide misses alike.
"""

from __future__ import annotations


def free_marks(capacity: int) -> tuple[int, int]:
    """(low, high) for a record of ``capacity`` extents; (0, 0) under 4."""
    if capacity < 4:
        return 0, 0
    low = max(1, capacity // 16)
    return low, max(low + 1, capacity // 8)


class FreeSlots:
    """Whether, and how many, free slots to keep ready for the next misses."""

    __slots__ = ("_left", "high", "low", "window")

    def __init__(self, capacity: int, always: bool = False) -> None:
        self.low, self.high = free_marks(capacity)
        self.window = capacity  # misses without a room wait before the reserve is dropped
        self._left = 1 << 62 if always else 0  # misses left before the reserve is dropped

    @property
    def active(self) -> bool:
        return self._left > 0 and self.low > 0

    def spare(self) -> int:
        """Slots a miss's predictions must leave free (``RecordCopy.room_for_miss``)."""
        return self.low if self._left > 0 else 0

    def wanted(self, free: int) -> int:
        """How many clean extents to evict ahead of need now that ``free`` slots are free: up to
        the high mark once under the low mark, while the reserve is kept; else 0."""
        if self._left <= 0 or free >= self.low:
            return 0
        return self.high - free

    def room_wait(self) -> None:
        """A miss found no room and waits for the watermark: keep the reserve."""
        self._left = max(self._left, self.window)

    def miss_sent(self) -> None:
        """A miss found room (at once or after its wait)."""
        if self._left > 0:
            self._left -= 1
