"""The consistency group's layout and backend (storage/group_layout.py, group_backend.py), over
real sparse member files, against a plain model: one bytearray per member, padding all zeros."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import ConfigError, InvariantViolation, StorageError
from foresync.faults import Faults
from foresync.geometry import AllocationFlag
from foresync.group_layout import PADDING, GroupLayout, Piece
from foresync.storage.file_backend import FileBackend
from foresync.storage.group_backend import GroupBackend
from foresync.storage.memory_backend import MemoryBackend

EXTENT = 4096
HOLE = int(AllocationFlag.HOLE | AllocationFlag.ZERO)


def test_members_start_at_extent_aligned_bases_and_padding_follows_a_short_member() -> None:
    layout = GroupLayout([("data", 10000), ("wal", 8192), ("log", 1)], EXTENT)
    assert [(m.name, m.base, m.size) for m in layout.members] == [
        ("data", 0, 10000), ("wal", 12288, 8192), ("log", 20480, 1)]
    assert layout.size == 24576
    assert layout.split(9000, 5000) == [Piece(0, 9000, 1000), Piece(PADDING, 10000, 2288),
                                        Piece(1, 0, 1712)]
    assert layout.split(20479, 2) == [Piece(1, 8191, 1), Piece(2, 0, 1)]
    assert layout.to_unit(1, 100, 10) == 12388
    assert layout.member_at(12287) == 0 and layout.member_at(12288) == 1
    # The fast path: a range inside one member, else PADDING (then split).
    assert layout.within(0, 10000) == 0 and layout.within(12288, 8192) == 1
    assert layout.within(9999, 2) == PADDING and layout.within(20479, 2) == PADDING
    assert layout.within(10000, 1) == PADDING


def test_a_member_range_may_not_leave_the_member_nor_a_unit_range_the_unit() -> None:
    layout = GroupLayout([("data", 10000), ("wal", 8192)], EXTENT)
    with pytest.raises(InvariantViolation, match="outside member 'data'"):
        layout.to_unit(0, 9999, 2)  # would reach the padding
    with pytest.raises(InvariantViolation, match="outside a group"):
        layout.split(layout.size - 1, 2)


@pytest.mark.parametrize(("members", "message"), [
    ([], "at least one member"),
    ([("a", 4096), ("a", 4096)], "named twice"),
    ([("a", 0)], "positive size"),
])
def test_a_bad_layout_is_refused_with_the_member_named(members: list[tuple[str, int]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GroupLayout(members, EXTENT)


def _files(tmp_path: Path, sizes: list[int]) -> tuple[GroupLayout, list[FileBackend]]:
    layout = GroupLayout([(f"m{i}", size) for i, size in enumerate(sizes)], EXTENT)
    stores = [FileBackend(str(tmp_path / f"m{i}.img"), size) for i, size in enumerate(sizes)]
    return layout, stores


def test_writes_land_in_the_member_files_and_padding_reads_as_a_zero_hole(tmp_path: Path) -> None:
    layout, stores = _files(tmp_path, [6000, 8192])
    group = GroupBackend(layout, stores)
    group.write(5000, b"a" * 1000 + bytes(2192) + b"b" * 100)  # data's tail, padding, wal's head
    group.flush()
    assert (tmp_path / "m0.img").read_bytes()[5000:] == b"a" * 1000
    assert (tmp_path / "m1.img").read_bytes()[:101] == b"b" * 100 + b"\0"
    assert group.read(5000, 3292) == b"a" * 1000 + bytes(2192) + b"b" * 100
    assert group.extents(6000, 2192) == [(2192, HOLE)]
    assert group.is_hole(6000, 2192) and not group.is_hole(5000, 2000)
    assert group.read_unless_hole(6000, 2192) == bytes(2192)
    group.close()


def test_non_zero_data_into_the_padding_is_refused_not_dropped(tmp_path: Path) -> None:
    layout, stores = _files(tmp_path, [6000, 8192])
    group = GroupBackend(layout, stores)
    with pytest.raises(StorageError, match="padding") as caught:
        group.write(6000, b"x")
    assert caught.value.errno == 5
    group.zero(4096, 4096, True, False)  # zeros there are fine (a resync sends whole extents)
    group.trim(0, layout.size)
    assert group.read(0, layout.size) == bytes(layout.size)


def test_stores_must_match_the_layout(tmp_path: Path) -> None:
    layout = GroupLayout([("a", 4096), ("b", 4096)], EXTENT)
    with pytest.raises(ConfigError, match="2 members got 1"):
        GroupBackend(layout, [FileBackend(str(tmp_path / "a"), 4096)])
    with pytest.raises(ConfigError, match="member 'b' is 8192 bytes"):
        GroupBackend(layout, [FileBackend(str(tmp_path / "a"), 4096), FileBackend(str(tmp_path / "b"), 8192)])


class _CountingFlush(MemoryBackend):
    def is_hole(self, offset: int, length: int) -> bool:
        return False

    def read_unless_hole(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)


def test_a_flush_makes_every_member_durable_whichever_was_written_last() -> None:
    layout = GroupLayout([("data", 4096), ("wal", 4096)], EXTENT)
    stores = [_CountingFlush(4096), _CountingFlush(4096)]
    group = GroupBackend(layout, stores)
    group.write(0, b"d")
    group.write(4096, b"w")
    group.flush()
    assert [store.flushes for store in stores] == [1, 1]
    broken = GroupBackend(layout, stores, Faults(group_orders_volumes_independently=True))
    broken.write(4096, b"w")
    broken.flush()
    assert [store.flushes for store in stores] == [1, 2], "the fault flushes only the last member"


class _RecordingParts(_CountingFlush):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.calls: list[tuple[str, int, int]] = []  # (call, offset, parts or length)

    def write(self, offset: int, data: bytes) -> None:
        self.calls.append(("write", offset, len(data)))
        super().write(offset, data)

    def write_parts(self, offset: int, parts: list[bytes]) -> None:
        self.calls.append(("write_parts", offset, len(parts)))
        for part in parts:
            super().write(offset, part)
            offset += len(part)


def test_a_run_inside_one_member_is_one_write_parts_of_that_member() -> None:
    """The secondary's runs of adjacent writes (issue 15): one pwritev on the member's file."""
    layout = GroupLayout([("data", 6000), ("wal", 8192)], EXTENT)
    stores = [_RecordingParts(6000), _RecordingParts(8192)]
    group = GroupBackend(layout, stores)
    group.write_parts(8192 + 100, [b"a" * 10, b"b" * 20, b"c" * 5])
    assert stores[1].calls == [("write_parts", 100, 3)] and stores[0].calls == []
    assert group.read(8192 + 100, 35) == b"a" * 10 + b"b" * 20 + b"c" * 5


def test_a_run_across_the_padding_is_written_part_by_part_and_refuses_data_there() -> None:
    layout = GroupLayout([("data", 6000), ("wal", 8192)], EXTENT)
    stores = [_RecordingParts(6000), _RecordingParts(8192)]
    group = GroupBackend(layout, stores)
    group.write_parts(5990, [b"x" * 10, bytes(2192), b"y" * 4])  # data's tail, padding, wal's head
    assert stores[0].calls == [("write", 5990, 10)] and stores[1].calls == [("write", 0, 4)]
    assert group.read(5990, 2206) == b"x" * 10 + bytes(2192) + b"y" * 4
    with pytest.raises(StorageError, match="padding"):
        group.write_parts(5996, [b"z" * 4, b"z"])  # the second part lands in the padding


_SIZES = st.lists(st.integers(1, 3 * EXTENT), min_size=1, max_size=3)
_OPS = st.lists(st.tuples(st.sampled_from(["write", "zero", "trim", "read", "extents"]),
                          st.floats(0, 1), st.floats(0, 1), st.integers(0, 255)), max_size=25)


@settings(max_examples=60, deadline=None)
@given(sizes=_SIZES, ops=_OPS)
def test_the_group_behaves_as_its_members_laid_end_to_end(tmp_path_factory: pytest.TempPathFactory,
                                                          sizes: list[int], ops: list[tuple[str, float, float, int]]) -> None:
    tmp = tmp_path_factory.mktemp("group")
    layout, stores = _files(tmp, sizes)
    group = GroupBackend(layout, stores)
    model = [bytearray(size) for size in sizes]
    for kind, at, span, byte in ops:
        offset = int(at * (layout.size - 1))
        length = max(1, int(span * (layout.size - offset)))
        pieces = layout.split(offset, length)
        if kind == "read":
            expected = b"".join(bytes(p.length) if p.index == PADDING
                                else bytes(model[p.index][p.offset : p.offset + p.length]) for p in pieces)
            assert group.read(offset, length) == expected
            continue
        if kind == "extents":
            runs = group.extents(offset, length)
            assert sum(run for run, _ in runs) == length
            continue
        data = bytes([byte or 1]) * length if kind == "write" else bytes(length)
        if kind == "write" and any(p.index == PADDING for p in pieces):
            with pytest.raises(StorageError):
                group.write(offset, data)
        elif kind == "write":
            group.write(offset, data)
        elif kind == "zero":
            group.zero(offset, length, may_punch=True, fast_only=False)
        else:
            group.trim(offset, length)  # TRIM on a sparse file punches: reads as zeroes here
        if kind == "write" and any(p.index == PADDING for p in pieces):
            # Refused: the pieces before the padding may have landed (a failed write leaves the
            # range undefined, as on a disk); copy what the members now hold into the model.
            for p in pieces:
                if p.index != PADDING:
                    model[p.index][p.offset : p.offset + p.length] = stores[p.index].read(p.offset, p.length)
            continue
        for p in pieces:
            if p.index != PADDING:
                model[p.index][p.offset : p.offset + p.length] = data[: p.length]
    group.flush()
    for index, store in enumerate(stores):
        assert os.pread(store.fd, len(model[index]), 0) == bytes(model[index])
    group.close()
