"""Unit tests for ``foresync.link.wire``: link frames, messages and the frame decoder.

Every message is fed to the decoder whole, one byte at a time, and followed by a partial frame
(h11's three ways). Damage of any kind is a RemoteProtocolError, never a wrong message, and the
decoder stays failed afterwards: a TCP stream that delivered one bad frame cannot be trusted.
"""

from __future__ import annotations

import struct
import tracemalloc

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import RemoteProtocolError
from foresync.link import wire
from foresync.link.wire import FrameDecoder, MessageType, encode_frame

VOLUME = bytes(range(16))
U64 = (1 << 64) - 1

MESSAGES: list[wire.Message] = [
    wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 1 << 40, 65536, 7),
    wire.Hello(2, wire.Role.SECONDARY, 255, b"\xff" * 16, U64, 0xFFFFFFFF, U64),
    wire.Welcome(VOLUME, 3, 99, (), ()),
    wire.Welcome(VOLUME, 3, 99, (1, 5, 0xFFFFFFFF), ((4, 0, 4096), (U64, U64, U64))),
    wire.Welcome(VOLUME, 3, 99, (1,), (), wire.WelcomeFlag.NEW | wire.WelcomeFlag.CHECKSUMS, (2, 3)),
    wire.Checksums(0, (U64, 0, 7)),
    wire.Welcome(VOLUME, 3, 99, (), (), wire.WelcomeFlag.RESUME | wire.WelcomeFlag.INCONSISTENT, (), ((0, 5), (9, 1))),
    wire.ResyncProgress(12, ((3, 4), (0xFFFFFFF0, 15))),
    wire.ResyncProgress(U64, ()),
    wire.Checksums(0xFFFFFFFF, (1,) * wire.CHECKSUM_CHUNK_EXTENTS),
    wire.Hello(1, 0, 0, VOLUME, 4096, 1024, 2, (11, U64), (0, 3, 0xFFFFFFFF)),
    wire.Demote((1, 2, U64)),
    wire.Demote(()),
    wire.Demote((1, 2), (1, 5, 2, U64)),
    wire.Hello(3, 0, 0, VOLUME, 4096, 1024, 2, (11, 12), (), (11, 99, 12)),
    wire.Hello(9, 0, 0, VOLUME, 4 << 20, 1 << 20, 2, (11,), (), (), (3000000, 1 << 20, U64),
               ("wal", "data", "é" * 300)),
    wire.Verify(3, 16, 16),
    wire.Hashes(3, 16, (U64, 0, 5)),
    wire.Hashes(4, 0, ()),
    wire.Refuse(""),
    wire.Refuse("volume size differs: ünïcode ✓"),
    wire.Refuse("split brain", wire.RefuseCode.SPLIT_BRAIN),
    wire.Refuse("from a newer peer", 200),
    wire.Write(1, 0, 0, 0, (), b""),
    wire.Write(U64, U64, wire.WriteFlag.MISS | wire.WriteFlag.DURABLE, 0xFFFF, (3, 4, 5),
               bytes(range(256)) * 17),
    wire.Write(9, 4096, wire.WriteFlag.RESYNC, 1, (), b"\x00" * 4096),
    wire.Zero(2, 8192, 1 << 30, wire.WriteFlag.PUNCH | wire.WriteFlag.RANGE, 0, ()),
    wire.Zero(3, 0, 1, wire.WriteFlag.MISS, 4, (0xFFFFFFFF, 0)),
    wire.Added(5, ()),
    wire.Added(5, (1, 2, 3)),
    wire.Applied(0),
    wire.Applied(U64),
    wire.Durable(12),
    wire.Sync(13),
    wire.Remove((), ()),
    wire.Remove((1, 2), ()),
    wire.Remove((), (7, U64)),
    wire.Remove((9,), (10, 11)),
    wire.Ping(123456789),
    wire.Pong(U64),
    wire.ResyncDone(44),
    wire.ResyncDoneAck(44),
    wire.ResyncDoneAck(U64),
    wire.ResyncSet(1, ()),
    wire.ResyncSet(U64, ((0, 1), (3, 0xFFFFFFFF))),
    wire.ResyncSetDurable(7),
    wire.AuthChallenge(bytes(range(32))),
    wire.AuthResponse(b"\x01" * 32, b"\xff" * 32),
    wire.AuthProof(bytes(32)),
    wire.StorageFailed(wire.StorageArea.IMAGE, 28, "write at 4096 failed: No space left on device"),
    wire.StorageFailed(255, 0xFFFFFFFF, ""),
]
IDS = [f"{i}-{type(m).__name__}" for i, m in enumerate(MESSAGES)]


def _frame(kind: int, payload: bytes, magic: int = wire.FRAME_MAGIC, reserved: int = 0) -> bytes:
    prefix = struct.pack(">IBBHI", magic, kind, reserved, 0, len(payload))
    crc = google_crc32c.extend(google_crc32c.value(prefix), payload)
    return prefix + struct.pack(">I", crc) + payload


# -- layout ----------------------------------------------------------------------------------------


def test_frame_header_layout() -> None:
    frame = encode_frame(wire.Durable(0x0102030405060708))
    assert frame[:4] == b"FSLK"
    assert frame[4] == MessageType.DURABLE
    assert frame[5:8] == b"\x00\x00\x00"
    assert struct.unpack(">I", frame[8:12])[0] == 8
    assert struct.unpack(">I", frame[12:16])[0] == google_crc32c.value(frame[:12] + frame[16:])
    assert frame[16:] == bytes.fromhex("0102030405060708")
    assert frame == _frame(MessageType.DURABLE, frame[16:])


def test_write_payload_layout() -> None:
    frame = encode_frame(wire.Write(1, 2, 3, 4, (5,), b"data"))
    assert frame[16:] == struct.pack(">QQBHII", 1, 2, 3, 4, 1, 5) + b"data"


def test_a_volume_hello_has_no_member_list_and_a_group_hello_ends_with_one() -> None:
    """A volume's HELLO is byte for byte what it was before groups named their members, so a
    peer of the same protocol version reads it; a group's appends LIST(u64) of member sizes."""
    volume = encode_frame(wire.Hello(9, 0, 0, VOLUME, 4096, 1024, 2, (11,), (), ()))
    group = encode_frame(wire.Hello(9, 0, 0, VOLUME, 4096, 1024, 2, (11,), (), (), (1000, 2000),
                                    ("wal", "db")))
    assert group[16:] == volume[16:] + struct.pack(">IQQ", 2, 1000, 2000) + struct.pack(
        ">IH3sH2s", 2, 3, b"wal", 2, b"db")


@pytest.mark.parametrize(("tail", "why"), [
    (struct.pack(">IQ", 1, 1000), "a list count runs past the frame"),  # sizes, no names
    (struct.pack(">IQIH", 1, 1000, 1, 9) + b"wal", "a name of 9 bytes runs past the frame"),
    (struct.pack(">IQIH", 1, 1000, 1, 2) + b"\xff\xfe", "a name is not UTF-8"),
    (struct.pack(">IQQI", 2, 1000, 2000, 0), "2 member sizes but 0 member names"),
])
def test_a_group_hello_with_bad_member_names_is_refused(tail: bytes, why: str) -> None:
    volume = wire.encode_payload(wire.Hello(9, 0, 0, VOLUME, 4096, 1024, 2, (11,), (), ()))
    with pytest.raises(RemoteProtocolError, match=why):
        wire.decode_payload(wire.MessageType.HELLO, volume[1] + tail)


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_whole(message: wire.Message) -> None:
    assert FrameDecoder().feed(encode_frame(message)) == [message]


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_byte_by_byte(message: wire.Message) -> None:
    decoder = FrameDecoder()
    frame = encode_frame(message)
    out: list[wire.Message] = []
    for index in range(len(frame)):
        got = decoder.feed(frame[index : index + 1])
        if index < len(frame) - 1:
            assert got == []
        out.extend(got)
    assert out == [message]


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_with_trailing_partial_frame(message: wire.Message) -> None:
    decoder = FrameDecoder()
    follow = encode_frame(wire.Ping(5))
    assert decoder.feed(encode_frame(message) + follow[:7]) == [message]
    assert decoder.feed(follow[7:-1]) == []
    assert decoder.feed(follow[-1:]) == [wire.Ping(5)]


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_frame_parts_are_the_frame(message: wire.Message) -> None:
    parts = wire.encode_frame_parts(message)
    assert b"".join(parts) == encode_frame(message)
    if isinstance(message, wire.Write) and message.data:
        assert parts[-1] is message.data  # the data goes to the socket uncopied


def test_only_what_nobody_awaits_may_wait() -> None:
    flags = wire.WriteFlag
    assert wire.may_wait(wire.Write(1, 0, 0, 0, (), b"x"))
    assert wire.may_wait(wire.Write(1, 0, flags.RESYNC, 0, (), b"x"))
    assert wire.may_wait(wire.Zero(1, 0, 4096, flags.PUNCH, 0, ()))
    assert wire.may_wait(wire.Applied(3))
    for flag in (flags.MISS, flags.DURABLE, flags.MISS | flags.RESYNC):
        assert not wire.may_wait(wire.Write(1, 0, flag, 1, (), b"x"))
    assert not wire.may_wait(wire.Zero(1, 0, 1 << 30, flags.RANGE, 0, ()))
    for message in (wire.Added(1, ()), wire.Durable(1), wire.Sync(1), wire.Ping(1), wire.Pong(1),
                    wire.Remove((1,), ()), wire.ResyncDone(1), wire.Hashes(1, 0, ())):
        assert not wire.may_wait(message)


def test_many_frames_in_one_feed_keep_their_order() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    assert FrameDecoder().feed(stream) == MESSAGES


def test_empty_feed() -> None:
    assert FrameDecoder().feed(b"") == []


# -- damage ------------------------------------------------------------------------------------------


def _assert_failed_for_good(decoder: FrameDecoder) -> None:
    assert decoder.failed is not None
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(wire.Ping(1)))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_bad_magic() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.feed(_frame(MessageType.PING, bytes(8), magic=0x46534C4C))
    _assert_failed_for_good(decoder)


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_any_flipped_byte_is_an_error_never_a_wrong_message(message: wire.Message) -> None:
    frame = encode_frame(message)
    for index in range(min(len(frame), 200)):
        for bit in (0x01, 0x80):
            damaged = bytearray(frame)
            damaged[index] ^= bit
            decoder = FrameDecoder(max_frame_bytes=1 << 20)
            try:
                got = decoder.feed(bytes(damaged))
            except RemoteProtocolError:
                _assert_failed_for_good(decoder)
                continue
            # Only a flip in the length can leave the decoder waiting (a longer frame); it must
            # never hand out a message.
            assert got == [], (index, bit, got)
            assert 8 <= index < 12


def test_crc_mismatch() -> None:
    frame = bytearray(encode_frame(wire.Sync(3)))
    frame[12] ^= 0xFF
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="CRC32C"):
        decoder.feed(bytes(frame))
    _assert_failed_for_good(decoder)


def test_damage_after_good_frames_still_fails_the_stream() -> None:
    bad = bytearray(encode_frame(wire.Applied(2)))
    bad[-1] ^= 1
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(wire.Applied(1)) + bytes(bad))
    _assert_failed_for_good(decoder)


def test_oversize_frame_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    header = struct.pack(">IBBHII", wire.FRAME_MAGIC, MessageType.WRITE, 0, 0, 1025, 0)
    with pytest.raises(RemoteProtocolError, match="limit"):
        decoder.feed(header)  # no need to wait for (or buffer) the payload
    _assert_failed_for_good(decoder)


def test_frame_at_the_limit_is_fine() -> None:
    message = wire.Write(1, 0, 0, 0, (), b"x" * (1024 - wire.WRITE.size))
    assert FrameDecoder(max_frame_bytes=1024).feed(encode_frame(message)) == [message]


@pytest.mark.parametrize(
    ("kind", "payload"), [(wire.MessageType.AUTH_CHALLENGE, b"x" * 31), (wire.MessageType.AUTH_RESPONSE, b"x" * 65),
                          (wire.MessageType.AUTH_PROOF, b"")])
def test_auth_frames_have_exact_sizes(kind: int, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="expected"):
        FrameDecoder().feed(_frame(kind, payload))


def test_frame_limit_can_change_between_messages() -> None:
    """The link keeps the limit small until the peer authenticates, then raises it: a frame
    buffered behind the proof is checked against the limit in force when it is decoded."""
    big = wire.Write(1, 0, 0, 0, (), b"x" * 8192)
    decoder = FrameDecoder(max_frame_bytes=4096)
    decoder.push(encode_frame(wire.AuthProof(bytes(32))) + encode_frame(big))
    assert decoder.next_message() == wire.AuthProof(bytes(32))
    decoder.max_frame_bytes = 1 << 20
    assert decoder.next_message() == big
    assert decoder.next_message() is None
    strict = FrameDecoder(max_frame_bytes=4096)
    strict.push(encode_frame(big))
    with pytest.raises(RemoteProtocolError, match="limit"):
        strict.next_message()


@pytest.mark.parametrize("kind", [0, 28, 199, 255])  # 25: ROUTE; 26: WRITES; 27: RESYNC_DONE_ACK; 200-206: object frames
def test_unknown_type(kind: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="unknown"):
        decoder.feed(_frame(kind, b""))
    _assert_failed_for_good(decoder)


TRUNCATED = [
    (MessageType.HELLO, bytes(39)),
    (MessageType.HELLO, bytes(41)),
    (MessageType.WELCOME, bytes(35)),
    (MessageType.WELCOME, VOLUME + bytes(16) + struct.pack(">I", 2) + bytes(4)),  # 2 extents, 1 there
    (MessageType.WELCOME, VOLUME + bytes(16) + struct.pack(">I", 0) + bytes(23)),  # part of a range
    (MessageType.WRITE, bytes(22)),
    (MessageType.WRITE, struct.pack(">QQBHI", 1, 0, 0, 0, 3) + bytes(8)),
    (MessageType.ZERO, bytes(30)),
    (MessageType.ZERO, struct.pack(">QQQBHI", 1, 0, 1, 0, 0, 1)),
    (MessageType.ZERO, struct.pack(">QQQBHI", 1, 0, 1, 0, 0, 0) + b"x"),
    (MessageType.ADDED, bytes(7)),
    (MessageType.RESYNC_SET, bytes(11)),
    (MessageType.RESYNC_SET, struct.pack(">QI", 1, 2) + bytes(8)),  # 2 runs, 1 there
    (MessageType.RESYNC_SET, struct.pack(">QI", 1, 0) + bytes(1)),
    (MessageType.RESYNC_SET_DURABLE, bytes(7)),
    (MessageType.ADDED, bytes(10)),
    (MessageType.APPLIED, bytes(7)),
    (MessageType.DURABLE, bytes(9)),
    (MessageType.SYNC, b""),
    (MessageType.PING, bytes(4)),
    (MessageType.PONG, bytes(16)),
    (MessageType.RESYNC_DONE, bytes(1)),
    (MessageType.RESYNC_DONE_ACK, bytes(7)),
    (MessageType.RESYNC_DONE_ACK, bytes(9)),
    (MessageType.REMOVE, bytes(3)),
    (MessageType.REMOVE, struct.pack(">I", 2) + bytes(4)),
    (MessageType.REMOVE, struct.pack(">I", 0) + bytes(7)),
    (MessageType.REMOVE, struct.pack(">I", 0xFFFFFFFF)),
    (MessageType.STORAGE_FAILED, bytes(4)),
    (MessageType.STORAGE_FAILED, bytes(5) + b"\xff"),  # the detail is not UTF-8
    (MessageType.RESYNC_PROGRESS, struct.pack(">QI", 1, 1) + bytes(4)),  # half a run
    (MessageType.RESYNC_PROGRESS, struct.pack(">QI", 1, 0) + bytes(3)),
    (MessageType.CHECKSUMS, bytes(3)),
    (MessageType.CHECKSUMS, struct.pack(">II", 0, 0)),  # an empty chunk
    (MessageType.CHECKSUMS, struct.pack(">II", 0, 2) + bytes(8)),  # 2 checksums, 1 there
    (MessageType.CHECKSUMS, struct.pack(">II", 0, 1) + bytes(9)),  # trailing bytes
    (MessageType.CHECKSUMS,  # one checksum more than a chunk may carry
     struct.pack(">II", 0, wire.CHECKSUM_CHUNK_EXTENTS + 1) + bytes(8 * (wire.CHECKSUM_CHUNK_EXTENTS + 1))),
]


@pytest.mark.parametrize(("kind", "payload"), TRUNCATED,
                         ids=[f"{k.name}-{len(p)}" for k, p in TRUNCATED])
def test_malformed_payload(kind: MessageType, payload: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(_frame(kind, payload))
    _assert_failed_for_good(decoder)


# -- fuzzing -----------------------------------------------------------------------------------------


def _feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[wire.Message]:
    out: list[wire.Message] = []
    for chunk in chunks:
        try:
            out.extend(decoder.feed(chunk))
        except RemoteProtocolError:
            assert decoder.failed is not None
            with pytest.raises(RemoteProtocolError):
                decoder.feed(b"")
            break
    return out


@given(st.lists(st.binary(max_size=64), max_size=8))
@settings(max_examples=300, deadline=None)
def test_random_bytes_yield_only_errors(chunks: list[bytes]) -> None:
    # Without the magic nothing can decode; anything else must be a RemoteProtocolError.
    assert _feed_all(FrameDecoder(max_frame_bytes=4096), chunks) == [] or \
        b"FSLK" in b"".join(chunks)


@given(kind=st.integers(0, 255), payload=st.binary(max_size=120),
       split=st.integers(0, 200))
@settings(max_examples=500, deadline=None)
def test_random_well_framed_payloads_decode_or_fail_cleanly(kind: int, payload: bytes,
                                                            split: int) -> None:
    """A frame with a good CRC but arbitrary contents: the decoder yields a message that
    re-encodes to the very same frame, or a RemoteProtocolError; nothing else ever escapes."""
    frame = _frame(kind, payload)
    messages = _feed_all(FrameDecoder(), [frame[:split], frame[split:]])
    assert len(messages) <= 1
    for message in messages:
        if isinstance(message, wire.Refuse):
            continue  # invalid UTF-8 is replaced, so the bytes may differ
        assert encode_frame(message) == frame


@given(messages=st.lists(st.sampled_from(MESSAGES), max_size=6), data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_split_of_a_stream_decodes_the_same(messages: list[wire.Message],
                                                data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder()
    out: list[wire.Message] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    assert out == messages
    assert decoder.failed is None


# -- large WRITEs: gathered from the chunks as they arrive, joined once ---------------------------

BIG = bytes((i * 13 + 5) % 256 for i in range(wire.GATHER_MIN_BYTES + 777))
LARGE_STREAM = [
    wire.Write(1, 0, 0, 0, (), BIG),
    wire.Applied(1),
    wire.Write(2, 1 << 20, int(wire.WriteFlag.MISS), 4, (3, 9, 11), BIG[: wire.GATHER_MIN_BYTES]),
    wire.Write(3, 4096, 0, 0, (), b"small"),
    wire.Write(4, 8192, 0, 0, (), BIG),
]


@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_large_writes_decode_the_same_split_anywhere(data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in LARGE_STREAM)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reuse = data.draw(st.booleans())  # chunks in a buffer the caller may change afterwards
    decoder = FrameDecoder()
    out: list[wire.Message] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(decoder.feed(bytearray(stream[a:b]) if reuse else stream[a:b]))
    assert out == LARGE_STREAM
    assert decoder.failed is None


@pytest.mark.parametrize("piece", [1, 24, 1000, 65536, 1 << 30])
def test_large_writes_decode_the_same_in_pieces(piece: int) -> None:
    stream = b"".join(encode_frame(m) for m in LARGE_STREAM)
    decoder = FrameDecoder()
    out: list[wire.Message] = []
    for start in range(0, len(stream), piece):
        out.extend(decoder.feed(stream[start : start + piece]))
    assert out == LARGE_STREAM


@pytest.mark.parametrize("where", [30, 60, 5000, len(BIG) - 1])
def test_a_flipped_byte_in_a_gathered_write_is_a_crc_error(where: int) -> None:
    frame = bytearray(encode_frame(wire.Write(1, 0, 0, 0, (), BIG)))
    frame[where] ^= 0x40
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        for start in range(0, len(frame), 4096):
            decoder.feed(bytes(frame[start : start + 4096]))
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.feed(encode_frame(wire.Applied(1)))


def test_a_large_write_whose_removals_overrun_it_is_refused() -> None:
    head = wire.WRITE.pack(1, 0, 0, 0, 1 << 20)  # claims a million removals
    payload = head + bytes(wire.GATHER_MIN_BYTES)
    prefix = struct.pack(">IBBHI", wire.FRAME_MAGIC, int(MessageType.WRITE), 0, 0, len(payload))
    crc = google_crc32c.extend(google_crc32c.value(prefix), payload)
    frame = prefix + struct.pack(">I", crc) + payload
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="shorter than its removals"):
        decoder.feed(frame[:4096])


@pytest.mark.parametrize("piece", [3, 16, 1000])
def test_a_large_write_in_tiny_pieces_costs_bytes_not_an_object_per_piece(piece: int) -> None:
    payload = bytes(range(256)) * 512  # 128 KiB
    frame = encode_frame(wire.Write(1, 0, 0, 0, (), payload))
    pieces = [frame[i : i + piece] for i in range(0, len(frame), piece)]
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        out: list[wire.Message] = []
        for chunk in pieces:
            out.extend(decoder.feed(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [wire.Write(1, 0, 0, 0, (), payload)]
    assert peak < 2.3 * len(payload), peak


# -- next_messages: the batch the link decodes once set up (issue 15) ---------------------------------


def test_next_messages_returns_a_mixed_batch_in_order() -> None:
    messages: list[wire.Message] = [
        wire.Write(1, 0, 0, 0, (), b"a" * 4096),
        wire.Write(2, 4096, 0, 0, (3, 9), b"b" * 512),  # removals: the fast path decodes them too
        wire.Applied(2),
        wire.Write(3, 8192, int(wire.WriteFlag.MISS), 4, (), b"c"),
        wire.Zero(4, 0, 4096, 0, 0, ()),
        wire.Write(5, 0, 0, 0, (), b"d" * 4096),
    ]
    decoder = FrameDecoder()
    stream = b"".join(encode_frame(m) for m in messages)
    decoder.push(stream[:-10])
    assert decoder.next_messages() == messages[:-1]
    decoder.push(stream[-10:])
    assert decoder.next_messages() == messages[-1:]
    assert decoder.next_messages() == []


@pytest.mark.parametrize("damaged_at", [0, 20, 60, -1])
def test_next_messages_delivers_the_frames_before_damage_then_fails(damaged_at: int) -> None:
    good = [wire.Write(seq, seq * 4096, 0, 0, (), bytes([seq]) * 4096) for seq in range(3)]
    bad = bytearray(encode_frame(wire.Write(9, 0, 0, 0, (), b"x" * 4096)))
    bad[damaged_at] ^= 0x10  # magic, fixed part, removals count or data, last byte
    decoder = FrameDecoder()
    decoder.push(b"".join(encode_frame(m) for m in good) + bytes(bad) + encode_frame(wire.Applied(1)))
    assert decoder.next_messages() == good
    assert decoder.failed is not None
    with pytest.raises(RemoteProtocolError):
        decoder.next_messages()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(wire.Ping(1)))


def test_a_damaged_first_frame_raises_at_once() -> None:
    bad = bytearray(encode_frame(wire.Write(9, 0, 0, 0, (), b"x" * 4096)))
    bad[-1] ^= 1
    decoder = FrameDecoder()
    decoder.push(bytes(bad))
    with pytest.raises(RemoteProtocolError, match="CRC32C"):
        decoder.next_messages()


def test_the_receive_path_keeps_no_more_than_a_write_costs() -> None:
    """Memory of the receive path (get_buffer, buffer_updated, next_messages), 4 KiB writes
    (tracemalloc): what a decoded WRITE keeps beyond its data is one object, and while a batch
    is decoded the decoder holds at most its scratch buffer and what was read. A decoder that
    kept views of (or copies of) its buffers per frame would fail."""
    count, size = 256, 4096
    frames = [encode_frame(wire.Write(seq, seq * size, 0, 0, (), bytes([seq % 251]) * size))
              for seq in range(count)]
    chunk = 64 * 1024
    stream = b"".join(frames)
    decoder = FrameDecoder()
    kept: list[wire.Message] = []
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        peak_over_kept = 0
        for start in range(0, len(stream), chunk):
            with decoder.get_buffer() as view:  # as the link's transport reads
                piece = stream[start : start + chunk]
                view[: len(piece)] = piece
            decoder.buffer_updated(len(piece))
            del piece
            kept += decoder.next_messages()
            _, peak = tracemalloc.get_traced_memory()
            peak_over_kept = max(peak_over_kept, peak - base - len(kept) * size)
            tracemalloc.reset_peak()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == count and kept[-1] == wire.Write(count - 1, (count - 1) * size, 0, 0, (),
                                                          bytes([(count - 1) % 251]) * size)
    per_write = (after - base - wire.RECEIVE_BYTES - count * size) / count  # the scratch buffer stays
    assert per_write < 300, per_write  # the Write, its data's header and the list's slot
    # the scratch buffer (made on the first read), the read chunk, the frame buffer, one frame
    assert peak_over_kept < wire.RECEIVE_BYTES + 3 * chunk, peak_over_kept


def test_a_large_write_read_in_place_costs_its_payload_twice_at_most() -> None:
    """A 1 MiB WRITE read through get_buffer in 64 KiB reads (tracemalloc): the payload buffer
    and the one ``bytes`` copy CRC32C needs, nothing per read."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    frame = encode_frame(wire.Write(1, 0, 0, 0, (), payload))
    decoder = FrameDecoder()
    out: list[wire.Message] = []
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for start in range(0, len(frame), 64 * 1024):
            with decoder.get_buffer() as view:
                n = min(len(view), 64 * 1024, len(frame) - start)
                view[:n] = frame[start : start + n]
            assert n == min(64 * 1024, len(frame) - start)  # the view never ends a read early
            decoder.buffer_updated(n)
            out += decoder.next_messages()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [wire.Write(1, 0, 0, 0, (), payload)]
    assert peak - base < 2 * len(payload) + wire.RECEIVE_BYTES + 64 * 1024, peak - base


def test_route_names_a_volume_and_refuses_bad_names() -> None:
    """ROUTE (protocol 6, issue 16): a volume name of 1 to 255 UTF-8 bytes, nothing else."""
    assert FrameDecoder().feed(encode_frame(wire.Route("vm-disk-7"))) == [wire.Route("vm-disk-7")]
    for bad in (b"", b"\xff\xfe", b"x" * 256):
        with pytest.raises(RemoteProtocolError, match="ROUTE"):
            FrameDecoder().feed(_frame(wire.MessageType.ROUTE, bad))
