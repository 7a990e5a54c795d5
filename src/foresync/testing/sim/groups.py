"""Consistency groups in the simulator (issue 16, part 2): two or three member volumes, one unit.

A group replicates as one unit over its members laid end to end (group_layout.py), so the world
runs the same real cores over the unit's address space; what is new is carried out here, with
the real code:

* each site's image is the real ``GroupBackend`` over one member store per volume (``SimMember``,
  a slice of the site's ``SimDisk`` with a page cache of its own: ``flush`` makes only that
  member durable). The primary's local applies and flushes, and the secondary's writes and data
  syncs, go through it;
* the host writes only inside members (``GroupLayout.to_unit``), and runs transactions the way a
  database does: a WAL record on the ``wal`` member, a FLUSH once it is answered, then, once the
  flush is answered, the data page on another member;
* the group invariant (invariant 14), checked explicitly per member: the secondary's members,
  all together, hold the primary's group at ONE point of the group's write order, not each
  member at a point of its own:

  - at every step until the first fault, every member's image is the group's sent history
    replayed up to the one seq the secondary has applied (``check_members``), and the padding
    between members reads as zeros on both sites;
  - at a failover whose primary crash was the first fault (nothing since at the secondary),
    the promoted members, all together, equal the group's sent history up to ONE seq
    (``check_promoted``), which is what a database recovering on them needs;
  - at a crash of the secondary before any other fault, every member's surviving image holds
    every write up to the seq the secondary last reported durable (``check_crash``): the group's
    durable point. A later write may survive too (a crash keeps a random part of what was not
    yet flushed), but no member may fall behind the point the others passed.

The deliberate bug ``group_orders_volumes_independently`` makes the group's flush cover only the
member the latest write went to, as if each member had an order of its own; a crash then leaves
the other members behind the durable point, which ``check_crash`` names.

The members must also match between the sites byte for byte in size: on some timer ticks a HELLO
of our own group and lineage knocks whose one member is a sector longer or shorter within its
last extent (``mis_sized_twin``: the unit's size is the same), or whose members carry our
sizes in our order but two names swapped (each member would be mirrored into the other's file),
and the secondary's real screening must refuse it (invariant 14 too). The deliberate bugs
``group_member_sizes_unchecked`` and ``group_member_names_unchecked`` admit them.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foresync.faults import Faults
from foresync.geometry import Extent
from foresync.group_layout import PADDING, GroupLayout
from foresync.link import wire
from foresync.replication.admission import Identity
from foresync.storage.group_backend import GroupBackend
from foresync.testing.sim.disk import SECTOR, SimDisk

if TYPE_CHECKING:
    from foresync.testing.sim.world import World

GROUP_FAULTS = frozenset({"group_orders_volumes_independently",  # caught by tests/sim/test_groups_sim.py
                          "group_member_sizes_unchecked", "group_member_names_unchecked"})
MEMBER_NAMES = ("wal", "data", "index")
MAX_TXNS = 2  # transactions in flight at once


class SimMember:
    """One member volume's store: a slice of the site's image with its own flush."""

    def __init__(self, disk: SimDisk, base: int, size: int) -> None:
        self.disk = disk
        self.base = base
        self.size = size
        self.read_only = False

    def read(self, offset: int, length: int) -> bytes:
        return self.disk.read(self.base + offset, length)

    def is_hole(self, offset: int, length: int) -> bool:
        return False

    def read_unless_hole(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.disk.write(self.base + offset, data)

    def write_parts(self, offset: int, parts: Sequence[bytes]) -> None:
        for part in parts:
            self.write(offset, part)
            offset += len(part)

    def flush(self) -> None:
        self.disk.flush_range(self.base, self.base + self.size)

    def trim(self, offset: int, length: int) -> None:
        self.disk.zero(self.base + offset, length)

    def zero(self, offset: int, length: int, may_punch: bool, fast_only: bool) -> bool:
        self.disk.zero(self.base + offset, length)
        return True

    def cache(self, offset: int, length: int) -> None:
        return None

    def extents(self, offset: int, length: int) -> list[Extent]:
        return [(length, 0)]

    def close(self) -> None:
        return None


class SimGroupImage:
    """A site's image as the world drives it (write, zero, flush), through the real backend."""

    def __init__(self, backend: GroupBackend) -> None:
        self.backend = backend

    def write(self, offset: int, data: bytes) -> None:
        self.backend.write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        self.backend.zero(offset, length, may_punch=True, fast_only=False)

    def flush(self) -> None:
        self.backend.flush()


@dataclass(slots=True)
class _Txn:
    stage: str  # the op in flight: "wal" | "flush" | "data"
    op_id: int
    acked: bool = False


class SimGroup:
    def __init__(self, count: int, extent_size: int, extent_count: int, rng: random.Random,
                 faults: Faults, disks: dict[str, SimDisk]) -> None:
        cuts = sorted(rng.sample(range(1, extent_count), count - 1))
        spans = [b - a for a, b in zip([0, *cuts], [*cuts, extent_count], strict=True)]
        # Each member a whole number of sectors, short of its last extent by a random padding.
        sizes = [span * extent_size - SECTOR * rng.randrange(extent_size // SECTOR) for span in spans]
        self.layout = GroupLayout(list(zip(MEMBER_NAMES, sizes, strict=False)), extent_size)
        self.images = {site: SimGroupImage(GroupBackend(
            self.layout, [SimMember(disk, m.base, m.size) for m in self.layout.members], faults))
            for site, disk in disks.items()}
        self.applied: list[tuple[int, int, bytes]] = []  # (seq, offset, data) the secondary applied
        self.durable_seq = 0  # the secondary reported every seq up to it durable
        self.txns: list[_Txn] = []
        self.txns_committed = 0  # data pages written after their WAL record's flush was answered
        self.crash_checks = 0  # crashes of the secondary checked by check_crash
        # A primary crash as the first fault: the seq the secondary had applied by then (its image
        # is the group at that point); None once anything else has happened to the secondary.
        self.failover_point: int | None = None
        self.promote_checks = 0

    def members(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of each member, in order: what a site's admission compares."""
        return tuple((m.name, m.size) for m in self.layout.members)

    def mis_sized_twin(self, ours: Identity, rng: random.Random) -> tuple[wire.Hello, str]:
        """A HELLO like our primary's (identity, lineage, unit size) whose one member differs
        in size within its last extent, or (half the time, with two members or more) whose
        members have our sizes in our order but two of their names swapped; and what differs."""
        members = self.layout.members
        names = tuple(m.name for m in members)
        sizes = tuple(m.size for m in members)
        if len(members) > 1 and rng.random() < 0.5:
            first, second = rng.sample(range(len(members)), 2)
            swapped = list(names)
            swapped[first], swapped[second] = names[second], names[first]
            return (self._twin(ours, sizes, tuple(swapped)),
                    f"members named {', '.join(swapped)}, ours {', '.join(names)}")
        index = rng.randrange(len(members))
        member = members[index]
        low = member.padded - self.layout.extent_size  # the span stays the same above it
        size = next(s for s in (member.size - SECTOR, member.size + SECTOR) if low < s <= member.padded)
        sizes = tuple(size if i == index else s for i, s in enumerate(sizes))
        return self._twin(ours, sizes, names), f"member {member.name!r} of {size} bytes, ours {member.size}"

    @staticmethod
    def _twin(ours: Identity, sizes: tuple[int, ...], names: tuple[str, ...]) -> wire.Hello:
        return wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, ours.volume_id or b"",
                          ours.size, ours.extent_size, len(ours.history), ours.history, (),
                          ours.generations, sizes, names)

    def describe(self) -> str:
        return " ".join(f"{m.name}@{m.base}+{m.size}" for m in self.layout.members)

    # -- the host -------------------------------------------------------------------------------

    def pick_write(self, rng: random.Random, max_write: int, member: int | None = None) -> tuple[int, int]:
        """A host write inside one member: (unit offset, length)."""
        index = rng.randrange(len(self.layout.members)) if member is None else member
        size = self.layout.members[index].size
        length = min(rng.choice([SECTOR, 2 * SECTOR, rng.randrange(1, 9) * SECTOR]), max_write, size)
        offset = rng.randrange(0, (size - length) // SECTOR + 1) * SECTOR
        return self.layout.to_unit(index, offset, length), length

    def txn_step_ready(self, host_ops: Container[int]) -> bool:
        self._drop_failed(host_ops)
        return len(self.txns) < MAX_TXNS or any(txn.acked for txn in self.txns)

    def _drop_failed(self, host_ops: Container[int]) -> None:
        # An op answered with an error (or lost in a crash) ends its transaction.
        self.txns = [txn for txn in self.txns if txn.acked or txn.op_id in host_ops]

    def step_txn(self, world: World) -> None:
        """Start a transaction, or take the next step of one whose last op was answered."""
        assert world.primary is not None
        txn = next((txn for txn in self.txns if txn.acked), None)
        if txn is None:
            offset, length = self.pick_write(world.rng, world.max_write, member=0)
            op_id = world._host_write(offset, length, fua=False)
            self.txns.append(_Txn("wal", op_id))
            return
        if txn.stage == "wal":
            txn.stage, txn.op_id, txn.acked = "flush", world._host_flush(), False
            return
        if txn.stage == "flush":
            member = world.rng.randrange(1, len(self.layout.members))
            offset, length = self.pick_write(world.rng, world.max_write, member=member)
            txn.stage, txn.op_id, txn.acked = "data", world._host_write(offset, length, fua=False), False
            self.txns_committed += 1
            return
        self.txns.remove(txn)  # the data page is answered: done

    def acked(self, op_id: int) -> None:
        for txn in self.txns:
            if txn.op_id == op_id:
                txn.acked = True

    def host_lost(self) -> None:
        self.txns.clear()

    # -- invariant 14 ---------------------------------------------------------------------------

    def note_apply(self, seq: int, offset: int, data: bytes) -> None:
        self.applied.append((seq, offset, data))

    def note_synced(self, through: int) -> None:
        self.durable_seq = max(self.durable_seq, through)

    def check_members(self, world: World) -> None:
        """Until the first fault: each member is the group's history at the one applied seq."""
        secondary, expected = world.sdisk.current, world.expected
        for member in self.layout.members:
            if secondary[member.base : member.end] != expected[member.base : member.end]:
                world._fail(f"invariant 14: the secondary's member {member.name!r} is not the group "
                            f"at seq {world.applied_seq_seen}, the point its other members hold")
        for site, disk in world.disks.items():
            for member in self.layout.members:
                if any(disk.current[member.end : member.base + member.padded]):
                    world._fail(f"invariant 14: the padding after member {member.name!r} on site "
                                f"{site} is not zeros")

    def check_promoted(self, world: World) -> None:
        """A failover after a primary crash (the first fault, nothing since at the secondary):
        the promoted members, made durable by promote's drain, are all the group at ONE point of
        its sent history (at or after the seq applied when the primary crashed: writes that
        waited for a journal commit land in the drain), so a database on them recovers."""
        point, self.failover_point = self.failover_point, None
        if point is None:
            return
        self.promote_checks += 1
        image = world.sdisk.durable
        state = bytearray(world.expected)  # the group at seq ``point``
        members = self.layout.members
        matched: dict[str, list[int]] = {m.name: [] for m in members}  # seqs each member matches

        def note(seq: int) -> bool:
            for m in members:
                if image[m.base : m.end] == state[m.base : m.end]:
                    matched[m.name].append(seq)
            return all(matched[m.name] and matched[m.name][-1] == seq for m in members)

        if note(point):
            return
        for seq in sorted(s for s in world.sent_history if s > point):
            offset, data = world.sent_history[seq]
            state[offset : offset + len(data)] = data
            if note(seq):
                return
        detail = "; ".join(f"{name!r} matches seqs {seqs[:3]}{'...' if len(seqs) > 3 else ''}"
                           if seqs else f"{name!r} matches no point" for name, seqs in matched.items())
        world._fail(f"invariant 14: the promoted members are not the group at one point of its "
                    f"write order (from seq {point}): {detail}")

    def check_crash(self, world: World) -> None:
        """After a crash of the secondary (before any other fault): every member holds every
        write up to the group's durable point, or a later write to the same sector."""
        self.crash_checks += 1
        point = self.durable_seq
        image = world.sdisk.durable
        at_point = bytearray(len(image))
        later: dict[int, set[bytes]] = {}  # sector -> contents of writes after the point
        for seq, offset, data in self.applied:
            if seq <= point:
                at_point[offset : offset + len(data)] = data
                continue
            for at in range(0, len(data), SECTOR):
                later.setdefault((offset + at) // SECTOR, set()).add(bytes(data[at : at + SECTOR]))
        behind: dict[str, int] = {}
        for sector in range(len(image) // SECTOR):
            lo = sector * SECTOR
            have = bytes(image[lo : lo + SECTOR])
            if have != at_point[lo : lo + SECTOR] and have not in later.get(sector, ()):
                piece = self.layout.split(lo, SECTOR)[0]
                name = "padding" if piece.index == PADDING else self.layout.members[piece.index].name
                behind.setdefault(name, sector)
        if behind:
            detail = ", ".join(f"{name!r} (sector {sector}, found v{_version(image, sector)})"
                               for name, sector in behind.items())
            held = [m.name for m in self.layout.members if m.name not in behind]
            world._fail(f"invariant 14: after the secondary crashed, member {detail} lost writes "
                        f"up to seq {point}, the group's durable point (held by {held}): the "
                        f"members are not at one point of the group's write order")


def _version(image: bytearray, sector: int) -> int:
    value: int = struct.unpack_from(">Q", image, sector * SECTOR)[0]
    return value
