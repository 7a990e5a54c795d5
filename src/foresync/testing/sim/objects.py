"""A seeded simulation of object replication (issue 18): the pure cores, a lossy link, crashes.

It drives ``ObjectPrimaryCore`` and ``ObjectSecondaryCore`` (replication/objects.py) as the
daemon does (daemon/objects.py), with stores reduced to name -> version and every step chosen
by the seed: client ops on a few names (so the record of ``CAPACITY`` names overflows and
evicts), deliveries in each direction (in order: one TCP stream), local commits and resync reads
whenever the adapter would get to them, link cuts and reconnects, and crashes of the primary
(it keeps its store, which is durable at each commit, and its persisted may-differ names) and of
the secondary (it keeps its store and its record, and forgets what it learnt for prediction).

After every step it checks:

* *covered* (lookahead and sync): every name whose version differs between the primary's store and the secondary's is
  in the secondary's durable record or in the primary's durable may-differ set;
* *prefix*: the secondary holds, for each name, a version a client wrote to the primary (it may
  be one the primary never committed, if it crashed between sending and committing a hit);
* *answered*: no client op is answered before its local commit; and, at the end, after a quiet
  connected period, both stores are equal and nothing may differ.

``python -m foresync.testing.sim.objects --seeds 300`` runs it; a failure names its seed.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.link.object_wire import (
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
                           "object_link_loss_forgets_uncommitted"})
NAMES = [f"b/dir{d}/frame-{i:03d}" for d in range(3) for i in range(6)]
CAPACITY = 5
STEPS = 400


class InvariantViolation(AssertionError):
    pass


@dataclass
class _Secondary:
    store: dict[str, int] = field(default_factory=dict)
    core: ObjectSecondaryCore = field(default_factory=lambda: ObjectSecondaryCore(LinksPredictor()))

    def durable_record(self) -> set[str]:
        return set(self.core.record)  # journalled before any reply or apply (daemon/objects.py)


class ObjectWorld:
    def __init__(self, seed: int, mode: Mode, faults: Faults = NO_FAULTS) -> None:
        self.rng = random.Random(seed)
        self.seed, self.mode, self.faults = seed, mode, faults
        self.primary_store: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.submitted: dict[str, set[int]] = {}  # every version a client asked for, per name
        self.may_differ_durable: set[str] = set()
        self.secondary = _Secondary()
        self.version = 0
        self.op_id = 0
        self.to_secondary: deque[ObjectMessage] = deque()
        self.to_primary: deque[ObjectMessage] = deque()
        self.link = False
        self.seen: Counter[str] = Counter()  # what the run exercised (tests check coverage)
        self._new_primary()

    def _new_primary(self) -> None:
        self.core = ObjectPrimaryCore(ObjectConfig(self.mode, CAPACITY, 4096, 2),
                                      set(self.may_differ_durable), self._listing, self.faults)
        self.ops: dict[int, tuple[str, int, int]] = {}  # op id -> (name, kind, version)
        self.commits: list[int] = []  # CommitLocal given, not yet done
        self.committed: set[int] = set()
        self.reads: list[tuple[int, str]] = []

    def _listing(self) -> dict[str, str]:
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
        if kind == ObjectKind.PUT:
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
                self.seen["evicted"] += len(message.removals)
                change = sec.core.on_op(message)
                if change.reply is not None:
                    self.to_primary.append(ObjectAdded(message.seq, change.reply))
                if message.kind == ObjectKind.PUT:
                    sec.store[message.name] = int(message.meta)
                elif message.kind == ObjectKind.DELETE:
                    sec.store.pop(message.name, None)
                self.to_primary.append(ObjectDurable(message.seq))
            case ObjectRemove():
                sec.core.on_remove(message)
            case ObjectListRequest(request, what):
                entries = (tuple((n, "") for n in sec.core.record) if what == 1
                           else tuple((n, str(v)) for n, v in sec.store.items()))
                self.to_primary.append(ObjectList(request, what, entries))

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
        else:
            self._work(self.rng.random())
        self._carry_out()
        self.check()

    def _work(self, roll: float) -> None:
        """One piece of work, or nothing if what the roll chose has nothing to do."""
        if roll < 0.30:
            self.op_id += 1
            self.version += 1
            name = self.rng.choice(NAMES[:6] if self.rng.random() < 0.6 else NAMES)
            kind = ObjectKind.DELETE if self.rng.random() < 0.15 else ObjectKind.PUT
            self.ops[self.op_id] = (name, int(kind), self.version)
            self.submitted.setdefault(name, set()).add(self.version)
            self.core.submit(self.op_id, int(kind), name, str(self.version).encode())
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
        self.secondary.core = ObjectSecondaryCore(LinksPredictor(), self.secondary.core.record)

    def check(self) -> None:
        sec = self.secondary
        if len(self.core.copy) > CAPACITY:
            raise InvariantViolation(f"seed {self.seed}: the record copy holds {len(self.core.copy)} "
                                     f"names, over its capacity of {CAPACITY}")
        covered = sec.durable_record() | self.may_differ_durable
        for name in set(self.primary_store) | set(sec.store):
            # async mode keeps no record: it compares everything at each connect instead
            if (self.mode is not Mode.ASYNC and name not in covered
                    and self.primary_store.get(name) != sec.store.get(name)):
                raise InvariantViolation(
                    f"seed {self.seed}: {name} differs (primary {self.primary_store.get(name)}, "
                    f"secondary {sec.store.get(name)}) but is neither in the secondary's durable "
                    "record nor in the primary's may-differ names")
            held = sec.store.get(name)
            if held is not None and held not in self.submitted.get(name, ()):
                raise InvariantViolation(f"seed {self.seed}: the secondary holds a version of "
                                         f"{name} the primary never sent")

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
        if self.primary_store != self.secondary.store or self.core.may_differ:
            raise InvariantViolation(f"seed {self.seed}: after settling the stores differ "
                                     f"({self.primary_store} vs {self.secondary.store}) or "
                                     f"names still may differ ({sorted(self.core.may_differ)})")


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
    args = parser.parse_args()
    for seed in range(args.seed, args.seed + args.seeds):
        run_seed(seed)
    print(f"{args.seeds} object seeds from {args.seed}: every invariant held")


if __name__ == "__main__":
    main()
