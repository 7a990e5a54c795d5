"""What the NBD server acts on: an interface between the protocol and the volume behind it.

The standalone server plugs in a local file; a replicating primary plugs in a target that mirrors
each write first. Reads and block status are answered synchronously from local storage. Every other
command completes through a ``done(errno)`` callback, which may run immediately or later (after a
flush, or after the secondary acknowledges), so the fast path costs no task or future.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from foresync.geometry import Extent
from foresync.nbd.connection import Request

Done = Callable[[int], None]  # called once with 0 or an NBD errno


class NbdTarget(Protocol):
    size: int
    read_only: bool

    def read(self, offset: int, length: int) -> bytes: ...

    def extents(self, offset: int, length: int) -> list[Extent]: ...

    def submit(self, request: Request, done: Done) -> None:
        """Carry out WRITE, FLUSH, TRIM, WRITE_ZEROES or CACHE, then call ``done``."""
