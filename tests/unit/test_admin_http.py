"""The admin HTTP server (admin/http.py) over real loopback sockets: raw bytes in, whole
answers out. Requests are sent whole, one byte at a time, and with trailing data; bodies are
checked against each endpoint's fields; every answer carries its reason phrase (the old
hand-written server said ``202 Error``); limits, timeouts, the token, browsers, failing and
slow endpoints; and the audit log."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest

from foresync.admin.http import MAX_REQUEST_BYTES, AdminServer, Endpoint, Response

TOKEN = b"admin-token-0123456789abcdef"


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> list[Answer]:
    """Every response in ``raw`` (a 100 Continue comes before the real one)."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(status), reason, headers, rest[:length]))
        raw = rest[length:]
    return answers


class Calls:
    """Endpoints that record what they were given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def endpoint(self, name: str, status: int = 200, fields: dict[str, type] | None = None) -> Endpoint:
        def handler(body: dict[str, Any]) -> Response:
            self.seen.append((name, body))
            return status, "application/json", json.dumps({"name": name, "body": body}).encode()
        return Endpoint(handler, fields or {})


def routes(calls: Calls) -> dict[tuple[str, str], Endpoint]:
    return {("GET", "/status"): calls.endpoint("status"),
            ("POST", "/verify"): calls.endpoint("verify", 202, {"repair": bool}),
            ("POST", "/promote"): calls.endpoint("promote", 200, {"force": bool})}


async def exchange(port: int, *chunks: bytes, pause_s: float = 0.0) -> list[Answer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return parse_answer(raw)


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def run(scenario: Callable[[int, Calls], Awaitable[None]], token: bytes | None = None,
        **limits: float) -> Calls:
    calls = Calls()

    async def main() -> None:
        server = AdminServer(routes(calls), token=token, **limits)
        _, port = await server.start("127.0.0.1", 0)
        try:
            await scenario(port, calls)
        finally:
            await server.aclose()

    asyncio.run(main())
    return calls


# -- framing: whole, byte by byte, trailing data -----------------------------------------------


REQUEST = post("/verify", b'{"repair":  true}')


@pytest.mark.parametrize("split", ["whole", "byte by byte", "trailing data"])
def test_a_request_however_it_arrives(split: str) -> None:
    async def scenario(port: int, calls: Calls) -> None:
        if split == "whole":
            answers = await exchange(port, REQUEST)
        elif split == "byte by byte":
            answers = await exchange(port, *(REQUEST[i:i + 1] for i in range(len(REQUEST))), pause_s=0.001)
        else:  # a second request pipelined behind: one request per connection, it is not run
            answers = await exchange(port, REQUEST + post("/promote", b'{"force": true}'))
        assert len(answers) == 1, answers
        answer = answers[0]
        assert (answer.status, answer.reason) == (202, "Accepted")
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["connection"] == "close"
        assert answer.doc == {"name": "verify", "body": {"repair": True}}

    calls = run(scenario)
    assert calls.seen == [("verify", {"repair": True})]


def test_http_client_sees_the_reason_phrase_and_json() -> None:
    def client(port: int) -> tuple[int, str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/verify", body=b"", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.reason, json.loads(response.read())

    async def scenario(port: int, calls: Calls) -> None:
        assert await asyncio.to_thread(client, port) == (202, "Accepted", {"name": "verify", "body": {}})

    run(scenario)


def test_a_chunked_body_and_expect_100_continue() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        head = (b"POST /promote HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Expect: 100-continue\r\n\r\n")
        answers = await exchange(port, head, b"6\r\n{\"forc\r\n", b"9\r\ne\": true}\r\n0\r\n\r\n",
                                 pause_s=0.05)
        assert [(a.status, a.reason) for a in answers] == [(100, "Continue"), (200, "OK")], answers
        assert answers[1].doc["body"] == {"force": True}

    run(scenario)


def test_head_is_a_get_without_the_body() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 30" in head, raw
        assert body == b""

    assert run(scenario).seen == [("status", {})]


# -- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, words", [
    (b"no-discard-local-please", "the body is not JSON"),
    (b'{"force": "yes"}', "field 'force' must be a boolean"),
    (b'{"force": true, "now": 1}', "unknown field 'now' (this endpoint takes: force)"),
    (b"[]", "must be a JSON object"),
])
def test_bad_bodies_are_refused_and_the_endpoint_never_runs(body: bytes, words: str) -> None:
    async def scenario(port: int, calls: Calls) -> None:
        [answer] = await exchange(port, post("/promote", body))
        assert (answer.status, answer.reason) == (400, "Bad Request")
        assert words in answer.doc["error"], answer.doc

    assert run(scenario).seen == []


def test_an_empty_body_means_an_empty_object() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        [answer] = await exchange(port, b"POST /promote HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.status == 200 and answer.doc["body"] == {}

    assert run(scenario).seen == [("promote", {})]


# -- refusals, each with its phrase and a JSON body ------------------------------------------------


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found"),
    (b"DELETE /status HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed"),
    (b"BLAH\r\n\r\n", 400, "Bad Request"),
    (b"POST /promote HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n", 400, "Bad Request"),
    (post("/promote", b"{}", "Origin: http://evil.example"), 403, "Forbidden"),
    (b"POST /promote HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES + 1),
     413, HTTPStatus(413).phrase),
    (b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2 * MAX_REQUEST_BYTES + b"\r\n\r\n",
     431, "Request Header Fields Too Large"),
])
def test_refusals(request_bytes: bytes, status: int, reason: str) -> None:
    async def scenario(port: int, calls: Calls) -> None:
        [answer] = await exchange(port, request_bytes)
        assert (answer.status, answer.reason) == (status, reason), answer
        assert answer.headers["content-type"] == "application/json"
        assert answer.doc["error"]
        if status == 405:
            assert answer.headers["allow"] == "GET"

    assert run(scenario).seen == []


def test_a_chunked_body_past_the_limit_is_refused() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        chunk = b"%x\r\n%s\r\n" % (MAX_REQUEST_BYTES, b" " * MAX_REQUEST_BYTES)
        head = b"POST /promote HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        [answer] = await exchange(port, head + chunk + chunk)
        assert answer.status == 413

    assert run(scenario).seen == []


def test_a_slow_client_gets_408() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        [answer] = await exchange(port, b"POST /promote HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{",
                                  pause_s=1.0)
        assert (answer.status, answer.reason) == (408, "Request Timeout"), answer

    assert run(scenario, request_timeout_s=0.3).seen == []


def test_the_token_guards_every_post_but_not_get() -> None:
    async def scenario(port: int, calls: Calls) -> None:
        [refused] = await exchange(port, post("/verify", b"{}"))
        assert (refused.status, refused.reason) == (401, "Unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
        [wrong] = await exchange(port, post("/verify", b"{}", "Authorization: Bearer nope"))
        assert wrong.status == 401
        [status] = await exchange(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.status == 200
        [right] = await exchange(port, post("/verify", b"{}", f"Authorization: Bearer {TOKEN.decode()}"))
        assert right.status == 202

    assert [name for name, _ in run(scenario, token=TOKEN).seen] == ["status", "verify"]


# -- endpoints that fail or take long -------------------------------------------------------------


def test_a_failing_endpoint_answers_500_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def boom(_: dict[str, Any]) -> Response:
        raise RuntimeError("a bug")

    async def main() -> None:
        server = AdminServer({("POST", "/boom"): Endpoint(boom),
                              ("GET", "/status"): Endpoint(lambda _: (200, "text/plain", b"ok"))})
        _, port = await server.start("127.0.0.1", 0)
        [answer] = await exchange(port, post("/boom", b""))
        assert (answer.status, answer.reason) == (500, "Internal Server Error")
        assert "see the site log" in answer.doc["error"]
        [after] = await exchange(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (after.status, after.body) == (200, b"ok")
        await server.aclose()

    asyncio.run(main())
    assert "a bug" in caplog.text


def test_a_slow_endpoint_answers_504_and_is_never_cancelled() -> None:
    finished: list[str] = []

    async def slow(_: dict[str, Any]) -> Response:
        await asyncio.sleep(0.5)
        finished.append("promote")
        return 200, "application/json", b"{}"

    async def main() -> None:
        server = AdminServer({("POST", "/promote"): Endpoint(slow)}, answer_timeout_s=0.1)
        _, port = await server.start("127.0.0.1", 0)
        [answer] = await exchange(port, post("/promote", b""))
        assert (answer.status, answer.reason) == (504, "Gateway Timeout")
        assert "it goes on" in answer.doc["error"]
        await asyncio.sleep(1.0)
        await server.aclose()

    asyncio.run(main())
    assert finished == ["promote"]


def test_close_lets_an_answer_in_progress_go_out() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def switching(_: dict[str, Any]) -> Response:
            started.set()
            await asyncio.sleep(0.3)
            return 200, "application/json", b'{"switched": true}'

        server = AdminServer({("POST", "/promote"): Endpoint(switching)})
        _, port = await server.start("127.0.0.1", 0)
        client = asyncio.ensure_future(exchange(port, post("/promote", b"")))
        await started.wait()
        await server.aclose()
        [answer] = await client
        assert answer.status == 200 and answer.doc == {"switched": True}

    asyncio.run(main())


# -- the audit log ------------------------------------------------------------------------------------


def test_every_state_changing_request_is_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int, calls: Calls) -> None:
        await exchange(port, post("/promote", b'{"force":true}'))
        await exchange(port, post("/promote", b"no-discard-local-please"))
        await exchange(port, post("/verify", b"{}"))
        await exchange(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")

    with caplog.at_level(logging.WARNING, logger="foresync.admin.http"):
        run(scenario, token=None)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3, lines  # GET /status is not audited
    assert lines[0].startswith("admin: POST /promote from 127.0.0.1:"), lines[0]
    assert lines[0].endswith('body {"force": true}: answered 200 OK'), lines[0]
    assert "body (refused, 23 bytes): answered 400 Bad Request: the body is not JSON" in lines[1], lines[1]
    assert lines[2].endswith("body {}: answered 202 Accepted"), lines[2]


def test_refusals_for_a_missing_token_are_audited_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int, calls: Calls) -> None:
        await exchange(port, post("/promote", b"{}", "Authorization: Bearer guessed-token"))

    with caplog.at_level(logging.WARNING, logger="foresync.admin.http"):
        run(scenario, token=TOKEN)
    assert "answered 401 Unauthorized" in caplog.text
    assert "guessed-token" not in caplog.text and TOKEN.decode() not in caplog.text
