"""Unit tests for ``foresync.nbd.handshake``: fixed-newstyle negotiation as a pure state machine.

Client messages are built here with ``struct`` from proto.md ("Option haggling"), not with the
module's own layouts, and every server reply is decoded and checked field by field. Each message is
fed whole, then one byte at a time, then with trailing data, as h11 tests its parsers.
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
from foresync.nbd.handshake import (
    DEFAULT_MAX_OPTION_BYTES,
    ExportInfo,
    ExportSelected,
    HandshakeAborted,
    HandshakeEvent,
    HandshakeFailed,
    HandshakeState,
    ServerHandshake,
)
from foresync.nbd.wire import Info, Option, Reply
from foresync.nbd.wire import TransmissionFlag as TF

# -- a tiny client: encoder and reply decoder, written from proto.md ---------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
C_FIXED_NEWSTYLE, C_NO_ZEROES = 1, 2
MiB = 1 << 20


def client_flags(flags: int = C_FIXED_NEWSTYLE | C_NO_ZEROES) -> bytes:
    return struct.pack(">I", flags)


def option(opt: int, payload: bytes = b"", magic: int = IHAVEOPT) -> bytes:
    return struct.pack(">QII", magic, opt, len(payload)) + payload


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">I", len(raw)) + raw


def info_payload(name: str | bytes, *infos: int) -> bytes:
    return (
        string(name) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)
    )


def meta_payload(name: str | bytes, *queries: str | bytes) -> bytes:
    return string(name) + struct.pack(">I", len(queries)) + b"".join(string(q) for q in queries)


@dataclass(frozen=True)
class OptReply:
    option: int
    type: int
    data: bytes = b""


def decode_replies(data: bytes) -> list[OptReply]:
    """Split server output into option replies; fails the test on a bad magic or a torn reply."""
    replies = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 20, f"torn reply header at byte {pos}"
        magic, opt, reply_type, length = struct.unpack_from(">QIII", data, pos)
        assert magic == REPLY_MAGIC, f"bad reply magic 0x{magic:x} at byte {pos}"
        pos += 20
        assert pos + length <= len(data), f"reply data torn at byte {pos}"
        replies.append(OptReply(opt, reply_type, data[pos : pos + length]))
        pos += length
    return replies


def types(replies: list[OptReply]) -> list[tuple[int, int]]:
    return [(r.option, r.type) for r in replies]


# -- exports and expected values -------------------------------------------------------------

DISK = ExportInfo("disk", 1 << 30, description="the main disk")
SPARE = ExportInfo("spare", 4096, read_only=True)
EXPORTS = {"disk": DISK, "spare": SPARE}

RW_FLAGS = int(
    TF.HAS_FLAGS
    | TF.SEND_FLUSH
    | TF.SEND_FUA
    | TF.SEND_TRIM
    | TF.SEND_WRITE_ZEROES
    | TF.SEND_FAST_ZERO
    | TF.SEND_CACHE
    | TF.CAN_MULTI_CONN
)
RO_FLAGS = int(
    TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.READ_ONLY | TF.SEND_CACHE | TF.CAN_MULTI_CONN
)
BLOCK_SIZE_INFO = struct.pack(">HIII", 3, 1, 4096, 32 * MiB)


def info_replies(
    opt: int, export: ExportInfo, flags: int, name: bool = False, description: bool = False
) -> list[OptReply]:
    """The replies proto.md prescribes for a successful INFO/GO, in the order we send them."""
    out = [OptReply(opt, Reply.INFO, struct.pack(">HQH", 0, export.size, flags))]
    if name:
        out.append(OptReply(opt, Reply.INFO, struct.pack(">H", 1) + export.name.encode()))
    if description:
        out.append(OptReply(opt, Reply.INFO, struct.pack(">H", 2) + export.description.encode()))
    out.append(OptReply(opt, Reply.INFO, BLOCK_SIZE_INFO))
    out.append(OptReply(opt, Reply.ACK))
    return out


# -- driving the machine ------------------------------------------------------------------------

Feed = Callable[[ServerHandshake, bytes], None]


def feed_whole(hs: ServerHandshake, data: bytes) -> None:
    hs.receive_data(data)


def feed_bytewise(hs: ServerHandshake, data: bytes) -> None:
    for i in range(len(data)):
        hs.receive_data(data[i : i + 1])


FEEDS = pytest.mark.parametrize("feed", [feed_whole, feed_bytewise], ids=["whole", "bytewise"])


def started(
    default: str | None = "disk", max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES
) -> ServerHandshake:
    hs = ServerHandshake(EXPORTS, default_export=default, max_option_bytes=max_option_bytes)
    hs.data_to_send()  # the greeting, checked in its own test
    return hs


def negotiating(
    flags: int = C_FIXED_NEWSTYLE | C_NO_ZEROES,
    default: str | None = "disk",
    max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES,
) -> ServerHandshake:
    hs = started(default, max_option_bytes)
    hs.receive_data(client_flags(flags))
    assert hs.state is HandshakeState.NEGOTIATING
    return hs


def events(hs: ServerHandshake) -> list[HandshakeEvent]:
    out = []
    while (event := hs.next_event()) is not None:
        out.append(event)
    return out


def selected(hs: ServerHandshake) -> ExportSelected:
    (event,) = events(hs)
    assert isinstance(event, ExportSelected)
    assert hs.state is HandshakeState.TRANSMISSION
    return event


def failed(hs: ServerHandshake) -> HandshakeFailed:
    (event,) = events(hs)
    assert isinstance(event, HandshakeFailed)
    assert hs.state is HandshakeState.ERROR
    return event


def go_disk() -> bytes:
    return option(Option.GO, info_payload("disk"))


# -- greeting and client flags -------------------------------------------------------------------


def test_greeting_is_sent_once_and_advertises_fixed_newstyle_and_no_zeroes() -> None:
    hs = ServerHandshake(EXPORTS)
    assert hs.data_to_send() == struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 0b11)
    assert hs.data_to_send() == b""
    assert hs.state is HandshakeState.AWAIT_CLIENT_FLAGS
    assert hs.next_event() is None


@FEEDS
@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_known_client_flags_start_negotiation(feed: Feed, flags: int) -> None:
    hs = started()
    feed(hs, client_flags(flags))
    assert hs.state is HandshakeState.NEGOTIATING
    assert hs.data_to_send() == b""
    assert events(hs) == []


def test_client_flags_wait_for_all_four_bytes() -> None:
    hs = started()
    hs.receive_data(b"\0\0\0")
    assert hs.state is HandshakeState.AWAIT_CLIENT_FLAGS
    hs.receive_data(b"\1")
    assert hs.state is HandshakeState.NEGOTIATING


@FEEDS
@pytest.mark.parametrize("flags", [4, 1 << 31, 0xFFFFFFFF])
def test_unknown_client_flags_fail_the_handshake(feed: Feed, flags: int) -> None:
    hs = started()
    feed(hs, client_flags(flags))
    assert f"{flags:08x}" in failed(hs).reason
    assert hs.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        hs.receive_data(go_disk())


def test_options_pipelined_after_bad_client_flags_are_not_answered() -> None:
    hs = started()
    hs.receive_data(client_flags(8) + go_disk())
    failed(hs)
    assert hs.data_to_send() == b""


# -- option framing ----------------------------------------------------------------------------


@FEEDS
def test_bad_option_magic_fails_without_a_reply(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.LIST, magic=NBDMAGIC))
    assert "magic" in failed(hs).reason
    assert hs.data_to_send() == b""


def test_bad_option_magic_after_a_good_option_keeps_the_earlier_reply() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.STRUCTURED_REPLY) + option(Option.GO, magic=0))
    failed(hs)
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.STRUCTURED_REPLY, Reply.ACK)]
    assert hs.options_seen == 1


# -- EXPORT_NAME -------------------------------------------------------------------------------


@FEEDS
@pytest.mark.parametrize("no_zeroes", [True, False], ids=["no_zeroes", "zero_padded"])
def test_export_name_selects_the_export(feed: Feed, no_zeroes: bool) -> None:
    hs = negotiating(C_FIXED_NEWSTYLE | (C_NO_ZEROES if no_zeroes else 0))
    feed(hs, option(Option.EXPORT_NAME, b"disk"))
    padding = b"" if no_zeroes else bytes(124)
    assert hs.data_to_send() == struct.pack(">QH", DISK.size, RW_FLAGS) + padding
    assert selected(hs) == ExportSelected(DISK, RW_FLAGS, False, (), b"")


def test_export_name_passes_trailing_bytes_on() -> None:
    hs = negotiating()
    trailing = b"\x25\x60\x95\x13 the first request"
    hs.receive_data(option(Option.EXPORT_NAME, b"spare") + trailing)
    assert hs.data_to_send() == struct.pack(">QH", SPARE.size, RO_FLAGS)
    event = selected(hs)
    assert event.export is SPARE
    assert event.trailing == trailing


def test_export_name_empty_reaches_the_default_export() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.EXPORT_NAME))
    assert selected(hs).export is DISK


def test_export_name_empty_without_a_default_fails() -> None:
    hs = negotiating(default=None)
    hs.receive_data(option(Option.EXPORT_NAME))
    failed(hs)
    assert hs.data_to_send() == b""


@FEEDS
@pytest.mark.parametrize("name", [b"nope", b"DISK", b"disk\0", b"\xff\xfe"])
def test_export_name_unknown_fails_without_a_reply(feed: Feed, name: bytes) -> None:
    # EXPORT_NAME has no error reply: anything we sent would be read as the export size.
    hs = negotiating()
    feed(hs, option(Option.EXPORT_NAME, name))
    failed(hs)
    assert hs.data_to_send() == b""


@pytest.mark.parametrize("length", [4097, 60_000])
def test_export_name_longer_than_a_string_fails_without_a_reply(length: int) -> None:
    hs = negotiating()
    hs.receive_data(option(Option.EXPORT_NAME, b"d" * length))
    failed(hs)
    assert hs.data_to_send() == b""


def test_export_name_over_the_option_limit_fails_at_its_header() -> None:
    hs = negotiating(max_option_bytes=64)
    hs.receive_data(struct.pack(">QII", IHAVEOPT, Option.EXPORT_NAME, 65))
    assert "EXPORT_NAME" in failed(hs).reason
    assert hs.data_to_send() == b""


def test_export_name_after_structured_reply_reports_it() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.STRUCTURED_REPLY) + option(Option.EXPORT_NAME, b"disk"))
    out = hs.data_to_send()
    assert decode_replies(out[:20]) == [OptReply(Option.STRUCTURED_REPLY, Reply.ACK)]
    assert out[20:] == struct.pack(">QH", DISK.size, RW_FLAGS | TF.SEND_DF)
    event = selected(hs)
    assert event.structured_replies is True
    assert event.transmission_flags == RW_FLAGS | TF.SEND_DF


# -- ABORT ----------------------------------------------------------------------------------


@FEEDS
def test_abort_is_acked_and_ends_negotiation(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.ABORT))
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.ABORT, Reply.ACK)]
    assert events(hs) == [HandshakeAborted()]
    assert hs.state is HandshakeState.CLOSED
    with pytest.raises(LocalProtocolError):
        hs.receive_data(go_disk())


def test_options_after_abort_are_not_answered() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.ABORT) + go_disk())
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.ABORT, Reply.ACK)]
    assert events(hs) == [HandshakeAborted()]


# -- LIST ---------------------------------------------------------------------------------------


@FEEDS
def test_list_describes_every_export_then_acks(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.LIST))
    assert decode_replies(hs.data_to_send()) == [
        OptReply(Option.LIST, Reply.SERVER, string("disk") + b"the main disk"),
        OptReply(Option.LIST, Reply.SERVER, string("spare")),
        OptReply(Option.LIST, Reply.ACK),
    ]
    assert hs.state is HandshakeState.NEGOTIATING
    assert events(hs) == []


def test_list_with_data_is_invalid_and_negotiation_continues() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.LIST, b"x") + go_disk())
    replies = decode_replies(hs.data_to_send())
    assert types(replies[:1]) == [(Option.LIST, Reply.ERR_INVALID)]
    assert replies[1:] == info_replies(Option.GO, DISK, RW_FLAGS)
    assert selected(hs).export is DISK


# -- INFO and GO ----------------------------------------------------------------------------


@FEEDS
def test_info_describes_the_export_and_negotiation_continues(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.INFO, info_payload("disk")))
    assert decode_replies(hs.data_to_send()) == info_replies(Option.INFO, DISK, RW_FLAGS)
    assert hs.state is HandshakeState.NEGOTIATING
    assert events(hs) == []


@pytest.mark.parametrize("opt", [Option.INFO, Option.GO])
def test_name_and_description_are_sent_when_requested(opt: Option) -> None:
    hs = negotiating()
    hs.receive_data(option(opt, info_payload("disk", Info.DESCRIPTION, Info.NAME, 0x7777)))
    expected = info_replies(opt, DISK, RW_FLAGS, name=True, description=True)
    assert decode_replies(hs.data_to_send()) == expected


def test_block_size_info_is_min_1_preferred_4096_max_32mib() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.INFO, info_payload("disk", Info.BLOCK_SIZE)))
    blocks = [r.data for r in decode_replies(hs.data_to_send()) if r.data[:2] == b"\0\3"]
    assert [struct.unpack(">HIII", b) for b in blocks] == [(3, 1, 4096, 33_554_432)]


@FEEDS
def test_go_describes_and_selects_the_export(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, go_disk())
    assert decode_replies(hs.data_to_send()) == info_replies(Option.GO, DISK, RW_FLAGS)
    assert selected(hs) == ExportSelected(DISK, RW_FLAGS, False, (), b"")


def test_bytes_after_go_come_out_as_trailing() -> None:
    hs = negotiating()
    trailing = struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 512) + b"\x25\x60"
    hs.receive_data(option(Option.LIST) + go_disk() + trailing)
    assert selected(hs).trailing == trailing


def test_go_read_only_export_advertises_read_only() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.GO, info_payload("spare")))
    assert decode_replies(hs.data_to_send()) == info_replies(Option.GO, SPARE, RO_FLAGS)
    assert selected(hs).transmission_flags == RO_FLAGS


def test_go_empty_name_reaches_the_default_export_under_its_own_name() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.GO, info_payload("", Info.NAME)))
    assert decode_replies(hs.data_to_send()) == info_replies(Option.GO, DISK, RW_FLAGS, name=True)
    assert selected(hs).export is DISK


@FEEDS
@pytest.mark.parametrize("opt", [Option.INFO, Option.GO])
@pytest.mark.parametrize("name", ["nope", ""])
def test_unknown_export_is_err_unknown_and_negotiation_continues(
    feed: Feed, opt: Option, name: str
) -> None:
    hs = negotiating(default=None)
    feed(hs, option(opt, info_payload(name)))
    assert types(decode_replies(hs.data_to_send())) == [(opt, Reply.ERR_UNKNOWN)]
    assert hs.state is HandshakeState.NEGOTIATING
    assert events(hs) == []
    hs.receive_data(go_disk())
    assert selected(hs).export is DISK


MALFORMED_INFO = {
    "empty": b"",
    "torn_name_length": b"\0\0",
    "name_past_the_end": string("disk")[:-1],
    "no_request_count": string("disk"),
    "torn_request_count": string("disk") + b"\0",
    "fewer_requests_than_counted": string("disk") + struct.pack(">HH", 2, Info.NAME),
    "huge_request_count": string("disk") + b"\xff\xff",
    "one_trailing_byte": info_payload("disk") + b"\0",
    "trailing_bytes_after_requests": info_payload("disk", Info.NAME) + b"xyz",
    "name_over_4096_bytes": info_payload("d" * 4097),
    "name_not_utf8": info_payload(b"\xff\xfe"),
    "name_length_4GiB": b"\xff\xff\xff\xff",
}


@pytest.mark.parametrize("opt", [Option.INFO, Option.GO])
@pytest.mark.parametrize("payload", MALFORMED_INFO.values(), ids=MALFORMED_INFO.keys())
def test_malformed_info_go_is_err_invalid_and_negotiation_continues(
    opt: Option, payload: bytes
) -> None:
    # The GO that follows in the same chunk proves the whole bad option was consumed.
    hs = negotiating()
    hs.receive_data(option(opt, payload) + go_disk())
    replies = decode_replies(hs.data_to_send())
    assert types(replies[:1]) == [(opt, Reply.ERR_INVALID)]
    assert replies[1:] == info_replies(Option.GO, DISK, RW_FLAGS)
    assert selected(hs).trailing == b""


# -- unsupported and oversized options ---------------------------------------------------------


@FEEDS
@pytest.mark.parametrize(
    "opt", [Option.PEEK_EXPORT, Option.STARTTLS, Option.EXTENDED_HEADERS, 0, 12, 0xFFFFFFFF]
)
@pytest.mark.parametrize("payload", [b"", b"some data"], ids=["no_data", "data"])
def test_unsupported_options_are_err_unsup_and_negotiation_continues(
    feed: Feed, opt: int, payload: bytes
) -> None:
    hs = negotiating()
    feed(hs, option(opt, payload))
    (reply,) = decode_replies(hs.data_to_send())
    assert (reply.option, reply.type) == (opt, Reply.ERR_UNSUP)
    assert hs.state is HandshakeState.NEGOTIATING
    hs.receive_data(go_disk())
    assert selected(hs).structured_replies is False


@FEEDS
def test_oversized_option_is_discarded_then_answered_err_too_big(feed: Feed) -> None:
    hs = negotiating(max_option_bytes=64)
    big = option(Option.INFO, bytes(range(65)))
    feed(hs, big[:-1])
    assert hs.data_to_send() == b""  # answered only once its last byte is gone
    feed(hs, big[-1:] + go_disk())
    replies = decode_replies(hs.data_to_send())
    assert types(replies[:1]) == [(Option.INFO, Reply.ERR_TOO_BIG)]
    assert replies[1:] == info_replies(Option.GO, DISK, RW_FLAGS)
    assert selected(hs).export is DISK
    assert hs.options_seen == 2


def test_oversized_option_and_the_next_in_one_chunk() -> None:
    hs = negotiating(max_option_bytes=8)
    hs.receive_data(option(Option.LIST, b"x" * 9) + option(Option.LIST))
    assert types(decode_replies(hs.data_to_send())) == [
        (Option.LIST, Reply.ERR_TOO_BIG),
        (Option.LIST, Reply.SERVER),
        (Option.LIST, Reply.SERVER),
        (Option.LIST, Reply.ACK),
    ]


def test_option_exactly_at_the_limit_is_processed() -> None:
    payload = info_payload("disk", *[Info.NAME] * 27)
    assert len(payload) == 64
    hs = negotiating(max_option_bytes=64)
    hs.receive_data(option(Option.INFO, payload))
    assert decode_replies(hs.data_to_send()) == info_replies(Option.INFO, DISK, RW_FLAGS, name=True)


def test_oversized_option_is_not_buffered() -> None:
    hs = negotiating()  # default limit, 64 KiB
    chunk = bytes(MiB)
    header = struct.pack(">QII", IHAVEOPT, Option.GO, 16 * MiB)
    tracemalloc.start()
    try:
        hs.receive_data(header)
        for _ in range(16):
            hs.receive_data(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"discarding 16 MiB peaked at {peak} bytes"
    assert types(decode_replies(hs.data_to_send())) == [(Option.GO, Reply.ERR_TOO_BIG)]
    assert hs.state is HandshakeState.NEGOTIATING


# -- STRUCTURED_REPLY and metadata contexts ---------------------------------------------------


def structured() -> ServerHandshake:
    hs = negotiating()
    hs.receive_data(option(Option.STRUCTURED_REPLY))
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.STRUCTURED_REPLY, Reply.ACK)]
    return hs


def go_contexts(hs: ServerHandshake, name: str = "disk") -> tuple[int, ...]:
    hs.data_to_send()
    hs.receive_data(option(Option.GO, info_payload(name)))
    return selected(hs).meta_contexts


@FEEDS
def test_structured_reply_is_acked_and_reported_by_go(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.STRUCTURED_REPLY))
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.STRUCTURED_REPLY, Reply.ACK)]
    hs.receive_data(go_disk())
    flags = RW_FLAGS | TF.SEND_DF
    assert decode_replies(hs.data_to_send()) == info_replies(Option.GO, DISK, flags)
    assert selected(hs) == ExportSelected(DISK, flags, True, (), b"")


def test_structured_reply_with_data_is_invalid_and_not_negotiated() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.STRUCTURED_REPLY, b"\0"))
    assert types(decode_replies(hs.data_to_send())) == [
        (Option.STRUCTURED_REPLY, Reply.ERR_INVALID)
    ]
    hs.receive_data(go_disk())
    assert selected(hs).structured_replies is False


@FEEDS
def test_set_meta_context_before_structured_reply_is_invalid(feed: Feed) -> None:
    hs = negotiating()
    feed(hs, option(Option.SET_META_CONTEXT, meta_payload("disk", "base:allocation")))
    replies = decode_replies(hs.data_to_send())
    assert types(replies) == [(Option.SET_META_CONTEXT, Reply.ERR_INVALID)]
    assert hs.state is HandshakeState.NEGOTIATING
    assert go_contexts(hs) == ()


@FEEDS
def test_set_meta_context_selects_base_allocation(feed: Feed) -> None:
    hs = structured()
    feed(hs, option(Option.SET_META_CONTEXT, meta_payload("disk", "base:allocation")))
    assert decode_replies(hs.data_to_send()) == [
        OptReply(
            Option.SET_META_CONTEXT, Reply.META_CONTEXT, struct.pack(">I", 1) + b"base:allocation"
        ),
        OptReply(Option.SET_META_CONTEXT, Reply.ACK),
    ]
    assert go_contexts(hs) == (1,)


@pytest.mark.parametrize(
    "queries",
    [(), ("base:",), ("qemu:dirty-bitmap:b0",), ("base:allocation2",), ("BASE:ALLOCATION",)],
    ids=["zero_queries", "namespace_only", "other_namespace", "longer_name", "wrong_case"],
)
def test_set_meta_context_that_selects_nothing_only_acks(queries: tuple[str, ...]) -> None:
    hs = structured()
    hs.receive_data(option(Option.SET_META_CONTEXT, meta_payload("disk", *queries)))
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.SET_META_CONTEXT, Reply.ACK)]
    assert go_contexts(hs) == ()


def test_set_meta_context_names_a_context_once_however_often_it_is_asked() -> None:
    hs = structured()
    payload = meta_payload("disk", "x-a:b", "base:allocation", "base:allocation")
    hs.receive_data(option(Option.SET_META_CONTEXT, payload))
    assert types(decode_replies(hs.data_to_send())) == [
        (Option.SET_META_CONTEXT, Reply.META_CONTEXT),
        (Option.SET_META_CONTEXT, Reply.ACK),
    ]
    assert go_contexts(hs) == (1,)


def test_a_later_set_meta_context_replaces_the_earlier_one() -> None:
    hs = structured()
    hs.receive_data(option(Option.SET_META_CONTEXT, meta_payload("disk", "base:allocation")))
    hs.receive_data(option(Option.SET_META_CONTEXT, meta_payload("disk")))
    assert go_contexts(hs) == ()


def test_meta_contexts_apply_only_to_the_export_they_were_set_for() -> None:
    hs = structured()
    hs.receive_data(option(Option.SET_META_CONTEXT, meta_payload("spare", "base:allocation")))
    assert go_contexts(hs, "disk") == ()


def test_meta_contexts_set_on_the_default_alias_apply_to_the_export() -> None:
    hs = structured()
    hs.receive_data(option(Option.SET_META_CONTEXT, meta_payload("", "base:allocation")))
    assert go_contexts(hs, "disk") == (1,)


@pytest.mark.parametrize(
    "queries",
    [(), ("base:",), ("base:allocation",), ("x-foo:", "base:")],
    ids=["zero_queries", "namespace_query", "exact", "second_query_matches"],
)
@pytest.mark.parametrize("after_structured", [False, True])
def test_list_meta_context_lists_base_allocation_with_id_zero(
    queries: tuple[str, ...], after_structured: bool
) -> None:
    hs = structured() if after_structured else negotiating()
    hs.receive_data(option(Option.LIST_META_CONTEXT, meta_payload("disk", *queries)))
    assert decode_replies(hs.data_to_send()) == [
        OptReply(Option.LIST_META_CONTEXT, Reply.META_CONTEXT, b"\0\0\0\0base:allocation"),
        OptReply(Option.LIST_META_CONTEXT, Reply.ACK),
    ]
    assert go_contexts(hs) == ()  # listing selects nothing


def test_list_meta_context_without_a_match_only_acks() -> None:
    hs = negotiating()
    hs.receive_data(option(Option.LIST_META_CONTEXT, meta_payload("disk", "x-foo:bar")))
    assert decode_replies(hs.data_to_send()) == [OptReply(Option.LIST_META_CONTEXT, Reply.ACK)]


@pytest.mark.parametrize("opt", [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT])
def test_meta_context_for_an_unknown_export_is_err_unknown(opt: Option) -> None:
    hs = structured()
    hs.receive_data(option(opt, meta_payload("nope", "base:allocation")))
    assert types(decode_replies(hs.data_to_send())) == [(opt, Reply.ERR_UNKNOWN)]
    assert go_contexts(hs) == ()


MALFORMED_META = {
    "empty": b"",
    "no_query_count": string("disk"),
    "fewer_queries_than_counted": string("disk") + struct.pack(">I", 2) + string("base:allocation"),
    "huge_query_count": string("disk") + b"\xff\xff\xff\xff",
    "query_past_the_end": string("disk") + struct.pack(">I", 1) + string("base:allocation")[:-1],
    "trailing_bytes": meta_payload("disk", "base:allocation") + b"\0",
    "query_not_utf8": meta_payload("disk", b"base:\xff"),
    "query_over_4096_bytes": meta_payload("disk", "x" * 4097),
}


@pytest.mark.parametrize("opt", [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT])
@pytest.mark.parametrize("payload", MALFORMED_META.values(), ids=MALFORMED_META.keys())
def test_malformed_meta_context_is_err_invalid_and_negotiation_continues(
    opt: Option, payload: bytes
) -> None:
    hs = structured()
    hs.receive_data(option(opt, payload) + go_disk())
    replies = decode_replies(hs.data_to_send())
    assert types(replies[:1]) == [(opt, Reply.ERR_INVALID)]
    assert selected(hs).meta_contexts == ()


# -- whole negotiations and misuse --------------------------------------------------------------


def full_negotiation() -> bytes:
    return (
        client_flags()
        + option(Option.LIST)
        + option(Option.STRUCTURED_REPLY)
        + option(Option.LIST_META_CONTEXT, meta_payload("disk"))
        + option(Option.SET_META_CONTEXT, meta_payload("disk", "base:allocation"))
        + option(Option.INFO, info_payload("disk", Info.NAME))
        + option(Option.GO, info_payload("disk", Info.BLOCK_SIZE))
    )


@FEEDS
def test_a_whole_negotiation(feed: Feed) -> None:
    hs = started()
    feed(hs, full_negotiation())
    assert types(decode_replies(hs.data_to_send())) == [
        (Option.LIST, Reply.SERVER),
        (Option.LIST, Reply.SERVER),
        (Option.LIST, Reply.ACK),
        (Option.STRUCTURED_REPLY, Reply.ACK),
        (Option.LIST_META_CONTEXT, Reply.META_CONTEXT),
        (Option.LIST_META_CONTEXT, Reply.ACK),
        (Option.SET_META_CONTEXT, Reply.META_CONTEXT),
        (Option.SET_META_CONTEXT, Reply.ACK),
        *[(Option.INFO, Reply.INFO)] * 3,
        (Option.INFO, Reply.ACK),
        *[(Option.GO, Reply.INFO)] * 2,
        (Option.GO, Reply.ACK),
    ]
    assert selected(hs) == ExportSelected(DISK, RW_FLAGS | TF.SEND_DF, True, (1,), b"")
    assert hs.options_seen == 6


def test_receive_after_transmission_began_is_a_local_error() -> None:
    hs = negotiating()
    hs.receive_data(go_disk())
    selected(hs)
    with pytest.raises(LocalProtocolError):
        hs.receive_data(b"\0")


TRANSMISSION_FLAG_CASES = {
    "defaults": ({}, False, RW_FLAGS),
    "structured": ({}, True, RW_FLAGS | TF.SEND_DF),
    "read_only": ({"read_only": True}, False, RO_FLAGS),
    "no_trim": ({"can_trim": False}, False, RW_FLAGS & ~TF.SEND_TRIM),
    "no_zero": ({"can_zero": False}, False, RW_FLAGS & ~(TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO)),
    "no_fast_zero": ({"can_fast_zero": False}, False, RW_FLAGS & ~TF.SEND_FAST_ZERO),
    "no_cache": ({"can_cache": False}, False, RW_FLAGS & ~TF.SEND_CACHE),
    "no_multi_conn": ({"can_multi_conn": False}, False, RW_FLAGS & ~TF.CAN_MULTI_CONN),
}


@pytest.mark.parametrize(
    ("overrides", "structured_replies", "expected"),
    TRANSMISSION_FLAG_CASES.values(),
    ids=TRANSMISSION_FLAG_CASES.keys(),
)
def test_transmission_flags(
    overrides: dict[str, bool], structured_replies: bool, expected: int
) -> None:
    export = ExportInfo("x", 1, **overrides)
    assert export.transmission_flags(structured_replies) == expected


# -- properties ---------------------------------------------------------------------------------


def feed_chunks(hs: ServerHandshake, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` split at ``cuts`` as an adapter would: stop once negotiation has ended and
    return what was never fed (the adapter hands that to the next phase)."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        if hs.state not in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING):
            return data[start:]
        hs.receive_data(data[start:end])
    return b""


@settings(max_examples=200, deadline=None)
@given(st.data(), st.binary(max_size=40))
def test_any_chunking_gives_the_same_negotiation(data: st.DataObject, trailing: bytes) -> None:
    stream = full_negotiation() + trailing
    whole = started()
    whole.receive_data(stream)
    expected_out, (expected_event,) = whole.data_to_send(), events(whole)
    assert isinstance(expected_event, ExportSelected)

    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    hs = started()
    unfed = feed_chunks(hs, stream, cuts)
    assert hs.data_to_send() == expected_out
    event = selected(hs)
    assert event.trailing + unfed == trailing
    assert event == ExportSelected(DISK, RW_FLAGS | TF.SEND_DF, True, (1,), event.trailing)


PAYLOADS = st.one_of(
    st.binary(max_size=48),
    st.sampled_from([b"", b"disk", info_payload("disk"), info_payload("", Info.NAME)]),
    st.sampled_from([meta_payload("disk", "base:allocation"), meta_payload("disk")]),
)
OPTIONS = st.lists(st.tuples(st.sampled_from([*Option, 0, 12, 0xFFFFFFFF]), PAYLOADS), max_size=8)
TERMINAL_STATES = {
    ExportSelected: HandshakeState.TRANSMISSION,
    HandshakeAborted: HandshakeState.CLOSED,
    HandshakeFailed: HandshakeState.ERROR,
}


def check_outcome(hs: ServerHandshake) -> tuple[HandshakeEvent | None, bytes]:
    """At most one event, and a state that matches it. Returns the event and the output."""
    found = events(hs)
    assert len(found) <= 1
    event = found[0] if found else None
    if event is None:
        assert hs.state in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING)
    else:
        assert hs.state is TERMINAL_STATES[type(event)]
    return event, hs.data_to_send()


@settings(max_examples=300, deadline=None)
@given(OPTIONS, st.data())
def test_arbitrary_options_give_only_documented_outcomes(
    options: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = client_flags() + b"".join(option(opt, payload) for opt, payload in options)
    hs = started(max_option_bytes=32)
    unfed = feed_chunks(hs, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    event, out = check_outcome(hs)
    if isinstance(event, ExportSelected):
        consumed = len(stream) - len(unfed) - len(event.trailing)
        assert event.trailing + unfed == stream[consumed:]
        ends = list(itertools.accumulate([4] + [16 + len(payload) for _, payload in options]))
        assert consumed in ends, "negotiation must end on an option boundary"
        if options[ends.index(consumed) - 1][0] == Option.EXPORT_NAME:
            assert out[-10:] == struct.pack(">QH", event.export.size, event.transmission_flags)
            out = out[:-10]  # EXPORT_NAME's reply is not an option reply
    replies = decode_replies(out)
    assert {r.option for r in replies} <= {opt for opt, _ in options}
    assert {r.type for r in replies} <= set(Reply)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_random_bytes_give_only_documented_outcomes(stream: bytes, data: st.DataObject) -> None:
    hs = started(max_option_bytes=32)
    feed_chunks(hs, stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    _, out = check_outcome(hs)
    assert {r.type for r in decode_replies(out)} <= set(Reply)
