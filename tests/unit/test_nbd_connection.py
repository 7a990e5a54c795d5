"""Unit tests for ``foresync.nbd.connection``: the NBD transmission phase as a pure state machine.

Requests are built with ``struct`` from proto.md ("Transmission"), replies are decoded field by
field, and every request stream is fed whole, one byte at a time, split at every byte, and followed
by the start of the next request.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import LocalProtocolError
from foresync.nbd.connection import (
    GATHER_MIN_BYTES,
    MAX_EXTENTS_PER_REPLY,
    ConnectionFailed,
    ConnectionState,
    Disconnect,
    Event,
    Request,
    Transmission,
)
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.wire import Command, CommandFlag, Errno

# -- a tiny client: request encoder and reply decoder, written from proto.md ---------------------

REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
CHUNK_MAGIC = 0x668E33EF
DONE = 1
NONE, OFFSET_DATA, BLOCK_STATUS, ERROR = 0, 1, 5, (1 << 15) + 1
MiB = 1 << 20
SIZE = MiB
COOKIE = 0x1122334455667788
READ, WRITE, DISC, FLUSH = Command.READ, Command.WRITE, Command.DISC, Command.FLUSH
TRIM, CACHE, ZEROES, STATUS = (
    Command.TRIM,
    Command.CACHE,
    Command.WRITE_ZEROES,
    Command.BLOCK_STATUS,
)


def request(
    command: int,
    offset: int = 0,
    length: int | None = None,
    *,
    data: bytes = b"",
    flags: int = 0,
    cookie: int = COOKIE,
    magic: int = REQUEST_MAGIC,
) -> bytes:
    length = len(data) if length is None else length
    return struct.pack(">IHHQQI", magic, flags, command, cookie, offset, length) + data


@dataclass(frozen=True)
class Simple:
    errno: int
    cookie: int = COOKIE


@dataclass(frozen=True)
class Chunk:
    flags: int
    type: int
    payload: bytes
    cookie: int = COOKIE


def decode(data: bytes) -> list[Simple | Chunk]:
    """Split output into replies. Replies the core builds carry no READ data, so this is exact."""
    out: list[Simple | Chunk] = []
    pos = 0
    while pos < len(data):
        (magic,) = struct.unpack_from(">I", data, pos)
        if magic == SIMPLE_MAGIC:
            _, errno, cookie = struct.unpack_from(">IIQ", data, pos)
            out.append(Simple(errno, cookie))
            pos += 16
            continue
        assert magic == CHUNK_MAGIC, f"bad reply magic 0x{magic:08x} at byte {pos}"
        _, flags, chunk_type, cookie, length = struct.unpack_from(">IHHQI", data, pos)
        pos += 20
        assert pos + length <= len(data), "chunk payload torn"
        out.append(Chunk(flags, chunk_type, data[pos : pos + length], cookie))
        pos += length
    return out


def error_chunk(errno: int, cookie: int = COOKIE) -> Chunk:
    """A structured ERROR chunk that ends the reply, with an empty message."""
    return Chunk(DONE, ERROR, struct.pack(">IH", errno, 0), cookie)


def block_status(context_id: int, *extents: tuple[int, int], flags: int = DONE) -> Chunk:
    body = struct.pack(">I", context_id) + b"".join(struct.pack(">II", *e) for e in extents)
    return Chunk(flags, BLOCK_STATUS, body)


# -- driving the machine ------------------------------------------------------------------------

DISK = ExportInfo("disk", SIZE)
Feed = Callable[[Transmission, bytes], tuple[list[Event], bytes]]


def feed_whole(tx: Transmission, data: bytes) -> tuple[list[Event], bytes]:
    return tx.receive_data(data)


def feed_bytewise(tx: Transmission, data: bytes) -> tuple[list[Event], bytes]:
    events: list[Event] = []
    replies = b""
    for i in range(len(data)):
        more, out = tx.receive_data(data[i : i + 1])
        events += more
        replies += out
    return events, replies


FEEDS = pytest.mark.parametrize("feed", [feed_whole, feed_bytewise], ids=["whole", "bytewise"])


def make(
    export: ExportInfo = DISK,
    structured: bool = False,
    meta: tuple[int, ...] = (),
    max_payload: int | None = None,
) -> Transmission:
    if max_payload is None:
        return Transmission(export, structured, meta)
    return Transmission(export, structured, meta, max_payload)


def rejected(tx: Transmission, data: bytes, feed: Feed = feed_whole) -> list[Simple | Chunk]:
    """Feed a request the core must answer itself; return its decoded replies."""
    events, replies = feed(tx, data)
    assert events == []
    assert tx.in_flight == 0
    assert tx.state is ConnectionState.OPEN
    return decode(replies)


# -- parsing valid requests --------------------------------------------------------------------

VALID = {
    "read": (READ, 0, 4096, b"", 0),
    "read_df": (READ, SIZE - 512, 512, b"", CommandFlag.DF),
    "write": (WRITE, 512, 5, b"hello", 0),
    "write_fua_at_end": (WRITE, SIZE - 3, 3, b"end", CommandFlag.FUA),
    "flush": (FLUSH, 0, 0, b"", 0),
    "trim": (TRIM, 4096, 8192, b"", 0),
    "cache": (CACHE, 0, SIZE, b"", 0),
    "zeroes": (ZEROES, 0, 65536, b"", CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO),
    "block_status_req_one": (STATUS, 0, SIZE, b"", CommandFlag.REQ_ONE),
}


@FEEDS
@pytest.mark.parametrize(
    ("command", "offset", "length", "data", "flags"), VALID.values(), ids=VALID.keys()
)
def test_valid_requests_become_events(
    feed: Feed, command: int, offset: int, length: int, data: bytes, flags: int
) -> None:
    tx = make(structured=True, meta=(1,))
    events, replies = feed(tx, request(command, offset, length, data=data, flags=flags))
    assert events == [Request(command, flags, COOKIE, offset, length, data)]
    assert replies == b""
    assert tx.in_flight == 1
    assert tx.state is ConnectionState.OPEN


def test_a_partial_request_waits_for_its_last_byte() -> None:
    tx = make()
    first, second = request(READ, 0, 512, cookie=1), request(WRITE, 0, data=b"abcd", cookie=2)
    assert tx.receive_data(first + second[:30]) == ([Request(READ, 0, 1, 0, 512)], b"")
    assert tx.receive_data(second[30:-1]) == ([], b"")
    assert tx.receive_data(second[-1:]) == ([Request(WRITE, 0, 2, 0, 4, b"abcd")], b"")
    assert tx.in_flight == 2


def mixed_stream() -> tuple[bytes, list[Event], list[Simple | Chunk]]:
    """Pipelined requests, some refused by the core, and what they must produce."""
    stream = b"".join(
        [
            request(WRITE, 0, data=b"abcdefgh", cookie=1),
            request(READ, SIZE, 1, cookie=2),  # out of range
            request(WRITE, SIZE - 2, data=b"xyz", cookie=3),  # out of range, payload consumed
            request(FLUSH, cookie=4, flags=CommandFlag.FUA),
            request(9, cookie=5),  # unknown command
            request(TRIM, 0, 512, cookie=6),
            request(READ, 8, 8, cookie=7),
        ]
    )
    events: list[Event] = [
        Request(WRITE, 0, 1, 0, 8, b"abcdefgh"),
        Request(FLUSH, CommandFlag.FUA, 4, 0, 0),
        Request(TRIM, 0, 6, 0, 512),
        Request(READ, 0, 7, 8, 8),
    ]
    replies: list[Simple | Chunk] = [
        Simple(Errno.EINVAL, 2),
        Simple(Errno.ENOSPC, 3),
        Simple(Errno.EINVAL, 5),
    ]
    return stream, events, replies


@FEEDS
def test_pipelined_requests(feed: Feed) -> None:
    stream, expected_events, expected_replies = mixed_stream()
    tx = make()
    events, replies = feed(tx, stream)
    assert events == expected_events
    assert decode(replies) == expected_replies
    assert tx.in_flight == 4


def test_pipelined_requests_split_at_every_byte_parse_identically() -> None:
    stream, expected_events, expected_replies = mixed_stream()
    for cut in range(len(stream) + 1):
        tx = make()
        events_a, replies_a = tx.receive_data(stream[:cut])
        events_b, replies_b = tx.receive_data(stream[cut:])
        assert events_a + events_b == expected_events, f"split at byte {cut}"
        assert decode(replies_a + replies_b) == expected_replies, f"split at byte {cut}"


def large_stream() -> tuple[bytes, list[Event], list[Simple | Chunk]]:
    """Large WRITEs (gathered as they arrive, not buffered) between small requests, a refused
    large WRITE whose payload is discarded, and a large WRITE at the very end."""
    big = bytes((i * 7 + 3) % 256 for i in range(GATHER_MIN_BYTES + 4099))
    exact = bytes(reversed(big[:GATHER_MIN_BYTES]))
    stream = b"".join([
        request(WRITE, 0, data=big, cookie=1),
        request(READ, 8, 8, cookie=2),
        request(WRITE, SIZE - 100, data=exact, cookie=3),  # out of range: ENOSPC, discarded
        request(WRITE, 4096, data=exact, cookie=4, flags=CommandFlag.FUA),
        request(FLUSH, cookie=5),
        request(WRITE, SIZE - len(big), data=big, cookie=6),
    ])
    events: list[Event] = [
        Request(WRITE, 0, 1, 0, len(big), big),
        Request(READ, 0, 2, 8, 8),
        Request(WRITE, CommandFlag.FUA, 4, 4096, len(exact), exact),
        Request(FLUSH, 0, 5, 0, 0),
        Request(WRITE, 0, 6, SIZE - len(big), len(big), big),
    ]
    return stream, events, [Simple(Errno.ENOSPC, 3)]


@pytest.mark.parametrize("piece", [1, 7, 4096, 65536, 100_000, 1 << 30])
def test_large_writes_parse_identically_in_any_pieces(piece: int) -> None:
    stream, expected_events, expected_replies = large_stream()
    tx = make()
    events: list[Event] = []
    replies = b""
    for start in range(0, len(stream), piece):
        more, out = tx.receive_data(stream[start : start + piece])
        events += more
        replies += out
    assert events == expected_events
    assert decode(replies) == expected_replies
    assert tx.in_flight == len(expected_events)


@given(cuts=st.lists(st.integers(0, 3 * GATHER_MIN_BYTES), max_size=12))
@settings(max_examples=60, deadline=None)
def test_large_writes_split_anywhere_parse_identically(cuts: list[int]) -> None:
    stream, expected_events, expected_replies = large_stream()
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    tx = make()
    events: list[Event] = []
    replies = b""
    for start, stop in itertools.pairwise(points):
        more, out = tx.receive_data(bytearray(stream[start:stop]))  # a buffer the caller reuses
        events += more
        replies += out
    assert events == expected_events
    assert decode(replies) == expected_replies


def _peak_while_writing(payload: bytes, piece: int) -> int:
    """Peak traced memory while one WRITE of ``payload`` is fed in ``piece``-byte pieces (the
    request it yields is checked here)."""
    stream = request(WRITE, 0, data=payload)
    pieces = [stream[i : i + piece] for i in range(0, len(stream), piece)]
    tx = make(export=ExportInfo("disk", 64 * MiB, read_only=False), max_payload=8 * MiB)
    tracemalloc.start()
    try:
        events: list[Event] = []
        for chunk in pieces:
            events += tx.receive_data(chunk)[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [Request(WRITE, 0, COOKIE, 0, len(payload), payload)]
    return peak


def test_a_gathered_write_is_not_copied_into_the_parse_buffer() -> None:
    """Peak memory while a 4 MiB WRITE streams in 64 KiB pieces stays near one copy of it."""
    peak = _peak_while_writing(bytes(4 * MiB), 65536)
    assert peak < 4 * MiB + 512 * 1024, peak  # the joined payload, and no second copy


@pytest.mark.parametrize("piece", [3, 16, 1000])
def test_a_write_in_tiny_pieces_costs_bytes_not_an_object_per_piece(piece: int) -> None:
    """Regression: each piece was kept as its own bytes object, so a 1 MiB WRITE sent 2 bytes at
    a time held 22 MiB. Now peak memory stays near one copy of the payload, plus the join."""
    payload = bytes(range(256)) * 512  # 128 KiB
    peak = _peak_while_writing(payload, piece)
    assert peak < 2.3 * len(payload), peak


# -- requests the core refuses and answers itself ---------------------------------------------------


@FEEDS
def test_out_of_range_write_is_enospc_and_its_payload_consumed(feed: Feed) -> None:
    tx = make()
    stream = request(WRITE, SIZE - 4, data=b"12345678") + request(READ, 0, 16, cookie=2)
    events, replies = feed(tx, stream)
    assert decode(replies) == [Simple(Errno.ENOSPC)]
    assert events == [Request(READ, 0, 2, 0, 16)]


def test_refused_write_is_answered_only_after_its_payload() -> None:
    # libnbd drops the connection if a reply arrives while it is still sending the request.
    tx = make()
    assert tx.receive_data(request(WRITE, SIZE, 4096)) == ([], b"")
    for _ in range(3):
        assert tx.receive_data(bytes(1024)) == ([], b"")
    events, replies = tx.receive_data(bytes(1024))
    assert (events, decode(replies)) == ([], [Simple(Errno.ENOSPC)])
    assert tx.receive_data(request(FLUSH, cookie=9)) == ([Request(FLUSH, 0, 9, 0, 0)], b"")


def test_refused_write_reply_comes_with_the_rest_of_a_batch() -> None:
    tx = make()
    tx.receive_data(request(WRITE, SIZE, 16))
    events, replies = tx.receive_data(bytes(16) + request(FLUSH, cookie=9))
    assert events == [Request(FLUSH, 0, 9, 0, 0)]
    assert decode(replies) == [Simple(Errno.ENOSPC)]


@pytest.mark.parametrize(
    ("offset", "length", "errno"),
    [
        (SIZE - 8, 8, 0),
        (SIZE, 0, 0),
        (SIZE - 7, 8, Errno.ENOSPC),
        (SIZE + 1, 0, Errno.ENOSPC),
        ((1 << 64) - 1, 1, Errno.ENOSPC),
    ],
)
def test_write_range_boundaries(offset: int, length: int, errno: int) -> None:
    tx = make()
    events, replies = tx.receive_data(request(WRITE, offset, data=bytes(length)))
    if errno:
        assert (events, decode(replies)) == ([], [Simple(errno)])
    else:
        assert (events, replies) == (
            [Request(WRITE, 0, COOKIE, offset, length, bytes(length))],
            b"",
        )


OUT_OF_RANGE = {
    "read": (READ, Errno.EINVAL),
    "trim": (TRIM, Errno.EINVAL),
    "cache": (CACHE, Errno.EINVAL),
    "block_status": (STATUS, Errno.EINVAL),
    "write_zeroes": (ZEROES, Errno.ENOSPC),
}


@FEEDS
@pytest.mark.parametrize(("command", "errno"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
@pytest.mark.parametrize(
    ("offset", "length"), [(SIZE - 511, 512), (SIZE + 1, 0), ((1 << 64) - 1, 2)]
)
def test_out_of_range_requests_are_refused(
    feed: Feed, command: int, errno: int, offset: int, length: int
) -> None:
    if command == STATUS and length == 0:
        length = 1  # a zero-length BLOCK_STATUS is refused for its length; see below
    tx = make(meta=(1,))
    assert rejected(tx, request(command, offset, length), feed) == [Simple(errno)]


@pytest.mark.parametrize("command", [READ, STATUS])
def test_refused_read_and_block_status_get_a_structured_error(command: int) -> None:
    # proto.md: with structured replies a READ never gets a simple reply, not even an early EINVAL.
    tx = make(structured=True, meta=(1,))
    assert rejected(tx, request(command, SIZE, 1)) == [error_chunk(Errno.EINVAL)]


@FEEDS
def test_read_only_export_refuses_every_write(feed: Feed) -> None:
    tx = make(ExportInfo("ro", SIZE, read_only=True))
    stream = b"".join(
        [
            request(WRITE, 0, data=b"data", cookie=1),
            request(TRIM, 0, 512, cookie=2),
            request(ZEROES, 0, 512, cookie=3),
            request(WRITE, SIZE, data=b"far", cookie=4),
            request(READ, 0, 512, cookie=5),
        ]
    )
    events, replies = feed(tx, stream)
    assert decode(replies) == [Simple(Errno.EPERM, c) for c in (1, 2, 3, 4)]
    assert events == [Request(READ, 0, 5, 0, 512)]


@pytest.mark.parametrize(("command", "capability"), [(TRIM, "can_trim"), (ZEROES, "can_zero")])
def test_commands_the_export_cannot_do_are_einval(command: int, capability: str) -> None:
    tx = make(ExportInfo("x", SIZE, **{capability: False}))
    assert rejected(tx, request(command, 0, 512)) == [Simple(Errno.EINVAL)]


@FEEDS
@pytest.mark.parametrize("command", [READ, WRITE, FLUSH, TRIM, CACHE, ZEROES])
@pytest.mark.parametrize("offset", [0, SIZE])
def test_zero_length_requests_reach_the_adapter(feed: Feed, command: int, offset: int) -> None:
    tx = make()
    events, replies = feed(tx, request(command, offset, 0) + request(READ, 0, 1, cookie=2))
    assert events == [Request(command, 0, COOKIE, offset, 0), Request(READ, 0, 2, 0, 1)]
    assert replies == b""
    assert tx.state is ConnectionState.OPEN


def test_zero_length_block_status_is_answered_einval() -> None:
    tx = make(structured=True, meta=(1,))
    assert rejected(tx, request(STATUS, 0, 0)) == [error_chunk(Errno.EINVAL)]


@pytest.mark.parametrize(
    ("command", "errno"),
    [
        (READ, Errno.EINVAL),
        (TRIM, Errno.EINVAL),
        (CACHE, Errno.EINVAL),
        (ZEROES, Errno.ENOSPC),
        (STATUS, Errno.EINVAL),
    ],
)
def test_lengths_are_unsigned(command: int, errno: int) -> None:
    # Read as a signed -1, 0xFFFFFFFF would put this request in range.
    big = ExportInfo("big", 1 << 40)
    tx = make(big, meta=(1,))
    assert rejected(tx, request(command, 1 << 40, 0xFFFFFFFF)) == [Simple(errno)]
    tx = make(big, meta=(1,))
    events, replies = tx.receive_data(request(command, 0, 0xFFFFFFFF))
    if command == READ:  # in range, but a 4 GiB read is over the payload limit
        assert (events, decode(replies)) == ([], [Simple(Errno.EINVAL)])
    else:
        assert (events, replies) == ([Request(command, 0, COOKIE, 0, 0xFFFFFFFF)], b"")


def test_read_of_4gib_is_einval_not_a_crash() -> None:
    tx = make()
    assert rejected(tx, request(READ, 0, 0xFFFFFFFF)) == [Simple(Errno.EINVAL)]


def test_read_payload_limit() -> None:
    tx = make(ExportInfo("big", 64 * MiB))
    events, replies = tx.receive_data(
        request(READ, 0, 32 * MiB, cookie=1) + request(READ, 0, 32 * MiB + 1, cookie=2)
    )
    assert events == [Request(READ, 0, 1, 0, 32 * MiB)]
    assert decode(replies) == [Simple(Errno.EINVAL, 2)]


def test_oversized_write_is_einval_and_discarded_as_it_streams() -> None:
    tx = make(ExportInfo("big", 64 * MiB))
    length = 32 * MiB + 1
    assert tx.receive_data(request(WRITE, 0, length)) == ([], b"")
    chunk = bytes(MiB)
    tracemalloc.start()
    try:
        for _ in range(32):
            assert tx.receive_data(chunk) == ([], b"")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"discarding 32 MiB peaked at {peak} bytes"
    events, replies = tx.receive_data(b"\0" + request(READ, 0, 1, cookie=2))
    assert events == [Request(READ, 0, 2, 0, 1)]
    assert decode(replies) == [Simple(Errno.EINVAL)]


@FEEDS
def test_write_over_a_small_payload_limit_is_discarded(feed: Feed) -> None:
    tx = make(max_payload=16)
    stream = request(WRITE, 0, data=bytes(range(17))) + request(WRITE, 0, data=bytes(16), cookie=2)
    events, replies = feed(tx, stream)
    assert decode(replies) == [Simple(Errno.EINVAL)]
    assert events == [Request(WRITE, 0, 2, 0, 16, bytes(16))]


@FEEDS
@pytest.mark.parametrize("command", [8, 9, 0x7FFF, 0xFFFF])
def test_unknown_command_is_einval_and_the_connection_continues(feed: Feed, command: int) -> None:
    tx = make(structured=True)
    events, replies = feed(tx, request(command, 0, 0) + request(FLUSH, cookie=2))
    assert decode(replies) == [Simple(Errno.EINVAL)]
    assert events == [Request(FLUSH, 0, 2, 0, 0)]


@FEEDS
@pytest.mark.parametrize("flag", [1 << 5, 1 << 10, 1 << 15])
def test_unknown_flag_bits_are_einval(feed: Feed, flag: int) -> None:
    tx = make(structured=True)
    stream = b"".join(
        [
            request(READ, 0, 512, flags=flag | CommandFlag.DF, cookie=1),
            request(WRITE, 0, data=b"payload", flags=flag, cookie=2),
            request(FLUSH, flags=flag, cookie=3),
            request(FLUSH, cookie=4),
        ]
    )
    events, replies = feed(tx, stream)
    assert decode(replies) == [
        error_chunk(Errno.EINVAL, 1),
        Simple(Errno.EINVAL, 2),
        Simple(Errno.EINVAL, 3),
    ]
    assert events == [Request(FLUSH, 0, 4, 0, 0)]


@FEEDS
def test_block_status_without_a_meta_context_is_einval(feed: Feed) -> None:
    tx = make(structured=True)
    assert rejected(tx, request(STATUS, 0, 4096), feed) == [error_chunk(Errno.EINVAL)]
    tx = make(structured=False)
    assert rejected(tx, request(STATUS, 0, 4096), feed) == [Simple(Errno.EINVAL)]


# -- the two ends of a connection: bad magic and DISC -----------------------------------------


@FEEDS
def test_bad_magic_fails_the_connection(feed: Feed) -> None:
    tx = make()
    events, replies = feed(tx, request(READ, 0, 1, magic=SIMPLE_MAGIC) + request(READ, 0, 1))
    assert len(events) == 1
    assert isinstance(events[0], ConnectionFailed)
    assert "0x67446698" in events[0].reason
    assert replies == b""
    assert tx.state is ConnectionState.ERROR
    assert tx.receive_data(request(READ, 0, 1)) == ([], b"")


def test_requests_before_a_bad_magic_are_kept() -> None:
    tx = make()
    stream = request(READ, 0, 1, cookie=1) + request(READ, SIZE, 1, cookie=2) + bytes(28)
    events, replies = tx.receive_data(stream)
    assert events[0] == Request(READ, 0, 1, 0, 1)
    assert isinstance(events[1], ConnectionFailed)
    assert len(events) == 2
    assert decode(replies) == [Simple(Errno.EINVAL, 2)]
    assert tx.in_flight == 1


@FEEDS
def test_disc_ends_parsing(feed: Feed) -> None:
    tx = make()
    events, replies = feed(tx, request(DISC) + request(READ, 0, 1) + b"garbage")
    assert events == [Disconnect()]
    assert replies == b""
    assert tx.state is ConnectionState.DRAINING
    assert tx.in_flight == 0
    assert tx.receive_data(request(READ, 0, 1)) == ([], b"")


def test_requests_in_flight_at_disc_can_still_be_answered() -> None:
    tx = make()
    events, _ = tx.receive_data(request(READ, 0, 1) + request(DISC) + request(WRITE, 0, data=b"x"))
    assert events == [Request(READ, 0, COOKIE, 0, 1), Disconnect()]
    assert tx.in_flight == 1
    read = events[0]
    assert isinstance(read, Request)
    assert decode(tx.reply_read_header(read)) == [Simple(0)]
    assert tx.in_flight == 0


# -- replies -----------------------------------------------------------------------------------


def accepted(tx: Transmission, data: bytes) -> Request:
    events, replies = tx.receive_data(data)
    assert replies == b""
    (event,) = events
    assert isinstance(event, Request)
    return event


@pytest.mark.parametrize("structured", [False, True])
def test_reply_ok_is_a_simple_reply(structured: bool) -> None:
    tx = make(structured=structured)
    req = accepted(tx, request(WRITE, 0, data=b"x"))
    assert tx.reply_ok(req) == struct.pack(">IIQ", SIMPLE_MAGIC, 0, COOKIE)
    assert tx.in_flight == 0


@pytest.mark.parametrize("structured", [False, True])
def test_reply_error_for_commands_without_payload_is_simple(structured: bool) -> None:
    tx = make(structured=structured)
    req = accepted(tx, request(WRITE, 0, data=b"x"))
    assert tx.reply_error(req, Errno.EIO) == struct.pack(">IIQ", SIMPLE_MAGIC, 5, COOKIE)


def test_reply_error_for_read_is_a_structured_error_chunk_with_done() -> None:
    tx = make(structured=True)
    req = accepted(tx, request(READ, 0, 512))
    out = tx.reply_error(req, Errno.EIO)
    assert out == struct.pack(">IHHQI", CHUNK_MAGIC, DONE, ERROR, COOKIE, 6) + struct.pack(
        ">IH", 5, 0
    )
    assert tx.in_flight == 0


def test_reply_error_for_read_without_structured_replies_is_simple() -> None:
    tx = make()
    req = accepted(tx, request(READ, 0, 512))
    assert decode(tx.reply_error(req, Errno.ENOMEM)) == [Simple(Errno.ENOMEM)]


def test_reply_error_needs_an_errno() -> None:
    tx = make()
    req = accepted(tx, request(FLUSH))
    with pytest.raises(LocalProtocolError):
        tx.reply_error(req, 0)
    assert tx.in_flight == 1


def test_reply_read_header_simple() -> None:
    tx = make()
    req = accepted(tx, request(READ, 4096, 512))
    assert tx.reply_read_header(req) == struct.pack(">IIQ", SIMPLE_MAGIC, 0, COOKIE)


def test_reply_read_header_structured_is_one_offset_data_chunk() -> None:
    tx = make(structured=True)
    req = accepted(tx, request(READ, 4096, 512))
    header = struct.pack(">IHHQI", CHUNK_MAGIC, DONE, OFFSET_DATA, COOKIE, 8 + 512)
    assert tx.reply_read_header(req) == header + struct.pack(">Q", 4096)


def test_reply_read_header_structured_zero_length_is_a_none_chunk() -> None:
    tx = make(structured=True)
    req = accepted(tx, request(READ, 4096, 0))
    assert tx.reply_read_header(req) == struct.pack(">IHHQI", CHUNK_MAGIC, DONE, NONE, COOKIE, 0)


BLOCK_STATUS_CASES = {
    "exact": (0, 12288, [(4096, 3), (8192, 0)], [(4096, 3), (8192, 0)]),
    "last_clamped": (0, 6000, [(4096, 0), (MiB, 3)], [(4096, 0), (1904, 3)]),
    "surplus_dropped": (0, 6000, [(6000, 0), (5, 3)], [(6000, 0)]),
    "zero_lengths_dropped": (
        0,
        8192,
        [(0, 3), (4096, 0), (0, 1), (4096, 3)],
        [(4096, 0), (4096, 3)],
    ),
    "req_one": (CommandFlag.REQ_ONE, 8192, [(100, 0), (200, 3)], [(100, 0)]),
    "req_one_clamped": (CommandFlag.REQ_ONE, 100, [(MiB, 3)], [(100, 3)]),
    "req_one_skips_zero": (CommandFlag.REQ_ONE, 100, [(0, 3), (50, 1)], [(50, 1)]),
    "short_is_allowed": (0, 8192, [(4096, 3)], [(4096, 3)]),
    "nothing_reported": (0, 8192, [], [(8192, 0)]),
    "only_zero_lengths": (0, 8192, [(0, 3)], [(8192, 0)]),
    "over_4gib_extent": (0, 0xFFFFFFFF, [(1 << 40, 3)], [(0xFFFFFFFF, 3)]),
}


@pytest.mark.parametrize(
    ("flags", "length", "extents", "expected"),
    BLOCK_STATUS_CASES.values(),
    ids=BLOCK_STATUS_CASES.keys(),
)
def test_reply_block_status(
    flags: int, length: int, extents: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    tx = make(ExportInfo("big", 1 << 40), structured=True, meta=(1,))
    req = accepted(tx, request(STATUS, 0, length, flags=flags))
    assert decode(tx.reply_block_status(req, extents)) == [block_status(1, *expected)]
    assert tx.in_flight == 0


def test_reply_block_status_exact_bytes() -> None:
    tx = make(structured=True, meta=(1,))
    req = accepted(tx, request(STATUS, 0, 8192))
    body = struct.pack(">IIIII", 1, 4096, 3, 4096, 0)
    header = struct.pack(">IHHQI", CHUNK_MAGIC, DONE, BLOCK_STATUS, COOKIE, len(body))
    assert tx.reply_block_status(req, [(4096, 3), (4096, 0)]) == header + body


def test_reply_block_status_one_chunk_per_context_and_only_the_last_done() -> None:
    tx = make(structured=True, meta=(1, 7))
    req = accepted(tx, request(STATUS, 0, 4096))
    assert decode(tx.reply_block_status(req, [(4096, 3)])) == [
        block_status(1, (4096, 3), flags=0),
        block_status(7, (4096, 3), flags=DONE),
    ]


def test_reply_block_status_is_bounded() -> None:
    tx = make(structured=True, meta=(1,))
    req = accepted(tx, request(STATUS, 0, SIZE))
    (chunk,) = decode(
        tx.reply_block_status(req, [(1, i % 4) for i in range(3 * MAX_EXTENTS_PER_REPLY)])
    )
    assert isinstance(chunk, Chunk)
    assert len(chunk.payload) == 4 + 8 * MAX_EXTENTS_PER_REPLY


# -- in-flight accounting -------------------------------------------------------------------------


def test_in_flight_counts_only_requests_the_adapter_must_answer() -> None:
    tx = make(structured=True, meta=(1,))
    events, _ = tx.receive_data(
        request(READ, 0, 1, cookie=1)
        + request(READ, SIZE, 1, cookie=2)
        + request(WRITE, 0, data=b"x", cookie=3)
        + request(STATUS, 0, 1, cookie=4)
        + request(9, cookie=5)
    )
    assert tx.in_flight == 3
    read, write, status = events
    assert isinstance(read, Request) and isinstance(write, Request) and isinstance(status, Request)
    tx.reply_read_header(read)
    tx.reply_ok(write)
    tx.reply_block_status(status, [])
    assert tx.in_flight == 0
    with pytest.raises(LocalProtocolError):
        tx.reply_ok(write)  # a second reply for the same request
    assert tx.in_flight == 0


REPLIES: dict[str, Callable[[Transmission, Request], bytes]] = {
    "ok": lambda tx, req: tx.reply_ok(req),
    "error": lambda tx, req: tx.reply_error(req, Errno.EIO),
    "read_header": lambda tx, req: tx.reply_read_header(req),
    "block_status": lambda tx, req: tx.reply_block_status(req, [(1, 0)]),
}


@pytest.mark.parametrize("reply", REPLIES.values(), ids=REPLIES.keys())
def test_a_reply_for_a_request_not_in_flight_is_a_local_error(
    reply: Callable[[Transmission, Request], bytes],
) -> None:
    tx = make(structured=True, meta=(1,))
    with pytest.raises(LocalProtocolError):
        reply(tx, Request(READ, 0, COOKIE, 0, 1))
    assert tx.in_flight == 0


# -- properties ---------------------------------------------------------------------------------

SMALL_SIZE = 4096
OFFSETS = st.one_of(
    st.sampled_from([0, 1, SMALL_SIZE - 1, SMALL_SIZE, SMALL_SIZE + 1, (1 << 64) - 1]),
    st.integers(0, 2 * SMALL_SIZE),
)
LENGTHS = st.one_of(st.sampled_from([0, 1, 24, 25, 0xFFFFFFFF]), st.integers(0, 40))
FLAGS = st.sampled_from([0, 1, 2, 4, 8, 16, 1 << 5, 0xFFFF])
COMMANDS = st.sampled_from([*[c for c in Command if c != DISC], 8, 0xFFFF])


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    """Well-framed requests: random commands, flags, offsets and lengths; WRITEs carry their data."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        command, flags, offset = draw(COMMANDS), draw(FLAGS), draw(OFFSETS)
        if command == WRITE:
            data = draw(st.binary(max_size=40))
            parts.append(request(WRITE, offset, data=data, flags=flags, cookie=len(parts)))
        else:
            parts.append(request(command, offset, draw(LENGTHS), flags=flags, cookie=len(parts)))
    if draw(st.booleans()):
        parts.append(request(DISC) + draw(st.binary(max_size=40)))
    return b"".join(parts)


def feed_cut(tx: Transmission, data: bytes, cuts: list[int]) -> tuple[list[Event], bytes]:
    events: list[Event] = []
    replies = b""
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        more, out = tx.receive_data(data[start:end])
        events += more
        replies += out
    return events, replies


def small_tx() -> Transmission:
    return make(ExportInfo("small", SMALL_SIZE), structured=True, meta=(1,), max_payload=24)


@settings(max_examples=300, deadline=None)
@given(request_streams(), st.data())
def test_any_chunking_of_a_request_stream_gives_the_same_events(
    stream: bytes, data: st.DataObject
) -> None:
    whole = small_tx()
    expected = whole.receive_data(stream)
    tx = small_tx()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert feed_cut(tx, stream, cuts) == expected
    assert (tx.state, tx.in_flight) == (whole.state, whole.in_flight)


def check_documented_outcome(tx: Transmission, events: list[Event], replies: bytes) -> None:
    requests = [e for e in events if isinstance(e, Request)]
    ends = [e for e in events if not isinstance(e, Request)]
    assert events == requests + ends, "nothing is parsed after DISC or a bad magic"
    assert len(ends) <= 1
    expected_state = {
        (): ConnectionState.OPEN,
        (Disconnect,): ConnectionState.DRAINING,
        (ConnectionFailed,): ConnectionState.ERROR,
    }[tuple(type(e) for e in ends)]
    assert tx.state is expected_state
    assert tx.in_flight == len(requests)
    for req in requests:
        # FLUSH's offset and length mean nothing, so the core does not check them.
        assert req.command == FLUSH or req.offset + req.length <= SMALL_SIZE
        assert req.flags & ~0x1F == 0
        assert req.command in set(Command) - {DISC}
        assert len(req.data) == (req.length if req.command == WRITE else 0)
    for reply in decode(replies):
        errno = (
            reply.errno if isinstance(reply, Simple) else struct.unpack(">I", reply.payload[:4])[0]
        )
        assert errno in (Errno.EPERM, Errno.EINVAL, Errno.ENOSPC)


@settings(max_examples=300, deadline=None)
@given(request_streams(), st.data())
def test_request_streams_give_only_documented_outcomes(stream: bytes, data: st.DataObject) -> None:
    tx = small_tx()
    events, replies = feed_cut(
        tx, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    )
    check_documented_outcome(tx, events, replies)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_random_bytes_give_only_documented_outcomes(stream: bytes, data: st.DataObject) -> None:
    tx = small_tx()
    events, replies = feed_cut(
        tx, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    )
    check_documented_outcome(tx, events, replies)
    if len(stream) >= 28 and stream[:4] != struct.pack(">I", REQUEST_MAGIC):
        assert isinstance(events[-1], ConnectionFailed)
