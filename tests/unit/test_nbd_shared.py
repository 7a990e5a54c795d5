"""A shared NBD server (issue 16): exports published by name while their volume is primary, listed
by OPT_LIST, refused with ERR_UNKNOWN otherwise, and withdrawn without touching the others;
windows of one backend (nbd/exports.py) shift requests by their offset."""

from __future__ import annotations

import asyncio
import struct

from foresync.nbd.exports import ExportSpec, window
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer
from foresync.testing.targets import RecordingTarget

IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_LIST, OPT_GO = 3, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR_UNKNOWN = (1 << 31) + 6
REQUEST_MAGIC = 0x25609513
MiB = 1 << 20


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readexactly(18)
    writer.write(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    return reader, writer


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    magic, _, kind, length = struct.unpack(">QIII", await reader.readexactly(20))
    assert magic == REPLY_MAGIC
    return kind, await reader.readexactly(length)


async def listing(port: int) -> list[str]:
    reader, writer = await connect(port)
    writer.write(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
    names = []
    while True:
        kind, data = await reply(reader)
        if kind == REP_ACK:
            break
        assert kind == REP_SERVER
        (length,) = struct.unpack(">I", data[:4])
        names.append(data[4:4 + length].decode())
    writer.close()
    return names


async def go(port: int, name: str) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """OPT_GO to ``name``: REP_ACK (then transmission) or the error reply's type."""
    reader, writer = await connect(port)
    raw = name.encode()
    writer.write(struct.pack(">QII", IHAVEOPT, OPT_GO, 6 + len(raw)) + struct.pack(">I", len(raw))
                 + raw + struct.pack(">H", 0))
    while True:
        kind, _ = await reply(reader)
        if kind != REP_INFO:
            return kind, reader, writer


def write_request(offset: int, data: bytes) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, 7, offset, len(data)) + data


def test_exports_come_and_go_by_name_and_windows_shift_offsets() -> None:
    async def main() -> None:
        server = NbdServer.shared()
        _, port = await server.start("127.0.0.1", 0)
        backend = RecordingTarget(4 * MiB)
        first = server.publish([(ExportInfo("a", 2 * MiB), window(backend, ExportSpec("a", 0, 2 * MiB))),
                                (ExportInfo("b", 2 * MiB), window(backend, ExportSpec("b", 2 * MiB, 2 * MiB)))])
        other = RecordingTarget(MiB)
        second = server.publish([(ExportInfo("c", MiB), other)])
        assert sorted(await listing(port)) == ["a", "b", "c"]
        kind, _, writer = await go(port, "nope")
        assert kind == ERR_UNKNOWN
        writer.close()
        kind, reader_b, writer_b = await go(port, "b")
        assert kind == REP_ACK
        writer_b.write(write_request(4096, b"x" * 512))
        await reader_b.readexactly(16)  # the simple reply
        assert backend.calls == [("write", 2 * MiB + 4096, b"x" * 512, False)]
        kind, reader_c, writer_c = await go(port, "c")
        assert kind == REP_ACK
        await first.aclose()  # a and b's volume stops being primary here
        assert await reader_b.read() == b""  # its connection is closed...
        assert sorted(await listing(port)) == ["c"]
        kind, _, writer = await go(port, "a")
        assert kind == ERR_UNKNOWN  # ...and the name refused
        writer.close()
        writer_c.write(write_request(0, b"y" * 512))  # c's connection is untouched
        await reader_c.readexactly(16)
        assert other.calls == [("write", 0, b"y" * 512, False)]
        await second.aclose()
        await server.aclose()

    asyncio.run(main())
