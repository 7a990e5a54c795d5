"""The secondary's checksums for a full sync, as they stream in (issue 19).

Theory of operation. A secondary that is new or half-synced says so in its WELCOME with
``WelcomeFlag.CHECKSUMS``, then hashes its image (every extent, or for a resumed pass only the
runs left of its resync set) chunk by chunk in a worker and sends the chunks
(CHECKSUMS, at most ``wire.CHECKSUM_CHUNK_EXTENTS`` each) in extent order, while the session
runs. The primary's pass sweeps the volume in the same order and compares an extent as soon as
its checksum is here (``get``); it waits only when it catches up with the stream (``has``).
Chunks the sweep has passed are dropped (``release_below``): what is held is at most 8 bytes per
extent received and not yet compared (an ``array('Q')``, not a tuple of ints at 40 bytes each),
so 32 MiB at worst for a 4 TiB volume of 1 MiB extents, and in practice a few chunks, since the
primary compares about as fast as the secondary hashes. One WELCOME carrying every checksum was
a 32 MiB frame at 4 TiB, the ceiling of ``max_frame_size``, and 0.45 s decoding on the loop.

A checksum taken while writes land is still sound. Each byte the secondary read holds either
what the primary has now, or is overwritten by a write still on the ordered stream (every
write the primary made before it compared is on it, after the WELCOME): an extent found
identical ends identical once the stream has landed. Writes from an earlier session land
before the WELCOME (the adapter commits them first), so none can land behind a checksum.

Pure: chunks in, lookups out.
"""

from __future__ import annotations

from array import array
from collections import deque

from foresync.errors import RemoteProtocolError
from foresync.record.runs import Runs, count

_CHECKSUM = "Q"  # xxh3_64


class RemoteChecksums:
    """The checksums of the extents of ``runs`` (every extent for a full sync, what is left
    of an interrupted pass's set for a resumed one), in order, as the secondary sends them."""

    def __init__(self, runs: Runs) -> None:
        self._runs: deque[tuple[int, int]] = deque(runs)
        self.expected = count(runs)
        self.received = 0  # checksums that have arrived
        self._next = runs[0][0] if runs else 0  # the extent the next chunk must start at
        self._chunks: deque[tuple[int, array[int]]] = deque()  # (first extent, checksums)
        self.held = 0  # checksums held now (8 bytes each)
        self.held_max = 0  # the most held at once this pass (/status, the benchmark)

    def add(self, first: int, hashes: tuple[int, ...]) -> None:
        """One CHECKSUMS chunk: the next extents in order, within one run."""
        runs = self._runs
        if not runs or first != self._next or first + len(hashes) > runs[0][0] + runs[0][1]:
            raise RemoteProtocolError(
                f"CHECKSUMS for extents {first}..{first + len(hashes) - 1} out of order "
                f"(expected from {self._next}, {self.expected - self.received} to come)")
        self._chunks.append((first, array(_CHECKSUM, hashes)))
        self.received += len(hashes)
        self._next = first + len(hashes)
        if self._next == runs[0][0] + runs[0][1]:
            runs.popleft()
            self._next = runs[0][0] if runs else self._next
        self.held += len(hashes)
        self.held_max = max(self.held_max, self.held)

    def has(self, extent: int) -> bool:
        """Whether the checksum of ``extent`` (in the runs) has arrived (it may have been
        dropped since)."""
        return not self._runs or extent < self._next

    def done(self) -> bool:
        return self.received >= self.expected

    def get(self, extent: int) -> int | None:
        """The secondary's checksum of ``extent``; None if not here (not yet, or dropped)."""
        for first, hashes in self._chunks:
            if extent < first:
                return None
            if extent < first + len(hashes):
                return hashes[extent - first]
        return None

    def release_below(self, extent: int) -> None:
        """The sweep has passed ``extent``: chunks wholly below it are no longer needed."""
        chunks = self._chunks
        while chunks and chunks[0][0] + len(chunks[0][1]) <= extent:
            self.held -= len(chunks.popleft()[1])

    def clear(self) -> None:
        self._chunks.clear()
        self.held = 0
