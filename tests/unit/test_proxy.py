"""Unit tests for ``foresync.testing.proxy``: the delaying TCP proxy the WAN tests stand on.

Every test runs a real proxy on loopback in front of a small echo (or sink) server. Timing
assertions are lower bounds only (a loaded machine makes things slower, never faster), except
for one generous bound that tells a pipelined proxy from one that sleeps per chunk.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from foresync.errors import LocalProtocolError
from foresync.testing.proxy import DelayProxy

DELAY_S = 0.020
CLOCK_SLACK_S = 0.001  # time.monotonic() read by two different code paths
TIMEOUT_S = 10.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        name = server.sockets[0].getsockname()
        yield name[0], name[1]
    finally:
        server.close()


async def round_trip_s(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.monotonic()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    return time.monotonic() - started


async def closed_by_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """True if the connection is gone: EOF or reset, as a client of a cut link sees it."""
    try:
        writer.write(b"x")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(1), 2.0)
    except (ConnectionError, TimeoutError):
        return True
    return data == b""


def test_bytes_arrive_intact_and_in_order() -> None:
    async def body() -> None:
        async with echo_server() as target, DelayProxy(target, delay_s=0.005) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            payload = os.urandom(4 * 1024 * 1024)
            sizes = [1, 7, 4096, 65536, 1 << 20]
            offset, i = 0, 0
            while offset < len(payload):
                step = sizes[i % len(sizes)]
                writer.write(payload[offset:offset + step])
                offset += step
                i += 1
            writer.write_eof()
            echoed = await reader.read(-1)  # until EOF: half-close is forwarded both ways
            writer.close()
            assert echoed == payload
            stats = proxy.statistics()
            assert stats.bytes_to_target == len(payload)
            assert stats.bytes_to_client == len(payload)

    run(body)


def test_round_trip_is_at_least_twice_the_delay() -> None:
    async def body() -> None:
        async with echo_server() as target, DelayProxy(target, delay_s=DELAY_S) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            rtts = [await round_trip_s(reader, writer) for _ in range(5)]
            writer.close()
            assert min(rtts) >= 2 * DELAY_S - CLOCK_SLACK_S, rtts

    run(body)


def test_set_delay_applies_to_new_chunks() -> None:
    async def body() -> None:
        async with echo_server() as target, DelayProxy(target, delay_s=0.0) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            await round_trip_s(reader, writer)
            proxy.set_delay(2 * DELAY_S)
            assert await round_trip_s(reader, writer) >= 4 * DELAY_S - CLOCK_SLACK_S
            writer.close()

    run(body)


def test_chunks_are_pipelined_not_delayed_one_after_another() -> None:
    # 50 writes, each answered before the next is sent by nobody: a proxy that slept per chunk
    # would need 50 x 2 x 20 ms = 2 s; a pipelined one needs about one round trip.
    async def body() -> None:
        async with echo_server() as target, DelayProxy(target, delay_s=DELAY_S) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            started = time.monotonic()
            for i in range(50):
                writer.write(i.to_bytes(4, "big"))
                await writer.drain()
                await asyncio.sleep(0.001)  # separate chunks on the wire
            received = await reader.readexactly(200)
            elapsed_s = time.monotonic() - started
            writer.close()
            assert received == b"".join(i.to_bytes(4, "big") for i in range(50))
            assert 2 * DELAY_S - CLOCK_SLACK_S <= elapsed_s < 1.0

    run(body)


def test_rate_limits_the_bandwidth_of_each_direction() -> None:
    """4 MB at 10 MB/s takes at least 0.4 s to leave, in each direction (the echo's answer is
    limited again on its way back, but overlaps); the bytes arrive intact. Without a rate the
    same transfer is far faster (loopback), which shows the limit is what slows it."""
    payload = os.urandom(4 * 1000 * 1000)

    async def transfer(rate: float) -> float:
        async with echo_server() as target, DelayProxy(target, delay_s=0.001,
                                                       rate_bytes_per_s=rate) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            started = time.monotonic()
            writer.write(payload)
            received = await reader.readexactly(len(payload))
            elapsed_s = time.monotonic() - started
            writer.close()
            assert received == payload
            assert proxy.statistics().rate_bytes_per_s == rate
            return elapsed_s

    async def body() -> None:
        limited_s = await transfer(10e6)
        assert limited_s >= len(payload) / 10e6 - CLOCK_SLACK_S
        assert await transfer(0) < limited_s

    run(body)


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="rate_bytes_per_s"):
        DelayProxy(("127.0.0.1", 1), rate_bytes_per_s=-1)


def test_cut_closes_connections_and_refuses_new_ones_until_restore() -> None:
    async def body() -> None:
        async with echo_server() as target, DelayProxy(target, delay_s=0.002) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            await round_trip_s(reader, writer)
            await proxy.cut()
            assert await closed_by_peer(reader, writer)
            writer.close()
            assert proxy.statistics().connections_open == 0

            reader, writer = await asyncio.open_connection(*proxy.listen)
            assert await closed_by_peer(reader, writer)
            writer.close()
            assert proxy.statistics().connections_refused >= 1

            await proxy.restore()
            reader, writer = await asyncio.open_connection(*proxy.listen)
            assert await round_trip_s(reader, writer) >= 2 * 0.002 - CLOCK_SLACK_S
            writer.close()
            assert not proxy.statistics().cut

    run(body)


def test_unreachable_target_drops_the_client() -> None:
    async def body() -> None:
        async with echo_server() as target:
            pass  # closed: nothing listens on its port any more
        async with DelayProxy(target) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listen)
            assert await closed_by_peer(reader, writer)
            writer.close()
            assert proxy.statistics().connections_refused == 1

    run(body)


def test_buffering_is_bounded_when_the_target_does_not_read() -> None:
    high_water = 256 * 1024
    chunk_max = 256 * 1024  # the most one read hands us (uvloop); asyncio reads 64 KiB

    async def body() -> None:
        accepted = asyncio.Event()
        held: list[asyncio.StreamWriter] = []

        async def never_read(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            accepted.set()

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        async with DelayProxy(target, delay_s=0.001, high_water_bytes=high_water) as proxy:
            _, writer = await asyncio.open_connection(*proxy.listen)
            await accepted.wait()
            writer.write(b"\0" * (64 * 1024 * 1024))
            with pytest.raises(TimeoutError):  # flow control reached the client
                await asyncio.wait_for(writer.drain(), 1.0)
            stats = proxy.statistics()
            assert stats.read_pauses_total >= 1
            assert stats.held_bytes_max <= high_water + chunk_max
            writer.transport.abort()
        for w in held:
            w.close()
        server.close()

    run(body)


def test_cli_cuts_on_sigusr1_and_restores_on_sigusr2() -> None:
    async def body() -> None:
        async with echo_server() as target:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "foresync.testing.proxy", "--listen", "127.0.0.1:0",
                "--target", f"{target[0]}:{target[1]}", "--delay-ms", "5",
                stderr=subprocess.PIPE)
            try:
                assert proc.stderr is not None
                line = (await proc.stderr.readline()).decode()
                assert line.startswith("delay proxy listening on 127.0.0.1:"), line
                port = int(line.split()[4].rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await round_trip_s(reader, writer) >= 0.010 - CLOCK_SLACK_S

                proc.send_signal(signal.SIGUSR1)
                assert await closed_by_peer(reader, writer)
                writer.close()

                proc.send_signal(signal.SIGUSR2)
                await asyncio.sleep(0.2)  # the handler runs in the proxy's loop
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await round_trip_s(reader, writer) >= 0.010 - CLOCK_SLACK_S
                writer.close()
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 5.0) == 0

    run(body)
