"""The NBD server hands plain WRITEs parsed together to a target's ``write_many`` as one group
(issue 15), in request order, never across another request, within the in-flight limits; a
target without it gets one ``write`` per request. In-process on loopback, with a raw client that
sends every request in one ``send`` (one receive pass on the server)."""

from __future__ import annotations

import asyncio
import struct

from test_nbd_server_limits import REQUEST_MAGIC, HoldingTarget, eventually, negotiate, run

from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer, ServerLimits
from foresync.nbd.target import Done

WRITE, READ, FLUSH = 1, 0, 3
FUA = 1


class GroupingTarget(HoldingTarget):
    """Logs what reaches it: ("write", offset, fua), ("group", offsets), ("flush",), ("read", offset)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.log: list[tuple[object, ...]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.log.append(("read", offset))
        return bytes(length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self.log.append(("write", offset, fua))
        self._hold(offset, done)

    def write_many(self, items: list[tuple[int, bytes, Done]]) -> None:
        self.log.append(("group", [offset for offset, _, _ in items]))
        for offset, _, done in items:
            self._hold(offset, done)

    def flush(self, done: Done) -> None:
        self.log.append(("flush",))
        self._hold(0, done)


def request(command: int, cookie: int, offset: int, data: bytes = b"", flags: int = 0,
            length: int | None = None) -> bytes:
    size = len(data) if length is None else length
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, size) + data


async def send_all(target: GroupingTarget, limits: ServerLimits, stream: bytes, replies: int) -> None:
    server = NbdServer(target, ExportInfo("disk", target.size), limits)
    _, port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await negotiate(port)
        writer.write(stream)
        await writer.drain()
        answers = await asyncio.wait_for(reader.readexactly(16 * replies), 10)  # simple replies
        cookies = sorted(struct.unpack_from(">IIQ", answers, i * 16)[2] for i in range(replies))
        assert cookies == list(range(1, replies + 1))
        writer.close()
    finally:
        target.holding = False
        target.release_all()
        await server.aclose()


def test_plain_writes_parsed_together_reach_write_many_as_groups_in_order() -> None:
    data = b"\x05" * 512
    stream = b"".join([
        request(WRITE, 1, 0, data), request(WRITE, 2, 512, data), request(WRITE, 3, 1024, data),
        request(FLUSH, 4, 0),
        request(WRITE, 5, 1536, data),  # alone: a FUA write follows
        request(WRITE, 6, 2048, data, flags=FUA),
        request(WRITE, 7, 2560, data), request(WRITE, 8, 3072, data),
        request(READ, 9, 4096, length=0),
        request(WRITE, 10, 3584, data),
    ])
    target = GroupingTarget()

    async def body() -> None:
        await send_all(target, ServerLimits(), stream, 10)

    run(body)
    assert target.log == [
        ("group", [0, 512, 1024]), ("flush",), ("write", 1536, False), ("write", 2048, True),
        ("group", [2560, 3072]), ("read", 4096), ("write", 3584, False),
    ]


def test_a_group_never_passes_the_in_flight_limit() -> None:
    data = b"\x05" * 512
    stream = b"".join(request(WRITE, cookie, cookie * 512, data) for cookie in range(10))
    target = GroupingTarget()
    target.holding = True

    async def body() -> None:
        server = NbdServer(target, ExportInfo("disk", target.size), ServerLimits(max_in_flight=3))
        _, port = await server.start("127.0.0.1", 0)
        try:
            _, writer = await negotiate(port)
            writer.write(stream)
            await writer.drain()
            await eventually(lambda: len(target.held) == 3)
            await asyncio.sleep(0.2)
            assert len(target.held) == 3
            assert target.log == [("group", [0, 512, 1024])]
            target.release_all()  # each answer lets one more in (its done() drains the queue)
            await eventually(lambda: len(target.held) == 3)
            assert [offset for offset, _ in target.held] == [1536, 2048, 2560]
            writer.close()
        finally:
            target.holding = False
            target.release_all()
            await server.aclose()

    run(body)


def test_a_target_without_write_many_gets_one_write_per_request() -> None:
    data = b"\x05" * 512
    stream = b"".join(request(WRITE, cookie, cookie * 512, data) for cookie in range(4))
    target = HoldingTarget()
    target.holding = True

    async def body() -> None:
        server = NbdServer(target, ExportInfo("disk", target.size), ServerLimits())
        _, port = await server.start("127.0.0.1", 0)
        try:
            _, writer = await negotiate(port)
            writer.write(stream)
            await writer.drain()
            await eventually(lambda: len(target.held) == 4)
            assert [offset for offset, _ in target.held] == [0, 512, 1024, 1536]
            writer.close()
        finally:
            target.holding = False
            target.release_all()
            await server.aclose()

    run(body)
