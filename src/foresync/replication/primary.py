"""The primary's replication core: hit or miss, ordering, the window, eviction and resync.

Theory of operation (claims 1-5, 10-17). Every host write becomes an *op* with a sequence
number; ops go to the secondary on one ordered stream, so the secondary's image is always a
prefix of the primary's write history.

* Hit (every touched extent is in the record copy): send the data, apply it locally, answer the
  host. The secondary's record already covers the extent, so it may lag (claims 3, 5).
* Miss: evict clean extents if the record is full and piggyback their removal (claim 17), send the
  data with MISS and a budget of extents the secondary may add (claims 2, 11, 12, 18, 19), and
  only when ADDED comes back add those extents to the copy, apply locally and answer the host
  (claim 1). Writing locally first could leave a difference no record covers. So that a miss
  waits only for its own round trip, free slots are kept ready while misses have had to wait
  for room (free_slots.py): whenever the watermark moves and the free slots are under the low
  mark, clean extents are evicted ahead of need (their removal goes with the next MISS), and
  predictions never take the low mark's slots. A miss that leaves fewer than the high mark free
  asks both sites for the watermark at once, one request in flight per site (flushes.py,
  ``request_early``). Where each miss's time went is summed in the statistics (issue 14).
* Read-ahead (lookahead mode): a hit that continues a sequential stream (it starts where a recent
  write ended) and comes within ``lookahead // 2 + 1`` extents of the record's edge goes with MISS
  and a budget, like a miss, but the host does not wait for its ADDED: its own extents are
  covered already, and the secondary adds the next extents durably before answering (claims
  18-19), so the stream finds them recorded instead of missing every ``lookahead + 1`` extents.
* ``sync`` mode (DRBD protocol C) also waits for the secondary's durable watermark to pass the
  op; ``async`` (protocol A) never waits and keeps no record.

* A group of host writes (issue 15, ``write_hits``): the leading run of hits among plain writes
  the NBD server parsed together gets consecutive seqs and goes as one WRITES frame, each write
  checked by ``write_hit``'s rules in turn; the run ends at the first that is not a hit now,
  which goes through ``write`` alone. So no write of a group overtakes one before it.

Local applies keep arrival order per extent (ordering.py, where an op's lifecycle is a state
machine): an op waits until every earlier op touching one of its extents has been applied.

Large zero/trim ranges carry no payload and would flood the record, so they go as a RANGE op:
the secondary journals the range as pending, applies it and makes it durable before answering;
the primary applies it, and once its own flush covers it tells the secondary the range is done.

What the record cannot bound joins the out-of-sync set (out_of_sync.py): writes while the link is
down, a miss whose ADDED never came, a local write that failed (its extents are resynced from
what this image now holds; the host gets the errno), and whatever a secondary that reports
STORAGE_FAILED had not made durable (``secondary_error`` says why until a resync completes).
At each WELCOME a resync pass (resync.py) copies what may differ; the operator may also run an
online verify (verify.py). Flush tickets and the durability watermarks are in flushes.py.

This class keeps the control flow: it owns those parts as plain objects, hands them callbacks
(no part imports this module), and alone talks to the adapter. The link is a small state
machine (``LinkState``); ``receive`` is the one place the link path's errors are caught.
While a session is up (``connected`` to ``disconnected``) it sends the heartbeat PING and ends
a link silent for ``timeout_s`` (liveness.py, through ``get_timer``/``handle_timer``); each
PONG's echoed timestamp gives ``link_rtt_s``.

Data generations (issue 13, generations.py): the first write this core would apply or answer
with the link down, if the secondary may hold our newest generation, first makes a new one
durable (``PersistGeneration``); until ``generation_persisted`` no op applies locally and none is
answered. So a secondary promoted meanwhile meets our lineage as diverged (split brain), never as
an older one to fail back over. Meetings with a peer's lineage (DEMOTE, REFUSE's code) go
through ``epochs.meeting``.

All I/O is done by the adapter through ``Action`` values drained with ``actions()``, except
resync reads, which go through the injected ``read`` port so that a read and its send are atomic.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from foresync.errors import Errno, LocalProtocolError, RemoteProtocolError, invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire
from foresync.link.wire import WriteFlag
from foresync.record import runs as extent_runs
from foresync.record.estimate import MissRatioEstimator
from foresync.record.free_slots import FreeSlots
from foresync.record.predict import (
    PREDICTORS,
    extents_of,
)
from foresync.record.record import Eviction, RecordCopy
from foresync.replication.actions import (
    AckHost,
    ApplyLocal,
    BecomeSecondary,
    FlushLocal,
    LinkFailed,
    PersistGeneration,
    PersistOutOfSync,
    ResumeLater,
    Send,
)
from foresync.replication.actions import PrimaryAction as Action
from foresync.replication.epochs import Lineage, Meeting, meeting, new_epoch_id
from foresync.replication.flushes import Flushes
from foresync.replication.generations import REGREET, Generations
from foresync.replication.liveness import Due, Liveness
from foresync.replication.ordering import (
    APPLICABLE,
    AWAITING_REMOTE,
    Op,
    OpEvent,
    OpState,
    Ordering,
)
from foresync.replication.out_of_sync import OutOfSync, unsynced_extents
from foresync.replication.progress import ResyncProgress, VerifyProgress
from foresync.replication.reservations import Reservations
from foresync.replication.resync import (
    RESYNC_SLICE_BYTES,
    RESYNC_WINDOW_BYTES,
    RESYNC_WINDOW_START_BYTES,
    Resync,
)
from foresync.replication.verify import Verify

# Re-exported: the adapters and tests name the actions, and the resync defaults, from here.
__all__ = ["REGREET", "RESYNC_SLICE_BYTES", "RESYNC_WINDOW_BYTES", "RESYNC_WINDOW_START_BYTES",
           "AckHost", "Action", "ApplyLocal", "BecomeSecondary", "Config", "FlushLocal", "LinkFailed",
           "LinkState", "Mode", "PersistGeneration", "PersistOutOfSync", "PrimaryCore", "PrimaryStatistics",
           "ResumeLater", "Send"]

# Plain ints on the per-write path: operators on IntFlag members go through enum.py, about a
# microsecond each (profiled), several times per write.
_MISS, _DURABLE, _RESYNC = int(WriteFlag.MISS), int(WriteFlag.DURABLE), int(WriteFlag.RESYNC)
_PUNCH, _RANGE = int(WriteFlag.PUNCH), int(WriteFlag.RANGE)
STREAMS_TRACKED = 16  # sequential streams recognised at once (their next expected offsets)
_MEMBER_MAX = wire.WRITES_MEMBER_MAX_BYTES
_WRITES_HEAD = wire.COUNT.size + wire.WRITES_ENTRY.size  # a WRITES frame's count and first entry


class Mode(Enum):
    LOOKAHEAD = "lookahead"
    SYNC = "sync"
    ASYNC = "async"


class LinkState(Enum):
    """DISCONNECTED -connected()-> HANDSHAKE -WELCOME-> CONNECTED; ``disconnected()`` from any
    state resets to DISCONNECTED. ERROR (as in h11): the peer broke the protocol; ``receive``
    refuses every further message until the adapter, which closes the link, calls
    ``disconnected()``. Meanwhile writes go as they do with the link down."""

    DISCONNECTED = "disconnected"
    HANDSHAKE = "handshake"
    CONNECTED = "connected"
    ERROR = "error"




@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode
    size: int
    extent_size: int
    capacity: int
    lookahead: int
    eviction: Eviction
    volume_id: bytes
    window_bytes: int = 64 * 1024 * 1024
    range_threshold_extents: int = 16  # zero/trim ops touching more extents go as RANGE
    miss_wait_s: float = 30.0
    faults: Faults = NO_FAULTS
    history: tuple[int, ...] = (1,)  # this site's epoch history (see epochs.py)
    generations: tuple[int, ...] = ()  # this site's data generations (epochs.py); () : history
    new_id: Callable[[], int] = new_epoch_id  # mints a generation id (seeded in the simulator)
    predictor: str = "next"  # record/predict.py PREDICTORS; the secondary must use the same
    block_on_disconnect: bool = False  # link.on_disconnect = "block": misses wait for the link
    block_timeout_s: float = 30.0
    resync_rate_max: int = 0  # bytes/s, 0 = unlimited
    resync_slice_bytes: int = RESYNC_SLICE_BYTES  # resync work per pump before ResumeLater
    resync_window_bytes: int = RESYNC_WINDOW_BYTES  # resync bytes in flight, within window_bytes
    watermark_interval_s: float = 0.05  # handle_timer asks for durability this often while busy
    heartbeat_s: float = 1.0  # [link] heartbeat: a PING this often while a session is up
    timeout_s: float = 10.0  # [link] timeout: no frame from the secondary this long ends the link
    member_sizes: tuple[int, ...] = ()  # a consistency group's members' sizes, for HELLO
    member_names: tuple[str, ...] = ()  # and their volume names, in the same order


@dataclass(frozen=True, slots=True)
class PrimaryStatistics:
    writes: int
    record_hits: int
    record_misses: int
    resync_bytes: int
    lag_bytes: int
    lag_writes: int
    record_extents: int
    record_capacity: int
    link: str
    resync_remaining_extents: int
    durable_seq: int
    last_seq: int
    in_sync: bool
    out_of_sync_extents: int
    record_read_aheads: int = 0
    local_write_errors: int = 0
    secondary_storage_errors: int = 0
    split_brain: bool = False  # the peer's lineage diverged from ours (epochs.py)
    record_room_waits: int = 0  # misses that found no room and waited for the watermark
    record_add_waits: int = 0  # writes that waited for a miss in flight to add their extents
    record_evicted_ahead: int = 0  # clean extents evicted ahead of need (free slots kept ready)
    # hits (in record_hits) whose extents a miss in flight was adding when they arrived: they
    # waited for its ADDED, up to a round trip, like a miss (issue 14)
    record_writes_behind_add: int = 0
    write_groups: int = 0  # WRITES frames sent: groups of host writes in one frame (issue 15)
    grouped_writes: int = 0  # host writes (in writes) that went in a WRITES frame
    # Where a miss's time goes (issue 14), in seconds summed over the misses answered: from its
    # MISS to its ADDED (the round trip and the secondary's journal commit), and from its arrival
    # to its MISS (room in the record, an earlier op on its extents, the window); and what the
    # writes behind an ADD waited for it. Their mean against the link's RTT says what a miss
    # costs beyond its own round trip.
    record_misses_answered: int = 0
    record_miss_round_trip_s: float = 0.0
    record_miss_queued_s: float = 0.0
    record_behind_add_waited_s: float = 0.0


@dataclass(slots=True)
class _Counters:
    writes: int = 0
    hits: int = 0
    misses: int = 0
    resync_bytes: int = 0
    read_aheads: int = 0  # hits sent with MISS to extend the record ahead of a stream
    local_write_errors: int = 0  # local applies that failed (the host got the errno)
    secondary_storage_errors: int = 0  # STORAGE_FAILED reports from the secondary
    evicted_ahead: int = 0  # clean extents evicted ahead of need (_keep_free)
    room_waits: int = 0  # misses that found no room and waited for the watermark
    add_waits: int = 0  # writes that waited for the ADDED of a miss in flight, then hit
    writes_behind_add: int = 0  # of the hits: those that had waited so (counted as they go)
    write_groups: int = 0  # WRITES frames sent (write_hits)
    grouped_writes: int = 0  # host writes in them
    misses_answered: int = 0  # misses whose ADDED came (PrimaryStatistics: the timing sums)
    miss_round_trip_s: float = 0.0
    miss_queued_s: float = 0.0
    behind_add_waited_s: float = 0.0


class PrimaryCore:
    def __init__(self, config: Config, read: Callable[[int, int], bytes],
                 is_hole: Callable[[int, int], bool] | None = None) -> None:
        self.config = config
        self._read = read
        self._is_hole = is_hole  # a cheap "this range reads as zeroes" (SEEK_DATA), if any
        self.extent_count = -(-config.size // config.extent_size)
        faults = config.faults
        self.record = RecordCopy(config.capacity, config.eviction, extent_size=config.extent_size,
                                 evict_dirty=(faults.s3fifo_evicts_dirty or faults.adaptive_evicts_dirty
                                              or (faults.streams_evicts_dirty
                                                  and config.eviction is Eviction.STREAMS)))
        self.predictor = PREDICTORS[config.predictor]()  # mirrors the secondary's
        # Free slots kept ready while misses wait for room (free_slots.py, issue 14); under the
        # high mark a miss asks for the watermark at once.
        self._free_slots = FreeSlots(config.capacity)
        self._high_free = self._free_slots.high
        # Record room held for ADDEDs in flight and what they will add (reservations.py).
        self._reservations = Reservations(self.record, self.predictor, config.lookahead,
                                          self.extent_count)
        self._pending_adds = self._reservations.pending  # aliased, never replaced
        # The live miss-ratio curve (estimate.py); async mode keeps no record to size.
        self.estimator = None if config.mode is Mode.ASYNC else MissRatioEstimator(
            config.size, config.extent_size, config.capacity, config.eviction, config.lookahead,
            config.predictor)
        self.link = LinkState.DISCONNECTED
        self.link_error = ""
        self._error_after_welcome = False  # the link went to ERROR from CONNECTED
        self.secondary_error = ""  # the secondary's last storage failure, until a resync completes
        self._actions: list[Action] = []
        self._queue: deque[Op] = deque()  # host ops not yet sent, in arrival order
        self._sent: deque[tuple[int, int]] = deque()  # (seq, bytes) not yet APPLIED remotely
        self._sent_bytes = 0
        self._misses: dict[int, Op] = {}  # seq -> miss op waiting for ADDED
        self._removals: list[int] = []  # evicted ahead of need, to go with the next MISS
        self._read_aheads: dict[int, Op] = {}  # seq -> read-ahead hit whose ADDED is due
        self._stream_ends: OrderedDict[int, None] = OrderedDict()  # where recent writes ended
        self._durable_waits: dict[int, Op] = {}  # seq -> sync-mode op waiting for DURABLE
        # Sequence numbers, the per-extent lines and the applied prefix (ordering.py). Its two
        # dicts are aliased here, never replaced: the write path reads them without a chain.
        self._order = Ordering(self._misses, config.faults.apply_miss_before_ack, self._try_apply)
        self._by_seq = self._order.by_seq  # ops sent and not yet finished locally
        self._extent_fifo = self._order.extent_fifo  # extent -> seqs waiting to apply locally
        self._remote_applied = 0
        # Flush tickets and the durability watermarks, here and there (flushes.py).
        self._flushes: Flushes[Op] = Flushes(self._emit_flush, self._send)
        self._ranges_to_clear: list[int] = []  # range seqs the local flush still has to cover
        self._ranges_done: list[int] = []  # range seqs to report done to the secondary
        self._welcome_ranges: list[int] = []  # the secondary's pending ranges, done after resync
        self.split_brain = False
        # The data generations (generations.py): writes acknowledged while cut off belong to
        # one the secondary never saw, stored before the first of them applies or is answered.
        self._generations: Generations[Op] = Generations(
            Lineage(config.history, config.generations or config.history), config.new_id,
            self._emit_persist_generation, faults)
        self._oldest_unapplied_at = 0.0  # extent -> in-flight misses expected to add it
        # The out-of-sync set and its persistence (out_of_sync.py); its ``confirmed`` runs are
        # the resync sets of this pass durable there.
        self._oos: OutOfSync[Op] = OutOfSync(self._emit_persist)
        self.counters = _Counters()
        # The resync pass (resync.py): it reads through ``read``, sends through ``_send_resync``.
        self._resync = Resync(
            size=config.size, extent_size=config.extent_size, async_mode=config.mode is Mode.ASYNC,
            rate_max=config.resync_rate_max, slice_bytes=config.resync_slice_bytes,
            window_max_bytes=config.resync_window_bytes, faults=config.faults, read=read,
            is_hole=is_hole, record=self.record, out_of_sync=self._oos, flushes=self._flushes,
            busy=self._extent_fifo, send=self._send, resume_later=self._resume_later,
            link_full=self._link_full, send_extent=self._send_resync, last_seq=self._last_seq,
            set_confirmed=self._set_confirmed)
        self._verify = Verify(config.size, config.extent_size, read, self._extent_fifo,
                              self._send, self._queue_resync, config.faults,
                              mark_extent=self._verify_found_different)
        self._verify_marked: set[int] = set()  # marked out of sync by a verify, until a connect
        self._verify_repairs: dict[int, int] = {}  # marked extent -> seq of its repair's copy
        self.now = 0.0
        self._watermark_at = 0.0  # when handle_timer next asks both sites for durability
        # Heartbeats and the link timeout (liveness.py), from connected() to disconnected().
        self._liveness = Liveness(config.heartbeat_s, config.timeout_s, pings=True,
                                  ignores_frames=config.faults.liveness_ignores_frames,
                                  ignores_silence=config.faults.link_timeout_ignored)
        self.link_rtt_s = 0.0  # the round trip of the last PING (its PONG), for /status

    # -- inputs from the adapter -------------------------------------------------------------------

    def actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def write(self, op_id: int, offset: int, data: bytes, fua: bool, *, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        op = Op(op_id, offset, len(data), data, False, fua, self._extents(offset, len(data)))
        op.sequential = self.config.mode is Mode.LOOKAHEAD and self._continues_stream(offset, len(data))
        if self.estimator is not None:
            self.estimator.observe(self.now, offset, len(data), True)
        self._submit(op)

    def write_hit(self, offset: int, data: bytes, *, now: float | None = None) -> wire.Write | None:
        """The common write in one call, without an op, actions or the queue (the hot path at
        tens of thousands of writes a second): a hit while connected, in lookahead or async mode,
        with nothing queued, room in the window, no earlier write still to land on its extents
        and no read-ahead due. Returns the WRITE to send. The adapter sends it, applies the data
        locally at once (nothing precedes it on its extents), calls ``hit_applied(seq)`` and then
        answers the host. None: nothing was changed, go through ``write()``.

        It does exactly what ``write()`` followed by ``local_applied()`` does for such a write
        (the core harness and the simulator run both paths), so a FUA write, a sync-mode write
        (which waits for DURABLE) and anything that must wait never come here. Nor does a write
        while actions are outstanding: its frame would overtake theirs. The adapter must not call
        it while it is still carrying out actions it already took (``PrimarySite.submit``)."""
        if now is not None:
            self.now = now
        config = self.config
        mode = config.mode
        length = len(data)
        if (self.link is not LinkState.CONNECTED or self._queue or self._actions or mode is Mode.SYNC
                or (self._sent and self._sent_bytes + length > config.window_bytes)):
            return None
        extents = self._extents(offset, length)
        fifo = self._extent_fifo
        record = self.record
        if len(extents) == 1:  # most writes: one extent, no generator
            extent = extents.start
            if extent in fifo or (mode is Mode.LOOKAHEAD and extent not in record):
                return None
        elif any(e in fifo for e in extents) or (mode is Mode.LOOKAHEAD and not record.covers(extents)):
            return None
        counters = self.counters
        if mode is Mode.LOOKAHEAD:
            if offset in self._stream_ends and self._reservations.read_ahead_due(extents):
                return None
            self._continues_stream(offset, length)
            counters.hits += 1
            if self.estimator is not None:
                self.estimator.observe(self.now, offset, length, True)
        counters.writes += 1
        order = self._order
        seq = order.next_seq
        order.next_seq = seq + 1
        record.note_write(extents, seq, offset, length)
        sent = self._sent
        sent.append((seq, length))
        if len(sent) == 1:
            self._oldest_unapplied_at = self.now
        self._sent_bytes += length
        return wire.Write(seq, offset, 0, 0, (), data)

    def write_hits(self, writes: Sequence[tuple[int, bytes]], start: int = 0, *,
                   now: float | None = None) -> tuple[wire.Write | wire.WriteBatch | None, int]:
        """A group of plain host writes, ``writes[start:]`` as (offset, data), in one call: the
        leading run of them that ``write_hit`` takes, as ONE message to send (a WRITE for one,
        a WRITES frame for more), and how many it took. The run stops at the first write that
        is not a hit now (a miss, one behind an in-flight miss on its extents, a read-ahead,
        no room in the window: ``write_hit``'s rules, applied to each in turn, so each sees
        the ones before it), at one of ``WRITES_MEMBER_MAX_BYTES`` or more (it goes alone,
        received straight into its payload) and where the frame would pass
        ``WRITES_MAX_BYTES`` (and at an empty one). The adapter sends the message, applies every taken write locally
        in order, then calls ``hits_applied`` (or ``hit_applied`` per write, for errors); the
        rest go, in order, through ``write_hit``/``write`` as single writes would."""
        if now is not None:
            self.now = now
        first = self.write_hit(*writes[start]) if start < len(writes) else None
        if first is None:
            return None, 0
        length = len(first.data)
        if not 0 < length < _MEMBER_MAX:  # WRITES carries no empty write either
            return first, 1
        taken = [first]
        size = _WRITES_HEAD + length
        carry_non_hits = self.config.faults.batch_carries_non_hit
        for offset, data in itertools.islice(writes, start + 1, start + wire.WRITES_MAX_COUNT):
            length = len(data)
            size += wire.WRITES_ENTRY.size + length
            if not 0 < length < _MEMBER_MAX or size > wire.WRITES_MAX_BYTES:
                break
            message = self.write_hit(offset, data)
            if message is None:
                if not carry_non_hits:
                    break
                message = self._carried_as_hit(offset, data)  # deliberately wrong: faults.py
            taken.append(message)
        if len(taken) == 1:
            return first, 1
        self.counters.write_groups += 1
        self.counters.grouped_writes += len(taken)
        return wire.WriteBatch(taken), len(taken)

    def _carried_as_hit(self, offset: int, data: bytes) -> wire.Write:
        """The faults.batch_carries_non_hit bug: a write taken as a hit without its checks."""
        extents = self._extents(offset, len(data))
        self.counters.writes += 1
        seq = self._order.next_seq
        self._order.next_seq = seq + 1
        self.record.note_write(extents, seq)
        self._sent.append((seq, len(data)))
        self._sent_bytes += len(data)
        return wire.Write(seq, offset, 0, 0, (), data)

    def hits_applied(self, first: int, last: int, *, now: float | None = None) -> None:
        """The local writes of a ``write_hits`` run, seqs ``first`` to ``last``, all finished
        without error (with an error: ``hit_applied`` for each, in order)."""
        if now is not None:
            self.now = now
        order = self._order
        if first == order.applied_prefix + 1 and not order.applied_beyond:
            order.applied_prefix = last
        else:
            for seq in range(first, last + 1):
                order.mark_applied(seq)

    def hit_applied(self, seq: int, errno: int = 0, offset: int = 0, length: int = 0, *, now: float | None = None) -> None:
        """The local write of ``write_hit``'s WRITE ``seq`` has finished (failed or not: the
        adapter answers the host with its errno). A failure names the write's ``offset`` and
        ``length``, and the adapter then carries out the actions it leaves (``actions()``)."""
        if now is not None:
            self.now = now
        order = self._order
        if seq == order.applied_prefix + 1 and not order.applied_beyond:
            order.applied_prefix = seq
        else:
            order.mark_applied(seq)
        if errno:
            self._local_write_failed(self._extents(offset, length))
            self._pump()

    def zero(self, op_id: int, offset: int, length: int, punch: bool, fua: bool, *, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        if self.estimator is not None:
            self.estimator.observe(self.now, offset, length, False)
        self._submit(Op(op_id, offset, length, None, punch, fua, self._extents(offset, length)))

    def flush(self, op_id: int, *, now: float | None = None) -> None:
        """A host FLUSH: local durability; in sync mode remote durability too (every sync-mode
        write already waited for it before being answered)."""
        if now is not None:
            self.now = now
        op = Op(op_id, 0, 0, None, False, True, range(0))
        op.to(OpEvent.FLUSH)
        self._wait_flush(op)

    def connected(self, *, now: float | None = None) -> None:
        """The transport is up: greet the secondary."""
        if now is not None:
            self.now = now
        if self.link is not LinkState.DISCONNECTED:
            raise LocalProtocolError(f"connected() while link is {self.link.value}")
        self.link = LinkState.HANDSHAKE
        self._verify_marked.clear()  # this session's resync covers them (they are out of sync)
        self._verify_repairs.clear()
        self._resync.session_start()
        c = self.config
        # An old primary whose out-of-sync store was lost hands over "everything" (failback).
        flags = wire.HelloFlag.EVERYTHING_OUT_OF_SYNC if self.full_resync_pending else 0
        flags |= wire.HelloFlag.EARLY_RANGES  # a sync-mode RANGE carries DURABLE (_start)
        self._emit(Send(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, flags, c.volume_id, c.size,
                                   c.extent_size, self.lineage.epoch, self.lineage.epochs,
                                   tuple(sorted(self._oos.durable)), self.lineage.data,
                                   c.member_sizes, c.member_names)))
        # A round trip measured now, before any resync data queues on the link, is the link's
        # own delay: the resync window is tuned from it (observe_rtt).
        self._liveness.start(self.now)
        self._ping()

    def disconnected(self, reason: str, *, now: float | None = None) -> None:
        """The link is gone: finish every op locally and remember what the secondary may lack."""
        if now is not None:
            self.now = now
        if self.link is LinkState.DISCONNECTED:
            return
        was_connected = self.link is LinkState.CONNECTED or (
            self.link is LinkState.ERROR and self._error_after_welcome)
        self.link = LinkState.DISCONNECTED
        self._liveness.stop()
        self.link_error = reason
        self._sent.clear()
        self._sent_bytes = 0
        self._remote_applied = self._flushes.sync_requested = 0
        # Writes from now on wait to be durably out-of-sync here, as any write while cut off
        # does; the set the secondary holds still counts in the bound (``Resync.pass_runs``).
        self._oos.confirmed = ()
        if self.config.mode is Mode.ASYNC and was_connected:
            # No record covers anything in async mode: whatever the secondary has not made
            # durable may be lost there (a crash), so it becomes out-of-sync.
            dirty = self.record.dirty_extents(self._flushes.remote_durable)
            if dirty - self._oos.extents:
                self._oos.add(dirty)
        # Hits are covered by the secondary's durable record already. A miss (or RANGE) that was
        # not answered may or may not have reached it: its extents become out-of-sync, durably,
        # before the op is applied here. Resync extents stay where they were (record or OOS).
        if self._flushes.waiting or self._by_seq:
            self._generations.open()  # these are answered after the cut (generations.py)
        for ahead in self._read_aheads.values():
            self._reservations.release(ahead)  # the extents it asked for may or may not be added
        self._read_aheads.clear()
        for op in sorted(self._by_seq.values(), key=lambda o: o.seq):
            if op.state not in AWAITING_REMOTE:
                continue
            unanswered = op.seq in self._misses
            self._reservations.release(op)
            op.to(OpEvent.REMOTE_OK)
            self._misses.pop(op.seq, None)
            self._durable_waits.pop(op.seq, None)
            if unanswered:
                self._mark_out_of_sync(op)
            self._ready_local(op)
            self._maybe_finish(op)
        self._pending_adds.clear()  # every op that expected adds was released above
        self._removals = []  # the secondary's record is adopted again at the next WELCOME
        self._resync.abandon()
        self._welcome_ranges = []
        self._verify.abandon(self.now)
        self._pump()

    def restore_out_of_sync(self, extents: set[int]) -> None:
        """At start: the out-of-sync set found on disk."""
        self._oos.restore(extents)

    def out_of_sync_persisted(self, token: int, *, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        self._release_oos_waiting(self._oos.persisted(token))
        self._pump()

    @property
    def out_of_sync(self) -> set[int]:
        """Extents the secondary may lack outside its record (out_of_sync.py)."""
        return self._oos.extents

    @property
    def full_resync_pending(self) -> bool:
        """Every extent may differ: the next pass compares them all (set by the adapter when
        the stored set is lost or damaged; cleared when such a pass completes)."""
        return self._oos.everything

    @full_resync_pending.setter
    def full_resync_pending(self, value: bool) -> None:
        self._oos.everything = value

    def _release_oos_waiting(self, released: list[Op]) -> None:
        for op in released:
            op.to(OpEvent.SETTLED)
            self._try_apply(op)

    def _mark_out_of_sync(self, op: Op) -> None:
        # An op already on its way here (only with a deliberate fault) has nothing to wait for.
        waiter = op if op.state is OpState.READY else None
        if self.config.faults.apply_before_out_of_sync_durable:
            waiter = None  # deliberately wrong: see faults.py
        if self._oos.mark(op.extents, waiter) and waiter is not None:
            op.to(OpEvent.HOLD)

    def _emit_persist(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        self._actions.append(PersistOutOfSync(token, extents, everything))

    def receive(self, message: wire.Message, *, now: float | None = None) -> None:
        """A message from the secondary. The one place where the link path's errors are caught:
        a RemoteProtocolError (the peer broke the protocol, here or in resync.py, verify.py...)
        puts the link in ERROR and is raised on to the adapter, which closes the link."""
        if now is not None:
            self.now = now
        self._liveness.frame_received(self.now)  # any frame shows the secondary alive
        if self.link is LinkState.ERROR:
            raise RemoteProtocolError(f"{type(message).__name__} after a protocol error: the link "
                                      f"is in ERROR until disconnected ({self.link_error})")
        try:
            self._dispatch(message)
        except RemoteProtocolError as exc:
            if self.link is not LinkState.DISCONNECTED:
                self._error_after_welcome = self.link is LinkState.CONNECTED
                self.link = LinkState.ERROR
                self.link_error = f"protocol error: {exc}"
            raise
        self._pump()

    def _dispatch(self, message: wire.Message) -> None:
        match message:
            case wire.Applied(seq):
                self._on_applied(seq)
            case wire.Added(seq, extents):
                self._on_added(seq, extents)
            case wire.Durable(seq):
                self._on_durable(seq)
            case wire.Pong(timestamp_ns):
                self.observe_rtt(max(0.0, self.now - timestamp_ns / 1e9))
            case wire.Ping():
                pass
            case wire.Welcome():
                self._on_welcome(message)
            case wire.Refuse(reason, code):
                if code == wire.RefuseCode.SPLIT_BRAIN:
                    self.split_brain = True
                self._fail_link(f"peer refused us: {reason}")
            case wire.Demote(history, generations):
                theirs = Lineage(tuple(history), tuple(generations))
                if meeting(self.lineage, theirs, self.config.faults) is Meeting.FOLLOW:
                    self._emit(BecomeSecondary(theirs))
                else:
                    self.split_brain_detected("split brain: the peer primary's lineage does not "
                                              "descend from ours (both sites took writes)")
                    self._fail_link(self.link_error)
            case wire.ResyncDone():
                raise RemoteProtocolError("primary got RESYNC_DONE")
            case wire.ResyncDoneAck(seq):
                self._resync.acknowledged(seq)  # in sync from here, if nothing else is pending
            case wire.ResyncSetDurable(set_id):
                self._on_resync_set_durable(set_id)
            case wire.Hashes(request, first, hashes):
                self._verify.on_hashes(request, first, hashes, self.now)
            case wire.Checksums(first, hashes):
                self._resync.on_checksums(first, hashes)
                self._pump_resync()
            case wire.StorageFailed():
                self._on_storage_failed(message)
            case _:
                raise RemoteProtocolError(f"primary got unexpected {type(message).__name__}")

    def resync_everything(self) -> None:
        """At start: nothing bounds what may differ (the stored set says "every extent", or async
        mode after an unclean stop): the next connect compares every extent (issue 12)."""
        self.full_resync_pending = True

    def link_trouble(self, reason: str) -> None:
        """The adapter could not reach or greet the secondary (a dial, TLS, a refused peer):
        shown as ``link_error`` until the next WELCOME."""
        self.link_error = reason

    def split_brain_detected(self, reason: str) -> None:
        """Our lineage and a peer's diverged (epochs.py): nothing is replicated until an operator
        discards one side. Cleared by the next WELCOME."""
        self.split_brain = True
        self.link_error = reason

    def generation_persisted(self, token: int, *, now: float | None = None) -> None:
        """``PersistGeneration(token)`` is durable: the writes that waited for it may land, and
        the answers held meanwhile go out (generations.py)."""
        if now is not None:
            self.now = now
        for op in self._generations.persisted(token):
            self._emit(AckHost(op.op_id, op.errno))
        if self.link is not LinkState.DISCONNECTED:
            # The secondary adopts the lineage our HELLO carried: one without this generation
            # would let it be promoted and then fail back over the writes that started it.
            self._fail_link(REGREET)
        for op in sorted(self._by_seq.values(), key=lambda o: o.seq):
            self._try_apply(op)
            self._maybe_finish(op)
        self._pump()

    @property
    def lineage(self) -> Lineage:
        """This site's epochs and data generations (generations.py, epochs.py)."""
        return self._generations.lineage

    @property
    def secondary_holds_lineage(self) -> bool:
        """The secondary holds every data generation of ours: nothing it lacks was answered
        since its last RESYNC_DONE (generations.py ``claimed``; lease.py clears the mark)."""
        return self._generations.claimed

    def _emit_persist_generation(self, token: int, lineage: Lineage) -> None:
        self._actions.append(PersistGeneration(token, lineage))

    def local_applied(self, seq: int, errno: int, *, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        op = self._by_seq.get(seq)
        invariant(op is not None, f"local_applied for unknown seq {seq}")
        assert op is not None
        op.to(OpEvent.LOCAL_DONE)
        op.errno = errno
        self._order.landed(op)  # the next op in line on its extents may apply now
        if errno:
            self._local_write_failed(op.extents)
            if op.is_range:
                # Done on the secondary only once the resync of its extents is durable there
                # (the end of the pass reports it), or at the next WELCOME if the link drops.
                self._welcome_ranges.append(seq)
        elif op.is_range:
            self._ranges_to_clear.append(seq)
            self._request_flush()
        self._maybe_finish(op)
        self._pump()

    def _local_write_failed(self, extents: range) -> None:
        """A local write failed, possibly half done, after its data went to the secondary (or
        while the link was down, when the record may cover it there): the copies may differ in
        ``extents``. They join the out-of-sync set, durably, and with the link up are resynced
        at once from what this image holds now, whether the disk has room again or not."""
        self.counters.local_write_errors += 1
        if self.config.faults.local_write_error_ignored:
            return  # deliberately wrong: see faults.py
        self._oos.add(extents)
        if self.link is LinkState.CONNECTED:
            for extent in extents:
                self._queue_resync(extent)

    def local_flushed(self, ticket: int, *, now: float | None = None) -> None:
        """The fdatasync asked for by ``FlushLocal(ticket)`` (or a later one) has completed."""
        if now is not None:
            self.now = now
        for op in self._flushes.flushed(ticket):
            op.to(OpEvent.ACK)
            if self._generations.next is not None:
                self._generations.hold(op)  # answered once the generation is stored
            else:
                self._emit(AckHost(op.op_id, op.errno))
        self._keep_free()
        durable = self._flushes.local_durable
        cleared = [s for s in self._ranges_to_clear if s <= durable]
        if cleared:
            self._ranges_to_clear = [s for s in self._ranges_to_clear if s > durable]
            self._ranges_done.extend(cleared)
        self._pump()

    def local_flush_failed(self, ticket: int) -> None:
        """The fdatasync for ``ticket`` failed: every FLUSH/FUA waiting on it gets EIO (the
        data may not be on disk), and nothing it covered counts as locally durable."""
        for op in self._flushes.failed(ticket):
            op.to(OpEvent.ACK)
            self._emit(AckHost(op.op_id, Errno.EIO))
        self._pump()

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (the adapter's monotonic clock), or None while
        nothing waits on time: the earlier of ``watermark_timer`` and, while a session is up,
        the next heartbeat or the link's timeout (liveness.py)."""
        work = self.watermark_timer()
        link = self._liveness.deadline()
        if link is None or (work is not None and work < link):
            return work
        return link

    def watermark_timer(self) -> float | None:
        """The work part of ``get_timer``: None while no op is queued or in flight, nothing
        is to be made durable on either site, no resync pass or verify runs and no out-of-sync
        set is to be written back. While anything is, the next durability watermark, every
        ``watermark_interval_s`` (the expiry of waiting ops and the resync rate budget are
        checked at the same ticks)."""
        connected = self.link is LinkState.CONNECTED
        unconfirmed = self._flushes.remote_durable < self._order.next_seq - 1
        if self.config.faults.timer_ignores_remote_durable:
            unconfirmed = False  # deliberately wrong: see faults.py
        busy = (self._queue or self._misses or self._read_aheads or self._resync.active
                or self._verify.active or self._oos.dirty
                or self._order.applied_prefix > self._flushes.local_durable
                or (connected and (unconfirmed or self._resync.remaining() or self.out_of_sync)))
        return self._watermark_at if busy else None

    def handle_timer(self, now: float) -> None:
        """The deadline from ``get_timer`` came (or passed): fail ops that waited too long,
        refill the resync rate budget, once per interval ask both sites for durability, send
        the heartbeat when due and end a link silent for ``timeout_s`` (liveness.py)."""
        self.tick(now)
        if now >= self._watermark_at:
            self._watermark_at = now + self.config.watermark_interval_s
            self.request_durable()
            if self._removals and not self._misses and self.link is LinkState.CONNECTED:
                # No MISS to carry them: a quiet record tells the secondary on its own.
                self._send(wire.Remove(tuple(self._removals), ()))
                self._removals = []
        due = self._liveness.due(now)
        if due is Due.PING:
            self._ping()
        elif due is Due.DEAD:
            self._fail_link(self._liveness.silence_reason("secondary"))

    def tick(self, now: float) -> None:
        """Time passes: fail ops that waited too long (for room in the record, or for the link
        in block mode), and refill the resync rate budget. (``handle_timer`` adds the
        watermark; adapters call that.)"""
        self.now = now
        self._resync.tune_window(now)
        limit = (self.config.block_timeout_s if self.link is not LinkState.CONNECTED
                 else self.config.miss_wait_s)
        expired = [op for op in self._queue if op.waiting_since and now - op.waiting_since > limit]
        for op in expired:
            self._queue.remove(op)
            op.to(OpEvent.ACK)
            self._emit(AckHost(op.op_id, Errno.EIO))
        self._pump()

    def observe_rtt(self, rtt_s: float) -> None:
        """A link round trip (a PONG echoing our PING's timestamp). The least one this session
        is the link's own delay; later ones may include the queue behind resync data."""
        self.link_rtt_s = rtt_s
        self._resync.observe_rtt(rtt_s)

    def _ping(self) -> None:
        """The heartbeat: the secondary echoes the timestamp (the adapter's clock, in ns)."""
        self._emit(Send(wire.Ping(max(0, int(self.now * 1e9)))))

    def request_durable(self) -> None:
        """Ask both sites to report durability (the adapter's watermark timer). Also writes
        back an out-of-sync set that shrank (lazily: a larger stored set is only pessimistic)."""
        self._request_sync()
        self._request_flush()
        self._oos.persist_if_dirty()

    # -- queries ---------------------------------------------------------------------------------

    def statistics(self) -> PrimaryStatistics:
        lag_writes = (self._order.next_seq - 1 - self._remote_applied if self.link is LinkState.CONNECTED else 0)
        lag_bytes = self._sent_bytes + sum(op.length for op in self._queue)
        in_sync = (self.link is LinkState.CONNECTED and not self._queue and not self._resync.remaining()
                   and not self._resync.active and not self._misses and not self._read_aheads and not self._oos.extents
                   and self._flushes.remote_durable >= self._order.next_seq - 1)
        return PrimaryStatistics(
            self.counters.writes, self.counters.hits, self.counters.misses, self.counters.resync_bytes,
            lag_bytes, lag_writes + len(self._queue), len(self.record), self.config.capacity,
            self.link.value, self._resync.remaining(), self._flushes.remote_durable,
            self._order.next_seq - 1, in_sync, len(self._oos.extents), self.counters.read_aheads,
            self.counters.local_write_errors, self.counters.secondary_storage_errors, self.split_brain,
            self.counters.room_waits, self.counters.add_waits, self.counters.evicted_ahead,
            self.counters.writes_behind_add, self.counters.write_groups, self.counters.grouped_writes,
            self.counters.misses_answered, self.counters.miss_round_trip_s,
            self.counters.miss_queued_s, self.counters.behind_add_waited_s)

    # -- online verify --------------------------------------------------------------------------

    def start_verify(self, repair: bool, *, now: float | None = None) -> bool:
        """Compare every extent's checksum with the secondary's, in the background (verify.py).
        False if the link is down or a verify is already running."""
        if now is not None:
            self.now = now
        if self.link is not LinkState.CONNECTED or self._verify.active:
            return False
        self._verify.start(repair, self.now)
        return True

    def verify_progress(self, *, now: float | None = None) -> VerifyProgress:
        """The current (or last) verify, for /status (``Verify.progress``)."""
        if now is not None:
            self.now = now
        return self._verify.progress(self.now)

    @property
    def verify_mismatches(self) -> set[int]:
        return self._verify.mismatches

    @property
    def verify_done_extents(self) -> int:
        return self._verify.done_extents

    def _verify_found_different(self, extent: int) -> None:
        """A verify (without --repair) found this extent different: durably out of sync, so
        in_sync cannot stand, and the next connect's resync copies it."""
        resync = self._resync
        if (extent in self._oos.extents or extent_runs.contains(resync.pass_runs, extent)
                or extent_runs.contains(self._oos.confirmed, extent) or extent in resync.pending()):
            return  # a resync copies it already (a pass, a repair, a failed local write's)
        self._oos.add((extent,))
        self._verify_marked.add(extent)

    def _verify_repaired(self, durable: int) -> None:
        """A repair's whole copy of an extent a verify marked is durable on the secondary: the
        extent no longer differs there, so it leaves the out-of-sync set (written back lazily: an
        entry left on disk meanwhile errs on the safe side)."""
        for extent in [e for e, seq in self._verify_repairs.items() if seq <= durable]:
            del self._verify_repairs[extent]
            self._verify_marked.discard(extent)
            if extent in self._oos.extents:
                self._oos.discard(extent)

    def verify_marked(self) -> set[int]:
        """Extents a verify marked out of sync this session: they wait for the next connect."""
        return self._verify_marked & self._oos.extents

    def _queue_resync(self, extent: int) -> None:
        """Copy one extent again (verify --repair, a failed local write): resync.py."""
        self._resync.queue(extent, self.now)

    def lag_seconds(self, *, now: float | None = None) -> float:
        """How long the oldest write the secondary has not applied has waited (timer-tick
        resolution), 0 when nothing is outstanding."""
        if now is not None:
            self.now = now
        if not self._sent or self.link is not LinkState.CONNECTED:
            return 0.0
        return max(0.0, self.now - self._oldest_unapplied_at)

    def absorb_out_of_sync(self, extents: set[int], everything: bool = False) -> None:
        """Failback: extents an old primary wrote that we may lack join our out-of-sync set
        (all of them, if it lost its own store). The adapter persists the set before answering
        the old primary."""
        self._oos.absorb((e for e in extents if e < self.extent_count), everything)

    def resync_progress(self, *, now: float | None = None) -> ResyncProgress:
        """The current (or last) resync pass, for /status (``Resync.progress``)."""
        if now is not None:
            self.now = now
        return self._resync.progress(self.now)

    def failback_bound_extents(self) -> int:
        """At most how many extents a failback would copy back if the secondary were promoted
        now: the record, our out-of-sync set and a running pass's resync set (counted apart:
        they may overlap, so this errs large, never small)."""
        return (len(self.record) + len(self._removals) + len(self._oos.extents)
                + extent_runs.count(self._resync.bound_runs))

    def unsynced_extents(self) -> set[int]:
        """Every extent the secondary may lack that its record might not cover: what a primary
        persists as out-of-sync when it stops."""
        clean = self._clean_through()
        record = self.record
        return unsynced_extents(
            self._oos.extents, self._resync.pending(),
            [op.extents for op in (*self._by_seq.values(), *self._queue)],
            (e for e in record.extents() if not record.is_clean(e, clean)))

    @property
    def last_seq(self) -> int:
        return self._order.next_seq - 1

    # -- internals -------------------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _send(self, message: wire.Message) -> None:
        self._actions.append(Send(message))

    def _extents(self, offset: int, length: int) -> range:
        if offset < 0 or length < 0 or offset + length > self.config.size:
            raise LocalProtocolError(f"op {offset}+{length} outside the volume")
        return extents_of(offset, length, self.config.extent_size)

    def _clean_through(self) -> int:
        if self.config.faults.evict_ignores_watermark:
            return self._order.next_seq  # deliberately wrong: see faults.py
        return min(self._flushes.remote_durable, self._flushes.local_durable)

    def _submit(self, op: Op) -> None:
        self.counters.writes += 1
        op.waiting_since = 0.0
        op.arrived_at = self.now
        self._queue.append(op)
        self._pump()

    def _pump(self) -> None:
        """Start queued ops that can start, then feed the resync. An op that must wait (for
        room in the record, the window, or the link in block mode) holds back only later ops
        that touch one of its extents: arrival order matters only where writes overlap."""
        if self._queue:
            blocked: set[int] = set()
            waiting: deque[Op] = deque()
            for op in self._queue:
                if (blocked and not blocked.isdisjoint(op.extents)) or not self._start(op):
                    waiting.append(op)
                    blocked.update(op.extents)
            self._queue = waiting
        self._pump_resync()
        if self._verify.active:
            self._verify.pump(self.now)
        if self._ranges_done and self.link is LinkState.CONNECTED:
            self._emit(Send(wire.Remove((), tuple(self._ranges_done))))
            self._ranges_done = []

    def _start(self, op: Op) -> bool:
        """Send (or, with the link down, just apply) one op. False: it must wait."""
        mode = self.config.mode
        if self.link is not LinkState.CONNECTED:
            # A write the record covers needs nothing more: the secondary already knows it may
            # be stale there. Any other write is out-of-sync (durably, before it lands here),
            # or in block mode waits for the link.
            covered = mode is not Mode.ASYNC and self.record.covers(op.extents)
            if not covered and self.config.block_on_disconnect and mode is not Mode.ASYNC:
                if not op.waiting_since:
                    op.waiting_since = self.now or 1e-9
                return False
            self._assign_seq(op)
            op.to(OpEvent.SEND)
            if not covered:
                self._mark_out_of_sync(op)
            self._generations.open()
            self._ready_local(op)
            return True
        if self._sent and self._sent_bytes + op.length > self.config.window_bytes and op.data is not None:
            return False  # backpressure: the window is full
        big_range = op.data is None and len(op.extents) > min(self.config.range_threshold_extents,
                                                              self.config.capacity // 2)
        if mode is Mode.ASYNC or big_range:
            # A RANGE is answered once the secondary journaled it (EARLY_RANGES, issue 14); in
            # sync mode the host waits for DURABLE as well, as for any sync-mode write.
            flags = 0 if mode is Mode.ASYNC or not big_range else _RANGE | (_DURABLE if mode is Mode.SYNC else 0)
            self._send_plain(op, flags)
            return True
        if self.record.covers(op.extents):
            self.counters.hits += 1
            if op.behind_add:
                self.counters.writes_behind_add += 1
                self.counters.behind_add_waited_s += self.now - op.arrived_at
            if not (op.sequential and self._send_read_ahead(op)):  # sequential: lookahead only
                self._send_plain(op, _DURABLE if mode is Mode.SYNC else 0)
            return True
        if self._reservations.will_add(op.extents):
            # A miss in flight will add these extents (touched or predicted): wait for its ADDED
            # and go as a hit, instead of sending a second miss that reserves room again. The
            # wait is bounded like a miss's wait for room (tick), should that ADDED never come.
            if not op.waiting_since:
                self.counters.add_waits += 1
                op.waiting_since = self.now or 1e-9
            op.behind_add = True
            return False
        return self._send_miss(op)

    def _continues_stream(self, offset: int, length: int) -> bool:
        """Whether a host write starts where one of the last STREAMS_TRACKED writes ended."""
        ends = self._stream_ends
        sequential = ends.pop(offset, 0) is None
        ends[offset + length] = None
        if len(ends) > STREAMS_TRACKED:
            ends.popitem(last=False)
        return sequential

    def _send_read_ahead(self, op: Op) -> bool:
        """Send a sequential hit as a MISS whose budget extends the record ahead of the stream,
        when the record ends within ``lookahead // 2 + 1`` extents of it. False: nothing to do
        now (the record reaches far enough, or no room without waiting), send a plain hit."""
        if not self._reservations.read_ahead_due(op.extents):
            return False
        wanted = self._reservations.read_ahead_wanted(op.extents)
        budget = len(wanted)
        evict = self.record.choose_evictions(budget, self._clean_through(), op.extents)
        if evict is None:
            return False  # never wait for room: the stream may still miss later, as before
        self.record.evict(evict)
        self.counters.read_aheads += 1
        self._assign_seq(op)
        self._reservations.reserve(op, budget, wanted)
        self._read_aheads[op.seq] = op
        op.to(OpEvent.SEND)  # covered already: the host does not wait for the ADDED
        self._transmit(op, _MISS, budget, self._with_removals(evict))
        self._ready_local(op)
        return True

    def _send_plain(self, op: Op, flags: int) -> None:
        self._assign_seq(op)
        if flags & _RANGE:
            op.is_range = True
            self._misses[op.seq] = op  # answered with ADDED once journaled on the secondary
            if flags & _DURABLE:
                self._durable_waits[op.seq] = op  # sync mode: and DURABLE
            op.to(OpEvent.SEND_AWAIT)
        elif flags & _DURABLE:
            self._durable_waits[op.seq] = op
            op.to(OpEvent.SEND_AWAIT)
        else:
            op.to(OpEvent.SEND)
        self._transmit(op, flags, 0, ())
        self._ready_local(op)

    def _send_miss(self, op: Op) -> bool:
        new = sum(1 for e in op.extents if e not in self.record)
        if new > self.config.capacity:
            raise LocalProtocolError(f"a write touching {new} extents cannot fit a record of "
                                     f"{self.config.capacity}")
        room = self.record.room_for_miss(op.extents, self.config.lookahead, self._clean_through(),
                                         self._free_slots.spare())
        if room is None:
            if not op.waiting_since:
                self.counters.room_waits += 1
                self._free_slots.room_wait()
                op.waiting_since = self.now or 1e-9
            self.request_durable()
            return False
        budget, evict = room
        self.record.evict(evict)
        self._free_slots.miss_sent()
        self.counters.misses += 1
        self.counters.miss_queued_s += self.now - op.arrived_at
        op.sent_at = self.now
        self._assign_seq(op)
        self._misses[op.seq] = op
        op.to(OpEvent.SEND_AWAIT)
        self._reservations.reserve(op, budget, self._reservations.for_miss(op.extents, budget))
        if self.record.free() < self._high_free:
            # Clean slots run short: ask for the watermark now rather than at the next tick, so
            # the extents written so far turn clean before the next miss needs room (issue 14);
            # one request in flight per site (flushes.py: request_early).
            self._flushes.request_early(
                self._order.applied_prefix,
                self._order.next_seq - 1 if self.link is LinkState.CONNECTED else None)
        flags = _MISS | (_DURABLE if self.config.mode is Mode.SYNC else 0)
        if self.config.mode is Mode.SYNC:
            self._durable_waits[op.seq] = op
        self._transmit(op, flags, budget, self._with_removals(evict))
        self._ready_local(op)  # waits for ADDED (Ordering.may_apply)
        return True

    def _keep_free(self) -> None:
        """The watermark moved: while misses wait for room and free slots are under the low
        mark, evict clean extents ahead of need up to the high mark, so the next misses find
        room instead of waiting for the next watermark (free_slots.py, issue 14). The secondary
        hears of them with the next MISS, ahead of its additions: a REMOVE of their own would
        cost a journal commit there. Until then its record is larger than our copy, which only
        errs safe (the failback bound counts them)."""
        record = self.record
        wanted = self._free_slots.wanted(record.free())
        if not wanted or self.link is not LinkState.CONNECTED or self.config.mode is Mode.ASYNC:
            return
        clean = self._clean_through()
        if self.config.faults.evict_ahead_takes_dirty:
            clean = self._order.next_seq  # deliberately wrong: see faults.py
        evict = record.choose_ahead(wanted, clean)
        if evict:
            record.evict(evict)
            self.counters.evicted_ahead += len(evict)
            self._removals.extend(evict)

    @property
    def removals_pending(self) -> tuple[int, ...]:
        """Extents evicted ahead of need that the secondary has not been told of yet."""
        return tuple(self._removals)

    def _with_removals(self, evict: list[int]) -> tuple[int, ...]:
        """A MISS's removals: those evicted ahead of need first, then its own."""
        if not self._removals:
            return tuple(evict)
        removals, self._removals = (*self._removals, *evict), []
        return removals

    def _assign_seq(self, op: Op) -> None:
        self._order.assign(op)
        if op.op_id < 0:  # resync data: no stream of the host's
            self.record.note_write(op.extents, op.seq)
        else:
            self.record.note_write(op.extents, op.seq, op.offset, op.length)

    def _transmit(self, op: Op, flags: int, budget: int, removals: tuple[int, ...]) -> None:
        if flags & _MISS:
            self.predictor.observe(op.extents)  # as the secondary will, adding for this MISS
        elif self._removals and any(e in op.extents for e in self._removals):
            # A RANGE or RESYNC write to an extent evicted ahead of need: the removal goes
            # first, while the extent is still clean (_keep_free).
            self._send(wire.Remove(tuple(self._removals), ()))
            self._removals = []
        message: wire.Message
        if op.data is not None:
            message = wire.Write(op.seq, op.offset, flags, budget, removals, op.data)
        else:
            zflags = flags | (_PUNCH if op.punch else 0)
            message = wire.Zero(op.seq, op.offset, op.length, zflags, budget, removals)
        self._sent.append((op.seq, op.length if op.data is not None else 0))
        if len(self._sent) == 1:
            self._oldest_unapplied_at = self.now
        self._sent_bytes += op.length if op.data is not None else 0
        self._emit(Send(message))

    def _ready_local(self, op: Op) -> None:
        """The op may now be applied locally once it is first in line on all its extents."""
        self._try_apply(op)

    def _try_apply(self, op: Op) -> None:
        # ADDED, DURABLE and a disconnect may each retry an op whose ApplyLocal is already out
        # (a sync-mode hit applies at once, then DURABLE arrives): its state says so.
        if (op.state not in APPLICABLE or self._generations.next is not None
                or not self._order.may_apply_now(op)):
            return
        op.to(OpEvent.ISSUE)
        self._emit(ApplyLocal(op.seq, op.offset, op.length, op.data, op.punch))

    def _maybe_finish(self, op: Op) -> None:
        if op.state is not OpState.APPLIED:
            return
        if self._generations.next is not None:
            return  # answered once the new generation is stored (generation_persisted)
        self._by_seq.pop(op.seq, None)
        if op.fua and op.errno == 0:
            op.to(OpEvent.FLUSH)
            self._wait_flush(op)
        else:
            op.to(OpEvent.ACK)
            self._emit(AckHost(op.op_id, op.errno))

    def _wait_flush(self, op: Op) -> None:
        self._flushes.wait(op, self._order.applied_prefix)

    def _emit_flush(self, ticket: int) -> None:
        self._actions.append(FlushLocal(ticket))

    def _request_flush(self) -> None:
        self._flushes.request(self._order.applied_prefix)

    def _request_sync(self) -> None:
        if self.link is LinkState.CONNECTED:
            self._flushes.request_sync(self._order.next_seq - 1)

    def _on_applied(self, seq: int) -> None:
        self._remote_applied = max(self._remote_applied, seq)
        while self._sent and self._sent[0][0] <= seq:
            _, size = self._sent.popleft()
            self._oldest_unapplied_at = self.now
            self._sent_bytes -= size
        self._resync.on_applied(seq)

    def _on_added(self, seq: int, extents: tuple[int, ...]) -> None:
        ahead = self._read_aheads.pop(seq, None)
        op = ahead if ahead is not None else self._misses.pop(seq, None)
        if op is None:
            raise RemoteProtocolError(f"ADDED for seq {seq}, which is not a pending miss")
        budget = op.budget
        self._reservations.release(op)  # before any check: a bad ADDED must not leak it
        self._flushes.on_added(seq)
        if len(extents) > budget:
            raise RemoteProtocolError(f"secondary added {len(extents)} extents, budget was {budget}")
        self.record.add(e for e in extents if e < self.extent_count)
        if ahead is not None:
            return  # receive() pumps: writes waiting for these extents now go as hits
        invariant(op.is_range or self.record.covers(op.extents), "ADDED did not cover the write")
        if not op.is_range:
            self.counters.misses_answered += 1
            self.counters.miss_round_trip_s += self.now - op.sent_at
        if op.seq not in self._durable_waits:
            op.to(OpEvent.REMOTE_OK)
        self._try_apply(op)
        self._maybe_finish(op)

    def _on_durable(self, seq: int) -> None:
        self._flushes.on_durable(seq)
        if self._verify_repairs:
            self._verify_repaired(seq)
        self._on_applied(seq)
        done = [s for s in self._durable_waits if s <= seq]
        for s in sorted(done):
            op = self._durable_waits.pop(s)
            if s in self._misses:
                continue  # still waiting for ADDED
            op.to(OpEvent.REMOTE_OK)
            self._try_apply(op)
            self._maybe_finish(op)
        self.record.forget_clean(self._clean_through())
        self._keep_free()

    def _on_welcome(self, welcome: wire.Welcome) -> None:
        if self.link is not LinkState.HANDSHAKE:
            raise RemoteProtocolError("WELCOME outside the handshake")
        if welcome.volume_id != self.config.volume_id:
            self._fail_link("secondary has a different volume identity")
            return
        self.link = LinkState.CONNECTED
        self.link_error = ""
        self.split_brain = False
        self._remote_applied = 0
        self._flushes.session_reset()
        self._order.skip_to(welcome.applied_seq)  # continue past what the secondary has seen
        self._removals = []
        if self.config.mode is not Mode.ASYNC:
            self.record.replace(welcome.record)
        # Resync what may differ: the secondary's record and stale extents, our out-of-sync set;
        # everything for a new or half-synced secondary, or async mode after an unclean stop:
        # nothing bounds what may differ then, so every extent is compared (by checksum when
        # we have them).
        full = bool(welcome.flags & (wire.WelcomeFlag.NEW | wire.WelcomeFlag.INCONSISTENT))
        for seq, _, _ in welcome.ranges:
            self._welcome_ranges.append(seq)
        self._resync.begin(welcome, full or self.full_resync_pending, self._order.next_seq - 1, self.now)

    def _on_storage_failed(self, message: wire.StorageFailed) -> None:
        """The secondary could not write its image or metadata and drops the link. Whatever it
        has not reported durable may be missing there: that joins the out-of-sync set (its
        record covers most of it, but a failed journal commit leaves that claim in doubt), and
        the link is treated as lost. A later connection resyncs it all."""
        try:
            what = wire.StorageArea(message.area).label
        except ValueError:
            what = f"storage (area {message.area})"
        self.secondary_error = (f"the secondary could not write its {what}: {message.detail} "
                                f"(errno {message.errno})")
        self.counters.secondary_storage_errors += 1
        dirty = {e for e in self.record.dirty_extents(self._flushes.remote_durable) if e < self.extent_count}
        if not dirty <= self._oos.extents:
            self._oos.add(dirty)
        self._fail_link(self.secondary_error)

    def _on_resync_set_durable(self, set_id: int) -> None:
        runs = self._resync.set_durable(set_id)
        if runs is None:
            raise RemoteProtocolError(f"RESYNC_SET_DURABLE for unknown set {set_id}")
        self._set_confirmed(runs)

    def _set_confirmed(self, runs: extent_runs.Runs) -> None:
        """The secondary's journal now holds this set durably: it knows it may differ there,
        so our out-of-sync set need not; writes waiting for these to be durably out-of-sync
        may go."""
        self._release_oos_waiting(self._oos.confirm(runs))

    def _fail_link(self, reason: str) -> None:
        self.link_error = reason
        self._emit(LinkFailed(reason))

    def _pump_resync(self) -> None:
        """Feed the resync pass (resync.py) and end it once it is durable on both sites."""
        resync = self._resync
        if self.link is not LinkState.CONNECTED or not (resync.todo or resync.active):
            return
        resync.pump(self.now)
        if not resync.sent_all():
            return
        if self._flushes.local_durable < resync.local_need:
            self._request_flush()
            return
        # Every extent of the pass now holds our data there, durably on both sites: the
        # secondary is a consistent copy again, and the ranges it had pending are done.
        self._ranges_done.extend(self._welcome_ranges)
        self._welcome_ranges = []
        self.secondary_error = ""  # it wrote and synced the whole pass: recovered
        # RESYNC_DONE makes the secondary claim the generations our HELLO carried (secondary.py
        # ResyncFinished): a write answered after this, cut off, needs a new one.
        self._generations.greeting()
        resync.end()

    def _send_resync(self, extent: int, offset: int, length: int, data: bytes) -> int:
        """Send one extent's data as a RESYNC write; its seq."""
        op = Op(-1, offset, length, data, False, False, range(extent, extent + 1))
        op.seq = self._order.next_seq  # never applied here: it is read from this image
        self._order.next_seq += 1
        self.record.resynced(extent, op.seq)  # dirty until this data is durable there
        if extent in self._verify_marked:
            self._verify_repairs[extent] = op.seq  # a repair: it leaves OOS once durable there
        self._order.mark_applied(op.seq)
        self._transmit(op, _RESYNC, 0, ())
        self.counters.resync_bytes += length
        return op.seq

    def _link_full(self, length: int) -> bool:
        return bool(self._sent) and self._sent_bytes + length > self.config.window_bytes

    def _last_seq(self) -> int:
        return self._order.next_seq - 1

    def _resume_later(self) -> None:
        self._actions.append(ResumeLater())

    def resume(self, *, now: float | None = None) -> None:
        """The adapter's answer to ResumeLater: carry on with the resync."""
        if now is not None:
            self.now = now
        self._resync.resume()
        self._pump()
