"""One site's metadata as the simulator keeps it: the real journal and undo log, and site.json.

The record journal and the undo log are the daemon's own ``RecordJournal`` and ``UndoLog`` over
the site's ``SimFiles`` (torn and lost unsynced writes at a crash, ENOSPC while full). Beside them,
the two marks of ``site.json`` the undo log depends on: ``consistent`` (False from the first
resync write of a pass until it finishes) and ``stale`` (extents a rollback restored, older than
the primary's until a pass copies them). ``widened`` (metadata damage) stays in the world, which
checks it everywhere.

What a restart does is what the daemon does: ``open_record`` is ``transitions.open_record`` (the
real ``assess``; ``RecordJournal.open`` cuts a torn tail; doubt starts a new journal), and
``roll_back_if_needed`` is ``SecondarySite._roll_back_if_needed`` with the real ``roll_back``.
The undo check lives here too: every extent the log saved and a write then changed must come
back from a rollback with exactly the content it had when first saved.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from foresync.faults import Faults
from foresync.journal import format as jfmt
from foresync.journal.durable import move_aside
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import RollBack, UndoLog, roll_back
from foresync.testing.sim.disk import SimDisk
from foresync.testing.sim.files import SimFiles

JOURNAL = "journal"  # the paths in a site's metadata directory
UNDO = "undo.log"


class SimMeta:
    def __init__(self, volume_id: bytes, extent_size: int, size: int, faults: Faults) -> None:
        self.volume_id = volume_id
        self.extent_size = extent_size
        self.size = size
        self.faults = faults
        self.files = SimFiles()
        RecordJournal.create(JOURNAL, volume_id, files=self.files).close()
        self.journal: RecordJournal | None = None  # open while the site runs as a secondary
        self.undo: UndoLog | None = None
        self.consistent = True
        self.stale: set[int] = set()
        self.undo_saved: dict[int, bytes] = {}  # extent -> its content when first saved
        self.undo_overwritten: set[int] = set()  # saved extents a write has changed since
        self.torn_tails = 0  # torn journal tails a restart cut (and kept aside)
        self.rollbacks = 0
        self._assessed: tuple[int | None, jfmt.Assessment] | None = None

    # -- the running secondary's files ----------------------------------------------------------

    def start(self, journal: RecordJournal) -> None:
        self.journal = journal
        self.undo = UndoLog(UNDO, self.files)

    def stop(self, forget_undo: bool = True) -> None:
        """The site stops being a running secondary (a crash drops its descriptors instead)."""
        for log in (self.journal, self.undo):
            if log is not None:
                log.close()
        self.journal = self.undo = None
        if forget_undo:
            self.forget_undo()

    def forget_undo(self) -> None:
        self.undo_saved, self.undo_overwritten = {}, set()

    def crash(self, rng: random.Random) -> None:
        self.journal = self.undo = None  # a crash closes nothing: it drops the descriptors
        self.files.crash(rng)

    def fresh(self) -> None:
        """A primary becoming a secondary: a new, empty journal, and a consistent copy."""
        RecordJournal.create(JOURNAL, self.volume_id, files=self.files).close()
        if self.files.exists(UNDO):
            self.files.unlink(UNDO)
        self.consistent, self.stale = True, set()
        self.forget_undo()

    def durable_record(self) -> RecordState | None:
        """The record a restart would replay from the journal's durable bytes, or None: it
        would trust no record (widen). The real ``assess``, cached until those bytes change."""
        file = self.files.durable(JOURNAL)
        version = None if file is None else file.version
        if self._assessed is None or self._assessed[0] != version:
            data = None if file is None else file.durable
            self._assessed = (version, jfmt.assess(data, self.volume_id, self.faults))
        assessed = self._assessed[1]
        return None if assessed.doubt is not None else assessed.state

    # -- a restart ------------------------------------------------------------------------------

    def open_record(self) -> tuple[RecordJournal, str | None]:
        """``transitions.open_record``: the journal to run with, and the doubt that widens the
        site (the damaged file is then moved aside and a new journal started)."""
        files = self.files
        data = files.read(JOURNAL) if files.exists(JOURNAL) else None
        assessed = jfmt.assess(data, self.volume_id, self.faults)
        if assessed.doubt is None and data is not None:
            journal = RecordJournal.open(JOURNAL, files, self.faults)
            self.torn_tails += journal.replayed.torn_reason is not None
            return journal, None
        if assessed.doubt is not None:
            self.consistent = False
            if data is not None:
                move_aside(JOURNAL, "damaged", files)
        return RecordJournal.create(JOURNAL, self.volume_id, files=files, faults=self.faults), assessed.doubt

    def roll_back_if_needed(self, disk: SimDisk, widened: bool) -> tuple[RollBack | None, list[int]]:
        """Roll an unfinished pass back into ``disk`` (None: nothing to roll back), and the saved
        extents a write changed that did not come back exactly (must be none). A damaged log
        (``RollBack.damage``) is moved aside: the caller widens."""
        assert self.undo is not None
        if not self.files.exists(UNDO):
            return None, []
        if self.consistent:
            # A leftover: of a pass that did finish, or saves a crash cut off before the pass's
            # first resync write (SaveUndo goes out at once, ResyncStarted waits in order). The
            # daemon deletes the log, so its bookkeeping goes too: the next pass saves again, from
            # the image as it is now, and a write the crash lost since (it was not durable) is not
            # in what the next rollback must bring back.
            self.undo.discard()
            self.forget_undo()
            return None, []
        result = roll_back(UNDO, disk.write, disk.flush, self.extent_size, self.size, self.files)
        self.rollbacks += 1
        wrong: list[int] = []
        if result.damage is not None:
            self.undo.close()
            move_aside(UNDO, "damaged", self.files)
        else:
            self.consistent = not widened
            self.stale |= result.restored
            self.undo.discard()
            es = self.extent_size
            wrong = [extent for extent in sorted(self.undo_overwritten)
                     if disk.durable[extent * es : (extent + 1) * es] != self.undo_saved[extent]]
        self.forget_undo()
        return result, wrong

    def welcome(self, widened: bool) -> tuple[bool, tuple[int, ...], bool]:
        """``SecondarySite._prepare_welcome``: inconsistent (a full compare), the stale extents,
        and whether to keep undo (a consistent copy, or an unfinished pass's log is open)."""
        inconsistent = widened or not self.consistent
        return inconsistent, tuple(sorted(self.stale)), not inconsistent or self.files.exists(UNDO)

    # -- actions --------------------------------------------------------------------------------

    def save_undo(self, extent: int, old: bytes) -> None:
        assert self.undo is not None
        self.undo.append(extent, old)
        self.undo_saved.setdefault(extent, old)

    def note_overwrite(self, extents: Iterable[int]) -> None:
        if self.undo_saved:
            self.undo_overwritten.update(e for e in extents if e in self.undo_saved)

    def resync_finished(self) -> None:
        assert self.undo is not None
        self.consistent, self.stale = True, set()
        self.undo.discard()
        self.forget_undo()
