"""bench/flush_bound.py's model: what a trace's misses and read-aheads allow lookahead to reach.

The bound is printed beside every trace cell of bench/record_pair.py, so it must charge what a
pair cannot avoid: a miss's round trip, and (issue 14, the build trace) a read-ahead's: writes
that reach extents a read-ahead is still bringing wait for its ADDED.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import flush_bound  # bench/ is not a package: on sys.path above

from foresync.nbd import trace
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig

MIB = 1 << 20
SIZE = 256 * MIB
RTT_S = 0.010


def stream(writes: int, length: int, start: int = 0) -> list[trace.TraceRecord]:
    """One sequential stream of ``writes`` writes of ``length`` bytes, then a FLUSH."""
    out = [trace.TraceRecord(i, start + i * length, length, trace.WRITE, 0) for i in range(writes)]
    return [*out, trace.TraceRecord(writes, 0, 0, trace.FLUSH, 0)]


def config(lookahead: int) -> ReplayConfig:
    return ReplayConfig(MIB, 64, Eviction.STREAMS, lookahead, "next", RTT_S + 0.005)


def test_a_fast_stream_waits_for_its_read_aheads() -> None:
    # 512 KiB writes at 10,000 a second: 5 GB/s, far more than 4 extents per round trip.
    records = stream(200, MIB // 2)
    sim = flush_bound.simulate(SIZE, records, config(4), 16, 10_000, RTT_S)
    assert sim.misses == 1  # the stream's first write; every other one is a hit or read-ahead
    assert sim.behind_add > 50  # but most wait for the ADDED of a read-ahead
    # The stream can go no faster than lookahead extents per round trip, roughly.
    assert sim.seconds >= (100 / 4 - 2) * RTT_S
    assert sim.bound < 0.2


def test_a_slow_stream_never_waits_for_its_read_aheads() -> None:
    # 64 KiB writes at 100 a second: one extent every 160 ms, over 10 round trips.
    records = stream(64, 64 * 1024)
    sim = flush_bound.simulate(SIZE, records, config(4), 16, 100, RTT_S)
    assert sim.behind_add == 0
    assert sim.bound > 0.95


@pytest.mark.parametrize("lookahead", [4, 8])
def test_a_longer_trip_lowers_the_bound_and_a_deeper_lookahead_raises_it(lookahead: int) -> None:
    records = stream(400, 256 * 1024)
    at_rtt = flush_bound.simulate(SIZE, records, config(lookahead), 16, 2_000, RTT_S)
    at_trip = flush_bound.simulate(SIZE, records, config(lookahead), 16, 2_000, RTT_S, 2.5 * RTT_S)
    deeper = flush_bound.simulate(SIZE, records, config(2 * lookahead), 16, 2_000, RTT_S, 2.5 * RTT_S)
    assert at_trip.seconds > at_rtt.seconds
    assert at_trip.behind_add >= at_rtt.behind_add
    assert deeper.seconds < at_trip.seconds


def test_a_write_behind_a_pending_extent_sends_its_miss_only_once_that_extent_came() -> None:
    # A miss on extent 10 (lookahead 0: it brings only its own extent), then a write touching
    # extent 10 and the unrecorded 11: it may go as a miss only after the first ADDED, so the
    # batch takes two round trips, not one.
    records = [trace.TraceRecord(0, 10 * MIB, 4096, trace.WRITE, 0),
               trace.TraceRecord(1, 11 * MIB - 4096, 8192, trace.WRITE, 0),
               trace.TraceRecord(2, 0, 0, trace.FLUSH, 0)]
    sim = flush_bound.simulate(SIZE, records, config(0), 16, 10_000, RTT_S)
    assert sim.misses == 2
    assert sim.seconds >= 2 * RTT_S


def test_a_range_op_is_answered_a_trip_after_it_is_sent_and_before_early_ranges_after_zeroing() -> None:
    # Two trims of 64 MiB (64 extents: more than capacity // 2, so RANGE ops outside the
    # record), in flight together, then a FLUSH.
    records = [trace.TraceRecord(0, 0, 64 * MIB, trace.TRIM, 0),
               trace.TraceRecord(1, 64 * MIB, 64 * MIB, trace.TRIM, 0),
               trace.TraceRecord(2, 0, 0, trace.FLUSH, 0)]
    at_once = flush_bound.simulate(SIZE, records, config(4), 16, 10_000, RTT_S)
    assert at_once.writes == 0  # neither went through the record
    assert RTT_S <= at_once.seconds < RTT_S + 0.001
    before = flush_bound.simulate(SIZE, records, config(4), 16, 10_000, RTT_S, None, 1e9, True)
    # answered after its zeroing (before EARLY_RANGES): the second waits for both zeroings
    assert before.seconds >= RTT_S + 2 * 64 * MIB / 1e9
    early = flush_bound.simulate(SIZE, records, config(4), 16, 10_000, RTT_S, None, 1e9)
    # answered before its zeroing (EARLY_RANGES): both sites zero at once; the client's own
    # zeroing (async mode's too) is all that is left of it
    assert RTT_S + 2 * 64 * MIB / 1e9 <= early.seconds < before.seconds
