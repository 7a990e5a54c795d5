"""The primary's replication core: hit or miss, ordering, the window, eviction and resync.

Theory of operation (claims 1-5, 10-17). Every host write becomes an *op* with a sequence
number; ops go to the secondary on one ordered stream, so the secondary's image is always a
prefix of the primary's write history.

* Hit (every touched extent is in the record copy): send the data, apply it locally, answer the
  host. The secondary's record already covers the extent, so it may lag (claims 3, 5).
* Miss: evict clean extents if the record is full and piggyback their removal (claim 17), send the
  data with MISS and a budget of extents the secondary may add (claims 2, 11, 12, 18, 19), and
  only when ADDED comes back add those extents to the copy, apply locally and answer the host
  (claim 1). Writing locally first could leave a difference no record covers.
* Read-ahead (lookahead mode): a hit that continues a sequential stream (it starts where a recent
  write ended) and comes within ``lookahead // 2 + 1`` extents of the record's edge goes with MISS
  and a budget, like a miss, but the host does not wait for its ADDED: its own extents are
  covered already, and the secondary adds the next extents durably before answering (claims
  18-19), so the stream finds them recorded instead of missing every ``lookahead + 1`` extents.
* ``sync`` mode (DRBD protocol C) also waits for the secondary's durable watermark to pass the
  op; ``async`` (protocol A) never waits and keeps no record.

Local applies keep arrival order per extent: an op waits until every earlier op touching one of
its extents has been applied (a hit never overtakes a pending miss on a shared extent).

Large zero/trim ranges carry no payload and would flood the record, so they go as a RANGE op:
the secondary journals the range as pending, applies it and makes it durable before answering;
the primary applies it, and once its own flush covers it tells the secondary the range is done.

Resync sends whole extents read from the local image at send time. A resync read waits until no
earlier op on that extent is still waiting to be applied locally. The record's capacity bounds
what host writes can make differ; a resync pass needs no room in it (issue 19): the pass starts
with RESYNC_SET, every extent it may change, which the secondary journals as one entry before
any later effect and answers with RESYNC_SET_DURABLE. Only then may those extents leave our
out-of-sync set (the secondary now knows durably that it may differ there). Resync data goes as
plain RESYNC writes, as fast as the window and ``resync_rate_max`` allow; RESYNC_DONE, once the
whole pass is durable on both sites, clears the set there. In async mode the secondary keeps no
record and no set: nothing bounds what may differ after an unclean stop there anyway.

A local write that fails (a full disk, an I/O error) has usually gone to the secondary already,
and may have landed here in part: its extents join the out-of-sync set (persisted at once) and,
with the link up, are resynced from what this image now holds, so the copies agree again; the
host gets the errno. A secondary that fails to write reports STORAGE_FAILED and drops the link:
whatever it has not reported durable joins the out-of-sync set, and the link-loss rules apply
until a later connection resyncs it (``secondary_error`` says why meanwhile).

Data generations (issue 13, epochs.py): the first write this core would apply or answer with the
link down, if the secondary may hold our newest generation, first makes a new one durable
(``PersistGeneration``); until ``generation_persisted`` no op applies locally and none is
answered. So a secondary promoted meanwhile meets our lineage as diverged (split brain), never as
an older one to fail back over. Meetings with a peer's lineage (DEMOTE, REFUSE's code) go
through ``epochs.meeting``.

All I/O is done by the adapter through ``Action`` values drained with ``actions()``, except
resync reads, which go through the injected ``read`` port so that a read and its send are atomic.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import xxhash

from foresync.errors import Errno, LocalProtocolError, RemoteProtocolError, invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire
from foresync.link.wire import WriteFlag
from foresync.record import runs as extent_runs
from foresync.record.estimate import MissRatioEstimator
from foresync.record.predict import (
    PREDICTORS,
    additions,
    extents_of,
    read_ahead_due,
    read_ahead_wanted,
)
from foresync.record.record import UNSENT, Eviction, RecordCopy
from foresync.replication.actions import (
    AckHost as AckHost,
)
from foresync.replication.actions import (
    ApplyLocal as ApplyLocal,
)
from foresync.replication.actions import (
    BecomeSecondary as BecomeSecondary,
)
from foresync.replication.actions import (
    FlushLocal as FlushLocal,
)
from foresync.replication.actions import (
    LinkFailed as LinkFailed,
)
from foresync.replication.actions import (
    PersistGeneration as PersistGeneration,
)
from foresync.replication.actions import (
    PersistOutOfSync as PersistOutOfSync,
)
from foresync.replication.actions import PrimaryAction as Action
from foresync.replication.actions import (
    ResumeLater as ResumeLater,
)
from foresync.replication.actions import (  # re-exported: adapters name them from here
    Send as Send,
)
from foresync.replication.epochs import Lineage, Meeting, meeting, new_epoch_id

_NOT_YET_SENT = UNSENT  # a write seq above any real one: "dirty until resynced" (record.py)
# Plain ints on the per-write path: operators on IntFlag members go through enum.py, about a
# microsecond each (profiled), several times per write.
_MISS, _DURABLE, _RESYNC = int(WriteFlag.MISS), int(WriteFlag.DURABLE), int(WriteFlag.RESYNC)
_PUNCH, _RANGE = int(WriteFlag.PUNCH), int(WriteFlag.RANGE)
VERIFY_BATCH = 16  # extents hashed per VERIFY request
STREAMS_TRACKED = 16  # sequential streams recognised at once (their next expected offsets)
VERIFY_IN_FLIGHT = 2
# Work one pump may do for a resync before it yields to the event loop (ResumeLater), counted in
# bytes read or hashed; a hole found by ``is_hole`` counts HOLE_CHECK_COST. 16 MiB is about 6 ms
# of xxh3 and reads from the page cache: the loop keeps answering the admin endpoint and the
# link's heartbeats however large the volume (a 1 TiB full sync once held it for 50 s).
RESYNC_SLICE_BYTES = 16 * 1024 * 1024
# Resync bytes sent and not yet APPLIED there: about twice bandwidth x RTT, tuned as the pass
# runs (``_tune_resync_window``), between RESYNC_WINDOW_MIN_BYTES and ``resync_window_bytes``.
# Everything in flight is queued ahead of a host write that must wait for the secondary (a
# miss's ADDED): with the whole 64 MiB link window full of resync, a host 4 KiB write's p99 was
# 380 ms during an initial sync at 6.5 ms RTT, 8 ms with 4 MiB in flight (1.7 ms without a
# sync), but 4 MiB fill only 80 MB/s at 50 ms RTT.
RESYNC_WINDOW_BYTES = 32 * 1024 * 1024
RESYNC_WINDOW_MIN_BYTES = 2 * 1024 * 1024
RESYNC_WINDOW_START_BYTES = 4 * 1024 * 1024
RATE_SAMPLE_S = 0.1  # the shortest interval a throughput sample covers
RATE_SAMPLES = 10  # the window follows the best of the last few samples
HOLE_CHECK_COST = 16 * 1024  # SEEK_DATA on a sparse file: about 2 us, as 16 KiB of hashing


# Why the core drops a link whose HELLO carried a lineage that has since grown (generation_persisted).
REGREET = "a new data generation started after the HELLO: greeting the secondary again with it"


class Mode(Enum):
    LOOKAHEAD = "lookahead"
    SYNC = "sync"
    ASYNC = "async"


class LinkState(Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKE = "handshake"
    CONNECTED = "connected"




@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode
    size: int
    extent_size: int
    capacity: int
    lookahead: int
    eviction: Eviction
    volume_id: bytes
    epoch: int = 1
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


@dataclass(slots=True, eq=False)
class _Op:
    op_id: int  # host request id; -1 for resync
    offset: int
    length: int
    data: bytes | None
    punch: bool
    fua: bool
    extents: range
    seq: int = 0
    budget: int = 0
    waiting_since: float = 0.0
    remote_ok: bool = False  # ADDED received (miss) / durable (sync) / not needed
    applied: bool = False
    resync_extent: int = -1
    is_range: bool = False
    errno: int = 0
    oos_wait: bool = False  # applies locally only once its extents are durably out-of-sync
    expected_adds: tuple[int, ...] = ()  # a miss: what the secondary is expected to add
    apply_issued: bool = False  # ApplyLocal emitted; the adapter may not have finished it yet
    sequential: bool = False  # a host write that starts where a recent one ended


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


@dataclass(slots=True)
class _Counters:
    writes: int = 0
    hits: int = 0
    misses: int = 0
    resync_bytes: int = 0
    read_aheads: int = 0  # hits sent with MISS to extend the record ahead of a stream
    local_write_errors: int = 0  # local applies that failed (the host got the errno)
    secondary_storage_errors: int = 0  # STORAGE_FAILED reports from the secondary


class _Planned:
    """An extent the record holds or an ADDED in flight will add (read-ahead's view)."""

    __slots__ = ("_core",)

    def __init__(self, core: PrimaryCore) -> None:
        self._core = core

    def __contains__(self, extent: int, /) -> bool:
        return extent in self._core.record or extent in self._core._pending_adds


class PrimaryCore:
    def __init__(self, config: Config, read: Callable[[int, int], bytes],
                 is_hole: Callable[[int, int], bool] | None = None) -> None:
        self.config = config
        self._read = read
        self._is_hole = is_hole  # a cheap "this range reads as zeroes" (SEEK_DATA), if any
        self.extent_count = -(-config.size // config.extent_size)
        self.record = RecordCopy(config.capacity, config.eviction,
                                 evict_dirty=config.faults.s3fifo_evicts_dirty)
        self.predictor = PREDICTORS[config.predictor]()  # mirrors the secondary's
        self._low_free = config.capacity // 8  # below it, a miss asks for the watermark (none under 8)
        self._planned = _Planned(self)  # record members and adds in flight, as one container
        # The live miss-ratio curve (estimate.py); async mode keeps no record to size.
        self.estimator = None if config.mode is Mode.ASYNC else MissRatioEstimator(
            config.size, config.extent_size, config.capacity, config.eviction, config.lookahead,
            config.predictor)
        self.link = LinkState.DISCONNECTED
        self.link_error = ""
        self.secondary_error = ""  # the secondary's last storage failure, until a resync completes
        self._actions: list[Action] = []
        self._next_seq = 1
        self._queue: deque[_Op] = deque()  # host ops not yet sent, in arrival order
        self._resync: deque[int] = deque()  # extents still to resync
        self._resync_set: set[int] = set()
        # A full sync sweeps [_sweep_next, _sweep_end) in order instead of listing every extent
        # in _resync and _resync_set: a million of each at 1 TiB took 130 ms and 100 MB to build.
        self._sweep_next = self._sweep_end = 0
        self._sent: deque[tuple[int, int]] = deque()  # (seq, bytes) not yet APPLIED remotely
        self._sent_bytes = 0
        self._misses: dict[int, _Op] = {}  # seq -> miss op waiting for ADDED
        self._read_aheads: dict[int, _Op] = {}  # seq -> read-ahead hit whose ADDED is due
        self._stream_ends: OrderedDict[int, None] = OrderedDict()  # where recent writes ended
        self._durable_waits: dict[int, _Op] = {}  # seq -> sync-mode op waiting for DURABLE
        self._by_seq: dict[int, _Op] = {}  # ops sent and not yet finished locally
        self._extent_fifo: dict[int, deque[int]] = {}  # extent -> seqs waiting to apply locally
        self._applied_prefix = 0  # every seq <= this is applied locally (or never needed it)
        self._applied_beyond: set[int] = set()
        self._skipped: list[tuple[int, int]] = []  # [start, stop) seq ranges never assigned
        self._remote_applied = 0
        self._remote_durable = 0
        self._local_durable = 0
        self._sync_requested = 0
        self._flush_tickets = 0  # FlushLocal actions issued
        self._ticket_prefix: dict[int, int] = {}  # ticket -> applied prefix when issued
        self._fua_waits: deque[tuple[int, _Op]] = deque()  # (ticket, op) waiting for a flush
        self._ranges_to_clear: list[int] = []  # range seqs the local flush still has to cover
        self._ranges_done: list[int] = []  # range seqs to report done to the secondary
        self._welcome_ranges: list[int] = []  # the secondary's pending ranges, done after resync
        self._remote_hashes: tuple[int, ...] = ()  # the secondary's xxh3 per extent (full sync)
        self._hashes_void: set[int] = set()  # queued again by verify: their hash is old
        self._differs = -1  # the extent last found to differ: not hashed again when retried
        self._zero_hashes: dict[int, int] = {}  # length -> xxh3 of that many zero bytes
        self._resume_asked = False
        self._slice_work = 0  # work done by the running _pump_resync (RESYNC_SLICE_BYTES)
        self._resync_unapplied: deque[tuple[int, int]] = deque()  # (seq, bytes) resync in flight
        self._resync_unapplied_bytes = 0
        self._resync_window = min(RESYNC_WINDOW_START_BYTES, config.resync_window_bytes)
        self._rtt_min_s = 0.0  # the least link round trip seen this session (``observe_rtt``)
        self._resync_applied_bytes = 0  # resync bytes APPLIED there, ever
        self._rate_mark: tuple[float, int] = (0.0, 0)  # (now, applied bytes) of the last sample
        self._rate_samples: deque[float] = deque(maxlen=RATE_SAMPLES)  # bytes/s
        self._resync_pass = False  # a pass started at WELCOME and RESYNC_DONE not yet sent
        self._resync_total_bytes = 0
        self._resync_done_bytes = 0
        self._resync_sent_bytes = 0
        # Comparing (checksums, nothing sent when they match) and sending progress at different
        # rates: a single ETA from the send rate counted skipped extents as still to send.
        self._resync_compare_total_bytes = 0
        self._resync_compared_bytes = 0
        self._resync_send_total_bytes = 0  # known so far: grows as comparisons find differences
        self._resync_started = 0.0
        self._resync_tokens = 0.0
        self._resync_tokens_at = 0.0
        self.split_brain = False
        # The data generation (epochs.py): writes acknowledged while cut off belong to one the
        # secondary never saw, stored before the first of them applies or is answered.
        self.lineage = Lineage(config.history, config.generations or config.history)
        self._generation_fresh = False  # our newest generation is one the secondary never saw
        self._generation_tokens = 0
        self._generation_next: Lineage | None = None  # being stored (PersistGeneration)
        self._generation_acks: list[_Op] = []  # FUA writes and FLUSHes flushed meanwhile
        self._pending_adds: dict[int, int] = {}
        self._oldest_unapplied_at = 0.0  # extent -> in-flight misses expected to add it
        self._verify_active = False
        self._verify_repair = False
        self._verify_requests = 0
        self._verify_pending: dict[int, tuple[int, tuple[int, ...]]] = {}  # request -> local
        self._verify_busy: deque[int] = deque()  # extents skipped while a write was in flight
        self._verify_next = 0
        self.verify_mismatches: set[int] = set()
        self.verify_done_extents = 0
        self._verify_started = 0.0
        self._verify_ended = 0.0  # 0 while one runs (or none ran)
        self._verify_runs = 0  # started so far: a watcher that samples sees even a short one
        self._resync_passes = 0  # likewise for resync passes
        self._resync_last_seq = 0
        self._resync_local_need = 0  # our own flush must cover this before RESYNC_DONE
        self._set_ids = 0  # RESYNC_SET ids sent (this process)
        self._sets_unconfirmed: dict[int, extent_runs.Runs] = {}  # id -> runs: not durable there yet
        self._pass_runs: extent_runs.Runs = ()  # every set sent this pass: the secondary's set
        self._pass_confirmed: extent_runs.Runs = ()  # ... and those durable there
        self.out_of_sync: set[int] = set()  # extents the secondary may lack outside its record
        self._oos_durable: set[int] = set()  # the out-of-sync set as last made durable
        self._oos_tokens = 0
        self._oos_snapshots: dict[int, frozenset[int]] = {}
        self._oos_waiting: list[_Op] = []
        self._oos_dirty = False  # out_of_sync shrank since the last persist
        self.counters = _Counters()
        self.full_resync_pending = False  # set by the adapter: resync every extent on connect
        self.now = 0.0

    # -- inputs from the adapter -------------------------------------------------------------------

    def actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def write(self, op_id: int, offset: int, data: bytes, fua: bool) -> None:
        op = _Op(op_id, offset, len(data), data, False, fua, self._extents(offset, len(data)))
        op.sequential = self.config.mode is Mode.LOOKAHEAD and self._continues_stream(offset, len(data))
        if self.estimator is not None:
            self.estimator.observe(self.now, offset, len(data), True)
        self._submit(op)

    def write_hit(self, offset: int, data: bytes) -> wire.Write | None:
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
            if offset in self._stream_ends and self._read_ahead_due(extents):
                return None
            self._continues_stream(offset, length)
            counters.hits += 1
            if self.estimator is not None:
                self.estimator.observe(self.now, offset, length, True)
        counters.writes += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        record.note_write(extents, seq)
        sent = self._sent
        sent.append((seq, length))
        if len(sent) == 1:
            self._oldest_unapplied_at = self.now
        self._sent_bytes += length
        return wire.Write(seq, offset, 0, 0, (), data)

    def hit_applied(self, seq: int, errno: int = 0, offset: int = 0, length: int = 0) -> None:
        """The local write of ``write_hit``'s WRITE ``seq`` has finished (failed or not: the
        adapter answers the host with its errno). A failure names the write's ``offset`` and
        ``length``, and the adapter then carries out the actions it leaves (``actions()``)."""
        if seq == self._applied_prefix + 1 and not self._applied_beyond:
            self._applied_prefix = seq
        else:
            self._mark_applied(seq)
        if errno:
            self._local_write_failed(self._extents(offset, length))
            self._pump()

    def zero(self, op_id: int, offset: int, length: int, punch: bool, fua: bool) -> None:
        if self.estimator is not None:
            self.estimator.observe(self.now, offset, length, False)
        self._submit(_Op(op_id, offset, length, None, punch, fua, self._extents(offset, length)))

    def flush(self, op_id: int) -> None:
        """A host FLUSH: local durability; in sync mode remote durability too (every sync-mode
        write already waited for it before being answered)."""
        op = _Op(op_id, 0, 0, None, False, True, range(0))
        op.applied = op.remote_ok = True
        self._wait_flush(op)

    def connected(self) -> None:
        """The transport is up: greet the secondary."""
        if self.link is not LinkState.DISCONNECTED:
            raise LocalProtocolError(f"connected() while link is {self.link.value}")
        self.link = LinkState.HANDSHAKE
        # The secondary may adopt the lineage this HELLO carries: a write answered after this
        # connection ends needs a new generation, even if the WELCOME never comes.
        self._generation_fresh = False
        self._rtt_min_s = 0.0
        self._rate_samples.clear()
        self._rate_mark = (0.0, 0)
        c = self.config
        # An old primary whose out-of-sync store was lost hands over "everything" (failback).
        flags = wire.HelloFlag.EVERYTHING_OUT_OF_SYNC if self.full_resync_pending else 0
        self._emit(Send(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, flags, c.volume_id, c.size,
                                   c.extent_size, self.lineage.epoch, self.lineage.epochs,
                                   tuple(sorted(self._oos_durable)), self.lineage.data)))

    def disconnected(self, reason: str) -> None:
        """The link is gone: finish every op locally and remember what the secondary may lack."""
        if self.link is LinkState.DISCONNECTED:
            return
        was_connected = self.link is LinkState.CONNECTED
        self.link = LinkState.DISCONNECTED
        self.link_error = reason
        self._sent.clear()
        self._sent_bytes = 0
        self._sync_requested = self._remote_applied = 0
        # Writes from now on wait to be durably out-of-sync here, as any write while cut off
        # does; the set the secondary holds still counts in the bound (``_pass_runs``).
        self._pass_confirmed = ()
        if self.config.mode is Mode.ASYNC and was_connected:
            # No record covers anything in async mode: whatever the secondary has not made
            # durable may be lost there (a crash), so it becomes out-of-sync.
            dirty = self.record.dirty_extents(self._remote_durable)
            if dirty - self.out_of_sync:
                self.out_of_sync.update(dirty)
                self._persist_out_of_sync()
        # Hits are covered by the secondary's durable record already. A miss (or RANGE) that was
        # not answered may or may not have reached it: its extents become out-of-sync, durably,
        # before the op is applied here. Resync extents stay where they were (record or OOS).
        if self._fua_waits or any(op.resync_extent < 0 for op in self._by_seq.values()):
            self._open_generation()  # these are answered after the cut: see _open_generation
        for ahead in self._read_aheads.values():
            self._release_reservation(ahead)  # the extents it asked for may or may not be added
        self._read_aheads.clear()
        for op in sorted(self._by_seq.values(), key=lambda o: o.seq):
            if op.remote_ok:
                continue
            unanswered = op.seq in self._misses
            self._release_reservation(op)
            op.remote_ok = True
            self._misses.pop(op.seq, None)
            self._durable_waits.pop(op.seq, None)
            if unanswered:
                self._mark_out_of_sync(op)
            self._ready_local(op)
            self._maybe_finish(op)
        self._pending_adds.clear()  # every op that expected adds was released above
        self._resync.clear()
        self._resync_set.clear()
        self._sweep_next = self._sweep_end = 0
        self._resync_unapplied.clear()
        self._resync_unapplied_bytes = 0
        self._sets_unconfirmed.clear()  # their extents never left our out-of-sync set
        self._welcome_ranges = []
        if self._verify_active:
            self._verify_active = False  # abandoned: the operator can run it again
            self._verify_ended = self.now
            self._verify_pending.clear()
        self._pump()

    def restore_out_of_sync(self, extents: set[int]) -> None:
        """At start: the out-of-sync set found on disk."""
        self.out_of_sync = set(extents)
        self._oos_durable = set(extents)

    def out_of_sync_persisted(self, token: int) -> None:
        snapshot = self._oos_snapshots.pop(token, None)
        invariant(snapshot is not None, f"unknown out-of-sync persist token {token}")
        assert snapshot is not None
        for older in [t for t in self._oos_snapshots if t < token]:
            del self._oos_snapshots[older]
        self._oos_durable = set(snapshot)
        self._release_oos_waiting()
        self._pump()

    def _release_oos_waiting(self) -> None:
        waiting, self._oos_waiting = self._oos_waiting, []
        for op in waiting:
            if self._oos_settled(op.extents):
                op.oos_wait = False
                self._ready_local(op)
            else:
                self._oos_waiting.append(op)

    def _oos_settled(self, extents: range) -> bool:
        """Durably out-of-sync, and no persist still in flight will drop them again; or in a
        resync set the secondary holds durably (this session), which covers them as well."""
        pending = self._oos_snapshots.values()
        confirmed = self._pass_confirmed
        return all((e in self._oos_durable and all(e in snap for snap in pending))
                   or extent_runs.contains(confirmed, e) for e in extents)

    def _mark_out_of_sync(self, op: _Op) -> None:
        self.out_of_sync.update(op.extents)
        if self._oos_settled(op.extents):
            return
        op.oos_wait = True
        self._oos_waiting.append(op)
        self._persist_out_of_sync()

    def _persist_out_of_sync(self) -> None:
        self._oos_tokens += 1
        self._oos_snapshots[self._oos_tokens] = frozenset(self.out_of_sync)
        self._oos_dirty = False
        self._emit(PersistOutOfSync(self._oos_tokens, tuple(sorted(self.out_of_sync)),
                                    self.full_resync_pending))

    def receive(self, message: wire.Message) -> None:
        match message:
            case wire.Applied(seq):
                self._on_applied(seq)
            case wire.Added(seq, extents):
                self._on_added(seq, extents)
            case wire.Durable(seq):
                self._on_durable(seq)
            case wire.Pong() | wire.Ping():
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
            case wire.ResyncSetDurable(set_id):
                self._on_resync_set_durable(set_id)
            case wire.Hashes(request, first, hashes):
                self._on_hashes(request, first, hashes)
            case wire.StorageFailed():
                self._on_storage_failed(message)
            case _:
                raise RemoteProtocolError(f"primary got unexpected {type(message).__name__}")
        self._pump()

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

    def generation_persisted(self, token: int) -> None:
        """``PersistGeneration(token)`` is durable: the writes that waited for it may land."""
        invariant(token == self._generation_tokens and self._generation_next is not None,
                  f"unknown generation persist token {token}")
        assert self._generation_next is not None
        self.lineage, self._generation_next = self._generation_next, None
        self._generation_fresh = True
        for op in self._generation_acks:
            self._emit(AckHost(op.op_id, op.errno))
        self._generation_acks = []
        if self.link is not LinkState.DISCONNECTED:
            # The secondary adopts the lineage our HELLO carried: one without this generation
            # would let it be promoted and then fail back over the writes that started it.
            self._fail_link(REGREET)
        for op in sorted(self._by_seq.values(), key=lambda o: o.seq):
            if op.resync_extent < 0:
                self._try_apply(op)
                self._maybe_finish(op)
        self._pump()

    def _open_generation(self) -> None:
        """A write is about to be applied or answered that the secondary may lack, with the link
        down. If our newest generation is one the secondary has (it adopted it at its last
        WELCOME), start a new one: stored before any such write lands or is answered, so a
        secondary promoted meanwhile meets a diverged lineage (split brain), never an older one
        whose writes a failback would silently overwrite (issue 13)."""
        if self._generation_fresh or self._generation_next is not None:
            return
        self._generation_tokens += 1
        self._generation_next = self.lineage.with_generation(self.config.new_id())
        self._emit(PersistGeneration(self._generation_tokens, self._generation_next))

    def local_applied(self, seq: int, errno: int) -> None:
        op = self._by_seq.get(seq)
        invariant(op is not None and not op.applied, f"local_applied for unknown seq {seq}")
        assert op is not None
        op.applied = True
        op.errno = errno
        self._mark_applied(seq)
        for extent in op.extents:
            fifo = self._extent_fifo[extent]
            invariant(fifo[0] == seq, "local apply out of order")
            fifo.popleft()
            if fifo:
                self._try_apply(self._by_seq[fifo[0]])
            else:
                del self._extent_fifo[extent]
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
        self.out_of_sync.update(extents)
        self._persist_out_of_sync()
        if self.link is LinkState.CONNECTED:
            for extent in extents:
                self._queue_resync(extent)

    def local_flushed(self, ticket: int) -> None:
        """The fdatasync asked for by ``FlushLocal(ticket)`` (or a later one) has completed."""
        for done in [t for t in self._ticket_prefix if t <= ticket]:
            self._local_durable = max(self._local_durable, self._ticket_prefix.pop(done))
        while self._fua_waits and self._fua_waits[0][0] <= ticket:
            _, op = self._fua_waits.popleft()
            if self._generation_next is not None:
                self._generation_acks.append(op)  # answered once the generation is stored
            else:
                self._emit(AckHost(op.op_id, op.errno))
        durable = self._local_durable
        cleared = [s for s in self._ranges_to_clear if s <= durable]
        if cleared:
            self._ranges_to_clear = [s for s in self._ranges_to_clear if s > durable]
            self._ranges_done.extend(cleared)
        self._pump()

    def local_flush_failed(self, ticket: int) -> None:
        """The fdatasync for ``ticket`` failed: every FLUSH/FUA waiting on it gets EIO (the
        data may not be on disk), and nothing it covered counts as locally durable."""
        self._ticket_prefix.pop(ticket, None)
        while self._fua_waits and self._fua_waits[0][0] <= ticket:
            _, op = self._fua_waits.popleft()
            self._emit(AckHost(op.op_id, Errno.EIO))
        self._pump()

    def tick(self, now: float) -> None:
        """Time passes: fail ops that waited too long (for room in the record, or for the link
        in block mode), and refill the resync rate budget."""
        self.now = now
        self._tune_resync_window()
        limit = (self.config.block_timeout_s if self.link is not LinkState.CONNECTED
                 else self.config.miss_wait_s)
        expired = [op for op in self._queue if op.waiting_since and now - op.waiting_since > limit]
        for op in expired:
            self._queue.remove(op)
            self._emit(AckHost(op.op_id, Errno.EIO))
        self._pump()

    def observe_rtt(self, rtt_s: float) -> None:
        """The adapter measured a link round trip (PING/PONG). The least one this session is the
        link's own delay; later ones may include the queue behind resync data."""
        if rtt_s > 0 and (not self._rtt_min_s or rtt_s < self._rtt_min_s):
            self._rtt_min_s = rtt_s

    def _tune_resync_window(self) -> None:
        """Resync bytes in flight: twice the best recent throughput times the least RTT, so the
        link stays full (a window too small caps the throughput it measures, and doubling it
        grows it) while no more than about one RTT of resync queues ahead of host writes."""
        mark_at, mark_bytes = self._rate_mark
        elapsed = self.now - mark_at
        if elapsed < RATE_SAMPLE_S:
            return
        self._rate_mark = (self.now, self._resync_applied_bytes)
        if not mark_at or not self._resync_unapplied:
            return  # no sample yet, or the window was not the limit
        self._rate_samples.append((self._resync_applied_bytes - mark_bytes) / elapsed)
        if self._rtt_min_s:
            wanted = int(2 * max(self._rate_samples) * self._rtt_min_s)
            self._resync_window = min(self.config.resync_window_bytes, max(RESYNC_WINDOW_MIN_BYTES, wanted))

    def request_durable(self) -> None:
        """Ask both sites to report durability (the adapter's watermark timer). Also writes
        back an out-of-sync set that shrank (lazily: a larger stored set is only pessimistic)."""
        self._request_sync()
        self._request_flush()
        if self._oos_dirty:
            self._persist_out_of_sync()

    # -- queries ---------------------------------------------------------------------------------

    def statistics(self) -> PrimaryStatistics:
        lag_writes = (self._next_seq - 1 - self._remote_applied if self.link is LinkState.CONNECTED else 0)
        lag_bytes = self._sent_bytes + sum(op.length for op in self._queue)
        in_sync = (self.link is LinkState.CONNECTED and not self._queue and not self._resync_remaining()
                   and not self._resync_pass and not self._misses and not self._read_aheads and not self.out_of_sync
                   and self._remote_durable >= self._next_seq - 1)
        return PrimaryStatistics(
            self.counters.writes, self.counters.hits, self.counters.misses, self.counters.resync_bytes,
            lag_bytes, lag_writes + len(self._queue), len(self.record), self.config.capacity,
            self.link.value, self._resync_remaining(), self._remote_durable,
            self._next_seq - 1, in_sync, len(self.out_of_sync), self.counters.read_aheads,
            self.counters.local_write_errors, self.counters.secondary_storage_errors, self.split_brain)

    # -- online verify --------------------------------------------------------------------------

    def start_verify(self, repair: bool) -> bool:
        """Compare every extent's checksum with the secondary's, in the background. False if
        the link is down or a verify is already running."""
        if self.link is not LinkState.CONNECTED or self._verify_active:
            return False
        self._verify_active = True
        self._verify_repair = repair
        self._verify_next = 0
        self._verify_busy = deque()
        self._verify_pending = {}
        self.verify_mismatches = set()
        self.verify_done_extents = 0
        self._verify_started = self.now
        self._verify_ended = 0.0
        self._verify_runs += 1
        self._pump_verify()
        return True

    def verify_progress(self) -> dict[str, object]:
        """The current (or last) verify, for /status: extents and bytes, a rate while it runs
        (issue 17: ``672/1024 extents`` alone gave no idea of the time left), and each
        mismatched extent's byte offset beside its number."""
        size = self.config.extent_size
        done_bytes = min(self.verify_done_extents * size, self.config.size)
        elapsed = (self._verify_ended or self.now) - self._verify_started
        rate = int(done_bytes / elapsed) if elapsed > 0 else 0  # a finished one: its average
        shown = sorted(self.verify_mismatches)[:1000]
        return {"active": self._verify_active, "done_extents": self.verify_done_extents,
                "total_extents": self.extent_count,
                "done_bytes": done_bytes, "total_bytes": self.config.size,
                "rate_bytes_per_s": rate,
                "mismatched_extents": shown,
                "mismatched_offsets": [extent * size for extent in shown],
                "mismatches": len(self.verify_mismatches), "repair": self._verify_repair,
                "runs": self._verify_runs}

    def _pump_verify(self) -> None:
        while self._verify_active and len(self._verify_pending) < VERIFY_IN_FLIGHT:
            if self._verify_next < self.extent_count:
                first = self._verify_next
                count = min(VERIFY_BATCH, self.extent_count - first)
                self._verify_next += count
            elif self._verify_busy and not any(e in self._extent_fifo for e in self._verify_busy):
                first, count = self._verify_busy.popleft(), 1
            else:
                break
            local: list[int] = []
            for extent in range(first, first + count):
                if extent in self._extent_fifo:
                    self._verify_busy.append(extent)  # a write to it is in flight: check later
                    local.append(-1)
                    continue
                offset = extent * self.config.extent_size
                length = min(self.config.extent_size, self.config.size - offset)
                local.append(xxhash.xxh3_64_intdigest(self._read(offset, length)))
            self._verify_requests += 1
            self._verify_pending[self._verify_requests] = (first, tuple(local))
            self._emit(Send(wire.Verify(self._verify_requests, first, count)))
        if (self._verify_active and not self._verify_pending and not self._verify_busy
                and self._verify_next >= self.extent_count):
            self._verify_active = False
            self._verify_ended = self.now

    def _on_hashes(self, request: int, first: int, hashes: tuple[int, ...]) -> None:
        pending = self._verify_pending.pop(request, None)
        if pending is None or pending[0] != first or len(pending[1]) != len(hashes):
            raise RemoteProtocolError(f"HASHES for unknown verify request {request}")
        for index, (mine, theirs) in enumerate(zip(pending[1], hashes, strict=True)):
            if mine < 0:
                continue
            extent = first + index
            self.verify_done_extents += 1
            if mine != theirs:
                self.verify_mismatches.add(extent)
                if self._verify_repair:
                    self._queue_resync(extent)
        self._pump_verify()

    def _queue_resync(self, extent: int) -> None:
        """Copy one extent again (verify --repair); it stays out-of-sync until it is."""
        self.out_of_sync.add(extent)
        self._oos_dirty = True
        self._hashes_void.add(extent)  # verify found it differs: a full sync's checksum is old
        if extent not in self._resync_set and not self._sweep_next <= extent < self._sweep_end:
            self._resync_set.add(extent)
            self._resync.append(extent)
            self.record.note_write((extent,), _NOT_YET_SENT)
            self._send_resync_set(((extent, 1),))
        if not self._resync_pass:
            self._resync_pass = True
            self._resync_total_bytes = self._resync_done_bytes = self._resync_sent_bytes = 0
            self._resync_compare_total_bytes = self._resync_compared_bytes = 0
            self._resync_send_total_bytes = 0
            self._resync_passes += 1
            self._resync_started = self.now
        self._resync_total_bytes += self.config.extent_size
        self._resync_send_total_bytes += self.config.extent_size

    def lag_seconds(self) -> float:
        """How long the oldest write the secondary has not applied has waited (timer-tick
        resolution), 0 when nothing is outstanding."""
        if not self._sent or self.link is not LinkState.CONNECTED:
            return 0.0
        return max(0.0, self.now - self._oldest_unapplied_at)

    def absorb_out_of_sync(self, extents: set[int], everything: bool = False) -> None:
        """Failback: extents an old primary wrote that we may lack join our out-of-sync set
        (all of them, if it lost its own store). The adapter persists the set before answering
        the old primary."""
        self.out_of_sync.update(e for e in extents if e < self.extent_count)
        if everything:
            self.full_resync_pending = True
        self._oos_durable = set(self.out_of_sync)

    def resync_progress(self) -> dict[str, int]:
        """The current (or last) resync pass, for /status. ``set_extents``: the extents the
        secondary holds in its journaled resync set while the pass runs (it may differ there
        until RESYNC_DONE, beyond its record). Besides the whole pass, its two phases apart:
        comparing (extents the secondary sent checksums for; a match costs no send) and sending
        (extents without a checksum plus those found to differ so far, so its total grows while
        comparing goes on). Each has its own rate, hence its own ETA."""
        elapsed = max(self.now - self._resync_started, 1e-9)
        rate = int(self._resync_sent_bytes / elapsed) if self._resync_pass else 0
        compare_rate = int(self._resync_compared_bytes / elapsed) if self._resync_pass else 0
        return {"done_bytes": self._resync_done_bytes, "total_bytes": self._resync_total_bytes,
                "rate_bytes_per_s": rate,
                "remaining_bytes": max(0, self._resync_total_bytes - self._resync_done_bytes),
                "active": int(self._resync_pass),
                "compare_total_bytes": self._resync_compare_total_bytes,
                "compare_done_bytes": self._resync_compared_bytes,
                "compare_rate_bytes_per_s": compare_rate,
                "send_total_bytes": self._resync_send_total_bytes,
                "send_done_bytes": self._resync_sent_bytes,
                "send_rate_bytes_per_s": rate, "passes": self._resync_passes,
                "set_extents": extent_runs.count(self._pass_runs)}

    def failback_bound_extents(self) -> int:
        """At most how many extents a failback would copy back if the secondary were promoted
        now: the record, our out-of-sync set and a running pass's resync set (counted apart:
        they may overlap, so this errs large, never small)."""
        return len(self.record) + len(self.out_of_sync) + extent_runs.count(self._pass_runs)

    def unsynced_extents(self) -> set[int]:
        """Every extent the secondary may lack that its record might not cover: what a primary
        persists as out-of-sync when it stops."""
        pending = set(self.out_of_sync) | self._resync_set | set(range(self._sweep_next, self._sweep_end))
        for op in self._by_seq.values():
            pending.update(op.extents)
        for op in self._queue:
            pending.update(op.extents)
        clean = self._clean_through()
        pending.update(e for e in self.record.extents() if not self.record.is_clean(e, clean))
        return pending

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    # -- internals -------------------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _extents(self, offset: int, length: int) -> range:
        if offset < 0 or length < 0 or offset + length > self.config.size:
            raise LocalProtocolError(f"op {offset}+{length} outside the volume")
        return extents_of(offset, length, self.config.extent_size)

    def _clean_through(self) -> int:
        if self.config.faults.evict_ignores_watermark:
            return self._next_seq  # deliberately wrong: see faults.py
        return min(self._remote_durable, self._local_durable)

    def _submit(self, op: _Op) -> None:
        self.counters.writes += 1
        op.waiting_since = 0.0
        self._queue.append(op)
        self._pump()

    def _pump(self) -> None:
        """Start queued ops that can start, then feed the resync. An op that must wait (for
        room in the record, the window, or the link in block mode) holds back only later ops
        that touch one of its extents: arrival order matters only where writes overlap."""
        if self._queue:
            blocked: set[int] = set()
            waiting: deque[_Op] = deque()
            for op in self._queue:
                if (blocked and not blocked.isdisjoint(op.extents)) or not self._start(op):
                    waiting.append(op)
                    blocked.update(op.extents)
            self._queue = waiting
        self._pump_resync()
        if self._verify_active:
            self._pump_verify()
        if self._ranges_done and self.link is LinkState.CONNECTED:
            self._emit(Send(wire.Remove((), tuple(self._ranges_done))))
            self._ranges_done = []

    def _start(self, op: _Op) -> bool:
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
            op.remote_ok = True
            if not covered:
                self._mark_out_of_sync(op)
            self._open_generation()
            self._ready_local(op)
            return True
        if self._sent and self._sent_bytes + op.length > self.config.window_bytes and op.data is not None:
            return False  # backpressure: the window is full
        big_range = op.data is None and len(op.extents) > min(self.config.range_threshold_extents,
                                                              self.config.capacity // 2)
        if mode is Mode.ASYNC or big_range:
            self._send_plain(op, _RANGE if big_range and mode is not Mode.ASYNC else 0)
            return True
        if self.record.covers(op.extents):
            self.counters.hits += 1
            if not (op.sequential and self._send_read_ahead(op)):  # sequential: lookahead only
                self._send_plain(op, _DURABLE if mode is Mode.SYNC else 0)
            return True
        if self._pending_adds and all(e in self.record or e in self._pending_adds for e in op.extents):
            # A miss in flight will add these extents (touched or predicted): wait for its ADDED
            # and go as a hit, instead of sending a second miss that reserves room again. The
            # wait is bounded like a miss's wait for room (tick), should that ADDED never come.
            if not op.waiting_since:
                op.waiting_since = self.now or 1e-9
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

    def _read_ahead_due(self, extents: range) -> bool:
        """Whether the record (with the adds in flight) ends within ``lookahead // 2 + 1``
        extents of a sequential write to ``extents``."""
        return read_ahead_due(extents, self.config.lookahead, self.extent_count, self._planned)

    def _send_read_ahead(self, op: _Op) -> bool:
        """Send a sequential hit as a MISS whose budget extends the record ahead of the stream,
        when the record ends within ``lookahead // 2 + 1`` extents of it. False: nothing to do
        now (the record reaches far enough, or no room without waiting), send a plain hit."""
        if not self._read_ahead_due(op.extents):
            return False
        wanted = read_ahead_wanted(self.predictor, op.extents, self.config.lookahead,
                                   self.extent_count, self._planned)
        budget = len(wanted)
        evict = self.record.choose_evictions(budget, self._clean_through(), op.extents)
        if evict is None:
            return False  # never wait for room: the stream may still miss later, as before
        self.record.evict(evict)
        self.counters.read_aheads += 1
        self._assign_seq(op)
        self._reserve(op, budget, wanted)
        self._read_aheads[op.seq] = op
        op.remote_ok = True  # covered already: the host does not wait for the ADDED
        self._transmit(op, _MISS, budget, tuple(evict))
        self._ready_local(op)
        return True

    def _reserve(self, op: _Op, budget: int, expected: tuple[int, ...]) -> None:
        """Hold ``budget`` record slots for what the secondary will add for ``op``, and note the
        extents expected, so that writes to them wait for this ADDED instead of missing again."""
        op.budget = budget
        self.record.reserved += budget
        op.expected_adds = expected
        for extent in expected:
            self._pending_adds[extent] = self._pending_adds.get(extent, 0) + 1

    def _release_reservation(self, op: _Op) -> None:
        """A miss's or read-ahead's ADDED came, or never will (disconnect): release what
        ``_reserve`` held for it."""
        self._release_expected(op)
        self.record.reserved -= op.budget
        op.budget = 0

    def _send_plain(self, op: _Op, flags: int) -> None:
        self._assign_seq(op)
        if flags & _RANGE:
            op.is_range = True
            self._misses[op.seq] = op  # answered with ADDED once durable on the secondary
        elif flags & _DURABLE:
            self._durable_waits[op.seq] = op
        else:
            op.remote_ok = True
        self._transmit(op, flags, 0, ())
        self._ready_local(op)

    def _expected_adds(self, touched: range, budget: int) -> tuple[int, ...]:
        """What the secondary will add for a miss (it follows the same rule, claims 18-19)."""
        return tuple(additions(self.predictor, touched, budget, self.config.lookahead,
                               self.extent_count, self.record))

    def _release_expected(self, op: _Op) -> None:
        for extent in op.expected_adds:
            left = self._pending_adds.get(extent, 0) - 1
            if left > 0:
                self._pending_adds[extent] = left
            else:
                self._pending_adds.pop(extent, None)
        op.expected_adds = ()

    def _send_miss(self, op: _Op) -> bool:
        new = sum(1 for e in op.extents if e not in self.record)
        if new > self.config.capacity:
            raise LocalProtocolError(f"a write touching {new} extents cannot fit a record of "
                                     f"{self.config.capacity}")
        room = self.record.room_for_miss(op.extents, self.config.lookahead, self._clean_through())
        if room is None:
            if not op.waiting_since:
                op.waiting_since = self.now or 1e-9
            self.request_durable()
            return False
        budget, evict = room
        self.record.evict(evict)
        self.counters.misses += 1
        self._assign_seq(op)
        self._misses[op.seq] = op
        self._reserve(op, budget, self._expected_adds(op.extents, budget))
        if self.record.free() < self._low_free:
            # Clean slots run short: ask for the watermark now rather than at the next tick, so
            # the extents written so far turn clean before the next miss needs room (issue 14).
            self._request_sync()
            self._request_flush()
        flags = _MISS | (_DURABLE if self.config.mode is Mode.SYNC else 0)
        if self.config.mode is Mode.SYNC:
            self._durable_waits[op.seq] = op
        self._transmit(op, flags, budget, tuple(evict))
        self._ready_local(op)  # waits for ADDED (see _may_apply)
        return True

    def _assign_seq(self, op: _Op) -> None:
        op.seq = self._next_seq
        self._next_seq += 1
        self._by_seq[op.seq] = op
        self.record.note_write(op.extents, op.seq)
        for extent in op.extents:
            self._extent_fifo.setdefault(extent, deque()).append(op.seq)

    def _transmit(self, op: _Op, flags: int, budget: int, removals: tuple[int, ...]) -> None:
        if flags & _MISS:
            self.predictor.observe(op.extents)  # as the secondary will, adding for this MISS
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

    def _ready_local(self, op: _Op) -> None:
        """The op may now be applied locally once it is first in line on all its extents."""
        if op.resync_extent >= 0:
            return
        self._try_apply(op)

    def _try_apply(self, op: _Op) -> None:
        # apply_issued: ADDED, DURABLE and a disconnect may each retry an op whose ApplyLocal is
        # already out (a sync-mode hit applies at once, then DURABLE arrives); issue it once.
        if (op.applied or op.apply_issued or op.oos_wait or self._generation_next is not None
                or not self._may_apply(op)):
            return
        if not all(self._extent_fifo[e][0] == op.seq for e in op.extents):
            return
        op.apply_issued = True
        self._emit(ApplyLocal(op.seq, op.offset, op.length, op.data, op.punch))

    def _may_apply(self, op: _Op) -> bool:
        # A miss (and a RANGE op) applies locally only after the secondary recorded it; a
        # sync-mode hit applies at once, in parallel with the remote write (protocol C).
        if self.config.faults.apply_miss_before_ack:
            return True  # deliberately wrong: see faults.py
        return op.seq not in self._misses

    def _mark_applied(self, seq: int) -> None:
        self._applied_beyond.add(seq)
        self._advance_prefix()

    def _advance_prefix(self) -> None:
        while True:
            following = self._applied_prefix + 1
            if following in self._applied_beyond:
                self._applied_prefix = following
                self._applied_beyond.discard(following)
                continue
            if not self._skipped:
                return
            gap = next((g for g in self._skipped if g[0] == following), None)
            if gap is None:
                return
            self._skipped.remove(gap)
            self._applied_prefix = gap[1] - 1

    def _maybe_finish(self, op: _Op) -> None:
        if not (op.applied and op.remote_ok):
            return
        if self._generation_next is not None and op.resync_extent < 0:
            return  # answered once the new generation is stored (generation_persisted)
        self._by_seq.pop(op.seq, None)
        if op.resync_extent >= 0:
            return
        if op.fua and op.errno == 0:
            self._wait_flush(op)
        else:
            self._emit(AckHost(op.op_id, op.errno))

    def _wait_flush(self, op: _Op) -> None:
        self._fua_waits.append((self._issue_flush(), op))

    def _issue_flush(self) -> int:
        """A new flush ticket. The adapter's fdatasync for it starts after this call, so it covers
        every op applied so far (the adapter coalesces concurrent tickets into one fdatasync)."""
        self._flush_tickets += 1
        self._ticket_prefix[self._flush_tickets] = self._applied_prefix
        self._emit(FlushLocal(self._flush_tickets))
        return self._flush_tickets

    def _request_flush(self) -> None:
        pending = max(self._ticket_prefix.values(), default=self._local_durable)
        if self._applied_prefix > max(pending, self._local_durable):
            self._issue_flush()

    def _request_sync(self) -> None:
        last = self._next_seq - 1
        if self.link is LinkState.CONNECTED and last > self._remote_durable and last > self._sync_requested:
            self._sync_requested = last
            self._emit(Send(wire.Sync(last)))

    def _on_applied(self, seq: int) -> None:
        self._remote_applied = max(self._remote_applied, seq)
        while self._sent and self._sent[0][0] <= seq:
            _, size = self._sent.popleft()
            self._oldest_unapplied_at = self.now
            self._sent_bytes -= size
        resync = self._resync_unapplied
        while resync and resync[0][0] <= seq:
            size = resync.popleft()[1]
            self._resync_unapplied_bytes -= size
            self._resync_applied_bytes += size

    def _on_added(self, seq: int, extents: tuple[int, ...]) -> None:
        ahead = self._read_aheads.pop(seq, None)
        op = ahead if ahead is not None else self._misses.pop(seq, None)
        if op is None:
            raise RemoteProtocolError(f"ADDED for seq {seq}, which is not a pending miss")
        budget = op.budget
        self._release_reservation(op)  # before any check: a bad ADDED must not leak it
        if len(extents) > budget:
            raise RemoteProtocolError(f"secondary added {len(extents)} extents, budget was {budget}")
        self.record.add(e for e in extents if e < self.extent_count)
        if ahead is not None:
            return  # receive() pumps: writes waiting for these extents now go as hits
        invariant(op.is_range or self.record.covers(op.extents), "ADDED did not cover the write")
        if op.seq not in self._durable_waits:
            op.remote_ok = True
        self._try_apply(op)
        self._maybe_finish(op)

    def _on_durable(self, seq: int) -> None:
        self._remote_durable = max(self._remote_durable, seq)
        self._on_applied(seq)
        done = [s for s in self._durable_waits if s <= seq]
        for s in sorted(done):
            op = self._durable_waits.pop(s)
            if s in self._misses:
                continue  # still waiting for ADDED
            op.remote_ok = True
            self._try_apply(op)
            self._maybe_finish(op)
        self.record.forget_clean(self._clean_through())

    def _on_welcome(self, welcome: wire.Welcome) -> None:
        if self.link is not LinkState.HANDSHAKE:
            raise RemoteProtocolError("WELCOME outside the handshake")
        if welcome.volume_id != self.config.volume_id:
            self._fail_link("secondary has a different volume identity")
            return
        self.link = LinkState.CONNECTED
        self.link_error = ""
        self.split_brain = False
        self._remote_applied = self._remote_durable = self._sync_requested = 0
        if welcome.applied_seq >= self._next_seq:
            # Continue numbering past what the secondary has seen; the skipped numbers were never
            # used here, so count them as applied locally.
            self._skipped.append((self._next_seq, welcome.applied_seq + 1))
            self._next_seq = welcome.applied_seq + 1
            self._advance_prefix()
        if self.config.mode is not Mode.ASYNC:
            self.record.replace(welcome.record)
        # Resync what may differ: the secondary's record and stale extents, our out-of-sync set.
        self._remote_hashes = ()
        self._hashes_void = set()
        self._differs = -1
        full = bool(welcome.flags & (wire.WelcomeFlag.NEW | wire.WelcomeFlag.INCONSISTENT))
        for seq, _, _ in welcome.ranges:
            self._welcome_ranges.append(seq)
        if full or self.full_resync_pending:
            # A new or half-synced secondary, or async mode after an unclean stop: nothing bounds
            # what may differ, so every extent is compared (by checksum when we have them).
            # Built without sorting: a million extents at 1 TiB (full_resync_pending stays
            # until RESYNC_DONE).
            self._resync_set = set()
            self._resync = deque()
            self._sweep_next, self._sweep_end = 0, self.extent_count
            runs: extent_runs.Runs = ((0, self.extent_count),) if self.extent_count else ()
            if len(welcome.hashes) == self.extent_count:
                self._remote_hashes = welcome.hashes
        else:
            todo = set(welcome.record) | self.out_of_sync | set(welcome.stale)
            for _, offset, length in welcome.ranges:
                todo.update(extents_of(offset, length, self.config.extent_size))
            self._resync_set = {e for e in todo if e < self.extent_count}
            self._resync = deque(sorted(self._resync_set))
            runs = extent_runs.runs_of(self._resync_set)
        self._sets_unconfirmed = {}
        self._pass_runs = self._pass_confirmed = ()
        if runs:
            self._send_resync_set(runs)
        # Until its resync data is durable there, an extent to resync must not be evicted (in
        # async mode the mark also makes an unsent one out-of-sync at a disconnect). With a
        # record, the set the secondary journals covers the others: only those in the record
        # are marked, so a full sync keeps no mark per extent of the volume.
        self.record.clear_marks(self._next_seq - 1)
        if self.config.mode is Mode.ASYNC:
            self.record.note_write(self._resync_set, _NOT_YET_SENT)
            self.record.note_write(range(self._sweep_end), _NOT_YET_SENT)
        else:
            self.record.note_write((e for e in self.record.extents()
                                    if e in self._resync_set or e < self._sweep_end), _NOT_YET_SENT)
        self._resync_pass = True
        self._resync_total_bytes = self._resync_remaining() * self.config.extent_size
        self._resync_done_bytes = 0
        self._resync_sent_bytes = 0
        # A full sync with the secondary's checksums compares every extent before sending.
        with_hash = self.extent_count if len(self._remote_hashes) == self.extent_count else 0
        self._resync_compare_total_bytes = with_hash * self.config.extent_size
        self._resync_compared_bytes = 0
        self._resync_send_total_bytes = max(0, self._resync_remaining() - with_hash) * self.config.extent_size
        self._resync_passes += 1
        self._resync_started = self.now
        self._resync_tokens = float(min(self.config.resync_rate_max, self.config.extent_size))
        self._resync_tokens_at = self.now

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
        dirty = {e for e in self.record.dirty_extents(self._remote_durable) if e < self.extent_count}
        if not dirty <= self.out_of_sync:
            self.out_of_sync.update(dirty)
            self._persist_out_of_sync()
        self._fail_link(self.secondary_error)

    def _send_resync_set(self, runs: extent_runs.Runs) -> None:
        """Tell the secondary which extents the pass may change (it journals them before any
        effect after this message). Not in async mode: the secondary keeps nothing there."""
        if self.config.mode is Mode.ASYNC or self.link is not LinkState.CONNECTED:
            return
        self._set_ids += 1
        self._pass_runs = extent_runs.union(self._pass_runs, runs)
        self._emit(Send(wire.ResyncSet(self._set_ids, runs)))
        if self.config.faults.resync_before_set_durable:
            self._on_resync_set_durable(self._set_ids, runs)  # deliberately wrong: see faults.py
            return
        self._sets_unconfirmed[self._set_ids] = runs

    def _on_resync_set_durable(self, set_id: int, runs: extent_runs.Runs | None = None) -> None:
        """The secondary's journal now holds this set durably: it knows it may differ there,
        so our out-of-sync set need not (written back lazily: a larger stored set is safe)."""
        if runs is None:
            runs = self._sets_unconfirmed.pop(set_id, None)
            if runs is None:
                raise RemoteProtocolError(f"RESYNC_SET_DURABLE for unknown set {set_id}")
        self._pass_confirmed = extent_runs.union(self._pass_confirmed, runs)
        covered = [e for e in self.out_of_sync if extent_runs.contains(runs, e)]
        if covered:
            self.out_of_sync.difference_update(covered)
            self._oos_dirty = True
            self._release_oos_waiting()  # writes waiting for these to be durably out-of-sync

    def _fail_link(self, reason: str) -> None:
        self.link_error = reason
        self._emit(LinkFailed(reason))

    def _pump_resync(self) -> None:
        """Send resync extents while the window and the rate allow, doing at most a slice of
        work (``RESYNC_SLICE_BYTES``) before asking to be resumed. An extent still waiting for
        an earlier op to land locally is retried later; the others go on."""
        if self.link is not LinkState.CONNECTED or not (self._resync or self._resync_pass):
            return
        deferred: list[int] = []
        self._slice_work = 0
        while self._resync or self._sweep_next < self._sweep_end:
            if self._slice_work >= self.config.resync_slice_bytes:
                if not self._resume_asked:
                    self._resume_asked = True
                    self._emit(ResumeLater())
                break
            swept = not self._resync
            if swept:
                extent = self._sweep_next
                self._sweep_next += 1
            else:
                extent = self._resync.popleft()
            if extent in self._extent_fifo:
                deferred.append(extent)  # an earlier op on it still has to land locally
                self._resync_set.add(extent)
                continue
            if self._start_resync(extent) in ("window", "rate"):
                if swept:
                    self._sweep_next -= 1
                else:
                    self._resync.appendleft(extent)
                break
        self._resync.extendleft(reversed(deferred))
        if not self._resync_pass or self._resync_remaining() or self._sets_unconfirmed:
            return
        if self._remote_durable < self._resync_last_seq:
            return
        if self._local_durable < self._resync_local_need:
            # What we sent (or found identical) was read from our page cache: a crash here
            # must not lose it once the secondary forgets the set.
            self._request_flush()
            return
        # Every extent of the pass now holds our data there, durably on both sites: the
        # secondary is a consistent copy again, and the ranges it had pending are done.
        self._ranges_done.extend(self._welcome_ranges)
        self._welcome_ranges = []
        self._resync_pass = False
        self._remote_hashes = ()
        self._hashes_void = set()
        self._pass_runs = self._pass_confirmed = ()
        if self.full_resync_pending:
            self.full_resync_pending = False  # a cut before this point starts the pass again
            self._oos_dirty = True  # the stored "everything" may go now (lazily)
        self.secondary_error = ""  # it wrote and synced the whole pass: recovered
        self._emit(Send(wire.ResyncDone(self._resync_last_seq)))

    def _resync_remaining(self) -> int:
        """Extents of the running pass still to compare or send."""
        return len(self._resync_set) + self._sweep_end - self._sweep_next

    def _refill_rate(self) -> bool:
        """Whether the resync rate budget allows another extent now (link.resync_rate_max)."""
        rate = self.config.resync_rate_max
        if not rate:
            return True
        elapsed = max(0.0, self.now - self._resync_tokens_at)
        self._resync_tokens = min(float(rate), self._resync_tokens + elapsed * rate)
        self._resync_tokens_at = self.now
        return self._resync_tokens >= min(rate, self.config.extent_size)

    def _start_resync(self, extent: int) -> str:
        """Send one extent's current data: "sent", "same" (checksums match, nothing to send),
        or why not now: "window" or "rate"."""
        offset = extent * self.config.extent_size
        length = min(self.config.extent_size, self.config.size - offset)
        compared = self._same_there(extent, offset, length)
        if compared is True:
            self._resync_set.discard(extent)
            self._resync_local_need = self._next_seq - 1
            self._resynced_out_of_sync(extent)
            if self.record.last_seq(extent) == _NOT_YET_SENT:
                # Identical there as of now. A host write to it since the WELCOME went
                # out with a seq of its own, which the mark hid: count up to the last seq
                # so far, so the extent is clean once that is durable on both sites.
                self.record.resynced(extent, self._next_seq - 1)
            self._resync_done_bytes += length
            return "same"
        if self._sent and self._sent_bytes + length > self.config.window_bytes:
            return "window"
        if self._resync_unapplied and self._resync_unapplied_bytes + length > self._resync_window:
            return "window"
        if not self._refill_rate():
            return "rate"
        # Read and send in one step (the data just compared, if any, is that read): nothing can
        # land on this extent in between. No record room is needed: the resync set journaled
        # there covers the extent until RESYNC_DONE.
        if not isinstance(compared, bytes):
            self._slice_work += length
            compared = self._read(offset, length)
        self._differs = -1
        op = _Op(-1, offset, length, compared, False, False, range(extent, extent + 1), resync_extent=extent)
        op.seq = self._next_seq
        self._next_seq += 1
        self.record.resynced(extent, op.seq)  # dirty until this data is durable there
        self._mark_applied(op.seq)
        self._transmit(op, _RESYNC, 0, ())
        self._resync_unapplied.append((op.seq, length))
        self._resync_unapplied_bytes += length
        self._resynced_out_of_sync(extent)
        self._resync_set.discard(extent)
        self._resync_last_seq = self._resync_local_need = op.seq
        self.counters.resync_bytes += length
        self._resync_done_bytes += length
        self._resync_sent_bytes += length
        # An extent whose checksum was void (written since) is sent without comparing.
        self._resync_send_total_bytes = max(self._resync_send_total_bytes, self._resync_sent_bytes)
        if self.config.resync_rate_max:
            self._resync_tokens -= length
        return "sent"

    def _same_there(self, extent: int, offset: int, length: int) -> bool | bytes:
        """Whether the secondary's checksum (full sync) shows the extent identical there: True,
        False (nothing to compare), or our data, read and found different (sent as it is, not
        read twice). A hole here against the checksum of zeroes there needs no hashing."""
        hashes = self._remote_hashes
        if extent >= len(hashes) or extent == self._differs or extent in self._hashes_void:
            return False
        remote = hashes[extent]
        zero = self._zero_hashes.get(length)
        if zero is None:
            zero = self._zero_hashes[length] = xxhash.xxh3_64_intdigest(bytes(length))
        self._resync_compared_bytes += self.config.extent_size  # once: a retry is not hashed
        if remote == zero and self._is_hole is not None:
            self._slice_work += HOLE_CHECK_COST
            if self._is_hole(offset, length):
                return True
        self._slice_work += length
        data = self._read(offset, length)
        if xxhash.xxh3_64_intdigest(data) == remote:
            return True
        self._resync_send_total_bytes += self.config.extent_size
        self._differs = extent  # the window may be full: the retry sends without hashing again
        return data

    def resume(self) -> None:
        """The adapter's answer to ResumeLater: carry on with the resync."""
        self._resume_asked = False
        self._pump()

    def _resynced_out_of_sync(self, extent: int) -> None:
        """The extent's resync data went (or it was found identical): it leaves our out-of-sync
        set if something else now covers it there: the record, or a resync set that is durable
        there (in async mode nothing does, nor needs to)."""
        if extent in self.out_of_sync and (
                self.config.mode is Mode.ASYNC or extent in self.record
                or extent_runs.contains(self._pass_confirmed, extent)):
            self.out_of_sync.discard(extent)
            self._oos_dirty = True
