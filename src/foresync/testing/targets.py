"""An NBD target for tests of the server and its wrappers: answers every typed call at once and
notes it, with the flags the server decoded (``calls``)."""

from __future__ import annotations

from foresync.geometry import Extent
from foresync.nbd.target import Done


class RecordingTarget:
    read_only = False

    def __init__(self, size: int = 1 << 20) -> None:
        self.size = size
        self.calls: list[tuple[object, ...]] = []

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return []

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self.calls.append(("write", offset, data, fua))
        done(0)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        self.calls.append(("zero", offset, length, fua, may_punch, fast_only))
        done(0)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self.calls.append(("trim", offset, length, fua))
        done(0)

    def flush(self, done: Done) -> None:
        self.calls.append(("flush",))
        done(0)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.calls.append(("cache", offset, length))
        done(0)
