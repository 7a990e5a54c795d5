"""The adaptive eviction policy (record/adaptive.py, issue 14)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.record.adaptive import Adaptive
from foresync.record.record import Eviction, RecordCopy


def _follow(policy: Adaptive, lru: bool) -> None:
    """Make one expert's recent regret rate clearly the lower."""
    policy.evictions = [100.0, 100.0]
    policy.regrets = [50.0, 1.0] if lru else [1.0, 50.0]


def test_an_extent_added_back_after_its_eviction_is_a_regret_of_the_expert_that_chose_it() -> None:
    policy = Adaptive(4)
    for extent in range(4):
        policy.added(extent)
    assert not policy.following_lru()  # no evidence yet: s3fifo
    chosen = policy.choose(1, lambda e: True, ())
    assert chosen is not None
    policy.evicted(chosen[0])
    assert policy.evictions[0] == 1.0 and policy.regrets == [0.0, 0.0]
    policy.added(chosen[0])  # back: s3fifo let it go too early
    assert policy.regrets == [1.0, 0.0]
    policy.added(99)  # never evicted: nobody's regret
    assert policy.regrets == [1.0, 0.0]


def test_it_follows_the_expert_with_fewer_regrets_per_eviction_and_explores_the_other() -> None:
    policy = Adaptive(8)
    _follow(policy, lru=True)
    assert policy.following_lru()
    _follow(policy, lru=False)
    assert not policy.following_lru()
    policy.evictions = [1000.0, 10.0]  # lru hardly chosen lately: the next choice is lru's
    policy.regrets = [10.0, 5.0]
    assert policy.following_lru()
    for _ in range(20000):  # regrets and evictions fade with writes
        policy.written((1,), 1)
    assert max(policy.regrets + policy.evictions) < 50


def test_whichever_expert_it_follows_it_chooses_only_clean_extents_outside_keep() -> None:
    for follow_lru in (False, True):
        policy = Adaptive(8)
        for extent in range(8):
            policy.added(extent)
        _follow(policy, follow_lru)
        clean = {1, 3, 5, 6}.__contains__
        chosen = policy.choose(2, clean, keep={1})
        assert chosen is not None and len(chosen) == 2
        assert all(clean(e) and e != 1 for e in chosen)
        assert policy.choose(4, clean, keep={1}) is None  # only 3 clean outside keep
        assert sorted(policy.choose(4, clean, keep={1}, partial=True) or []) == [3, 5, 6]
    assert policy.chose[1] > 0


def test_lru_following_evicts_least_recently_added() -> None:
    policy = Adaptive(4)
    for extent in (7, 3, 9, 1):
        policy.added(extent)
    _follow(policy, lru=True)
    assert policy.choose(2, lambda e: True, ()) == [7, 3]
    policy.evicted(7)
    policy.added(7)
    assert policy.choose(2, lambda e: True, ()) == [3, 9]


def take_write(record: RecordCopy, touched: range, durable: int, capacity: int) -> None:
    """A write the record does not cover, as the primary takes it (shared with test_streams.py):
    room made by evicting only clean extents and none it touches, then its extents added; the
    record stays in bounds either way."""
    if not record.covers(touched):
        decision = record.room_for_miss(touched, 2, durable)
        if decision is not None:
            _budget, evict = decision
            assert all(record.is_clean(e, durable) and e not in touched for e in evict)
            record.evict(evict)
            record.add([e for e in touched if e not in record])
    assert len(record) <= capacity


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 3), st.booleans()), min_size=1, max_size=200),
       st.integers(2, 12))
def test_a_record_under_the_adaptive_policy_never_evicts_a_dirty_extent(
        ops: list[tuple[int, int, bool]], capacity: int) -> None:
    """Writes, misses and the durable mark moving on at random: whatever the policy follows,
    every extent it evicts was clean, none the miss writes is evicted, and it stays in bounds."""
    record = RecordCopy(capacity, Eviction.ADAPTIVE)
    durable = 0
    for seq, (first, count, advance) in enumerate(ops, 1):
        touched = range(first, min(first + count, first + capacity))
        record.note_write(touched, seq)
        if advance:
            durable = seq - 1
        take_write(record, touched, durable, capacity)
