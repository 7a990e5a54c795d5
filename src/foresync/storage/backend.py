"""The interface every local block store implements.

All calls are synchronous and may block (on the page cache, or on the disk for ``flush``); the
asyncio adapters decide which calls to move off the event loop. ``flush`` is the single place
durability is made, so tests and the simulator can substitute one that fails or lies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from foresync.geometry import Extent


class BlockBackend(Protocol):
    size: int
    read_only: bool

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None:
        """Make every completed write durable (fdatasync)."""

    def trim(self, offset: int, length: int) -> None:
        """Discard a range; later reads may return zeroes or the old data (NBD TRIM)."""

    def zero(self, offset: int, length: int, may_punch: bool, fast_only: bool) -> bool:
        """Make a range read as zeroes. With ``may_punch`` the space may be deallocated. With
        ``fast_only`` do nothing and return False unless it can be done without writing data."""

    def cache(self, offset: int, length: int) -> None:
        """Hint that a range will be read soon."""

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Allocation status from ``offset``: consecutive (length, flags) covering the range."""

    def close(self) -> None: ...


class ImageBackend(BlockBackend, Protocol):
    """What a replicated unit's image offers: FileBackend, or a group's GroupBackend over its
    members (group_backend.py), with hole-aware reads for resync and verify."""

    def is_hole(self, offset: int, length: int) -> bool: ...

    def read_unless_hole(self, offset: int, length: int) -> bytes: ...

    def write_parts(self, offset: int, parts: Sequence[bytes]) -> None:
        """``write`` of ``parts`` back to back from ``offset`` (the secondary's runs of adjacent
        writes, issue 15): one ``pwritev`` on a file; a loop of writes where that is all there is."""
