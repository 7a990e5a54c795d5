"""Unit tests for ``foresync.record.record`` and ``foresync.record.predict``.

The record copy decides what the primary may evict (claims 10-17). The tests pin the two
eviction policies to their definitions: ``lru`` takes the least-recently-added clean extents one
at a time, ``generations`` takes whole generations whose every extent is clean, oldest first, and
neither ever takes a dirty extent (latest write seq above the clean watermark).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import InvariantViolation, LocalProtocolError
from foresync.record.free_slots import FreeSlots, free_marks
from foresync.record.predict import extents_of, predict
from foresync.record.record import UNSENT, Eviction, RecordCopy, RecordStatistics

# -- membership ------------------------------------------------------------------------------------


def test_capacity_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        RecordCopy(0, Eviction.LRU)


def test_add_remove_covers() -> None:
    record = RecordCopy(8, Eviction.LRU)
    record.add([3, 1, 2])
    assert len(record) == 3
    assert 1 in record and 4 not in record
    assert record.extents() == [1, 2, 3]
    assert record.covers([1, 3])
    assert record.covers([])
    assert not record.covers([1, 4])
    record.add([3, 4])  # 3 is already there: added once
    assert len(record) == 4
    record.remove([1, 9])  # 9 was never there: ignored
    assert record.extents() == [2, 3, 4]
    assert not record.covers([1])


def test_add_past_capacity_is_an_invariant_violation() -> None:
    record = RecordCopy(2, Eviction.LRU)
    record.add([0, 1])
    with pytest.raises(InvariantViolation):
        record.add([2])


def test_default_generation_size_is_an_eighth_of_capacity() -> None:
    assert RecordCopy(64, Eviction.GENERATIONS).generation_size == 8
    assert RecordCopy(3, Eviction.GENERATIONS).generation_size == 1


def test_generations_group_additions_in_order() -> None:
    record = RecordCopy(16, Eviction.GENERATIONS, generation_size=3)
    record.add([10, 11, 12, 13])
    record.add([14, 15, 16])
    assert record.statistics().generations == 3
    # Evicting needs shows the grouping: the oldest generation is 10, 11, 12.
    record.reserved = 16 - 7  # no free slot left
    assert record.choose_evictions(1, clean_through=0) == [10, 11, 12]
    assert record.choose_evictions(4, clean_through=0) == [10, 11, 12, 13, 14, 15]


def test_emptied_generation_disappears_and_a_new_one_starts() -> None:
    record = RecordCopy(16, Eviction.GENERATIONS, generation_size=2)
    record.add([1, 2])
    record.remove([1, 2])
    assert record.statistics().generations == 0
    record.add([3])
    record.add([4])
    record.add([5])
    assert record.statistics().generations == 2
    record.reserved = 16 - 3
    assert record.choose_evictions(1, clean_through=0) == [3, 4]


# -- the clean watermark -----------------------------------------------------------------------------


def test_note_write_and_is_clean() -> None:
    record = RecordCopy(4, Eviction.LRU)
    assert record.last_seq(7) == 0
    assert record.is_clean(7, 0)
    record.note_write([7, 8], 5)
    record.note_write([8], 9)
    assert record.last_seq(7) == 5 and record.last_seq(8) == 9
    assert not record.is_clean(7, 4)
    assert record.is_clean(7, 5)
    assert not record.is_clean(8, 8)
    assert record.is_clean(8, 9)


def test_a_host_write_does_not_clear_a_pending_resync() -> None:
    """Regression (simulator seed 130307): a host write to an extent still waiting for its
    resync overwrote the UNSENT mark with its own seq, so once that write was durable the extent
    looked clean and was evicted, though the secondary still lacked the rest of it."""
    record = RecordCopy(4, Eviction.LRU)
    record.add([3, 4])
    record.note_write([3, 4], UNSENT)
    record.note_write([3], 7)  # a host write while the resync of 3 is still queued
    assert not record.is_clean(3, 100)
    assert record.choose_evictions(4, 100) is None  # neither may go
    record.resynced(3, 9)  # its resync went out as seq 9
    assert not record.is_clean(3, 8) and record.is_clean(3, 9)
    record.note_write([3], 12)  # later writes count as before
    assert record.last_seq(3) == 12
    assert record.dirty_extents(11) == {3, 4}
    record.clear_marks(20)  # a new session: marks become "dirty until 20"
    assert record.last_seq(4) == 20 and record.last_seq(3) == 12


def test_forget_clean_keeps_members_and_dirty_extents() -> None:
    record = RecordCopy(4, Eviction.LRU)
    record.add([1])
    record.note_write([1, 2, 3], 5)
    record.note_write([3], 10)
    record.forget_clean(6)
    assert record.last_seq(1) == 5  # a member keeps its seq
    assert record.last_seq(2) == 0  # clean and not a member: forgotten
    assert record.last_seq(3) == 10  # dirty: kept


# -- choosing evictions ------------------------------------------------------------------------------


def _full_lru(order: list[int]) -> RecordCopy:
    record = RecordCopy(len(order), Eviction.LRU)
    for extent in order:
        record.add([extent])
    return record


def test_no_eviction_needed_when_free() -> None:
    record = RecordCopy(4, Eviction.LRU)
    record.add([1])
    assert record.choose_evictions(3, clean_through=0) == []
    assert record.choose_evictions(0, clean_through=0) == []


def test_lru_takes_least_recently_added_first() -> None:
    record = _full_lru([5, 2, 9, 1])
    assert record.choose_evictions(1, clean_through=0) == [5]
    assert record.choose_evictions(3, clean_through=0) == [5, 2, 9]


def test_lru_skips_dirty_extents() -> None:
    record = _full_lru([5, 2, 9, 1])
    record.note_write([5], 7)
    record.note_write([9], 3)
    assert record.choose_evictions(2, clean_through=3) == [2, 9]
    assert record.choose_evictions(2, clean_through=7) == [5, 2]


def test_lru_returns_none_when_not_enough_is_clean() -> None:
    record = _full_lru([1, 2, 3])
    record.note_write([1, 2], 4)
    assert record.choose_evictions(1, clean_through=3) == [3]
    assert record.choose_evictions(2, clean_through=3) is None
    record.note_write([3], 4)
    assert record.choose_evictions(1, clean_through=3) is None
    assert record.choose_evictions(3, clean_through=4) == [1, 2, 3]


def test_lru_order_is_order_of_adding_after_a_remove_and_readd() -> None:
    record = _full_lru([1, 2, 3])
    record.remove([1])
    record.add([1])
    assert record.choose_evictions(1, clean_through=0) == [2]


def test_eviction_shortfall_counts_reserved_slots() -> None:
    record = RecordCopy(4, Eviction.LRU)
    record.add([1, 2])
    record.reserved = 1
    assert record.free() == 1
    assert record.choose_evictions(1, clean_through=0) == []
    assert record.choose_evictions(2, clean_through=0) == [1]
    assert record.choose_evictions(3, clean_through=0) == [1, 2]
    assert record.choose_evictions(4, clean_through=0) is None  # reserved slots are not evictable


def test_generations_evicts_whole_oldest_clean_generation() -> None:
    record = RecordCopy(6, Eviction.GENERATIONS, generation_size=2)
    record.add([1, 2, 3, 4, 5, 6])
    chosen = record.choose_evictions(1, clean_through=0)
    assert chosen == [1, 2]


def test_generations_skips_a_generation_with_one_dirty_extent() -> None:
    record = RecordCopy(6, Eviction.GENERATIONS, generation_size=2)
    record.add([1, 2, 3, 4, 5, 6])
    record.note_write([2], 5)
    assert record.choose_evictions(1, clean_through=4) == [3, 4]
    assert record.choose_evictions(3, clean_through=4) == [3, 4, 5, 6]
    assert record.choose_evictions(5, clean_through=4) is None
    assert record.choose_evictions(5, clean_through=5) == [1, 2, 3, 4, 5, 6]


def test_generations_none_when_every_generation_is_dirty() -> None:
    record = RecordCopy(4, Eviction.GENERATIONS, generation_size=2)
    record.add([1, 2, 3, 4])
    record.note_write([1, 4], 2)
    assert record.choose_evictions(1, clean_through=1) is None


def test_keep_protects_extents_from_eviction() -> None:
    """A miss must not evict an extent it writes itself (the secondary would have to re-add it
    beyond the budget). ``keep`` names the extents that may not be chosen."""
    record = _full_lru([1, 2, 3])
    assert record.choose_evictions(1, clean_through=0, keep=range(1, 2)) == [2]
    assert record.choose_evictions(3, clean_through=0, keep={2}) is None
    gens = RecordCopy(4, Eviction.GENERATIONS, generation_size=2)
    gens.add([1, 2, 3, 4])
    assert gens.choose_evictions(1, clean_through=0, keep={2}) == [3, 4]


def test_evict_removes_and_counts() -> None:
    record = _full_lru([1, 2, 3])
    chosen = record.choose_evictions(2, clean_through=0)
    assert chosen is not None
    record.evict(chosen)
    assert record.extents() == [3]
    assert record.statistics() == RecordStatistics(extents=1, capacity=3, reserved=0,
                                                   generations=1, evicted_total=2)


def test_choose_evictions_does_not_remove() -> None:
    record = _full_lru([1, 2])
    record.choose_evictions(2, clean_through=0)
    assert record.extents() == [1, 2]


# -- free and reserved -------------------------------------------------------------------------------


def test_free_accounts_for_members_and_reservations() -> None:
    record = RecordCopy(10, Eviction.LRU)
    assert record.free() == 10
    record.add([1, 2, 3])
    record.reserved = 4
    assert record.free() == 3
    assert record.statistics().reserved == 4
    record.remove([1])
    assert record.free() == 4


# -- replace -----------------------------------------------------------------------------------------


def test_replace_adopts_the_secondarys_record_and_drops_reservations() -> None:
    record = RecordCopy(8, Eviction.LRU)
    record.add([1, 2])
    record.reserved = 3
    record.note_write([9], 4)
    record.replace([9, 5, 7])
    assert record.extents() == [5, 7, 9]
    assert record.reserved == 0
    assert record.last_seq(9) == 4  # write seqs survive: they still say what is dirty


def test_replace_starts_a_new_generation_after_the_adopted_ones() -> None:
    record = RecordCopy(8, Eviction.GENERATIONS, generation_size=4)
    record.add([1])
    record.replace([5, 6])
    record.add([7])
    record.reserved = 8 - 3
    # The adopted extents are older than 7 and sit in a generation of their own.
    assert record.choose_evictions(1, clean_through=0) == [5, 6]
    assert record.choose_evictions(3, clean_through=0) == [5, 6, 7]


def test_replace_with_lru_puts_adopted_extents_first() -> None:
    record = RecordCopy(4, Eviction.LRU)
    record.replace([3, 1])
    record.add([0])
    record.reserved = 1
    assert record.choose_evictions(1, clean_through=0) == [1]


def test_replace_past_capacity_is_an_invariant_violation() -> None:
    record = RecordCopy(2, Eviction.LRU)
    with pytest.raises(InvariantViolation):
        record.replace([1, 2, 3])


# -- predict and extents_of --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length", "extent_size", "expected"),
    [
        (0, 0, 4096, range(0)),
        (12345, 0, 4096, range(0)),
        (0, -5, 4096, range(0)),
        (0, 1, 4096, range(0, 1)),
        (0, 4096, 4096, range(0, 1)),
        (0, 4097, 4096, range(0, 2)),
        (4095, 1, 4096, range(0, 1)),
        (4095, 2, 4096, range(0, 2)),
        (4096, 4096, 4096, range(1, 2)),
        (100, 10000, 4096, range(0, 3)),
        (8191, 8194, 4096, range(1, 5)),
        (7, 3, 3, range(2, 4)),
        (5, 1, 1, range(5, 6)),
    ],
)
def test_extents_of(offset: int, length: int, extent_size: int, expected: range) -> None:
    assert extents_of(offset, length, extent_size) == expected


@given(offset=st.integers(0, 10**6), length=st.integers(1, 10**5), extent_size=st.integers(1, 5000))
@settings(max_examples=200, deadline=None)
def test_extents_of_matches_a_byte_by_byte_model(offset: int, length: int, extent_size: int) -> None:
    touched = extents_of(offset, length, extent_size)
    first, last = offset // extent_size, (offset + length - 1) // extent_size
    assert list(touched) == list(range(first, last + 1))
    # The first byte lies in the first extent and the last byte in the last one.
    assert touched[0] * extent_size <= offset < (touched[0] + 1) * extent_size
    end = offset + length - 1
    assert touched[-1] * extent_size <= end < (touched[-1] + 1) * extent_size


@pytest.mark.parametrize(
    ("touched", "lookahead", "extent_count", "expected"),
    [
        (range(0, 1), 3, 100, range(1, 4)),
        (range(5, 8), 2, 100, range(8, 10)),
        (range(5, 8), 0, 100, range(8, 8)),
        (range(97, 98), 5, 100, range(98, 100)),  # clamped at the volume's end
        (range(99, 100), 5, 100, range(100, 100)),  # the last extent: nothing to predict
    ],
)
def test_predict(touched: range, lookahead: int, extent_count: int, expected: range) -> None:
    predicted = predict(touched, lookahead, extent_count)
    assert list(predicted) == list(expected)
    assert all(e < extent_count for e in predicted)
    assert not set(predicted) & set(touched)


def test_free_marks() -> None:
    assert free_marks(2) == (0, 0) and free_marks(3) == (0, 0)  # too small to keep any free
    assert free_marks(4) == (1, 2)
    assert free_marks(64) == (4, 8)
    assert free_marks(1024) == (64, 128)


@pytest.mark.parametrize("eviction", list(Eviction))
@given(st.lists(st.integers(0, 30), min_size=1, max_size=60), st.integers(0, 60),
       st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_choose_ahead_takes_only_clean_members(eviction: Eviction, writes: list[int],
                                              clean_through: int, wanted: int) -> None:
    record = RecordCopy(16, eviction)
    for seq, extent in enumerate(writes, start=1):
        if extent not in record and record.free() == 0:
            continue
        record.add([extent])
        record.note_write([extent], seq)
    chosen = record.choose_ahead(wanted, clean_through)
    assert len(set(chosen)) == len(chosen)
    assert all(e in record and record.is_clean(e, clean_through) for e in chosen)
    clean = sum(1 for e in record.extents() if record.is_clean(e, clean_through))
    if eviction is not Eviction.GENERATIONS:  # whole generations only: may take fewer or more
        assert len(chosen) == min(wanted, clean)


def test_free_slots_are_kept_only_while_misses_wait_for_room() -> None:
    slots = FreeSlots(64)
    assert not slots.active and slots.spare() == 0 and slots.wanted(0) == 0
    slots.room_wait()
    assert slots.active and slots.spare() == 4
    assert slots.wanted(3) == 5 and slots.wanted(4) == 0
    for _ in range(63):
        slots.miss_sent()
    assert slots.active
    slots.room_wait()  # another wait: a full window again
    for _ in range(64):
        slots.miss_sent()
    assert not slots.active and slots.wanted(0) == 0
    assert FreeSlots(64, always=True).wanted(0) == 8
    assert not FreeSlots(3, always=True).active


def test_predictions_never_take_the_spare_slots() -> None:
    record = RecordCopy(8, Eviction.LRU)
    record.add(range(5))
    record.note_write(range(5), 1)  # dirty: nothing can be evicted at clean_through 0
    # 3 free: one new extent and 2 predictions fit, but would leave no spare slot.
    assert record.room_for_miss(range(10, 11), 2, 0) == (3, [])  # no spare: as before
    assert record.room_for_miss(range(10, 11), 2, 0, spare=1) == (1, [])
    assert record.room_for_miss(range(10, 11), 1, 0, spare=1) == (2, [])
    # Clean members may be evicted to keep the spare slot free after the predictions.
    assert record.room_for_miss(range(10, 11), 4, 1, spare=1) == (5, [0, 1, 2])
