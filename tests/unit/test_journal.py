"""Unit tests for ``foresync.journal.format`` and ``foresync.journal.journal``.

The journal must survive a crash at any byte of an append: replay stops at the last whole
entry, the torn bytes are preserved aside (``<journal>.torn-<offset>``), and the file is cut back
to the last whole entry so later appends replay. Header damage is not a torn tail: nothing in the
file can be trusted, so opening raises JournalCorruption.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from foresync.errors import JournalCorruption, StorageError
from foresync.journal import durable
from foresync.journal import format as fmt
from foresync.journal.format import EntryKind, RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog, read_entries

VOLUME = bytes(range(16))


def _image(*entries: bytes) -> bytes:
    return fmt.encode_header(VOLUME) + b"".join(entries)


# -- format: layout and round trips -------------------------------------------------------------------


def test_header_layout() -> None:
    header = fmt.encode_header(VOLUME)
    assert len(header) == 32
    assert header[:8] == b"FSJOURN1"
    assert struct.unpack(">I", header[8:12])[0] == 1
    assert header[12:28] == VOLUME
    assert struct.unpack(">I", header[28:32])[0] == fmt.crc32c(header[:28])
    assert fmt.decode_header(header) == VOLUME


def test_entry_layout() -> None:
    entry = fmt.encode_add([7, 0x01020304])
    length, crc = struct.unpack(">II", entry[:8])
    body = entry[8:]
    assert length == len(body) == 1 + 4 + 8
    assert crc == fmt.crc32c(body)
    assert body == bytes([EntryKind.ADD]) + struct.pack(">III", 2, 7, 0x01020304)


def test_crc32c_is_castagnoli() -> None:
    assert fmt.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def _replayed(*entries: bytes) -> RecordState:
    result = fmt.replay(_image(*entries))
    assert result.torn_reason is None
    assert result.entries == len(entries)
    assert result.valid_end == len(_image(*entries))
    assert result.volume_id == VOLUME
    return result.state


def test_add_round_trip() -> None:
    assert _replayed(fmt.encode_add([3, 1, 2])) == RecordState({1, 2, 3}, {})
    assert _replayed(fmt.encode_add([])) == RecordState(set(), {})
    assert _replayed(fmt.encode_add([0xFFFFFFFF])) == RecordState({0xFFFFFFFF}, {})


def test_remove_round_trip() -> None:
    state = _replayed(fmt.encode_add([1, 2, 3]), fmt.encode_remove([2, 9]))
    assert state == RecordState({1, 3}, {})


def test_range_and_range_done_round_trip() -> None:
    big = (1 << 64) - 1
    state = _replayed(fmt.encode_range(5, 4096, 1 << 30), fmt.encode_range(6, big, big))
    assert state.ranges == {5: (4096, 1 << 30), 6: (big, big)}
    state = _replayed(fmt.encode_range(5, 4096, 1 << 30), fmt.encode_range_done(5),
                      fmt.encode_range_done(77))
    assert state.ranges == {}


@pytest.mark.parametrize(
    "state",
    [
        RecordState(),
        RecordState({1}, {}),
        RecordState(set(range(0, 2000, 3)), {}),
        RecordState({4, 5}, {9: (0, 1 << 40), 3: (512, 0)}),
        RecordState(set(), {1: (1, 2)}),
    ],
)
def test_checkpoint_round_trip(state: RecordState) -> None:
    assert _replayed(fmt.encode_checkpoint(state)) == state


def test_checkpoint_replaces_everything_before_it() -> None:
    state = _replayed(fmt.encode_add([1, 2]), fmt.encode_range(4, 0, 10),
                      fmt.encode_checkpoint(RecordState({7}, {8: (1, 1)})), fmt.encode_add([9]))
    assert state == RecordState({7, 9}, {8: (1, 1)})


def test_checkpoint_is_sorted_and_deterministic() -> None:
    one = fmt.encode_checkpoint(RecordState({3, 1, 2}, {5: (0, 1), 2: (3, 4)}))
    two = fmt.encode_checkpoint(RecordState({2, 3, 1}, {2: (3, 4), 5: (0, 1)}))
    assert one == two


# -- format: damage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 8, 27, 31])
def test_short_header_is_corruption(cut: int) -> None:
    with pytest.raises(JournalCorruption):
        fmt.replay(fmt.encode_header(VOLUME)[:cut])


@pytest.mark.parametrize("index", range(32))
def test_any_header_bit_flip_is_corruption(index: int) -> None:
    data = bytearray(_image(fmt.encode_add([1])))
    data[index] ^= 0x10
    with pytest.raises(JournalCorruption) as info:
        fmt.replay(bytes(data))
    assert info.value.position in (0, 8)


def test_unsupported_version_is_corruption() -> None:
    head = struct.pack(">8sI16s", b"FSJOURN1", 2, VOLUME)
    with pytest.raises(JournalCorruption, match="version 2"):
        fmt.replay(head + struct.pack(">I", fmt.crc32c(head)))


def test_wrong_magic_is_corruption() -> None:
    head = struct.pack(">8sI16s", b"NOTAJRNL", 1, VOLUME)
    with pytest.raises(JournalCorruption, match="magic"):
        fmt.replay(head + struct.pack(">I", fmt.crc32c(head)))


def test_zero_and_oversized_lengths_end_replay() -> None:
    good = fmt.encode_add([1])
    for bad in (struct.pack(">II", 0, 0), struct.pack(">II", fmt.MAX_ENTRY_BYTES + 1, 0)):
        result = fmt.replay(_image(good, bad))
        assert result.state.extents == {1}
        assert result.entries == 1
        assert result.valid_end == 32 + len(good)
        assert result.torn_reason is not None and "impossible" in result.torn_reason


def test_malformed_body_with_a_good_crc_is_damage() -> None:
    """A body that passes its CRC but does not parse (a writer bug, not a torn write) is never
    applied, and it is damage: a crash cannot write a whole entry with a valid CRC."""
    lying = bytes([EntryKind.ADD]) + struct.pack(">I", 5) + struct.pack(">I", 1)  # says 5, has 1
    unknown = bytes([99, 0, 0, 0, 0])
    for body in (lying, unknown, bytes([EntryKind.RANGE, 1, 2])):
        entry = struct.pack(">II", len(body), fmt.crc32c(body)) + body
        result = fmt.replay(_image(fmt.encode_add([4]), entry, fmt.encode_add([5])))
        assert result.state.extents == {4}
        assert result.entries == 1
        assert result.torn_reason is None
        assert result.damage is not None and "malformed" in result.damage


def test_damage_in_the_middle_is_not_a_torn_tail() -> None:
    first, second, third = fmt.encode_add([1]), fmt.encode_add([2]), fmt.encode_add([3])
    data = bytearray(_image(first, second, third))
    data[32 + len(first) + 9] ^= 1  # inside the second entry's body
    result = fmt.replay(bytes(data))
    assert result.valid_end == 32 + len(first)
    assert result.torn_reason is None
    assert result.damage is not None and result.damage.startswith("entry fails its CRC32C")


# -- the journal file: crash in the middle of an append ------------------------------------------------


HISTORY = [
    fmt.encode_add([1, 2, 3]),
    fmt.encode_range(10, 4096, 1 << 20),
    fmt.encode_remove([2]),
    fmt.encode_add([40, 41]),
    fmt.encode_range_done(10),
    fmt.encode_range(11, 0, 512),
]
LAST = fmt.encode_add([7, 8, 9, 1000])


def _written(path: Path, entries: list[bytes]) -> bytes:
    journal = RecordJournal.create(str(path), VOLUME)
    for entry in entries:
        journal.append(entry)
    journal.sync()
    journal.close()
    return path.read_bytes()


def test_crash_at_every_byte_of_the_last_append(tmp_path: Path) -> None:
    whole = _written(tmp_path / "full", [*HISTORY, LAST])
    before_last = _written(tmp_path / "before", HISTORY)
    expected = fmt.replay(before_last).state
    start = len(before_last)
    assert whole[:start] == before_last and len(whole) == start + len(LAST)
    for cut in range(start, len(whole)):
        path = tmp_path / f"cut-{cut}"
        path.write_bytes(whole[:cut])
        journal = RecordJournal.open(str(path))
        try:
            replayed = journal.replayed
            assert replayed.state == expected, cut
            assert replayed.entries == len(HISTORY) + 1  # the checkpoint written by create()
            assert replayed.valid_end == start
            aside = tmp_path / f"cut-{cut}.torn-{start}"
            if cut == start:
                assert replayed.torn_reason is None
                assert not aside.exists()
            else:
                assert replayed.torn_reason is not None
                assert aside.read_bytes() == whole[start:cut]
            assert path.stat().st_size == start
            assert path.read_bytes() == before_last
        finally:
            journal.close()


def test_appends_after_recovery_replay(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    whole = _written(path, [*HISTORY, LAST])
    path.write_bytes(whole[: len(whole) - 3])
    journal = RecordJournal.open(str(path))
    expected = journal.replayed.state
    journal.append(fmt.encode_add([55]))
    journal.append(fmt.encode_range_done(11))
    journal.sync()
    journal.close()
    reopened = RecordJournal.open(str(path))
    try:
        assert reopened.replayed.torn_reason is None
        expected.extents.add(55)
        expected.ranges.pop(11)
        assert reopened.replayed.state == expected
    finally:
        reopened.close()


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_bit_flip_in_last_entry_is_damage_and_leaves_the_file_alone(tmp_path: Path, bit: int) -> None:
    """A flipped bit in the last (whole, committed) entry is bit rot, not a torn append: cutting
    it off would drop extents the image already depends on (issue 12)."""
    whole = _written(tmp_path / "full", [*HISTORY, LAST])
    start = len(whole) - len(LAST)
    for index in range(start, len(whole)):
        damaged = bytearray(whole)
        damaged[index] ^= bit
        path = tmp_path / f"flip-{index}"
        path.write_bytes(bytes(damaged))
        with pytest.raises(JournalCorruption, match=r"flipped byte|length field"):
            RecordJournal.open(str(path))
        assert path.read_bytes() == bytes(damaged), index
    assert not [p for p in tmp_path.iterdir() if ".torn-" in p.name]


@pytest.mark.parametrize("index", [0, 5, 9, 20, 31])
def test_header_corruption_raises_and_leaves_the_file_alone(tmp_path: Path, index: int) -> None:
    path = tmp_path / "journal"
    whole = bytearray(_written(path, HISTORY))
    whole[index] ^= 0x04
    path.write_bytes(bytes(whole))
    with pytest.raises(JournalCorruption):
        RecordJournal.open(str(path))
    assert path.read_bytes() == bytes(whole)
    assert [p.name for p in tmp_path.iterdir()] == ["journal"]


def test_second_tear_at_the_same_offset_keeps_the_first(tmp_path: Path) -> None:
    """Two crashes at the same place must not overwrite the bytes preserved by the first."""
    path = tmp_path / "journal"
    whole = _written(path, [*HISTORY, LAST])
    start = len(whole) - len(LAST)
    path.write_bytes(whole[:-1])
    RecordJournal.open(str(path)).close()
    other = fmt.encode_add([123])
    path.write_bytes(whole[:start] + other[:-2])
    RecordJournal.open(str(path)).close()
    preserved = sorted(p.read_bytes() for p in tmp_path.iterdir() if ".torn-" in p.name)
    assert preserved == sorted([whole[start:-1], other[:-2]])
    assert path.read_bytes() == whole[:start]


def test_torn_tail_is_made_durable_before_truncating(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy aside (its bytes and its directory entry) is durable before the cut."""
    path = tmp_path / "journal"
    whole = _written(path, [*HISTORY, LAST])
    path.write_bytes(whole[:-1])
    seen: list[tuple[str, int]] = []

    def record_fsync_dir(target: str) -> None:
        seen.append((target, path.stat().st_size))

    monkeypatch.setattr(durable, "sync_dir", record_fsync_dir)
    RecordJournal.open(str(path)).close()
    asides = [(t, size) for t, size in seen if ".torn-" in t]
    assert asides and all(size == len(whole) - 1 for _, size in asides)


# -- the journal file: appends, sync and checkpoints ---------------------------------------------------


def test_create_writes_an_empty_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RecordJournal.create(str(path), VOLUME)
    journal.close()
    assert path.read_bytes() == fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState())
    assert journal.volume_id == VOLUME
    assert journal.entries_since_checkpoint == 1


def test_sync_counts_appends(tmp_path: Path) -> None:
    journal = RecordJournal.create(str(tmp_path / "journal"), VOLUME)
    calls: list[int] = []
    journal._fsync = lambda: calls.append(1)  # type: ignore[method-assign]
    assert journal.append(fmt.encode_add([1])) == 1
    assert journal.append(fmt.encode_add([2])) == 2
    assert journal.synced == 0
    assert journal.sync() == 2
    assert journal.synced == 2 and len(calls) == 1
    assert journal.sync() == 2 and len(calls) == 1  # nothing new: no fdatasync
    journal.append(fmt.encode_add([3]))
    journal.commit(3)
    assert journal.synced == 3 and len(calls) == 2
    journal.close()


def test_failing_fsync_does_not_count_as_synced(tmp_path: Path) -> None:
    journal = RecordJournal.create(str(tmp_path / "journal"), VOLUME)

    def broken() -> None:
        raise OSError(5, "EIO")

    journal._fsync = broken  # type: ignore[method-assign]
    journal.append(fmt.encode_add([1]))
    with pytest.raises(StorageError, match="fdatasync failed"):
        journal.sync()
    with pytest.raises(StorageError, match="fdatasync failed"):
        journal.commit(1)
    assert journal.synced == 0
    journal.close()


def test_checkpoint_rewrites_to_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    _written(path, HISTORY)
    journal = RecordJournal.open(str(path))
    state = journal.replayed.state
    journal.checkpoint(state)
    assert journal.entries_since_checkpoint == 1
    assert path.read_bytes() == fmt.encode_header(VOLUME) + fmt.encode_checkpoint(state)
    assert not (tmp_path / "journal.tmp").exists()
    journal.append(fmt.encode_add([77]))  # appends go to the new file
    journal.sync()
    journal.close()
    reopened = RecordJournal.open(str(path))
    reopened.close()
    state.extents.add(77)
    assert reopened.replayed.state == state
    assert reopened.replayed.entries == 2


def test_checkpoint_that_fails_leaves_the_old_journal_usable(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (or ENOSPC) before the rename leaves the old journal whole, and the open journal
    still appends to it rather than to a closed (possibly reused) descriptor."""
    path = tmp_path / "journal"
    before = _written(path, HISTORY)
    journal = RecordJournal.open(str(path))
    state = journal.replayed.state

    def no_rename(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        journal.checkpoint(RecordState({999}, {}))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert fmt.replay(before).state == state
    journal.append(fmt.encode_add([5]))
    journal.sync()
    journal.close()
    reopened = RecordJournal.open(str(path))
    reopened.close()
    state.extents.add(5)
    assert reopened.replayed.state == state
    assert reopened.replayed.torn_reason is None


def test_leftover_tmp_from_a_crashed_checkpoint_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    before = _written(path, HISTORY)
    (tmp_path / "journal.tmp").write_bytes(b"half a checkpoint")
    journal = RecordJournal.open(str(path))
    journal.close()
    assert journal.replayed.state == fmt.replay(before).state
    # The next checkpoint overwrites the leftover.
    journal = RecordJournal.open(str(path))
    journal.checkpoint(RecordState({1}, {}))
    journal.close()
    assert fmt.replay(path.read_bytes()).state == RecordState({1}, {})
    assert not (tmp_path / "journal.tmp").exists()


def test_close_is_idempotent(tmp_path: Path) -> None:
    journal = RecordJournal.create(str(tmp_path / "journal"), VOLUME)
    journal.close()
    journal.close()
    assert os.path.exists(tmp_path / "journal")


def test_replay_reports_each_entry_to_an_observer() -> None:
    """`foresync inspect` lists entries through replay's observer: positions and kinds in order."""
    data = (fmt.encode_header(bytes(16)) + fmt.encode_checkpoint(fmt.RecordState())
            + fmt.encode_add([3, 4]) + fmt.encode_remove([3]))
    seen: list[tuple[int, str, int]] = []
    fmt.replay(data, lambda pos, body, state: seen.append((pos, fmt.EntryKind(body[0]).name,
                                                            len(state.extents))))
    assert [kind for _, kind, _ in seen] == ["CHECKPOINT", "ADD", "REMOVE"]
    assert [count for _, _, count in seen] == [0, 2, 1]
    assert seen[0][0] == fmt.HEADER.size and seen[1][0] > seen[0][0]


def test_inspect_shows_a_torn_tail_without_touching_the_journal(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from foresync.cli import main

    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "site.json").write_text(json.dumps({"format": 1, "role": "secondary",
                                                "volume_id": "00" * 16, "epoch_history": [7]}))
    journal = meta / "record.journal"
    whole = fmt.encode_header(bytes(16)) + fmt.encode_checkpoint(fmt.RecordState()) + fmt.encode_add([5, 9])
    journal.write_bytes(whole + fmt.encode_add([11])[:-3])  # a torn append
    before = journal.read_bytes()
    result = CliRunner().invoke(main, ["inspect", "--meta", str(meta), "--entries"])
    assert result.exit_code == 0, result.output
    assert "TORN TAIL" in result.output
    assert "record: 2 extents: 5, 9" in result.output
    assert "ADD" in result.output and "CHECKPOINT" in result.output
    assert journal.read_bytes() == before, "inspect must not change the journal"


# -- torn tail or damage (issue 12): damage never shrinks what the site believes ---------------------


CHECKPOINTED = (fmt.encode_header(VOLUME)
                + fmt.encode_checkpoint(RecordState({1, 5, 9, 300}, {12: (4096, 1 << 20)})))


@pytest.mark.parametrize("pattern", [0x01, 0x10, 0x80, 0xFF])
def test_every_flipped_byte_of_a_checkpointed_journal_is_damage(pattern: int) -> None:
    """What a clean stop leaves (header + one checkpoint): no byte of it can be a torn append,
    so any changed byte must be doubt, never a smaller record."""
    for index in range(len(CHECKPOINTED)):
        data = bytearray(CHECKPOINTED)
        data[index] ^= pattern
        assessed = fmt.assess(bytes(data), VOLUME)
        assert assessed.doubt is not None, index


def test_every_flipped_byte_of_a_journal_with_appends_is_damage() -> None:
    whole = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState({3}, {})) + b"".join(HISTORY) + LAST
    assert fmt.assess(whole, VOLUME).doubt is None
    for index in range(len(whole)):
        for pattern in (0x01, 0x80, 0x5A):
            data = bytearray(whole)
            data[index] ^= pattern
            assessed = fmt.assess(bytes(data), VOLUME)
            assert assessed.doubt is not None, (index, pattern)


def test_a_torn_append_is_still_a_torn_tail_not_damage() -> None:
    """The shapes a crash mid-append leaves: the file cut anywhere in the un-synced appends, or
    the tail's last page not written back (zeros) though the file size covers it."""
    base = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState({3}, {})) + HISTORY[0]
    unsynced = b"".join(HISTORY[1:]) + LAST
    for cut in range(len(unsynced)):
        for zero_from in (cut, max(0, cut - 7), max(0, cut - 40)):
            tail = unsynced[:zero_from] + bytes(cut - zero_from)
            replayed = fmt.replay(base + tail)
            if replayed.damage is not None:
                # Zeros over a whole entry's bytes that change just one of them (the others were
                # zero already) look like one flipped byte: the safe side, and rare.
                pos = replayed.valid_end
                entry_end = pos + 8 + struct.unpack_from(">I", base + unsynced, pos)[0]
                zeroed = (base + unsynced)[max(pos, len(base) + zero_from) : min(entry_end, len(base) + cut)]
                assert sum(1 for byte in zeroed if byte) == 1, (cut, zero_from, replayed.damage)
                continue
            assert replayed.valid_end >= len(base)
            assert (replayed.torn_reason is None) == (replayed.valid_end == len(base + tail))


def test_a_valid_entry_after_a_bad_one_is_damage() -> None:
    first, second, third = fmt.encode_add([1]), fmt.encode_add([2]), fmt.encode_add([3])
    head = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState())
    zeroed = head + first + bytes(len(second)) + third  # a sector of zeros in the middle
    replayed = fmt.replay(zeroed)
    assert replayed.damage is not None and "valid entry follows" in replayed.damage
    assert replayed.torn_reason is None


def test_a_length_field_flip_in_the_last_entry_is_damage() -> None:
    head = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState())
    entry = bytearray(fmt.encode_add([7, 8]))
    entry[3] ^= 0x40  # longer than the file: it looks cut short, but the entry is whole
    replayed = fmt.replay(head + bytes(entry))
    assert replayed.damage is not None and "length field" in replayed.damage


@pytest.mark.parametrize("tail", [
    fmt.encode_resync_set(((7, 8),)),
    fmt.encode_resync_set(((0, 3), (9, 2))) + fmt.encode_add([4]),
    fmt.encode_add([4]) + fmt.encode_resync_clear(),
    fmt.encode_resync_clear() + fmt.encode_resync_set(((5, 1),)),
    fmt.encode_resync_shrink(((20, 2),)),
], ids=["resync-set-last", "resync-set-then-add", "resync-clear-last", "resync-clear-then-set",
        "resync-shrink-last"])
def test_every_flipped_byte_around_resync_entries_is_damage(tail: bytes) -> None:
    """Issue 19's entries are whole, committed entries like any other: a flipped byte in one
    (its length field too) is damage, never a torn tail that drops the resync set while the
    primary has already let those extents go from its out-of-sync set (simulator seeds 373, 435:
    a length byte of the last RESYNC_SET flipped read as "cut short", and the pass was lost)."""
    whole = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState({3}, {}, ((20, 4),))) + tail
    assert fmt.assess(whole, VOLUME).doubt is None
    for index in range(fmt.HEADER.size, len(whole)):
        for pattern in (0x01, 0x80, 0x5A, 0xFF):
            data = bytearray(whole)
            data[index] ^= pattern
            assessed = fmt.assess(bytes(data), VOLUME)
            assert assessed.doubt is not None, (index, pattern)


def test_a_torn_resync_set_append_is_still_a_torn_tail() -> None:
    """The structural length of RESYNC_SET and RESYNC_CLEAR must not turn a real tear of them
    into damage: the file cut anywhere inside the last entry keeps the prefix, no doubt."""
    head = fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState({3}, {}))
    for last in (fmt.encode_resync_set(((1, 2), (6, 3))), fmt.encode_resync_clear(),
                 fmt.encode_resync_shrink(((1, 1),))):
        for cut in range(1, len(last)):
            assessed = fmt.assess(head + last[:cut], VOLUME)
            assert assessed.doubt is None, (last, cut)
            assert assessed.replay is not None and assessed.replay.valid_end == len(head)


def test_a_header_without_a_checkpoint_is_damage() -> None:
    replayed = fmt.replay(fmt.encode_header(VOLUME))
    assert replayed.damage is not None and "no checkpoint" in replayed.damage


def test_assess_missing_and_foreign_journals_are_doubt() -> None:
    assert fmt.assess(None, VOLUME).doubt == "is missing"
    assert fmt.assess(None, VOLUME).state == RecordState()
    foreign = fmt.encode_header(bytes(16)) + fmt.encode_checkpoint(RecordState({1}, {}))
    assert "belongs to volume" in str(fmt.assess(foreign, VOLUME).doubt)
    good = fmt.assess(CHECKPOINTED, VOLUME)
    assert good.doubt is None and good.state.extents == {1, 5, 9, 300}


def test_the_deliberate_bugs_switch_the_guards_off() -> None:
    """The simulator's self-check flips these; here: that they really disable the guards."""
    from foresync.faults import Faults

    data = bytearray(CHECKPOINTED)
    data[40] ^= 1
    sloppy = fmt.assess(bytes(data), VOLUME, Faults(damage_taken_for_torn_tail=True))
    assert sloppy.doubt is None and sloppy.state == RecordState()
    assert fmt.assess(None, VOLUME, Faults(missing_metadata_taken_as_empty=True)).doubt is None


def test_one_byte_explains_finds_every_single_byte_change() -> None:
    body = bytes(range(7, 200))
    crc = fmt.crc32c(body)
    assert not fmt.one_byte_explains(body, crc)
    for index in range(len(body)):
        changed = bytearray(body)
        changed[index] ^= 0xA5
        assert fmt.one_byte_explains(bytes(changed), crc), index
    assert fmt.one_byte_explains(body, crc ^ 0x00FF0000)  # a byte of the stored CRC
    torn = body[:100] + bytes(len(body) - 100)
    assert not fmt.one_byte_explains(torn, crc)


# -- a full disk under the journal and the undo log ------------------------------------------------


class _FullDisk:
    """``os.write`` for one descriptor: while ``room`` is not None, at most that many more bytes
    land (a short write), then ENOSPC; every other descriptor writes as usual."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.room: int | None = None
        self._write = os.write

    def __call__(self, fd: int, data: Any) -> int:
        if fd != self.fd or self.room is None:
            return self._write(fd, data)
        if self.room == 0:
            raise OSError(28, "No space left on device")
        written = self._write(fd, bytes(data)[: self.room])
        self.room -= written
        return written


def test_an_append_the_disk_refuses_waits_for_the_commit(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the append raised into the secondary's action pump, left half an entry in the
    file, and later appends landed after it, where replay never reads."""
    path = tmp_path / "journal"
    journal = RecordJournal.create(str(path), VOLUME)
    disk = _FullDisk(journal._fd)
    monkeypatch.setattr(os, "write", disk)
    disk.room = 5  # part of the first entry fits
    assert journal.append(fmt.encode_add([1])) == 1
    assert journal.append(fmt.encode_add([2])) == 2
    with pytest.raises(StorageError, match="append failed: No space left") as failure:
        journal.commit(2)
    assert failure.value.errno == 28 and journal.synced == 0
    disk.room = None  # room again
    journal.append(fmt.encode_remove([1]))
    journal.commit(3)
    assert journal.synced == 3
    journal.close()
    replayed = fmt.replay(path.read_bytes())
    assert replayed.torn_reason is None and replayed.entries == 4  # the checkpoint and all three
    assert replayed.state.extents == {2}


def test_after_a_failed_fdatasync_the_entries_it_covered_are_written_again(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RecordJournal.create(str(path), VOLUME)
    journal.append(fmt.encode_add([1]))
    journal.commit(1)
    synced_bytes = path.read_bytes()
    real_fsync = journal._fsync

    def broken() -> None:
        raise OSError(5, "EIO")

    journal._fsync = broken  # type: ignore[method-assign]
    journal.append(fmt.encode_add([2]))
    with pytest.raises(StorageError, match="fdatasync failed"):
        journal.commit(2)
    journal._fsync = real_fsync  # type: ignore[method-assign]
    journal.append(fmt.encode_add([3]))
    # Nothing is written after what the kernel may have dropped: the next entry waits too.
    assert path.read_bytes()[: len(synced_bytes)] == synced_bytes
    journal.commit(3)
    journal.close()
    replayed = fmt.replay(path.read_bytes())
    assert replayed.torn_reason is None and replayed.entries == 4  # each entry exactly once
    assert replayed.state.extents == {1, 2, 3}


def test_an_undo_entry_the_disk_refuses_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-written undo entry before whole ones would end the rollback there: the old
    contents saved after it would never be restored."""
    log = UndoLog(str(tmp_path / "undo.log"))
    log.append(1, b"a" * 100)
    disk = _FullDisk(log._fd)
    monkeypatch.setattr(os, "write", disk)
    disk.room = 50
    with pytest.raises(StorageError, match=r"undo log .*append failed") as failure:
        log.append(2, b"b" * 100)
    assert failure.value.errno == 28
    disk.room = None
    log.append(3, b"c" * 100)
    log.sync()
    log.close()
    assert read_entries(str(tmp_path / "undo.log"), 100, 100 * 8).entries == [(1, b"a" * 100), (3, b"c" * 100)]


def test_a_failed_undo_sync_cuts_back_to_the_last_good_one(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    log = UndoLog(str(tmp_path / "undo.log"))
    log.append(1, b"a" * 10)
    log.sync()
    log.append(2, b"b" * 10)

    def broken(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError, match="fdatasync failed"):
        log.sync()
    monkeypatch.undo()
    assert log.saved == 1
    log.append(3, b"c" * 10)
    log.sync()
    log.close()
    assert read_entries(str(tmp_path / "undo.log"), 10, 10 * 8).entries == [(1, b"a" * 10), (3, b"c" * 10)]


def test_a_resync_shrink_takes_extents_out_of_the_replayed_set() -> None:
    """Issue 19: what a pass has made durable leaves the set; an interrupted pass resumes with
    the rest."""
    data = (fmt.encode_header(VOLUME) + fmt.encode_checkpoint(RecordState())
            + fmt.encode_resync_set(((0, 10),)) + fmt.encode_resync_shrink(((0, 3), (5, 1)))
            + fmt.encode_resync_set(((1, 1),)))
    replayed = fmt.replay(data)
    assert replayed.damage is None and replayed.state.resync == ((1, 1), (3, 2), (6, 4))
