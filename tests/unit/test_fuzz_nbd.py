"""Hostile input for the NBD cores ("Security and hardening", "Hostile input").

``ServerHandshake`` and ``Transmission`` face any TCP client, so every byte is hostile. Each test
builds a stream from a valid prefix that puts the core in some state (before the client flags;
haggling after N valid options; after STRUCTURED_REPLY and SET_META_CONTEXT; in transmission,
between requests or inside a WRITE payload) and then attacks it: random bytes, bit flips of valid
messages, truncation at any byte, and declared lengths far beyond the limits.

The outcome is checked against a small reference framer written here from proto.md. It knows only
where messages begin and end, not what they mean, and that is enough to demand:

* every complete option is answered by exactly one final reply (ACK or an error), in order, until
  negotiation ends; every complete request gets exactly one outcome, a ``Request`` for the
  adapter (with the bytes the client sent, unchanged) or an error reply with its cookie;
* negotiation ends in at most one event, exactly at an option boundary, and hands every byte after
  it on as ``trailing``; after it the core produces nothing more;
* ``receive_data`` never raises while the core is reading (only ``LocalProtocolError`` once it
  has stopped, which is the adapter's mistake); the state is always a member of the state enum;
* nothing is buffered beyond one option of ``max_option_bytes`` or one request of ``max_payload``,
  whatever length a header declares;
* the outcome is the same whether the stream arrives whole, byte by byte or in random pieces.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import LocalProtocolError
from foresync.nbd.connection import (
    ConnectionFailed,
    ConnectionState,
    Disconnect,
    Event,
    Request,
    Transmission,
)
from foresync.nbd.handshake import (
    ExportInfo,
    ExportSelected,
    HandshakeAborted,
    HandshakeEvent,
    HandshakeFailed,
    HandshakeState,
    ServerHandshake,
)
from foresync.nbd.wire import Command, Errno, Info, Option, Reply

# -- the wire, written from proto.md ---------------------------------------------------------------

IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
CHUNK_MAGIC = 0x668E33EF
OPTION_HEADER_BYTES, REQUEST_HEADER_BYTES = 16, 28
FLAGS_OK = 3  # C_FIXED_NEWSTYLE | C_NO_ZEROES
FINAL = {Reply.ACK} | {r for r in Reply if r & (1 << 31)}  # ends the answer to one option

MAX_OPTION_BYTES = 64  # small, so oversized options are cheap to send whole
MAX_PAYLOAD = 64
SIZE = 8192
DISK = ExportInfo("disk", SIZE, description="fuzzed", max_block=MAX_PAYLOAD)
EXPORTS = {"disk": DISK}
EXAMPLES = settings(max_examples=150, deadline=None)


def option(opt: int, payload: bytes = b"", *, magic: int = IHAVEOPT, length: int | None = None) -> bytes:
    return struct.pack(">QII", magic, opt, len(payload) if length is None else length) + payload


def string(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def info_payload(name: bytes, *infos: int) -> bytes:
    return string(name) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta_payload(name: bytes, *queries: bytes) -> bytes:
    return string(name) + struct.pack(">I", len(queries)) + b"".join(string(q) for q in queries)


def request(command: int, offset: int = 0, length: int | None = None, *, data: bytes = b"",
            flags: int = 0, cookie: int = 0, magic: int = REQUEST_MAGIC) -> bytes:
    length = len(data) if length is None else length
    return struct.pack(">IHHQQI", magic, flags, command, cookie, offset, length) + data


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def buffered(core: ServerHandshake | Transmission) -> int:
    # The buffer bounds are internal promises (module docstrings) with no public accessor.
    return len(core._buf)


# -- reference framers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramedOption:
    option: int
    end: int  # stream offset just past it


def frame_options(stream: bytes, max_option_bytes: int) -> list[FramedOption]:
    """The complete options in a negotiation stream, in order, up to the first framing violation
    (bad client flags, bad magic, an EXPORT_NAME over the limit) or the first incomplete one."""
    if len(stream) < 4 or struct.unpack_from(">I", stream)[0] & ~FLAGS_OK:
        return []
    out: list[FramedOption] = []
    pos = 4
    while len(stream) - pos >= OPTION_HEADER_BYTES:
        magic, opt, length = struct.unpack_from(">QII", stream, pos)
        if magic != IHAVEOPT or (opt == Option.EXPORT_NAME and length > max_option_bytes):
            break
        end = pos + OPTION_HEADER_BYTES + length
        if end > len(stream):
            break
        out.append(FramedOption(opt, end))
        pos = end
    return out


@dataclass(frozen=True)
class FramedRequest:
    command: int
    flags: int
    cookie: int
    offset: int
    length: int
    data: bytes


def frame_requests(stream: bytes) -> tuple[list[FramedRequest], str]:
    """The complete requests in a transmission stream (a WRITE with all its payload, accepted or
    not), and how parsing ends: "open" (more may come), "disc" or "bad_magic"."""
    out: list[FramedRequest] = []
    pos = 0
    while len(stream) - pos >= REQUEST_HEADER_BYTES:
        magic, flags, command, cookie, offset, length = struct.unpack_from(">IHHQQI", stream, pos)
        if magic != REQUEST_MAGIC:
            return out, "bad_magic"
        pos += REQUEST_HEADER_BYTES
        if command == Command.DISC:
            return out, "disc"
        data = b""
        if command == Command.WRITE:
            if len(stream) - pos < length:
                break
            data = stream[pos : pos + length]
            pos += length
        out.append(FramedRequest(command, flags, cookie, offset, length, data))
    return out, "open"


# -- the handshake: driving and checking -------------------------------------------------------------


@dataclass(frozen=True)
class OptionReply:
    option: int
    type: int
    data: bytes


def decode_option_replies(out: bytes) -> tuple[list[OptionReply], bytes]:
    """Option replies, and what follows the last one (an EXPORT_NAME reply is not one)."""
    replies: list[OptionReply] = []
    pos = 0
    while len(out) - pos >= 20 and struct.unpack_from(">Q", out, pos)[0] == REPLY_MAGIC:
        _, opt, reply_type, length = struct.unpack_from(">QIII", out, pos)
        assert pos + 20 + length <= len(out), "torn option reply"
        replies.append(OptionReply(opt, reply_type, out[pos + 20 : pos + 20 + length]))
        pos += 20 + length
    return replies, out[pos:]


@dataclass(frozen=True)
class HandshakeOutcome:
    output: bytes
    event: HandshakeEvent | None  # an ExportSelected's trailing includes the bytes left unfed
    state: HandshakeState
    options_seen: int


def run_handshake(stream: bytes, cuts: list[int], max_option_bytes: int = MAX_OPTION_BYTES,
                  ) -> HandshakeOutcome:
    """Feed ``stream`` in pieces as the adapter does, checking the invariants after every call,
    and stop at the first event."""
    hs = ServerHandshake(EXPORTS, default_export="disk", max_option_bytes=max_option_bytes)
    assert len(hs.data_to_send()) == 18  # the greeting
    output, event, fed = b"", None, 0
    for chunk in split(stream, cuts):
        hs.receive_data(chunk)  # any exception here fails the test
        fed += len(chunk)
        output += hs.data_to_send()
        assert isinstance(hs.state, HandshakeState)
        event = hs.next_event()
        assert hs.next_event() is None, "negotiation ends in exactly one event"
        if event is not None:
            break
        assert hs.state in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING)
        limit = 4 if hs.state is HandshakeState.AWAIT_CLIENT_FLAGS else OPTION_HEADER_BYTES + max_option_bytes
        assert buffered(hs) < limit
    if event is None:
        return HandshakeOutcome(output, None, hs.state, hs.options_seen)
    terminal = {ExportSelected: HandshakeState.TRANSMISSION, HandshakeAborted: HandshakeState.CLOSED,
                HandshakeFailed: HandshakeState.ERROR}
    assert hs.state is terminal[type(event)]
    # After the event the core is done: feeding it more is the adapter's bug, and changes nothing.
    with pytest.raises(LocalProtocolError):
        hs.receive_data(b"\0" * 32)
    assert (hs.data_to_send(), hs.next_event()) == (b"", None)
    if isinstance(event, ExportSelected):
        event = replace(event, trailing=event.trailing + stream[fed:])
    return HandshakeOutcome(output, event, hs.state, hs.options_seen)


def check_handshake(stream: bytes, outcome: HandshakeOutcome,
                    max_option_bytes: int = MAX_OPTION_BYTES) -> None:
    """Hold the outcome against the reference framing of ``stream``."""
    framed = frame_options(stream, max_option_bytes)
    replies, rest = decode_option_replies(outcome.output)
    assert {r.type for r in replies} <= set(Reply)
    answers: list[list[OptionReply]] = [[]]
    for reply in replies:
        answers[-1].append(reply)
        if reply.type in FINAL:
            answers.append([])
    assert answers.pop() == [], "every answer ends in a final reply"
    # Answers follow the options in order, one each, each about its own option.
    assert len(answers) <= len(framed)
    for answer, opt in zip(answers, framed, strict=False):
        assert {r.option for r in answer} == {opt.option}
    event = outcome.event
    if event is None:
        assert len(answers) == len(framed), "a complete option went unanswered"
        assert rest == b""
        return
    if isinstance(event, ExportSelected):
        consumed = len(stream) - len(event.trailing)
        assert stream[consumed:] == event.trailing
        if answers and consumed == framed[len(answers) - 1].end:  # GO, answered with ACK
            assert framed[len(answers) - 1].option == Option.GO
            assert rest == b""
        else:  # EXPORT_NAME: no option reply, just size and flags (and padding without NO_ZEROES)
            assert consumed == framed[len(answers)].end
            assert framed[len(answers)].option == Option.EXPORT_NAME
            assert rest[:10] == struct.pack(">QH", event.export.size, event.transmission_flags)
            no_zeroes = struct.unpack_from(">I", stream)[0] & 2
            assert rest[10:] == (b"" if no_zeroes else bytes(124))
        assert event.export is DISK
    elif isinstance(event, HandshakeAborted):
        assert framed[len(answers) - 1].option == Option.ABORT
        assert rest == b""
    else:
        assert isinstance(event, HandshakeFailed) and event.reason
        assert rest == b""


# -- handshake streams -----------------------------------------------------------------------------

HARMLESS_OPTIONS = [  # answered, negotiation continues
    option(Option.LIST),
    option(Option.INFO, info_payload(b"disk", Info.NAME, Info.DESCRIPTION)),
    option(Option.INFO, info_payload(b"nope")),
    option(Option.LIST_META_CONTEXT, meta_payload(b"disk", b"base:allocation")),
    option(Option.STARTTLS),  # no TLS configured: ERR_UNSUP
    option(0x1234, b"what"),
]
SETUP = {  # valid prefixes that leave negotiation in a particular state
    "before_flags": b"",
    "negotiating": struct.pack(">I", FLAGS_OK),
    "no_zeroes_off": struct.pack(">I", 1),
    "structured": struct.pack(">I", FLAGS_OK) + option(Option.STRUCTURED_REPLY),
    "meta_context": struct.pack(">I", FLAGS_OK) + option(Option.STRUCTURED_REPLY)
    + option(Option.SET_META_CONTEXT, meta_payload(b"disk", b"base:allocation")),
    "mid_oversized_skip": struct.pack(">I", FLAGS_OK) + option(Option.INFO, length=MAX_OPTION_BYTES + 50)
    + bytes(20),
}
TERMINAL = [
    option(Option.GO, info_payload(b"disk")),
    option(Option.GO, info_payload(b"")),
    option(Option.EXPORT_NAME, b"disk"),
    option(Option.ABORT),
]
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def hostile_options(draw: st.DrawFn) -> bytes:
    """One hostile unit for option haggling."""
    # Weighted towards the answerable kinds, which keep negotiation going for the next unit.
    kind = draw(st.sampled_from(["any_option", "any_option", "oversized", "huge_inner_length",
                                 "bad_utf8", "counts", "counts", "random", "bad_magic", "short",
                                 "huge_export_name"]))
    opt = draw(st.sampled_from([*Option, 0, 12, 0xFFFFFFFF]))
    if kind == "random":
        return draw(st.binary(max_size=40))
    if kind == "any_option":
        return option(opt, draw(st.binary(max_size=MAX_OPTION_BYTES + 8)))
    if kind == "bad_magic":
        return option(opt, magic=draw(st.integers(0, (1 << 64) - 1).filter(lambda m: m != IHAVEOPT)))
    if kind == "short":  # the declared length runs past what is sent
        return option(opt, length=draw(st.integers(1, MAX_OPTION_BYTES)))
    if kind == "oversized":
        length = draw(st.one_of(st.integers(MAX_OPTION_BYTES + 1, 200), st.integers(201, 0xFFFFFFFF)))
        return option(opt, length=length) + draw(st.binary(max_size=100))
    if kind == "huge_export_name":
        return option(Option.EXPORT_NAME, length=draw(st.integers(MAX_OPTION_BYTES + 1, 0xFFFFFFFF)))
    if kind == "huge_inner_length":  # a string length inside the payload, far past its end
        inner = struct.pack(">I", draw(st.sampled_from([5, 4097, 0xFFFFFFFF]))) + b"disk"
        return option(draw(st.sampled_from([Option.INFO, Option.GO, Option.SET_META_CONTEXT,
                                            Option.LIST_META_CONTEXT])), inner)
    if kind == "bad_utf8":
        name = draw(st.sampled_from([b"\xff", b"di\xc3sk", b"\xed\xa0\x80"]))
        return option(opt, info_payload(name) if opt != Option.EXPORT_NAME else name)
    count = draw(st.sampled_from([1, 2, 0xFFFF, 0xFFFFFFFF]))
    payload = (string(b"disk") + struct.pack(">H", count & 0xFFFF) if opt in (Option.INFO, Option.GO)
               else string(b"disk") + struct.pack(">I", count) + string(b"base:allocation"))
    return option(opt, payload)


@st.composite
def handshake_streams(draw: st.DrawFn) -> bytes:
    stream = draw(st.sampled_from(list(SETUP.values())))
    if stream == b"":
        stream = draw(st.one_of(st.just(struct.pack(">I", FLAGS_OK)), st.binary(max_size=8)))
    stream += b"".join(draw(st.lists(st.sampled_from(HARMLESS_OPTIONS), max_size=4)))
    stream += b"".join(draw(st.lists(hostile_options(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        stream += draw(st.sampled_from(TERMINAL)) + draw(st.binary(max_size=40))
    return stream


@st.composite
def mutated(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> bytes:
    """A stream, possibly truncated or with one bit flipped."""
    stream = draw(streams)
    how = draw(st.sampled_from(["as_is", "truncated", "bit_flip"]))
    if how == "truncated" and stream:
        return stream[: draw(st.integers(0, len(stream) - 1))]
    if how == "bit_flip" and stream:
        index = draw(st.integers(0, len(stream) - 1))
        flipped = bytearray(stream)
        flipped[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped)
    return stream


def cuts_for(data: st.DataObject, stream: bytes, max_size: int = 12) -> list[int]:
    return data.draw(st.lists(st.integers(0, len(stream)), max_size=max_size), label="cuts")


# -- handshake properties --------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(mutated(handshake_streams()), st.data())
def test_hostile_negotiation_in_every_state_has_only_documented_outcomes(
    stream: bytes, data: st.DataObject,
) -> None:
    check_handshake(stream, run_handshake(stream, cuts_for(data, stream)))


@EXAMPLES
@given(mutated(handshake_streams()), st.data())
def test_negotiation_is_the_same_whole_bytewise_and_in_pieces(stream: bytes,
                                                              data: st.DataObject) -> None:
    whole = run_handshake(stream, [])
    assert run_handshake(stream, list(range(len(stream)))) == whole
    assert run_handshake(stream, cuts_for(data, stream)) == whole


@EXAMPLES
@given(st.sampled_from(sorted(SETUP)), st.binary(max_size=120), st.data())
def test_random_bytes_in_each_negotiation_state(state: str, garbage: bytes,
                                                data: st.DataObject) -> None:
    stream = SETUP[state] + garbage
    outcome = run_handshake(stream, cuts_for(data, stream))
    check_handshake(stream, outcome)
    # Random bytes do not make a GO or an ABORT: either needs the 8-byte option magic.
    assert not isinstance(outcome.event, ExportSelected | HandshakeAborted)


@EXAMPLES
@given(st.sampled_from(sorted(SETUP)), st.data())
def test_a_truncated_negotiation_never_selects_an_export(state: str, data: st.DataObject) -> None:
    stream = SETUP[state] + (struct.pack(">I", FLAGS_OK) if state == "before_flags" else b"")
    stream += b"".join(data.draw(st.lists(st.sampled_from(HARMLESS_OPTIONS), max_size=3)))
    stream += data.draw(st.sampled_from(TERMINAL))
    cut = data.draw(st.integers(0, len(stream) - 1))
    outcome = run_handshake(stream[:cut], cuts_for(data, stream[:cut]))
    check_handshake(stream[:cut], outcome)
    assert not isinstance(outcome.event, ExportSelected | HandshakeAborted)
    # The skip left by "mid_oversized_skip" swallows the start of what follows, so the rest is
    # misframed and may fail; from any other state a cut stream just waits for more.
    if state != "mid_oversized_skip":
        assert outcome.event is None
        assert outcome.state in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING)


@EXAMPLES
@given(st.sampled_from([o for o in [*Option, 0, 0xFFFFFFFF] if o != Option.EXPORT_NAME]),
       st.integers(MAX_OPTION_BYTES + 1, 0xFFFFFFFF), st.integers(1, 4096))
def test_an_oversized_option_is_discarded_without_buffering(opt: int, length: int,
                                                            chunk_bytes: int) -> None:
    hs = ServerHandshake(EXPORTS, default_export="disk", max_option_bytes=MAX_OPTION_BYTES)
    hs.data_to_send()
    hs.receive_data(struct.pack(">I", FLAGS_OK) + option(opt, length=length))
    sent = 0
    budget = min(length, 64 * 1024)
    while sent < budget:
        n = min(chunk_bytes, budget - sent)
        hs.receive_data(b"\xa5" * n)
        sent += n
        assert buffered(hs) == 0
        out = hs.data_to_send()
        if sent < length:
            assert out == b"", "answered only once the last byte is gone"
        else:
            replies, rest = decode_option_replies(out)
            assert (replies, rest) == ([OptionReply(opt, Reply.ERR_TOO_BIG, replies[0].data)], b"")
    assert hs.state is HandshakeState.NEGOTIATING
    assert hs.next_event() is None


@EXAMPLES
@given(st.integers(MAX_OPTION_BYTES + 1, 0xFFFFFFFF),
       st.sampled_from(["negotiating", "no_zeroes_off", "structured", "meta_context"]))
def test_an_oversized_export_name_fails_from_its_header_alone(length: int, state: str) -> None:
    stream = SETUP[state] + option(Option.EXPORT_NAME, length=length)
    outcome = run_handshake(stream, [])
    assert isinstance(outcome.event, HandshakeFailed)
    check_handshake(stream, outcome)


# -- transmission: driving and checking ---------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReply:
    cookie: int
    errno: int
    structured: bool


def decode_error_replies(out: bytes) -> list[ErrorReply]:
    """Replies the core makes itself are errors: simple, or one structured ERROR chunk."""
    replies: list[ErrorReply] = []
    pos = 0
    while pos < len(out):
        (magic,) = struct.unpack_from(">I", out, pos)
        if magic == SIMPLE_MAGIC:
            _, errno, cookie = struct.unpack_from(">IIQ", out, pos)
            replies.append(ErrorReply(cookie, errno, False))
            pos += 16
            continue
        assert magic == CHUNK_MAGIC, f"bad reply magic 0x{magic:08x}"
        _, flags, chunk_type, cookie, length = struct.unpack_from(">IHHQI", out, pos)
        assert (flags, chunk_type, length) == (1, (1 << 15) + 1, 6)  # DONE, ERROR, empty message
        errno, message_length = struct.unpack_from(">IH", out, pos + 20)
        assert message_length == 0
        replies.append(ErrorReply(cookie, errno, True))
        pos += 20 + length
    return replies


@dataclass(frozen=True)
class TransmissionOutcome:
    events: list[Event]
    replies: bytes
    state: ConnectionState
    in_flight: int


def new_transmission(structured: bool = True, meta: tuple[int, ...] = (1,),
                     export: ExportInfo = DISK) -> Transmission:
    return Transmission(export, structured, meta, max_payload=MAX_PAYLOAD)


def run_transmission(tx: Transmission, stream: bytes, cuts: list[int]) -> TransmissionOutcome:
    events: list[Event] = []
    replies = b""
    for chunk in split(stream, cuts):
        was_open = tx.state is ConnectionState.OPEN
        more, out = tx.receive_data(chunk)  # never raises: damage is an event
        if not was_open:
            assert (more, out) == ([], b""), "nothing after DISC or a failure"
        events += more
        replies += out
        assert isinstance(tx.state, ConnectionState)
        if tx.state is ConnectionState.OPEN:
            assert buffered(tx) < REQUEST_HEADER_BYTES + tx.max_payload
    return TransmissionOutcome(events, replies, tx.state, tx.in_flight)


def check_transmission(stream: bytes, outcome: TransmissionOutcome, tx: Transmission) -> None:
    framed, end = frame_requests(stream)
    requests = [e for e in outcome.events if isinstance(e, Request)]
    ends = [e for e in outcome.events if not isinstance(e, Request)]
    assert outcome.events == requests + ends, "nothing is parsed after DISC or a bad magic"
    expected_end = {"open": [], "disc": [Disconnect], "bad_magic": [ConnectionFailed]}[end]
    assert [type(e) for e in ends] == expected_end
    assert outcome.state is {"open": ConnectionState.OPEN, "disc": ConnectionState.DRAINING,
                             "bad_magic": ConnectionState.ERROR}[end]
    assert outcome.in_flight == len(requests)
    # Each complete request, in order, becomes its Request (unchanged) or an error reply.
    errors = decode_error_replies(outcome.replies)
    pending_requests, pending_errors = iter(requests), iter(errors)
    next_request, next_error = next(pending_requests, None), next(pending_errors, None)
    for f in framed:
        as_request = Request(f.command, f.flags, f.cookie, f.offset, f.length, f.data)
        if next_request == as_request:
            next_request = next(pending_requests, None)
            assert f.command in set(Command) - {Command.DISC}
            assert f.flags & ~0x1F == 0
            assert f.command == Command.FLUSH or f.offset + f.length <= tx.export.size
            assert f.command not in (Command.READ, Command.WRITE) or f.length <= tx.max_payload
        else:
            assert next_error is not None and next_error.cookie == f.cookie, f"{f} got no answer"
            assert next_error.errno in (Errno.EPERM, Errno.EINVAL, Errno.ENOSPC)
            assert next_error.structured == (tx.structured and f.command in (Command.READ,
                                                                             Command.BLOCK_STATUS))
            next_error = next(pending_errors, None)
    assert (next_request, next_error) == (None, None), "an answer to a request never sent"


# -- transmission streams ----------------------------------------------------------------------------

COMMANDS = st.sampled_from([*Command, 8, 0xFFFF])
OFFSETS = st.one_of(st.sampled_from([0, SIZE - 1, SIZE, (1 << 64) - 1]), st.integers(0, 2 * SIZE))
LENGTHS = st.one_of(st.sampled_from([0, 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xFFFFFFFF]),
                    st.integers(0, 2 * MAX_PAYLOAD))
FLAG_BITS = st.sampled_from([0, 1, 2, 4, 8, 16, 32, 0x8000, 0xFFFF])


@st.composite
def hostile_requests(draw: st.DrawFn, cookie: int) -> bytes:
    # Weighted towards the answerable kinds, which keep the connection going for the next unit.
    kind = draw(st.sampled_from(["any", "any", "any", "write", "write", "huge_write", "random",
                                 "bad_magic", "short"]))
    if kind == "random":
        return draw(st.binary(max_size=60))
    if kind == "bad_magic":
        magic = draw(u32.filter(lambda m: m != REQUEST_MAGIC))
        return request(Command.READ, magic=magic, cookie=cookie)
    command, offset, flags = draw(COMMANDS), draw(OFFSETS), draw(FLAG_BITS)
    if kind == "write":
        return request(Command.WRITE, offset, data=draw(st.binary(max_size=MAX_PAYLOAD + 8)),
                       flags=flags, cookie=cookie)
    if kind == "huge_write":  # a WRITE whose declared payload is far over the limit
        length = draw(st.integers(MAX_PAYLOAD + 1, 0xFFFFFFFF))
        return request(Command.WRITE, offset, length, flags=flags, cookie=cookie) + draw(
            st.binary(max_size=100))
    raw = request(command, offset, draw(LENGTHS), flags=flags, cookie=cookie)
    return raw[: draw(st.integers(0, len(raw) - 1))] if kind == "short" else raw


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    valid = [request(Command.READ, 0, 16, cookie=1), request(Command.WRITE, 64, data=b"w" * 8, cookie=2),
             request(Command.FLUSH, cookie=3), request(Command.BLOCK_STATUS, 0, SIZE, cookie=4)]
    stream = b"".join(draw(st.lists(st.sampled_from(valid), max_size=4)))
    if draw(st.booleans()):  # start the attack inside a valid WRITE payload
        stream += request(Command.WRITE, 0, data=b"payload!", cookie=5)[: -draw(st.integers(1, 8))]
    parts = draw(st.lists(st.integers(100, 10_000), min_size=1, max_size=4))
    stream += b"".join(draw(hostile_requests(cookie)) for cookie in parts)
    if draw(st.booleans()):
        stream += request(Command.DISC) + draw(st.binary(max_size=40))
    return stream


# -- transmission properties --------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(mutated(request_streams()), st.booleans(), st.data())
def test_hostile_requests_have_only_documented_outcomes(stream: bytes, structured: bool,
                                                        data: st.DataObject) -> None:
    tx = new_transmission(structured, (1,) if structured else ())
    check_transmission(stream, run_transmission(tx, stream, cuts_for(data, stream)), tx)


@EXAMPLES
@given(mutated(request_streams()), st.data())
def test_transmission_is_the_same_whole_bytewise_and_in_pieces(stream: bytes,
                                                               data: st.DataObject) -> None:
    whole = run_transmission(new_transmission(), stream, [])
    assert run_transmission(new_transmission(), stream, list(range(len(stream)))) == whole
    assert run_transmission(new_transmission(), stream, cuts_for(data, stream)) == whole


@EXAMPLES
@given(st.binary(max_size=300), st.data())
def test_random_bytes_in_transmission(stream: bytes, data: st.DataObject) -> None:
    tx = new_transmission()
    outcome = run_transmission(tx, stream, cuts_for(data, stream))
    check_transmission(stream, outcome, tx)


@EXAMPLES
@given(st.integers(MAX_PAYLOAD + 1, 0xFFFFFFFF), st.integers(1, 4096), st.booleans())
def test_an_oversized_write_is_discarded_without_buffering(length: int, chunk_bytes: int,
                                                           in_range: bool) -> None:
    tx = new_transmission()
    offset = 0 if in_range else SIZE
    events, replies = tx.receive_data(request(Command.WRITE, offset, length, cookie=9))
    assert (events, replies) == ([], b"")
    sent, budget = 0, min(length, 64 * 1024)
    while sent < budget:
        n = min(chunk_bytes, budget - sent)
        events, replies = tx.receive_data(b"\x5a" * n)
        sent += n
        assert events == []
        assert buffered(tx) == 0
        # The EINVAL goes out only once the whole payload is consumed, never before.
        assert (replies != b"") == (sent == length)
    assert tx.state is ConnectionState.OPEN
    assert tx.in_flight == 0


@EXAMPLES
@given(st.sampled_from([Command.READ, Command.BLOCK_STATUS, Command.CACHE, Command.TRIM,
                        Command.WRITE_ZEROES]), st.integers(MAX_PAYLOAD + 1, 0xFFFFFFFF))
def test_huge_lengths_without_payload_are_answered_at_once(command: int, length: int) -> None:
    tx = new_transmission()
    stream = request(command, 0, length, cookie=3)
    outcome = run_transmission(tx, stream, [])
    check_transmission(stream, outcome, tx)
    assert buffered(tx) == 0
    if command == Command.READ or length > SIZE:
        assert [r.cookie for r in decode_error_replies(outcome.replies)] == [3]


# -- negotiation into transmission -----------------------------------------------------------------


def run_session(stream: bytes, cuts: list[int]) -> tuple[HandshakeOutcome, TransmissionOutcome | None]:
    """Negotiate, then hand ``trailing`` to a Transmission as the adapter does."""
    hs_outcome = run_handshake(stream, cuts)
    event = hs_outcome.event
    if not isinstance(event, ExportSelected):
        return hs_outcome, None
    tx = Transmission(event.export, event.structured_replies, event.meta_contexts,
                      max_payload=event.export.max_block)
    rest_cuts = [c - (len(stream) - len(event.trailing)) for c in cuts]
    tx_outcome = run_transmission(tx, event.trailing, [c for c in rest_cuts if c > 0])
    check_transmission(event.trailing, tx_outcome, tx)
    return hs_outcome, tx_outcome


@st.composite
def sessions(draw: st.DrawFn) -> bytes:
    stream = draw(st.sampled_from([v for k, v in SETUP.items() if k not in ("before_flags",)]))
    stream += b"".join(draw(st.lists(st.sampled_from(HARMLESS_OPTIONS), max_size=3)))
    stream += draw(st.sampled_from(TERMINAL[:3]))
    return stream + draw(request_streams())


@settings(max_examples=200, deadline=None)
@given(mutated(sessions()), st.data())
def test_hostile_sessions_cross_into_transmission_unchanged(stream: bytes,
                                                            data: st.DataObject) -> None:
    whole = run_session(stream, [])
    check_handshake(stream, whole[0])
    assert run_session(stream, cuts_for(data, stream)) == whole


def test_the_fuzzing_reaches_every_state() -> None:
    """The prefixes really put the core where the tests claim (guards the generators)."""
    states: dict[str, tuple[HandshakeState, int]] = {}
    for name, prefix in SETUP.items():
        hs = ServerHandshake(EXPORTS, default_export="disk", max_option_bytes=MAX_OPTION_BYTES)
        hs.receive_data(prefix)
        states[name] = (hs.state, hs.options_seen)
    assert states == {
        "before_flags": (HandshakeState.AWAIT_CLIENT_FLAGS, 0),
        "negotiating": (HandshakeState.NEGOTIATING, 0),
        "no_zeroes_off": (HandshakeState.NEGOTIATING, 0),
        "structured": (HandshakeState.NEGOTIATING, 1),
        "meta_context": (HandshakeState.NEGOTIATING, 2),
        "mid_oversized_skip": (HandshakeState.NEGOTIATING, 1),
    }
    hs_outcome, tx_outcome = run_session(SETUP["meta_context"] + TERMINAL[0], [])
    assert isinstance(hs_outcome.event, ExportSelected)
    assert hs_outcome.event.meta_contexts == (1,)
    assert tx_outcome is not None and tx_outcome.state is ConnectionState.OPEN
