"""One member of a consistency group, served as its own NBD export (issue 16, part 2).

A group replicates as one unit over its members laid end to end (group_layout.py); the unit is
one ``NbdTarget`` (a primary site, or a local target). Each member is an export of its own, of its
own size: this view checks a request against the member and shifts it by the member's base.

A FLUSH on any member is a FLUSH of the whole unit: it covers every write answered before it, on
every member. That is what orders a database's WAL flush before its later data writes, wherever
the two live, and what the secondary's prefix of one write order relies on.
"""

from __future__ import annotations

from foresync.errors import invariant
from foresync.geometry import Extent
from foresync.group_layout import GroupLayout
from foresync.nbd.target import Done, NbdTarget


class MemberTarget:
    def __init__(self, unit: NbdTarget, layout: GroupLayout, name: str) -> None:
        invariant(unit.size == layout.size,
                  f"a group of {layout.size} bytes served over a target of {unit.size}")
        self.unit = unit
        self.layout = layout
        self.index = layout.index_of(name)
        self.name = name
        self.size = layout.members[self.index].size
        self.read_only = unit.read_only

    def _at(self, offset: int, length: int) -> int:
        # The NBD core refuses a request past the export's end (EINVAL) before it gets here; one
        # that arrives is a bug, and would otherwise touch the padding or the next member.
        return self.layout.to_unit(self.index, offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return self.unit.read(self._at(offset, length), length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        length = max(0, min(length, self.size - offset))
        return self.unit.extents(self._at(offset, length), length) if length else []

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self.unit.write(self._at(offset, len(data)), data, fua, done)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        self.unit.zero(self._at(offset, length), length, fua, may_punch, fast_only, done)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self.unit.trim(self._at(offset, length), length, fua, done)

    def flush(self, done: Done) -> None:
        self.unit.flush(done)  # the whole unit: see the module docstring

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.unit.cache(self._at(offset, length), length, done)
