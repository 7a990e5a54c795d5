"""What the primary copies at each connect, and on a verify (issue 18): the resync of names.

Theory of operation (the mixin of ``ObjectPrimaryCore``, replication/objects.py, which owns the
state it uses). At each connect the secondary's record comes back (OBJ_LIST RECORD) and becomes
the copy, entry by entry while it fits its bounds (``_take_recorded``: one that does not fit is
moved to may-differ, durably, and removed from the record with the next op). Then every name in
the copy or in may-differ is resynced: the primary's current state of the name (the object, or
its absence; for a bucket, whether it exists) is sent with RESYNC, and the name leaves may-differ
once that op is durable unless it was marked again meanwhile. A prefix entry is resynced name by
name (``_expand``): every name the primary holds under it and every name the secondary lists
there (OBJ_LIST_REQUEST UNDER: a name the primary deleted may live on only there); a prefix
entry in may-differ leaves it once all those resyncs are durable. In async mode, which keeps no
record, the connect compares every name and ETag instead (OBJ_LIST ALL), as a verify does.
Buckets go last, so a bucket's deletion follows the deletions of the objects it held.
"""

from __future__ import annotations

from collections.abc import Callable

from foresync.faults import Faults
from foresync.link.object_wire import ListWhat, ObjectKind, ObjectListRequest
from foresync.objects.entries import entry_directory, is_prefix_entry
from foresync.objects.parts import is_part_name
from foresync.replication.object_copy import RecordCopy, exact_weight
from foresync.replication.object_ops import (
    LocalIndex,
    ObjectAction,
    ObjectConfig,
    Op,
    PersistMayDiffer,
    SendObject,
)


class ResyncMixin:
    config: ObjectConfig
    faults: Faults
    copy: RecordCopy
    may_differ: set[str]
    link_up: bool
    verify_mismatches: tuple[str, ...] | None
    _index: LocalIndex | None
    _local_listing: Callable[[], dict[str, str]]
    _marks: dict[str, int]
    _request: int
    _expanding: dict[int, str]
    _prefix_resyncs: dict[str, tuple[int, set[int]]]
    _next_resync_id: int

    def _enqueue(self, op: Op) -> None:
        raise NotImplementedError

    def _emit(self, action: ObjectAction) -> None:
        raise NotImplementedError

    def _fits(self, names: int, size: int) -> bool:
        raise NotImplementedError

    def _remove_later(self, entry: str) -> None:
        raise NotImplementedError

    def _prefix_weight(self, entry: str) -> tuple[int, int] | None:
        raise NotImplementedError

    def _on_list(self, what: int, entries: tuple[tuple[str, str], ...]) -> None:
        self.link_up = True
        if what == ListWhat.RECORD:
            for entry, _ in entries:
                self._take_recorded(entry)
            names = set(self.copy) | self.may_differ
        else:
            names = self._differing(entries) | self.may_differ
        # Buckets last: a bucket deletion is sent after the deletions of the objects it held.
        for name in sorted(names, key=lambda n: ("/" not in n and not is_part_name(n), n)):
            if is_prefix_entry(name):
                self._expand(name)
            else:
                self._resync(name)

    def _take_recorded(self, entry: str) -> None:
        """An entry of the secondary's record at connect: into the copy if it fits, else into
        may-differ (durably, first) and out of the record with the next op."""
        weight = exact_weight(entry)
        if is_prefix_entry(entry):
            weighed = self._prefix_weight(entry) if self._index is not None else None
            weight = weighed if weighed is not None else (self.config.capacity + 1, 0)
        if self._fits(*weight):
            self.copy.add(entry, 0, weight)
        else:
            self._mark(entry)
            self._remove_later(entry)

    def _expand(self, entry: str) -> None:
        """Resync every name under a prefix entry: ask for the secondary's names there."""
        self._request += 1
        self._expanding[self._request] = entry
        self._prefix_resyncs[entry] = (self._marks.get(entry, 0), set())
        self._emit(SendObject(ObjectListRequest(self._request, int(ListWhat.UNDER),
                                                entry_directory(entry))))

    def _on_under(self, entry: str, entries: tuple[tuple[str, str], ...]) -> None:
        directory = entry_directory(entry)
        names = {n for n, _ in entries if n.startswith(directory)}
        if self._index is not None:
            names.update(self._index.names_under(directory))
        pending = self._prefix_resyncs[entry][1]
        for name in sorted(names):
            pending.add(self._resync(name, entry))
        if not pending:
            self._prefix_resynced(entry)

    def _prefix_resynced(self, entry: str) -> None:
        """Every name under ``entry`` is resynced durably: unless it was marked again since, it
        no longer may differ."""
        mark, _ = self._prefix_resyncs.pop(entry)
        if self._marks.get(entry, 0) == mark:
            self._unmark(entry)

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

    def _resync(self, name: str, cover: str = "") -> int:
        op = Op(self._next_resync_id, int(ObjectKind.PUT), name, b"", b"", resync=True, cover=cover)
        self._next_resync_id -= 1
        self._enqueue(op)
        return op.op_id

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
