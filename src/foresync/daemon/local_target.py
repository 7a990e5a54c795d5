"""An NBD target backed directly by local storage: the standalone ``foresync serve``.

Writes go to the page cache synchronously on the event loop (they are short and this keeps
overlapping writes in arrival order); FLUSH and FUA go through the group flusher, whose
fdatasync covers every write completed on any connection, which is what lets us advertise
CAN_MULTI_CONN.
"""

from __future__ import annotations

import logging

from foresync.errors import StorageError
from foresync.geometry import Extent
from foresync.nbd.target import Done
from foresync.nbd.wire import Errno
from foresync.storage.backend import BlockBackend
from foresync.storage.flusher import GroupFlusher

log = logging.getLogger(__name__)


class LocalTarget:
    def __init__(self, backend: BlockBackend) -> None:
        self.backend = backend
        self.size = backend.size
        self.read_only = backend.read_only
        self.flusher = GroupFlusher(backend.flush)

    def read(self, offset: int, length: int) -> bytes:
        return self.backend.read(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.backend.extents(offset, length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        try:
            self.backend.write(offset, data)
        except StorageError as exc:
            self._failed(exc, done)
            return
        self._written(fua, done)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        try:
            zeroed = self.backend.zero(offset, length, may_punch, fast_only)
        except StorageError as exc:
            self._failed(exc, done)
            return
        if not zeroed:
            done(Errno.ENOTSUP)  # FAST_ZERO, and only a slow way would do
            return
        self._written(fua, done)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        try:
            self.backend.trim(offset, length)
        except StorageError as exc:
            self._failed(exc, done)
            return
        self._written(fua, done)

    def flush(self, done: Done) -> None:
        self.flusher.request(done)

    def cache(self, offset: int, length: int, done: Done) -> None:
        try:
            self.backend.cache(offset, length)
        except StorageError as exc:
            self._failed(exc, done)
            return
        done(0)

    def _written(self, fua: bool, done: Done) -> None:
        if fua:
            self.flusher.request(done)
        else:
            done(0)

    @staticmethod
    def _failed(exc: StorageError, done: Done) -> None:
        log.error("%s", exc)
        done(exc.errno)
