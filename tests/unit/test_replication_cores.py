"""Direct tests of ``PrimaryCore`` and ``SecondaryCore`` wired back to back in memory.

The harness below is a tiny adapter for both cores: messages go through the real link codec,
images are bytearrays, and every fsync (local flush, secondary data sync, journal commit,
out-of-sync persist) is a queue the test completes when it chooses, so the cores meet every
ordering an asyncio adapter could produce. Durable images are snapshots taken when the fsync is
*issued* (an fdatasync covers what was written before it started), and the durable record is
the replay of the journal entries whose commit completed.

Checked after every step, not only at the end:

* a miss is never applied on the primary before its ADDED arrived (claim 1);
* the secondary writes nothing outside its committed record (or a committed pending range), so a
  miss lands there only after its journal ADD is durable;
* wherever the two images differ, and wherever the two *durable* images differ, the committed
  record covers the extent (the crash-safety claim);
* an extent is evicted only when its latest write is durable on both sites;
* the record copy never exceeds capacity;
* in sync mode a write is acknowledged only after DURABLE covers it; a FUA write only after a
  local flush covers it.

A full disk on either side: ``p_full`` makes every local apply on the primary land in part and
fail with ENOSPC; ``s_full`` makes the secondary's image writes fail, and the harness then does
what the secondary site's action pump does (``SecondaryCore.storage_failed``).

After quiescence: both images identical, the copy equals the secondary's record, every write
answered, and hits + misses (+ RANGE ops) == writes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import LocalProtocolError, RemoteProtocolError, StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import format as jfmt
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.link.wire import FrameDecoder, WriteFlag, encode_frame
from foresync.nbd.wire import Errno
from foresync.record import runs
from foresync.record.predict import extents_of
from foresync.record.record import Eviction
from foresync.replication import primary as pcore
from foresync.replication import secondary as score
from foresync.replication.driver import PrimaryDriver, SecondaryDriver
from foresync.replication.epochs import Lineage
from foresync.replication.failback import failback_set
from foresync.replication.primary import Config, Mode, PrimaryCore
from foresync.replication.secondary import SecondaryCore

VOLUME = bytes(range(16))


class _SecondarySide:
    """The harness's secondary effects (SecondaryEffects): images and journals in memory."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    def send(self, message: wire.Message) -> None:
        self.h.to_p.append(encode_frame(message))

    def journal_append(self, entry: bytes) -> None:
        self.h.journal.append(entry)

    def write_data(self, offset: int, data: bytes, seq: int) -> None:
        self.h._check_covered(offset, len(data))
        if self.h.s_full:
            raise StorageError(f"write at {offset} failed: no space", Errno.ENOSPC)
        self.h.s_img[offset : offset + len(data)] = data

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        offset = writes[0].offset  # back to back, as one pwritev
        for write in writes:
            self.write_data(offset, write.data, write.seq)
            offset += len(write.data)

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None:
        self.h._check_covered(offset, length)
        if self.h.s_full:
            raise StorageError(f"zero at {offset} failed: no space", Errno.ENOSPC)
        self.h.s_img[offset : offset + length] = bytes(length)

    def close_link(self, reason: str) -> None:
        self.h.closed_by_secondary.append(reason)

    def link_failed(self, reason: str) -> None:
        self.h.closed_by_secondary.append(reason)

    def sync_data(self, through: int) -> None:
        self.h.data_syncs.append((through, bytes(self.h.s_img)))

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        self.h.new_copy = False

    def resync_started(self) -> None:
        pass  # a consistency mark: the adapter persists it; nothing to do in memory

    def hash_extents(self, request: int, first: int, count: int) -> None:
        raise AssertionError("no verify in these tests")

    def save_undo(self, extent: int) -> None:
        raise AssertionError("no undo log in these tests")

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        pass  # the driver tells the core; the tests look at its state


@dataclass
class Harness:
    mode: Mode = Mode.LOOKAHEAD
    eviction: Eviction = Eviction.LRU
    capacity: int = 4
    lookahead: int = 1
    extent_size: int = 16
    extents: int = 12
    window_bytes: int = 1 << 20
    auto: bool = False  # complete every fsync and delivery at once
    allow_failures: bool = False  # a test that expects an op to fail (EIO after a bounded wait)
    faults: Faults = NO_FAULTS
    fast: bool = True  # host writes try PrimaryCore.write_hit first, as the site does
    predictor: str = "next"  # both sites' (record/predict.py)
    p_full: int | None = None  # the primary's disk is full: local writes land this many bytes
    s_full: bool = False  # the secondary's image refuses every write (ENOSPC)
    slice_bytes: int = pcore.RESYNC_SLICE_BYTES  # resync work per pump (ResumeLater)
    resync_window: int = pcore.RESYNC_WINDOW_BYTES  # resync bytes in flight

    p_img: bytearray = field(init=False)
    s_img: bytearray = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.extent_size * self.extents - 3  # a short last extent
        self.p_img = bytearray(self.size)
        self.s_img = bytearray(self.size)
        self.p_durable = bytes(self.size)
        self.s_durable = bytes(self.size)
        config = Config(self.mode, self.size, self.extent_size, self.capacity, self.lookahead,
                        self.eviction, VOLUME, window_bytes=self.window_bytes, faults=self.faults,
                        resync_slice_bytes=self.slice_bytes, resync_window_bytes=self.resync_window,
                        predictor=self.predictor)
        self.primary = PrimaryCore(config, self._read)
        self.secondary = SecondaryCore(self.size, self.extent_size, self.lookahead, VOLUME,
                                       RecordState(), faults=self.faults, predictor=self.predictor)
        self.p_driver = PrimaryDriver(self.primary, self)
        self.s_driver = SecondaryDriver(self.secondary, _SecondarySide(self))
        self.to_s: deque[bytes] = deque()
        self.to_p: deque[bytes] = deque()
        self.s_decoder = FrameDecoder()
        self.p_decoder = FrameDecoder()
        self.applies: list[pcore.ApplyLocal] = []
        # (ticket, image snapshot, applied prefix, seqs applied) at the time the flush was issued
        self.flushes: deque[tuple[int, bytes, int, frozenset[int]]] = deque()
        self.oos: deque[int] = deque()
        self.persisted_oos: list[set[int]] = []  # every out-of-sync set the primary persisted
        self._oos_by_token: dict[int, set[int]] = {}
        self.durable_oos: set[int] = set()  # the out-of-sync set as last made durable
        self.new_copy = False  # the secondary is a new copy (its metadata says so) until RESYNC_DONE
        self.data_syncs: deque[tuple[int, bytes]] = deque()
        self.journal: list[bytes] = []
        self.commits: deque[int] = deque()  # journal commit targets started
        self.committed = 0
        self.committed_state = RecordState()
        # bookkeeping for the checks
        self.next_op = 1
        self.host_ops: dict[int, tuple[str, int, int, bool]] = {}  # op_id -> (kind, off, len, fua)
        self.op_queue: deque[int] = deque()  # host op ids not yet sent, in order
        self.op_seq: dict[int, int] = {}
        self.acks: dict[int, int] = {}
        self.miss_seqs: set[int] = set()
        self.read_ahead_seqs: set[int] = set()
        self.range_seqs: set[int] = set()
        self.resync_seqs: set[int] = set()
        self.added_delivered: set[int] = set()
        self.last_write_seq: dict[int, int] = {}  # extent -> latest seq sent for it
        self.locally_settled: set[int] = set()  # seqs applied here or needing no local apply
        self.local_durable_prefix = 0
        self.locally_durable: set[int] = set()
        self.durable_delivered = 0
        self.sent_hits = self.sent_misses = self.sent_ranges = 0
        self.evicted: list[int] = []
        self.fast_hits = 0  # writes that went through write_hit
        self.fast_applies = 0  # WRITEs the secondary took through write_now
        self.local_failures: set[int] = set()  # seqs whose local apply failed (ENOSPC)
        self.answered_without_secondary: set[int] = set()  # seqs in flight at a disconnect
        self.link_failures: list[str] = []  # LinkFailed reasons (a secondary's storage failure)
        self.closed_by_secondary: list[str] = []  # CloseLink reasons
        self.generations: list[Lineage] = []  # PersistGeneration: each lineage stored
        self._running_io = False

    # -- the adapters ----------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        return bytes(self.p_img[offset : offset + length])

    def pump(self) -> None:
        for _ in range(10_000):
            carried = self.p_driver()
            if not self.s_driver() and not carried:
                break
        else:
            raise AssertionError("the cores keep producing actions")
        self.check()
        if self.auto and not self._running_io:
            self._running_io = True
            try:
                while self.run_io():
                    pass
            finally:
                self._running_io = False

    # -- the primary's effects (PrimaryEffects; replication/driver.py dispatches) -------------------

    def send(self, message: wire.Message) -> None:
        self._primary_sends(message)
        self.to_s.append(encode_frame(message))

    def apply_local(self, seq: int, offset: int, length: int, data: bytes | None, punch: bool) -> None:
        assert seq not in self.miss_seqs or seq in self.added_delivered, \
            f"miss {seq} applied locally before ADDED"
        assert seq not in self.range_seqs or seq in self.added_delivered
        assert all(a.seq != seq for a in self.applies), "ApplyLocal issued twice"
        self.applies.append(pcore.ApplyLocal(seq, offset, length, data, punch))
        # None: reported later, when the test completes it (complete_apply)

    def apply_hit(self, seq: int, offset: int, data: bytes) -> int:
        self.locally_settled.add(seq)
        self.fast_hits += 1
        return self._local_write(seq, offset, data)

    def ack_host(self, op_id: int, errno: int) -> None:
        self._acked(op_id, errno)

    def flush_local(self, through: int) -> None:
        self.flushes.append((through, bytes(self.p_img), self._settled_prefix(),
                             frozenset(self.locally_settled)))

    def persist_out_of_sync(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        self.oos.append(token)
        self.persisted_oos.append(set(extents))
        self._oos_by_token[token] = set(extents)

    def resume_later(self) -> None:
        self.primary.resume()

    def link_failed(self, reason: str) -> None:
        assert reason and reason == self.primary.secondary_error, f"link failed: {reason}"
        self.link_failures.append(reason)

    def persist_generation(self, token: int, lineage: Lineage) -> None:
        self.generations.append(lineage)  # stored at once, as the site does
        self.primary.generation_persisted(token)

    def become_secondary(self, lineage: Lineage) -> None:
        raise AssertionError(f"unexpected step down to {lineage}")

    def _primary_sends(self, message: wire.Message) -> None:
        if not isinstance(message, wire.Write | wire.Zero):
            return
        length = len(message.data) if isinstance(message, wire.Write) else message.length
        touched = extents_of(message.offset, length, self.extent_size)
        for extent in message.removals:
            self._check_eviction(extent)
        self.evicted.extend(message.removals)
        for extent in touched:
            self.last_write_seq[extent] = message.seq
        if message.flags & WriteFlag.RESYNC:
            self.resync_seqs.add(message.seq)
            self.locally_settled.add(message.seq)
            return
        # Ops may be sent out of arrival order, but never ahead of an earlier op they overlap.
        position = next((i for i, queued in enumerate(self.op_queue)
                         if self.host_ops[queued][1:3] == (message.offset, length)), None)
        assert position is not None, "sent an op the host never submitted"
        for earlier in list(self.op_queue)[:position]:
            _, e_offset, e_length, _ = self.host_ops[earlier]
            earlier_extents = set(extents_of(e_offset, e_length, self.extent_size))
            assert earlier_extents.isdisjoint(touched), "an op overtook an earlier overlapping op"
        op_id = self.op_queue[position]
        del self.op_queue[position]
        self.op_seq[op_id] = message.seq
        if message.flags & WriteFlag.MISS and self.primary.record.covers(touched):
            # A read-ahead: a hit (its extents are in the copy) asking for the next extents. It
            # may apply before its ADDED, and it counts as a hit.
            self.read_ahead_seqs.add(message.seq)
            self.sent_hits += 1
        elif message.flags & WriteFlag.MISS:
            self.miss_seqs.add(message.seq)
            self.sent_misses += 1
        elif message.flags & WriteFlag.RANGE:
            self.range_seqs.add(message.seq)
            self.sent_ranges += 1
        else:
            self.sent_hits += 1

    def _check_eviction(self, extent: int) -> None:
        seq = self.last_write_seq.get(extent, 0)
        assert seq <= self.durable_delivered, f"evicted {extent}: seq {seq} not durable remotely"
        assert seq <= self.local_durable_prefix, f"evicted {extent}: seq {seq} not durable locally"
        span = self._span(extent)
        assert self.p_durable[span] == self.s_durable[span] == self.p_img[span] == self.s_img[span]

    def _span(self, extent: int) -> slice:
        return slice(extent * self.extent_size, min((extent + 1) * self.extent_size, self.size))

    def _acked(self, op_id: int, errno: int) -> None:
        assert op_id not in self.acks, f"op {op_id} answered twice"
        if errno and self.allow_failures and op_id not in self.op_seq:
            self.acks[op_id] = errno  # failed while still queued: never sent, never applied
            return
        if errno == Errno.ENOSPC and self.local_failures and self.op_seq.get(op_id, -1) in (
                self.local_failures | {-1}):  # -1: never sent (link down)
            self.acks[op_id] = errno  # the local write failed: the host hears why
            return
        assert errno == 0, f"op {op_id} failed with errno {errno}"
        self.acks[op_id] = errno
        kind, _, _, fua = self.host_ops[op_id]
        if kind == "flush":
            return
        seq = self.op_seq[op_id]
        if self.mode is Mode.SYNC and seq not in self.answered_without_secondary:
            assert seq <= self.durable_delivered, f"sync-mode op seq {seq} acked before DURABLE"
        if fua:
            assert seq in self.locally_durable, f"FUA op seq {seq} acked before a flush"

    def _settled_prefix(self) -> int:
        prefix = self.local_durable_prefix
        while prefix + 1 in self.locally_settled:
            prefix += 1
        return prefix

    def _check_covered(self, offset: int, length: int) -> None:
        """The secondary writes only where its committed record (or a committed range) covers."""
        if self.mode is Mode.ASYNC:
            return
        ranges = self.committed_state.ranges.values()
        if (offset, length) in ranges:
            return
        resync = self.committed_state.resync  # a resync pass's set covers its writes (issue 19)
        missing = [e for e in extents_of(offset, length, self.extent_size)
                   if e not in self.committed_state.extents and not runs.contains(resync, e)]
        assert not missing, f"secondary wrote {offset}+{length}; {missing} not in the durable record"

    # -- completing I/O and delivering frames ------------------------------------------------------

    def deliver_to_secondary(self, count: int = 1 << 30) -> bool:
        moved = False
        while self.to_s and count > 0:
            count -= 1
            moved = True
            for message in self.s_decoder.feed(self.to_s.popleft()):
                if self.fast and type(message) is wire.Write and self.s_driver.write_now(message):
                    self.fast_applies += 1  # the site's hot path: written at once
                    continue
                self.secondary.receive(message)
        if moved:
            self.secondary.end_of_batch()
        self.pump()
        return moved

    def deliver_to_primary(self, count: int = 1 << 30) -> bool:
        moved = False
        while self.to_p and count > 0:
            count -= 1
            moved = True
            for message in self.p_decoder.feed(self.to_p.popleft()):
                match message:
                    case wire.Added(seq):
                        self.added_delivered.add(seq)
                    case wire.Durable(seq):
                        self.durable_delivered = max(self.durable_delivered, seq)
                self.primary.receive(message)
                self.pump()
        return moved

    def complete_apply(self, index: int = 0) -> bool:
        if not self.applies:
            return False
        action = self.applies.pop(index % len(self.applies))
        data = action.data if action.data is not None else bytes(action.length)
        errno = self._local_write(action.seq, action.offset, data)
        self.locally_settled.add(action.seq)
        self.primary.local_applied(action.seq, errno)
        self.pump()
        return True

    def _local_write(self, seq: int, offset: int, data: bytes) -> int:
        """Write to the primary's image; with ``p_full`` only a prefix lands: ENOSPC."""
        if self.p_full is None:
            self.p_img[offset : offset + len(data)] = data
            return 0
        landed = data[: self.p_full]
        self.p_img[offset : offset + len(landed)] = landed
        self.local_failures.add(seq)
        return int(Errno.ENOSPC)

    def flush_done(self) -> bool:
        if not self.flushes:
            return False
        ticket, snapshot, prefix, applied = self.flushes.popleft()
        self.p_durable = snapshot
        self.local_durable_prefix = max(self.local_durable_prefix, prefix)
        self.locally_durable |= applied
        self.primary.local_flushed(ticket)
        self.pump()
        return True

    def oos_done(self) -> bool:
        if not self.oos:
            return False
        token = self.oos.popleft()
        self.durable_oos = self._oos_by_token.pop(token)
        self.primary.out_of_sync_persisted(token)
        self.pump()
        return True

    def data_sync_done(self) -> bool:
        if not self.data_syncs:
            return False
        through, snapshot = self.data_syncs.popleft()
        self.s_durable = snapshot
        self.secondary.data_synced(through)
        self.pump()
        return True

    def commit_start(self) -> bool:
        if not self.secondary.needs_journal_sync() or (self.commits and self.commits[-1] ==
                                                        self.secondary.journal_target()):
            return False
        assert self.secondary.journal_target() == len(self.journal)
        self.commits.append(self.secondary.journal_target())
        return True

    def commit_done(self) -> bool:
        if not self.commits:
            return False
        target = self.commits.popleft()
        self.committed = max(self.committed, target)
        image = jfmt.encode_header(VOLUME) + b"".join(self.journal[: self.committed])
        self.committed_state = jfmt.replay(image).state
        self.secondary.journal_synced(target)
        self.pump()
        return True

    def timer(self) -> None:
        self.primary.request_durable()
        self.secondary.request_durable()
        self.pump()

    def run_io(self) -> bool:
        """Complete every pending fsync, apply and delivery once."""
        moved = False
        while self.applies:
            moved = self.complete_apply() or moved
        moved = self.commit_start() or moved
        while self.commits:
            moved = self.commit_done() or moved
        while self.data_syncs:
            moved = self.data_sync_done() or moved
        while self.flushes:
            moved = self.flush_done() or moved
        while self.oos:
            moved = self.oos_done() or moved
        moved = self.deliver_to_secondary() or moved
        moved = self.deliver_to_primary() or moved
        return moved

    def peek_to_secondary(self) -> list[wire.Message]:
        decoder = FrameDecoder()
        return [m for frame in self.to_s for m in decoder.feed(frame)]

    def peek_to_primary(self) -> list[wire.Message]:
        decoder = FrameDecoder()
        return [m for frame in self.to_p for m in decoder.feed(frame)]

    # -- host side ---------------------------------------------------------------------------------

    def connect(self) -> None:
        self.primary.connected()
        self.pump()
        self.deliver_to_secondary()
        self.deliver_to_primary()
        assert self.primary.link is pcore.LinkState.CONNECTED
        if self.primary._resync.awaiting_ack:  # an empty pass: its RESYNC_DONE and the answer
            self.deliver_to_secondary()
            self.deliver_to_primary()

    def write(self, offset: int, length: int, fua: bool = False) -> int:
        op_id = self.next_op
        self.next_op += 1
        data = bytes((op_id * 37 + i) % 251 + 1 for i in range(length))
        self.host_ops[op_id] = ("write", offset, length, fua)
        self.op_queue.append(op_id)
        # The site's hot path (PrimaryDriver.write_hit): send, apply at once, answer.
        errno = None if fua or not self.fast else self.p_driver.write_hit(offset, data)
        if errno is None:
            self.primary.write(op_id, offset, data, fua)
        else:
            self.ack_host(op_id, errno)
        self.pump()
        return op_id

    def zero(self, offset: int, length: int, punch: bool = False, fua: bool = False) -> int:
        op_id = self.next_op
        self.next_op += 1
        self.host_ops[op_id] = ("zero", offset, length, fua)
        self.op_queue.append(op_id)
        self.primary.zero(op_id, offset, length, punch, fua)
        self.pump()
        return op_id

    def host_flush(self) -> int:
        op_id = self.next_op
        self.next_op += 1
        self.host_ops[op_id] = ("flush", 0, 0, True)
        self.primary.flush(op_id)
        self.pump()
        return op_id

    def settle_until_link_fails(self) -> None:
        """Run I/O and timers until the primary has dropped the link (LinkFailed)."""
        for _ in range(50):
            if self.link_failures:
                return
            while self.run_io() and not self.link_failures:
                pass
            self.timer()
        raise AssertionError("the link never failed")

    def settle(self) -> None:
        """Run I/O and the watermark timers until a timer round changes nothing. (An idle
        secondary answers every timer with a DURABLE it already sent, so "no frames" is not the
        test.)"""
        previous = None
        for _ in range(200):
            while self.run_io():
                pass
            self.timer()
            while self.run_io():
                pass
            now = self._fingerprint()
            if now == previous and not self._pending():
                return
            previous = now
        raise AssertionError("no quiescence after 200 rounds")

    def _fingerprint(self) -> tuple[object, ...]:
        return (bytes(self.p_img), bytes(self.s_img), self.p_durable, self.s_durable,
                len(self.acks), len(self.journal), tuple(self.primary.record.extents()),
                self.primary.statistics(), self.secondary.statistics())

    def _pending(self) -> bool:
        return bool(self.applies or self.flushes or self.data_syncs or self.commits or self.oos
                    or self.to_s or self.to_p or self.secondary.needs_journal_sync())

    # -- the checks --------------------------------------------------------------------------------

    def check(self) -> None:
        record = self.primary.record
        assert len(record) + record.reserved <= self.capacity
        assert len(self.secondary.state.extents) <= self.capacity
        if self.mode is Mode.ASYNC:
            return
        covered: set[int] | None = None
        for name, one, two in (("images", self.p_img, self.s_img),
                               ("durable images", self.p_durable, self.s_durable)):
            for extent in range(self.extents):
                span = self._span(extent)
                if one[span] != two[span]:
                    if covered is None:  # the primary's durable out-of-sync set counts too
                        covered = failback_set(self.committed_state, self.extent_size, self.durable_oos)
                    assert extent in covered or self.new_copy, \
                        f"{name} differ in extent {extent}, not in the durable record"

    def check_quiescent(self) -> None:
        assert not self._pending()
        assert self.p_img == self.s_img
        assert self.p_durable == self.s_durable == bytes(self.p_img)
        answered = {op for op, (kind, *_) in self.host_ops.items()}
        assert set(self.acks) == answered, f"unanswered ops {answered - set(self.acks)}"
        assert not self.op_queue
        stats = self.primary.statistics()
        assert stats.in_sync
        writes = sum(1 for kind, *_ in self.host_ops.values() if kind != "flush")
        assert stats.writes == writes
        if self.mode is not Mode.ASYNC:
            # The copy, and what it evicted ahead of need that goes with the next MISS.
            assert sorted((*self.primary.record.extents(), *self.primary.removals_pending)) == sorted(
                self.secondary.state.extents)
            assert self.primary.record.reserved == 0
            assert self.committed_state == self.secondary.state
            assert not self.secondary.state.ranges
            assert stats.record_hits == self.sent_hits
            assert stats.record_misses == self.sent_misses
            assert stats.record_hits + stats.record_misses + self.sent_ranges == writes


# -- deterministic scenarios -----------------------------------------------------------------------


def _primary_restarted_with_out_of_sync(h: Harness, extents: range) -> None:
    """The primary wrote ``extents`` while cut off (they differ there) and restarted: they are
    its stored out-of-sync set, to resync on the next connect."""
    for extent in extents:
        span = h._span(extent)
        h.p_img[span] = bytes([extent + 1]) * (span.stop - span.start)
    h.p_durable = bytes(h.p_img)
    h.primary.restore_out_of_sync(set(extents))
    h.durable_oos = set(extents)


def test_a_resync_larger_than_the_record_streams_without_waiting_for_room() -> None:
    """Issue 19: capacity 2, eight extents to resync. The pass starts with RESYNC_SET (all
    eight), and every extent goes at once as a plain RESYNC write, with no MISS and no wait
    for room in the record (which used to take one watermark round trip per extent)."""
    h = Harness(capacity=2, lookahead=0, extents=12)
    _primary_restarted_with_out_of_sync(h, range(2, 10))
    h.connect()
    sent = h.peek_to_secondary()
    assert isinstance(sent[0], wire.ResyncSet) and sent[0].runs == ((2, 8),)
    writes = [m for m in sent if isinstance(m, wire.Write)]
    assert [m.offset // h.extent_size for m in writes] == list(range(2, 10))
    assert all(m.flags == WriteFlag.RESYNC and m.budget == 0 for m in writes)
    assert h.primary.out_of_sync == set(range(2, 10))  # until the set is durable there
    h.deliver_to_secondary()
    assert h.s_img == bytes(h.size), "resync data landed before its set was durable"
    h.commit_start()
    h.commit_done()
    assert h.committed_state.resync == ((2, 8),) and not h.committed_state.extents
    assert h.s_img == h.p_img
    h.deliver_to_primary()
    assert not h.primary.out_of_sync  # the secondary's journal covers them now
    assert h.primary.failback_bound_extents() >= 8
    h.settle()
    h.check_quiescent()
    assert h.committed_state.resync == ()  # cleared at RESYNC_DONE
    assert h.primary.failback_bound_extents() == len(h.primary.record)


def test_a_full_sync_compares_checksums_in_slices_and_sends_only_what_differs() -> None:
    """A new secondary reports a checksum per extent; the primary sweeps them all (one run in
    RESYNC_SET, no per-extent list), a slice of one extent's work at a time (ResumeLater),
    and sends only the three extents that differ."""
    h = Harness(capacity=2, lookahead=0, extents=12, slice_bytes=16)
    for extent in (1, 5, 11):
        span = h._span(extent)
        h.p_img[span] = bytes([9]) * (span.stop - span.start)
    h.p_durable = bytes(h.p_img)
    h.new_copy = True
    h.secondary.session_started(score.SessionFacts(wire.WelcomeFlag.NEW, checksums=True))
    resumes = 0
    original = h.primary.resume

    def counted(*, now: float | None = None) -> None:
        nonlocal resumes
        resumes += 1
        original(now=now)

    h.primary.resume = counted  # type: ignore[method-assign]
    h.connect()
    assert h.primary._resync.remaining() == h.extents  # waiting for the checksums
    # Streamed behind the WELCOME in two chunks (CHECKSUMS), compared as each arrives.
    hashes = tuple(xxhash.xxh3_64_intdigest(bytes(h.s_img[h._span(e)])) for e in range(h.extents))
    h.secondary.send_checksums(0, hashes[:7])
    h.pump()
    h.settle()
    assert h.primary._resync.remaining() == h.extents - 7 and h.primary.counters.resync_bytes == 2 * h.extent_size
    h.secondary.send_checksums(7, hashes[7:])
    h.pump()
    h.settle()
    h.check_quiescent()
    assert h.primary.counters.resync_bytes == 3 * h.extent_size - 3  # the last extent is short
    assert resumes >= h.extents - 3, resumes  # one slice per extent; a chunk arriving starts one
    assert h.committed_state.resync == ()


def test_a_resync_keeps_only_its_own_window_in_flight_so_host_writes_go_first() -> None:
    """The resync may have ``resync_window_bytes`` in flight (two extents here), not the whole
    link window: a host write made meanwhile goes out at once, behind two extents, not eight."""
    h = Harness(capacity=2, lookahead=0, extents=12, resync_window=2 * 16)
    _primary_restarted_with_out_of_sync(h, range(2, 10))
    h.connect()
    assert len([m for m in h.peek_to_secondary() if isinstance(m, wire.Write)]) == 2
    h.write(0, 4)
    last = h.peek_to_secondary()[-1]
    assert isinstance(last, wire.Write) and not last.flags & WriteFlag.RESYNC and last.offset == 0
    h.settle()
    h.check_quiescent()
    assert h.primary.counters.resync_bytes == 8 * h.extent_size


def test_the_resync_window_follows_twice_throughput_times_the_least_rtt() -> None:
    config = Config(Mode.LOOKAHEAD, 1 << 30, 1 << 20, 16, 0, Eviction.LRU, VOLUME)
    core = PrimaryCore(config, lambda offset, length: bytes(length))
    assert core._resync.window == pcore.RESYNC_WINDOW_START_BYTES
    core.observe_rtt(0.05)
    core.observe_rtt(0.2)  # queued behind resync data: not the link's own delay
    core._resync.unapplied.append((1, 1 << 20))  # the window is in use
    core.tick(10.0)
    core._on_applied(0)
    core._resync.applied_bytes += 50_000_000  # 100 MB/s over the next half second
    core.tick(10.5)
    assert core._resync.window == 10_000_000  # 2 x 100 MB/s x 50 ms
    core._resync.applied_bytes += 1_000_000_000
    core.tick(11.0)
    assert core._resync.window == pcore.RESYNC_WINDOW_BYTES  # capped
    core.connected()  # a new session measures afresh
    assert core._resync.rtt_min_s == 0.0


def test_resync_done_waits_for_the_primarys_own_flush() -> None:
    """The resync data was read from the primary's page cache: RESYNC_DONE (which clears the
    set there) goes only once a local flush covers it too, or a primary crash could leave a
    difference nothing covers."""
    h = Harness(capacity=2, lookahead=0, extents=6)
    _primary_restarted_with_out_of_sync(h, range(0, 4))
    h.connect()
    for _ in range(5):
        while h.deliver_to_secondary() or h.commit_start() or h.commit_done() or h.data_sync_done() \
                or h.deliver_to_primary():
            pass
        h.timer()
    assert h.durable_delivered >= max(h.resync_seqs)
    assert not any(isinstance(m, wire.ResyncDone) for m in h.peek_to_secondary())
    assert h.committed_state.resync == ((0, 4),)
    h.settle()
    h.check_quiescent()
    assert h.committed_state.resync == ()


def test_a_disconnect_before_the_set_is_durable_keeps_the_out_of_sync_set() -> None:
    h = Harness(capacity=2, lookahead=0, extents=6)
    _primary_restarted_with_out_of_sync(h, range(0, 4))
    h.connect()
    h.primary.disconnected("cut")
    h.pump()
    assert h.primary.out_of_sync == set(range(4))
    assert h.primary.unsynced_extents() >= set(range(4))


def test_the_secondary_reports_an_unfinished_resync_set_and_journals_it_in_checkpoints() -> None:
    state = RecordState(resync=((3, 2),))
    secondary = SecondaryCore(12 * 16, 16, 0, VOLUME, state)
    secondary.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 12 * 16, 16, 1))
    (welcome,) = [a.message for a in secondary.actions() if isinstance(a, score.Send)]
    assert isinstance(welcome, wire.Welcome) and welcome.stale == (3, 4)
    image = jfmt.encode_header(VOLUME) + jfmt.encode_checkpoint(state)
    assert jfmt.replay(image).state.resync == ((3, 2),)


def test_a_resync_set_outside_the_volume_is_refused() -> None:
    secondary = SecondaryCore(12 * 16, 16, 0, VOLUME, RecordState())
    with pytest.raises(RemoteProtocolError, match="outside the volume"):
        secondary.receive(wire.ResyncSet(1, ((10, 3),)))



def test_a_sequential_stream_extends_the_record_ahead_instead_of_missing() -> None:
    """Lookahead 2: the first write misses (extents 0-2); as the stream nears the record's edge
    a hit goes with MISS and asks for the next extents, answered at once without its ADDED;
    a stream across the whole volume then misses only once."""
    h = Harness(capacity=12, lookahead=2, extents=12, auto=True)
    h.connect()
    ops = [h.write(offset, 8) for offset in range(0, h.extent_size * 11, 8)]
    h.settle()
    stats = h.primary.statistics()
    assert stats.record_misses == 1 and stats.record_hits == len(ops) - 1
    assert stats.record_read_aheads >= 3 and len(h.read_ahead_seqs) == stats.record_read_aheads
    assert set(h.acks) >= set(ops)
    h.check_quiescent()


def test_a_read_ahead_hit_is_answered_before_its_added() -> None:
    h = Harness(capacity=8, lookahead=2)
    h.connect()
    h.write(0, 16)  # miss: extents 0, 1, 2
    h.settle()
    first = h.write(16, 8)  # extent 1, where the miss ended: a sequential hit, 1 extent from the edge
    h.complete_apply()
    assert h.acks[first] == 0
    assert h.primary.statistics().record_read_aheads == 1
    assert h.read_ahead_seqs == {h.op_seq[first]}  # sent with MISS while its extents were covered
    assert not any(isinstance(m, wire.Added) for m in h.peek_to_primary())  # ADDED still to come
    h.settle()
    assert h.primary.record.extents() == [0, 1, 2, 3]  # the next 2 after extent 1, 2 already in
    h.check_quiescent()


def test_random_writes_never_read_ahead() -> None:
    h = Harness(capacity=12, lookahead=2, auto=True)
    h.connect()
    for offset in (64, 0, 128, 32, 96, 16, 160, 48):
        h.write(offset, 8)
    h.settle()
    assert h.primary.statistics().record_read_aheads == 0
    h.check_quiescent()


def test_a_disconnect_releases_what_a_read_ahead_reserved() -> None:
    h = Harness(capacity=8, lookahead=2)
    h.connect()
    h.write(0, 16)
    h.settle()
    h.write(16, 8)  # read-ahead for extent 3 in flight
    assert h.primary.record.reserved == 1 and h.primary._pending_adds == {3: 1}
    h.primary.disconnected("cut")
    h.pump()
    assert h.primary.record.reserved == 0 and not h.primary._pending_adds


def test_handshake_and_first_miss() -> None:
    h = Harness(capacity=4, lookahead=2)
    h.connect()
    op = h.write(20, 4)  # extent 1
    assert h.primary.statistics().record_misses == 1
    assert h.applies == []  # not applied before ADDED
    h.deliver_to_secondary()
    assert h.s_img == bytes(h.size)  # journal ADD not committed yet: nothing written there
    assert not any(isinstance(m, wire.Added) for m in h.peek_to_primary())  # no ADDED either
    h.commit_start()
    h.commit_done()
    assert h.committed_state.extents == {1, 2, 3}  # touched + 2 predicted
    assert h.s_img[20:24] != bytes(4)
    h.deliver_to_primary()
    assert [a.seq for a in h.applies] == [h.op_seq[op]]
    assert op not in h.acks
    h.complete_apply()
    assert h.acks == {op: 0}
    assert h.primary.record.extents() == [1, 2, 3]


def test_hit_is_applied_and_acked_without_the_secondary() -> None:
    h = Harness(capacity=4, lookahead=1)
    h.connect()
    h.write(0, 4)
    h.settle()
    sent_before = len(h.to_s)
    op = h.write(16, 16)  # extent 1 was predicted: a hit
    assert h.primary.statistics().record_hits == 1
    assert len(h.to_s) == sent_before + 1
    h.complete_apply()
    assert h.acks[op] == 0  # answered with the frame still undelivered
    assert h.s_img[16:32] == bytes(16)
    h.settle()
    h.check_quiescent()


def test_miss_applies_in_order_behind_a_pending_miss_and_hit_waits_behind_it() -> None:
    h = Harness(capacity=6, lookahead=0)
    h.connect()
    first = h.write(0, 16)  # miss on extent 0
    second = h.write(8, 16)  # touches 0 (pending) and 1: another miss
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    h.deliver_to_primary()
    assert [a.seq for a in h.applies] == [h.op_seq[first]]  # the second waits for the first
    h.complete_apply()
    assert [a.seq for a in h.applies] == [h.op_seq[second]]
    h.complete_apply()
    assert set(h.acks) == {first, second}
    h.settle()
    h.check_quiescent()


def test_sync_mode_acks_only_after_durable() -> None:
    h = Harness(mode=Mode.SYNC, capacity=4, lookahead=1)
    h.connect()
    miss = h.write(0, 8)
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    h.deliver_to_primary()
    h.complete_apply()
    assert miss not in h.acks  # ADDED arrived and it is applied, but not durable there yet
    assert h.data_syncs
    h.data_sync_done()
    h.deliver_to_primary()
    assert h.acks == {miss: 0}
    hit = h.write(16, 4)
    h.complete_apply()  # a sync-mode hit applies at once...
    assert hit not in h.acks  # ...but is answered only once durable there
    h.deliver_to_secondary()
    h.data_sync_done()
    h.deliver_to_primary()
    assert h.acks[hit] == 0
    h.settle()
    h.check_quiescent()


def test_sync_mode_hit_durable_before_local_apply_is_applied_once() -> None:
    h = Harness(mode=Mode.SYNC, capacity=4, lookahead=1)
    h.connect()
    h.write(0, 8)
    h.settle()
    hit = h.write(16, 4)
    assert len(h.applies) == 1
    h.deliver_to_secondary()
    h.data_sync_done()
    h.deliver_to_primary()  # DURABLE arrives while the local apply is still in progress
    assert len(h.applies) == 1
    h.complete_apply()
    assert h.acks[hit] == 0
    h.settle()
    h.check_quiescent()


def test_full_record_evicts_only_after_both_sites_are_durable() -> None:
    h = Harness(capacity=2, lookahead=0)
    h.connect()
    h.write(0, 4)  # extent 0
    h.write(16, 4)  # extent 1: the record is full
    while h.run_io():
        pass
    assert len(h.acks) == 2 and not h.flushes and not h.data_syncs
    assert h.primary.record.extents() == [0, 1]
    waiting = h.write(32, 4)  # extent 2 needs an eviction, nothing is durable yet
    assert waiting not in h.acks
    assert h.primary.statistics().record_misses == 2
    # The miss waits and asks both sites for durability.
    assert any(isinstance(m, wire.Sync) for m in h.peek_to_secondary())
    assert h.flushes
    h.flush_done()  # local durability alone is not enough
    assert h.primary.statistics().record_misses == 2
    h.deliver_to_secondary()
    h.data_sync_done()
    h.deliver_to_primary()
    assert h.primary.statistics().record_misses == 3
    assert h.evicted == [0]
    h.settle()
    h.check_quiescent()
    assert h.primary.record.extents() == [1, 2]


def _run_all_but_syncs(h: Harness) -> None:
    while h.applies or h.commits or h.commit_start() or h.deliver_to_secondary() or h.deliver_to_primary():
        while h.applies:
            h.complete_apply()
        while h.commits:
            h.commit_done()


def test_free_slots_are_kept_ready_once_misses_wait_for_room() -> None:
    """Issue 14 (free_slots.py): a record whose misses never waited for room keeps no slot free;
    once one did, the primary evicts clean extents ahead of need as soon as the watermark moves
    (low mark capacity // 16, high mark capacity // 8), and the secondary hears of them with the
    next MISS, ahead of its additions."""
    h = Harness(capacity=16, lookahead=0, extents=20)
    h.connect()
    for extent in range(16):
        h.write(extent * 16, 4)
    h.settle()
    stats = h.primary.statistics()
    assert stats.record_evicted_ahead == 0 and h.primary.record.free() == 0  # never paid for
    for extent in range(16):
        h.write(extent * 16 + 8, 4)  # hits: every extent dirty again
    _run_all_but_syncs(h)
    h.write(16 * 16, 4)  # no clean extent: waits for the watermark
    h.write(17 * 16, 4)
    assert h.primary.statistics().record_room_waits == 2
    h.settle()
    stats = h.primary.statistics()
    assert stats.record_evicted_ahead >= 2 and stats.record_misses == 18
    assert stats.record_room_waits == 2
    h.write(18 * 16, 4)  # a miss that finds a free slot and goes at once
    assert h.primary.statistics().record_room_waits == 2
    miss = next(m for m in h.peek_to_secondary() if isinstance(m, wire.Write))
    assert miss.flags & WriteFlag.MISS
    h.settle()
    assert not h.primary.removals_pending
    h.check_quiescent()


def test_a_full_record_with_nothing_clean_counts_a_room_wait() -> None:
    h = Harness(capacity=4, lookahead=0)
    h.connect()
    for extent in range(4):
        h.write(extent * 16, 4)
    _run_all_but_syncs(h)
    h.write(4 * 16, 4)  # nothing is durable on the secondary yet: no room
    assert h.primary.statistics().record_room_waits == 1
    h.settle()
    assert h.primary.statistics().record_misses == 5
    h.check_quiescent()


def test_a_waiting_miss_never_delays_a_hit_to_other_extents() -> None:
    """Issue 14: a miss that waits for room, then for its ADDED, holds back only later writes
    to its own extents; hits elsewhere are answered meanwhile."""
    h = Harness(capacity=4, lookahead=0)
    h.connect()
    for extent in range(4):
        h.write(extent * 16, 4)
    _run_all_but_syncs(h)
    miss = h.write(4 * 16, 4)  # no clean slot: waits for the watermark
    assert h.primary.statistics().record_room_waits == 1
    hit = h.write(1 * 16 + 8, 4)
    while h.applies:
        h.complete_apply()
    assert hit in h.acks and miss not in h.acks
    h.settle()  # the watermark makes room; the miss goes and is answered after its ADDED
    assert miss in h.acks
    h.check_quiescent()


def test_miss_does_not_evict_an_extent_it_writes() -> None:
    """A write touching a clean member and a new extent must evict some *other* extent: if it
    evicted its own member, the secondary would have to add back two extents on a budget of one."""
    h = Harness(capacity=3, lookahead=0)
    h.connect()
    h.write(0, 4)
    h.write(16, 4)
    h.write(32, 4)
    h.settle()
    assert h.primary.record.extents() == [0, 1, 2]
    h.write(12, 8)  # a hit on extents 0 and 1: both dirty until durable on both sites
    h.write(44, 8)  # extents 2 (clean, the only clean member) and 3 (new): a miss
    h.settle()
    assert 2 not in h.evicted
    assert h.evicted == [0]
    h.check_quiescent()


def test_generations_eviction_removes_a_whole_generation() -> None:
    h = Harness(capacity=4, lookahead=0, eviction=Eviction.GENERATIONS)
    h.primary.record.generation_size = 2
    h.connect()
    for extent in range(4):
        h.write(extent * 16, 4)
    h.settle()
    h.write(4 * 16, 4)
    h.settle()
    assert h.evicted == [0, 1]
    assert h.primary.record.extents() == [2, 3, 4]
    h.check_quiescent()


def test_big_zero_goes_as_a_range_and_is_done_after_flushes() -> None:
    h = Harness(capacity=4, lookahead=0, extents=40)
    h.connect()
    op = h.zero(0, 30 * 16)
    assert h.sent_ranges == 1
    assert h.applies == []
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    assert h.committed_state.ranges == {h.op_seq[op]: (0, 30 * 16)}
    h.settle()
    assert h.acks[op] == 0
    assert not h.secondary.state.ranges
    h.check_quiescent()


def test_fua_write_is_acked_after_a_local_flush() -> None:
    h = Harness(capacity=4, lookahead=1)
    h.connect()
    h.write(0, 4)
    h.settle()
    op = h.write(0, 4, fua=True)
    h.complete_apply()
    assert op not in h.acks
    assert h.flushes
    h.flush_done()
    assert h.acks[op] == 0
    h.settle()
    h.check_quiescent()


def test_window_backpressure_holds_writes_until_applied() -> None:
    h = Harness(capacity=8, lookahead=6, window_bytes=40)  # one slot stays free: no eviction ahead
    h.connect()
    h.write(0, 4)
    h.settle()
    h.write(0, 30)
    h.write(0, 30)  # over the window: not sent until APPLIED comes back
    assert len(h.op_queue) == 1
    h.deliver_to_secondary()
    h.deliver_to_primary()
    assert not h.op_queue
    h.settle()
    h.check_quiescent()


# -- a full disk ---------------------------------------------------------------------------------------


def _reconnect(h: Harness, reason: str) -> None:
    """The link drops (what the sites do after STORAGE_FAILED) and a new session starts."""
    # A disconnect settles every unanswered miss: out of sync (durably), then applied here;
    # and a sync-mode write still waiting for DURABLE is answered without it ("continue").
    h.added_delivered.update(h.miss_seqs | h.range_seqs)
    h.answered_without_secondary.update(range(1, h.primary.last_seq + 1))
    h.primary.disconnected(reason)
    h.to_s.clear()
    h.to_p.clear()
    h.s_decoder, h.p_decoder = FrameDecoder(), FrameDecoder()
    h.pump()
    h.secondary.session_reset()  # SecondarySite._take_over, for the new connection
    h.primary.connected()  # the WELCOME may wait for a journal commit: settle() completes it
    h.pump()


@pytest.mark.parametrize("fast", [False, True], ids=["write", "write_hit"])
def test_a_local_write_that_fails_is_out_of_sync_until_resynced(fast: bool) -> None:
    """The WRITE went to the secondary before the local write failed (5 bytes landed): the
    extent is out of sync, persisted, and not in sync until it is copied from here again."""
    h = _Recording(capacity=4, lookahead=1, fast=fast)
    h.connect()
    h.write(0, 4)
    h.settle()  # extents 0 and 1 are recorded
    h.p_full = 5
    op = h.write(16, 16)  # a hit on extent 1
    h.deliver_to_secondary()  # the secondary has all 16 bytes
    h.complete_apply()
    assert h.acks[op] == Errno.ENOSPC
    assert h.fast_hits == (1 if fast else 0)
    assert h.persisted_oos and 1 in h.persisted_oos[-1], "out of sync, persisted at once"
    resync = [m for m in h.sent if isinstance(m, wire.Write) and m.offset == 16
              and m.flags & WriteFlag.RESYNC]
    assert resync and resync[0].data[:5] == bytes(h.p_img[16:21]), "copied from here again"
    assert not h.primary.statistics().in_sync
    assert h.primary.statistics().local_write_errors == 1
    h.p_full = None
    h.settle()
    h.check_quiescent()  # identical again: the half-written extent was copied from here
    assert h.primary.statistics().in_sync and not h.primary.out_of_sync
    assert h.resync_seqs


def test_a_local_write_that_fails_with_the_link_down_resyncs_on_connect() -> None:
    h = Harness(capacity=4, lookahead=1, fast=False)
    h.connect()
    h.write(0, 4)
    h.settle()
    h.primary.disconnected("cut")
    h.to_s.clear()
    h.p_full = 0
    op = h.write(16, 16)  # covered by the record: no out-of-sync needed, until it fails
    h.complete_apply()
    assert h.acks[op] == Errno.ENOSPC and h.primary.out_of_sync == {1}
    assert h.persisted_oos[-1] == {1}
    h.op_queue.remove(op)  # never sent: the link was down
    h.p_full = None
    h.s_decoder = FrameDecoder()
    h.secondary.session_reset()
    h.connect()
    h.settle()
    # (not check_quiescent: a write made with the link down is neither a hit nor a miss)
    assert h.p_img == h.s_img and h.p_durable == h.s_durable == bytes(h.p_img)
    assert h.primary.statistics().in_sync and not h.primary.out_of_sync


def test_a_failed_local_range_stays_pending_there_until_resynced() -> None:
    h = Harness(capacity=4, lookahead=0, extents=40)
    h.connect()
    h.p_full = 0
    op = h.zero(0, 30 * 16)  # a RANGE: zeroed on the secondary, fails here
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    h.data_sync_done()
    h.deliver_to_primary()
    h.complete_apply()
    assert h.acks[op] == Errno.ENOSPC
    assert h.primary.out_of_sync == set(range(30))
    h.p_full = None
    h.settle()
    assert not h.secondary.state.ranges  # reported done only once the resync was durable
    h.check_quiescent()


def test_a_deliberately_ignored_local_failure_leaves_the_copies_apart() -> None:
    """Self-check of the test above: with the guard off, the harness sees the difference."""
    h = Harness(capacity=4, lookahead=1, faults=Faults(local_write_error_ignored=True))
    h.connect()
    h.write(0, 4)
    h.settle()
    h.p_full = 5
    h.write(16, 16)
    h.p_full = None
    h.settle()
    assert h.primary.statistics().in_sync
    with pytest.raises(AssertionError):
        h.check_quiescent()


@pytest.mark.parametrize("mode", [Mode.LOOKAHEAD, Mode.SYNC, Mode.ASYNC])
@pytest.mark.parametrize("fast", [False, True], ids=["receive", "write_now"])
def test_a_secondary_that_cannot_write_drops_the_link_and_recovers(mode: Mode, fast: bool) -> None:
    """The secondary's image is full: it tells the primary, which marks what is not durable
    there out of sync and treats the link as lost; once there is room a new session resyncs."""
    h = Harness(mode=mode, capacity=4, lookahead=1, fast=fast)
    h.connect()
    h.write(0, 4)
    h.settle()
    h.s_full = True
    h.write(16, 16)  # a hit in lookahead mode
    h.write(40, 4)  # a miss (extent 2), or another write
    h.settle_until_link_fails()
    assert h.closed_by_secondary and "could not write its image" in h.closed_by_secondary[0]
    assert h.link_failures == [h.primary.secondary_error]
    assert "No space" in h.primary.secondary_error or "no space" in h.primary.secondary_error
    assert h.primary.statistics().secondary_storage_errors == 1
    assert {1} <= h.primary.out_of_sync
    assert h.secondary.statistics().storage_errors >= 1
    _reconnect(h, h.link_failures[0])
    assert not h.primary.statistics().in_sync
    h.s_full = False
    h.settle()
    assert h.primary.link is pcore.LinkState.CONNECTED
    h.check_quiescent()
    assert h.primary.secondary_error == ""


def test_a_deliberately_ignored_secondary_failure_is_seen() -> None:
    h = Harness(capacity=4, lookahead=1, faults=Faults(secondary_write_error_ignored=True))
    h.connect()
    h.write(0, 4)
    h.settle()
    h.s_full = True
    h.write(16, 16)
    h.deliver_to_secondary()
    h.s_full = False
    h.settle()
    assert h.primary.statistics().in_sync  # the lie the guard prevents
    with pytest.raises(AssertionError):
        h.check_quiescent()


def test_secondary_storage_failure_acknowledges_nothing_more() -> None:
    core = SecondaryCore(160, 16, 1, VOLUME, RecordState())
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    core.receive(wire.Write(1, 16, int(WriteFlag.MISS), 2, (), b"a" * 16))  # adds 1 and 2
    core.receive(wire.Write(2, 0, 0, 0, (0,), b"b"))  # removes extent 0 (not there): no append
    core.receive(wire.Write(3, 40, int(WriteFlag.MISS), 1, (), b"c"))  # extent 2; adds 3
    first = core.actions()
    assert [type(a) for a in first] == [score.JournalAppend, score.JournalAppend]
    core.journal_synced(1)  # only the first add is durable: the first write and its ADDED go out
    released = core.actions()
    assert [type(a) for a in released] == [score.WriteData, score.Send, score.WriteData]
    # The first write fails: its ADDED and the next write are not carried out.
    core.storage_failed(wire.StorageArea.IMAGE, 28, "write at 16 failed", released)
    assert core.actions() == [
        score.Send(wire.StorageFailed(wire.StorageArea.IMAGE, 28, "write at 16 failed")),
        score.CloseLink("could not write its image: write at 16 failed")]
    core.journal_synced(2)  # the second add commits later: nothing waits for it any more
    assert core.actions() == []
    core.receive(wire.Write(4, 0, 0, 0, (), b"d"))  # ignored until the next session
    core.receive(wire.Sync(4))
    assert not core.write_now(wire.Write(5, 0, 0, 0, (), b"e"))
    core.end_of_batch()
    core.request_durable()
    for action in core.actions():
        assert not isinstance(action, score.Send), f"{action} sent after the failure"
    core.session_reset()
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    (welcome,) = [a.message for a in core.actions() if isinstance(a, score.Send)]
    assert isinstance(welcome, wire.Welcome)
    assert welcome.record == (1, 2, 3)  # the adds stay: the record only widens
    assert welcome.stale == (0, 1, 2)  # the failed write (1) and the two dropped ones (0, 2)
    core.receive(wire.ResyncDone(9))
    assert not core.failed_extents


def test_secondary_storage_failure_keeps_its_journal_appends() -> None:
    """Record changes already made in memory must still reach the journal: a commit that
    covers their count would otherwise claim them durable."""
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState())
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    core.receive(wire.Write(1, 0, int(WriteFlag.MISS), 1, (), b"a"))
    (append,) = core.actions()
    core.storage_failed(wire.StorageArea.METADATA, 28, "site.json", [append])
    assert core.actions()[0] == append


def test_secondary_storage_failure_saves_again_only_undo_not_yet_durable() -> None:
    """During a protected resync each extent's old content is saved once. After a failure the
    saves a commit covered stay (or every retry would save the pass again and fill the meta
    disk); one no commit covered may be lost, so its extent is saved again."""
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState({0, 1}))
    core.session_started(score.SessionFacts(protect_image=True))
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    resync = int(WriteFlag.RESYNC)
    core.receive(wire.Write(1, 0, resync, 0, (), b"a" * 16))
    assert score.SaveUndo(0) in core.actions()
    core.journal_synced(core.journal_target())  # extent 0's old content is durable
    core.actions()
    core.receive(wire.Write(2, 16, resync, 0, (), b"b" * 16))
    assert score.SaveUndo(1) in core.actions()  # not committed yet
    core.storage_failed(wire.StorageArea.UNDO, 28, "undo log full")
    core.actions()
    core.session_reset()
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.journal_synced(core.journal_target())
    core.actions()
    core.receive(wire.Write(3, 0, resync, 0, (), b"c" * 16))
    core.receive(wire.Write(4, 16, resync, 0, (), b"d" * 16))
    saves = [a for a in core.actions() if isinstance(a, score.SaveUndo)]
    assert saves == [score.SaveUndo(1)]


def test_a_pass_saves_old_content_only_after_an_earlier_write_to_it_landed() -> None:
    """A write from before the pass that still waits for a commit (here a miss's ADD) must land
    before the pass saves its extent's old content: a save read at once missed it, and the
    rollback took that write back too (the image no prefix of the primary's; in sync mode an
    acknowledged write lost). The save waits in order, and the resync write for its commit."""
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState())
    core.session_started(score.SessionFacts(protect_image=True))
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    core.receive(wire.Write(1, 0, int(WriteFlag.MISS), 1, (), b"w" * 16))  # waits for its ADD
    core.receive(wire.ResyncSet(1, ((0, 2),)))
    core.receive(wire.Write(2, 0, int(WriteFlag.RESYNC), 0, (), b"r" * 16))
    core.receive(wire.Write(3, 16, int(WriteFlag.RESYNC), 0, (), b"s" * 16))
    taken = core.actions()
    assert score.SaveUndo(0) not in taken  # not before seq 1's data is in the image
    assert score.SaveUndo(1) in taken  # nothing earlier writes to extent 1: saved at once
    core.journal_synced(core.journal_target())  # covers the ADD and the set, not the save
    taken = core.actions()
    landed = [a for a in taken if isinstance(a, score.WriteData | score.SaveUndo)]
    assert landed == [score.WriteData(0, b"w" * 16, 1), score.SaveUndo(0)]
    assert core.needs_journal_sync()
    core.journal_synced(core.journal_target())  # now the save is durable
    landed = [a for a in core.actions() if isinstance(a, score.WriteData)]
    assert landed == [score.WriteData(0, b"r" * 16, 2), score.WriteData(16, b"s" * 16, 3)]
    assert not core.needs_journal_sync()


def test_a_new_session_drops_the_old_ones_verify_hashing() -> None:
    """Issue 13 (found by the simulator's verify): a VERIFY waiting behind a journal commit was
    still hashed after the link came back, and its HASHES reached the new connection, whose
    primary had never asked (RemoteProtocolError, the link failed). Image effects stay."""
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState())
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    core.receive(wire.Write(1, 0, int(WriteFlag.MISS), 1, (), b"a"))  # waits for its commit
    core.receive(wire.Verify(7, 0, 2))  # in order behind it
    core.actions()
    core.session_reset()
    core.journal_synced(core.journal_target())
    released = core.actions()
    assert any(isinstance(a, score.WriteData) for a in released)
    assert not any(isinstance(a, score.HashExtents) for a in released), released


def test_secondary_sync_failure_does_not_wedge_the_watermark() -> None:
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState())
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    assert core.write_now(wire.Write(1, 0, 0, 0, (), b"a"))
    core.request_durable()
    write, sync = core.actions()  # the held write first: the sync must cover it
    assert write == score.WriteData(0, b"a", 1) and sync == score.SyncData(1)
    core.storage_failed(wire.StorageArea.IMAGE, 5, "fdatasync failed", [sync])
    core.actions()
    core.session_reset()
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    assert core.write_now(wire.Write(2, 0, 0, 0, (), b"b"))
    core.request_durable()
    assert score.SyncData(2) in core.actions()  # a new sync starts: nothing still "in flight"


# -- random schedules ------------------------------------------------------------------------------

WRITE = st.tuples(st.just("write"), st.integers(0, 12 * 16), st.integers(0, 40),
                  st.booleans() | st.just(False))
STEP = st.one_of(
    WRITE, WRITE, WRITE, WRITE,
    st.tuples(st.just("zero"), st.integers(0, 12 * 16), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("zero"), st.integers(0, 12 * 16), st.integers(0, 12 * 16), st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("to_secondary"), st.integers(1, 4)),
    st.tuples(st.just("to_primary"), st.integers(1, 4)),
    st.tuples(st.just("apply"), st.integers(0, 3)),
    st.tuples(st.just("flush_done")),
    st.tuples(st.just("data_sync_done")),
    st.tuples(st.just("commit_start")),
    st.tuples(st.just("commit_done")),
    st.tuples(st.just("timer")),
    st.tuples(st.just("io")),
)


def host_step(h: Harness, step: tuple[object, ...]) -> bool:
    """Make a host op (write, zero, flush), its range clipped to the volume; False for any other
    step (shared with test_write_groups.py)."""
    match step:
        case ("write", int(offset), int(length), bool(fua)):
            offset = min(offset, h.size - 1)
            h.write(offset, min(length, h.size - offset), fua)
        case ("zero", int(offset), int(length), bool(punch)):
            offset = min(offset, h.size - 1)
            h.zero(offset, min(length, h.size - offset), punch)
        case ("flush",):
            h.host_flush()
        case _:
            return False
    return True


def _run(h: Harness, steps: list[tuple[object, ...]]) -> None:
    h.connect()
    for step in steps:
        if host_step(h, step):
            continue
        match step:
            case ("to_secondary", int(count)):
                h.deliver_to_secondary(count)
            case ("to_primary", int(count)):
                h.deliver_to_primary(count)
            case ("apply", int(index)):
                h.complete_apply(index)
            case ("flush_done",):
                h.flush_done()
            case ("data_sync_done",):
                h.data_sync_done()
            case ("commit_start",):
                h.commit_start()
            case ("commit_done",):
                h.commit_done()
            case ("timer",):
                h.timer()
            case ("io",):
                h.run_io()
    h.settle()
    h.check_quiescent()


@given(mode=st.sampled_from([Mode.LOOKAHEAD, Mode.SYNC]),
       eviction=st.sampled_from(Eviction),
       capacity=st.integers(4, 7),
       lookahead=st.integers(0, 3),
       fast=st.booleans(),
       predictor=st.sampled_from(["next", "history"]),
       steps=st.lists(STEP, min_size=20, max_size=80))
@settings(max_examples=200, deadline=None)
def test_random_schedules(mode: Mode, eviction: Eviction, capacity: int, lookahead: int, fast: bool,
                          predictor: str, steps: list[tuple[object, ...]]) -> None:
    _run(Harness(mode=mode, eviction=eviction, capacity=capacity, lookahead=lookahead, fast=fast,
                 predictor=predictor), steps)


class _Recording(Harness):
    """A harness that also keeps every frame the primary sent, decoded."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sent: list[wire.Message] = []

    def send(self, message: wire.Message) -> None:
        self.sent.append(message)
        super().send(message)


HOST_OP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 12 * 16), st.integers(1, 40), st.booleans()),
    st.tuples(st.just("write"), st.integers(0, 12 * 16), st.integers(1, 40), st.just(False)),
    st.tuples(st.just("zero"), st.integers(0, 12 * 16), st.integers(1, 40), st.booleans()),
    st.tuples(st.just("flush")),
)


@given(mode=st.sampled_from(Mode), lookahead=st.integers(0, 3), ops=st.lists(HOST_OP, min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_the_hot_paths_change_nothing_but_the_cost(mode: Mode, lookahead: int,
                                                    ops: list[tuple[object, ...]]) -> None:
    """``PrimaryCore.write_hit`` and ``SecondaryCore.write_now`` against ``write()`` and
    ``receive()``: with every I/O completed at once, the same host ops give the same frames, in
    the same order, the same images and the same statistics on both sites."""
    runs = []
    for fast in (False, True):
        h = _Recording(mode=mode, capacity=5, lookahead=lookahead, auto=True, fast=fast)
        _run(h, ops)
        runs.append(h)
    slow, fast_run = runs
    assert fast_run.sent == slow.sent
    assert fast_run.p_img == slow.p_img and fast_run.s_img == slow.s_img
    assert fast_run.primary.statistics() == slow.primary.statistics()
    assert fast_run.secondary.statistics() == slow.secondary.statistics()
    assert slow.fast_hits == slow.fast_applies == 0


def test_the_hot_paths_are_taken_for_plain_hits() -> None:
    h = Harness(capacity=4, lookahead=2, auto=True)
    h.connect()
    h.write(0, 4)  # a miss: extents 0..2 recorded
    h.settle()
    assert h.fast_hits == 0
    h.write(20, 8)
    h.write(40, 8)
    h.settle()
    assert h.fast_hits == 2 and h.fast_applies == 2
    h.check_quiescent()


def test_host_writes_tell_the_streams_policy_where_they_start_and_end() -> None:
    # Both routes of a host write (the hot path and the op path) give the record their byte
    # range, so the default policy sees a stream pass extent 0 (record/streams.py).
    for fast in (True, False):
        h = Harness(eviction=Eviction.STREAMS, capacity=4, lookahead=2, auto=True, fast=fast)
        h.connect()
        h.write(0, 16)  # a miss: extents 0..2 recorded
        h.settle()
        policy = h.primary.record._streams
        assert policy is not None and policy._streams.passed_total == 0
        h.write(16, 8)  # starts where the last write ended: the stream left extent 0
        h.settle()
        assert policy._streams.passed_total == 1, fast
        h.write(40, 4)  # continues nothing
        h.settle()
        assert policy._streams.passed_total == 1
        h.check_quiescent()


def test_write_hit_declines_what_it_cannot_finish_at_once() -> None:
    h = Harness(capacity=4, lookahead=1)
    core = h.primary
    assert core.write_hit(0, b"x") is None  # not connected yet
    h.connect()
    assert core.write_hit(0, b"x") is None  # a miss: extent 0 is not in the record
    h.write(0, 4)
    h.settle()  # extents 0 and 1 are recorded
    h.write(4, 4, fua=True)  # FUA never takes the hot path; its ApplyLocal waits in the harness
    assert core.write_hit(8, b"y") is None  # an earlier write to extent 0 has not landed yet
    h.settle()
    h.write(40, 4)  # a miss on extent 2, waiting for its ADDED
    assert core.write_hit(17, b"z") is not None  # extent 1 is free of it: a hit goes ahead
    small = Harness(capacity=4, lookahead=1, window_bytes=8)
    small.connect()
    small.write(0, 4)
    small.settle()
    assert small.primary.write_hit(4, b"12345") is not None  # the window was empty
    assert small.primary.write_hit(20, b"1234") is None  # 5 + 4 bytes: over the 8-byte window
    sync = Harness(mode=Mode.SYNC, capacity=4, lookahead=1)
    sync.connect()
    sync.write(0, 4)
    sync.settle()
    assert sync.primary.write_hit(4, b"x") is None  # sync mode waits for DURABLE


def test_write_hit_leaves_a_due_read_ahead_to_write() -> None:
    h = Harness(capacity=8, lookahead=4, extents=12)
    h.connect()
    h.write(0, 16)  # a miss: extents 0..4
    h.settle()
    h.write(16, 16)  # sequential, extent 1: the record covers the 3 extents after it
    assert h.fast_hits == 1
    h.settle()
    before = h.primary.statistics().record_read_aheads
    assert h.primary.write_hit(32, b"s" * 16) is None  # extent 2: extent 5 is not recorded
    assert h.primary.statistics().record_read_aheads == before
    h.write(32, 16)  # so write() sends it as a read-ahead
    assert h.primary.statistics().record_read_aheads == before + 1
    assert h.fast_hits == 1
    h.settle()
    h.check_quiescent()


def test_write_now_declines_what_must_wait_or_journal() -> None:
    core = SecondaryCore(160, 16, 1, VOLUME, RecordState())
    plain = wire.Write(1, 0, 0, 0, (), b"a")
    assert core.write_now(plain)
    assert core.statistics().applied_seq == 0  # held (write_runs.py): not applied yet
    assert core.actions() == [score.WriteData(0, b"a", 1)]
    assert core.statistics().applied_seq == 1
    assert not core.write_now(wire.Write(2, 16, int(WriteFlag.MISS), 2, (), b"b"))  # journals an add
    assert not core.write_now(wire.Write(2, 16, 0, 0, (0,), b"b"))  # a removal to journal
    core.receive(wire.Write(2, 16, int(WriteFlag.MISS), 2, (), b"b"))
    assert not core.write_now(wire.Write(3, 0, 0, 0, (), b"c"))  # must not overtake the miss
    with pytest.raises(RemoteProtocolError, match="outside"):
        SecondaryCore(160, 16, 1, VOLUME, RecordState()).write_now(wire.Write(1, 159, 0, 0, (), b"ab"))


@given(steps=st.lists(STEP, min_size=10, max_size=40))
@settings(max_examples=40, deadline=None)
def test_random_schedules_async(steps: list[tuple[object, ...]]) -> None:
    _run(Harness(mode=Mode.ASYNC, capacity=4, lookahead=1), steps)


@pytest.mark.parametrize("mode", [Mode.LOOKAHEAD, Mode.SYNC])
def test_every_write_everywhere_converges(mode: Mode) -> None:
    h = Harness(mode=mode, capacity=4, lookahead=1, auto=True)
    h.connect()
    for extent in range(h.extents):
        offset = extent * 16 + 3
        h.write(offset, min(20, h.size - offset))
    h.zero(5, 40)
    h.settle()
    h.check_quiescent()
    assert h.primary.statistics().record_misses >= h.extents // 2


def _tricky_schedule(h: Harness) -> None:
    h.connect()
    h.write(0, 4)  # a miss on extent 0
    h.run_io()  # ADDED is back; its local apply is still in progress
    h.write(8, 16)  # a miss on extents 0 and 1, queued behind it on extent 0
    h.complete_apply()
    h.write(32, 4)  # needs an eviction
    h.settle()


def test_tricky_schedule_passes_without_faults() -> None:
    h = Harness(capacity=2, lookahead=0)
    _tricky_schedule(h)
    h.check_quiescent()
    # Exactly one extent had to go to make room (which one depends on start order; the harness
    # checked that it was durable on both sites when it went).
    assert len(h.evicted) == 1


@pytest.mark.parametrize(("faults", "symptom"), [
    (Faults(evict_ignores_watermark=True), "evicted"),
    (Faults(ack_miss_before_durable=True), "not in the durable record"),
    (Faults(apply_miss_before_ack=True), "applied locally before ADDED"),
], ids=["evict_ignores_watermark", "ack_miss_before_durable", "apply_miss_before_ack"])
def test_the_checks_see_each_deliberate_bug(faults: Faults, symptom: str) -> None:
    """Self-check: with one rule deliberately broken, the same schedule trips the check that
    guards that rule."""
    with pytest.raises(AssertionError, match=symptom):
        _tricky_schedule(Harness(capacity=2, lookahead=0, faults=faults))


# -- each core alone: protocol edges -----------------------------------------------------------------


def _secondary(size: int = 160, lookahead: int = 2) -> SecondaryCore:
    return SecondaryCore(size, 16, lookahead, VOLUME, RecordState({9}, {7: (0, 32)}))


def test_secondary_welcomes_a_matching_hello_with_its_record() -> None:
    core = _secondary()
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    # The applied seq reported is at least the pending range's seq (7): the primary numbers on
    # from it, so no new op can reuse seq 7 and be mistaken for that range.
    assert core.actions() == [score.Send(wire.Welcome(VOLUME, 1, 7, (9,), ((7, 0, 32),)))]
    assert core.greeted


@pytest.mark.parametrize(("hello", "reason"), [
    (wire.Hello(99, 0, 0, VOLUME, 160, 16, 1), "protocol version"),
    (wire.Hello(1, 0, 0, bytes(16), 160, 16, 1), "volume identity"),
    (wire.Hello(1, 0, 0, VOLUME, 161, 16, 1), "volume size"),
    (wire.Hello(1, 0, 0, VOLUME, 160, 32, 1), "extent size"),
])
def test_secondary_refuses_a_mismatched_hello(hello: wire.Hello, reason: str) -> None:
    core = _secondary()
    core.receive(hello)
    [action] = core.actions()
    assert isinstance(action, score.Send) and isinstance(action.message, wire.Refuse)
    assert reason in action.message.reason
    assert not core.greeted


def test_secondary_miss_adds_touched_then_predicted_within_budget() -> None:
    core = _secondary(lookahead=5)
    core.receive(wire.Write(1, 136, WriteFlag.MISS, 2, (), b"x" * 8))  # extent 8, then 9 is there
    entries = [a.entry for a in core.actions() if isinstance(a, score.JournalAppend)]
    assert entries == [jfmt.encode_add([8])]  # budget 2: 8, and 9 already present; 10 is past the end
    assert core.state.extents == {8, 9}
    core.journal_synced(1)
    assert score.Send(wire.Added(1, (8,))) in core.actions()


def test_secondary_refuses_a_miss_over_its_budget() -> None:
    core = _secondary()
    with pytest.raises(RemoteProtocolError, match="budget"):
        core.receive(wire.Write(1, 0, WriteFlag.MISS, 1, (), b"x" * 20))  # extents 0 and 1


def test_secondary_refuses_a_write_outside_the_volume() -> None:
    core = _secondary()
    with pytest.raises(RemoteProtocolError, match="outside"):
        core.receive(wire.Write(1, 150, 0, 0, (), b"x" * 11))
    with pytest.raises(RemoteProtocolError, match="outside"):
        core.receive(wire.Zero(1, 0, 161, 0, 0, ()))


def test_secondary_plain_write_never_overtakes_a_waiting_miss() -> None:
    core = _secondary()
    core.receive(wire.Write(1, 0, WriteFlag.MISS, 3, (), b"a"))
    core.receive(wire.Write(2, 144, 0, 0, (), b"b"))  # extent 9: a hit, depends on nothing new
    assert not any(isinstance(a, score.WriteData) for a in core.actions())
    core.request_durable()
    assert not any(isinstance(a, score.SyncData) for a in core.actions())  # nothing to cover yet
    core.journal_synced(1)
    actions = core.actions()
    writes = [a for a in actions if isinstance(a, score.WriteData)]
    assert [w.data for w in writes] == [b"a", b"b"]
    syncs = [a for a in actions if isinstance(a, score.SyncData)]
    assert syncs == [score.SyncData(2)]
    assert actions.index(syncs[0]) > actions.index(writes[1])  # the fdatasync comes after them


def test_secondary_watermark_stops_short_of_waiting_effects() -> None:
    core = _secondary()
    core.receive(wire.Write(1, 144, 0, 0, (), b"a"))
    core.receive(wire.Write(2, 0, WriteFlag.MISS, 3, (), b"b"))
    core.receive(wire.Sync(2))
    syncs = [a for a in core.actions() if isinstance(a, score.SyncData)]
    assert syncs == [score.SyncData(1)]
    core.data_synced(1)
    assert score.Send(wire.Durable(1)) in core.actions()
    core.journal_synced(1)
    assert score.SyncData(2) in core.actions()
    core.data_synced(2)
    assert score.Send(wire.Durable(2)) in core.actions()


def test_secondary_removals_are_journaled_without_a_commit() -> None:
    core = _secondary()
    core.receive(wire.Write(1, 0, 0, 0, (9, 4), b"a"))
    actions = core.actions()
    assert score.JournalAppend(jfmt.encode_remove([9])) in actions
    assert score.WriteData(0, b"a", 1) in actions  # not held back by the removal
    assert core.state.extents == set()


def test_secondary_range_is_answered_once_durable_and_done_on_remove() -> None:
    core = _secondary()
    core.receive(wire.Zero(3, 32, 64, WriteFlag.RANGE | WriteFlag.PUNCH, 0, ()))
    assert core.state.ranges == {7: (0, 32), 3: (32, 64)}
    actions = core.actions()
    assert score.JournalAppend(jfmt.encode_range(3, 32, 64)) in actions
    # A sync may start at once, but it stops short of the range: it is not applied yet.
    assert all(a.through < 3 for a in actions if isinstance(a, score.SyncData))
    core.journal_synced(1)
    assert core.actions() == [score.ZeroData(32, 64, True, 3)]
    core.data_synced(2)
    actions = core.actions()
    assert score.SyncData(3) in actions
    assert not any(isinstance(a, score.Send) and isinstance(a.message, wire.Added) for a in actions)
    core.data_synced(3)
    assert score.Send(wire.Added(3, ())) in core.actions()
    core.receive(wire.Remove((), (3, 7, 99)))
    assert core.state.ranges == {}
    entries = [a.entry for a in core.actions() if isinstance(a, score.JournalAppend)]
    assert entries == [jfmt.encode_range_done(3), jfmt.encode_range_done(7)]


def _early_ranges_secondary(faults: Faults = NO_FAULTS) -> SecondaryCore:
    core = SecondaryCore(160, 16, 2, VOLUME, RecordState({9}, {7: (0, 32)}), faults=faults)
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, wire.HelloFlag.EARLY_RANGES,
                            VOLUME, 160, 16, 1))
    core.actions()
    return core


def test_secondary_answers_a_range_once_journaled_when_the_primary_takes_it_early() -> None:
    """Issue 14: build's 128 MiB trims were zeroed here, made durable, then zeroed on the primary:
    both sites one after the other. Now ADDED goes once the range is journaled, ahead of the
    zeroing, and the range leaves the journal only once its zeroing is durable here too."""
    core = _early_ranges_secondary()
    core.receive(wire.Zero(3, 32, 64, WriteFlag.RANGE | WriteFlag.PUNCH, 0, ()))
    assert not any(isinstance(a, score.Send) for a in core.actions())  # not before the commit
    core.journal_synced(core.journal_target())
    assert core.actions()[:2] == [score.Send(wire.Added(3, ())), score.ZeroData(32, 64, True, 3)]
    # The primary zeroed and flushed its copy and reports the range done: it stays pending here
    # until our zeroing is durable.
    core.receive(wire.Remove((), (3,)))
    assert core.state.ranges == {7: (0, 32), 3: (32, 64)}
    assert not [a for a in core.actions() if isinstance(a, score.JournalAppend)]
    core.data_synced(3)
    assert core.state.ranges == {7: (0, 32)}
    assert score.JournalAppend(jfmt.encode_range_done(3)) in core.actions()


def test_secondary_drops_a_range_reported_done_after_its_zeroing_is_durable_at_once() -> None:
    core = _early_ranges_secondary()
    core.receive(wire.Zero(3, 32, 64, WriteFlag.RANGE, 0, ()))
    core.journal_synced(core.journal_target())
    core.data_synced(3)
    core.actions()
    core.receive(wire.Remove((), (3, 7)))
    assert core.state.ranges == {}
    entries = [a.entry for a in core.actions() if isinstance(a, score.JournalAppend)]
    assert entries == [jfmt.encode_range_done(3), jfmt.encode_range_done(7)]


def test_secondary_answers_a_sync_mode_range_only_once_durable() -> None:
    core = _early_ranges_secondary()
    core.receive(wire.Zero(3, 32, 64, WriteFlag.RANGE | WriteFlag.DURABLE, 0, ()))
    core.journal_synced(core.journal_target())
    actions = core.actions()
    assert score.ZeroData(32, 64, False, 3) in actions
    assert not any(isinstance(a, score.Send) and isinstance(a.message, wire.Added) for a in actions)
    core.data_synced(3)
    assert score.Send(wire.Added(3, ())) in core.actions()


def test_secondary_fault_range_done_before_zero_durable_drops_it_at_once() -> None:
    core = _early_ranges_secondary(Faults(range_done_before_zero_durable=True))
    core.receive(wire.Zero(3, 32, 64, WriteFlag.RANGE, 0, ()))
    core.journal_synced(core.journal_target())
    core.receive(wire.Remove((), (3,)))
    assert 3 not in core.state.ranges


def test_primary_offers_early_ranges_in_its_hello() -> None:
    core = PrimaryCore(Config(Mode.LOOKAHEAD, 160, 16, 4, 1, Eviction.LRU, VOLUME),
                       lambda offset, length: bytes(length))
    core.connected()
    hellos = [a.message for a in core.actions() if isinstance(a, pcore.Send) and isinstance(a.message, wire.Hello)]
    assert hellos and hellos[0].flags & wire.HelloFlag.EARLY_RANGES


def test_primary_offers_early_ranges_and_a_sync_mode_range_waits_for_durable_too() -> None:
    h = Harness(capacity=4, lookahead=0, extents=40, mode=Mode.SYNC)
    h.connect()
    op = h.zero(0, 30 * 16)
    ranges = [m for m in h.peek_to_secondary() if isinstance(m, wire.Zero) and m.flags & WriteFlag.RANGE]
    assert ranges and ranges[-1].flags & WriteFlag.DURABLE
    h.settle()
    assert h.acks[op] == 0
    assert not h.secondary.state.ranges
    h.check_quiescent()


@pytest.mark.parametrize("message", [wire.Added(1, ()), wire.Applied(1), wire.Durable(1),
                                     wire.Welcome(VOLUME, 1, 0, ())])
def test_secondary_rejects_primary_bound_messages(message: wire.Message) -> None:
    with pytest.raises(RemoteProtocolError):
        _secondary().receive(message)


def _connected_primary(faults: Faults = NO_FAULTS) -> PrimaryCore:
    config = Config(Mode.LOOKAHEAD, 160, 16, 4, 1, Eviction.LRU, VOLUME, faults=faults)
    core = PrimaryCore(config, lambda offset, length: bytes(length))
    core.connected()
    core.receive(wire.Welcome(VOLUME, 1, 0, ()))
    for action in core.actions():  # the (empty) pass ends at the secondary's answer (issue 25)
        if isinstance(action, pcore.Send) and isinstance(action.message, wire.ResyncDone):
            core.receive(wire.ResyncDoneAck(action.message.seq))
    core.actions()
    return core


@pytest.mark.parametrize("message", [wire.Write(1, 0, 0, 0, (), b""), wire.Sync(1),
                                     wire.Remove(()), wire.Hello(1, 0, 0, VOLUME, 160, 16, 1)])
def test_primary_rejects_secondary_bound_messages(message: wire.Message) -> None:
    with pytest.raises(RemoteProtocolError):
        _connected_primary().receive(message)


def test_primary_link_error_refuses_every_input_until_disconnected() -> None:
    core = _connected_primary()
    with pytest.raises(RemoteProtocolError, match="not a pending miss"):
        core.receive(wire.Added(7, (0,)))
    assert core.link is pcore.LinkState.ERROR and "not a pending miss" in core.link_error
    assert core.statistics().link == "error" and not core.statistics().in_sync
    with pytest.raises(RemoteProtocolError, match="ERROR"):
        core.receive(wire.Applied(0))  # refused, even a well-formed one
    with pytest.raises(LocalProtocolError):
        core.connected()  # reset first
    core.write(1, 0, b"x", False)  # goes as with the link down: recorded, applied here
    assert not [a for a in core.actions() if isinstance(a, pcore.Send)]
    core.disconnected("closed after the protocol error")
    assert core.link is pcore.LinkState.DISCONNECTED
    core.connected()
    core.receive(wire.Welcome(VOLUME, 1, 0, ()))
    assert core.link is pcore.LinkState.CONNECTED


def test_primary_rejects_added_for_no_pending_miss_or_over_budget() -> None:
    core = _connected_primary()
    with pytest.raises(RemoteProtocolError, match="not a pending miss"):
        core.receive(wire.Added(1, (0,)))
    core = _connected_primary()  # the first one is in ERROR now (test_primary_link_error_...)
    core.write(1, 0, b"x", False)
    [send] = [a for a in core.actions() if isinstance(a, pcore.Send)]
    assert isinstance(send.message, wire.Write) and send.message.budget == 2
    with pytest.raises(RemoteProtocolError, match="budget"):
        core.receive(wire.Added(send.message.seq, (0, 1, 2)))


def test_primary_refused_fails_the_link() -> None:
    config = Config(Mode.LOOKAHEAD, 160, 16, 4, 1, Eviction.LRU, VOLUME)
    core = PrimaryCore(config, lambda offset, length: bytes(length))
    core.connected()
    core.actions()
    core.receive(wire.Refuse("volume size differs"))
    assert core.actions() == [pcore.LinkFailed("peer refused us: volume size differs")]
    assert core.link is not pcore.LinkState.CONNECTED


def test_primary_rejects_ops_outside_the_volume() -> None:
    core = _connected_primary()
    with pytest.raises(LocalProtocolError):
        core.write(1, 150, b"x" * 11, False)
    with pytest.raises(LocalProtocolError):
        core.zero(2, -1, 2, False, False)


def test_a_bad_added_for_a_read_ahead_leaks_nothing() -> None:
    """An ADDED over a read-ahead's budget fails the link, but the reservation and the expected
    extents are released first: after reconnecting, a write to those extents goes through."""
    h = Harness(capacity=8, lookahead=2)
    h.connect()
    h.write(0, 16)
    h.settle()
    h.write(16, 8)  # read-ahead for extent 3 in flight
    seq = max(h.read_ahead_seqs)
    with pytest.raises(RemoteProtocolError, match="budget"):
        h.primary.receive(wire.Added(seq, (3, 4, 5)))
    h.primary.disconnected("bad ADDED")
    assert h.primary.record.reserved == 0 and not h.primary._pending_adds


def test_a_write_waiting_for_an_add_that_never_comes_fails_in_time() -> None:
    h = Harness(capacity=8, lookahead=2, allow_failures=True)
    h.connect()
    h.primary.tick(1.0)
    h.write(0, 16)  # a miss expected to add extents 0-2; its ADDED is never delivered
    waiting = h.write(40, 4)  # extent 2: waits for that ADDED instead of missing again
    h.pump()
    assert waiting not in h.acks
    h.primary.tick(1.0 + h.primary.config.miss_wait_s + 1)
    h.pump()
    assert h.acks[waiting] == Errno.EIO


def test_a_write_behind_another_misss_add_goes_on_that_added_and_is_counted() -> None:
    h = Harness(capacity=8, lookahead=2)
    h.connect()
    miss = h.write(0, 16)  # a miss expected to add extents 0-2
    behind = h.write(40, 4)  # extent 2: waits for that ADDED instead of missing again
    h.pump()
    h.deliver_to_secondary()
    assert behind not in h.acks and not h.to_s  # nothing of it went yet
    h.commit_start()
    h.commit_done()
    h.deliver_to_primary()
    # It goes in the same step as the ADDED, with no round trip of its own: a plain write.
    assert len(h.to_s) == 1
    stats = h.primary.statistics()
    assert (stats.record_misses, stats.record_hits) == (1, 1)
    assert stats.record_add_waits == stats.record_writes_behind_add == 1
    h.settle()
    assert miss in h.acks and behind in h.acks
    h.check_quiescent()


def test_a_misss_time_is_split_into_queued_round_trip_and_the_waits_behind_its_add() -> None:
    """Issue 14: where a miss's time goes, summed in the statistics (the bench divides by
    record_misses_answered and compares with the link's RTT)."""
    h = Harness(capacity=2, lookahead=0)
    h.connect()
    h.primary.now = 10.0
    first = h.write(0, 4)  # extent 0: a miss, sent at once
    h.primary.now = 10.5
    behind = h.write(4, 4)  # extent 0 again: waits for the first miss's ADDED
    h.write(16, 4)  # extent 1: a second miss, sent at once: the record is full
    h.primary.now = 10.75
    waiting = h.write(32, 4)  # extent 2: no clean slot; waits for the watermark
    h.pump()
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    h.primary.now = 12.0
    h.deliver_to_primary()  # both ADDEDs: 2.0 s and 1.5 s after their MISSes
    stats = h.primary.statistics()
    assert stats.record_misses_answered == 2
    assert stats.record_miss_round_trip_s == 2.0 + 1.5
    assert stats.record_behind_add_waited_s == 12.0 - 10.5
    assert stats.record_miss_queued_s == 0.0 and waiting not in h.acks
    h.settle()  # the watermark passes extents 0 and 1: the third miss goes, all at 12.0
    assert first in h.acks and behind in h.acks and waiting in h.acks
    stats = h.primary.statistics()
    assert stats.record_miss_queued_s == 12.0 - 10.75, stats
    assert stats.record_misses_answered == 3 and stats.record_miss_round_trip_s == 2.0 + 1.5


def test_secondary_group_commit_covers_the_misses_that_arrived_while_one_ran() -> None:
    core = _secondary(lookahead=0)
    core.receive(wire.Write(1, 0, WriteFlag.MISS, 1, (), b"a"))
    target = core.journal_target()  # the adapter starts a commit of the first ADD
    core.actions()
    core.receive(wire.Write(2, 32, WriteFlag.MISS, 1, (), b"b"))  # both arrive while it runs
    core.receive(wire.Write(3, 64, WriteFlag.MISS, 1, (), b"c"))

    def added() -> list[int]:
        return [a.message.seq for a in core.actions()
                if isinstance(a, score.Send) and isinstance(a.message, wire.Added)]

    core.journal_synced(target)
    assert added() == [1]  # the later two are not durable yet
    assert core.journal_target() == 3
    core.journal_synced(core.journal_target())  # one commit for both
    assert added() == [2, 3]
    stats = core.statistics()
    assert (stats.misses_received, stats.journal_commits) == (3, 2)


def test_the_group_commit_bug_answers_added_before_its_entry_is_durable() -> None:
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState(),
                         faults=Faults(added_before_group_commit_durable=True))
    core.receive(wire.Write(1, 0, WriteFlag.MISS, 1, (), b"a"))
    target = core.journal_target()
    core.receive(wire.Write(2, 32, WriteFlag.MISS, 1, (), b"b"))
    core.journal_synced(target)
    assert score.Send(wire.Added(2, (2,))) in core.actions()


def test_full_sync_progress_counts_comparing_and_sending_apart() -> None:
    """Issue 17: a full sync compares checksums (a match sends nothing) and sends what differs.
    One rate from the sends, applied to every byte left, gave an ETA minutes long for a pass that
    ended in seconds; each phase now has its own totals and rate."""
    import xxhash

    extent = 16
    image = bytearray(160)
    image[0:16] = b"x" * 16  # extents 0 and 1 differ from the secondary's zeros
    image[16:32] = b"y" * 16
    config = Config(Mode.LOOKAHEAD, 160, extent, 4, 1, Eviction.LRU, VOLUME,
                    window_bytes=32)  # two extents in flight at most
    core = PrimaryCore(config, lambda offset, length: bytes(image[offset:offset + length]))
    core.connected()
    zero = xxhash.xxh3_64_intdigest(bytes(extent))
    core.receive(wire.Welcome(VOLUME, 1, 0, (), flags=wire.WelcomeFlag.NEW | wire.WelcomeFlag.CHECKSUMS))
    core.receive(wire.Checksums(0, (zero,) * 10))
    core.tick(2.0)
    core.actions()
    progress = core.resync_progress()
    assert progress.compare_total_bytes == 160
    assert progress.compare_done_bytes == 160  # the window held sends, not comparing
    assert progress.send_total_bytes == 32  # only the two that differ
    assert progress.send_done_bytes == 32
    assert progress.compare_rate_bytes_per_s == 80 and progress.send_rate_bytes_per_s == 16
    assert progress.total_bytes == 160 and progress.active


def test_verify_progress_reports_bytes_a_rate_and_offsets() -> None:
    """Issue 17: verify said only ``672/1024 extents``; it now reports bytes, a rate (so an ETA)
    and each mismatched extent's byte offset."""
    import xxhash

    core = _connected_primary()  # 10 extents of 16 bytes, all zero here
    core.tick(1.0)
    assert core.start_verify(repair=False)
    zero = xxhash.xxh3_64_intdigest(bytes(16))
    requests = [a.message for a in core.actions()
                if isinstance(a, pcore.Send) and isinstance(a.message, wire.Verify)]
    assert requests
    core.tick(3.0)
    first = requests[0]
    hashes = tuple(zero if e != 2 else zero + 1 for e in range(first.first, first.first + first.count))
    core.receive(wire.Hashes(first.request, first.first, hashes))
    mid = core.verify_progress()
    assert mid.total_bytes == 160 and mid.done_bytes == first.count * 16
    assert mid.rate_bytes_per_s == first.count * 16 // 2
    for request in requests[1:]:
        core.receive(wire.Hashes(request.request, request.first, (zero,) * request.count))
    core.actions()
    done = core.verify_progress()
    assert done.done_bytes == 160 and done.mismatched_extents == (2,)
    assert done.mismatched_offsets == (32,)


def _verify_with_a_difference(core: PrimaryCore, repair: bool, differing: int) -> list[object]:
    """Run a verify on ``_connected_primary`` whose secondary differs in one extent; its actions."""
    zero = xxhash.xxh3_64_intdigest(bytes(16))
    assert core.start_verify(repair=repair)
    seen: list[object] = []
    while True:
        actions = core.actions()
        seen += actions
        requests = [a.message for a in actions
                    if isinstance(a, pcore.Send) and isinstance(a.message, wire.Verify)]
        if not requests:
            return seen
        for r in requests:
            core.receive(wire.Hashes(r.request, r.first, tuple(
                zero + 1 if e == differing else zero for e in range(r.first, r.first + r.count))))


def test_a_verify_without_repair_marks_what_differs_out_of_sync() -> None:
    """Review of 2026-12-05: a verify that found extents different without --repair reported
    them, but status kept saying in sync. Now each is durably out of sync (as DRBD's verify
    marks its bitmap): in_sync is false, the out-of-sync store (and the next HELLO) holds it, and
    the next connect's resync copies it. With the fault switch it stays "in sync"."""
    core = _connected_primary()
    assert core.statistics().in_sync
    actions = _verify_with_a_difference(core, repair=False, differing=3)
    assert core.verify_mismatches == {3}
    stats = core.statistics()
    assert not stats.in_sync and stats.out_of_sync_extents == 1
    assert 3 in core.unsynced_extents() and core.verify_marked() == {3}
    persisted = [a for a in actions if isinstance(a, pcore.PersistOutOfSync)]
    assert persisted and 3 in persisted[-1].extents

    buggy = _connected_primary(Faults(verify_mismatch_left_in_sync=True))
    _verify_with_a_difference(buggy, repair=False, differing=3)
    assert buggy.verify_mismatches == {3} and buggy.statistics().in_sync


def test_a_miss_that_leaves_the_record_nearly_full_asks_for_the_watermark_at_once() -> None:
    """Issue 14, item 4: evictions wait for clean extents, and extents turn clean only when the
    watermark passes them; asking for it when free slots run short, not at the next timer tick,
    shortens the wait of the misses that follow."""
    h = _Recording(capacity=8, lookahead=0)
    h.connect()
    for extent in range(7):
        h.write(extent * h.extent_size, 4)
        h.deliver_to_secondary()
        h.run_io()
        h.deliver_to_primary()
    assert h.primary.record.free() == 1
    h.sent.clear()
    h.write(7 * h.extent_size, 4)  # the miss taking the last free slot (the low mark is 8 // 8)
    assert any(isinstance(m, wire.Sync) for m in h.sent), h.sent


def test_misses_ask_for_the_early_watermark_once_per_answer() -> None:
    """Asked on every miss under the high mark, the early watermark kept the secondary's image
    fdatasync running back to back beside the journal commits misses wait for (flushes.py,
    request_early): a SYNC is asked again only once the last one is answered, and a local flush
    only once none is in flight."""
    h = _Recording(capacity=16, lookahead=0, extents=24)  # free-slot marks: low 1, high 2
    h.connect()
    for extent in range(13):
        h.write(extent * h.extent_size, 4)
        h.deliver_to_secondary()
        h.run_io()
        h.deliver_to_primary()
    h.sent.clear()
    flushes_before = len(h.flushes)
    for extent in (13, 14, 15):  # free slots 2, 1, 0 after them: the last two are under the mark
        h.write(extent * h.extent_size, 4)
    syncs = [m for m in h.sent if isinstance(m, wire.Sync)]
    assert syncs == [wire.Sync(15)], h.sent
    assert len(h.flushes) == flushes_before + 1
    h.deliver_to_secondary()
    h.run_io()
    h.deliver_to_primary()  # ADDEDs and the DURABLE that answers SYNC 15
    h.write(16 * h.extent_size, 4)  # evicts a clean extent and leaves no slot free: asks again
    assert [m for m in h.sent if isinstance(m, wire.Sync)] == [wire.Sync(15), wire.Sync(17)], h.sent


# -- time: get_timer / handle_timer ------------------------------------------------------------------


def test_the_primary_asks_for_a_timer_only_while_something_waits_on_time() -> None:
    h = Harness(auto=True)
    h.connect()
    h.settle()
    h.check_quiescent()
    # Idle and in sync: no work waits on time, and the timer is the next heartbeat (liveness.py).
    heartbeat_s = h.primary.config.heartbeat_s
    assert h.primary.watermark_timer() is None
    assert h.primary.get_timer() == heartbeat_s  # connected at 0
    h.auto = False
    h.write(0, 8)
    deadline = h.primary.watermark_timer()
    assert deadline is not None and h.primary.get_timer() == deadline
    h.primary.handle_timer(deadline + 7.0)
    assert h.primary.get_timer() == deadline + 7.0 + h.primary.config.watermark_interval_s
    h.auto = True
    h.settle()
    assert h.primary.watermark_timer() is None
    assert h.primary.get_timer() == deadline + 7.0 + heartbeat_s  # pinged at that tick
    h.primary.disconnected("cut")
    assert h.primary.get_timer() is None  # no session: nothing waits on time


def test_an_op_stamped_with_its_own_time_is_not_expired_by_an_old_clock() -> None:
    """Inputs carry ``now``: after a long idle spell with no timer, an op that must wait is
    stamped with the time it came, not the last timer's, so the next timer does not fail it."""
    h = Harness(capacity=1, lookahead=0)
    h.connect()
    h.primary.handle_timer(1.0)
    h.write(0, 4, fua=False)  # a miss: takes the one slot until it is clean on both sites
    h.primary.write(50, 16, b"x" * 4, False, now=1000.0)  # waits for room
    later = 1000.0 + h.primary.config.miss_wait_s - 1
    h.primary.receive(wire.Pong(0), now=later - 1)  # the link is alive: no link timeout
    h.primary.handle_timer(later)
    h.pump()
    assert 50 not in h.acks


def test_the_secondary_asks_for_a_timer_while_an_applied_write_is_not_durable() -> None:
    h = Harness()
    h.connect()
    assert h.secondary.get_timer() is None  # no session_reset here: no link timeout either
    h.write(0, 8)
    h.deliver_to_secondary()
    h.commit_start()
    h.commit_done()
    assert h.secondary.applied_seq > h.secondary.durable_seq
    deadline = h.secondary.get_timer()
    assert deadline is not None
    h.secondary.handle_timer(5.0)
    assert h.secondary.get_timer() == 5.0 + h.secondary.watermark_interval_s
    h.pump()
    assert h.data_syncs, "the watermark started an image sync"


# -- data generations (issue 13: a cut-off primary's writes are never failed back over) -----------


def _cut_off_core() -> PrimaryCore:
    config = Config(Mode.LOOKAHEAD, 160, 16, 4, 1, Eviction.LRU, VOLUME, new_id=lambda: 77)
    return PrimaryCore(config, read=lambda offset, length: bytes(length))


def _of(actions: list[pcore.Action], kind: type) -> list[pcore.Action]:
    return [action for action in actions if isinstance(action, kind)]


def test_a_write_while_cut_off_lands_only_once_its_new_generation_is_stored() -> None:
    core = _cut_off_core()  # never connected: the link is down
    core.write(1, 0, b"a" * 16, False)
    actions = core.actions()
    assert _of(actions, pcore.PersistGeneration) == [pcore.PersistGeneration(1, Lineage((1,), (1, 77)))]
    for persist in _of(actions, pcore.PersistOutOfSync):
        assert isinstance(persist, pcore.PersistOutOfSync)
        core.out_of_sync_persisted(persist.token)
    assert not _of(actions + core.actions(), pcore.ApplyLocal), "applied before its generation was stored"
    core.generation_persisted(1)
    (apply,) = _of(core.actions(), pcore.ApplyLocal)
    assert isinstance(apply, pcore.ApplyLocal)
    core.local_applied(apply.seq, 0)
    assert pcore.AckHost(1, 0) in core.actions()
    core.write(2, 32, b"b" * 16, False)  # the same disconnection: the same generation
    assert not _of(core.actions(), pcore.PersistGeneration)
    core.connected()
    hello, ping = [a.message for a in core.actions() if isinstance(a, pcore.Send)]
    assert isinstance(hello, wire.Hello) and hello.generations == (1, 77) and hello.history == (1,)
    assert isinstance(ping, wire.Ping)  # the first heartbeat (liveness.py)


def test_a_generation_stored_after_the_hello_greets_the_secondary_again() -> None:
    """The secondary takes the lineage its HELLO carried: one that grew since must be sent."""
    core = _cut_off_core()
    core.connected()
    core.actions()
    core.write(1, 0, b"a" * 16, False)  # during the handshake: not connected yet
    (persist,) = _of(core.actions(), pcore.PersistGeneration)
    assert isinstance(persist, pcore.PersistGeneration)
    core.generation_persisted(persist.token)
    assert pcore.LinkFailed(pcore.REGREET) in core.actions()


def test_a_host_writing_through_every_handshake_does_not_keep_the_link_down() -> None:
    """Regression: the generation a REGREET sends is the secondary's to claim at RESYNC_DONE, so
    writes during the next handshake start none; before, every HELLO made the newest generation
    one the secondary 'may hold', and a host writing steadily restarted every handshake."""
    core = _cut_off_core()
    core.connected()
    core.actions()
    core.write(1, 0, b"a" * 16, False)  # during the handshake
    (persist,) = _of(core.actions(), pcore.PersistGeneration)
    assert isinstance(persist, pcore.PersistGeneration)
    core.generation_persisted(persist.token)
    assert pcore.LinkFailed(pcore.REGREET) in core.actions()
    core.disconnected(pcore.REGREET)
    core.actions()
    for attempt in range(3):  # the host keeps writing through each new handshake
        core.connected()
        hello = next(a.message for a in core.actions() if isinstance(a, pcore.Send))
        assert isinstance(hello, wire.Hello) and hello.generations == (1, 77)
        core.write(10 + attempt, 32, b"b" * 16, False)
        actions = core.actions()
        assert not _of(actions, pcore.PersistGeneration), f"attempt {attempt} started a generation"
        assert pcore.LinkFailed(pcore.REGREET) not in actions
        core.disconnected("cut")
        core.actions()


def test_writes_answered_after_a_cut_wait_for_a_new_generation() -> None:
    """A sync-mode write in flight at the cut is answered after it ("continue"): that answer
    waits for the new generation, as a write taken while cut off does."""
    h = Harness(mode=Mode.SYNC)
    h.connect()
    h.write(0, 16)  # a hit or a miss: either way it waits for the secondary in sync mode
    assert not h.generations
    h.primary.disconnected("cut")
    h.pump()
    assert len(h.generations) == 1 and h.generations[0].data[:1] == (1,)
    assert len(h.generations[0].data) == 2


def test_the_secondary_holds_our_lineage_from_resync_done_until_a_write_answered_alone() -> None:
    """[cluster] clears etcd's ``outdated`` mark only while this holds (lease.py)."""
    h = Harness(mode=Mode.SYNC)
    assert not h.primary.secondary_holds_lineage, "at start nothing says what it holds"
    h.connect()
    h.settle()
    assert h.primary.statistics().in_sync and h.primary.secondary_holds_lineage
    h.primary.disconnected("cut")
    h.pump()
    assert h.primary.secondary_holds_lineage, "nothing answered alone yet: the mark may go"
    h.write(0, 16)  # answered without the secondary: a new generation, its mark first
    assert h.generations and not h.primary.secondary_holds_lineage


# -- liveness: heartbeats and the link timeout (liveness.py) -------------------------------------


def _sent_pings(h: Harness) -> list[wire.Message]:
    """The PINGs the primary sent since the last call (the rest of what it sent is dropped)."""
    h.pump()
    pings = [m for m in h.peek_to_secondary() if isinstance(m, wire.Ping)]
    h.to_s.clear()
    return pings


def test_the_primary_pings_every_heartbeat_and_measures_the_round_trip_from_the_pong() -> None:
    h = Harness()
    h.primary.connected(now=100.0)
    assert _sent_pings(h) == [wire.Ping(100_000_000_000)], "a PING right after the HELLO (the RTT)"
    h.primary.receive(wire.Pong(100_000_000_000), now=100.25)
    assert h.primary.link_rtt_s == 0.25
    assert h.primary.get_timer() == 101.0  # the next heartbeat
    h.primary.handle_timer(100.5)
    assert not _sent_pings(h), "not due yet"
    h.primary.handle_timer(101.0)
    assert _sent_pings(h) == [wire.Ping(101_000_000_000)]
    assert h.primary.get_timer() == 102.0


def test_a_silent_secondary_ends_the_link_with_the_reason_operators_know() -> None:
    h = Harness()
    h.connect()  # at 0: the last frame (the WELCOME) came at 0
    timeout_s = h.primary.config.timeout_s
    for now in (1.0, 2.0, 9.0, 9.999):
        h.primary.handle_timer(now)  # heartbeats go out, nothing comes back
    assert h.primary.link is pcore.LinkState.CONNECTED
    h.primary.handle_timer(timeout_s)
    failed = [a for a in h.primary.actions() if isinstance(a, pcore.LinkFailed)]
    assert failed == [pcore.LinkFailed("no frame from the secondary for 10 s")]
    assert h.primary.link_error == "no frame from the secondary for 10 s"
    h.primary.handle_timer(timeout_s + 5)
    assert not [a for a in h.primary.actions() if isinstance(a, pcore.LinkFailed)], "said once"


def test_any_frame_from_the_secondary_postpones_the_timeout() -> None:
    h = Harness()
    h.connect()
    h.primary.receive(wire.Applied(0), now=8.0)
    assert h.primary.get_timer() == 1.0  # the heartbeat comes first
    for now in (1.0, 2.0, 9.0, 10.0, 17.9):
        h.primary.handle_timer(now)
    assert not [a for a in h.primary.actions() if isinstance(a, pcore.LinkFailed)]
    h.primary.handle_timer(18.0)
    assert [a for a in h.primary.actions() if isinstance(a, pcore.LinkFailed)]


def test_the_deliberate_bug_lets_a_busy_link_time_out() -> None:
    """faults.liveness_ignores_frames: the simulator's self-check must catch this."""
    config = Config(Mode.LOOKAHEAD, 160, 16, 4, 1, Eviction.LRU, VOLUME,
                    faults=Faults(liveness_ignores_frames=True))
    core = PrimaryCore(config, read=lambda offset, length: bytes(length))
    core.connected(now=0.0)
    core.receive(wire.Pong(0), now=9.0)
    core.handle_timer(10.0)
    assert pcore.LinkFailed("no frame from the secondary for 10 s") in core.actions()


def test_the_secondary_times_out_a_silent_primary_counting_hot_path_frames() -> None:
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState(), heartbeat_s=1.0, timeout_s=10.0)
    assert core.get_timer() is None  # no session
    core.session_reset(now=50.0)
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1))
    core.actions()
    assert core.get_timer() == 60.0
    assert core.write_now(wire.Write(1, 0, 0, 0, (), b"a"), now=55.0)  # the hot path counts
    core.data_synced(1)  # durable: no watermark deadline before the link's
    core.actions()
    assert core.get_timer() == 65.0
    core.receive(wire.Ping(7), now=58.0)
    assert core.actions() == [pcore.Send(wire.Pong(7))]
    core.handle_timer(67.9)
    assert not [a for a in core.actions() if isinstance(a, pcore.LinkFailed)]
    core.handle_timer(68.0)
    assert [a for a in core.actions() if isinstance(a, pcore.LinkFailed)] == [
        pcore.LinkFailed("no frame from the primary for 10 s")]
    core.session_reset(now=70.0)
    core.session_ended()  # the connection closed
    assert core.get_timer() is None


def test_secondary_forgets_resync_progress_only_once_it_is_durable_and_offers_the_rest() -> None:
    """Issue 19: RESYNC_PROGRESS takes extents out of the journaled resync set only once its
    seq is durable here (RESYNC_SHRINK); an extent a later RESYNC_SET adds back stays; after a
    cut the WELCOME offers what is left (RESUME) and the checksums cover only that."""
    hello = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 160, 16, 1)
    core = SecondaryCore(160, 16, 0, VOLUME, RecordState())
    core.session_started(score.SessionFacts(wire.WelcomeFlag.NEW, checksums=True, resume=True))
    core.receive(hello)
    core.receive(wire.ResyncSet(1, ((0, 10),)))
    core.journal_synced(core.journal_target())
    core.actions()
    for seq in (1, 2, 3):
        core.receive(wire.Write(seq, (seq - 1) * 16, int(WriteFlag.RESYNC), 0, (), b"r" * 16))
    core.receive(wire.ResyncProgress(3, ((0, 4),)))
    core.receive(wire.ResyncSet(2, ((3, 1),)))  # extent 3 is back in the pass
    core.actions()
    assert core.state.resync == ((0, 10),)  # nothing durable yet
    core.data_synced(3)
    assert core.state.resync == ((3, 7),)
    assert score.JournalAppend(jfmt.encode_resync_shrink(((0, 3),))) in core.actions()
    core.session_reset()
    core.session_started(score.SessionFacts(wire.WelcomeFlag.INCONSISTENT, checksums=True, resume=True))
    core.receive(hello)
    core.journal_synced(core.journal_target())
    (welcome,) = [a.message for a in core.actions() if isinstance(a, score.Send)]
    assert isinstance(welcome, wire.Welcome) and welcome.resync == ((3, 7),)
    assert welcome.flags & wire.WelcomeFlag.RESUME and core.checksum_runs == ((3, 7),)
    doubting = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY,
                          int(wire.HelloFlag.EVERYTHING_OUT_OF_SYNC), VOLUME, 160, 16, 1)
    assert not score.resumable(doubting, False) and not score.resumable(hello, True)
