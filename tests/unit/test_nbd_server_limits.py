"""The asyncio NBD server's limits, in-process on loopback with a raw-socket client: a target
that holds completions shows exactly how many requests the server hands over at once."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from foresync.nbd.connection import Request
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer, ServerLimits
from foresync.nbd.target import Done
from foresync.storage.backend import Extent

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
MiB = 1 << 20


class HoldingTarget:
    size = 64 * MiB
    read_only = False

    def __init__(self) -> None:
        self.held: list[tuple[Request, Done]] = []
        self.holding = True

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return []

    def submit(self, request: Request, done: Done) -> None:
        if self.holding:
            self.held.append((request, done))
        else:
            done(0)

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
            await eventually(lambda: len(target.held) == 1 and target.held[0][0].cookie == 1)
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
    async def body() -> None:
        async with serving(ServerLimits(max_connections=2)) as (_, port, server):
            kept = [await negotiate(port) for _ in range(2)]
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

