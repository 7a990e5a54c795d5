"""The secondary's record of objects on disk (journal/object_record.py)."""

from __future__ import annotations

import os
from pathlib import Path

from foresync.journal.object_record import (
    ObjectRecordJournal,
    load_may_differ,
    store_may_differ,
)


def test_updates_survive_a_reopen_and_a_torn_tail_is_kept_aside(tmp_path: Path) -> None:
    path = str(tmp_path / "objects-record.journal")
    journal = ObjectRecordJournal.open(path)
    journal.update(["b/a", "b/b", "b/c"], [])
    journal.update(["b/d"], ["b/b"])
    journal.close()
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")  # a torn append
    reopened = ObjectRecordJournal.open(path)
    assert list(reopened.record) == ["b/a", "b/c", "b/d"]
    assert any(name.startswith("objects-record.journal.torn-") for name in os.listdir(tmp_path))
    reopened.update(["b/e"], [])
    reopened.close()
    assert list(ObjectRecordJournal.open(path).record) == ["b/a", "b/c", "b/d", "b/e"]


def test_compaction_keeps_the_record_and_bounds_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    journal = ObjectRecordJournal.open(path)
    for i in range(3000):
        journal.update([f"bucket/a-rather-long-object-name-{i:06d}"], [f"bucket/a-rather-long-object-name-{i - 1:06d}"])
    journal.close()
    assert os.path.getsize(path) < 1024 * 1024 + 4096
    assert list(ObjectRecordJournal.open(path).record) == ["bucket/a-rather-long-object-name-002999"]


def test_may_differ_names_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "objects-may-differ.json")
    assert load_may_differ(path) == set()
    store_may_differ(path, {"b/x", "b/y"})
    assert load_may_differ(path) == {"b/x", "b/y"}
