"""A group member as its own export (daemon/group_unit.py over nbd/exports.py's windows): requests
shifted by the member's base, and a FLUSH on any member is a flush of the whole unit."""

from __future__ import annotations

from pathlib import Path

from foresync.daemon.local_target import LocalTarget
from foresync.geometry import Extent
from foresync.group_layout import GroupLayout
from foresync.nbd.exports import ExportSpec, window
from foresync.nbd.target import Done, NbdTarget
from foresync.storage.file_backend import FileBackend
from foresync.storage.group_backend import GroupBackend

EXTENT = 4096


class _Unit:
    """Records what reaches the unit's target."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_only = False
        self.calls: list[tuple[object, ...]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.calls.append(("read", offset, length))
        return bytes(length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        self.calls.append(("extents", offset, length))
        return [(length, 0)]

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self.calls.append(("write", offset, len(data), fua))
        done(0)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        self.calls.append(("zero", offset, length))
        done(0)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self.calls.append(("trim", offset, length))
        done(0)

    def flush(self, done: Done) -> None:
        self.calls.append(("flush",))
        done(0)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.calls.append(("cache", offset, length))
        done(0)


def member_export(unit: NbdTarget, layout: GroupLayout, name: str) -> NbdTarget:
    """The export daemon/group_unit.exports_of gives the member: a window at its base."""
    member = layout.members[layout.index_of(name)]
    return window(unit, ExportSpec(name, member.base, member.size))


def _answers() -> tuple[list[int], Done]:
    got: list[int] = []
    return got, got.append


def test_each_request_is_shifted_by_the_members_base_and_flush_goes_to_the_unit() -> None:
    layout = GroupLayout([("data", 10000), ("wal", 8192)], EXTENT)
    unit = _Unit(layout.size)
    wal = member_export(unit, layout, "wal")
    assert (wal.size, wal.read_only) == (8192, False)
    got, done = _answers()
    wal.write(100, b"x" * 10, True, done)
    wal.zero(0, 512, False, True, False, done)
    wal.trim(4096, 4096, False, done)
    wal.cache(0, 8192, done)
    wal.flush(done)
    wal.read(8191, 1)
    assert wal.extents(8000, 192) == [(192, 0)]  # the NBD core bounds it by the member's size
    assert got == [0] * 5
    assert unit.calls == [("write", 12388, 10, True), ("zero", 12288, 512), ("trim", 16384, 4096),
                          ("cache", 12288, 8192), ("flush",), ("read", 20479, 1),
                          ("extents", 20288, 192)]


def test_members_over_a_local_group_target_hold_their_own_data(tmp_path: Path) -> None:
    """End to end over real files: the standalone target, the group backend, two member views."""
    layout = GroupLayout([("data", 6000), ("wal", 4096)], EXTENT)
    stores = [FileBackend(str(tmp_path / "data.img"), 6000), FileBackend(str(tmp_path / "wal.img"), 4096)]
    unit = LocalTarget(GroupBackend(layout, stores))
    data, wal = (member_export(unit, layout, name) for name in ("data", "wal"))
    got, done = _answers()
    wal.write(0, b"W" * 4096, False, done)
    data.write(5000, b"D" * 1000, False, done)
    assert got == [0, 0]
    assert wal.read(0, 4096) == b"W" * 4096 and data.read(4999, 1001) == b"\0" + b"D" * 1000
    assert (tmp_path / "wal.img").read_bytes() == b"W" * 4096
    assert (tmp_path / "data.img").read_bytes()[5000:] == b"D" * 1000
