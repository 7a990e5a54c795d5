"""The object replication cores: the record of objects, hit or miss, eviction and resync (issue 18).

Theory of operation (claims 20, 40, 60: the record kept "using an object-based storage
technique", its further locations "chosen based on a logical connection between storage
objects"). The locations are object names (``bucket/key``); the engine is the block volume's: the
same link and stream, the same epochs and failover, the same rules as replication/primary.py.

* Every PUT, DELETE, CopyObject or CompleteMultipartUpload commit is an *op* on one name. Ops on
  one name run one at a time, in submission order (``_queues``): the op at the head gets its
  ``oseq`` when it starts, so local commits and the stream agree on each name's order and the
  secondary's store is a prefix of the primary's history.
* Hit (the name is in the record copy): send the op, commit locally (``CommitLocal``), answer the
  client once committed (claims 3, 5, 23). The secondary's record covers the name already.
* Miss: evict clean names if the record is full, piggyback their removal on this op (claim 17),
  send it with MISS and a budget of predicted names (claims 18-20), and only when OBJ_ADDED says
  the secondary durably recorded the name (and its neighbours, objects/predict.py) add them to the
  copy, commit locally and answer (claim 1). One round trip carries the object.
* ``sync`` mode also waits for the op's OBJ_DURABLE; ``async`` keeps no record and never waits:
  at every connect it compares every name and etag with the secondary (OBJ_LIST ALL).
* Clean: a name whose last op is at or below the durable watermark and that has no op in flight.
  Only clean names are evicted (record/eviction.py's rule for extents), oldest first. An
  OBJ_ADDED that names a name evicted by a later op (``_removed_at``) does not bring it back into
  the copy: the secondary, applying the stream in order, removes it again.
* The record is bounded in count (``capacity``) and in bytes (``capacity_bytes``, UTF-8 names):
  a miss makes room for its name plus ``budget`` names of ``slot_bytes(name)`` each, held
  (``_reserved``) until its OBJ_ADDED, so concurrent misses cannot overfill it; the secondary
  adds no more predicted bytes than that (``ObjectSecondaryCore``).
* What the record cannot bound is *may differ* (the primary's out-of-sync names, persisted by the
  adapter before any later action is carried out): ops while the link is down or before the
  secondary's record came back, a miss whose OBJ_ADDED never came, a failed local commit.
* At each connect the secondary sends its record (OBJ_LIST RECORD); it becomes the copy, and
  every name in it or in may-differ is resynced: the primary's current state of the name (the
  object, or its absence) is sent with RESYNC, and the name leaves may-differ once that op is
  durable (if nothing marked it again meanwhile). After a promotion the new primary's may-differ
  set starts as its record (daemon/objects.py): failback copies only those names plus what was
  written since.

All I/O is the adapter's, through the actions drained with ``actions()``; the local listing
(name -> etag, for a full compare) comes through the injected ``local_listing`` port.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from foresync.errors import invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.link.object_wire import (
    ListWhat,
    ObjectAdded,
    ObjectDurable,
    ObjectFlag,
    ObjectKind,
    ObjectList,
    ObjectListRequest,
    ObjectMessage,
    ObjectOp,
    ObjectRemove,
)
from foresync.objects.predict import ObjectPredictor
from foresync.replication.primary import Mode

_MISS, _DURABLE, _RESYNC = int(ObjectFlag.MISS), int(ObjectFlag.DURABLE), int(ObjectFlag.RESYNC)
SLOT_BYTES_MIN = 64  # a predicted name is charged at least this many bytes of the record


def slot_bytes(name: str) -> int:
    """What one predicted name may take of the record's bytes, by the name that predicted it."""
    return max(len(name.encode("utf-8")), SLOT_BYTES_MIN)


@dataclass(frozen=True, slots=True)
class ObjectConfig:
    mode: Mode
    capacity: int = 4096  # names in the record
    capacity_bytes: int = 1024 * 1024  # bytes of names in the record
    budget: int = 8  # predicted names a miss may add


# -- actions (the primary adapter carries them out in order) ---------------------------------------

@dataclass(frozen=True, slots=True)
class SendObject:
    message: ObjectMessage


@dataclass(frozen=True, slots=True)
class CommitLocal:
    op_id: int  # make the op's change visible locally now, then call ``committed``


@dataclass(frozen=True, slots=True)
class AnswerClient:
    op_id: int


@dataclass(frozen=True, slots=True)
class PersistMayDiffer:
    names: frozenset[str]  # the whole set, durably, before any later action


@dataclass(frozen=True, slots=True)
class ReadForResync:
    op_id: int  # read the name's current local state and call ``resync_read``
    name: str


ObjectAction = SendObject | CommitLocal | AnswerClient | PersistMayDiffer | ReadForResync


class OpState(Enum):
    QUEUED = "queued"  # behind an earlier op on its name
    WAIT_ROOM = "wait_room"  # a miss waiting for a clean name to evict
    AWAIT_ADDED = "await_added"  # a miss sent; the secondary has not yet recorded the name
    READING = "reading"  # a resync op: the adapter reads the local state
    COMMITTING = "committing"  # CommitLocal given; waiting for ``committed``
    AWAIT_DURABLE = "await_durable"  # committed (or a resync sent); waiting for OBJ_DURABLE
    DONE = "done"


@dataclass(slots=True)
class _Op:
    op_id: int
    kind: int
    name: str
    meta: bytes
    data: bytes
    resync: bool = False
    seq: int = 0
    state: OpState = OpState.QUEUED
    need_durable: bool = False
    mark: int = 0  # the may-differ mark a resync read saw
    reserved: tuple[int, int] = (0, 0)  # a miss's room in the record (names, bytes) until ADDED


@dataclass(frozen=True, slots=True)
class ObjectStatistics:
    link: str
    record_entries: int
    record_bytes: int
    may_differ: int
    hits: int
    misses: int
    ops_in_flight: int
    last_seq: int
    durable_seq: int
    resyncs: int
    verify_mismatches: tuple[str, ...] | None  # None: no verify has finished


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    resyncs: int = 0


class ObjectPrimaryCore:
    def __init__(self, config: ObjectConfig, may_differ: Iterable[str],
                 local_listing: Callable[[], dict[str, str]], faults: Faults = NO_FAULTS) -> None:
        self.config = config
        self.faults = faults
        self._local_listing = local_listing
        self.copy: OrderedDict[str, int] = OrderedDict()  # name -> last oseq sent for it
        self.copy_bytes = 0
        self.may_differ: set[str] = set(may_differ)
        self._marks: dict[str, int] = {}  # name -> how often it was marked (resync compares)
        self._queues: dict[str, deque[_Op]] = {}
        self._ops: dict[int, _Op] = {}
        self._by_seq: dict[int, _Op] = {}
        self._waiting_room: deque[_Op] = deque()
        self._removals: list[str] = []
        self._removed_at: dict[str, int] = {}  # name -> oseq of the op that carried its removal
        self._reserved = [0, 0]  # room held for misses awaiting OBJ_ADDED: names, bytes
        self._actions: list[ObjectAction] = []
        self.next_seq = 1
        self.durable_seq = 0
        self.link_up = False  # the secondary's record has come back on this connection
        self.connected_link = False
        self._request = 0
        self._verify_request = 0
        self.verify_mismatches: tuple[str, ...] | None = None
        self._next_resync_id = -1
        self.counters = _Counters()

    # -- inputs ---------------------------------------------------------------------------------

    def actions(self) -> list[ObjectAction]:
        out, self._actions = self._actions, []
        return out

    def submit(self, op_id: int, kind: int, name: str, meta: bytes = b"", data: bytes = b"") -> None:
        """A client op on ``name`` (a bucket op names the bucket); its data is whole already."""
        self._enqueue(_Op(op_id, kind, name, meta, data))

    def committed(self, op_id: int, ok: bool) -> None:
        """The local commit of ``op_id`` is done (``ok``) or failed (nothing changed locally)."""
        op = self._ops[op_id]
        invariant(op.state is OpState.COMMITTING, f"object op {op_id} committed in {op.state}")
        if not ok or (op.need_durable and not self.link_up):
            # The secondary may hold what we failed to commit, or the link went while a sync op
            # waited: the name may differ, durably, before the client is answered.
            self._mark(op.name)
            op.need_durable = False
        op.state = OpState.AWAIT_DURABLE
        self._release(op)
        self._maybe_answer(op)

    def resync_read(self, op_id: int, meta: bytes | None, data: bytes) -> None:
        """The local state of a resync op's name: its metadata and data, or None if absent."""
        op = self._ops[op_id]
        invariant(op.state is OpState.READING, f"resync op {op_id} read in {op.state}")
        if not self.link_up:
            self._forget(op)  # the name stays in may-differ for the next connect
            self._release(op)
            return
        op.kind = int(ObjectKind.PUT if meta is not None else ObjectKind.DELETE)
        op.meta, op.data = meta or b"", data
        # Sent before the name is released: the next op on it must come after it in the stream.
        self._assign_seq(op)
        if op.name in self.copy:
            self.copy[op.name] = op.seq
        self._send(op, _RESYNC)
        op.data = b""
        op.state = OpState.AWAIT_DURABLE
        op.need_durable = True
        self.counters.resyncs += 1
        self._release(op)

    def connected(self) -> None:
        """The block session is up (WELCOME): ask for the secondary's record, or its whole
        listing in async mode, which keeps no record."""
        self.connected_link = True
        self._request += 1
        what = ListWhat.ALL if self.config.mode is Mode.ASYNC else ListWhat.RECORD
        self._emit(SendObject(ObjectListRequest(self._request, int(what))))

    def disconnected(self) -> None:
        self.connected_link = self.link_up = False
        self._removed_at.clear()
        self.copy.clear()
        self.copy_bytes = 0
        self._removals.clear()
        for op in list(self._ops.values()):
            if op.state is OpState.AWAIT_ADDED or op.state is OpState.WAIT_ROOM:
                # Whether the secondary got it is unknown: the name may differ, durably, first.
                self._mark(op.name)
                self._release_room(op)
                if op.state is OpState.AWAIT_ADDED:
                    del self._by_seq[op.seq]
                self._commit(op)
            elif (op.state is OpState.COMMITTING and op.seq > self.durable_seq
                  and op.kind in (ObjectKind.PUT, ObjectKind.DELETE)
                  and not self.faults.object_link_loss_forgets_uncommitted):
                # Sent, perhaps lost, and not yet committed here: a full compare (async) made
                # before the commit would find the copies equal. Found by the simulator.
                self._mark(op.name)
            elif op.state is OpState.AWAIT_DURABLE:
                self._mark(op.name)
                op.need_durable = False
                if op.resync:
                    self._forget(op)
                else:
                    self._maybe_answer(op)
        self._waiting_room.clear()

    def receive(self, message: ObjectMessage) -> None:
        match message:
            case ObjectAdded(seq, names):
                self._on_added(seq, names)
            case ObjectDurable(seq):
                self._on_durable(seq)
            case ObjectList(request, what, entries):
                if request == self._verify_request and what == ListWhat.ALL and self.link_up:
                    self._on_verify(entries)
                elif request == self._request and self.connected_link:
                    self._on_list(what, entries)
            case _:
                invariant(False, f"the primary got {type(message).__name__}")

    def start_verify(self) -> bool:
        """Compare every name and etag with the secondary (OBJ_LIST ALL); differing names are
        resynced and reported in ``verify_mismatches``. False if the link is not up."""
        if not self.link_up:
            return False
        self._request += 1
        self._verify_request = self._request
        self.verify_mismatches = None
        self._emit(SendObject(ObjectListRequest(self._request, int(ListWhat.ALL))))
        return True

    def statistics(self) -> ObjectStatistics:
        link = "connected" if self.link_up else ("greeting" if self.connected_link else "disconnected")
        return ObjectStatistics(link, len(self.copy), self.copy_bytes, len(self.may_differ),
                                self.counters.hits, self.counters.misses, len(self._ops),
                                self.next_seq - 1, self.durable_seq, self.counters.resyncs,
                                self.verify_mismatches)

    @property
    def in_sync(self) -> bool:
        return self.link_up and not self.may_differ and self.durable_seq == self.next_seq - 1

    # -- the op's life ----------------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        invariant(op.op_id not in self._ops, f"object op {op.op_id} submitted twice")
        self._ops[op.op_id] = op
        queue = self._queues.setdefault(op.name, deque())
        queue.append(op)
        if len(queue) == 1:
            self._start(op)

    def _start(self, op: _Op) -> None:
        if op.resync:
            op.state = OpState.READING
            op.mark = self._marks.get(op.name, 0)
            self._emit(ReadForResync(op.op_id, op.name))
            return
        bucket_op = op.kind in (ObjectKind.BUCKET_CREATE, ObjectKind.BUCKET_DELETE)
        if not self.link_up:
            if not bucket_op:
                self._mark(op.name)
            self._commit(op)
        elif self.config.mode is Mode.ASYNC or bucket_op:
            self._assign_seq(op)
            self._send(op, 0)
            self._commit(op)
        elif op.name in self.copy or self.faults.object_hit_before_record_durable:
            self.counters.hits += 1
            self._assign_seq(op)
            if op.name in self.copy:
                self.copy[op.name] = op.seq
                self.copy.move_to_end(op.name)
            op.need_durable = self.config.mode is Mode.SYNC
            self._send(op, _DURABLE if op.need_durable else 0)
            self._commit(op)
        else:
            self._miss(op)

    def _miss(self, op: _Op) -> None:
        budget = self._make_room(op.name)
        if budget is None:
            op.state = OpState.WAIT_ROOM  # every name is dirty: wait for the durable watermark
            self._waiting_room.append(op)
            return
        self.counters.misses += 1
        op.reserved = (1 + budget, len(op.name.encode("utf-8")) + budget * slot_bytes(op.name))
        self._reserved[0] += op.reserved[0]
        self._reserved[1] += op.reserved[1]
        self._assign_seq(op)
        op.need_durable = self.config.mode is Mode.SYNC
        flags = _MISS | (_DURABLE if op.need_durable else 0)
        self._by_seq[op.seq] = op
        self._send(op, flags, budget)
        op.state = OpState.AWAIT_ADDED

    def _make_room(self, name: str) -> int | None:
        """Evict clean names, oldest first, until ``name`` and as many predicted names as
        possible (up to the budget) fit; the budget that fits, or None if not even the name."""
        size, slot = len(name.encode("utf-8")), slot_bytes(name)

        names, used = len(self.copy) + self._reserved[0], self.copy_bytes + self._reserved[1]

        def fits(budget: int) -> bool:
            return (names + 1 + budget <= self.config.capacity
                    and used + size + budget * slot <= self.config.capacity_bytes)

        want = self.config.budget
        if not fits(want):
            for victim in [n for n in self.copy if self._clean(n)]:
                self._evict(victim)
                names, used = names - 1, used - len(victim.encode("utf-8"))
                if fits(want):
                    break
        while want > 0 and not fits(want):
            want -= 1
        return want if fits(want) else None

    def _clean(self, name: str) -> bool:
        # The watermark rule is kept although the secondary applies each op fsynced (so applied
        # is durable there): a removal then can never overtake the data it stops covering.
        return self.copy[name] <= self.durable_seq and name not in self._queues

    def _evict(self, name: str) -> None:
        del self.copy[name]
        self.copy_bytes -= len(name.encode("utf-8"))
        if name not in self._removals:
            self._removals.append(name)

    def _commit(self, op: _Op) -> None:
        op.state = OpState.COMMITTING
        self._emit(CommitLocal(op.op_id))

    def _release(self, op: _Op) -> None:
        """The op no longer holds its name: the next op on it may start."""
        queue = self._queues[op.name]
        invariant(queue[0] is op, f"object op {op.op_id} is not at the head of {op.name!r}")
        queue.popleft()
        if queue:
            self._start(queue[0])
        else:
            del self._queues[op.name]

    def _maybe_answer(self, op: _Op) -> None:
        if op.state is not OpState.AWAIT_DURABLE or (op.need_durable and op.seq > self.durable_seq):
            return
        self._forget(op)
        if not op.resync:
            self._emit(AnswerClient(op.op_id))

    def _forget(self, op: _Op) -> None:
        op.state = OpState.DONE
        self._ops.pop(op.op_id, None)
        self._by_seq.pop(op.seq, None)

    def _on_added(self, seq: int, names: tuple[str, ...]) -> None:
        op = self._by_seq.get(seq)
        if op is None or op.state is not OpState.AWAIT_ADDED:
            return  # a reply from a session we gave up on
        invariant(op.name in names, f"OBJ_ADDED {seq} does not name {op.name!r}")
        self._release_room(op)
        for name in names:
            evicted = self._removed_at.get(name, 0) > seq or name in self._removals
            if evicted and not self.faults.object_added_ignores_eviction:
                # Evicted by a later op since: the secondary removes it after adding it here, so
                # taking it back into the copy would claim a coverage it will not have. Found by
                # the simulator.
                continue
            if name not in self.copy:
                self.copy_bytes += len(name.encode("utf-8"))
            self.copy[name] = op.seq if name == op.name else self.copy.get(name, 0)
            self.copy.move_to_end(name)
        self._commit(op)

    def _release_room(self, op: _Op) -> None:
        self._reserved[0] -= op.reserved[0]
        self._reserved[1] -= op.reserved[1]
        op.reserved = (0, 0)

    def _on_durable(self, seq: int) -> None:
        self.durable_seq = max(self.durable_seq, seq)
        if self._removed_at and not self._by_seq:  # no OBJ_ADDED outstanding: none can race
            self._removed_at.clear()
        for op in [o for o in self._ops.values() if o.state is OpState.AWAIT_DURABLE and o.seq <= seq]:
            if op.resync and self._marks.get(op.name, 0) == op.mark:
                self._unmark(op.name)
            self._maybe_answer(op)
        waiting, self._waiting_room = self._waiting_room, deque()
        for op in waiting:  # a miss still without room goes back in line (``_miss``)
            if op.state is OpState.WAIT_ROOM:
                self._miss(op)

    def _on_list(self, what: int, entries: tuple[tuple[str, str], ...]) -> None:
        self.link_up = True
        if what == ListWhat.RECORD:
            for name, _ in entries:
                self.copy[name] = 0
                self.copy_bytes += len(name.encode("utf-8"))
            names = set(self.copy) | self.may_differ
        else:
            names = self._differing(entries) | self.may_differ
        for name in sorted(names):
            self._resync(name)

    def _on_verify(self, entries: tuple[tuple[str, str], ...]) -> None:
        differing = self._differing(entries)
        self.verify_mismatches = tuple(sorted(differing))
        for name in sorted(differing):
            self._mark(name)
            self._resync(name)

    def _differing(self, entries: tuple[tuple[str, str], ...]) -> set[str]:
        theirs = dict(entries)
        ours = self._local_listing()
        return {n for n in set(theirs) | set(ours) if theirs.get(n, "") != ours.get(n, "")}

    def _resync(self, name: str) -> None:
        op = _Op(self._next_resync_id, int(ObjectKind.PUT), name, b"", b"", resync=True)
        self._next_resync_id -= 1
        self._enqueue(op)

    def _mark(self, name: str) -> None:
        self._marks[name] = self._marks.get(name, 0) + 1
        if name not in self.may_differ:
            self.may_differ.add(name)
            self._emit(PersistMayDiffer(frozenset(self.may_differ)))

    def _unmark(self, name: str) -> None:
        if name in self.may_differ:
            self.may_differ.discard(name)
            self._marks.pop(name, None)
            self._emit(PersistMayDiffer(frozenset(self.may_differ)))

    def _assign_seq(self, op: _Op) -> None:
        op.seq = self.next_seq
        self.next_seq += 1

    def _send(self, op: _Op, flags: int, budget: int = 0) -> None:
        removals, self._removals = tuple(self._removals), []
        for name in removals:
            self._removed_at[name] = op.seq
        self._emit(SendObject(ObjectOp(op.seq, op.kind, flags, budget, op.name, removals,
                                       op.meta, op.data)))

    def _emit(self, action: ObjectAction) -> None:
        self._actions.append(action)


# -- the secondary -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecordChange:
    """What one op does to the secondary's record: journal it durably, then reply ``added``
    (OBJ_ADDED, for a miss) before applying the op."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reply: tuple[str, ...] | None  # the names to report in OBJ_ADDED (None: not a miss)


@dataclass(slots=True)
class ObjectSecondaryCore:
    """The secondary's record of objects: removals first, then the name and its predicted
    neighbours (``predictor``, within the op's budget in count and bytes)."""
    predictor: ObjectPredictor
    record: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def on_op(self, op: ObjectOp) -> RecordChange:
        removed = tuple(n for n in dict.fromkeys(op.removals) if n in self.record)
        for name in removed:
            del self.record[name]
        reply: tuple[str, ...] | None = None
        added: list[str] = []
        if op.flags & _MISS:
            chosen = [op.name]
            room = op.budget * slot_bytes(op.name)
            for name in self.predictor.candidates(op.name, op.budget):
                size = len(name.encode("utf-8"))
                if size <= room and name not in chosen:
                    chosen.append(name)
                    room -= size
            for name in chosen:
                if name not in self.record:
                    self.record[name] = None
                    added.append(name)
            reply = tuple(chosen)
        if not op.flags & _RESYNC and op.kind in (ObjectKind.PUT, ObjectKind.DELETE):
            self.predictor.observe(op.name)
        return RecordChange(tuple(added), removed, reply)

    def on_remove(self, message: ObjectRemove) -> tuple[str, ...]:
        removed = tuple(n for n in dict.fromkeys(message.names) if n in self.record)
        for name in removed:
            del self.record[name]
        return removed
