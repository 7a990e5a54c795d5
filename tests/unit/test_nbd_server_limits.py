"""The asyncio NBD server's limits, in-process on loopback with a raw-socket client: a target
that holds completions shows exactly how many requests the server hands over at once."""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer, ServerLimits
from foresync.nbd.target import Done
from foresync.storage.backend import Extent
from foresync.testing.targets import RecordingTarget

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
MiB = 1 << 20


class HoldingTarget:
    size = 64 * MiB
    read_only = False

    def __init__(self) -> None:
        self.held: list[tuple[int, Done]] = []  # (offset, done) of each request being served
        self.holding = True

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return []

    def _hold(self, offset: int, done: Done) -> None:
        if self.holding:
            self.held.append((offset, done))
        else:
            done(0)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self._hold(offset, done)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        self._hold(offset, done)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self._hold(offset, done)

    def flush(self, done: Done) -> None:
        self._hold(0, done)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self._hold(offset, done)

    def release_all(self) -> None:
        held, self.held = self.held, []
        for _, done in held:
            done(0)


@asynccontextmanager
async def serving(limits: ServerLimits) -> AsyncIterator[tuple[HoldingTarget, int, NbdServer]]:
    target = HoldingTarget()
    server = NbdServer(target, ExportInfo("disk", target.size), limits)
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield target, port, server
    finally:
        target.holding = False  # everything queued behind the held requests completes at once
        target.release_all()
        await server.aclose()


async def negotiate(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readexactly(18)
    writer.write(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    writer.write(struct.pack(">QII", IHAVEOPT, 1, 4) + b"disk")  # EXPORT_NAME
    await reader.readexactly(10)  # size + transmission flags
    return reader, writer


def write_request(cookie: int, offset: int, data: bytes) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, cookie, offset, len(data)) + data


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_in_flight_bytes_bound_what_the_target_is_given(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        limits = ServerLimits(max_in_flight=100, max_in_flight_bytes=int(1.5 * MiB))
        async with serving(limits) as (target, port, _):
            reader, writer = await negotiate(port)
            for cookie in range(4):
                writer.write(write_request(cookie, cookie * MiB, b"\x01" * MiB))
            await writer.drain()
            await eventually(lambda: len(target.held) == 1)
            await asyncio.sleep(0.2)
            assert len(target.held) == 1  # the second would exceed 1.5 MiB in flight
            target.release_all()
            await eventually(lambda: len(target.held) == 1 and target.held[0][0] == 1 * MiB)  # cookie 1's write
            for _ in range(3):
                await eventually(lambda: bool(target.held))
                target.release_all()
            replies = await reader.readexactly(4 * 16)
            cookies = sorted(struct.unpack_from(">IIQ", replies, i * 16)[2] for i in range(4))
            assert cookies == [0, 1, 2, 3]
            writer.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert caplog.text.count("NBD limit max_in_flight reached") == 1


def test_in_flight_requests_bound_what_the_target_is_given() -> None:
    async def body() -> None:
        async with serving(ServerLimits(max_in_flight=3)) as (target, port, _):
            _, writer = await negotiate(port)
            for cookie in range(10):
                writer.write(write_request(cookie, 0, b"x" * 512))
            await writer.drain()
            await eventually(lambda: len(target.held) == 3)
            await asyncio.sleep(0.2)
            assert len(target.held) == 3
            writer.close()

    run(body)


def test_connections_over_the_limit_are_closed_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Every connection is busy (a request in flight): a newcomer is closed at once."""
    async def body() -> None:
        async with serving(ServerLimits(max_connections=2)) as (target, port, server):
            kept = [await negotiate(port) for _ in range(2)]
            for cookie, (_, writer) in enumerate(kept):
                writer.write(write_request(cookie, 0, b"x" * 512))
            await eventually(lambda: len(target.held) == 2)
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await reader.read(100) == b""  # closed without a greeting
                writer.close()
            assert server.statistics().connections == 2
            for _, writer in kept:
                writer.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert caplog.text.count("limit of 2 connections reached") == 1
    assert "closed the one from" not in caplog.text  # nobody was evicted


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True when the server has closed (EOF or reset) the connection within ``timeout_s``."""
    try:
        return await asyncio.wait_for(reader.read(100), timeout=timeout_s) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_real_client_gets_in_when_idle_sockets_fill_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    """64 sockets that never send a request must not lock nbdinfo out: the oldest gives way."""
    nbdinfo = shutil.which("nbdinfo")
    if nbdinfo is None:
        pytest.fail("needs nbdinfo (libnbd-bin): run make setup", pytrace=False)

    async def body() -> None:
        async with serving(ServerLimits()) as (_, port, server):
            idle = []
            for n in range(64):  # half only read the greeting, half negotiated an export
                if n % 2:
                    idle.append(await negotiate(port))
                else:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    await reader.readexactly(18)
                    idle.append((reader, writer))
            assert server.statistics().connections == 64
            for _ in range(3):
                proc = await asyncio.create_subprocess_exec(
                    nbdinfo, f"nbd://127.0.0.1:{port}/disk", stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
                assert proc.returncode == 0, err.decode()
                assert b"67108864" in out, out.decode()  # the export's size: it really got in
            assert await closed_by_server(idle[0][0])  # the oldest gave way
            assert not await closed_by_server(idle[-1][0], timeout_s=0.2)  # the newest did not
            for _, writer in idle:
                writer.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert "NBD: 64 connections (the limit): closed the one from" in caplog.text
    assert "still negotiating, no request in" in caplog.text


def test_at_the_limit_busy_and_recent_connections_stay_and_long_idle_ones_give_way() -> None:
    async def body() -> None:
        async with serving(ServerLimits(max_connections=2, idle_timeout_s=0.5)) as (target, port, _):
            target.holding = False
            idle_reader, idle_writer = await negotiate(port)
            idle_writer.write(write_request(1, 0, b"i" * 512))  # answered: then idle
            await idle_reader.readexactly(16)
            target.holding = True
            _, busy_writer = await negotiate(port)
            busy_writer.write(write_request(2, 0, b"b" * 512))  # held: in flight for ever
            await eventually(lambda: len(target.held) == 1)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_server(reader)  # nobody has been idle for 0.5 s yet
            writer.close()
            await asyncio.sleep(0.6)
            newcomer_reader, newcomer_writer = await asyncio.open_connection("127.0.0.1", port)
            assert len(await newcomer_reader.readexactly(18)) == 18  # greeted: it got in
            assert await closed_by_server(idle_reader)  # in place of the long-idle one
            assert len(target.held) == 1  # the busy one is still being served
            for w in (idle_writer, busy_writer, newcomer_writer):
                w.close()

    run(body)


def test_a_connection_that_sends_no_request_is_closed_after_the_idle_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(ServerLimits(idle_timeout_s=0.3)) as (target, port, _):
            target.holding = False
            silent_reader, silent_writer = await negotiate(port)
            used_reader, used_writer = await negotiate(port)
            used_writer.write(write_request(1, 0, b"u" * 512))
            await used_reader.readexactly(16)
            assert await closed_by_server(silent_reader)
            assert not await closed_by_server(used_reader, timeout_s=1.0)  # idle after use: kept
            for w in (silent_writer, used_writer):
                w.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert "negotiated but sent no request within 0.3 s; closed" in caplog.text


def test_a_slow_handshake_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(ServerLimits(handshake_timeout_s=0.3)) as (_, port, _server):
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readexactly(18)
                started = asyncio.get_running_loop().time()
                assert await asyncio.wait_for(reader.read(100), timeout=5) == b""
                assert asyncio.get_running_loop().time() - started < 3
                writer.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert caplog.text.count("NBD limit handshake_timeout reached") == 1


def test_an_oversized_option_is_refused_without_buffering(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serving(ServerLimits(max_option_bytes=1024)) as (_, port, _server):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readexactly(18)
            writer.write(struct.pack(">I", 3))
            writer.write(struct.pack(">QII", IHAVEOPT, 3, 4 * MiB) + bytes(4 * MiB))  # LIST + junk
            await writer.drain()
            header = await reader.readexactly(20)
            _, option, reply, length = struct.unpack(">QIII", header)
            assert (option, reply) == (3, (1 << 31) + 9)  # ERR_TOO_BIG
            await reader.readexactly(length)
            writer.close()

    with caplog.at_level(logging.WARNING):
        run(body)
    assert caplog.text.count("NBD limit max_option_size reached") == 1




def test_each_command_reaches_its_typed_target_method_with_its_flags_decoded() -> None:
    """The server switches on the command number once; targets see offsets and booleans."""
    FUA, NO_HOLE, FAST_ZERO = 1, 2, 16
    WRITE, FLUSH, TRIM, CACHE, ZEROES = 1, 3, 4, 5, 6

    def request(flags: int, command: int, cookie: int, offset: int, length: int) -> bytes:
        return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, length)

    async def body() -> None:
        target = RecordingTarget()
        server = NbdServer(target, ExportInfo("disk", target.size), ServerLimits())
        _, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await negotiate(port)
            writer.write(request(FUA, WRITE, 1, 4096, 3) + b"abc")
            writer.write(request(0, WRITE, 2, 0, 2) + b"de")
            writer.write(request(NO_HOLE | FAST_ZERO, ZEROES, 3, 8192, 512))
            writer.write(request(FUA, ZEROES, 4, 0, 1024))
            writer.write(request(FUA, TRIM, 5, 512, 512))
            writer.write(request(0, FLUSH, 6, 0, 0))
            writer.write(request(0, CACHE, 7, 0, 4096))
            replies = await reader.readexactly(7 * 16)
            errors = [struct.unpack_from(">IIQ", replies, i * 16)[1] for i in range(7)]
            assert errors == [0] * 7
            writer.close()
        finally:
            await server.aclose()
        calls = [(c[0], c[1], len(c[2]), c[3]) if c[0] == "write" else c  # type: ignore[arg-type]
                 for c in target.calls]
        assert calls == [
            ("write", 4096, 3, True), ("write", 0, 2, False),
            ("zero", 8192, 512, False, False, True), ("zero", 0, 1024, True, True, False),
            ("trim", 512, 512, True), ("flush",), ("cache", 0, 4096),
        ]

    run(body)
