"""Overlapping journal commits on the secondary: how far a returned commit makes the journal durable.

Theory of operation. The secondary answers ADDED only once the entries a miss appended to its
record journal are durable (group commit, ``SecondaryCore.journal_synced``). A commit takes its
mark when it *starts*: ``journal_target()``, the appends made so far. An fdatasync of a file
covers every byte written before the call, not those written while it runs, so when a commit
returns, the appends before its start are durable, and no more.

Commits may overlap: a new one may start while one is in flight, so a miss that arrives during a
commit waits for a commit of its own that already runs, not for the end of the current one
first. The marks of the commits in flight are kept here, in start order. When a commit returns,
the core is told its own start mark, whatever order they return in: the core keeps the highest
it was told, so the journal is durable up to the highest start mark of any *returned* commit.
Never a later commit's mark: that commit's fdatasync has not returned, and the appends between
the two marks may still be lost (the deliberate bug ``commit_covers_appends_after_its_start``).

How many commits overlap is bounded (``MAX_IN_FLIGHT``); the journal (journal/journal.py) settles
the overlapping fdatasyncs together, since Linux reports a writeback error to only one of them.
"""

from __future__ import annotations

from foresync.errors import invariant
from foresync.faults import NO_FAULTS, Faults

MAX_IN_FLIGHT = 2  # one in flight, and one more that starts beside it for the appends after


class CommitMarks:
    """The start marks of the journal commits in flight (the daemon's and the simulator's)."""

    def __init__(self, faults: Faults = NO_FAULTS) -> None:
        self._faults = faults
        self._marks: list[int] = []  # start order, so increasing
        self.overlapped = 0  # commits started while another was in flight (statistics)

    def __len__(self) -> int:
        return len(self._marks)

    def __bool__(self) -> bool:
        return bool(self._marks)

    def latest(self) -> int | None:
        return self._marks[-1] if self._marks else None

    def marks(self) -> list[int]:
        return list(self._marks)

    def may_start(self, target: int, limit: int = MAX_IN_FLIGHT) -> bool:
        """A commit with mark ``target`` would cover appends none in flight covers, and there is
        room for it."""
        return len(self._marks) < limit and (not self._marks or target > self._marks[-1])

    def start(self, target: int) -> None:
        invariant(not self._marks or target > self._marks[-1],
                  f"commit mark {target} not past the one in flight {self._marks[-1:]}")
        if self._marks:
            self.overlapped += 1
        self._marks.append(target)

    def returned(self, target: int) -> int:
        """The commit started with ``target`` returned: the mark to tell the core."""
        self._marks.remove(target)
        if self._faults.commit_covers_appends_after_its_start and self._marks:
            return max(target, self._marks[-1])  # deliberately wrong: see faults.py
        return target

    def failed(self, target: int) -> None:
        """The commit started with ``target`` failed: it makes nothing durable."""
        self._marks.remove(target)

    def clear(self) -> None:
        self._marks.clear()
