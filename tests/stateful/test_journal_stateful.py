"""Hypothesis stateful test: the record journal file against a plain set + dict model.

Rules append ADD/REMOVE/RANGE/RANGE_DONE entries, checkpoint, reopen, and crash in the middle of
an append (the file cut at a random byte of the newest entry). After a reopen the replayed state
must equal the model: everything appended before the torn entry, nothing of the torn entry.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from foresync.journal import format as fmt
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal

VOLUME = b"0123456789abcdef"
EXTENTS = st.lists(st.integers(0, 40), max_size=5)
SEQS = st.integers(1, 12)


class JournalMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="journal-stateful-"))
        self.path = self.dir / "journal"
        self.journal = RecordJournal.create(str(self.path), VOLUME)
        self.extents: set[int] = set()
        self.ranges: dict[int, tuple[int, int]] = {}
        self.tears = 0

    def teardown(self) -> None:
        if hasattr(self, "journal"):
            self.journal.close()
            shutil.rmtree(self.dir)

    def _append(self, entry: bytes) -> None:
        self.journal.append(entry)

    @rule(extents=EXTENTS)
    def add(self, extents: list[int]) -> None:
        self._append(fmt.encode_add(extents))
        self.extents.update(extents)

    @rule(extents=EXTENTS)
    def remove(self, extents: list[int]) -> None:
        self._append(fmt.encode_remove(extents))
        self.extents.difference_update(extents)

    @rule(seq=SEQS, offset=st.integers(0, 1 << 40), length=st.integers(0, 1 << 30))
    def add_range(self, seq: int, offset: int, length: int) -> None:
        self._append(fmt.encode_range(seq, offset, length))
        self.ranges[seq] = (offset, length)

    @rule(seq=SEQS)
    def range_done(self, seq: int) -> None:
        self._append(fmt.encode_range_done(seq))
        self.ranges.pop(seq, None)

    @rule()
    def sync(self) -> None:
        assert self.journal.sync() == self.journal.appended
        assert self.journal.synced == self.journal.appended

    @rule()
    def checkpoint(self) -> None:
        self.journal.checkpoint(RecordState(set(self.extents), dict(self.ranges)))
        assert self.journal.entries_since_checkpoint == 1
        assert self.path.read_bytes() == (fmt.encode_header(VOLUME) + fmt.encode_checkpoint(
            RecordState(self.extents, self.ranges)))

    def _reopen(self) -> RecordJournal:
        self.journal.close()
        self.journal = RecordJournal.open(str(self.path))
        return self.journal

    @rule()
    def reopen(self) -> None:
        journal = self._reopen()
        assert journal.replayed.torn_reason is None

    @rule(extents=st.lists(st.integers(0, 40), min_size=1, max_size=5), data=st.data())
    def crash_mid_append(self, extents: list[int], data: st.DataObject) -> None:
        self.journal.sync()
        good = self.path.stat().st_size
        entry = fmt.encode_add(extents)
        self._append(entry)
        cut = data.draw(st.integers(good + 1, good + len(entry) - 1), label="cut")
        with open(self.path, "r+b") as handle:
            handle.truncate(cut)
        torn = self.path.read_bytes()[good:]
        journal = self._reopen()
        assert journal.replayed.valid_end == good
        assert journal.replayed.torn_reason is not None
        assert self.path.stat().st_size == good
        asides = sorted(self.dir.glob(f"journal.torn-{good}*"))
        assert torn in [p.read_bytes() for p in asides]
        self.tears += 1
        assert len(list(self.dir.glob("journal.torn-*"))) == self.tears

    @invariant()
    def file_replays_to_the_model(self) -> None:
        replayed = fmt.replay(self.path.read_bytes())
        assert replayed.torn_reason is None
        assert replayed.state == RecordState(self.extents, self.ranges)
        assert replayed.entries == self.journal.entries_since_checkpoint


JournalMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestJournalStateful = JournalMachine.TestCase
