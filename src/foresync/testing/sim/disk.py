"""Simulated disks: an image and a journal that lose unsynced writes on a crash."""

from __future__ import annotations

import errno
import random

from foresync.errors import StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import format as jfmt
from foresync.journal.format import RecordState

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

    def crash(self, rng: random.Random) -> int:
        kept = 0
        for offset, data in self._unsynced:
            if rng.random() < 0.5:
                self.durable[offset : offset + len(data)] = data
                kept += 1
        self._unsynced.clear()
        self.current = bytearray(self.durable)
        return kept


class SimJournal:
    """The record journal as bytes: appends are volatile until a commit; a crash keeps the
    durable prefix plus a random prefix of the rest (a torn append), possibly with its last bytes
    never written back (zeros). Damage (a flipped byte anywhere) and loss (the file deleted) are
    separate faults. What a restart believes comes from the real ``journal.format.assess``.
    While ``full`` (the meta disk), a commit fails and the appends stay volatile, as
    ``RecordJournal`` keeps them in memory until a commit can write them."""

    def __init__(self, volume_id: bytes) -> None:
        self.volume_id = volume_id
        self.full = False
        self.data = bytearray(jfmt.encode_header(volume_id) + jfmt.encode_checkpoint(RecordState()))
        self.durable_len = len(self.data)
        self.appends = 0
        self._append_ends: list[int] = []  # byte length after each append since open
        self.torn_tails = 0
        self.lost = False  # the file is gone (deleted while the site was down)
        self.generation = 0  # bumped when the bytes are replaced, not just extended
        self._cached_key: tuple[int, int, Faults] | None = None
        self._cached = jfmt.Assessment(None, "not assessed")

    def append(self, entry: bytes) -> None:
        self.data += entry
        self.appends += 1
        self._append_ends.append(len(self.data))

    def commit(self, target: int) -> None:
        """Make the first ``target`` appends (counted since the last open) durable."""
        if self.full:
            raise StorageError("journal: append failed: No space left on device", errno.ENOSPC)
        if target:
            self.durable_len = max(self.durable_len, self._append_ends[target - 1])

    def assess(self, faults: Faults = NO_FAULTS) -> jfmt.Assessment:
        """What a restart would believe from the durable bytes now (cached until they change)."""
        key = (self.generation, self.durable_len, faults)
        if self._cached_key != key:
            data = None if self.lost else bytes(self.data[: self.durable_len])
            self._cached = jfmt.assess(data, self.volume_id, faults)
            self._cached_key = key
        return self._cached

    def durable_state(self, faults: Faults = NO_FAULTS) -> RecordState | None:
        """The record a restart would replay, or None: it would trust no record (widen)."""
        assessed = self.assess(faults)
        return None if assessed.doubt is not None else assessed.state

    def crash(self, rng: random.Random, tear: bool = True) -> None:
        extra = len(self.data) - self.durable_len
        keep = self.durable_len + (rng.randrange(extra + 1) if extra else 0)
        image = bytearray(self.data[:keep])
        if tear and keep > self.durable_len and rng.random() < 0.5:
            # The file size covers the last appended bytes, but their page was not written back.
            start = rng.randrange(self.durable_len, keep)
            image[start:keep] = bytes(keep - start)
        self._replace(image)

    def damage(self, rng: random.Random) -> int:
        """Flip one byte anywhere in the file (bit rot): returns its position."""
        position = rng.randrange(len(self.data))
        self.data[position] ^= rng.randrange(1, 256)
        self.generation += 1
        return position

    def reopen(self, faults: Faults = NO_FAULTS) -> jfmt.Assessment:
        """What ``RecordJournal.open`` does at a restart: cut a torn tail (counted). With doubt
        the caller widens and starts a new journal."""
        assessed = self.assess(faults)
        replayed = assessed.replay
        if assessed.doubt is None and replayed is not None:
            if replayed.torn_reason is not None:
                self.torn_tails += 1
            self._replace(bytearray(self.data[: replayed.valid_end]))
        return assessed

    def _replace(self, image: bytearray) -> None:
        self.data = image
        self.generation += 1
        self.durable_len = len(self.data)
        self.appends = 0
        self._append_ends = []
