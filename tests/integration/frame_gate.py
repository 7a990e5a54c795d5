"""A link relay that reads frames and can hold them: a test sees the pair in a protocol window.

``FrameGate`` sits between the primary and the secondary's link listener (the primary's
``[link] peer`` points at it). It relays both directions frame by frame (link/wire.py's 16-byte
header, then the payload), unchanged. ``hold(direction, type)`` arms it: from the first frame of
that type in that direction on, nothing more goes that way (so order is kept) until
``release()``; ``wait_held`` returns once such a frame is held. ``abort()`` closes every relayed
connection (both ends see a reset), as a crash or a cut would. Plain TCP only (no TLS, no
secret): the frames must be readable.

Blocking sockets and threads: two per connection, one per direction, and one for accepting.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from foresync.link import wire
from foresync.testing.processes import bind_free_port

TO_SECONDARY = "primary->secondary"
TO_PRIMARY = "secondary->primary"


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    chunks: list[bytes] = []
    while count:
        try:
            chunk = sock.recv(min(count, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


class FrameGate:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = bind_free_port(self._listener)
        self._listener.listen(8)
        self._lock = threading.Lock()
        self._rule: tuple[str, int] | None = None  # (direction, message type) to hold from
        self._held = threading.Event()
        self._release = threading.Event()
        self._sockets: list[socket.socket] = []
        self.seen: dict[str, list[int]] = {TO_SECONDARY: [], TO_PRIMARY: []}  # frame types relayed
        self._closed = False
        threading.Thread(target=self._accept, name="frame-gate-accept", daemon=True).start()

    # -- control ------------------------------------------------------------------------------------

    def hold(self, direction: str, message_type: wire.MessageType) -> None:
        with self._lock:
            self._rule = (direction, int(message_type))
            self._held.clear()
            self._release.clear()

    def wait_held(self, timeout_s: float) -> bool:
        return self._held.wait(timeout_s)

    def release(self) -> None:
        """Let the held frame and everything behind it go, and hold nothing more."""
        with self._lock:
            self._rule = None
            self._release.set()

    def abort(self) -> None:
        """Close every relayed connection (a frame held is dropped), and hold nothing more."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._rule = None
            self._release.set()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.abort()
        with suppress(OSError):
            self._listener.close()

    # -- relaying -----------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink, direction in ((client, server, TO_SECONDARY), (server, client, TO_PRIMARY)):
                threading.Thread(target=self._pump, args=(source, sink, direction),
                                 name=f"frame-gate {direction}", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while True:
                header = _read_exactly(source, wire.FRAME_HEADER.size)
                if header is None:
                    return
                _, kind, _, _, length, _ = wire.FRAME_HEADER.unpack(header)
                payload = _read_exactly(source, length) if length else b""
                if payload is None:
                    return
                with self._lock:
                    rule = self._rule
                    if rule == (direction, kind):
                        self._held.set()
                if rule == (direction, kind):
                    self._release.wait()
                self.seen[direction].append(kind)
                sink.sendall(header + payload)
        except OSError:
            return
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
