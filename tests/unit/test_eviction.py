"""Unit tests for ``foresync.record.eviction``: S3-FIFO on the write stream, clean extents only.

The claimed policies evict by order of adding; ``s3fifo`` must keep what the host keeps writing,
drop what was added and never written again first, remember those in its ghost list, and, like
every policy, never choose a dirty or kept extent.
"""

from __future__ import annotations

from foresync.record.eviction import S3Fifo
from foresync.record.record import Eviction, RecordCopy


def _filled(capacity: int, extents: range, seq: int = 1) -> RecordCopy:
    record = RecordCopy(capacity, Eviction.S3FIFO)
    for extent in extents:
        record.note_write([extent], seq)
        record.add([extent])
    return record


def test_an_extent_written_again_outlives_older_and_newer_unwritten_ones() -> None:
    # Extent 0 is the oldest addition, as lru's first victim would be, but the host wrote it again.
    record = _filled(10, range(10))
    record.note_write([0], 9)  # 8 writes later: a reuse (the gap is capacity // 2)
    chosen = record.choose_evictions(5, clean_through=9)
    assert chosen is not None and len(chosen) == 5
    assert 0 not in chosen
    lru = RecordCopy(10, Eviction.LRU)
    lru.add(range(10))
    assert lru.choose_evictions(5, clean_through=9) == [0, 1, 2, 3, 4]  # claim 15 drops it first


def test_a_burst_of_writes_filling_an_extent_is_one_use() -> None:
    """A WAL or a log fills an extent with many small writes in a row: that is not a hot extent."""
    record = _filled(10, range(10))
    for seq in range(2, 6):
        record.note_write([0], seq)  # within the reuse gap of its adding
    chosen = record.choose_evictions(1, clean_through=5)
    assert chosen == [0]


def test_a_hot_extent_survives_a_sequential_scan() -> None:
    """The workload the claims lose on: a hot set written over and over while a stream passes."""
    record = RecordCopy(8, Eviction.S3FIFO)
    seq = 0
    hot = [100, 101, 102]
    for extent in hot:
        seq += 1
        record.note_write([extent], seq)
        record.add([extent])
    for stream in range(40):
        for extent in hot:
            seq += 1
            record.note_write([extent], seq)
        seq += 1
        record.note_write([stream], seq)
        if stream not in record:
            chosen = record.choose_evictions(1, clean_through=seq, keep=[stream])
            assert chosen is not None
            record.evict(chosen)
            record.add([stream])
    assert all(extent in record for extent in hot)


def test_dirty_and_kept_extents_are_passed_over() -> None:
    record = _filled(4, range(4))
    record.note_write([0, 1], 5)  # dirty beyond the watermark 4
    chosen = record.choose_evictions(2, clean_through=4, keep=[2])
    assert chosen is None  # only extent 3 is clean and not kept
    chosen = record.choose_evictions(1, clean_through=4, keep=[2])
    assert chosen == [3]


def test_none_only_when_too_few_clean_extents_however_often_written() -> None:
    record = _filled(6, range(6))
    for seq in range(2, 12):
        record.note_write(range(6), seq)  # every counter saturates
    chosen = record.choose_evictions(6, clean_through=11)
    assert chosen is not None and sorted(chosen) == list(range(6))


def test_an_early_eviction_is_remembered_and_readmitted_to_main() -> None:
    queues = S3Fifo(10)
    for extent in range(10):
        queues.added(extent)
    chosen = queues.choose(1, lambda e: True, ())
    assert chosen == [0]
    queues.evicted(0)
    assert queues.ghosts() == 1
    queues.added(0)
    assert queues.ghost_hits == 1 and queues.ghosts() == 0


def test_the_ghost_list_is_bounded_by_capacity() -> None:
    queues = S3Fifo(4)
    for extent in range(20):
        queues.added(extent)
        queues.evicted(extent)
    assert queues.ghosts() == 4


def test_the_deliberate_bug_evicts_a_dirty_extent() -> None:
    record = RecordCopy(2, Eviction.S3FIFO, evict_dirty=True)
    record.note_write([0, 1], 9)
    record.add([0, 1])
    assert record.choose_evictions(1, clean_through=0) is not None


def test_replace_adopts_extents_as_old_and_unwritten() -> None:
    record = _filled(6, range(3))
    record.replace([7, 8])
    assert record.extents() == [7, 8]
    record.add([9, 10, 11, 12])
    assert record.choose_evictions(2 + 2, clean_through=1) is not None
