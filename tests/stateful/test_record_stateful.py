"""Hypothesis stateful test: ``RecordCopy`` against a plain model.

The model is a list of (extent, generation) in order of adding, the number of the generation new
extents join, and a dict of each extent's latest write seq. Eviction is recomputed from the
model's definitions (claims 15-16) and compared with what the record chooses. For ``s3fifo``,
whose order depends on its queues, the model checks what any policy must do: exactly the
shortfall, every one a clean member outside ``keep``, and None only when there are too few.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from foresync.record.record import Eviction, RecordCopy

UNIVERSE = st.integers(0, 24)
# Policies whose choice the model checks only for validity (clean, not kept, present, enough):
# their order is their own (s3fifo; adaptive and streams follow an s3fifo or lru).
FREE_CHOICE = (Eviction.S3FIFO, Eviction.ADAPTIVE, Eviction.STREAMS)
EXTENT_BYTES = 4  # the record's extent size here: ``stream_write`` gives byte offsets (streams.py)


class RecordMachine(RuleBasedStateMachine):
    record: RecordCopy

    @initialize(capacity=st.integers(1, 12), eviction=st.sampled_from(Eviction),
                generation_size=st.one_of(st.none(), st.integers(1, 5)))
    def start(self, capacity: int, eviction: Eviction, generation_size: int | None) -> None:
        self.record = RecordCopy(capacity, eviction, generation_size, extent_size=EXTENT_BYTES)
        self.stream_end = 0
        self.capacity = capacity
        self.eviction = eviction
        self.generation_size = generation_size or max(1, capacity // 8)
        self.order: list[tuple[int, int]] = []  # (extent, generation) in order of adding
        self.current = 0
        self.last_seq: dict[int, int] = {}
        self.seq = 0
        self.clean_through = 0
        self.reserved = 0

    # -- the model ---------------------------------------------------------------------------------

    def _members(self) -> set[int]:
        return {extent for extent, _ in self.order}

    def _model_add(self, extent: int) -> None:
        if extent in self._members():
            return
        in_current = sum(1 for _, g in self.order if g == self.current)
        if in_current >= self.generation_size:
            self.current += 1
        self.order.append((extent, self.current))

    def _clean(self, extent: int) -> bool:
        return self.last_seq.get(extent, 0) <= self.clean_through

    def _model_free(self) -> int:
        return self.capacity - len(self.order) - self.reserved

    def _model_choice(self, needed: int, keep: frozenset[int]) -> list[int] | None:
        shortfall = needed - self._model_free()
        if shortfall <= 0:
            return []
        if self.eviction in FREE_CHOICE:
            usable = [e for e, _ in self.order if self._clean(e) and e not in keep]
            return None if len(usable) < shortfall else usable  # the candidates, in any order
        if self.eviction is Eviction.LRU:
            clean = [e for e, _ in self.order if self._clean(e)]
            return clean[:shortfall] if len(clean) >= shortfall else None
        chosen: list[int] = []
        for generation in sorted({g for _, g in self.order}):
            group = [e for e, g in self.order if g == generation]
            if all(self._clean(e) for e in group):
                chosen.extend(sorted(group))
                if len(chosen) >= shortfall:
                    return chosen
        return None

    # -- rules -------------------------------------------------------------------------------------

    @rule(batch=st.lists(UNIVERSE, max_size=6))
    def add_batch(self, batch: list[int]) -> None:
        # Adds respect free(), as the primary's reservations guarantee.
        room = self.record.free()
        fitting: list[int] = []
        for extent in batch:
            if extent in self._members() or extent in fitting:
                continue
            if len(fitting) < room:
                fitting.append(extent)
        self.record.add(fitting)
        for extent in fitting:
            self._model_add(extent)

    @rule(extents=st.lists(UNIVERSE, max_size=4))
    def note_write(self, extents: list[int]) -> None:
        self.seq += 1
        self.record.note_write(extents, self.seq)
        for extent in extents:
            self.last_seq[extent] = self.seq

    @rule(data=st.data())
    def stream_write(self, data: st.DataObject) -> None:
        # A host write with its byte range, often continuing the last one (a sequential stream:
        # ``streams`` then demotes the extents it left behind).
        top = 25 * EXTENT_BYTES
        start = self.stream_end if self.stream_end < top and data.draw(st.booleans()) else \
            data.draw(st.integers(0, top - 1))
        end = min(top, start + data.draw(st.integers(1, 3 * EXTENT_BYTES)))
        extents = range(start // EXTENT_BYTES, (end - 1) // EXTENT_BYTES + 1)
        self.seq += 1
        self.record.note_write(extents, self.seq, start, end - start)
        for extent in extents:
            self.last_seq[extent] = self.seq
        self.stream_end = end

    @rule(data=st.data())
    def note_write_to_members(self, data: st.DataObject) -> None:
        members = sorted(self._members())
        if members:
            self.note_write(data.draw(st.lists(st.sampled_from(members), min_size=1, max_size=3)))

    @rule(data=st.data())
    def advance_clean_through(self, data: st.DataObject) -> None:
        # Stopping just short of the latest write is the interesting boundary.
        near = [s for s in (self.seq - 1, self.seq) if s >= self.clean_through]
        self.clean_through = data.draw(st.sampled_from(near) | st.integers(self.clean_through, self.seq))

    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        amount = data.draw(st.integers(-self.reserved, max(0, self.record.free())))
        self.record.reserved += amount
        self.reserved += amount

    @rule(extents=st.lists(UNIVERSE, max_size=4))
    def remove(self, extents: list[int]) -> None:
        self.record.remove(extents)
        self.order = [(e, g) for e, g in self.order if e not in extents]

    @rule(needed=st.integers(0, 12), keep=st.frozensets(UNIVERSE, max_size=3))
    def evict(self, needed: int, keep: frozenset[int]) -> None:
        if self.eviction not in FREE_CHOICE:
            keep = frozenset()  # the claimed policies' models ignore keep
        chosen = self.record.choose_evictions(needed, self.clean_through, keep)
        expected = self._model_choice(needed, keep)
        if self.eviction in FREE_CHOICE and chosen is not None and expected is not None:
            assert len(chosen) == needed - self._model_free() or (chosen == [] == expected)
            assert set(chosen) <= set(expected), "chose a dirty, kept or absent extent"
        else:
            assert chosen == expected
        if chosen is None:
            return
        assert all(self._clean(e) for e in chosen), "a dirty extent was chosen"
        assert not keep & set(chosen), "a kept extent was chosen"
        assert len(set(chosen)) == len(chosen)
        if self.eviction is Eviction.GENERATIONS:
            # Whole generations only: every member of a touched generation goes.
            touched = {g for e, g in self.order if e in chosen}
            assert set(chosen) == {e for e, g in self.order if g in touched}
        before = self.record.statistics().evicted_total
        self.record.evict(chosen)
        self.order = [(e, g) for e, g in self.order if e not in chosen]
        assert self.record.statistics().evicted_total == before + len(chosen)
        assert self.record.free() >= needed

    @precondition(lambda self: self.reserved == 0)
    @rule(extents=st.lists(UNIVERSE, max_size=12, unique=True))
    def replace(self, extents: list[int]) -> None:
        extents = extents[: self.capacity]
        self.record.replace(extents)
        self.order = []
        # Adopted extents start a fresh generation (grouped by size as usual) and the next add
        # starts another one.
        self.current += 1
        for extent in sorted(extents):
            self._model_add(extent)
        self.current += 1

    @rule()
    def forget_clean(self) -> None:
        self.record.forget_clean(self.clean_through)
        members = self._members()
        self.last_seq = {e: s for e, s in self.last_seq.items() if s > self.clean_through or e in members}

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        assert self.record.extents() == sorted(self._members())
        assert len(self.record) <= self.capacity
        assert self.record.free() == self._model_free() >= 0
        assert self.record.statistics().generations == len({g for _, g in self.order})
        for extent in range(25):
            assert self.record.last_seq(extent) == self.last_seq.get(extent, 0)
            assert (extent in self.record) == (extent in self._members())


RecordMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRecordStateful = RecordMachine.TestCase
