"""Group commit of flushes: many concurrent FLUSH/FUA requests share one fdatasync.

A flush that is already running may have started before a waiter's write completed, so a waiter
that arrives while one runs waits for the next one. At most one fdatasync runs at a time, in a
worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from foresync.errors import Errno

log = logging.getLogger(__name__)


class GroupFlusher:
    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._waiting: list[Callable[[int], None]] = []
        self._running: asyncio.Future[None] | None = None
        self.flushes = 0

    def request(self, done: Callable[[int], None]) -> None:
        self._waiting.append(done)
        if self._running is None:
            self._start()

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(None, self._flush)
        self._running = running
        running.add_done_callback(lambda future: self._finished(future, batch))

    def _finished(self, future: asyncio.Future[None], batch: list[Callable[[int], None]]) -> None:
        self._running = None
        self.flushes += 1
        errno = 0
        if future.cancelled():
            errno = Errno.ESHUTDOWN
        elif future.exception() is not None:
            log.error("flush failed: %s", future.exception())
            errno = Errno.EIO
        for done in batch:
            done(errno)
        if self._waiting:
            self._start()

    async def wait_idle(self) -> None:
        while self._running is not None:
            await asyncio.wait([self._running])
            await asyncio.sleep(0)
