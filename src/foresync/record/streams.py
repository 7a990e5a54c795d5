"""The default eviction policy: ``adaptive`` whose s3fifo expert knows sequential streams.

Theory of operation. Neither s3fifo nor least-recently-added is at or below both claimed
policies on every trace of the suite (docs/benchmarks.md): s3fifo missed up to 12% more than lru
on an append-heavy log service at 64 KiB extents, and 2 writes in 1,737 more on a build at 1 MiB.
Listing the misses of each policy write by write (``ReplayEngine.write``) showed what s3fifo
got wrong on the log: the record filled with extents that *sequential streams had already
written past*. The tail of a fast log, of the ext4 journal or of a gzip output is written a few
times in a row while the stream fills it (enough reuses, counted ``reuse_gap`` apart, to earn the extent a place in
``main`` with a high counter), then never again once the stream has moved on; it then sits in
``main`` for up to ``FREQ_MAX + 1`` laps and pushes out the slow logs' tails, which are written
again every few thousand writes. Least-recently-added does not keep such extents longer than any
other, which is why it missed less there.

So this policy's s3fifo expert (``StreamS3Fifo``) watches the write stream: a write that starts
exactly where one of the last ``STREAMS_TRACKED`` writes ended continues a sequential stream;
every extent that stream has now left behind (the one holding the byte before the write, up to
the write's last extent, which the stream may still fill) is *passed*: its counter drops to zero
and, in ``main``, it moves to the CLOCK hand, so it is the first chosen once clean. Nothing else
changes: an extent written again later earns its counter back, and in-place writes (a
database's pages) continue no stream, so they keep s3fifo's order; a WAL's extents are passed
like a log's.

That alone met the target on every row but the build at 1/16 and 1 MiB (16 misses against lru's
13: ext4's block-group metadata, written in one burst at unpack and again at delete, which lru
happens to keep). The policy is therefore ``adaptive`` (adaptive.py: LeCaR's regret between
the s3fifo expert and least-recently-added, its constants unchanged) with ``StreamS3Fifo`` as its
s3fifo expert. On the suite it is at or below both claimed policies on all 20 rows and 25% or
more below them on three traces (bench/record_policy_streams.py; docs/benchmarks.md, with the
variant grid and how close the build row is: 1-3 writes above lru at capacities near 1/16).
It costs about 1 us a write more than ``adaptive`` in ``note_write``.

The stream rule only reorders and forgets counters: which extents *may* be chosen is still the
shared rule (``clean``, ``keep``) of S3Fifo.choose and Adaptive.choose, so only clean extents are
ever evicted. Memory is bounded: ``STREAMS_TRACKED`` stream ends, plus what S3Fifo and Adaptive
hold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from foresync.record.adaptive import Adaptive
from foresync.record.eviction import S3Fifo

STREAMS_TRACKED = 16  # the ends of the latest writes a new write may continue (as replay.py's)
# A passed extent in ``main`` also moves to the CLOCK hand (not only loses its counter): log at
# 1/16 and 64 KiB extents 568 misses against 600 without (lru 619; bench/record_policy_streams.py).
PASSED_TO_HAND = True


class StreamS3Fifo(S3Fifo):
    """S3Fifo that demotes the extents a sequential stream has written past."""

    def __init__(self, capacity: int, extent_size: int) -> None:
        super().__init__(capacity)
        self.extent_size = extent_size
        # Byte ends of the latest writes, oldest first. A deque of 16 searched in full costs half
        # an OrderedDict's pop and insert (0.21 us against 0.42 us a write, timeit).
        self._ends: deque[int] = deque(maxlen=STREAMS_TRACKED)
        self.passed_total = 0  # extents demoted (statistics)

    def streamed(self, offset: int, length: int) -> None:
        """The write of ``length`` bytes at ``offset`` was noted (after ``written``)."""
        ends = self._ends
        if offset in ends:
            ends.remove(offset)
            size = self.extent_size
            first, last = (offset - 1) // size, (offset + length - 1) // size
            while first < last:  # most continuing writes stay in one extent: no pass
                self._passed(first)
                first += 1
        ends.append(offset + length)

    def _passed(self, extent: int) -> None:
        if extent in self._freq:
            self._freq[extent] = 0
            self.passed_total += 1
            if PASSED_TO_HAND and extent in self._main:
                self._main.move_to_end(extent, last=False)  # the CLOCK hand's next look


class Streams(Adaptive):
    """``adaptive`` over least-recently-added and ``StreamS3Fifo``. Membership is the caller's."""

    def __init__(self, capacity: int, extent_size: int) -> None:
        super().__init__(capacity)
        self._streams = StreamS3Fifo(capacity, extent_size)
        self._s3 = self._streams

    def streamed(self, offset: int, length: int) -> None:
        self._streams.streamed(offset, length)

    def streamed_hook(self) -> Callable[[int, int], None]:
        """``streamed`` without the indirection, for the write path (RecordCopy.note_write)."""
        return self._streams.streamed
