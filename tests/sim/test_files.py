"""The simulator's metadata directory (testing/sim/files.py) under the real journal and undo log:
it must keep the files byte for byte as the real filesystem does, and its crashes must produce
what a crash can (a torn tail, lost writes), never what the real replay takes for damage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from foresync.errors import StorageError
from foresync.journal import format as fmt
from foresync.journal.durable import OS_FILES, Files
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog, read_entries
from foresync.testing.sim.files import SimFiles

VOLUME = bytes(range(16))


def _exercise(path: str, files: Files) -> None:
    journal = RecordJournal.create(path, VOLUME, files=files)
    for extent in range(40):
        journal.append(fmt.encode_add([extent]))
        if extent % 7 == 0:
            journal.sync()
    journal.checkpoint(RecordState({1, 2, 3}, {9: (0, 4096)}))
    journal.append(fmt.encode_remove([2]))
    journal.sync()
    journal.close()


def test_the_journal_writes_the_same_bytes_as_on_a_real_filesystem(tmp_path: Path) -> None:
    real = str(tmp_path / "journal")
    _exercise(real, OS_FILES)
    sim = SimFiles()
    _exercise("journal", sim)
    assert sim.read("journal") == Path(real).read_bytes()
    assert sorted(sim.files) == sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


def test_a_crash_keeps_what_was_synced_and_at_most_a_torn_tail_after_it() -> None:
    outcomes = set()
    for draw in range(300):
        files = SimFiles()
        journal = RecordJournal.create("journal", VOLUME, files=files)
        for extent in range(5):
            journal.append(fmt.encode_add([extent]))
        journal.sync()
        synced = files.read("journal")
        for extent in range(5, 9):
            journal.append(fmt.encode_add([extent]))
        files.crash(random.Random(draw))
        data = files.read("journal")
        assert data.startswith(synced), draw
        replayed = fmt.replay(data)
        assert replayed.damage is None, (draw, replayed.damage)
        assert set(range(5)) <= replayed.state.extents <= set(range(9))
        outcomes.add("lost" if data == synced else "torn" if replayed.torn_reason else "kept")
        reopened = RecordJournal.open("journal", files)  # cuts a torn tail, keeping it aside
        assert fmt.replay(files.read("journal")).torn_reason is None
        assert reopened.replayed.state == replayed.state
    assert outcomes == {"lost", "torn", "kept"}


def test_a_full_meta_disk_fails_the_commit_and_loses_nothing_once_freed() -> None:
    files = SimFiles()
    journal = RecordJournal.create("journal", VOLUME, files=files)
    files.full = random.Random(3)
    for extent in range(6):
        journal.append(fmt.encode_add([extent]))
    with pytest.raises(StorageError, match="No space left"):
        journal.commit(6)
    assert files.failed_writes > 0
    with pytest.raises(OSError):  # a checkpoint cannot be written either; the journal stays
        journal.checkpoint(RecordState({99}))
    assert not files.exists("journal.tmp")
    files.full = None
    journal.commit(6)
    replayed = fmt.replay(files.read("journal"))
    assert replayed.torn_reason is None and replayed.entries == 7
    assert replayed.state.extents == set(range(6))


def test_the_undo_log_keeps_its_synced_entries_through_a_crash() -> None:
    for draw in range(100):
        files = SimFiles()
        undo = UndoLog("undo.log", files)
        undo.append(0, b"a" * 16)
        undo.append(3, b"b" * 16)
        undo.sync()
        undo.append(5, b"c" * 16)  # not synced: may be lost or torn
        files.crash(random.Random(draw))
        replayed = read_entries("undo.log", 16, 16 * 8, files)
        assert replayed.damage is None, draw
        assert replayed.entries[:2] == [(0, b"a" * 16), (3, b"b" * 16)]
        assert replayed.entries[2:] in ([], [(5, b"c" * 16)])
