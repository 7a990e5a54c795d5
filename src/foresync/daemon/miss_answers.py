"""How long the secondary takes to answer a miss: from reading its MISS to sending its ADDED.

The primary measures a miss's whole trip (``record_miss_round_trip_s``: its MISS sent to its
ADDED read). This is the secondary's share of it: the frame read, the additions journaled and
committed (one group fdatasync), the ADDED queued. The rest of the trip is the link both ways,
including whatever the MISS waited behind in it (bulk writes sent before it, which a MISS cannot
overtake in one ordered stream). Operators and bench/record_pair.py read the split from
``/status`` (``counters.misses_added``, ``counters.miss_added_s``) and from the metrics
``foresync_secondary_misses_added`` and ``foresync_secondary_miss_added_seconds``.

A MISS write or zero is answered by one ADDED naming its seq, and these are what the primary
times as misses; a RANGE op's ADDED is not counted here (nor there): it may wait behind the
zeroing of the RANGE before it, which is no miss's cost. A frame read is stamped with the time
its bytes were read (``LinkProtocol.last_rx``). Bounded: the stamps are those of misses not
yet answered (at most the primary's window of them), and a session's end forgets them (its
ADDEDs will never go).
"""

from __future__ import annotations

import time

from foresync.link import wire

_MISS = int(wire.WriteFlag.MISS)  # an int: no enum.py per frame


class MissAnswers:
    def __init__(self) -> None:
        self._read_at: dict[int, float] = {}  # seq of a MISS read -> when it was read
        self.answered = 0  # ADDEDs sent for a MISS read, this process's life
        self.seconds = 0.0  # their read-to-ADDED times, summed

    def read(self, message: wire.Message, read_at: float) -> None:
        """A frame was read at ``read_at``: stamp it if it is a MISS."""
        kind = type(message)
        if (kind is wire.Write or kind is wire.Zero) and message.flags & _MISS:  # type: ignore[union-attr]
            self._read_at[message.seq] = read_at  # type: ignore[union-attr]

    def sent(self, added: wire.Added) -> None:
        """Its ADDED is going out now."""
        read_at = self._read_at.pop(added.seq, None)
        if read_at is not None:
            self.answered += 1
            self.seconds += max(0.0, time.monotonic() - read_at)

    def session_ended(self) -> None:
        self._read_at.clear()
