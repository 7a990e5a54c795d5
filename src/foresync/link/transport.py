"""The link transport: TCP frames in and out, decoded by the pure ``FrameDecoder``.

A damaged frame (bad magic, CRC mismatch, oversize) aborts the connection: TCP already promises
order and integrity, so damage means the peer or the path cannot be trusted, and the sites
resynchronise on the next connection rather than guess.

Before the site sees any message, a connection is secured: with ``[link] tls_dir`` both sides speak
TLS from the first byte (``LinkListener`` hands each accepted socket to the loop's TLS machinery;
the dialler connects with TLS), then ``LinkAuth``
runs the shared-secret challenge-response when ``[link] secret_file`` is set. Until both have
succeeded the frame limit is 4 KiB and only authentication frames are accepted; until the first
real message (HELLO, WELCOME) has passed, frames are held to what that message can need; and a
connection still in this setup after the link timeout is closed. A listener keeps at most
``max_pending_setups`` connections in setup at once (the oldest gives way to a newcomer), so
strangers can neither pin memory nor lock the real peer out. Every failure reaches ``on_error``;
a peer that failed authentication also gets a REFUSE saying why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from foresync import tls
from foresync.errors import ForesyncError, RemoteProtocolError
from foresync.link import wire
from foresync.link.auth import AUTH_MAX_FRAME_BYTES, LinkAuth
from foresync.listening import listening_sockets
from foresync.logctx import LogBudget

log = logging.getLogger(__name__)

# Frames nobody waits for (``wire.may_wait``) are held this long, or until this many bytes are
# queued, so that many of them share one write: on loopback every write to the link costs the
# receiver's wakeup and TCP processing too. 1 ms is far below the watermark interval (50 ms),
# which is what bounds how stale the secondary may be.
DEFERRED_FLUSH_S = 0.001
DEFERRED_FLUSH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class LinkSecurity:
    """How a site secures its link connections (all optional; see docs/security.md)."""

    secret: bytes | None = None
    server_tls: ssl.SSLContext | None = None  # the listening side, with client certificates required
    client_tls: ssl.SSLContext | None = None  # the dialling side
    max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    # Until the first message has passed (HELLO or WELCOME, which carry per-extent lists), frames
    # are held to this; the site sets it from the volume's extent count.
    setup_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    setup_timeout_s: float = 10.0  # TLS, authentication and the first message within this
    max_pending_setups: int = 16  # unfinished incoming connections; beyond it the oldest is dropped

    def __repr__(self) -> str:
        return (f"LinkSecurity(secret={'set' if self.secret else 'none'}, "
                f"tls={self.server_tls is not None})")


def _ignore_error(reason: str) -> None:
    pass


def setup_timeout_reason(peer: str, timeout_s: float, *, dialler: bool, secret: bool,
                         authenticated: bool) -> str:
    """Why a connection still in setup after ``timeout_s`` is closed, naming only the step that
    is configured and did not happen. TLS is never it: the setup deadline starts once a TLS
    handshake is done (a failed or slow one is reported by ``LinkListener`` or the dialler)."""
    if secret and not authenticated:
        return f"{peer} did not complete link authentication within {timeout_s:g} s"
    if dialler:
        return f"{peer} accepted the connection but did not answer our HELLO within {timeout_s:g} s"
    return f"{peer} connected but sent no HELLO within {timeout_s:g} s"


def peer_name(address: Any) -> str:
    """``HOST:PORT`` of a socket address, for logs and link_error."""
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


class LinkProtocol(asyncio.BufferedProtocol):
    # Incoming connections of this process not yet past their first message, oldest first. When
    # full, the oldest is dropped for the newcomer: a stranger holding every slot cannot lock the
    # real peer out, it only keeps losing its own oldest connection.
    _in_setup_order: ClassVar[dict[LinkProtocol, None]] = {}
    _dialler_nonces: ClassVar[set[bytes]] = set()  # this process's outstanding challenges (reflection check)

    def __init__(
        self,
        on_message: Callable[[wire.Message], None],
        on_batch_end: Callable[[], None],
        security: LinkSecurity | None = None,
        dialler: bool = False,
        on_error: Callable[[str], None] = _ignore_error,
    ) -> None:
        self._on_message = on_message
        self._on_batch_end = on_batch_end
        self._security = security or LinkSecurity()
        self._dialler = dialler
        self._on_error = on_error
        self._decoder = wire.FrameDecoder(AUTH_MAX_FRAME_BYTES)
        self._auth: LinkAuth | None = None  # set at connection_made; None once a message passed
        self.transport: asyncio.Transport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() syscall, and send() runs per write.
        self._loop = loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()  # authenticated (TLS is up before)
        self.last_rx = time.monotonic()
        self.peer = "?"
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._deferred: asyncio.TimerHandle | None = None
        self._setup_timer: asyncio.TimerHandle | None = None
        self._in_setup = False  # listed in _in_setup_order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = peer_name(transport.get_extra_info("peername"))
        self.transport.set_write_buffer_limits(high=16 * 1024 * 1024)
        loop = asyncio.get_running_loop()
        if not self._dialler:
            pending = LinkProtocol._in_setup_order
            if len(pending) >= self._security.max_pending_setups:
                oldest = next(iter(pending))
                log.warning("link: %d connections are still authenticating; dropping the oldest, "
                            "from %s", len(pending), oldest.peer)
                oldest.abort("displaced by a newer connection while authenticating")
                oldest._leave_setup()
            pending[self] = None
            self._in_setup = True
        self._setup_timer = loop.call_later(self._security.setup_timeout_s, self._setup_timed_out)
        self._start_auth()  # over TLS already, when configured: LinkListener and the dialler see to it

    def rebind(self, on_message: Callable[[wire.Message], None], on_batch_end: Callable[[], None],
               on_error: Callable[[str], None]) -> None:
        """Hand the connection to another owner: a daemon's link router passes it to the volume
        its ROUTE named (daemon/link_router.py). Takes effect from the next message on."""
        self._on_message = on_message
        self._on_batch_end = on_batch_end
        self._on_error = on_error

    def _start_auth(self) -> None:
        self._auth = LinkAuth(self._security.secret, self._dialler, os.urandom)
        for message in self._auth.start():
            if isinstance(message, wire.AuthChallenge):
                LinkProtocol._dialler_nonces.add(message.nonce)
            self.send(message)
        if self._auth.authenticated:
            self._trusted()

    def _trusted(self) -> None:
        """Authenticated (or no secret): the first real message may now come, within limits."""
        self._decoder.max_frame_bytes = min(self._security.setup_frame_bytes,
                                            self._security.max_frame_bytes)
        if not self.ready.done():
            self.ready.set_result(None)

    def _set_up(self) -> None:
        """The first real message passed: full frame limit, no more setup deadline."""
        self._decoder.max_frame_bytes = self._security.max_frame_bytes
        if self._setup_timer is not None:
            self._setup_timer.cancel()
            self._setup_timer = None
        self._leave_setup()

    def _leave_setup(self) -> None:
        if self._in_setup:
            self._in_setup = False
            LinkProtocol._in_setup_order.pop(self, None)
        if self._auth is not None:
            LinkProtocol._dialler_nonces.discard(self._auth.nonce)

    def _setup_timed_out(self) -> None:
        self._refused_locally(setup_timeout_reason(
            self.peer, self._security.setup_timeout_s, dialler=self._dialler,
            secret=self._security.secret is not None, authenticated=self.ready.done()),
            tell_peer=False)

    def _refused_locally(self, reason: str, tell_peer: bool) -> None:
        log.warning("link %s: %s; closing the connection", self.peer, reason)
        self._on_error(reason)
        if tell_peer:
            self.send(wire.Refuse(reason, wire.RefuseCode.AUTH))  # only link setup refuses here
            self.close_after_flush()
        if not self.closed.done():
            self.closed.set_result(reason)
        if not tell_peer and self.transport is not None:
            self.transport.abort()

    def _gate(self, auth: LinkAuth, message: wire.Message) -> bool:
        """Pass ``message`` through authentication; True when the site should see it."""
        if isinstance(message, wire.AuthChallenge) and message.nonce in LinkProtocol._dialler_nonces:
            # Our own dialler's challenge, relayed to our listener to get it answered for us.
            self._refused_locally("authentication failed: the peer relayed our own challenge",
                                  tell_peer=False)
            return False
        result = auth.receive(message)
        for reply in result.send:
            self.send(reply)
        if result.failure is not None:
            self._refused_locally(result.failure, tell_peer=not result.peer_refused)
            return False
        if auth.authenticated:
            self._trusted()
            if result.deliver:
                self._auth = None  # a real message came through: no more checks on the hot path
                self._set_up()
        return result.deliver

    def get_buffer(self, sizehint: int) -> memoryview:
        """The transport receives straight into the decoder's memory (``FrameDecoder.get_buffer``):
        a large WRITE's data lands in its payload, everything else in a reused scratch buffer
        (issue 15: one copy fewer per byte than ``data_received``'s bytes)."""
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.last_rx = time.monotonic()
        try:
            self._decoder.buffer_updated(nbytes)
        except ForesyncError as exc:
            log.warning("link %s: %s; closing the connection", self.peer, exc)
            self.abort(str(exc))
            return
        self._deliver()

    def data_received(self, data: bytes) -> None:
        """The same as a read into ``get_buffer`` (tests feed bytes this way)."""
        self.last_rx = time.monotonic()
        try:
            self._decoder.push(data)
        except ForesyncError as exc:
            log.warning("link %s: %s; closing the connection", self.peer, exc)
            self.abort(str(exc))
            return
        self._deliver()

    def _deliver(self) -> None:
        """Every message the received bytes completed, through authentication until set up."""
        decoder = self._decoder
        try:
            while self._auth is not None and (message := decoder.next_message()) is not None:
                if not self._gate(self._auth, message):
                    if self.closed.done():
                        return
                    continue
                self._on_message(message)
            if self._auth is None:  # set up: the frame limit no longer changes between messages
                on_message = self._on_message
                for message in decoder.next_messages():
                    on_message(message)
                if decoder.failed is not None:  # after the good frames before the damage
                    raise RemoteProtocolError(decoder.failed)
        except ForesyncError as exc:
            log.warning("link %s: %s; closing the connection", self.peer, exc)
            self.abort(str(exc))
            return
        if self.ready.done():
            self._on_batch_end()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._setup_timer is not None:
            self._setup_timer.cancel()
        self._leave_setup()
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "connection closed")

    def send(self, message: wire.Message) -> None:
        """Queue a frame. Frames go out in order, many in one write (one syscall instead of
        one per 4 KiB write): at the end of this pass of the event loop when the message is
        awaited, or within ``DEFERRED_FLUSH_S`` when nobody waits for it (``wire.may_wait``)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        parts = wire.encode_frame_parts(message)
        self._out += parts
        if len(parts) <= 2:
            self._out_bytes += len(parts[0]) if len(parts) == 1 else len(parts[0]) + len(parts[1])
        else:  # a WRITES frame: its table, then each write's data
            self._out_bytes += sum(map(len, parts))
        if self._flush_scheduled:
            return
        loop = self._loop
        if self._out_bytes < DEFERRED_FLUSH_BYTES and wire.may_wait(message):
            if self._deferred is None:
                self._deferred = loop.call_later(DEFERRED_FLUSH_S, self._flush)
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Write out every queued frame now, not at the end of this pass of the event loop: a
        caller about to block the loop (a long zeroing) lets an awaited reply go first."""
        if self._out:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        out, self._out = self._out, []
        self._out_bytes = 0
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def close_after_flush(self, reason: str | None = None) -> None:
        """Close once what was sent has gone out (a REFUSE or DEMOTE must reach the peer);
        ``reason`` is what ``closed`` then reports, rather than "connection closed"."""
        if self.transport is not None:
            self._flush()
            self.transport.close()
        if reason is not None and not self.closed.done():
            self.closed.set_result(reason)

    def abort(self, reason: str) -> None:
        if self._setup_timer is not None:  # closed on purpose: no "stalled peer" warning later
            self._setup_timer.cancel()
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    @property
    def in_setup(self) -> bool:
        """Connected, and no real message (HELLO, WELCOME) has passed yet."""
        return self._setup_timer is not None and not self.closed.done()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()


class LinkListener:
    """Accepts link connections for ``factory``, itself (foresync/listening.py says why: a
    failing accept() is logged, ten a minute). With TLS every accepted socket goes to the loop's
    TLS machinery before a byte is read (``connect_accepted_socket``), so a ClientHello can never
    reach the frame decoder, and a failed
    handshake (a certificate from another CA, no certificate, plaintext) is reported through
    ``on_error`` for the site's ``link_error``. At most ``max_pending_setups`` handshakes run at
    once; beyond that the oldest is dropped for the newcomer."""

    def __init__(self, factory: Callable[[], LinkProtocol], security: LinkSecurity,
                 on_error: Callable[[str], None]) -> None:
        self._factory = factory
        self._security = security
        self._on_error = on_error
        self._socks: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._accept_errors = LogBudget(log, logging.ERROR, "link accept errors")
        self._handshakes: dict[asyncio.Task[None], None] = {}  # oldest first
        self._accepted: weakref.WeakSet[LinkProtocol] = weakref.WeakSet()

    def _make_protocol(self) -> LinkProtocol:
        proto = self._factory()
        self._accepted.add(proto)
        return proto

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._socks = listening_sockets(host, port)
        self._accepting = [loop.create_task(self._accept_forever(sock)) for sock in self._socks]

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENFILE...: the peer waits in the backlog meanwhile
                self._accept_errors("link: cannot accept connections: %s; retrying (with EMFILE "
                                    "raise the open-files limit)", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._handshakes) >= self._security.max_pending_setups:
                oldest = next(iter(self._handshakes))  # the oldest gives way, as in LinkProtocol
                log.warning("link: %d TLS handshakes running; dropping the oldest",
                            len(self._handshakes))
                oldest.cancel()
                self._handshakes.pop(oldest, None)
            task = loop.create_task(self._handshake(conn, address))
            self._handshakes[task] = None
            task.add_done_callback(lambda done: self._handshakes.pop(done, None))

    async def _handshake(self, conn: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._security.server_tls is None:
                await loop.connect_accepted_socket(self._make_protocol, conn)
            else:
                await loop.connect_accepted_socket(
                    self._make_protocol, conn, ssl=self._security.server_tls,
                    ssl_handshake_timeout=self._security.setup_timeout_s)
        except asyncio.CancelledError:
            conn.close()  # displaced by a newer connection, or the listener closed
            raise
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            conn.close()
            if self._security.server_tls is None:
                self._accept_errors("link: cannot set up the connection from %s: %s",
                                    peer_name(address), exc)
                return
            reason = f"TLS handshake with {peer_name(address)} failed: {tls.describe_error(exc)}"
            log.warning("link: %s", reason)
            self._on_error(reason)

    def close(self) -> None:
        """Stop listening, and close the connections still in setup: nobody will take their
        first message now (the site is stopping or changing role), so they would only run into
        the setup deadline and be reported as a stalled peer. Connections past setup belong to
        the site, which closes its own."""
        for proto in list(self._accepted):
            if proto.in_setup:
                proto.abort("the listener closed")
        for accepting in self._accepting:
            accepting.cancel()
        self._accepting = []
        for task in list(self._handshakes):
            task.cancel()
        for sock in self._socks:
            sock.close()
        self._socks = []
