"""What one replicated unit serves over NBD: a list of exports, each a window of its backend.

A volume's unit serves one export, the whole backend (offset 0). A unit may serve several
(issue 16 part 2: a consistency group's member volumes laid end to end on one backend), each a
``WindowTarget``: requests are checked against the export's own size by the NBD core
(nbd/connection.py), then shifted by its offset, so no export can reach another's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from foresync.geometry import Extent
from foresync.nbd.target import Done, NbdTarget, WriteItems, WriteMany, group_call


@dataclass(frozen=True, slots=True)
class ExportSpec:
    name: str  # the NBD export name
    offset: int  # where it starts in the unit's backend, in bytes
    size: int  # its size in bytes


class WindowTarget:
    """``target`` seen from ``offset`` for ``size`` bytes (the NBD core bounds each request by
    ``size`` before it gets here; each write of a group is shifted as a lone one)."""

    def __init__(self, target: NbdTarget, offset: int, size: int) -> None:
        self._target = target
        self._offset = offset
        self.size = size
        self.read_only = target.read_only
        self._target_many = group_call(target)
        self.write_many: WriteMany | None = None if self._target_many is None else self._write_many

    def read(self, offset: int, length: int) -> bytes:
        return self._target.read(self._offset + offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self._target.extents(self._offset + offset, length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self._target.write(self._offset + offset, data, fua, done)

    def _write_many(self, items: WriteItems) -> None:
        assert self._target_many is not None  # set only then
        shift = self._offset
        self._target_many([(shift + offset, data, done) for offset, data, done in items])

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        self._target.zero(self._offset + offset, length, fua, may_punch, fast_only, done)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self._target.trim(self._offset + offset, length, fua, done)

    def flush(self, done: Done) -> None:
        self._target.flush(done)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self._target.cache(self._offset + offset, length, done)


def window(target: NbdTarget, spec: ExportSpec) -> NbdTarget:
    """The target for ``spec``: ``target`` itself when the export is all of it."""
    if spec.offset == 0 and spec.size == target.size:
        return target
    return WindowTarget(target, spec.offset, spec.size)
