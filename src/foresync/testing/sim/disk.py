"""A simulated image disk that loses unsynced writes on a crash (the metadata files: ``files``)."""

from __future__ import annotations

import errno
import random

from foresync.errors import StorageError

SECTOR = 512  # the finest block a short write can end on, and the unit of a version stamp


class SimDisk:
    """An image whose writes are volatile until ``flush``; a crash keeps a random subset of
    the unflushed writes (the page cache writes back in any order). While ``full`` holds an
    RNG, every write lands only in part (a random prefix, maybe nothing) and then fails with
    ENOSPC, as a write to a sparse file on a full filesystem does. That prefix ends on a sector
    boundary of the image: the kernel copies a write block by block and stops at the first block
    it cannot allocate (4 KiB or at least 1 KiB on ext4), so no sector is left half old, half
    new; the sector is the simulator's unit of a write's version (invariant 5)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.durable = bytearray(size)
        self.current = bytearray(size)
        self._unsynced: list[tuple[int, bytes]] = []
        self.flip_bits = False
        self.full: random.Random | None = None
        self.failed_writes = 0

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.current[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if self.full is not None:
            self.failed_writes += 1
            cut = self.full.randrange(len(data)) if data else 0
            landed = data[: max(0, cut - (offset + cut) % SECTOR)]
            self.current[offset : offset + len(landed)] = landed
            self._unsynced.append((offset, bytes(landed)))
            raise StorageError(f"write at {offset} failed: No space left on device", errno.ENOSPC)
        self.current[offset : offset + len(data)] = data
        self._unsynced.append((offset, bytes(data)))

    def zero(self, offset: int, length: int) -> None:
        self.write(offset, bytes(length))

    def flush(self) -> None:
        for offset, data in self._unsynced:
            self.durable[offset : offset + len(data)] = data
        self._unsynced.clear()

    def flush_range(self, start: int, end: int) -> None:
        """Make durable only the unsynced writes that begin in ``start``..``end``: one member
        file of a consistency group (testing/sim/groups.py) has its own page cache."""
        kept = []
        for offset, data in self._unsynced:
            if start <= offset < end:
                self.durable[offset : offset + len(data)] = data
            else:
                kept.append((offset, data))
        self._unsynced = kept

    def crash(self, rng: random.Random) -> int:
        kept = 0
        for offset, data in self._unsynced:
            if rng.random() < 0.5:
                self.durable[offset : offset + len(data)] = data
                kept += 1
        self._unsynced.clear()
        self.current = bytearray(self.durable)
        return kept
