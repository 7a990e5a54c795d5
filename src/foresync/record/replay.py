"""Replaying a workload trace through the record: the engine of ``foresync tune``.

Theory of operation. The replay drives the same pure code the primary runs for every write in
lookahead mode, not a model of it: ``RecordCopy.note_write`` for each write, ``covers`` for hit
or miss, ``RecordCopy.room_for_miss`` (which asks the eviction policy) and ``evict`` for room,
and ``predict.additions`` with the configured ``Predictor`` for what the secondary adds. Three
things the primary does are simplified, each on the side that makes the figures pessimistic
or neutral, never flattering:

* Time. A write is clean ``clean_lag_s`` after the trace says it was issued: when the
  secondary's durable watermark and the primary's own flush have both passed it. Evictions
  matter when the record runs short of free slots, and then the primary asks for the watermark
  at once (``PrimaryCore._send_miss``), so the lag is about one round trip plus an fdatasync, not
  the watermark timer's period. A miss that finds no clean extent to evict waits for the
  watermark: it is counted as a *stall* and the watermark is advanced to the newest write, as
  the primary's request for it would. On a real pair over loopback the replay's misses were
  within 5% of the live primary's (tests/integration/test_record_workload.py).
* ADDED arrives at once: a write to an extent a miss is still adding counts as a hit. The
  primary holds such a write back for that ADDED, less than a round trip; the latency estimate
  leaves this wait out (it is rare: the window is one round trip).
* Free slots ready: from a stall on, as the primary does when its watermark moves, clean extents
  are evicted ahead of need while the free slots are under the low mark, and a miss takes
  predictions only if the low mark's slots stay free (free_slots.py).
* Read-ahead: a hit that continues one of the last ``STREAMS_TRACKED`` writes and comes within
  ``lookahead // 2 + 1`` extents of the record's edge extends the record like the primary's
  read-ahead (same rule, same predictor).

Zero and trim requests that touch more than ``min(range_threshold, capacity // 2)`` extents go
as RANGE operations in the primary and never through the record; they are skipped here too.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from foresync.record.free_slots import FreeSlots
from foresync.record.predict import (
    PREDICTORS,
    additions,
    extents_of,
    read_ahead_due,
    read_ahead_wanted,
)
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
    clean_lag_s: float = 0.015  # a round trip (10 ms) plus an fdatasync (5 ms): see below

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
    blocked: int = 0  # misses that could never find room (generations only; see ReplayEngine)

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




class ReplayEngine:
    """The record of one configuration, fed one write at a time (``replay`` feeds a whole trace;
    the primary's live estimator, estimate.py, feeds sampled host writes as they come)."""

    def __init__(self, volume_size: int, config: ReplayConfig) -> None:
        self.config = config
        self.extent_count = -(-volume_size // config.extent_size)
        self.record = RecordCopy(config.capacity, config.eviction, extent_size=config.extent_size)
        self.predictor = PREDICTORS[config.predictor]()
        self._big = min(RANGE_THRESHOLD_EXTENTS, config.capacity // 2)
        self._issued: deque[float] = deque()  # issue times of the writes not yet clean
        self._seq = 0
        self._clean_through = 0
        self._swept_through = -1  # the clean_through of the last eviction ahead of need
        self.free_slots = FreeSlots(config.capacity)
        self._stream_ends: OrderedDict[int, None] = OrderedDict()
        self.writes = self.misses = self.stalls = self.read_aheads = self.blocked = 0

    def result(self) -> ReplayResult:
        return ReplayResult(self.config, self.writes, self.misses, self.stalls, self.read_aheads,
                            self.record.evicted_total, self.blocked)

    def write(self, at: float, offset: int, length: int, is_data: bool) -> bool | None:
        """One write issued at ``at`` seconds: True if it missed, None if it bypasses the record."""
        config, record = self.config, self.record
        touched = extents_of(offset, length, config.extent_size)
        if (not is_data and len(touched) > self._big) or len(touched) >= config.capacity:
            return None  # a RANGE op, or larger than the server lets in: never through the record
        self.writes += 1
        issued, horizon = self._issued, at - config.clean_lag_s
        while issued and issued[0] <= horizon:
            issued.popleft()
            self._clean_through += 1
        issued.append(at)
        wanted = self.free_slots.wanted(record.free())
        if wanted and self._swept_through != self._clean_through:
            self._swept_through = self._clean_through  # the primary's _keep_free
            record.evict(record.choose_ahead(wanted, self._clean_through))
        self._seq = seq = self._seq + 1
        ends = self._stream_ends
        sequential = ends.pop(offset, 0) is None
        ends[offset + length] = None
        if len(ends) > STREAMS_TRACKED:
            ends.popitem(last=False)
        record.note_write(touched, seq, offset, length)
        lookahead = config.lookahead
        if record.covers(touched):
            if sequential and lookahead and self._read_ahead(touched):
                self.read_aheads += 1
            return False
        self.misses += 1
        room = record.room_for_miss(touched, lookahead, self._clean_through, self.free_slots.spare())
        if room is None:
            # No clean extent: the primary asks for the watermark and waits for it.
            self.stalls += 1
            self.free_slots.room_wait()
            self._settle(seq - 1)
            room = record.room_for_miss(touched, lookahead, self._clean_through, self.free_slots.spare())
            if room is None:  # only this write's own extents are dirty, and they are all it needs
                self._settle(seq)
                room = record.room_for_miss(touched, lookahead, self._clean_through, self.free_slots.spare())
            if room is None:
                # Clean as everything is, no room: ``generations`` evicts whole generations only,
                # and this write's own extents (kept) sit in every clean one. The primary's miss
                # would wait until it fails; here it is counted as blocked and not recorded.
                self.blocked += 1
                return True
        budget, evict = room
        record.evict(evict)
        self.free_slots.miss_sent()
        added = additions(self.predictor, touched, budget, lookahead, self.extent_count, record)
        self.predictor.observe(touched)
        record.add(added)
        return True

    def _settle(self, through: int) -> None:
        while self._clean_through < through and self._issued:
            self._issued.popleft()
            self._clean_through += 1

    def _read_ahead(self, touched: range) -> bool:
        """The primary's read-ahead for a sequential hit (``_send_read_ahead``), same helpers."""
        record, lookahead, count = self.record, self.config.lookahead, self.extent_count
        if not read_ahead_due(touched, lookahead, count, record):
            return False
        wanted = read_ahead_wanted(self.predictor, touched, lookahead, count, record)
        evict = record.choose_evictions(len(wanted), self._clean_through, touched)
        if evict is None:
            return False
        record.evict(evict)
        added = additions(self.predictor, touched, len(wanted), lookahead, count, record)
        self.predictor.observe(touched)
        record.add(added)
        return True


def replay(writes: list[tuple[float, int, int, bool]], volume_size: int, config: ReplayConfig) -> ReplayResult:
    engine = ReplayEngine(volume_size, config)
    for at, offset, length, is_data in writes:
        engine.write(at, offset, length, is_data)
    return engine.result()
