"""Multipart uploads in the object core: parts as names, and when a Complete may be small (issue 18).

Theory of operation (the mixin of ``ObjectPrimaryCore``, replication/objects.py, which owns the
state it uses). Each UploadPart is an op on a name of its own (objects/parts.py), hit or miss like
any name, so the secondary holds the parts as they are uploaded and its predictor records the
upload's next parts with the first (claim 20's logical connection: "the other parts of the same
multipart upload"). A CompleteMultipartUpload is then a small op (COMPLETE: the chosen parts and
the object's ETag) that the secondary assembles from its own parts, applied in stream order.

That is right only if every chosen part is there when the COMPLETE is applied: its last op
durable there, or sent ahead of the COMPLETE on this connection (``complete_is_small``). A part
is not so when it is in may-differ (written while the link was down, or sent and not yet durable
when the link went: ``_parts_in_flight`` marks those, in every mode, since async keeps no record)
or has an op still queued (a resync). The adapter asks first and sends the object whole (a PUT)
if not; the store's per-upload lock keeps part uploads from overlapping a Complete, so every
chosen part's op was started before. If the link came back between the adapter's question and
the submit, the COMPLETE waits (WAIT_PARTS) for the queued resyncs of its parts to be durable;
a part with no resync coming (its local commit failed) makes the COMPLETE commit unsent, marked,
and a resync then sends the object whole.
"""

from __future__ import annotations

from collections import deque

from foresync.faults import Faults
from foresync.objects.parts import is_part_name
from foresync.replication.object_copy import RecordCopy
from foresync.replication.object_ops import Op, OpState


class PartsMixin:
    faults: Faults
    copy: RecordCopy
    may_differ: set[str]
    link_up: bool
    durable_seq: int
    _queues: dict[str, deque[Op]]
    _parts_in_flight: dict[int, str]
    _waiting_parts: list[Op]

    def _mark(self, name: str) -> None:
        raise NotImplementedError

    def _hit_entry(self, op: Op) -> str | None:
        raise NotImplementedError

    def _remove_later(self, entry: str) -> None:
        raise NotImplementedError

    def _commit(self, op: Op) -> None:
        raise NotImplementedError

    def _start(self, op: Op) -> None:
        raise NotImplementedError

    def complete_is_small(self, parts: tuple[str, ...]) -> bool:
        """Whether a CompleteMultipartUpload of ``parts`` may go as the small op (the secondary
        assembles it from its durable parts): each part's last op is durable there or sent on
        this connection ahead of it in the stream. Not so for a part in may-differ (written
        while the link was down, or sent and lost with a cut) or with an op still queued (a
        resync): the adapter then sends the assembled object whole, as a PUT."""
        if self.faults.object_complete_before_parts_durable:
            return True
        return self.link_up and not any(p in self.may_differ or p in self._queues for p in parts)

    def _complete_later(self, op: Op) -> None:
        """A COMPLETE whose parts may not all be there (the adapter asked, but the link came
        back since). Their resyncs are queued: it waits until they are durable there, then goes
        small. A part with no resync coming (its local commit failed) cannot be waited for: the
        COMPLETE is committed unsent, marked, and a resync sends the object whole after it."""
        if any(p in self._queues for p in op.parts):
            op.state = OpState.WAIT_PARTS
            self._waiting_parts.append(op)
            return
        self._mark(op.name)
        op.resync_after = True
        entry = self._hit_entry(op)  # a first write under a prefix entry grows it, or it is
        if entry is None and (above := self.copy.covering_prefix(op.name)) is not None:
            self._mark(above)  # too full to: the entry may differ, and leaves the record
            self.copy.remove(above)
            self._remove_later(above)
        self._commit(op)

    def _retry_completes(self) -> None:
        """Something became durable: the COMPLETEs waiting for their parts try again."""
        waiting, self._waiting_parts = self._waiting_parts, []
        for op in waiting:
            op.state = OpState.QUEUED
            self._start(op)

    def _part_sent(self, op: Op) -> None:
        if is_part_name(op.name):
            self._parts_in_flight[op.seq] = op.name

    def _parts_durable(self) -> None:
        for seq in [s for s in self._parts_in_flight if s <= self.durable_seq]:
            del self._parts_in_flight[seq]

    def _parts_lost(self) -> None:
        """The link went: a part sent and not yet durable there may be missing, durably marked."""
        for name in self._parts_in_flight.values():
            self._mark(name)
        self._parts_in_flight.clear()
