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
* The window (``window_bytes``, as the block path's): the object data sent and not yet durable
  on the secondary is bounded. An op that would send beyond it waits (``WAIT_WINDOW``, first
  come first served, holding its name) until OBJ_DURABLE frees room; one larger than the whole
  window goes alone. Resync ops read one at a time, each while the window is not full (a size
  is known only once read), so they overshoot it by one object at most. A miss waiting for room
  in the record gives its place in the window back. An op's data is let go once handed to the
  link.
* Multipart (replication/object_parts.py): each part is an op on a name of its own
  (objects/parts.py) under these same rules; a Complete is a small op (COMPLETE) the secondary
  assembles from its parts when ``complete_is_small`` (every chosen part durable there or sent
  ahead of it on this connection), else the object goes whole.
* Buckets (no record): a bucket op marks the bucket's name may-differ before the local change,
  is sent once the change is made, and clears the name once durable there.
* ``sync`` mode also waits for the op's OBJ_DURABLE; ``async`` keeps no record and never waits:
  at every connect it compares every name and etag with the secondary (OBJ_LIST ALL).
* Clean: a name whose last op is at or below the durable watermark and that has no op in flight.
  Only clean names are evicted (record/eviction.py's rule for extents), oldest first. An
  OBJ_ADDED that names a name evicted by a later op (``_removed_at``) does not bring it back into
  the copy: the secondary, applying the stream in order, removes it again.
* The record is bounded in the names it covers (``capacity``) and their bytes
  (``capacity_bytes``, UTF-8 names), weighed by ``RecordCopy`` (replication/object_copy.py): a
  miss makes room for its name plus ``budget`` names of ``slot_bytes(name)`` each, held
  (``_reserved``) until its OBJ_ADDED, so concurrent misses cannot overfill it; the secondary
  adds no more predicted bytes than that (replication/object_secondary.py).
* Prefix entries (objects/entries.py): a miss may also reserve room for every name the primary
  holds in the name's directory (``local_index.weigh``, at most ``prefix_names_max``) and offer
  it (flag PREFIX); if the secondary's directory link predicts it, the secondary records the
  directory as one entry and later first writes under it are hits. Taken into the copy at
  OBJ_ADDED only if its weight, weighed again then, still fits (else its removal is sent, safe
  since nothing relied on it); it takes in the entries under it. A first write under it grows it
  by one name if that fits, else goes the miss path as an exact name. At connect a prefix entry
  that no longer fits is moved to may-differ (durably) and removed from the record, and every
  prefix entry in the record or in may-differ is resynced name by name: the names the primary
  holds under it and those the secondary lists (OBJ_LIST_REQUEST UNDER); one in may-differ leaves
  it once all those resyncs are durable.
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

from collections import deque
from collections.abc import Callable, Iterable

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
)
from foresync.objects.entries import (
    covers,
    is_prefix_entry,
)
from foresync.objects.parts import is_part_name
from foresync.replication.object_copy import RecordCopy
from foresync.replication.object_ops import (
    AnswerClient,
    CommitLocal,
    Counters,
    LocalIndex,
    ObjectAction,
    ObjectConfig,
    ObjectStatistics,
    Op,
    OpState,
    PersistMayDiffer,
    ReadForResync,
    SendObject,
)
from foresync.replication.object_parts import PartsMixin
from foresync.replication.object_prefix import PrefixMixin
from foresync.replication.object_resync import ResyncMixin
from foresync.replication.object_secondary import (
    SLOT_BYTES_MIN,
    ObjectSecondaryCore,
    RecordChange,
    slot_bytes,
)
from foresync.replication.primary import Mode

# The cores' one home: the adapter, the simulator and the tests import from here.
__all__ = ["SLOT_BYTES_MIN", "AnswerClient", "CommitLocal", "LocalIndex", "ObjectAction",
           "ObjectConfig", "ObjectPrimaryCore", "ObjectSecondaryCore", "ObjectStatistics",
           "OpState", "PersistMayDiffer", "ReadForResync", "RecordChange", "SendObject",
           "slot_bytes"]

_MISS, _DURABLE, _RESYNC = int(ObjectFlag.MISS), int(ObjectFlag.DURABLE), int(ObjectFlag.RESYNC)
_PREFIX = int(ObjectFlag.PREFIX)
_OBJECT_KINDS = (ObjectKind.PUT, ObjectKind.DELETE, ObjectKind.PART, ObjectKind.COMPLETE)


class ObjectPrimaryCore(PrefixMixin, ResyncMixin, PartsMixin):
    def __init__(self, config: ObjectConfig, may_differ: Iterable[str],
                 local_listing: Callable[[], dict[str, str]], faults: Faults = NO_FAULTS,
                 local_index: LocalIndex | None = None) -> None:
        self.config = config
        self.faults = faults
        self._local_listing = local_listing
        self._index = local_index  # None: no prefix entries are offered
        self.copy = RecordCopy()  # entry -> last oseq sent under it, and what it weighs
        self.may_differ: set[str] = set(may_differ)
        self._marks: dict[str, int] = {}  # entry -> how often it was marked (resync compares)
        self._queues: dict[str, deque[Op]] = {}
        self._ops: dict[int, Op] = {}
        self._by_seq: dict[int, Op] = {}
        self._waiting_room: deque[Op] = deque()
        self._removals: list[str] = []
        self._removed_at: dict[str, int] = {}  # entry -> oseq of the op that carried its removal
        self._reserved = [0, 0]  # room held for misses awaiting OBJ_ADDED: names, bytes
        self._expanding: dict[int, str] = {}  # OBJ_LIST_REQUEST UNDER -> its prefix entry
        self._prefix_resyncs: dict[str, tuple[int, set[int]]] = {}  # entry -> (mark, resync ops)
        self._partial: dict[int, list[tuple[str, str]]] = {}  # a listing's frames so far
        self._parts_in_flight: dict[int, str] = {}  # oseq -> part name, sent, not yet durable
        self._in_window: deque[tuple[int, int]] = deque()  # (oseq, bytes) sent, not yet durable
        self.window_used = 0  # bytes let through the window and not yet durable there
        self._waiting_window: deque[Op] = deque()
        self._waiting_parts: list[Op] = []  # COMPLETEs waiting for their parts' resyncs
        self._reading: set[int] = set()  # resync ops let through, reading (one at a time)
        self._actions: list[ObjectAction] = []
        self.next_seq = 1
        self.durable_seq = 0
        self.link_up = False  # the secondary's record has come back on this connection
        self.connected_link = False
        self._request = 0
        self._verify_request = 0
        self.verify_mismatches: tuple[str, ...] | None = None
        self._next_resync_id = -1
        self.counters = Counters()

    # -- inputs ---------------------------------------------------------------------------------

    def actions(self) -> list[ObjectAction]:
        out, self._actions = self._actions, []
        return out

    def submit(self, op_id: int, kind: int, name: str, meta: bytes = b"", data: bytes = b"",
               parts: tuple[str, ...] = ()) -> None:
        """A client op on ``name`` (a bucket op names the bucket); its data is whole already. A
        COMPLETE names its chosen ``parts`` (objects/parts.py) and carries no data."""
        self._enqueue(Op(op_id, kind, name, meta, data, parts=parts))

    def committed(self, op_id: int, ok: bool) -> None:
        """The local commit of ``op_id`` is done (``ok``) or failed (nothing changed locally)."""
        op = self._ops[op_id]
        invariant(op.state is OpState.COMMITTING, f"object op {op_id} committed in {op.state}")
        if op.kind in (ObjectKind.BUCKET_CREATE, ObjectKind.BUCKET_DELETE):
            self._bucket_committed(op, ok)
            return
        if not ok or (op.need_durable and not self.link_up):
            # The secondary may hold what we failed to commit, or the link went while a sync op
            # waited: the name may differ, durably, before the client is answered.
            self._mark(op.name)
            op.need_durable = False
        op.state = OpState.AWAIT_DURABLE
        self._release(op)
        self._maybe_answer(op)
        if op.resync_after and ok and self.link_up:
            self._resync(op.name)  # its parts may not be there: send the object whole

    def _bucket_committed(self, op: Op, ok: bool) -> None:
        if ok and self.link_up:  # now the change is made: send it, clear the name once durable
            self._assign_seq(op)
            op.need_durable = True
            self._send(op, _DURABLE)
        elif not ok and self._marks.get(op.name, 0) == op.mark:
            self._unmark(op.name)  # nothing changed here, nothing was sent
        op.state = OpState.AWAIT_DURABLE
        self._release(op)
        self._maybe_answer(op)

    def resync_read(self, op_id: int, meta: bytes | None, data: bytes) -> None:
        """The local state of a resync op's name: its metadata and data, or None if absent."""
        op = self._ops[op_id]
        invariant(op.state is OpState.READING, f"resync op {op_id} read in {op.state}")
        self._reading.discard(op_id)
        if not self.link_up:
            self._forget(op)  # the name stays in may-differ for the next connect
            self._release(op)
            return
        if is_part_name(op.name):
            op.kind = int(ObjectKind.PART if meta is not None else ObjectKind.DELETE)
        elif "/" in op.name:
            op.kind = int(ObjectKind.PUT if meta is not None else ObjectKind.DELETE)
        else:  # a bucket's name: it exists here, or not
            op.kind = int(ObjectKind.BUCKET_CREATE if meta is not None else ObjectKind.BUCKET_DELETE)
        op.meta, op.data = meta or b"", data
        # Sent before the name is released: the next op on it must come after it in the stream.
        self._assign_seq(op)
        entry = self.copy.covering(op.name)
        if entry is not None:
            self.copy.set_seq(entry, op.seq)
        self._send(op, _RESYNC)
        op.data = b""
        op.state = OpState.AWAIT_DURABLE
        op.need_durable = True
        self.counters.resyncs += 1
        self._release(op)
        self._open_window()  # the next resync may read

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
        self._removals.clear()
        self._expanding.clear()
        self._prefix_resyncs.clear()  # a prefix entry in may-differ stays there
        self._partial.clear()
        self._parts_lost()
        for op in list(self._ops.values()):
            if op.state is OpState.AWAIT_ADDED or op.state is OpState.WAIT_ROOM:
                # Whether the secondary got it is unknown: the name may differ, durably, first.
                self._mark(op.name)
                self._release_room(op)
                if op.state is OpState.AWAIT_ADDED:
                    del self._by_seq[op.seq]
                self._commit(op)
            elif (op.state is OpState.COMMITTING and op.seq > self.durable_seq
                  and op.kind in _OBJECT_KINDS
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
        self._in_window.clear()
        self.window_used = 0
        self._reading.clear()
        waiting, self._waiting_window = [*self._waiting_window, *self._waiting_parts], deque()
        self._waiting_parts = []
        for op in waiting:  # nothing sent: the link-down way (marked, committed)
            op.state = OpState.QUEUED
            if op.resync:
                self._forget(op)
                self._release(op)
            else:
                self._start(op)

    def receive(self, message: ObjectMessage) -> None:
        match message:
            case ObjectAdded(seq, names):
                self._on_added(seq, names)
            case ObjectDurable(seq):
                self._on_durable(seq)
            case ObjectList(request, what, entries, more):
                if more:  # a long listing comes in frames: keep them until the last
                    self._partial.setdefault(request, []).extend(entries)
                    return
                entries = (*self._partial.pop(request, ()), *entries)
                if request == self._verify_request and what == ListWhat.ALL and self.link_up:
                    self._on_verify(entries)
                elif request in self._expanding and what == ListWhat.UNDER:
                    self._on_under(self._expanding.pop(request), entries)
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
        return ObjectStatistics(link, len(self.copy), self.copy.bytes, self.copy.names,
                                self.copy.prefixes, len(self.may_differ),
                                self.counters.hits, self.counters.misses, len(self._ops),
                                self.next_seq - 1, self.durable_seq, self.counters.resyncs,
                                self.verify_mismatches, self.window_used, len(self._waiting_window))

    @property
    def in_sync(self) -> bool:
        return self.link_up and not self.may_differ and self.durable_seq == self.next_seq - 1

    # -- the op's life ----------------------------------------------------------------------------

    def _enqueue(self, op: Op) -> None:
        invariant(op.op_id not in self._ops, f"object op {op.op_id} submitted twice")
        self._ops[op.op_id] = op
        queue = self._queues.setdefault(op.name, deque())
        queue.append(op)
        if len(queue) == 1:
            self._start(op)
        elif op.resync and queue[0].state is OpState.WAIT_ROOM:
            self._resyncs_first(queue)

    def _resyncs_first(self, queue: deque[Op]) -> None:
        """A miss waiting for room has sent nothing: the resyncs queued on its name go first.
        Behind it, a resync would keep its prefix entry busy and so the room from ever coming.
        A resync sends the name's current state, so it may overtake ops not yet started. Found
        by the simulator."""
        resyncs = [o for o in queue if o.resync]
        others = [o for o in queue if not o.resync]
        queue[0].state = OpState.QUEUED  # out of the waiting room (``_on_durable`` skips it)
        queue.clear()
        queue.extend(resyncs + others)
        self._start(queue[0])

    def _start(self, op: Op) -> None:
        if self.link_up and self._wait_for_window(op):
            return
        if op.resync:
            op.state = OpState.READING
            if op.windowed:
                self._reading.add(op.op_id)
            op.mark = self._marks.get(op.name, 0)
            self._emit(ReadForResync(op.op_id, op.name))
            return
        if op.kind in (ObjectKind.BUCKET_CREATE, ObjectKind.BUCKET_DELETE):
            # No record for buckets (they are rare): the bucket's name may differ, durably,
            # before the local change; the op is sent once that change is made (``committed``:
            # one that fails sends nothing) and the name cleared once it is durable there. A
            # failback loses neither a creation nor a deletion, even across a crash.
            self._mark(op.name)
            op.mark = self._marks[op.name]
            self._commit(op)
            return
        if not self.link_up:
            self._mark(op.name)
            self._commit(op)
            return
        if op.kind == ObjectKind.COMPLETE and not self.complete_is_small(op.parts):
            self._complete_later(op)
            return
        if self.config.mode is Mode.ASYNC:
            self._assign_seq(op)
            self._send(op, 0)
            self._commit(op)
            return
        entry = self._hit_entry(op)
        if entry is None and not self.faults.object_hit_before_record_durable:
            self._miss(op)
            return
        self.counters.hits += 1
        self._assign_seq(op)
        if entry is not None:
            self.copy.touch(entry, op.seq)
        op.need_durable = self.config.mode is Mode.SYNC
        self._send(op, _DURABLE if op.need_durable else 0)
        self._commit(op)

    def _wait_for_window(self, op: Op) -> bool:
        """Whether ``op`` must wait for room in the window (first come, first served)."""
        if op.windowed or op.kind in (ObjectKind.BUCKET_CREATE, ObjectKind.BUCKET_DELETE):
            return False
        if not self._waiting_window and self._window_room(op):
            self._grant(op)
            return False
        op.state = OpState.WAIT_WINDOW
        self._waiting_window.append(op)
        return True

    def _window_room(self, op: Op) -> bool:
        """A client op fits, or goes alone; a resync (its size known only once read) goes one
        at a time while the window is not full, so it overshoots by one object at most."""
        used, window = self.window_used, self.config.window_bytes
        if op.resync:
            return used < window and not self._reading
        return used == 0 or used + len(op.data) <= window

    def _grant(self, op: Op) -> None:
        """Let ``op`` through: its data counts in the window from now (a miss may wait for room
        in the record after this, and must not be overtaken meanwhile)."""
        op.windowed = True
        op.charged = len(op.data)
        self.window_used += op.charged

    def _open_window(self) -> None:
        """Room came back: let the waiting ops through, in order, while they fit."""
        while self._waiting_window and self._window_room(self._waiting_window[0]):
            op = self._waiting_window.popleft()
            self._grant(op)
            op.state = OpState.QUEUED
            self._start(op)

    def _miss(self, op: Op) -> None:
        offer = self._prefix_offer(op)
        budget = self._make_room(op.name, offer[1] if offer else (0, 0))
        if budget is None and offer is not None:
            offer, budget = None, self._make_room(op.name, (0, 0))
        if budget is None:
            op.state = OpState.WAIT_ROOM  # every entry is dirty: wait for the durable watermark
            self._waiting_room.append(op)
            # It gives its room in the window back (it starts again when room comes): held by an
            # op that sends nothing, the window could keep the resyncs that free the record's
            # room from ever going. Found by the simulator.
            self.window_used -= op.charged
            op.charged, op.windowed = 0, False
            queue = self._queues[op.name]
            if any(o.resync for o in queue):
                self._resyncs_first(queue)
            self._open_window()
            return
        self.counters.misses += 1
        extra_names, extra_bytes = offer[1] if offer else (0, 0)
        op.reserved = (1 + budget + extra_names,
                       len(op.name.encode("utf-8")) + budget * slot_bytes(op.name) + extra_bytes)
        self._reserved[0] += op.reserved[0]
        self._reserved[1] += op.reserved[1]
        self._assign_seq(op)
        op.need_durable = self.config.mode is Mode.SYNC
        flags = _MISS | (_DURABLE if op.need_durable else 0) | (_PREFIX if offer else 0)
        self._by_seq[op.seq] = op
        self._send(op, flags, budget)
        op.state = OpState.AWAIT_ADDED

    def _fits(self, names: int, size: int) -> bool:
        return (self.copy.names + self._reserved[0] + names <= self.config.capacity
                and self.copy.bytes + self._reserved[1] + size <= self.config.capacity_bytes)

    def _make_room(self, name: str, extra: tuple[int, int]) -> int | None:
        """Evict clean entries, oldest first, until ``name``, ``extra`` and as many predicted
        names as possible (up to the budget) fit; the budget that fits, or None."""
        size, slot = len(name.encode("utf-8")) + extra[1], slot_bytes(name)
        want = self.config.budget
        self._evict_for(1 + extra[0] + want, size + want * slot)
        while want > 0 and not self._fits(1 + extra[0] + want, size + want * slot):
            want -= 1
        return want if self._fits(1 + extra[0] + want, size + want * slot) else None

    def _evict_for(self, names: int, size: int, keep: str | None = None) -> bool:
        """Evict clean entries (with what goes with them), least recently used first, until
        ``names`` and ``size`` more fit; whether they fit."""
        if self._fits(names, size):
            return True
        busy = self._busy()
        for entry, with_it in self.copy.groups():
            if entry != keep and all(self._clean(e, busy) for e in (entry, *with_it)):
                for victim in (entry, *with_it):
                    self._evict(victim)
                if self._fits(names, size):
                    return True
        return False

    def _busy(self) -> set[str]:
        """Entries that cover a name with an op under way, or a prefix entry still being
        resynced. A miss waiting for room has sent nothing and is at the head of its name's
        queue: its name does not keep a prefix entry above it busy (that entry, full, may be
        just what must go to make the room). Found by the simulator."""
        busy = set(self._prefix_resyncs)
        for name, queue in self._queues.items():
            if queue[0].state in (OpState.WAIT_ROOM, OpState.WAIT_WINDOW):
                continue
            busy.add(name)
            entry = self.copy.covering_prefix(name)
            while entry is not None:
                busy.add(entry)
                entry = self.copy.covering_prefix(entry)
        return busy

    def _clean(self, entry: str, busy: set[str]) -> bool:
        # The watermark rule is kept although the secondary applies each op fsynced (so applied
        # is durable there): a removal then can never overtake the data it stops covering.
        return self.copy.seq(entry) <= self.durable_seq and entry not in busy

    def _evict(self, entry: str) -> None:
        self.copy.remove(entry)
        self._remove_later(entry)

    def _remove_later(self, entry: str) -> None:
        """The secondary drops ``entry`` with the next op (claim 17)."""
        if entry not in self._removals:
            self._removals.append(entry)

    def _commit(self, op: Op) -> None:
        op.state = OpState.COMMITTING
        self._emit(CommitLocal(op.op_id))

    def _release(self, op: Op) -> None:
        """The op no longer holds its name: the next op on it may start."""
        queue = self._queues[op.name]
        invariant(queue[0] is op, f"object op {op.op_id} is not at the head of {op.name!r}")
        queue.popleft()
        if queue:
            self._start(queue[0])
        else:
            del self._queues[op.name]

    def _maybe_answer(self, op: Op) -> None:
        if op.state is not OpState.AWAIT_DURABLE or (op.need_durable and op.seq > self.durable_seq):
            return
        self._forget(op)
        if not op.resync:
            self._emit(AnswerClient(op.op_id))

    def _forget(self, op: Op) -> None:
        op.state = OpState.DONE
        self._ops.pop(op.op_id, None)
        self._by_seq.pop(op.seq, None)

    def _on_added(self, seq: int, names: tuple[str, ...]) -> None:
        op = self._by_seq.get(seq)
        if op is None or op.state is not OpState.AWAIT_ADDED:
            return  # a reply from a session we gave up on
        invariant(op.name in names, f"OBJ_ADDED {seq} does not name {op.name!r}")
        self._release_room(op)
        exact = [n for n in names if not is_prefix_entry(n) and not self._dropped(n, seq)]
        taken = None
        for entry in (n for n in names if is_prefix_entry(n) and not self._dropped(n, seq)):
            if entry in self.copy:
                continue
            if self._take_prefix(entry, op, exact):
                taken = entry
            else:
                self._remove_later(entry)  # nothing relied on it: the record sheds it
        for name in exact:
            if taken is not None and covers(taken, name):
                self._remove_later(name)  # in the prefix entry's weight: it covers the name
                continue
            self.copy.add(name, op.seq if name == op.name else 0)
        self._commit(op)

    def _dropped(self, entry: str, seq: int) -> bool:
        """Evicted by a later op since: the secondary removes it after adding it here, so taking
        it back into the copy would claim a coverage it will not have. Found by the simulator."""
        evicted = self._removed_at.get(entry, 0) > seq or entry in self._removals
        return evicted and not self.faults.object_added_ignores_eviction

    def _release_room(self, op: Op) -> None:
        self._reserved[0] -= op.reserved[0]
        self._reserved[1] -= op.reserved[1]
        op.reserved = (0, 0)

    def _on_durable(self, seq: int) -> None:
        self.durable_seq = max(self.durable_seq, seq)
        self._parts_durable()
        while self._in_window and self._in_window[0][0] <= self.durable_seq:
            self.window_used -= self._in_window.popleft()[1]
        if self._removed_at and not self._by_seq:  # no OBJ_ADDED outstanding: none can race
            self._removed_at.clear()
        for op in [o for o in self._ops.values() if o.state is OpState.AWAIT_DURABLE and o.seq <= seq]:
            bucket = op.kind in (ObjectKind.BUCKET_CREATE, ObjectKind.BUCKET_DELETE)
            if (op.resync or bucket) and self._marks.get(op.name, 0) == op.mark:
                self._unmark(op.name)
            self._maybe_answer(op)
            if op.cover and op.state is OpState.DONE and op.cover in self._prefix_resyncs:
                pending = self._prefix_resyncs[op.cover][1]
                pending.discard(op.op_id)
                if not pending:
                    self._prefix_resynced(op.cover)
        self._retry_completes()
        waiting, self._waiting_room = self._waiting_room, deque()
        for op in waiting:  # a miss waiting for room starts again: the window, then room
            if op.state is OpState.WAIT_ROOM:
                op.state = OpState.QUEUED
                self._start(op)
        self._open_window()

    def _assign_seq(self, op: Op) -> None:
        op.seq = self.next_seq
        self.next_seq += 1

    def _send(self, op: Op, flags: int, budget: int = 0) -> None:
        removals, self._removals = tuple(self._removals), []
        self._part_sent(op)
        for name in removals:
            self._removed_at[name] = op.seq
        self._emit(SendObject(ObjectOp(op.seq, op.kind, flags, budget, op.name, removals,
                                       op.meta, op.data)))
        if op.resync:  # charged once read
            op.charged = len(op.data)
            self.window_used += op.charged
        if op.charged:
            self._in_window.append((op.seq, op.charged))
        op.data = b""  # the link has it now: the core holds no object data once sent

    def _emit(self, action: ObjectAction) -> None:
        self._actions.append(action)
