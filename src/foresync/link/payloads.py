"""Encode and decode of the link's message payloads (layouts: link/messages.py), pure.

A payload arrives here checked: its frame's CRC32C matched (link/frames.py). Anything malformed
inside it (a list running past the frame, trailing bytes, an unknown type, bad UTF-8) is a
RemoteProtocolError naming the message. A WRITE is the hot path, one per host write: its encode
keeps the data apart (``encode_parts``) so that it is never copied on its way to the socket, and
its decode runs before any enum lookup.
"""

from __future__ import annotations

import struct

from foresync.errors import RemoteProtocolError, invariant
from foresync.link import messages, object_wire
from foresync.link.messages import (
    CHECKSUM_CHUNK_EXTENTS,
    MAX_ROUTE_BYTES,
    RUN,
    WRITES_MAX_BYTES,
    WRITES_MAX_COUNT,
    Added,
    Applied,
    AuthChallenge,
    AuthProof,
    AuthResponse,
    Checksums,
    Demote,
    Durable,
    Hashes,
    Hello,
    Message,
    MessageType,
    Ping,
    Pong,
    Refuse,
    Remove,
    ResyncDone,
    ResyncDoneAck,
    ResyncProgress,
    ResyncSet,
    ResyncSetDurable,
    Route,
    StorageFailed,
    Sync,
    Verify,
    Welcome,
    Write,
    WriteBatch,
    Zero,
)

# The layouts, bound here rather than imported by name: CPython 3.11 compiles ``NAME.pack(...)``
# of a name an import bound as an attribute load and a call (a bound method made per call), not
# as a method call: 1.26 against 1.12 us per 4 KiB WRITE encoded (bench/wire_frames.py).
AUTH_CHALLENGE = messages.AUTH_CHALLENGE
AUTH_RESPONSE = messages.AUTH_RESPONSE
COUNT = messages.COUNT
HELLO = messages.HELLO
NAME_LENGTH = messages.NAME_LENGTH
RANGE = messages.RANGE
SEQ = messages.SEQ
STORAGE_FAILED = messages.STORAGE_FAILED
VERIFY = messages.VERIFY
WELCOME = messages.WELCOME
WRITE = messages.WRITE
ZERO = messages.ZERO

_WRITE_KIND = int(MessageType.WRITE)  # ints: compared per frame without enum lookups
_WRITES_KIND = int(MessageType.WRITES)
_OBJECT_CLASSES = object_wire.ObjectMessage.__args__


def _u32s(values: tuple[int, ...]) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _runs(runs: tuple[tuple[int, int], ...]) -> bytes:
    """LIST(u32 first, u32 count)."""
    flat = tuple(value for run in runs for value in run)
    return COUNT.pack(len(runs)) + _u32s(flat)


def _pairs(flat: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def _names(names: tuple[str, ...]) -> bytes:
    """u32 n, then n x (u16 length, UTF-8 bytes): the names of a group's members."""
    parts = [COUNT.pack(len(names))]
    for name in names:
        data = name.encode()
        parts += [NAME_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def _list(code: str, values: tuple[int, ...]) -> bytes:
    return COUNT.pack(len(values)) + struct.pack(f">{len(values)}{code}", *values)


class _Lists:
    """Bounds-checked reading of LIST(x) sections after a message's fixed part."""

    def __init__(self, payload: bytes, start: int, what: str) -> None:
        if len(payload) < start:
            raise RemoteProtocolError(f"{what} payload shorter than its fixed part")
        self._payload = payload
        self._pos = start
        self._what = what

    def _count(self, item_size: int) -> int:
        if self._pos + 4 > len(self._payload):
            raise RemoteProtocolError(f"{self._what}: a list count runs past the frame")
        (count,) = COUNT.unpack_from(self._payload, self._pos)
        self._pos += 4
        if self._pos + count * item_size > len(self._payload):
            raise RemoteProtocolError(f"{self._what}: a list of {count} items runs past the frame")
        return int(count)

    def take(self, code: str) -> tuple[int, ...]:
        size = struct.calcsize(f">{code}")
        count = self._count(size)
        values = struct.unpack_from(f">{count}{code}", self._payload, self._pos)
        self._pos += count * size
        return tuple(values)

    def take_runs(self) -> tuple[tuple[int, int], ...]:
        count = self._count(RUN.size)
        flat = struct.unpack_from(f">{2 * count}I", self._payload, self._pos)
        self._pos += count * RUN.size
        return _pairs(flat)

    def take_ranges(self) -> tuple[tuple[int, int, int], ...]:
        count = self._count(RANGE.size)
        ranges = tuple(RANGE.unpack_from(self._payload, self._pos + i * RANGE.size) for i in range(count))
        self._pos += count * RANGE.size
        return ranges

    def take_names(self) -> tuple[str, ...]:
        """u32 n, then n x (u16 length, UTF-8 bytes)."""
        count = self._count(NAME_LENGTH.size)
        names = []
        for _ in range(count):
            if self._pos + NAME_LENGTH.size > len(self._payload):
                raise RemoteProtocolError(f"{self._what}: a name runs past the frame")
            (length,) = NAME_LENGTH.unpack_from(self._payload, self._pos)
            self._pos += NAME_LENGTH.size
            if self._pos + length > len(self._payload):
                raise RemoteProtocolError(f"{self._what}: a name of {length} bytes runs past the frame")
            try:
                names.append(bytes(self._payload[self._pos:self._pos + length]).decode())
            except UnicodeDecodeError:
                raise RemoteProtocolError(f"{self._what}: a name is not UTF-8") from None
            self._pos += length
        return tuple(names)

    def remaining(self) -> int:
        """Bytes not yet read: an optional trailing list follows when there are any."""
        return len(self._payload) - self._pos

    def finish(self) -> None:
        if self._pos != len(self._payload):
            raise RemoteProtocolError(f"{self._what}: {len(self._payload) - self._pos} unexpected trailing bytes")


def read_u32s(payload: bytes, start: int, count: int, what: str) -> tuple[int, ...]:
    end = start + 4 * count
    if end > len(payload):
        raise RemoteProtocolError(f"{what}: list of {count} extents runs past the frame")
    return struct.unpack_from(f">{count}I", payload, start)


def encode_payload(message: Message) -> tuple[int, bytes]:
    """(message type, payload bytes) for ``message``."""
    kind, head, data = encode_parts(message)
    return kind, head + data if data else head


def encode_parts(message: Message) -> tuple[int, bytes, bytes]:
    """(message type, payload head, data): a WRITE's data is kept apart, so that it is not
    copied on its way to the socket; every other payload is all head."""
    if type(message) is Write:  # the hot path: one per host write
        removals = message.removals
        head = WRITE.pack(message.seq, message.offset, message.flags, message.budget, len(removals))
        return _WRITE_KIND, head + _u32s(removals) if removals else head, message.data  # an int: packs faster
    if type(message) is WriteBatch:
        return _WRITES_KIND, writes_table(message.writes), b"".join(w.data for w in message.writes)
    if isinstance(message, _OBJECT_CLASSES):
        return object_wire.encode(message)
    return (*_encode_other(message), b"")


def writes_table(writes: list[Write]) -> bytes:
    """A WRITES frame's head: u32 n, then n x (u64 seq, u64 offset, u32 length)."""
    invariant(0 < len(writes) <= WRITES_MAX_COUNT, "WRITES count")
    flat: list[int] = [len(writes)]
    for write in writes:
        invariant(not (write.flags or write.budget or write.removals), "WRITES carries plain writes only")
        flat += (write.seq, write.offset, len(write.data))
    return writes_struct(len(writes)).pack(*flat)


_WRITES_STRUCTS: dict[int, struct.Struct] = {}


def writes_struct(count: int) -> struct.Struct:
    """The Struct of a WRITES head of ``count`` entries (made once per count)."""
    made = _WRITES_STRUCTS.get(count)
    if made is None:
        made = _WRITES_STRUCTS[count] = struct.Struct(">I" + "QQI" * count)
    return made


def _decode_writes(payload: bytes) -> WriteBatch:
    """A checked WRITES payload's writes; any inconsistency is a RemoteProtocolError."""
    if len(payload) < COUNT.size:
        raise RemoteProtocolError("WRITES frame shorter than its count")
    if len(payload) > WRITES_MAX_BYTES:
        raise RemoteProtocolError(f"WRITES frame of {len(payload)} bytes (at most {WRITES_MAX_BYTES})")
    (count,) = COUNT.unpack_from(payload)
    if not 0 < count <= WRITES_MAX_COUNT:
        raise RemoteProtocolError(f"WRITES frame of {count} writes (1 to {WRITES_MAX_COUNT})")
    layout = writes_struct(count)
    if layout.size > len(payload):
        raise RemoteProtocolError(f"WRITES table of {count} writes runs past the frame")
    flat = layout.unpack_from(payload)
    pos = layout.size
    writes: list[Write] = []
    for index in range(1, 3 * count + 1, 3):
        length = flat[index + 2]
        if length == 0 or pos + length > len(payload):
            raise RemoteProtocolError(f"WRITES: a write of {length} bytes at {pos} does not fit the frame")
        writes.append(Write(flat[index], flat[index + 1], 0, 0, (), payload[pos : pos + length]))
        pos += length
    if pos != len(payload):
        raise RemoteProtocolError(f"WRITES: {len(payload) - pos} bytes beyond its writes' data")
    return WriteBatch(writes)


def _encode_other(message: Message) -> tuple[int, bytes]:
    match message:
        case Zero(seq, offset, length, flags, budget, removals):
            return MessageType.ZERO, ZERO.pack(seq, offset, length, flags, budget, len(removals)) + _u32s(removals)
        case Applied(seq):
            return MessageType.APPLIED, SEQ.pack(seq)
        case Durable(seq):
            return MessageType.DURABLE, SEQ.pack(seq)
        case Added(seq, extents):
            return MessageType.ADDED, SEQ.pack(seq) + _u32s(extents)
        case Sync(seq):
            return MessageType.SYNC, SEQ.pack(seq)
        case Remove(extents, ranges_done):
            body = COUNT.pack(len(extents)) + _u32s(extents)
            return MessageType.REMOVE, body + struct.pack(f">{len(ranges_done)}Q", *ranges_done)
        case Ping(ts):
            return MessageType.PING, SEQ.pack(ts)
        case Pong(ts):
            return MessageType.PONG, SEQ.pack(ts)
        case ResyncDone(seq):
            return MessageType.RESYNC_DONE, SEQ.pack(seq)
        case ResyncDoneAck(seq):
            return MessageType.RESYNC_DONE_ACK, SEQ.pack(seq)
        case ResyncSetDurable(set_id):
            return MessageType.RESYNC_SET_DURABLE, SEQ.pack(set_id)
        case ResyncSet(set_id, runs):
            return MessageType.RESYNC_SET, SEQ.pack(set_id) + _runs(runs)
        case ResyncProgress(seq, runs):
            return MessageType.RESYNC_PROGRESS, SEQ.pack(seq) + _runs(runs)
        case Hello(version, role, flags, volume_id, size, extent_size, epoch, history, oos, generations,
                   members, names):
            head = HELLO.pack(version, role, flags, volume_id, size, extent_size, epoch)
            body = head + _list("Q", history) + _list("I", oos) + _list("Q", generations)
            return MessageType.HELLO, body + (_list("Q", members) + _names(names) if members else b"")
        case Welcome(volume_id, epoch, applied_seq, record, ranges, flags, stale, resync):
            body = WELCOME.pack(volume_id, epoch, applied_seq, flags) + _list("I", record)
            body += COUNT.pack(len(ranges)) + b"".join(RANGE.pack(*r) for r in ranges)
            return MessageType.WELCOME, body + _list("I", stale) + _runs(resync)
        case Checksums(first, hashes):
            return MessageType.CHECKSUMS, COUNT.pack(first) + _list("Q", hashes)
        case Demote(history, generations):
            return MessageType.DEMOTE, _list("Q", history) + _list("Q", generations)
        case Verify(request, first, count):
            return MessageType.VERIFY, VERIFY.pack(request, first, count)
        case Hashes(request, first, hashes):
            return MessageType.HASHES, VERIFY.pack(request, first, len(hashes)) + _list("Q", hashes)
        case Refuse(reason, code):
            return MessageType.REFUSE, bytes((code,)) + reason.encode("utf-8")
        case Route(volume):
            name = volume.encode("utf-8")
            invariant(0 < len(name) <= MAX_ROUTE_BYTES, "ROUTE volume name length")
            return MessageType.ROUTE, name
        case StorageFailed(area, errno, detail):
            return MessageType.STORAGE_FAILED, STORAGE_FAILED.pack(area, errno) + detail.encode("utf-8")
        case AuthChallenge(nonce):
            return MessageType.AUTH_CHALLENGE, AUTH_CHALLENGE.pack(nonce)
        case AuthResponse(nonce, mac):
            return MessageType.AUTH_RESPONSE, AUTH_RESPONSE.pack(nonce, mac)
        case AuthProof(mac):
            return MessageType.AUTH_PROOF, AUTH_CHALLENGE.pack(mac)
    raise AssertionError(f"unknown message {message!r}")

_SEQ_ONLY: dict[MessageType, type[Applied | Durable | Sync | Ping | Pong | ResyncDone | ResyncDoneAck
                                   | ResyncSetDurable]] = {
    MessageType.APPLIED: Applied,
    MessageType.DURABLE: Durable,
    MessageType.SYNC: Sync,
    MessageType.PING: Ping,
    MessageType.PONG: Pong,
    MessageType.RESYNC_DONE: ResyncDone,
    MessageType.RESYNC_DONE_ACK: ResyncDoneAck,
    MessageType.RESYNC_SET_DURABLE: ResyncSetDurable,
}


def _exact(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise RemoteProtocolError(f"{what} payload is {len(payload)} bytes, expected {size}")


def decode_payload(kind: int, payload: bytes) -> Message:
    """Decode one checked frame payload; malformed content is a RemoteProtocolError."""
    if kind == _WRITE_KIND and len(payload) >= WRITE.size:  # the hot path, without enum lookups
        seq, offset, flags, budget, count = WRITE.unpack_from(payload)
        removals = read_u32s(payload, WRITE.size, count, "WRITE") if count else ()
        return Write(seq, offset, flags, budget, removals, payload[WRITE.size + 4 * count :])
    if kind == _WRITES_KIND:
        return _decode_writes(payload)
    if kind in object_wire.OBJECT_TYPES:
        return object_wire.decode(kind, payload)
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise RemoteProtocolError(f"unknown link message type {kind}") from None
    if message_type is MessageType.WRITE:
        if len(payload) < WRITE.size:
            raise RemoteProtocolError("WRITE frame shorter than its header")
        seq, offset, flags, budget, count = WRITE.unpack_from(payload)
        removals = read_u32s(payload, WRITE.size, count, "WRITE")
        return Write(seq, offset, flags, budget, removals, payload[WRITE.size + 4 * count :])
    if message_type is MessageType.ZERO:
        if len(payload) < ZERO.size:
            raise RemoteProtocolError("ZERO frame shorter than its header")
        seq, offset, length, flags, budget, count = ZERO.unpack_from(payload)
        _exact(payload, ZERO.size + 4 * count, "ZERO")
        return Zero(seq, offset, length, flags, budget, read_u32s(payload, ZERO.size, count, "ZERO"))
    if message_type in _SEQ_ONLY:
        _exact(payload, SEQ.size, message_type.name)
        return _SEQ_ONLY[message_type](SEQ.unpack(payload)[0])
    if message_type is MessageType.ADDED:
        if len(payload) < SEQ.size or (len(payload) - SEQ.size) % 4:
            raise RemoteProtocolError("ADDED payload is not a seq and a list of u32 extents")
        return Added(SEQ.unpack_from(payload)[0], read_u32s(payload, 8, (len(payload) - 8) // 4, "ADDED"))
    if message_type is MessageType.REMOVE:
        if len(payload) < COUNT.size:
            raise RemoteProtocolError("REMOVE frame shorter than its count")
        (count,) = COUNT.unpack_from(payload)
        extents = read_u32s(payload, 4, count, "REMOVE")
        rest = len(payload) - 4 - 4 * count
        if rest % 8:
            raise RemoteProtocolError("REMOVE range list is not a whole number of u64")
        ranges = struct.unpack_from(f">{rest // 8}Q", payload, 4 + 4 * count)
        return Remove(extents, ranges)
    if message_type is MessageType.HELLO:
        reader = _Lists(payload, HELLO.size, "HELLO")
        version, role, flags, volume_id, size, extent_size, epoch = HELLO.unpack_from(payload)
        history = reader.take("Q")
        oos = reader.take("I")
        generations = reader.take("Q")
        members = reader.take("Q") if reader.remaining() else ()
        names = reader.take_names() if members else ()
        if len(names) != len(members):
            raise RemoteProtocolError(f"HELLO: {len(members)} member sizes but {len(names)} member names")
        reader.finish()
        return Hello(version, role, flags, volume_id, size, extent_size, epoch, history, oos, generations,
                     members, names)
    if message_type is MessageType.WELCOME:
        reader = _Lists(payload, WELCOME.size, "WELCOME")
        volume_id, epoch, applied, flags = WELCOME.unpack_from(payload)
        record = reader.take("I")
        ranges = reader.take_ranges()
        stale = reader.take("I")
        resync = reader.take_runs()
        reader.finish()
        return Welcome(volume_id, epoch, applied, record, ranges, flags, stale, resync)
    if message_type is MessageType.CHECKSUMS:
        reader = _Lists(payload, COUNT.size, "CHECKSUMS")
        (first,) = COUNT.unpack_from(payload)
        hashes = reader.take("Q")
        reader.finish()
        if not hashes or len(hashes) > CHECKSUM_CHUNK_EXTENTS:
            raise RemoteProtocolError(f"CHECKSUMS chunk of {len(hashes)} checksums (1 to "
                                      f"{CHECKSUM_CHUNK_EXTENTS} allowed)")
        return Checksums(first, hashes)
    if message_type in (MessageType.RESYNC_SET, MessageType.RESYNC_PROGRESS):
        reader = _Lists(payload, SEQ.size, message_type.name)
        (seq,) = SEQ.unpack_from(payload)
        runs = reader.take_runs()
        reader.finish()
        cls = ResyncSet if message_type is MessageType.RESYNC_SET else ResyncProgress
        return cls(seq, runs)
    if message_type is MessageType.VERIFY:
        _exact(payload, VERIFY.size, "VERIFY")
        return Verify(*VERIFY.unpack(payload))
    if message_type is MessageType.HASHES:
        reader = _Lists(payload, VERIFY.size, "HASHES")
        request, first, count = VERIFY.unpack_from(payload)
        hashes = reader.take("Q")
        reader.finish()
        if len(hashes) != count:
            raise RemoteProtocolError(f"HASHES says {count} hashes but carries {len(hashes)}")
        return Hashes(request, first, hashes)
    if message_type is MessageType.DEMOTE:
        reader = _Lists(payload, 0, "DEMOTE")
        history = reader.take("Q")
        generations = reader.take("Q")
        reader.finish()
        return Demote(history, generations)
    if message_type is MessageType.REFUSE:
        if not payload:
            raise RemoteProtocolError("REFUSE payload has no code")
        # An unknown code is kept as a number: a newer peer may know more reasons than we do.
        return Refuse(payload[1:].decode("utf-8", "replace"), payload[0])
    if message_type is MessageType.ROUTE:
        if not 0 < len(payload) <= MAX_ROUTE_BYTES:
            raise RemoteProtocolError(f"ROUTE volume name of {len(payload)} bytes (1 to {MAX_ROUTE_BYTES})")
        try:
            return Route(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise RemoteProtocolError("ROUTE volume name is not UTF-8") from None
    if message_type is MessageType.STORAGE_FAILED:
        if len(payload) < STORAGE_FAILED.size:
            raise RemoteProtocolError("STORAGE_FAILED payload shorter than its fixed part")
        area, errno = STORAGE_FAILED.unpack_from(payload)
        try:
            detail = payload[STORAGE_FAILED.size :].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("STORAGE_FAILED detail is not UTF-8") from None
        return StorageFailed(area, errno, detail)
    if message_type is MessageType.AUTH_CHALLENGE:
        _exact(payload, AUTH_CHALLENGE.size, "AUTH_CHALLENGE")
        return AuthChallenge(payload)
    if message_type is MessageType.AUTH_RESPONSE:
        _exact(payload, AUTH_RESPONSE.size, "AUTH_RESPONSE")
        return AuthResponse(*AUTH_RESPONSE.unpack(payload))
    if message_type is MessageType.AUTH_PROOF:
        _exact(payload, AUTH_CHALLENGE.size, "AUTH_PROOF")
        return AuthProof(payload)
    raise AssertionError(f"unhandled message type {message_type}")
