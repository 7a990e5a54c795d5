"""The admin HTTP server: ``GET /status`` and ``GET /metrics``, and the endpoints that change
state (``POST /promote``, ``/demote``, ``/resolve``, ``/verify``).

HTTP/1.1 itself (request line, headers, Content-Length or chunked bodies, ``Expect:
100-continue``, status lines with their reason phrase) is h11's: a small, well-kept sans-I/O
parser and writer. This adapter only moves bytes between it and the socket, one request per
connection (``Connection: close``). The hand-written server it replaces answered ``202 Error``
for want of a reason phrase; h11 writes whatever phrase we give, and we give
``http.HTTPStatus``'s.

Limits, so a stuck or hostile client cannot hold resources: the head and the body are each at
most ``MAX_REQUEST_BYTES`` (413 for a larger body), and the whole request must arrive within
``request_timeout_s`` (408). An endpoint that has not answered within ``answer_timeout_s`` gets
a 504 answer, but goes on: it is never cancelled halfway, since a promote cut short could leave
the site half switched.

Each endpoint declares the JSON fields its body may hold (``admin.body``): a body is parsed,
never searched for a substring, and anything else is refused with 400 naming the field.

With a token (``[admin] token_file``; required when the admin address is not loopback), every
request other than GET, i.e. every endpoint that can change anything, needs ``Authorization:
Bearer TOKEN``; the comparison is constant-time and a refusal is 401 without saying more.
GET /status and /metrics stay open: they reveal state, never a secret.

A request carrying an ``Origin`` header comes from a web browser, and is refused (403): a page
the operator visits could otherwise make the browser POST to a loopback admin port that has no
token (a cross-origin "simple request" needs no preflight). curl, urllib and the CLI send none.

Every request other than GET is logged at WARNING once answered (an audit trail): the peer, the
method and path, the parsed body and the answer's status, with the error, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import inspect
import json
import logging
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

from foresync.admin.body import BodyError, Fields, parse_body

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[dict[str, Any]], Response | Awaitable[Response]]

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 100.0  # demote may wait 60 s for the secondary; the CLI waits 120 s
CLOSE_GRACE_S = 10.0  # on close, how long answers still being written may take
_READ_BYTES = 16 * 1024
LINGER_S = 2.0  # after refusing a request mid-body, how long its rest is read and dropped
LINGER_BYTES = 1024 * 1024
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What runs for one (method, path), and the JSON fields its body may hold."""

    handler: Handler
    fields: Fields = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamEndpoint:
    """A GET answered with a stream of chunks until the client or the server goes (``/events``).
    The handler gets the query string's names and values; it raises LookupError, answered 404,
    when they name something not served here (an unknown volume)."""

    handler: Callable[[dict[str, str]], AsyncGenerator[bytes, None]]
    content_type: str = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    query: str = ""


class _Refused(Exception):
    """A request answered without reaching an endpoint (413 while it is still arriving)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The client closed the connection before sending a whole request."""


def error(status: int, message: str) -> Response:
    return status, _JSON, json.dumps({"error": message}).encode()


def peer_name(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address or "unknown")


class AdminServer:
    def __init__(self, routes: Mapping[tuple[str, str], Endpoint], token: bytes | None = None, *,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 answer_timeout_s: float = ANSWER_TIMEOUT_S,
                 streams: Mapping[str, StreamEndpoint] | None = None,
                 on_audit: Callable[[str, str, dict[str, Any] | None, int], None] | None = None) -> None:
        self.routes = dict(routes)
        self.streams = dict(streams or {})  # GET path -> stream
        self.on_audit = on_audit  # each audited request once answered: method, path, body, status
        self._token = token
        self.request_timeout_s = request_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        name = self._server.sockets[0].getsockname()
        log.info("admin HTTP on http://%s:%d/status", name[0], name[1])
        return name[0], name[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            async with asyncio.timeout(self.request_timeout_s):
                request = await self._read_request(conn, reader, writer)
        except _Gone:
            return
        except TimeoutError:  # before OSError, of which it is a subclass
            await self._send(conn, writer, error(
                408, f"the request did not arrive within {self.request_timeout_s:g} s"))
            return
        except OSError:  # the client went away
            return
        except (h11.RemoteProtocolError, _Refused) as exc:
            status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else exc.status
            await self._send(conn, writer, error(status, f"bad HTTP request: {exc}" if status == 400
                                                 else str(exc)))
            await _linger(reader, writer)
            return
        stream = self.streams.get(request.path)
        if stream is not None and request.method == "GET" and "origin" not in request.headers:
            await self._stream(conn, reader, writer, stream, request)
            return
        head_only = request.method == "HEAD"
        if head_only:  # answered as GET, without the body
            request = dataclasses.replace(request, method="GET")
        answer = await self._answer(request, peer_name(writer.get_extra_info("peername")))
        headers = []
        if answer[0] == 405:
            allowed = sorted(method for method, path in self.routes if path == request.path)
            headers.append(("Allow", ", ".join(allowed)))
        await self._send(conn, writer, answer, headers, head_only)

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> _Request:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(
                        status_code=100, headers=[], reason=HTTPStatus.CONTINUE.phrase.encode())) or b"")
                data = await reader.read(_READ_BYTES)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > MAX_REQUEST_BYTES:
                    raise _Refused(413, f"the body is larger than {MAX_REQUEST_BYTES} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_BYTES:
                    raise _Refused(413, f"the body is larger than {MAX_REQUEST_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
                target, _, query = head.target.decode("latin-1").partition("?")
                return _Request(head.method.decode("ascii", "replace"), target, headers, bytes(body),
                                query)
            else:  # ConnectionClosed (or PAUSED, which one request per connection never reaches)
                raise _Gone

    async def _answer(self, request: _Request, peer: str) -> Response:
        audited = request.method != "GET"
        shown = "-"
        parsed: dict[str, Any] | None = None
        try:
            if "origin" in request.headers:
                answer = error(403, "requests from web browsers (with an Origin header) are refused")
            elif audited and self._token is not None and not self._authorized(
                    request.headers.get("authorization", "")):
                answer = error(401, "this endpoint needs the admin token")
            else:
                endpoint = self.routes.get((request.method, request.path))
                if endpoint is None:
                    known = any(path == request.path for _, path in self.routes)
                    answer = error(405 if known else 404, f"no endpoint {request.method} {request.path}")
                else:
                    body = {} if request.method == "GET" else parse_body(request.body, endpoint.fields)
                    parsed = body
                    shown = json.dumps(body, sort_keys=True)
                    answer = await self._run(endpoint, body, request)
        except BodyError as exc:
            shown = f"(refused, {len(request.body)} bytes)"
            answer = error(400, str(exc))
        if audited:
            status, ctype, content = answer
            detail = ""
            if status >= 400 and ctype == _JSON:
                with contextlib.suppress(ValueError, AttributeError):
                    detail = f": {json.loads(content)['error']}"
            log.warning("admin: %s %s from %s, body %s: answered %d %s%s", request.method,
                        request.path, peer, shown, status, HTTPStatus(status).phrase, detail)
            if self.on_audit is not None:
                self.on_audit(request.method, request.path, parsed, status)
        return answer

    async def _stream(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, stream: StreamEndpoint, request: _Request) -> None:
        """Chunked (HTTP/1.1) or close-delimited (1.0) until the stream ends, the client hangs
        up (a read sees EOF) or the server closes."""
        query = dict(urllib.parse.parse_qsl(request.query, keep_blank_values=True))
        try:
            chunks = stream.handler(query)
        except LookupError as exc:  # the query names what is not served here (a volume)
            await self._send(conn, writer, error(404, str(exc.args[0]) if exc.args else str(exc)))
            return
        gone = asyncio.ensure_future(reader.read(1))  # nothing more is expected: EOF = gone
        try:
            writer.write(conn.send(h11.Response(
                status_code=200, reason=b"OK",
                headers=[("Content-Type", stream.content_type), ("Cache-Control", "no-store"),
                         ("Connection", "close")])) or b"")
            while True:
                step = asyncio.ensure_future(anext(chunks))
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    return
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (ConnectionError, OSError, h11.LocalProtocolError):
            return
        finally:
            gone.cancel()
            await chunks.aclose()

    async def _run(self, endpoint: Endpoint, body: dict[str, Any], request: _Request) -> Response:
        async def call() -> Response:
            result = endpoint.handler(body)
            return await result if inspect.isawaitable(result) else result

        task = asyncio.ensure_future(call())
        try:
            # shield: a slow endpoint gets a 504 answer but is never cancelled halfway
            return await asyncio.wait_for(asyncio.shield(task), self.answer_timeout_s)
        except TimeoutError:
            task.add_done_callback(_log_late_failure)
            return error(504, f"{request.method} {request.path} is still running after "
                              f"{self.answer_timeout_s:g} s; it goes on: watch `foresync status`")
        except Exception:  # a bug in an endpoint must not kill the daemon; logged with a traceback
            log.exception("admin endpoint %s %s failed", request.method, request.path)
            return error(500, "internal error: see the site log")

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, answer: Response,
                    extra: Sequence[tuple[str, str]] = (), head_only: bool = False) -> None:
        status, ctype, content = answer
        headers = [("Content-Type", ctype), ("Content-Length", str(len(content))),
                   ("Connection", "close"), *extra]
        if status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers,
                                          reason=HTTPStatus(status).phrase.encode()))
            if head_only:
                content = b""
            data = (data or b"") + (conn.send(h11.Data(data=content)) or b"")
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:  # the connection is in no state for an answer
            log.debug("admin: no answer sent: %s", exc)
            return
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(data)
            await writer.drain()

    def _authorized(self, header: str) -> bool:
        assert self._token is not None
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode("latin-1", "replace"), self._token)

    async def aclose(self) -> None:
        """Stop listening; answers being written (a promote's, say) get ``CLOSE_GRACE_S``."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=CLOSE_GRACE_S)
            for task in stuck:  # a client that reads nothing: its endpoint itself goes on
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._server is not None:
            await self._server.wait_closed()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request that was still arriving: stop sending, and read (and drop) what
    the client still sends for a moment, so that closing with unread bytes does not reset the
    connection and destroy the answer before the client has read it."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            for _ in range(LINGER_BYTES // _READ_BYTES):
                if not await reader.read(_READ_BYTES):
                    break


def _log_late_failure(task: asyncio.Future[Response]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("admin endpoint failed after its answer timed out: %s", task.exception())
