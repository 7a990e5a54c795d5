"""The default eviction policy, ``streams`` (record/streams.py, issue 14)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_adaptive import take_write

from foresync.record.record import Eviction, RecordCopy
from foresync.record.streams import STREAMS_TRACKED, Streams, StreamS3Fifo

ES = 16  # bytes an extent, so offsets stay readable


def _hot(policy: StreamS3Fifo, extents: range, seq: int) -> int:
    """Add ``extents`` and write each again after the reuse gap: a counter above zero."""
    for extent in extents:
        policy.added(extent)
    seq += policy.reuse_gap
    policy.written(extents, seq)
    assert all(policy._freq[e] == 1 for e in extents)
    return seq


def test_a_write_continuing_a_stream_passes_the_extents_it_left_behind() -> None:
    policy = StreamS3Fifo(16, ES)
    _hot(policy, range(6), 0)
    policy.streamed(0, ES)  # extent 0, whole: no stream before it
    assert policy._freq[0] == 1 and policy.passed_total == 0
    policy.streamed(ES, 4)  # starts where the last ended: the stream left extent 0
    assert policy._freq[0] == 0 and policy.passed_total == 1
    policy.streamed(ES + 4, 4)  # continues inside extent 1: it may still fill it
    assert policy._freq[1] == 1
    policy.streamed(ES + 8, 3 * ES)  # continues over 1, 2, 3 into 4: 1-3 are left behind
    assert [policy._freq[e] for e in range(6)] == [0, 0, 0, 0, 1, 1]


def test_a_write_that_continues_no_recent_write_passes_nothing() -> None:
    policy = StreamS3Fifo(16, ES)
    _hot(policy, range(6), 0)
    policy.streamed(3 * ES, 2 * ES)  # a jump, over extents 3 and 4
    policy.streamed(ES - 4, 8)  # ends at 1*ES + 4: no write ended at ES - 4
    assert all(policy._freq[e] == 1 for e in range(6)) and policy.passed_total == 0
    for start in range(STREAMS_TRACKED + 1):  # the end of the first write is forgotten
        policy.streamed(100 * ES + 2 * start * ES, 1)
    policy.streamed(5 * ES, 1)  # continues the jump over 3-4, too long ago
    assert policy._freq[4] == 1


def test_a_passed_extent_in_main_is_the_first_chosen_once_clean() -> None:
    policy = StreamS3Fifo(8, ES)
    policy.adopted(range(8))  # into main, counters at zero
    assert policy.choose(1, lambda e: True, ()) == [7]
    policy.streamed(5 * ES, ES)
    policy.streamed(6 * ES, 1)  # left extent 5 behind
    assert policy.choose(1, lambda e: True, ()) == [5]
    assert policy.choose(1, lambda e: e != 5, ()) != [5]  # dirty: passed over as any other


def test_the_policy_is_adaptive_over_lru_and_the_stream_aware_s3fifo() -> None:
    policy = Streams(8, ES)
    for extent in (7, 3, 9, 1):
        policy.added(extent)
    assert isinstance(policy._s3, StreamS3Fifo)
    policy.evictions, policy.regrets = [100.0, 100.0], [50.0, 1.0]  # lru regrets far less
    assert policy.following_lru()
    assert policy.choose(2, lambda e: True, ()) == [7, 3]
    policy.streamed(3 * ES, ES)
    policy.streamed(4 * ES, 1)
    assert policy._s3._freq[3] == 0


def test_the_record_gives_streams_its_host_writes_offsets_but_not_resync_data() -> None:
    record = RecordCopy(8, Eviction.STREAMS, extent_size=ES)
    policy = record._streams
    assert policy is not None
    record.add(range(4))
    record.note_write(range(0, 1), 1, 0, ES)
    record.note_write(range(1, 2), 2, ES, ES)  # continues: extent 0 passed
    assert policy._streams.passed_total == 1
    record.note_write(range(2, 3), 3)  # resync data: no offset, nothing passed
    record.note_write(range(3, 4), 4)
    assert policy._streams.passed_total == 1


def test_without_an_extent_size_it_behaves_as_adaptive() -> None:
    record = RecordCopy(8, Eviction.STREAMS)
    record.add(range(3))
    record.note_write(range(0, 1), 1, 0, 1)
    record.note_write(range(1, 2), 2, 1, 1)
    assert record._streams is not None and record._streams._streams.passed_total == 0


def test_the_deliberate_bug_evicts_a_dirty_extent() -> None:
    record = RecordCopy(2, Eviction.STREAMS, evict_dirty=True, extent_size=ES)
    record.note_write([0, 1], 9, 0, 2 * ES)
    record.add([0, 1])
    assert record.choose_evictions(1, clean_through=0) is not None
    honest = RecordCopy(2, Eviction.STREAMS, extent_size=ES)
    honest.note_write([0, 1], 9, 0, 2 * ES)
    honest.add([0, 1])
    assert honest.choose_evictions(1, clean_through=0) is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30 * ES), st.integers(1, 3 * ES), st.booleans(), st.booleans()),
                min_size=1, max_size=200),
       st.integers(2, 12))
def test_a_record_under_streams_never_evicts_a_dirty_extent(
        ops: list[tuple[int, int, bool, bool]], capacity: int) -> None:
    """Writes (half of them continuing the last one, so streams pass extents), misses and the
    durable mark moving on at random: every extent evicted was clean, none the miss writes is
    evicted, and the record stays in bounds."""
    record = RecordCopy(capacity, Eviction.STREAMS, extent_size=ES)
    durable = end = 0
    for seq, (start, length, advance, continues) in enumerate(ops, 1):
        offset = end if continues else start
        length = min(length, (capacity - 1) * ES)
        touched = range(offset // ES, (offset + length - 1) // ES + 1)
        end = offset + length
        record.note_write(touched, seq, offset, length)
        if advance:
            durable = seq - 1
        take_write(record, touched, durable, capacity)
