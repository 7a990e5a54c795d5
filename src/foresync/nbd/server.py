"""The asyncio adapter around the pure NBD cores: sockets in, replies out, nothing else.

Each connection feeds bytes into ``ServerHandshake`` and then ``Transmission``, hands valid
requests to the ``NbdTarget`` and writes the replies the core builds. Memory stays bounded:
parsed-but-unserved requests wait in a queue that is only refilled while the socket's write buffer
is under its high-water mark and fewer than ``max_in_flight`` requests are outstanding; beyond
that we stop reading from the socket, and TCP pushes back on the client.

Replies made while the queue drains are held and written together when it ends (or once
``_HOLD_REPLY_BYTES`` are held), so a read that parsed 32 pipelined requests costs one send
instead of 32 (measured with fio at 4 KiB QD32: about 17 -> 12 us of server CPU per write).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from foresync.errors import StorageError
from foresync.listening import listening_sockets
from foresync.logctx import LogBudget, VolumeContext
from foresync.nbd import wire
from foresync.nbd.connection import ConnectionFailed, Disconnect, Event, Request, Transmission
from foresync.nbd.handshake import (
    DEFAULT_MAX_OPTION_BYTES,
    MAX_PAYLOAD_BYTES,
    ExportInfo,
    ExportSelected,
    HandshakeAborted,
    HandshakeFailed,
    ServerHandshake,
    StartTls,
)
from foresync.nbd.target import NbdTarget, WriteMany, group_call

log = logging.getLogger(__name__)

_READ, _STATUS = int(wire.Command.READ), int(wire.Command.BLOCK_STATUS)
_WRITE, _FLUSH, _TRIM = int(wire.Command.WRITE), int(wire.Command.FLUSH), int(wire.Command.TRIM)
_ZEROES, _CACHE = int(wire.Command.WRITE_ZEROES), int(wire.Command.CACHE)
# Ints, not the IntFlag members: an enum operation per request costs more than the request.
_FUA, _NO_HOLE = int(wire.CommandFlag.FUA), int(wire.CommandFlag.NO_HOLE)
_FAST_ZERO = int(wire.CommandFlag.FAST_ZERO)
_HOLD_REPLY_BYTES = 256 * 1024  # held replies are written at once beyond this, so flow control sees them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (<malloc.h>)
_FREE_HEAP_KEPT_BYTES = 128 * 1024 * 1024
ACCEPT_RETRY_S = 0.1  # after accept() failed: the error is not cleared by retrying at once


def keep_freed_heap() -> None:
    """Stop glibc from giving freed heap back to the kernel after every large request.

    A 1 MiB WRITE makes a few payload-sized buffers (the parser's receive buffer, the payload) and
    frees them once written. By default glibc returns such memory (brk, munmap) and the next request
    faults it in again, zero-filled: profiled at 1 MiB QD8, page faults and page zeroing were most of
    the server's CPU, 2.4 ms per MiB written, against 0.6 ms with this. Buffers up to twice the
    largest payload now come from the heap and up to 128 MiB of free heap is kept. Process-wide;
    a no-op where there is no glibc mallopt().
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    heap_up_to = mallopt(_M_MMAP_THRESHOLD, 2 * MAX_PAYLOAD_BYTES)
    if not (heap_up_to and mallopt(_M_TRIM_THRESHOLD, _FREE_HEAP_KEPT_BYTES)):
        log.debug("mallopt refused; freed heap goes back to the kernel")


def bind_listener(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host:port``, bound as ``NbdServer.start`` binds
    them: so a caller can find out that the port is taken before it commits to serving there,
    and then hand the sockets to ``NbdServer.start``. Raises ``OSError``."""
    return listening_sockets(host, port)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = 64
    max_in_flight: int = 256  # requests per connection handed to the target and not yet answered
    max_in_flight_bytes: int = 64 * 1024 * 1024  # their payload bytes (one larger request still runs alone)
    write_buffer_high_bytes: int = 8 * 1024 * 1024
    handshake_timeout_s: float = 30.0
    max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES
    # A negotiated connection that sends no request within this is closed; one that went idle
    # after requests is never closed for it (an idle mounted disk is normal), but at the
    # connection limit it gives way to a new client once it has been idle this long.
    idle_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    connections: int
    connections_total: int
    requests_total: int
    protocol_errors_total: int


class Publication:
    """Exports published on a shared ``NbdServer`` (``NbdServer.shared``, issue 16): one
    volume's, while it is the primary here. ``aclose`` withdraws them, as ``NbdServer.aclose``
    does for a server of its own: no new client may select them, the connections to them finish
    their in-flight requests (within 10 s) and are closed; other exports are not touched."""

    def __init__(self, server: NbdServer, exports: dict[str, tuple[ExportInfo, NbdTarget]]) -> None:
        self.server = server
        self.exports = exports
        self.connections: set[NbdConnection] = set()
        # The publisher's volume (log context): its connections' log lines name it.
        self.volume = VolumeContext.current.get()
        self._all_closed: asyncio.Future[None] | None = None

    def statistics(self) -> ServerStatistics:
        base = self.server.statistics()
        return ServerStatistics(len(self.connections), base.connections_total, base.requests_total,
                                base.protocol_errors_total)

    def forget(self, conn: NbdConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def aclose(self) -> None:
        for name in self.exports:
            if self.server.publications.get(name) is self:
                del self.server.publications[name]
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), 10)
        for conn in list(self.connections):
            conn.abort()


class NbdServer:
    """Serves one export (under its name and the default name) from ``target``; or, made by
    ``shared``, the exports published on it by name (``publish``), with no default name: a
    daemon's one listener for many volumes (NBD_OPT_LIST lists what is published now, and
    OPT_GO to anything else is answered NBD_REP_ERR_UNKNOWN)."""

    def __init__(self, target: NbdTarget | None, export: ExportInfo | None,
                 limits: ServerLimits | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.export = export
        self.publications: dict[str, Publication] = {}
        self.limits = limits or ServerLimits()
        self.tls = tls  # FORCEDTLS when set
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._accept_errors = LogBudget(log, logging.ERROR, "NBD accept errors")
        self._connections: set[NbdConnection] = set()
        self._all_closed: asyncio.Future[None] | None = None  # aclose() waits on it
        self._connections_total = 0
        self.requests_total = 0
        self.protocol_errors_total = 0
        self._limits_hit: set[str] = set()
        self._evictions = LogBudget(log, logging.WARNING, "NBD connections closed for new clients")

    @classmethod
    def shared(cls, limits: ServerLimits | None = None, tls: ssl.SSLContext | None = None) -> NbdServer:
        return cls(None, None, limits, tls)

    def publish(self, exports: list[tuple[ExportInfo, NbdTarget]]) -> Publication:
        """Serve ``exports`` by name from now on, until the ``Publication`` is closed."""
        for info, _ in exports:
            if info.name in self.publications:
                raise ValueError(f"export {info.name!r} is published already")
        publication = Publication(self, {info.name: (info, target) for info, target in exports})
        for info, _ in exports:
            self.publications[info.name] = publication
        return publication

    def exports_now(self) -> dict[str, ExportInfo]:
        """What a new client may select: the one export, or every published one."""
        if self.export is not None:
            return {self.export.name: self.export}
        return {name: pub.exports[name][0] for name, pub in self.publications.items()}

    def limit_hit(self, name: str, message: str, *args: object) -> None:
        """Log the first time a limit is reached (per server), then stay quiet: a client that
        leans on a limit must not also flood the log."""
        if name not in self._limits_hit:
            self._limits_hit.add(name)
            log.warning("NBD limit %s reached: " + message + " (logged once)", name, *args)

    async def start(self, host: str, port: int,
                    sockets: list[socket.socket] | None = None) -> tuple[str, int]:
        """Listen on every address ``host`` resolves to, or on ``sockets`` when given (bound
        already, by ``bind_listener``), which the server then owns. Accepting is ours rather
        than the loop's: when accept() fails (no file descriptors left) the loop would log a
        traceback every time (asyncio) or close the new connections without a word (uvloop)."""
        keep_freed_heap()
        loop = asyncio.get_running_loop()
        self._sockets = sockets if sockets else listening_sockets(host, port)
        for sock in self._sockets:
            task = loop.create_task(self._accept_forever(sock))
            self._accepting.append(task)
        sockname = self._sockets[0].getsockname()
        if self.export is None:
            log.info("NBD server listening on %s:%d (exports by name%s)", sockname[0], sockname[1],
                     ", TLS required" if self.tls else "")
        else:
            log.info("NBD server listening on %s:%d (export %r, %d bytes%s)", sockname[0],
                     sockname[1], self.export.name, self.export.size,
                     ", TLS required" if self.tls else "")
        return sockname[0], sockname[1]

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: clients wait in the backlog
                self._accept_errors("NBD: cannot accept client connections: %s; they wait until "
                                    "this clears (with EMFILE raise the open-files limit: ulimit "
                                    "-n, or LimitNOFILE= in the service)", exc.strerror or exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            try:
                await loop.connect_accepted_socket(lambda: NbdConnection(self), conn)
            except OSError as exc:
                conn.close()
                self._accept_errors("NBD: cannot set up a client connection: %s",
                                    exc.strerror or exc)

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(len(self._connections), self._connections_total, self.requests_total,
                                self.protocol_errors_total)

    def _admit(self, conn: NbdConnection) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            victim = self._idle_victim(conn.connected_at)
            if victim is None:
                self.limit_hit("max_connections", "refusing NBD connections: limit of %d "
                               "connections reached, every one of them busy or recently active",
                               self.limits.max_connections)
                return False
            self._evictions("NBD: %d connections (the limit): closed the one from %s (%s) for a "
                            "new client from %s", len(self._connections), victim.peer,
                            victim.idleness(conn.connected_at), conn.peer)
            victim.abort()
        self._connections.add(conn)
        self._connections_total += 1
        return True

    def _idle_victim(self, now: float) -> NbdConnection | None:
        """Who gives way to a new client at the connection limit: the oldest connection that
        has sent no request yet (a stalled handshake, or a client that negotiated and waits);
        failing that, the one idle longest, if it has been idle for ``idle_timeout_s``. A
        connection with a request in flight is never chosen."""
        quiet = [c for c in self._connections if c.is_quiet]
        never = [c for c in quiet if c.last_request_at is None]
        if never:
            return min(never, key=lambda c: c.connected_at)
        idle = [c for c in quiet if c.last_request_at is not None
                and now - c.last_request_at >= self.limits.idle_timeout_s]
        return min(idle, key=lambda c: c.last_request_at or 0.0) if idle else None

    def _forget(self, conn: NbdConnection) -> None:
        self._connections.discard(conn)
        if conn.publication is not None:
            conn.publication.forget(conn)
        if not self._connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def aclose(self) -> None:
        """Stop listening, let every connection finish its in-flight requests, then close them."""
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting.clear()
        for sock in self._sockets:
            sock.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), 10)
        for conn in list(self._connections):
            conn.abort()


class NbdConnection(asyncio.Protocol):
    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.target = cast(NbdTarget, server.target)  # a shared server's: set at OPT_GO
        self.publication: Publication | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake: ServerHandshake | None = None
        self.tx: Transmission | None = None
        self.peer = "?"
        self._queue: deque[Event] = deque()
        self._write_paused = False
        self._reading_paused = False
        self._closing = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._serving = 0  # requests handed to the target whose done() has not run yet
        self._serving_bytes = 0  # and their payload bytes
        self._tls_task: asyncio.Task[None] | None = None
        # True while _drain_queue runs. A target may call done() synchronously from write() etc.;
        # done() must not re-enter the drain then, or a burst of small pipelined writes recurses
        # once per request and overflows the stack (RecursionError after ~250 queued writes).
        self._draining = False
        self._held: list[bytes] = []  # replies made during this drain, not yet written
        self._held_bytes = 0
        self.connected_at = time.monotonic()
        self.last_request_at: float | None = None  # None until the first request arrives

    # -- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's does not subclass asyncio.Transport, so no isinstance check.
        self.transport = stream = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.server._admit(self):
            stream.abort()
            self._closed = True
            return
        stream.set_write_buffer_limits(high=self.server.limits.write_buffer_high_bytes)
        self.handshake = ServerHandshake(
            self.server.exports_now(),
            default_export=self.server.export.name if self.server.export is not None else None,
            max_option_bytes=self.server.limits.max_option_bytes,
            tls=self.server.tls is not None,
        )
        stream.write(self.handshake.data_to_send())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.limits.handshake_timeout_s, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()
        self._held.clear()
        self.server._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drain_queue()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self.tx is None:
            self._handshake_data(data)
            return
        events, replies = self.tx.receive_data(data)
        if events or replies:
            self._active()
        if replies:
            self.server.protocol_errors_total += 1
            self._write(replies)
        if events:
            self._queue.extend(events)
            self._drain_queue()
        self._update_reading()

    def eof_received(self) -> bool | None:
        # The client half-closed: answer what is in flight, then close our side too.
        self._closing = True
        self._maybe_close()
        # Over TLS a half-close cannot be kept open (asyncio warns and closes anyway).
        return None if self.handshake is not None and self.handshake.tls_active else True

    # -- handshake -------------------------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        assert self.handshake is not None and self.transport is not None
        self.handshake.receive_data(data)
        if self.handshake.oversized_options:
            self.server.limit_hit("max_option_size", "%s sent an option over %d bytes; answered "
                                  "ERR_TOO_BIG without buffering it", self.peer,
                                  self.server.limits.max_option_bytes)
        out = self.handshake.data_to_send()
        if out:
            self.transport.write(out)
        event = self.handshake.next_event()
        if event is None:
            return
        if self._timer is not None and not isinstance(event, StartTls):
            # STARTTLS is not the end of negotiation: the deadline covers TLS and what follows.
            self._timer.cancel()
            self._timer = None
        if isinstance(event, ExportSelected):
            if self.server.export is None and not self._bind_publication(event.export.name):
                return
            self.tx = Transmission(event.export, event.structured_replies, event.meta_contexts,
                                   max_payload=event.export.max_block)
            self._timer = asyncio.get_running_loop().call_later(
                self.server.limits.idle_timeout_s, self._idle_timeout)
            log.debug("%s: negotiated export %r (structured=%s)", self.peer, event.export.name,
                      event.structured_replies)
            if event.trailing:
                self.data_received(event.trailing)
        elif isinstance(event, StartTls):
            # Nothing more may be read as plaintext: the next bytes are the TLS ClientHello.
            self.transport.pause_reading()
            self._tls_task = asyncio.get_running_loop().create_task(self._start_tls())
        elif isinstance(event, HandshakeAborted):
            self.transport.close()
        elif isinstance(event, HandshakeFailed):
            self.server.protocol_errors_total += 1
            log.info("%s: handshake failed: %s", self.peer, event.reason)
            self.transport.close()

    def _bind_publication(self, name: str) -> bool:
        """On a shared server, the target behind the export chosen; False (and closed) when it
        was withdrawn since the handshake began (its volume stopped being primary here)."""
        publication = self.server.publications.get(name)
        if publication is None:
            log.info("%s: export %r was withdrawn during negotiation; closing", self.peer, name)
            self.abort()
            return False
        self.publication = publication
        publication.connections.add(self)
        if publication.volume is not None:  # the callbacks of this connection run in its own
            VolumeContext.current.set(publication.volume)  # context, as the link router's do
        self.target = publication.exports[name][1]
        return True

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.handshake is not None and self.server.tls is not None
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(
                self.transport, self, self.server.tls, server_side=True,
                ssl_handshake_timeout=self.server.limits.handshake_timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.server.protocol_errors_total += 1
            log.info("%s: TLS handshake failed: %s", self.peer, getattr(exc, "reason", None) or exc)
            self.abort()
            return
        if tls_transport is None or self._closed:
            return
        self.transport = tls_transport
        self.transport.set_write_buffer_limits(high=self.server.limits.write_buffer_high_bytes)
        self.handshake.tls_established()
        log.debug("%s: TLS established (%s)", self.peer, tls_transport.get_extra_info("cipher"))

    def _handshake_timeout(self) -> None:
        if self.tx is None and self.transport is not None:
            self.server.limit_hit("handshake_timeout", "%s did not finish negotiating within %.0f s; "
                                  "closed", self.peer, self.server.limits.handshake_timeout_s)
            self.transport.abort()

    def _idle_timeout(self) -> None:
        self._timer = None
        if self.last_request_at is None and self.transport is not None and not self._closed:
            self.server.limit_hit("idle_timeout", "%s negotiated but sent no request within %g s; "
                                  "closed", self.peer, self.server.limits.idle_timeout_s)
            self.abort()

    def _active(self) -> None:
        """A request (or a bad one) arrived: the connection is in use."""
        self.last_request_at = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def is_quiet(self) -> bool:
        """Nothing of the client's is being served or waiting: closing it loses no request."""
        return (not self._closed and self._serving == 0 and not self._queue
                and (self.tx is None or self.tx.in_flight == 0))

    def idleness(self, now: float) -> str:
        if self.last_request_at is None:
            stage = "negotiated" if self.tx is not None else "still negotiating"
            return f"{stage}, no request in {now - self.connected_at:.0f} s"
        return f"idle for {now - self.last_request_at:.0f} s"

    # -- transmission ----------------------------------------------------------------------------

    def _drain_queue(self) -> None:
        if self._draining:  # called from a synchronous done(): the running loop carries on
            return
        self._draining = True
        try:
            self._drain_queue_once()
        finally:
            self._draining = False
            self._send_held()

    def _drain_queue_once(self) -> None:
        tx = self.tx
        assert tx is not None
        limit = self.server.limits.max_in_flight
        byte_limit = self.server.limits.max_in_flight_bytes
        write_many = group_call(self.target)
        while self._queue and not self._write_paused and not self._closed:
            head = self._queue[0]
            if isinstance(head, Request) and (
                self._serving >= limit
                or (self._serving and self._serving_bytes + len(head.data) > byte_limit)
            ):
                self.server.limit_hit("max_in_flight", "%s has %d requests (%d payload bytes) being "
                                      "served; reading from it pauses until they finish", self.peer,
                                      self._serving, self._serving_bytes)
                break
            event = self._queue.popleft()
            if isinstance(event, Request):
                self.server.requests_total += 1
                if (write_many is not None and event.command == _WRITE and not event.flags & _FUA
                        and self._queue):
                    group = self._plain_writes_after(event)
                    if len(group) > 1:
                        self._serve_writes(tx, group, write_many)
                        continue
                self._serve(tx, event)
            elif isinstance(event, Disconnect):
                self._closing = True
            elif isinstance(event, ConnectionFailed):
                self.server.protocol_errors_total += 1
                log.info("%s: closing connection: %s", self.peer, event.reason)
                self._queue.clear()
                self.abort()
                return
        self._maybe_close()

    def _serve(self, tx: Transmission, request: Request) -> None:
        command = request.command
        if command == _READ:
            try:
                data = self.target.read(request.offset, request.length)
            except StorageError as exc:
                log.error("%s: %s", self.peer, exc)
                self._write(tx.reply_error(request, exc.errno))
                return
            self._write(tx.reply_read_header(request))
            self._write(data)
            return
        if command == _STATUS:
            try:
                extents = self.target.extents(request.offset, request.length)
            except StorageError as exc:
                self._write(tx.reply_error(request, exc.errno))
                return
            self._write(tx.reply_block_status(request, extents))
            return
        self._serving += 1
        self._serving_bytes += len(request.data)
        # The one place a command number and its flag bits become a typed target call (inline:
        # a helper function would cost a call per request on the hot path).
        done = self._completion(tx, request)
        flags, target = request.flags, self.target
        if command == _WRITE:
            target.write(request.offset, request.data, (flags & _FUA) != 0, done)
        elif command == _FLUSH:
            target.flush(done)
        elif command == _ZEROES:
            target.zero(request.offset, request.length, (flags & _FUA) != 0,
                        (flags & _NO_HOLE) == 0, (flags & _FAST_ZERO) != 0, done)
        elif command == _TRIM:
            target.trim(request.offset, request.length, (flags & _FUA) != 0, done)
        elif command == _CACHE:
            target.cache(request.offset, request.length, done)
        else:  # Transmission answers unknown commands itself; this is a programmer error
            done(wire.Errno.EINVAL)

    def _plain_writes_after(self, first: Request) -> list[Request]:
        """``first`` and the plain (non-FUA) WRITEs right behind it in the queue, taken off it,
        as many as the in-flight limits let be served now (checked as ``_drain_queue_once``
        checks one request): a group the target takes in one call (``write_many``). Order
        against every other request is unchanged: the group ends at the first that is not one."""
        group = [first]
        queue = self._queue
        limits = self.server.limits
        serving = self._serving + 1
        serving_bytes = self._serving_bytes + len(first.data)
        while queue:
            head = queue[0]
            if (not isinstance(head, Request) or head.command != _WRITE or head.flags & _FUA
                    or serving >= limits.max_in_flight
                    or serving_bytes + len(head.data) > limits.max_in_flight_bytes):
                break
            queue.popleft()
            group.append(head)
            serving += 1
            serving_bytes += len(head.data)
        self.server.requests_total += len(group) - 1
        return group

    def _serve_writes(self, tx: Transmission, group: list[Request],
                      write_many: WriteMany) -> None:
        """Hand plain WRITEs to the target as one group; each is answered through its own done()."""
        items = []
        for request in group:
            self._serving += 1
            self._serving_bytes += len(request.data)
            items.append((request.offset, request.data, self._completion(tx, request)))
        write_many(items)

    def _completion(self, tx: Transmission, request: Request) -> Callable[[int], None]:
        def done(errno: int) -> None:
            self._serving -= 1
            self._serving_bytes -= len(request.data)
            reply = tx.reply_ok(request) if errno == 0 else tx.reply_error(request, errno)
            if self._closed:
                return
            self._write(reply)
            if self._draining:  # called from the target: the running drain does the rest
                return
            if self._queue:
                self._drain_queue()
            self._update_reading()
            self._maybe_close()

        return done

    def _write(self, data: bytes) -> None:
        if self.transport is None or self._closed:
            return
        if not self._draining:
            self.transport.write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= _HOLD_REPLY_BYTES:
            self._send_held()  # may call pause_writing(), which stops the drain

    def _send_held(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        self._held_bytes = 0
        if self.transport is not None and not self._closed:
            self.transport.writelines(held)  # one writev; READ data is not copied

    def _update_reading(self) -> None:
        if self.transport is None or self._closed:
            return
        limits = self.server.limits
        busy = (self._write_paused or bool(self._queue) or self._serving >= limits.max_in_flight
                or self._serving_bytes >= limits.max_in_flight_bytes)
        if busy and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not busy and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def _maybe_close(self) -> None:
        if self._closing and not self._closed and not self._queue and (self.tx is None or self.tx.in_flight == 0):
            assert self.transport is not None
            self._send_held()
            self.transport.close()
            self._closed = True

    def shutdown(self) -> None:
        """Server shutdown: stop taking requests, answer those in flight, then close."""
        self._closing = True
        if self.tx is None:
            if self.transport is not None:
                self.transport.close()
            return
        while self._queue:
            event = self._queue.popleft()
            if isinstance(event, Request):
                self._write(self.tx.reply_error(event, wire.Errno.ESHUTDOWN))
        self._maybe_close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._closed = True
        with contextlib.suppress(KeyError):
            self.server._forget(self)
