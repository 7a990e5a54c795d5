"""A consistency group's address space: its member volumes laid end to end (issue 16, part 2).

Theory of operation. A group replicates as ONE unit: one record, one journal, one epoch history,
one link session and one ordered write stream, over the concatenation of its members. Because the
secondary applies that stream in sequence order, its image is a prefix of one global write order,
for every member at once: a database whose WAL and data sit on different members recovers after
a failover exactly as it would after a power cut of the primary.

Each member starts at an extent-aligned *base*: its size is padded up to a whole number of extents,
so no extent (the unit of the record, of resync and of verify) holds bytes of two members. The
padding is never written by a host (no member export reaches it) and always reads as zeros.

    unit offset 0                base(wal)                       size
    | data .......... | pad |    | wal ...... | pad |
      <- member 0 padded ->      <- member 1 padded ->

``split`` maps a unit range to the pieces it covers, in order: (member index, offset within the
member, length), with index ``PADDING`` for bytes of the padding. ``to_unit`` maps a member range
to the unit, refusing one that leaves the member. Both are pure; the backend (group_backend.py)
and the member exports (daemon/group_unit.py, windows of nbd/exports.py) carry them out.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from foresync.errors import ConfigError, invariant

PADDING = -1  # the member index of a piece that lies in the padding after a member


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    base: int  # where the member starts in the unit: a multiple of the extent size
    size: int  # the member's own size in bytes (what its export reports)
    padded: int  # size rounded up to whole extents: the next member starts at base + padded

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True, slots=True)
class Piece:
    index: int  # member index, or PADDING
    offset: int  # offset within the member (for PADDING: within the unit)
    length: int


class GroupLayout:
    """Member names and sizes, laid end to end at extent-aligned bases."""

    def __init__(self, members: Sequence[tuple[str, int]], extent_size: int) -> None:
        if extent_size <= 0:
            raise ConfigError(f"extent size must be positive, not {extent_size}")
        if not members:
            raise ConfigError("a group needs at least one member volume")
        laid: list[Member] = []
        base = 0
        for name, size in members:
            if size <= 0:
                raise ConfigError(f"member {name!r} of a group must have a positive size, not {size}")
            if any(member.name == name for member in laid):
                raise ConfigError(f"volume {name!r} is named twice in one group")
            padded = -(-size // extent_size) * extent_size
            laid.append(Member(name, base, size, padded))
            base += padded
        self.members: tuple[Member, ...] = tuple(laid)
        self.extent_size = extent_size
        self.size = base
        self._bases = tuple(member.base for member in laid)
        self._ends = tuple(member.end for member in laid)

    def index_of(self, name: str) -> int:
        for index, member in enumerate(self.members):
            if member.name == name:
                return index
        raise ConfigError(f"no member {name!r} in the group "
                          f"({', '.join(member.name for member in self.members)})")

    def to_unit(self, index: int, offset: int, length: int) -> int:
        """The unit offset of ``length`` bytes at ``offset`` of member ``index``."""
        member = self.members[index]
        invariant(offset >= 0 and length >= 0 and offset + length <= member.size,
                  f"range {offset}+{length} outside member {member.name!r} of {member.size} bytes")
        return member.base + offset

    def within(self, offset: int, length: int) -> int:
        """The index of the member holding all of unit range ``offset``+``length``, or
        ``PADDING`` when it touches the padding or more than one member (then ``split`` it).
        The per-call fast path of the backend: a C bisect and two compares, no list."""
        index = bisect_right(self._bases, offset) - 1
        if index >= 0 and offset + length <= self._ends[index]:
            return index
        return PADDING

    def member_at(self, offset: int) -> int:
        """The index of the member whose padded span holds unit ``offset``."""
        invariant(0 <= offset < self.size, f"offset {offset} outside a group of {self.size} bytes")
        low, high = 0, len(self._bases) - 1
        while low < high:  # the last base <= offset
            mid = (low + high + 1) // 2
            if self._bases[mid] <= offset:
                low = mid
            else:
                high = mid - 1
        return low

    def split(self, offset: int, length: int) -> list[Piece]:
        """The pieces covering unit range ``offset``+``length``, in address order."""
        invariant(offset >= 0 and length >= 0 and offset + length <= self.size,
                  f"range {offset}+{length} outside a group of {self.size} bytes")
        pieces: list[Piece] = []
        end = offset + length
        pos = offset
        index = self.member_at(offset) if length else 0
        while pos < end:
            member = self.members[index]
            if pos < member.end:
                stop = min(end, member.end)
                pieces.append(Piece(index, pos - member.base, stop - pos))
            else:
                stop = min(end, member.base + member.padded)
                pieces.append(Piece(PADDING, pos, stop - pos))
            pos = stop
            if pos >= member.base + member.padded:
                index += 1
        return pieces


@dataclass(frozen=True, slots=True)
class MemberVolume:
    """A member of a configured group (a ``[[volume]]`` table named in a ``[[group]]``)."""

    name: str
    data: str  # its image file or block device
    size: int
    export: str  # its NBD export name


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A ``[[group]]`` table: the unit's ``SiteConfig`` carries it (``SiteConfig.group``)."""

    name: str
    members: tuple[MemberVolume, ...]

    def layout(self, extent_size: int) -> GroupLayout:
        return GroupLayout([(member.name, member.size) for member in self.members], extent_size)
