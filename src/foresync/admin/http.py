"""A deliberately small HTTP/1.1 server for ``GET /status`` and ``GET /metrics``.

One request per connection, bounded request size, and a timeout, so a stuck or hostile client
cannot hold resources. Routes map (method, path) to a function returning (status, content type,
body); the daemon supplies them.

With a token (``[admin] token_file``; required when the admin address is not loopback), every
POST, i.e. every endpoint that changes anything (promote, demote, resolve, verify), needs
``Authorization: Bearer TOKEN``; the comparison is constant-time and a refusal is 401 without
saying more. GET /status and /metrics stay open: they reveal state, never a secret.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
Route = Callable[[bytes], Response | Awaitable[Response]]
MAX_REQUEST_BYTES = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 500: "Internal Server Error"}


class AdminServer:
    def __init__(self, routes: dict[tuple[str, str], Route], token: bytes | None = None) -> None:
        self.routes = routes
        self._token = token
        self._server: asyncio.Server | None = None
        self.unauthorized_total = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        name = self._server.sockets[0].getsockname()
        log.info("admin HTTP on http://%s:%d/status", name[0], name[1])
        return name[0], name[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._respond(reader), timeout=90)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_REQUEST_BYTES:
            return 400, "text/plain", b"request too large\n"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request line\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        length = 0
        authorization = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "authorization":
                authorization = value.strip()
        if length > MAX_REQUEST_BYTES:
            return 400, "text/plain", b"body too large\n"
        if length < 0:
            return 400, "text/plain", b"bad content length\n"
        body = await reader.readexactly(length) if length else b""
        if method != "GET" and self._token is not None and not self._authorized(authorization):
            self.unauthorized_total += 1
            log.warning("admin: refused %s %s without a valid token", method, target)
            return 401, "application/json", b'{"error": "this endpoint needs the admin token"}'
        route = self.routes.get((method, target))
        if route is None:
            known = any(path == target for _, path in self.routes)
            return (405 if known else 404), "text/plain", b"no such endpoint\n"
        try:
            result = route(body)
            if inspect.isawaitable(result):
                return await result
            return result
        except Exception:  # a status bug must not kill the daemon; it is logged with a traceback
            log.exception("admin endpoint %s %s failed", method, target)
            return 500, "text/plain", b"internal error\n"

    def _authorized(self, header: str) -> bool:
        assert self._token is not None
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode("latin-1", "replace"), self._token)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
