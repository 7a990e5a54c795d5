"""The link transport: TCP frames in and out, decoded by the pure ``FrameDecoder``.

A damaged frame (bad magic, CRC mismatch, oversize) aborts the connection: TCP already promises
order and integrity, so damage means the peer or the path cannot be trusted, and the sites
resynchronise on the next connection rather than guess.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from foresync.errors import ForesyncError
from foresync.link import wire

log = logging.getLogger(__name__)


class ActionPump:
    """Carries out a pure core's actions until it has none left. A call made while one is
    running (an action's effect fed the core again) returns at once: the running loop picks
    up whatever that produced, so actions stay in order and the stack stays flat."""

    def __init__(self, actions: Callable[[], Sequence[Any]], do: Callable[[Any], None]) -> None:
        self._actions = actions
        self._do = do
        self._running = False

    def __call__(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while actions := self._actions():
                for action in actions:
                    self._do(action)
        finally:
            self._running = False


class LinkProtocol(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[wire.Message], None],
        on_batch_end: Callable[[], None],
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._on_message = on_message
        self._on_batch_end = on_batch_end
        self._decoder = wire.FrameDecoder(max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_rx = time.monotonic()
        self.peer = "?"
        self._out: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.transport.set_write_buffer_limits(high=16 * 1024 * 1024)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            for message in self._decoder.feed(data):
                self._on_message(message)
        except ForesyncError as exc:
            log.warning("link %s: %s; closing the connection", self.peer, exc)
            self.abort(str(exc))
            return
        self._on_batch_end()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "connection closed")

    def send(self, message: wire.Message) -> None:
        """Queue a frame; every frame queued in one pass of the event loop goes out in one
        write (one syscall instead of one per 4 KiB write), in order."""
        if self.transport is None or self.transport.is_closing():
            return
        self._out.append(wire.encode_frame(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def close_after_flush(self) -> None:
        """Close once what was sent has gone out (a REFUSE or DEMOTE must reach the peer)."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()
