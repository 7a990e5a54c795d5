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
from foresync.nbd.connection import Request
from foresync.nbd.target import Done
from foresync.nbd.wire import Command, CommandFlag, Errno
from foresync.storage.backend import BlockBackend
from foresync.storage.flusher import GroupFlusher

log = logging.getLogger(__name__)

_WRITE, _FLUSH, _TRIM = int(Command.WRITE), int(Command.FLUSH), int(Command.TRIM)
_ZEROES, _CACHE = int(Command.WRITE_ZEROES), int(Command.CACHE)
_FUA = int(CommandFlag.FUA)


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

    def submit(self, request: Request, done: Done) -> None:
        command = request.command
        try:
            if command == _WRITE:
                self.backend.write(request.offset, request.data)
            elif command == _FLUSH:
                self.flusher.request(done)
                return
            elif command == _TRIM:
                self.backend.trim(request.offset, request.length)
            elif command == _ZEROES:
                fast_only = bool(request.flags & CommandFlag.FAST_ZERO)
                may_punch = not request.flags & CommandFlag.NO_HOLE
                if not self.backend.zero(request.offset, request.length, may_punch, fast_only):
                    done(Errno.ENOTSUP)
                    return
            elif command == _CACHE:
                self.backend.cache(request.offset, request.length)
            else:
                done(Errno.EINVAL)
                return
        except StorageError as exc:
            log.error("%s", exc)
            done(exc.errno)
            return
        if request.flags & _FUA:
            self.flusher.request(done)
        else:
            done(0)
