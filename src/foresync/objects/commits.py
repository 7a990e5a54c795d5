"""How an object change becomes visible in step with the mirror (daemon/objects.py): the gate
replication holds every change at, and the per-upload locks that order a multipart upload's
parts against its completion or abort."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from foresync.objects.object_file import ObjectInfo, PendingObject


class CommitGate(Protocol):
    """Replication's hold on every change (daemon/objects.py): ``before`` is called in the
    committing thread with the sealed body (or None for a delete or a bucket op) and may block
    until the change may become visible; ``after`` reports the outcome and may block until the
    client may be answered. Object changes call ``before`` ahead of the rename; bucket changes
    after they succeeded (they are not in the record). Multipart: ``part`` (a part's body;
    ``detail``: upload_id, number, upload = the upload's document), ``part-delete`` (an abort,
    part by part; ``detail``: upload_id, number) and ``complete`` (the assembled object;
    ``detail``: upload_id, parts = the chosen [number, etag] list)."""

    def before(self, kind: str, bucket: str, key: str, pending: PendingObject | None,
               info: ObjectInfo | None, detail: dict[str, Any] | None = None) -> object: ...

    def after(self, token: object, ok: bool) -> None: ...


class UploadLocks:
    """Per upload: part commits share it, a completion or an abort holds it alone. So the parts
    a completion assembles are committed (sent or marked by the mirror) before it passes the
    gate, and no part of its upload passes the gate until it is done (daemon/objects.py relies
    on it: the secondary assembles from the same parts)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}  # upload id -> sharers, or -1 when held alone

    @contextlib.contextmanager
    def shared(self, upload_id: str) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._held.get(upload_id, 0) >= 0)
            self._held[upload_id] = self._held.get(upload_id, 0) + 1
        try:
            yield
        finally:
            self._release(upload_id, 1)

    @contextlib.contextmanager
    def alone(self, upload_id: str) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: upload_id not in self._held)
            self._held[upload_id] = -1
        try:
            yield
        finally:
            self._release(upload_id, -1)

    def _release(self, upload_id: str, count: int) -> None:
        with self._cond:
            left = 0 if count < 0 else self._held[upload_id] - count
            if left:
                self._held[upload_id] = left
            else:
                del self._held[upload_id]
            self._cond.notify_all()
