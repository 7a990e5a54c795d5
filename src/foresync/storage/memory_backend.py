"""A block store in memory, for tests of the pure core and for the simulator."""

from __future__ import annotations

from foresync.errors import invariant
from foresync.geometry import AllocationFlag, Extent


class MemoryBackend:
    def __init__(self, size: int, read_only: bool = False) -> None:
        self.size = size
        self.read_only = read_only
        self.data = bytearray(size)
        self.flushes = 0

    def _check_range(self, offset: int, length: int) -> None:
        # A bytearray slice past the end would silently grow (writes) or shorten (reads) the volume;
        # the NBD core refuses such requests, so reaching here out of range is a bug in the caller.
        invariant(
            offset >= 0 and length >= 0 and offset + length <= self.size,
            f"range {offset}+{length} outside a volume of {self.size} bytes",
        )

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        self.data[offset : offset + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1

    def trim(self, offset: int, length: int) -> None:
        self.zero(offset, length, True, False)

    def zero(self, offset: int, length: int, may_punch: bool, fast_only: bool) -> bool:
        self._check_range(offset, length)
        self.data[offset : offset + length] = bytes(length)
        return True

    def cache(self, offset: int, length: int) -> None:
        return None

    def extents(self, offset: int, length: int) -> list[Extent]:
        end = min(offset + length, self.size)
        return [(end - offset, 0)] if end > offset else [(length, int(AllocationFlag.HOLE))]

    def close(self) -> None:
        return None
