"""journal/durable.py: the one place foresync fsyncs, and the helpers built on it."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import foresync
from foresync.daemon import metadata
from foresync.errors import StorageError
from foresync.journal import durable
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog
from foresync.storage.file_backend import FileBackend

VOLUME = b"V" * 16


def _broken(*_: object) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_no_module_but_durable_calls_fsync_or_fdatasync() -> None:
    src = Path(foresync.__file__).parent
    callers = sorted(
        str(path.relative_to(src)) for path in src.rglob("*.py")
        if re.search(r"\bos\.(fsync|fdatasync|sync)\(", path.read_text())
    )
    assert callers == ["journal/durable.py"]


def test_write_atomic_replaces_the_file_and_syncs_it_and_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "site.json"
    path.write_bytes(b"old")
    files: list[int] = []
    dirs: list[str] = []
    monkeypatch.setattr(durable, "sync_file", files.append)
    monkeypatch.setattr(durable, "sync_dir", lambda p: dirs.append(str(p)))
    durable.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert len(files) == 1 and dirs == [str(path)]
    assert not (tmp_path / "site.json.tmp").exists()


def test_write_atomic_that_fails_keeps_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "oos.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(durable, "sync_file", _broken)
    with pytest.raises(OSError):
        durable.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["oos.json"]


def test_move_aside_takes_the_first_free_name_and_keeps_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "undo.log"
    (tmp_path / "undo.log.damaged-1").write_bytes(b"earlier")
    path.write_bytes(b"bad")
    aside = durable.move_aside(str(path), "damaged")
    assert aside == f"{path}.damaged-2"
    assert Path(aside).read_bytes() == b"bad" and not path.exists()
    assert (tmp_path / "undo.log.damaged-1").read_bytes() == b"earlier"


def test_a_broken_sync_data_fails_the_journal_the_undo_log_and_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing durable.sync_data reaches every file whose appends or writes it makes durable."""
    journal = RecordJournal.create(str(tmp_path / "journal"), VOLUME)
    undo = UndoLog(str(tmp_path / "undo.log"))
    backend = FileBackend(str(tmp_path / "image"), 4096)
    journal.append(b"x")  # bytes only: commit never parses them
    undo.append(1, b"a" * 10)
    backend.write(0, b"b")
    monkeypatch.setattr(durable, "sync_data", _broken)
    with pytest.raises(StorageError, match=r"journal .*fdatasync failed"):
        journal.sync()
    with pytest.raises(StorageError, match=r"undo log .*fdatasync failed"):
        undo.sync()
    with pytest.raises(StorageError, match="fdatasync failed"):
        backend.flush()
    journal.close()
    undo.close()
    backend.close()


def test_a_broken_sync_file_fails_the_metadata_store_with_the_file_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "sync_file", _broken)
    with pytest.raises(StorageError, match=r"cannot write .*oos\.json") as caught:
        metadata.store_oos(str(tmp_path), {1, 2})
    assert caught.value.errno == errno.EIO
    assert not (tmp_path / "oos.json").exists()
