"""Overlapping journal commits (issue 14): the journal settles them together, and the marks the
secondary tells its core are each commit's own start (replication/commits.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from foresync.errors import StorageError
from foresync.faults import Faults
from foresync.journal import format as fmt
from foresync.journal.journal import RecordJournal
from foresync.replication.commits import CommitMarks

VOLUME = bytes(range(16))


class _Gate:
    """Replaces the journal's fdatasync: the first call blocks until released (then succeeds or
    fails as told); later calls succeed (or fail) at once."""

    def __init__(self, first_fails: bool = False, later_fail: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.first_fails, self.later_fail = first_fails, later_fail

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30)
            if self.first_fails:
                raise OSError(5, "EIO")
        elif self.later_fail:
            raise OSError(5, "EIO")


def _run(journal: RecordJournal, target: int, outcome: dict[int, object]) -> threading.Thread:
    def body() -> None:
        try:
            journal.commit(target)
            outcome[target] = "ok"
        except StorageError as exc:
            outcome[target] = exc
    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_a_commit_beside_one_in_flight_returns_only_when_both_have(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RecordJournal.create(str(path), VOLUME)
    gate = _Gate()
    journal._fsync = gate  # type: ignore[method-assign]
    journal.append(fmt.encode_add([1]))
    outcome: dict[int, object] = {}
    first = _run(journal, 1, outcome)
    assert gate.entered.wait(30)
    journal.append(fmt.encode_add([2]))  # arrives while the first fdatasync runs
    second = _run(journal, 2, outcome)
    second.join(0.3)
    # Its own fdatasync returned, but the first (which overlapped it) has not: not settled yet.
    assert second.is_alive() and outcome == {} and gate.calls == 2
    assert journal.synced == 0
    gate.release.set()
    first.join(30)
    second.join(30)
    assert outcome == {1: "ok", 2: "ok"}
    assert journal.synced == 2 and journal.commits_overlapped == 1
    assert journal._since_sync == [] and journal._synced_end == path.stat().st_size
    journal.close()
    assert RecordJournal.open(str(path)).replayed.state.extents == {1, 2}


def test_when_one_of_two_overlapping_fdatasyncs_fails_both_raise(tmp_path: Path) -> None:
    """Linux tells only one of two overlapping fdatasyncs of a file about a lost page, so the
    other's success proves nothing: both fail, and the next commit writes everything again."""
    path = tmp_path / "journal"
    journal = RecordJournal.create(str(path), VOLUME)
    gate = _Gate(first_fails=True)
    journal._fsync = gate  # type: ignore[method-assign]
    journal.append(fmt.encode_add([1]))
    outcome: dict[int, object] = {}
    first = _run(journal, 1, outcome)
    assert gate.entered.wait(30)
    journal.append(fmt.encode_add([2]))
    second = _run(journal, 2, outcome)
    gate.release.set()
    first.join(30)
    second.join(30)
    assert isinstance(outcome[1], StorageError) and "fdatasync failed" in str(outcome[1])
    assert isinstance(outcome[2], StorageError) and "overlapping" in str(outcome[2])
    assert journal.synced == 0 and len(journal._since_sync) == 2
    journal.commit(2)  # a working fdatasync: both entries written again and durable
    assert journal.synced == 2 and journal._since_sync == []
    journal.close()
    assert RecordJournal.open(str(path)).replayed.state.extents == {1, 2}


def test_a_lone_commit_settles_at_once(tmp_path: Path) -> None:
    journal = RecordJournal.create(str(tmp_path / "journal"), VOLUME)
    journal._fsync = lambda: None  # type: ignore[method-assign]
    for n in range(1, 4):
        journal.append(fmt.encode_add([n]))
        journal.commit(n)
        assert journal.synced == n and journal._since_sync == []
    assert journal.commits_overlapped == 0
    journal.close()


def test_a_returned_commit_counts_its_own_start_mark_in_any_order() -> None:
    marks = CommitMarks()
    assert marks.may_start(3)
    marks.start(3)
    assert not marks.may_start(3)  # covers nothing new
    assert marks.may_start(5)
    marks.start(5)
    assert not marks.may_start(9)  # two in flight: the next waits
    assert marks.overlapped == 1
    assert marks.returned(5) == 5  # the later one first
    assert marks.returned(3) == 3  # never more than its own start
    assert not marks
    marks.start(7)
    marks.failed(7)
    assert not marks and marks.may_start(7)


def test_the_deliberate_bug_counts_a_later_commits_mark() -> None:
    marks = CommitMarks(Faults(commit_covers_appends_after_its_start=True))
    marks.start(3)
    marks.start(5)
    assert marks.returned(3) == 5  # wrong: appends 4 and 5 came after its fdatasync started


def test_marks_must_increase() -> None:
    marks = CommitMarks()
    marks.start(4)
    with pytest.raises(Exception, match="not past"):
        marks.start(4)
