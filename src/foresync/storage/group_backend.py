"""A consistency group's store: one block backend over its member volumes (issue 16, part 2).

The group replicates as one unit over the members laid end to end (group_layout.py). This
backend gives that unit the interface of ``FileBackend``: each call is split by the layout and
carried out on the member files, in address order.

* ``flush`` makes every member durable. This is what keeps one order across the group: a host's
  FLUSH on the WAL member, or the secondary's DURABLE watermark, covers every earlier write on
  every member, not only the one it came through.
* The padding after a member reads as zeros and is a hole. A resync copies whole extents, so it
  sends the padding as zeros: zeros (a write of zeros, TRIM, WRITE_ZEROES) are taken and dropped.
  Non-zero data there would mean a write the members cannot hold, so it is refused with EIO,
  never silently dropped: no host reaches the padding through a member export.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from foresync.errors import ConfigError, StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.geometry import AllocationFlag, Extent
from foresync.group_layout import PADDING, GroupLayout
from foresync.storage.backend import ImageBackend

_HOLE = int(AllocationFlag.HOLE | AllocationFlag.ZERO)


class GroupBackend:
    def __init__(self, layout: GroupLayout, members: Sequence[ImageBackend],
                 faults: Faults = NO_FAULTS) -> None:
        if len(members) != len(layout.members):
            raise ConfigError(f"a group of {len(layout.members)} members got {len(members)} stores")
        for store, member in zip(members, layout.members, strict=True):
            if store.size != member.size:
                raise ConfigError(f"member {member.name!r} is {store.size} bytes, its layout says "
                                  f"{member.size}")
        self.layout = layout
        self.members = tuple(members)
        self.size = layout.size
        self.read_only = any(store.read_only for store in members)
        self._faults = faults
        self._last_written = 0  # the member the latest write went to (the fault's flush only)
        self._bases = tuple(member.base for member in layout.members)

    def read(self, offset: int, length: int) -> bytes:
        index = self.layout.within(offset, length)
        if index != PADDING:  # the usual case: inside one member
            return self.members[index].read(offset - self._bases[index], length)
        return self._read(offset, length, holes=False)

    def read_unless_hole(self, offset: int, length: int) -> bytes:
        index = self.layout.within(offset, length)
        if index != PADDING:
            return self.members[index].read_unless_hole(offset - self._bases[index], length)
        return self._read(offset, length, holes=True)

    def _read(self, offset: int, length: int, holes: bool) -> bytes:
        parts = []
        for piece in self.layout.split(offset, length):
            if piece.index == PADDING:
                parts.append(bytes(piece.length))
                continue
            store = self.members[piece.index]
            read = store.read_unless_hole if holes else store.read
            parts.append(read(piece.offset, piece.length))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def is_hole(self, offset: int, length: int) -> bool:
        return all(piece.index == PADDING or self.members[piece.index].is_hole(piece.offset, piece.length)
                   for piece in self.layout.split(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        index = self.layout.within(offset, len(data))
        if index != PADDING:  # the usual case: inside one member, no copy
            self._last_written = index
            self.members[index].write(offset - self._bases[index], data)
            return
        pieces = self.layout.split(offset, len(data))
        view = memoryview(data)
        at = 0
        for piece in pieces:
            chunk = view[at : at + piece.length]
            at += piece.length
            if piece.index == PADDING:
                if any(chunk):
                    raise StorageError(f"write of non-zero data into the padding at {piece.offset} "
                                       f"between group members (no member holds it)", errno.EIO)
                continue
            self._last_written = piece.index
            self.members[piece.index].write(piece.offset, bytes(chunk))

    def write_parts(self, offset: int, parts: Sequence[bytes]) -> None:
        """A run of adjacent writes: the member's own ``write_parts`` (one pwritev) when the run
        lies inside one member, as nearly every run does; else each part as ``write``."""
        index = self.layout.within(offset, sum(map(len, parts)))
        if index != PADDING:
            self._last_written = index
            self.members[index].write_parts(offset - self._bases[index], parts)
            return
        for part in parts:
            self.write(offset, part)
            offset += len(part)

    def flush(self) -> None:
        """Every member durable: one flush orders the whole group (see the module docstring)."""
        if self._faults.group_orders_volumes_independently:
            # The deliberate bug: a flush covers only the member it came through (the latest
            # written), as if each member were a volume of its own with its own order.
            self.members[self._last_written].flush()
            return
        for store in self.members:
            store.flush()

    def trim(self, offset: int, length: int) -> None:
        for piece in self.layout.split(offset, length):
            if piece.index != PADDING:
                self.members[piece.index].trim(piece.offset, piece.length)

    def zero(self, offset: int, length: int, may_punch: bool, fast_only: bool) -> bool:
        pieces = [piece for piece in self.layout.split(offset, length) if piece.index != PADDING]
        done = True
        for piece in pieces:
            self._last_written = piece.index
            done = self.members[piece.index].zero(piece.offset, piece.length, may_punch, fast_only) and done
        return done

    def cache(self, offset: int, length: int) -> None:
        for piece in self.layout.split(offset, length):
            if piece.index != PADDING:
                self.members[piece.index].cache(piece.offset, piece.length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        end = min(offset + length, self.size)
        if end <= offset:
            return []
        out: list[Extent] = []
        for piece in self.layout.split(offset, end - offset):
            if piece.index == PADDING:
                _append(out, piece.length, _HOLE)
                continue
            for run, flags in self.members[piece.index].extents(piece.offset, piece.length):
                _append(out, run, flags)
        return out

    def close(self) -> None:
        for store in self.members:
            store.close()


def _append(out: list[Extent], length: int, flags: int) -> None:
    """Add a run, merging it into the last one when the flags match."""
    if length <= 0:
        return
    if out and out[-1][1] == flags:
        out[-1] = (out[-1][0] + length, flags)
    else:
        out.append((length, flags))
