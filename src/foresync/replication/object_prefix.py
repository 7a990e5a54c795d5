"""Prefix entries on the primary (issue 18): when to offer, take, grow or refuse one.

Theory of operation (a mixin of ``ObjectPrimaryCore``, replication/objects.py, which owns the
state). A prefix entry (objects/entries.py) covers every name under a directory and weighs the
names it covers (replication/object_copy.py), so the record's bounds keep bounding what a
reconnect or failback copies:

* offer (``_prefix_offer``): a miss offers its directory (flag PREFIX) if the primary holds at
  most ``prefix_names_max`` names there, reserving room for the difference with what the entries
  already under it weigh; the secondary decides (its directory link);
* take (``_take_prefix``): at OBJ_ADDED the entry is weighed again (names held there, and names a
  queued op is writing there for the first time) and taken only if it still fits, taking in the
  entries under it; else its removal is sent;
* grow (``_hit_entry``): a first write under it adds one name to its weight if that fits; else
  the write goes the miss path as an exact name, and the entry never grows past its bound.
"""

from __future__ import annotations

from collections import deque

from foresync.link.object_wire import ObjectKind
from foresync.objects.entries import covers, directory_of, entry_directory, prefix_entry
from foresync.objects.parts import is_part_name
from foresync.replication.object_copy import RecordCopy, exact_weight
from foresync.replication.object_ops import LocalIndex, ObjectConfig, Op


class PrefixMixin:
    config: ObjectConfig
    copy: RecordCopy
    _index: LocalIndex | None
    _queues: dict[str, deque[Op]]

    def _fits(self, names: int, size: int) -> bool:
        raise NotImplementedError

    def _evict_for(self, names: int, size: int, keep: str | None = None) -> bool:
        raise NotImplementedError

    def _evict(self, entry: str) -> None:
        raise NotImplementedError

    def _hit_entry(self, op: Op) -> str | None:
        """The entry a hit on ``op`` goes under, or None for a miss. A first write under a prefix
        entry grows it by one name, within its bound and the record's; else it is a miss and the
        name gets its own entry (the prefix entry is never let grow past its bound)."""
        entry = self.copy.covering(op.name)
        if (entry is None or entry == op.name
                or op.kind not in (ObjectKind.PUT, ObjectKind.COMPLETE) or self._index is None
                or self._index.has(op.name)):
            return entry
        names, size = 1, len(op.name.encode("utf-8"))
        if (self.copy.weight(entry)[0] + names > self.config.prefix_names_max
                or not self._evict_for(names, size, keep=entry)):
            return None
        self.copy.grow(entry, names, size)
        return entry

    def _prefix_offer(self, op: Op) -> tuple[str, tuple[int, int]] | None:
        """The prefix entry of ``op``'s directory and the room it needs beyond what the entries
        already under it take, if the directory is small enough to be recorded whole."""
        if (self._index is None or self.config.budget == 0 or self.config.prefix_names_max == 0
                or is_part_name(op.name)):  # a part's name is under no directory
            return None
        entry = prefix_entry(directory_of(op.name))
        weight = self._prefix_weight(entry)
        if weight is None or entry in self.copy:
            return None
        below_names, below_bytes = self.copy.weight_under(entry_directory(entry))
        return entry, (max(weight[0] - below_names, 0), max(weight[1] - below_bytes, 0))

    def _prefix_weight(self, entry: str) -> tuple[int, int] | None:
        """What ``entry`` weighs now, or None if over ``prefix_names_max``: the names the
        primary holds under it, and those a queued op is writing there for the first time (they
        commit later, and nothing else would count them). Found by the simulator."""
        assert self._index is not None
        directory = entry_directory(entry)
        weighed = self._index.weigh(directory, self.config.prefix_names_max)
        if weighed is None:
            return None
        names, size = weighed
        for name, queue in self._queues.items():
            if (name.startswith(directory) and not self._index.has(name)
                    and any(o.kind in (ObjectKind.PUT, ObjectKind.COMPLETE) and not o.resync for o in queue)):
                names, size = names + 1, size + len(name.encode("utf-8"))
        if names > self.config.prefix_names_max:
            return None
        return max(names, 1), size + len(entry.encode("utf-8"))

    def _take_prefix(self, entry: str, op: Op, exact: list[str]) -> bool:
        """Take a prefix entry the secondary recorded for ``op`` into the copy, weighed again
        now, if it still fits with the ``exact`` names of the same reply that it does not cover;
        it takes in the entries under it (their removal rides on the next op)."""
        if self._index is None:
            return False
        weight = self._prefix_weight(entry)
        if weight is None:
            return False
        below = self.copy.under(entry)
        below_names, below_bytes = self.copy.weight_under(entry_directory(entry))
        rest = [exact_weight(n) for n in exact if n not in self.copy and not covers(entry, n)]
        if not self._fits(weight[0] - below_names + sum(n for n, _ in rest),
                          weight[1] - below_bytes + sum(b for _, b in rest)):
            return False
        last = max([op.seq, *(self.copy.seq(e) for e in below)])
        for inner in below:
            self._evict(inner)
        self.copy.add(entry, last, weight)
        return True
