"""A seeded simulation of object replication (issue 18): the pure cores, a lossy link, crashes.

It drives ``ObjectPrimaryCore`` and ``ObjectSecondaryCore`` (replication/objects.py) as the
daemon does (daemon/objects.py), with stores reduced to name -> version and every step chosen
by the seed: client ops on a few names (so the record of ``CAPACITY`` names overflows and
evicts), deliveries in each direction (in order: one TCP stream), local commits and resync reads
whenever the adapter would get to them, link cuts and reconnects, and crashes of the primary
(it keeps its store, which is durable at each commit, and its persisted may-differ names) and of
the secondary (it keeps its store and its record, and forgets what it learnt for prediction).

The record may hold prefix entries (objects/entries.py): a miss offers its directory, the
secondary's directory link takes it, first writes under it are hits that grow it, and one that
grows past ``PREFIX_MAX`` names sends new names the miss path. Listings cross in frames of a few
entries (``list_frames``), so every listing is split.

Multipart uploads (objects/parts.py): parts are ops on names of their own (``b NUL uN NUL NNNNN``);
a completion is the small op (COMPLETE, assembled by the secondary from its own parts, each
checked against the version the primary chose) when ``complete_is_small`` says so, else the
object whole (a PUT), as daemon/objects.py does; it waits for the part uploads under way, as the
store's upload lock makes it; an abort deletes the parts one by one. A completed upload's parts
left on one site (a completion sent whole) are unreachable and not compared.

After every step it checks:

* *covered* (lookahead and sync): every name whose version differs between the primary's store
  and the secondary's is covered (itself or a prefix entry above it) by the secondary's durable
  record or by the primary's durable may-differ set;
* *window*: the object data sent and not yet durable stays within the window (``WINDOW_BYTES``
  with the second layout; no op is larger, so none goes alone past it);
* *bounded*: the copy of the record covers at most its capacity in names by its weights, no prefix
  entry weighs more than ``PREFIX_MAX``, and the weights are honest: the primary holds no more
  names under a prefix entry than it and the exact entries under it weigh;
* *prefix*: the secondary holds, for each name, a version a client wrote to the primary (it may
  be one the primary never committed, if it crashed between sending and committing a hit);
* *answered*: no client op is answered before its local commit; and, at the end, after a quiet
  connected period, both stores are equal and nothing may differ.

``python -m foresync.testing.sim.objects --seeds 300 [--seed N] [--fault NAME]`` runs it (the
block simulator, ``python -m foresync.testing.sim``, is separate); a failure names its seed.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.link.object_wire import (
    ListWhat,
    ObjectAdded,
    ObjectDurable,
    ObjectFlag,
    ObjectKind,
    ObjectListRequest,
    ObjectMessage,
    ObjectOp,
    ObjectRemove,
    list_frames,
)
from foresync.objects.entries import covering_prefixes, entry_directory, is_prefix_entry
from foresync.objects.parts import parse_part_name, part_name
from foresync.objects.predict import LinksPredictor
from foresync.replication.objects import (
    AnswerClient,
    CommitLocal,
    ObjectConfig,
    ObjectPrimaryCore,
    ObjectSecondaryCore,
    PersistMayDiffer,
    ReadForResync,
    SendObject,
)
from foresync.replication.primary import Mode

# The deliberate bugs (faults.py) of the object core: this simulator, not the block world
# (world.py), must catch them (tests/sim/test_objects_sim.py).
OBJECT_FAULTS = frozenset({"object_hit_before_record_durable", "object_added_ignores_eviction",
                           "object_link_loss_forgets_uncommitted", "object_prefix_entry_not_covering",
                           "object_complete_before_parts_durable"})
# Two layouts (the first six names are the hot ones): three directories of six names,
# each past PREFIX_MAX (a prefix entry fills and sends new names the miss path); or three hot
# and cold directories that fit in one prefix entry, one cold that does not, and one nested.
LAYOUTS = ([f"b/dir{d}/frame-{i:03d}" for d in range(3) for i in range(6)],
           [f"b/dir{d}/frame-{i:03d}" for d in range(1, 4) for i in range(3)]
           + [f"b/dir0/frame-{i:03d}" for i in range(6)]
           + [f"b/dir1/sub/frame-{i:03d}" for i in range(2)])  # a directory inside another
CAPACITY = 6  # the record's bound, in names covered; 5 with the first layout
PREFIX_MAX = 4
WINDOW_BYTES = 12  # ops carry 0-7 bytes of data: a few in flight fill the window
LIST_FRAME_BYTES = 40  # with the second layout: a few entries a frame, every listing is split
STEPS = 400


class InvariantViolation(AssertionError):
    pass


@dataclass
class _Secondary:
    faults: Faults
    store: dict[str, int] = field(default_factory=dict)
    core: ObjectSecondaryCore = field(init=False)

    def __post_init__(self) -> None:
        self.core = ObjectSecondaryCore(LinksPredictor(), faults=self.faults)

    def durable_record(self) -> set[str]:
        return set(self.core.record)  # journalled before any reply or apply (daemon/objects.py)


def covered(name: str, entries: set[str]) -> bool:
    return name in entries or any(p in entries for p in covering_prefixes(name))


class _Index:
    """The primary's store as the core's ``LocalIndex``."""

    def __init__(self, store: dict[str, int]) -> None:
        self.store = store

    def weigh(self, directory: str, limit: int) -> tuple[int, int] | None:
        names = self.names_under(directory)
        return None if len(names) > limit else (len(names), sum(len(n.encode()) for n in names))

    def names_under(self, directory: str) -> list[str]:
        return sorted(n for n in self.store if n.startswith(directory))

    def has(self, name: str) -> bool:
        return name in self.store


class ObjectWorld:
    def __init__(self, seed: int, mode: Mode, faults: Faults = NO_FAULTS) -> None:
        self.rng = random.Random(seed)
        self.seed, self.mode, self.faults = seed, mode, faults
        self.primary_store: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.submitted: dict[str, set[int]] = {}  # every version a client asked for, per name
        self.may_differ_durable: set[str] = set()
        self.secondary = _Secondary(faults)
        self.version = 0
        self.op_id = 0
        self.to_secondary: deque[ObjectMessage] = deque()
        self.to_primary: deque[ObjectMessage] = deque()
        self.link = False
        # By seed (the mode takes seed % 3): no prefix entries, as before them; prefix entries
        # in the first layout; the second layout with listings split in frames.
        variant = seed // 3 % 3
        self.names = LAYOUTS[variant == 2]
        self.capacity = CAPACITY - (variant != 2)
        self.prefix_max = PREFIX_MAX if variant else 0
        self.frame_bytes = LIST_FRAME_BYTES if variant == 2 else 1 << 20
        self.window = WINDOW_BYTES if variant == 2 else 1 << 20
        self.deletes = (0.15, 0.35)[seed // 9 % 2]  # more deletes: directories empty, fill again
        self.seen: Counter[str] = Counter()  # what the run exercised (tests check coverage)
        self.uploads: dict[str, str] = {}  # open multipart uploads: upload id -> object name
        self.finished: set[str] = set()  # completed uploads (their parts are left alone)
        self.upload_count = 0
        self._new_primary()

    def _new_primary(self) -> None:
        self.core = ObjectPrimaryCore(ObjectConfig(self.mode, self.capacity, 4096, 2, self.prefix_max,
                                                   self.window),
                                      set(self.may_differ_durable), self._listing, self.faults,
                                      _Index(self.primary_store))
        self.ops: dict[int, tuple[str, int, int]] = {}  # op id -> (name, kind, version)
        self.completing: dict[int, str] = {}  # a completion's op id -> its upload id
        self.commits: list[int] = []  # CommitLocal given, not yet done
        self.committed: set[int] = set()
        self.reads: list[tuple[int, str]] = []

    def _listing(self) -> dict[str, str]:  # objects and parts (a full compare covers both)
        return {n: str(v) for n, v in self.primary_store.items()}

    # -- the adapter ------------------------------------------------------------------------------

    def _carry_out(self) -> None:
        for action in self.core.actions():
            match action:
                case SendObject(message):
                    if self.link:
                        self.to_secondary.append(message)
                case CommitLocal(op_id):
                    self.commits.append(op_id)
                case AnswerClient(op_id):
                    if op_id not in self.committed:
                        raise InvariantViolation(f"op {op_id} answered before its local commit")
                case PersistMayDiffer(names):
                    self.may_differ_durable = set(names)
                case ReadForResync(op_id, name):
                    self.reads.append((op_id, name))

    def _commit(self, op_id: int) -> None:
        name, kind, version = self.ops.pop(op_id)
        upload = self.completing.pop(op_id, None)
        if upload is not None:  # the primary drops the upload's parts with the completion
            for part in [n for n in self.primary_store if _upload_of(n) == upload]:
                del self.primary_store[part]
        if kind in (ObjectKind.PUT, ObjectKind.PART, ObjectKind.COMPLETE):
            self.primary_store[name] = version
            self.history.setdefault(name, []).append(version)
        else:
            self.primary_store.pop(name, None)
            self.history.setdefault(name, []).append(0)
        self.committed.add(op_id)
        self.core.committed(op_id, True)

    def _deliver_to_secondary(self) -> None:
        message = self.to_secondary.popleft()
        sec = self.secondary
        match message:
            case ObjectOp():
                self.seen["miss"] += bool(message.flags & ObjectFlag.MISS)
                self.seen["resync"] += bool(message.flags & ObjectFlag.RESYNC)
                self.seen["prefix_offer"] += bool(message.flags & ObjectFlag.PREFIX)
                self.seen["evicted"] += len(message.removals)
                change = sec.core.on_op(message)
                self.seen["prefix"] += sum(map(is_prefix_entry, change.added))
                if change.reply is not None:
                    self.to_primary.append(ObjectAdded(message.seq, change.reply))
                if message.kind in (ObjectKind.PUT, ObjectKind.PART):
                    sec.store[message.name] = int(message.meta)
                elif message.kind == ObjectKind.COMPLETE:
                    self._assemble(message)
                elif message.kind == ObjectKind.DELETE:
                    sec.store.pop(message.name, None)
                self.to_primary.append(ObjectDurable(message.seq))
            case ObjectRemove():
                sec.core.on_remove(message)
            case ObjectListRequest(request, what, directory):
                if what == ListWhat.RECORD:
                    entries = [(n, "") for n in sec.core.record]
                else:
                    entries = [(n, str(v)) for n, v in sorted(sec.store.items())
                               if what == ListWhat.ALL or n.startswith(directory)]
                    self.seen["under"] += what == ListWhat.UNDER
                self.to_primary.extend(list_frames(request, what, entries, self.frame_bytes))

    def _assemble(self, message: ObjectOp) -> None:
        """The secondary assembles a completed object from its own parts: each must be there,
        as the primary had it (else the object would be torn or wrong, and no record covers
        what the secondary cannot do)."""
        self.seen["complete_small"] += 1
        version, _, listed = message.meta.decode().partition("|")
        sec = self.secondary
        for item in listed.split(","):
            part, _, want = item.partition("=")
            if sec.store.get(part) != int(want):
                raise InvariantViolation(
                    f"seed {self.seed}: {part} differs (secondary {sec.store.get(part)}, primary "
                    f"{want}) when the completion of {message.name} was assembled from it")
        sec.store[message.name] = int(version)
        upload = _upload_of(listed.partition("=")[0])
        for part in [n for n in sec.store if _upload_of(n) == upload]:
            del sec.store[part]

    def _cut(self) -> None:
        self.seen["cut"] += 1
        self.link = False
        self.to_secondary.clear()
        self.to_primary.clear()
        self.core.disconnected()

    def step(self) -> None:
        fault = self.rng.random()  # link changes and crashes, drawn apart from the work
        if fault < (0.005 if self.link else 0.05):
            if self.link:
                self._cut()
            else:
                self.link = True
                self.core.connected()
        elif fault < 0.01:
            self._crash_primary()
        elif fault < 0.013:
            self._crash_secondary()
        elif fault < 0.015:
            self._fail_over()
        else:
            self._work(self.rng.random())
        self._carry_out()
        self.check()

    def _work(self, roll: float) -> None:
        """One piece of work, or nothing if what the roll chose has nothing to do."""
        if roll < 0.12:
            self._multipart()
        elif roll < 0.30:
            self.op_id += 1
            self.version += 1
            name = self.rng.choice(self.names[:6] if self.rng.random() < 0.6 else self.names)
            kind = ObjectKind.DELETE if self.rng.random() < self.deletes else ObjectKind.PUT
            self.ops[self.op_id] = (name, int(kind), self.version)
            self.submitted.setdefault(name, set()).add(self.version)
            data = b"x" * self.rng.randrange(8) if kind == ObjectKind.PUT else b""
            self.core.submit(self.op_id, int(kind), name, str(self.version).encode(), data)
        elif roll < 0.45 and self.commits:
            self._commit(self.commits.pop(self.rng.randrange(len(self.commits))))
        elif roll < 0.55 and self.reads:
            op_id, name = self.reads.pop(0)
            version = self.primary_store.get(name)
            self.core.resync_read(op_id, None if version is None else str(version).encode(), b"")
        elif roll < 0.75 and self.to_secondary:
            self._deliver_to_secondary()
        elif roll >= 0.75 and self.to_primary:
            self.core.receive(self.to_primary.popleft())

    def _multipart(self) -> None:
        """A step of a multipart upload: start one, upload a part, complete or abort (an abort
        deletes the parts one by one, as objects/store.py does)."""
        if len(self.uploads) < 2 and self.rng.random() < 0.3:
            self.upload_count += 1
            self.uploads[f"u{self.upload_count}"] = self.rng.choice(self.names)
            return
        if not self.uploads:
            return
        upload = self.rng.choice(sorted(self.uploads))
        parts = sorted(n for n in self.primary_store if _upload_of(n) == upload)
        roll = self.rng.random()
        if any(_upload_of(n) == upload for n, _, _ in self.ops.values()):
            # A completion or abort waits for the part uploads under way (objects/store.py's
            # upload lock): they are committed, so sent or marked, before it is submitted.
            roll = min(roll, 0.4)
        if roll < 0.5 or not parts:
            self._submit(part_name("b", upload, self.rng.randrange(1, 4)), ObjectKind.PART)
        elif roll < 0.9:
            self._complete(upload, parts)
        else:
            self.seen["abort"] += 1
            del self.uploads[upload]
            for part in parts:
                self._submit(part, ObjectKind.DELETE)

    def _submit(self, name: str, kind: ObjectKind, meta: str | None = None,
                parts: tuple[str, ...] = ()) -> int:
        self.op_id += 1
        self.version += 1
        self.ops[self.op_id] = (name, int(kind), self.version)
        self.submitted.setdefault(name, set()).add(self.version)
        data = b"x" * self.rng.randrange(8) if kind != ObjectKind.DELETE else b""
        self.core.submit(self.op_id, int(kind), name,
                         (meta or "").replace("V", str(self.version)).encode() or str(self.version).encode(),
                         data if kind != ObjectKind.COMPLETE else b"", parts)
        return self.op_id

    def _complete(self, upload: str, parts: list[str]) -> None:
        """The adapter's choice (daemon/objects.py): the small op if the core says the parts are
        there, else the object whole (a PUT); sometimes it asks, then the link changes before it
        submits, which the core must catch itself."""
        self.seen["complete"] += 1
        name = self.uploads.pop(upload)
        self.finished.add(upload)
        chosen = tuple(parts)
        if self.core.complete_is_small(chosen) or self.rng.random() < 0.2:
            listed = ",".join(f"{p}={self.primary_store[p]}" for p in chosen)
            op_id = self._submit(name, ObjectKind.COMPLETE, f"V|{listed}", chosen)
        else:
            op_id = self._submit(name, ObjectKind.PUT)
        self.completing[op_id] = upload

    def _crash_primary(self) -> None:
        """kill -9: uncommitted ops vanish unanswered; the store and may-differ file stay."""
        self.seen["primary_crash"] += 1
        self.link = False
        self.to_secondary.clear()
        self.to_primary.clear()
        self._new_primary()

    def _crash_secondary(self) -> None:
        """kill -9 of the secondary: frames not yet applied are lost; its store and record are
        durable (each op is journalled, then written with fsync, before any reply)."""
        self._cut()
        self.secondary.core = ObjectSecondaryCore(LinksPredictor(), self.secondary.core.record,
                                                  self.faults)

    def _fail_over(self) -> None:
        """The primary dies, the secondary is promoted and the old primary comes back as its
        secondary (daemon/objects.py): each site keeps its store, and what may differ changes
        files, the promoted site's record becoming its may-differ names and the old primary's
        may-differ names its record. A failback later is the same again."""
        self.seen["failover"] += 1
        self.link = False
        self.to_secondary.clear()
        self.to_primary.clear()
        promoted, demoted = self.secondary, _Secondary(self.faults, self.primary_store)
        demoted.core.record.update(dict.fromkeys(sorted(self.may_differ_durable)))
        self.primary_store, self.secondary = promoted.store, demoted
        self.may_differ_durable = set(promoted.core.record)
        self._new_primary()

    def _check_bounds(self) -> None:
        copy = self.core.copy
        window = self.core.window_used
        if window > self.window:  # one op alone may be larger, but none is here
            raise InvariantViolation(f"seed {self.seed}: {window} bytes in flight, over the "
                                     f"window of {self.window}")
        self.seen["window_wait"] += self.core.statistics().waiting_window > 0
        if copy.names > self.capacity:
            raise InvariantViolation(f"seed {self.seed}: the record copy covers {copy.names} "
                                     f"names, over its capacity of {self.capacity}")
        for entry in filter(is_prefix_entry, copy):
            weight = copy.weight(entry)[0]
            below = sum(copy.weight(e)[0] for e in copy.under(entry))  # exact or deeper
            held = sum(n.startswith(entry_directory(entry)) for n in self.primary_store)
            if weight > self.prefix_max or held > weight + below:
                raise InvariantViolation(
                    f"seed {self.seed}: prefix entry {entry!r} weighs {weight} (bound {self.prefix_max}) "
                    f"with entries under it weighing {below}, and the primary holds {held} names there")

    def check(self) -> None:
        sec = self.secondary
        self._check_bounds()
        cover = sec.durable_record() | self.may_differ_durable
        for name in set(self.primary_store) | set(sec.store):
            if _upload_of(name) in self.finished:
                continue  # a completed upload's part left on one site: unreachable, no object
            # async mode keeps no record: it compares everything at each connect instead
            if (self.mode is not Mode.ASYNC and not covered(name, cover)
                    and self.primary_store.get(name) != sec.store.get(name)):
                raise InvariantViolation(
                    f"seed {self.seed}: {name} differs (primary {self.primary_store.get(name)}, "
                    f"secondary {sec.store.get(name)}) but is neither in the secondary's durable "
                    "record nor in the primary's may-differ names")
            held = sec.store.get(name)
            if held is not None and held not in self.submitted.get(name, ()):
                raise InvariantViolation(f"seed {self.seed}: the secondary holds a version of "
                                         f"{name} the primary never sent")

    def _live(self, store: dict[str, int]) -> dict[str, int]:
        return {n: v for n, v in store.items() if _upload_of(n) not in self.finished}

    def settle(self) -> None:
        """Reconnect and let everything drain; then the copies must be equal."""
        if not self.link:
            self.link = True
            self.core.connected()
            self._carry_out()
        for _ in range(10000):
            if self.commits:
                self._commit(self.commits.pop(0))
            elif self.reads:
                op_id, name = self.reads.pop(0)
                version = self.primary_store.get(name)
                self.core.resync_read(op_id, None if version is None else str(version).encode(), b"")
            elif self.to_secondary:
                self._deliver_to_secondary()
            elif self.to_primary:
                self.core.receive(self.to_primary.popleft())
            else:
                break
            self._carry_out()
            self.check()
        if self._live(self.primary_store) != self._live(self.secondary.store) or self.core.may_differ:
            raise InvariantViolation(f"seed {self.seed}: after settling the stores differ "
                                     f"({self.primary_store} vs {self.secondary.store}) or "
                                     f"names still may differ ({sorted(self.core.may_differ)})")


def _upload_of(name: str) -> str | None:
    part = parse_part_name(name)
    return None if part is None else part[1]


def run_seed(seed: int, faults: Faults = NO_FAULTS, steps: int = STEPS) -> Counter[str]:
    mode = (Mode.LOOKAHEAD, Mode.SYNC, Mode.ASYNC)[seed % 3]
    if faults.object_link_loss_forgets_uncommitted:
        mode = Mode.ASYNC  # the full compare at connect is where that fault shows
    elif faults is not NO_FAULTS and mode is Mode.ASYNC:
        mode = Mode.LOOKAHEAD  # async keeps no record: the record's faults cannot show there
    world = ObjectWorld(seed, mode, faults)
    for _ in range(steps):
        world.step()
    world.settle()
    return world.seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", choices=sorted(OBJECT_FAULTS),
                        help="switch on one deliberate bug: the run must fail (self-check)")
    args = parser.parse_args()
    faults = Faults(**{args.fault: True}) if args.fault else NO_FAULTS
    for seed in range(args.seed, args.seed + args.seeds):
        run_seed(seed, faults)
    print(f"{args.seeds} object seeds from {args.seed}: every invariant held")


if __name__ == "__main__":
    main()
