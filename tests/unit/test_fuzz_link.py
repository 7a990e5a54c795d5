"""Hostile input for the link's ``FrameDecoder`` ("Security and hardening", "Hostile input").

A secondary's link listener accepts TCP from anyone, so the decoder must treat every byte as
hostile. What it promises, and what each test here attacks:

* A frame is either decoded exactly as it was encoded or refused with ``RemoteProtocolError``;
  no other exception escapes, and nothing is decoded from a damaged frame (the CRC32C covers the
  whole header but its own field, so any damage to one byte is detected).
* A truncated frame yields nothing, and no error, until its last byte arrives.
* A declared length over ``max_frame_bytes`` is refused from the 16-byte header alone, so the
  decoder never buffers more than one frame of at most the limit.
* Once failed, the decoder stays failed.

Valid messages of every ``MessageType`` come from Hypothesis strategies; the table of them is
checked against the enum, so a new message type cannot go unfuzzed. Frames are built with
``struct`` from the layout in ``link/wire.py``, not with the module's own packers, where the test
is about framing.
"""

from __future__ import annotations

import itertools
import struct

import google_crc32c
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from foresync.errors import RemoteProtocolError
from foresync.link import wire
from foresync.link.object_wire import OBJECT_TYPES
from foresync.link.wire import FrameDecoder, MessageType, encode_frame, encode_payload

MAGIC = 0x46534C4B
HEADER_BYTES = 16
MAX_FRAME_BYTES = 64 * 1024  # small, so oversize lengths are cheap to reach and to complete
EXAMPLES = settings(max_examples=150, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


def u32s(max_size: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(u32, max_size=max_size).map(tuple)


def u64s(max_size: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(u64, max_size=max_size).map(tuple)


VOLUME_IDS = st.binary(min_size=16, max_size=16)
NONCES = st.binary(min_size=32, max_size=32)  # nonces and HMAC-SHA256 values alike

# Every message type: its class and a strategy for each field, in order.
FIELDS: dict[MessageType, tuple[type[wire.Message], tuple[st.SearchStrategy[object], ...]]] = {
    MessageType.HELLO: (wire.Hello, (u16, u8, u8, VOLUME_IDS, u64, u32, u64, u64s(), u32s(), u64s())),
    MessageType.WELCOME: (wire.Welcome, (
        VOLUME_IDS, u64, u64, u32s(), st.lists(st.tuples(u64, u64, u64), max_size=4).map(tuple),
        u8, u32s(), st.lists(st.tuples(u32, u32), max_size=4).map(tuple))),
    MessageType.REFUSE: (wire.Refuse, (st.text(max_size=40), u8)),
    MessageType.WRITE: (wire.Write, (u64, u64, u8, u16, u32s(), st.binary(max_size=300))),
    MessageType.ZERO: (wire.Zero, (u64, u64, u64, u8, u16, u32s())),
    MessageType.ADDED: (wire.Added, (u64, u32s())),
    MessageType.APPLIED: (wire.Applied, (u64,)),
    MessageType.DURABLE: (wire.Durable, (u64,)),
    MessageType.SYNC: (wire.Sync, (u64,)),
    MessageType.REMOVE: (wire.Remove, (u32s(), u64s())),
    MessageType.PING: (wire.Ping, (u64,)),
    MessageType.PONG: (wire.Pong, (u64,)),
    MessageType.RESYNC_DONE: (wire.ResyncDone, (u64,)),
    MessageType.RESYNC_DONE_ACK: (wire.ResyncDoneAck, (u64,)),
    MessageType.DEMOTE: (wire.Demote, (u64s(), u64s())),
    MessageType.VERIFY: (wire.Verify, (u64, u32, u32)),
    MessageType.HASHES: (wire.Hashes, (u64, u32, u64s())),
    MessageType.AUTH_CHALLENGE: (wire.AuthChallenge, (NONCES,)),
    MessageType.AUTH_RESPONSE: (wire.AuthResponse, (NONCES, NONCES)),
    MessageType.AUTH_PROOF: (wire.AuthProof, (NONCES,)),
    MessageType.STORAGE_FAILED: (wire.StorageFailed, (u8, u32, st.text(max_size=40))),
    MessageType.RESYNC_SET: (wire.ResyncSet, (u64, st.lists(st.tuples(u32, u32), max_size=4).map(tuple))),
    MessageType.RESYNC_SET_DURABLE: (wire.ResyncSetDurable, (u64,)),
    MessageType.RESYNC_PROGRESS: (wire.ResyncProgress, (u64, st.lists(st.tuples(u32, u32), max_size=4).map(tuple))),
    MessageType.CHECKSUMS: (wire.Checksums, (u32, st.lists(u64, min_size=1, max_size=6).map(tuple))),
    MessageType.ROUTE: (wire.Route, (st.text(min_size=1, max_size=40).filter(
        lambda name: len(name.encode()) <= wire.MAX_ROUTE_BYTES),)),
}
STRATEGIES: dict[MessageType, st.SearchStrategy[wire.Message]] = {
    kind: st.builds(cls, *args) for kind, (cls, args) in FIELDS.items()
}
MESSAGES = st.one_of(*STRATEGIES.values())
KINDS = st.sampled_from(sorted(STRATEGIES))


def frame(kind: int, payload: bytes, *, magic: int = MAGIC, reserved: int = 0,
          length: int | None = None) -> bytes:
    """A frame with a correct CRC32C over header bytes 0..11 and the payload."""
    prefix = struct.pack(">IBBHI", magic, kind, reserved >> 16, reserved & 0xFFFF,
                         len(payload) if length is None else length)
    crc = google_crc32c.extend(google_crc32c.value(prefix), payload)
    return prefix + struct.pack(">I", crc) + payload


def buffered(decoder: FrameDecoder) -> int:
    # The one-frame bound is an internal promise ("Buffers at most one frame") with no public
    # accessor, so the test reads the buffer itself.
    return len(decoder._buf)


def feed_checked(decoder: FrameDecoder, chunk: bytes) -> list[wire.Message]:
    """Feed one chunk; only RemoteProtocolError may escape, and the buffer stays within one frame."""
    try:
        got = decoder.feed(chunk)
    except RemoteProtocolError:
        assert decoder.failed is not None
        assert buffered(decoder) == 0
        raise
    assert decoder.failed is None
    assert buffered(decoder) < HEADER_BYTES + decoder.max_frame_bytes
    return got


def assert_failed_for_good(decoder: FrameDecoder) -> None:
    assert decoder.failed is not None
    for data in (b"", encode_frame(wire.Ping(1))):
        with pytest.raises(RemoteProtocolError):
            decoder.feed(data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- valid messages of every type ----------------------------------------------------------------


def test_every_message_type_has_a_strategy() -> None:
    # WRITES decodes to the WRITE messages it carries, not to itself: its own tests are below.
    assert set(FIELDS) | {MessageType.WRITES} == set(MessageType)


@EXAMPLES
@given(st.data())
def test_every_type_encodes_its_own_type_byte(data: st.DataObject) -> None:
    for kind, strategy in STRATEGIES.items():
        message = data.draw(strategy)
        encoded = encode_frame(message)
        magic, type_byte, r1, r2, length = struct.unpack_from(">IBBHI", encoded)
        assert (magic, type_byte, r1, r2) == (MAGIC, kind, 0, 0)
        assert length == len(encoded) - HEADER_BYTES


@EXAMPLES
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_round_trip_whole(messages: list[wire.Message]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    assert feed_checked(FrameDecoder(MAX_FRAME_BYTES), stream) == messages


@settings(max_examples=60, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=3))
def test_round_trip_byte_by_byte(messages: list[wire.Message]) -> None:
    frames = [encode_frame(m) for m in messages]
    ends = set(itertools.accumulate(len(f) for f in frames))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    out: list[wire.Message] = []
    stream = b"".join(frames)
    for index in range(len(stream)):
        got = feed_checked(decoder, stream[index : index + 1])
        # A message appears exactly when the last byte of its frame arrives.
        assert len(got) == (1 if index + 1 in ends else 0), index
        out += got
    assert out == messages
    assert buffered(decoder) == 0


@EXAMPLES
@given(st.lists(MESSAGES, min_size=1, max_size=4), MESSAGES, st.data())
def test_round_trip_with_trailing_partial_frame(messages: list[wire.Message], follow: wire.Message,
                                                data: st.DataObject) -> None:
    tail = encode_frame(follow)
    keep = data.draw(st.integers(0, len(tail) - 1))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    stream = b"".join(encode_frame(m) for m in messages)
    assert feed_checked(decoder, stream + tail[:keep]) == messages
    assert buffered(decoder) == keep
    assert feed_checked(decoder, tail[keep:]) == [follow]


@EXAMPLES
@given(st.lists(MESSAGES, min_size=1, max_size=5), st.data())
def test_any_chunking_decodes_the_same(messages: list[wire.Message], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    out = [m for chunk in split(stream, cuts) for m in feed_checked(decoder, chunk)]
    assert out == messages


# -- truncation ----------------------------------------------------------------------------------


@EXAMPLES
@given(MESSAGES, st.data())
def test_truncated_frame_yields_nothing_until_complete(message: wire.Message,
                                                       data: st.DataObject) -> None:
    encoded = encode_frame(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    assert feed_checked(decoder, encoded[:cut]) == []
    assert buffered(decoder) == cut
    # More pieces, still short of the end: still nothing, still no error.
    more = data.draw(st.integers(cut, len(encoded) - 1))
    assert feed_checked(decoder, encoded[cut:more]) == []
    assert feed_checked(decoder, encoded[more:]) == [message]


# -- damage --------------------------------------------------------------------------------------


def feed_damaged(decoder: FrameDecoder, damaged: bytes, original_length: int) -> None:
    """Feed a damaged frame and, if it is left waiting for a longer payload, the rest of it
    (zeros). The damage must be refused: nothing may ever be decoded from it."""
    try:
        got = decoder.feed(damaged)
    except RemoteProtocolError:
        assert_failed_for_good(decoder)
        return
    # Only damage to the length can leave the decoder waiting: the frame now claims more bytes.
    assert got == []
    (length,) = struct.unpack_from(">I", damaged, 8)
    assert original_length < length <= decoder.max_frame_bytes
    assert buffered(decoder) == len(damaged)
    with pytest.raises(RemoteProtocolError, match="CRC32C"):
        decoder.feed(bytes(length - original_length))
    assert_failed_for_good(decoder)


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.data())
def test_a_flipped_bit_anywhere_is_refused(message: wire.Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, len(encoded) - 1), label="byte")
    encoded[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    feed_damaged(FrameDecoder(MAX_FRAME_BYTES), bytes(encoded), len(encoded) - HEADER_BYTES)


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.data())
def test_a_damaged_header_byte_is_refused(message: wire.Message, data: st.DataObject) -> None:
    # Any corruption of one byte is a burst of at most 8 bits, which CRC32C always detects.
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, HEADER_BYTES - 1), label="byte")
    encoded[index] ^= data.draw(st.integers(1, 0xFF), label="xor")
    feed_damaged(FrameDecoder(MAX_FRAME_BYTES), bytes(encoded), len(encoded) - HEADER_BYTES)


@EXAMPLES
@given(MESSAGES, st.data())
def test_damage_fed_byte_by_byte_is_refused_at_the_damaged_frame(message: wire.Message,
                                                                   data: st.DataObject) -> None:
    good = encode_frame(wire.Ping(7))
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, len(encoded) - 1), label="byte")
    assume(not 8 <= index < 12)  # a damaged length changes where the frame ends; tested above
    encoded[index] ^= data.draw(st.integers(1, 0xFF), label="xor")
    stream = good + bytes(encoded)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    out: list[wire.Message] = []
    with pytest.raises(RemoteProtocolError):
        for i in range(len(stream)):
            out += feed_checked(decoder, stream[i : i + 1])
    assert out == [wire.Ping(7)]  # the good frame before the damage was delivered, nothing after
    # A bad magic or nonzero reserved bytes are refused as soon as the header is complete;
    # anything else (type, CRC, payload) when the CRC is checked, at the frame's last byte.
    header_only = index < 8 and index != 4
    assert i == (len(good) + HEADER_BYTES - 1 if header_only else len(stream) - 1)
    assert_failed_for_good(decoder)


@EXAMPLES
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_are_refused_or_wait(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    for chunk in chunks:
        try:
            got = feed_checked(decoder, chunk)
        except RemoteProtocolError:
            assert_failed_for_good(decoder)
            return
        # Random bytes with a random CRC never make a message (2**-32 odds aside).
        assert got == []


@EXAMPLES
@given(st.one_of(KINDS, u8), st.binary(max_size=40), st.data())
def test_random_bytes_after_a_valid_prefix_are_refused_or_wait(kind: int, tail: bytes,
                                                              data: st.DataObject) -> None:
    # A valid magic (and type) gets the garbage past the first check, where the length and the
    # CRC are what must catch it.
    stream = struct.pack(">IB", MAGIC, kind) + tail
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    try:
        for chunk in split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=4))):
            assert feed_checked(decoder, chunk) == []
    except RemoteProtocolError:
        assert_failed_for_good(decoder)


def mutated(valid: bytes, data: st.DataObject) -> bytes:
    """A well-framed payload made hostile: cut short, extended, 4 bytes overwritten at any
    offset (how counts get large or inconsistent), or random bytes."""
    mutation = data.draw(st.sampled_from(["truncate", "extend", "overwrite", "random"]))
    if mutation == "truncate":
        return valid[: data.draw(st.integers(0, max(0, len(valid) - 1)))]
    if mutation == "extend":
        return valid + data.draw(st.binary(min_size=1, max_size=16))
    if mutation == "overwrite":
        at = data.draw(st.integers(0, len(valid)))
        return valid[:at] + struct.pack(">I", data.draw(u32)) + valid[at + 4 :]
    return data.draw(st.binary(max_size=120))


@EXAMPLES
@given(KINDS, st.data())
def test_well_framed_hostile_payloads_decode_exactly_or_are_refused(kind: MessageType,
                                                                   data: st.DataObject) -> None:
    """A correct CRC over a malformed payload (a peer that frames its garbage properly): it is
    refused, or it decodes to a message of the frame's type that encodes back to the same bytes,
    so no field was misread."""
    _, valid = encode_payload(data.draw(STRATEGIES[kind]))
    payload = mutated(valid, data)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    try:
        got = feed_checked(decoder, frame(kind, payload))
    except RemoteProtocolError:
        assert_failed_for_good(decoder)
        return
    (message,) = got
    assert type(message) is FIELDS[kind][0]
    if kind is MessageType.REFUSE:
        # The reason is text; invalid UTF-8 is replaced (not refused) since it is only logged.
        assert message == wire.Refuse(payload[1:].decode("utf-8", "replace"), payload[0])
    else:
        assert encode_payload(message) == (kind, payload)


UNKNOWN_KINDS = [kind for kind in range(256) if kind not in set(MessageType) and kind not in OBJECT_TYPES]


@pytest.mark.parametrize("kind", [*UNKNOWN_KINDS[:4], *UNKNOWN_KINDS[4::25], UNKNOWN_KINDS[-1]])
def test_unknown_type_with_a_valid_crc_is_refused(kind: int) -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    with pytest.raises(RemoteProtocolError, match="unknown"):
        decoder.feed(frame(kind, bytes(8)))
    assert_failed_for_good(decoder)


@EXAMPLES
@given(st.binary(min_size=4, max_size=4).filter(lambda b: b != struct.pack(">I", MAGIC)), MESSAGES)
def test_bad_magic_is_refused_from_the_header(magic: bytes, message: wire.Message) -> None:
    encoded = encode_frame(message)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.feed(magic + encoded[4:HEADER_BYTES])  # no payload needed to refuse it
    assert_failed_for_good(decoder)


# -- oversized lengths ---------------------------------------------------------------------------


@EXAMPLES
@given(st.integers(MAX_FRAME_BYTES + 1, 0xFFFFFFFF), KINDS, st.booleans())
def test_oversized_length_is_refused_from_the_header_alone(length: int, kind: int,
                                                           bytewise: bool) -> None:
    header = frame(kind, b"", length=length)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    if bytewise:
        for i in range(HEADER_BYTES - 1):
            assert feed_checked(decoder, header[i : i + 1]) == []
        last = header[-1:]
    else:
        last = header
    with pytest.raises(RemoteProtocolError, match="limit"):
        decoder.feed(last)
    assert buffered(decoder) == 0
    assert_failed_for_good(decoder)


def test_length_at_the_limit_waits_and_one_over_is_refused() -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    assert feed_checked(decoder, frame(MessageType.WRITE, b"", length=MAX_FRAME_BYTES)) == []
    assert buffered(decoder) == HEADER_BYTES
    with pytest.raises(RemoteProtocolError, match="limit"):
        FrameDecoder(MAX_FRAME_BYTES).feed(frame(MessageType.WRITE, b"", length=MAX_FRAME_BYTES + 1))


def test_a_frame_at_the_limit_streamed_in_small_pieces_never_buffers_more_than_itself() -> None:
    data = bytes(range(256)) * ((MAX_FRAME_BYTES - wire.WRITE.size) // 256)
    message = wire.Write(1, 0, 0, 0, (), data)
    encoded = encode_frame(message)
    assert len(encoded) <= HEADER_BYTES + MAX_FRAME_BYTES
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    out: list[wire.Message] = []
    for start in range(0, len(encoded), 1000):
        out += feed_checked(decoder, encoded[start : start + 1000])
    assert out == [message]
    assert buffered(decoder) == 0


@EXAMPLES
@given(st.integers(1, 0xFFFFFF), MESSAGES)
def test_reserved_bits_must_be_zero(reserved: int, message: wire.Message) -> None:
    # Reserved bytes are checked from the header alone (and covered by the CRC too): any change
    # to the 3 reserved bytes is refused, even by a peer that computes a valid CRC.
    encoded = bytearray(encode_frame(message))
    flips = reserved.to_bytes(3, "big")
    encoded[5:8] = bytes(a ^ b for a, b in zip(encoded[5:8], flips, strict=True))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    with pytest.raises(RemoteProtocolError, match="reserved header bytes are not zero"):
        decoder.feed(bytes(encoded))
    assert_failed_for_good(decoder)


# -- the receive buffer API (get_buffer / buffer_updated), as the link's transport drives it ---------

GATHER_MAX_FRAME_BYTES = 4 * wire.GATHER_MIN_BYTES  # room for WRITEs that are gathered in place
LARGE_WRITES = st.builds(wire.Write, u64, u64, u8, u16, u32s(3),
                         st.integers(wire.GATHER_MIN_BYTES - 100, 3 * wire.GATHER_MIN_BYTES).map(
                             lambda n: bytes(range(256)) * (n // 256) + b"\x07" * (n % 256)))


def receive(decoder: FrameDecoder, stream: bytes, reads: list[int]) -> list[wire.Message]:
    """Deliver ``stream`` as a transport would: each read fills at most the buffer handed out,
    ``reads`` (cycled) cap the read sizes; only RemoteProtocolError may escape."""
    out: list[wire.Message] = []
    pos, index = 0, 0
    while pos < len(stream):
        with decoder.get_buffer() as view:
            n = min(len(view), reads[index % len(reads)], len(stream) - pos)
            view[:n] = stream[pos : pos + n]
        index += 1
        pos += n
        decoder.buffer_updated(n)
        out += decoder.next_messages()
        if decoder.failed is not None:
            raise RemoteProtocolError(decoder.failed)
        assert buffered(decoder) < HEADER_BYTES + decoder.max_frame_bytes
    return out


@EXAMPLES
@given(st.lists(st.one_of(MESSAGES, LARGE_WRITES), min_size=1, max_size=5),
       st.lists(st.integers(1, 300_000), min_size=1, max_size=6))
def test_reads_into_the_decoders_buffers_decode_the_same(messages: list[wire.Message],
                                                        reads: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    assert receive(FrameDecoder(GATHER_MAX_FRAME_BYTES), stream, reads) == messages


@settings(max_examples=100, deadline=None)
@given(LARGE_WRITES, st.data())
def test_a_flipped_bit_in_a_gathered_write_is_refused(message: wire.Message, data: st.DataObject) -> None:
    # The payload was received in place, never through the frame buffer: the CRC still covers it.
    good = encode_frame(wire.Applied(3))
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(HEADER_BYTES, len(encoded) - 1), label="byte")
    encoded[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    reads = data.draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=4), label="reads")
    decoder = FrameDecoder(GATHER_MAX_FRAME_BYTES)
    with pytest.raises(RemoteProtocolError):
        receive(decoder, good + bytes(encoded) + good, reads)
    assert_failed_for_good(decoder)


def test_a_gathered_payload_never_takes_the_next_frames_bytes() -> None:
    large = wire.Write(1, 0, 0, 0, (), b"\x01" * (wire.GATHER_MIN_BYTES + 10))
    stream = encode_frame(large) + encode_frame(wire.Applied(9))
    decoder = FrameDecoder()
    decoder.push(stream[:1000])  # the gather starts
    assert decoder.next_messages() == []
    with decoder.get_buffer() as view:
        assert len(view) == len(encode_frame(large)) - 1000  # exactly the rest of its data
    assert receive(decoder, stream[1000:], [1 << 20]) == [large, wire.Applied(9)]


# -- WRITES: a group of plain writes in one frame (issue 15) ---------------------------------------

PLAIN_WRITES = st.builds(wire.Write, u64, u64, st.just(0), st.just(0), st.just(()),
                         st.binary(min_size=1, max_size=300))
BATCHES = st.lists(PLAIN_WRITES, min_size=1, max_size=6).map(wire.WriteBatch)
WITH_BATCHES = st.one_of(MESSAGES, BATCHES)


def expanded(messages: list[wire.Message]) -> list[wire.Message]:
    """What a decoder hands on for ``messages``: a WRITES frame's writes, one by one."""
    out: list[wire.Message] = []
    for message in messages:
        out += message.writes if isinstance(message, wire.WriteBatch) else [message]
    return out


@EXAMPLES
@given(st.lists(WITH_BATCHES, min_size=1, max_size=5), st.data())
def test_write_groups_decode_to_their_writes_in_order_in_any_chunking(
        messages: list[wire.Message], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    assert [m for chunk in split(stream, cuts) for m in feed_checked(decoder, chunk)] == expanded(messages)
    reads = data.draw(st.lists(st.integers(1, 5000), min_size=1, max_size=4))
    assert receive(FrameDecoder(MAX_FRAME_BYTES), stream, reads) == expanded(messages)
    one = FrameDecoder(MAX_FRAME_BYTES)  # next_message, one at a time, as during link setup
    one.push(stream)
    assert list(iter(one.next_message, None)) == expanded(messages)


@settings(max_examples=300, deadline=None)
@given(BATCHES, st.data())
def test_a_flipped_bit_in_a_write_group_is_refused(message: wire.WriteBatch, data: st.DataObject) -> None:
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, len(encoded) - 1), label="byte")
    encoded[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    feed_damaged(FrameDecoder(MAX_FRAME_BYTES), bytes(encoded), len(encoded) - HEADER_BYTES)


@settings(max_examples=300, deadline=None)
@given(BATCHES, st.data())
def test_a_damaged_header_byte_of_a_write_group_is_refused(message: wire.WriteBatch,
                                                           data: st.DataObject) -> None:
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, HEADER_BYTES - 1), label="byte")
    encoded[index] ^= data.draw(st.integers(1, 0xFF), label="xor")
    feed_damaged(FrameDecoder(MAX_FRAME_BYTES), bytes(encoded), len(encoded) - HEADER_BYTES)


@EXAMPLES
@given(BATCHES, st.data())
def test_a_damaged_write_group_after_good_frames_delivers_only_those(message: wire.WriteBatch,
                                                                     data: st.DataObject) -> None:
    good = encode_frame(wire.Write(1, 0, 0, 0, (), b"x"))
    encoded = bytearray(encode_frame(message))
    index = data.draw(st.integers(0, len(encoded) - 1), label="byte")
    assume(not 8 <= index < 12)  # a damaged length changes where the frame ends; tested above
    encoded[index] ^= data.draw(st.integers(1, 0xFF), label="xor")
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    decoder.push(good + bytes(encoded) + good)
    assert decoder.next_messages() == [wire.Write(1, 0, 0, 0, (), b"x")]  # none of the group
    assert decoder.failed is not None
    assert_failed_for_good(decoder)


@EXAMPLES
@given(BATCHES, st.data())
def test_a_truncated_write_group_yields_nothing_until_complete(message: wire.WriteBatch,
                                                               data: st.DataObject) -> None:
    encoded = encode_frame(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    assert feed_checked(decoder, encoded[:cut]) == []
    assert feed_checked(decoder, encoded[cut:]) == message.writes


@EXAMPLES
@given(BATCHES, st.data())
def test_well_framed_hostile_write_groups_decode_exactly_or_are_refused(message: wire.WriteBatch,
                                                                       data: st.DataObject) -> None:
    """A correct CRC over a malformed WRITES payload: refused, or decoded to writes that encode
    back to the same payload (no count, length or offset misread)."""
    _, valid = encode_payload(message)
    payload = mutated(valid, data)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    try:
        got = feed_checked(decoder, frame(MessageType.WRITES, payload))
    except RemoteProtocolError:
        assert_failed_for_good(decoder)
        return
    assert got and all(type(m) is wire.Write and not (m.flags or m.budget or m.removals) for m in got)
    assert encode_payload(wire.WriteBatch(got)) == (MessageType.WRITES, payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload, reason", [
    (b"", "shorter than its count"),
    (struct.pack(">I", 0), "0 writes"),
    (struct.pack(">I", wire.WRITES_MAX_COUNT + 1) + bytes(64), "writes \\(1 to"),
    (struct.pack(">IQQI", 1, 1, 0, 0), "a write of 0 bytes"),
    (struct.pack(">IQQI", 1, 1, 0, 5) + b"abcd", "does not fit"),
    (struct.pack(">IQQI", 1, 1, 0, 4) + b"abcde", "1 bytes beyond"),
    (struct.pack(">IQQI", 2, 1, 0, 4) + b"abcd", "table of 2 writes runs past"),
])
def test_inconsistent_write_groups_are_refused_by_name(payload: bytes, reason: str) -> None:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    with pytest.raises(RemoteProtocolError, match=reason):
        decoder.feed(frame(MessageType.WRITES, payload))
    assert_failed_for_good(decoder)


def test_a_write_group_over_its_size_bound_is_refused() -> None:
    # The bound is far below any peer's frame limit: a larger group is a broken peer.
    size = wire.WRITES_MAX_BYTES - wire.COUNT.size - wire.WRITES_ENTRY.size + 1
    payload = struct.pack(">IQQI", 1, 1, 0, size) + bytes(size)
    with pytest.raises(RemoteProtocolError, match="WRITES frame of"):
        FrameDecoder().feed(frame(MessageType.WRITES, payload))
