"""The secondary's record of objects (issue 18): what each op does to it, and what it predicts.

Theory of operation. The primary decides hit or miss (replication/objects.py); the secondary
keeps the durable record that makes a hit safe. For each op, in stream order:

* the removals it carries (evictions, claim 17) leave the record first;
* a miss (flag MISS) adds its name and up to ``budget`` predicted names (objects/predict.py,
  claims 18-20), no more bytes than ``budget`` slots of ``slot_bytes(name)``;
* a miss with flag PREFIX (the primary reserved room for the name's whole directory) adds the
  prefix entry of the name's directory (objects/entries.py) when the predictor's directory link
  says the name belongs to a directory being written (``ObjectPredictor.directory``); predicted
  names under that directory are then left out, the prefix entry covers them;
* every name written (not a resync) is observed by the predictor.

The adapter journals ``RecordChange`` durably before it replies OBJ_ADDED or applies the op
(daemon/objects.py). The reply names every entry the miss chose, recorded before or not; the
primary takes into its copy only what fits its bounds and sends the removal of the rest, so the
record never holds more than the primary's copy accounts for once the stream has drained.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.link.object_wire import ObjectFlag, ObjectKind, ObjectOp, ObjectRemove
from foresync.objects.entries import covers, directory_of, is_prefix_entry, prefix_entry
from foresync.objects.predict import ObjectPredictor

_WRITES = (ObjectKind.PUT, ObjectKind.DELETE, ObjectKind.PART, ObjectKind.COMPLETE)
SLOT_BYTES_MIN = 64  # a predicted name is charged at least this many bytes of the record


def slot_bytes(name: str) -> int:
    """What one predicted name may take of the record's bytes, by the name that predicted it."""
    return max(len(name.encode("utf-8")), SLOT_BYTES_MIN)


@dataclass(frozen=True, slots=True)
class RecordChange:
    """What one op does to the secondary's record: journal it durably, then reply ``added``
    (OBJ_ADDED, for a miss) before applying the op."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reply: tuple[str, ...] | None  # the entries to report in OBJ_ADDED (None: not a miss)


@dataclass(slots=True)
class ObjectSecondaryCore:
    """The secondary's record of objects: removals first, then the name, its directory's prefix
    entry if offered and predicted, and its predicted neighbours (within the op's budget)."""
    predictor: ObjectPredictor
    record: OrderedDict[str, None] = field(default_factory=OrderedDict)
    faults: Faults = NO_FAULTS

    def on_op(self, op: ObjectOp) -> RecordChange:
        removed = tuple(n for n in dict.fromkeys(op.removals) if n in self.record)
        for name in removed:
            del self.record[name]
        reply: tuple[str, ...] | None = None
        added: list[str] = []
        if op.flags & ObjectFlag.MISS:
            chosen = self._choose(op)
            for name in chosen:
                if self.faults.object_prefix_entry_not_covering and is_prefix_entry(name):
                    continue
                if name not in self.record:
                    self.record[name] = None
                    added.append(name)
            reply = tuple(chosen)
        if not op.flags & ObjectFlag.RESYNC and op.kind in _WRITES:
            self.predictor.observe(op.name)
        return RecordChange(tuple(added), removed, reply)

    def _choose(self, op: ObjectOp) -> list[str]:
        chosen = [op.name]
        directory = directory_of(op.name)
        prefix = None
        if op.flags & ObjectFlag.PREFIX and self.predictor.directory(op.name) == directory:
            prefix = prefix_entry(directory)
            chosen.append(prefix)
        room = op.budget * slot_bytes(op.name)
        for name in self.predictor.candidates(op.name, op.budget):
            size = len(name.encode("utf-8"))
            if (size <= room and name not in chosen
                    and (prefix is None or not covers(prefix, name))):
                chosen.append(name)
                room -= size
        return chosen

    def on_remove(self, message: ObjectRemove) -> tuple[str, ...]:
        removed = tuple(n for n in dict.fromkeys(message.names) if n in self.record)
        for name in removed:
            del self.record[name]
        return removed
