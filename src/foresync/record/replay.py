"""Replaying a workload trace through the record: the engine of ``foresync tune``.

Theory of operation. The replay drives the same pure code the primary runs for every write in
lookahead mode, not a model of it: ``RecordCopy.note_write`` for each write, ``covers`` for hit
or miss, ``RecordCopy.room_for_miss`` (which asks the eviction policy) and ``evict`` for room,
and ``predict.additions`` with the configured ``Predictor`` for what the secondary adds. Three
things the primary does are simplified, each on the side that makes the figures pessimistic
or neutral, never flattering:

* Time. A write is clean ``clean_lag_s`` after the trace says it was issued (one round trip
  plus the watermark interval, by default): that is when the secondary's durable watermark and
  the primary's own flush have both passed it. A miss that finds no clean extent to evict waits
  for the watermark: it is counted as a *stall* and the watermark is advanced to the newest
  write, as the primary's request for it would.
* ADDED arrives at once: a write to an extent a miss is still adding counts as a hit. The
  primary holds such a write back for that ADDED, less than a round trip; the latency estimate
  leaves this wait out (it is rare: the window is one round trip).
* Read-ahead: a hit that continues one of the last ``STREAMS_TRACKED`` writes and comes within
  ``lookahead // 2 + 1`` extents of the record's edge extends the record like the primary's
  read-ahead (same rule, same predictor).

Zero and trim requests that touch more than ``min(range_threshold, capacity // 2)`` extents go
as RANGE operations in the primary and never through the record; they are skipped here too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from foresync.nbd.trace import TraceRecord
from foresync.record.predict import PREDICTORS, Predictor, additions, extents_of
from foresync.record.record import Eviction, RecordCopy

STREAMS_TRACKED = 16  # as the primary (replication/primary.py)
RANGE_THRESHOLD_EXTENTS = 16  # as the primary's Config.range_threshold_extents


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    extent_size: int
    capacity: int
    eviction: Eviction
    lookahead: int
    predictor: str = "next"
    clean_lag_s: float = 0.06  # a round trip (10 ms) plus the watermark interval (50 ms)

    @property
    def bound_bytes(self) -> int:
        """The failback bound: at most this much differs after a failover (claims 1, 9)."""
        return self.capacity * self.extent_size


@dataclass(frozen=True, slots=True)
class ReplayResult:
    config: ReplayConfig
    writes: int  # write, zero and trim requests through the record
    misses: int  # of which not covered by the record when issued
    stalls: int  # misses that found no clean extent to evict and waited for the watermark
    read_aheads: int
    evicted: int

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.writes if self.writes else 0.0

    @property
    def stall_ratio(self) -> float:
        return self.stalls / self.writes if self.writes else 0.0

    def added_latency_s(self, rtt_s: float) -> float:
        """Mean latency a write gains over async mode: a round trip per miss (the secondary
        journals the addition before answering), another per stall (the watermark)."""
        return (self.miss_ratio + self.stall_ratio) * rtt_s


def writes_of(records: Iterable[TraceRecord]) -> list[tuple[float, int, int, bool]]:
    """(time s, offset, length, is data write) of each request that changes the volume."""
    return [(r.time_ns / 1e9, r.offset, r.length, r.command == 1) for r in records
            if r.writes and r.length > 0]


def replay(writes: list[tuple[float, int, int, bool]], volume_size: int, config: ReplayConfig) -> ReplayResult:
    es, capacity = config.extent_size, config.capacity
    extent_count = -(-volume_size // es)
    record = RecordCopy(capacity, config.eviction)
    predictor = PREDICTORS[config.predictor]()
    lookahead = config.lookahead
    big = min(RANGE_THRESHOLD_EXTENTS, capacity // 2)
    issued: list[float] = []  # time of each seq (seq = index + 1)
    clean_through = 0
    stream_ends: OrderedDict[int, None] = OrderedDict()
    count = misses = stalls = read_aheads = 0
    for at, offset, length, is_data in writes:
        touched = extents_of(offset, length, es)
        if not is_data and len(touched) > big:
            continue  # a RANGE op: never through the record
        if len(touched) >= capacity:
            continue  # larger than the record: the server never lets such a write in
        count += 1
        horizon = at - config.clean_lag_s
        while clean_through < len(issued) and issued[clean_through] <= horizon:
            clean_through += 1
        issued.append(at)
        seq = len(issued)
        sequential = stream_ends.pop(offset, 0) is None
        stream_ends[offset + length] = None
        if len(stream_ends) > STREAMS_TRACKED:
            stream_ends.popitem(last=False)
        record.note_write(touched, seq)
        if record.covers(touched):
            if sequential and lookahead and _read_ahead(record, predictor, touched, lookahead,
                                                         extent_count, clean_through):
                read_aheads += 1
            continue
        misses += 1
        room = record.room_for_miss(touched, lookahead, clean_through)
        if room is None:
            stalls += 1
            clean_through = seq - 1  # the watermark the primary asked for (all but this write)
            room = record.room_for_miss(touched, lookahead, clean_through)
            if room is None:  # only this write's own extents are dirty and they are all it needs
                clean_through = seq
                room = record.room_for_miss(touched, lookahead, clean_through)
            assert room is not None
        budget, evict = room
        record.evict(evict)
        added = additions(predictor, touched, budget, lookahead, extent_count, record)
        predictor.observe(touched)
        record.add(added)
    return ReplayResult(config, count, misses, stalls, read_aheads, record.evicted_total)


def _read_ahead(record: RecordCopy, predictor: Predictor, touched: range, lookahead: int,
                extent_count: int, clean_through: int) -> bool:
    """The primary's read-ahead for a sequential hit (``_read_ahead_due``, ``_send_read_ahead``)."""
    near = range(touched.stop, min(touched.stop + lookahead // 2 + 1, extent_count))
    if all(e in record for e in near):
        return False
    ahead = predictor.candidates(touched, lookahead, extent_count)
    wanted = tuple(e for e in ahead if e not in record)[:lookahead]
    evict = record.choose_evictions(len(wanted), clean_through, touched)
    if evict is None:
        return False
    record.evict(evict)
    added = additions(predictor, touched, len(wanted), lookahead, extent_count, record)
    predictor.observe(touched)
    record.add(added)
    return True
