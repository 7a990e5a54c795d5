"""replication/checksums.py and replication/set_progress.py (issue 19)."""

from __future__ import annotations

import pytest

from foresync.errors import RemoteProtocolError
from foresync.faults import NO_FAULTS, Faults
from foresync.replication.checksums import RemoteChecksums
from foresync.replication.set_progress import SetProgress


def test_checksums_arrive_in_run_order_and_are_dropped_once_passed() -> None:
    sums = RemoteChecksums(((2, 3), (10, 2)))
    assert sums.expected == 5 and not sums.has(2) and sums.has(1)  # 1 is in no run: never waits
    sums.add(2, (20, 30))
    assert sums.has(3) and not sums.has(4) and sums.get(3) == 30 and sums.get(4) is None
    with pytest.raises(RemoteProtocolError, match="out of order"):
        sums.add(5, (1,))  # past the end of the run
    sums.add(4, (40,))
    assert not sums.has(10)  # waits for the next run
    sums.add(10, (100, 110))
    assert sums.done() and sums.has(10_000) and sums.held == sums.held_max == 5
    sums.release_below(5)
    assert sums.held == 2 and sums.get(2) is None and sums.get(11) == 110
    with pytest.raises(RemoteProtocolError, match="out of order"):
        sums.add(12, (1,))  # nothing more was offered


def test_progress_leaves_the_set_only_once_durable_and_not_when_added_back() -> None:
    progress = SetProgress(NO_FAULTS)
    progress.add(5, ((0, 4),))
    progress.add(9, ((4, 4),))
    progress.readded(((2, 1),))  # a RESYNC_SET put extent 2 back in the pass
    assert progress.durable(4) == ()
    assert progress.durable(5) == ((0, 2), (3, 1))
    assert progress and progress.durable(9) == ((4, 4),) and not progress


def test_the_deliberate_bug_forgets_progress_before_it_is_durable() -> None:
    progress = SetProgress(Faults(resume_before_durable=True))
    progress.add(5, ((0, 4),))
    assert progress.durable(0) == ((0, 4),)
