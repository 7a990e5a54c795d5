"""The replication link's frames: the header, the frame encoder and the ``FrameDecoder``.

Every frame (16-byte header, then the payload):
    0   u32  FRAME_MAGIC = 0x46534c4b ("FSLK")
    4   u8   message type (MessageType)
    5   u8   reserved, 0
    6   u16  reserved, 0
    8   u32  payload length
    12  u32  CRC32C of header bytes 0..11 followed by the payload
All integers are big-endian. A frame with a bad magic, nonzero reserved bytes, an unknown type, a
length over the limit or a wrong CRC is a RemoteProtocolError: the stream is TCP, so a damaged frame means the
connection can no longer be trusted and is closed; the sites then resynchronise.
A frame carries one message's payload (layouts: link/messages.py; encode and decode:
link/payloads.py), or for WRITES a group of plain writes (decoded here, on the receive path).

Receiving (``FrameDecoder``, issue 15). The link's transport reads straight into the decoder's
memory (``get_buffer``/``buffer_updated``): a WRITE of GATHER_MIN_BYTES or more, once its head
is in, has the rest of its data read into a payload buffer of its own (one copy per byte, into
``bytes`` for CRC32C, instead of two); everything else lands in a reused scratch buffer and is
appended to the frame buffer. Once the peer is authenticated, ``next_messages`` decodes a pass's
plain WRITEs in one loop and leaves every other frame, and every error, to ``next_message``.
"""

from __future__ import annotations

import struct
from collections import deque

import google_crc32c

from foresync.errors import RemoteProtocolError, invariant
from foresync.link import messages
from foresync.link.messages import (
    WRITES_MAX_BYTES,
    WRITES_MAX_COUNT,
    Message,
    MessageType,
    Write,
    WriteBatch,
)
from foresync.link.payloads import (
    decode_payload,
    encode_parts,
    read_u32s,
    writes_struct,
    writes_table,
)

FRAME_MAGIC = 0x46534C4B
FRAME_HEADER = struct.Struct(">IBBHII")
_PREFIX = struct.Struct(">IBBHI")
DEFAULT_MAX_FRAME_BYTES = 33 * 1024 * 1024  # one 32 MiB write plus its header and removals
invariant(FRAME_HEADER.size == 16 and _PREFIX.size == 12, "link frame header layout")
invariant(WRITES_MAX_BYTES + FRAME_HEADER.size < 32 * 1024 * 1024,
          "a WRITES frame is smaller than the largest WRITE any peer accepts")

# Bound here, not imported by name, as in link/payloads.py: a method call on the name stays one.
COUNT = messages.COUNT
WRITE = messages.WRITE

_WRITE_KIND = int(MessageType.WRITE)  # ints: compared per frame without enum lookups
_WRITES_KIND = int(MessageType.WRITES)

_value, _extend = google_crc32c.value, google_crc32c.extend
# A WRITE frame this big or bigger is gathered from the received chunks and joined once (one
# copy) instead of being appended to the decoder's buffer and sliced out of it (two copies).
GATHER_MIN_BYTES = 64 * 1024
RECEIVE_BYTES = 256 * 1024  # FrameDecoder.get_buffer's scratch buffer
KEEP_PAYLOAD_MAX_BYTES = 4 * 1024 * 1024  # a gathered WRITE's buffer up to this is kept for the next


def encode_frame(message: Message) -> bytes:
    return b"".join(encode_frame_parts(message))


def encode_frame_parts(message: Message) -> list[bytes]:
    """The frame as buffers to write in order (header, payload head, then a WRITE's data
    without copying it)."""
    if type(message) is WriteBatch:
        return _writes_frame_parts(message.writes)
    kind, head, data = encode_parts(message)
    prefix = _PREFIX.pack(FRAME_MAGIC, kind, 0, 0, len(head) + len(data))
    crc = _extend(_value(prefix), head)
    if not data:
        return [prefix + COUNT.pack(crc) + head]
    return [prefix + COUNT.pack(_extend(crc, data)) + head, data]


def _writes_frame_parts(writes: list[Write]) -> list[bytes]:
    """A WRITES frame as buffers: header and table, then each write's data, not copied; one
    CRC32C over the frame, as for any frame."""
    head = writes_table(writes)
    size = len(head)
    parts = [b"", *(write.data for write in writes)]
    for data in parts:
        size += len(data)
    prefix = _PREFIX.pack(FRAME_MAGIC, _WRITES_KIND, 0, 0, size)
    crc = _extend(_value(prefix), head)
    for data in parts:
        crc = _extend(crc, data)
    parts[0] = prefix + COUNT.pack(crc) + head
    return parts


def _writes_in(buf: bytearray, pos: int, end: int, crc: int) -> list[Write]:
    """The writes of the complete WRITES frame at ``buf[pos:end]``, each write's data copied out
    once and the CRC32C computed over the copies (the whole payload is never copied: one copy
    per byte). [] when anything is wrong with it, damage or a malformed table: the general path
    then copies the payload, checks the CRC and names what is wrong, a CRC mismatch first."""
    start = pos + FRAME_HEADER.size
    if end - start < COUNT.size or end - start > WRITES_MAX_BYTES:
        return []
    (count,) = COUNT.unpack_from(buf, start)
    if not 0 < count <= WRITES_MAX_COUNT:
        return []
    layout = writes_struct(count)
    at = start + layout.size
    if at > end:
        return []
    flat = layout.unpack_from(buf, start)
    writes: list[Write] = []
    with memoryview(buf) as view:
        actual = _extend(_value(bytes(view[pos : pos + _PREFIX.size])), bytes(view[start:at]))
        for index in range(1, 3 * count + 1, 3):
            length = flat[index + 2]
            if length == 0 or at + length > end:
                return []
            data = bytes(view[at : at + length])
            actual = _extend(actual, data)
            writes.append(Write(flat[index], flat[index + 1], 0, 0, (), data))
            at += length
    if at != end or actual != crc:
        return []
    return writes


def _write_with(head: bytes, data: bytes) -> Write:
    """A WRITE from its checked head (fixed part and removals, complete) and its data."""
    seq, offset, flags, budget, count = WRITE.unpack_from(head)
    removals = read_u32s(head, WRITE.size, count, "WRITE") if count else ()  # most have none
    return Write(seq, offset, flags, budget, removals, data)


class FrameDecoder:
    """Splits a byte stream into checked messages. Buffers at most one frame beyond what it
    was given. ``max_frame_bytes`` may change between messages: the link keeps it small until
    the peer has authenticated."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0  # start of the first undecoded frame in _buf
        self.failed: str | None = None
        # A large WRITE whose data is gathered in place instead of being appended to _buf and
        # sliced out of it: (crc, prefix, head), the buffer its data lands in (received into
        # directly through get_buffer), how much of it has come and how much is still to come.
        self._gather: tuple[int, bytes, bytes] | None = None
        self._payload = bytearray()  # kept for the next large WRITE up to KEEP_PAYLOAD_MAX_BYTES
        self._payload_fill = 0
        self._gather_need = 0
        self._scratch: bytearray | None = None  # get_buffer's, when no payload is being gathered
        self._into_payload = False  # what the last get_buffer handed out
        self._ready: deque[Write] = deque()  # the rest of a decoded WRITES frame's writes

    def push(self, data: bytes | bytearray | memoryview) -> None:
        if self.failed is not None:
            raise RemoteProtocolError(f"link stream already failed: {self.failed}")
        need = self._gather_need
        if need:
            take = min(need, len(data))
            fill = self._payload_fill
            with memoryview(self._payload) as payload, memoryview(data) as view:
                payload[fill : fill + take] = view[:take]
            self._payload_fill = fill + take
            self._gather_need = need - take
            if take == len(data):
                return
            data = memoryview(data)[take:]
        self._buf += data

    def get_buffer(self) -> memoryview:
        """Where the next bytes received should go (``asyncio.BufferedProtocol.get_buffer``):
        the rest of a large WRITE being gathered, so its data lands in place with no copy,
        or a scratch buffer of ``RECEIVE_BYTES`` that ``buffer_updated`` appends to the frame
        buffer (one copy, where ``data_received`` costs two: the transport's bytes and the
        append). Bytes past a WRITE's data never land in its payload: the view ends there."""
        need = self._gather_need
        self._into_payload = bool(need) and self.failed is None
        if self._into_payload:
            fill = self._payload_fill
            return memoryview(self._payload)[fill : fill + need]
        if self._scratch is None:
            self._scratch = bytearray(RECEIVE_BYTES)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the last ``get_buffer``; then ``next_messages``."""
        if self._into_payload:
            self._into_payload = False
            self._payload_fill += nbytes
            self._gather_need -= nbytes
            return
        assert self._scratch is not None
        with memoryview(self._scratch) as view:
            self.push(view[:nbytes])

    def _gathered(self) -> Message:
        assert self._gather is not None
        crc, prefix, head = self._gather
        with memoryview(self._payload) as payload:
            data = bytes(payload[: self._payload_fill])  # CRC32C and Write.data take bytes
        self._gather = None
        if len(self._payload) > KEEP_PAYLOAD_MAX_BYTES:
            self._payload = bytearray()
        actual = _extend(_extend(_value(prefix), head), data)
        if actual != crc:
            raise RemoteProtocolError(f"link frame CRC32C mismatch (type {_WRITE_KIND}, "
                                      f"{len(head) + len(data)} bytes)")
        return _write_with(head, data)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive. Raises
        RemoteProtocolError on a damaged frame; after that the decoder stays failed."""
        if self._ready:  # decoded and checked with the frame they came in
            return self._ready.popleft()
        if self.failed is not None:
            raise RemoteProtocolError(f"link stream already failed: {self.failed}")
        if self._gather is not None:
            if self._gather_need:
                return None
            try:
                return self._gathered()
            except RemoteProtocolError as exc:
                self.failed = str(exc)
                self._buf.clear()
                self._pos = 0
                raise
        buf, pos = self._buf, self._pos
        try:
            if len(buf) - pos >= FRAME_HEADER.size:
                magic, kind, _r1, _r2, length, crc = FRAME_HEADER.unpack_from(buf, pos)
                if magic != FRAME_MAGIC:
                    raise RemoteProtocolError(f"bad link frame magic 0x{magic:08x}")
                if _r1 or _r2:
                    raise RemoteProtocolError("link frame reserved header bytes are not zero")
                if length > self.max_frame_bytes:
                    raise RemoteProtocolError(
                        f"link frame of {length} bytes is over the {self.max_frame_bytes}-byte limit")
                end = pos + FRAME_HEADER.size + length
                if len(buf) >= end:
                    start = pos + FRAME_HEADER.size
                    if kind == _WRITES_KIND and (writes := _writes_in(buf, pos, end, crc)):
                        self._ready.extend(writes)
                        self._pos = end
                        return self._ready.popleft()
                    split = end  # a WRITE's data (from split) is copied out on its own, once
                    write = None
                    if kind == _WRITE_KIND and length >= WRITE.size:
                        write = WRITE.unpack_from(buf, start)  # seq, offset, flags, budget, count
                        split = min(end, start + WRITE.size + 4 * write[4])
                    with memoryview(buf) as view:  # copies of the frame only, not of the buffer
                        prefix = bytes(view[pos : pos + _PREFIX.size])
                        head = bytes(view[start:split])
                        data = bytes(view[split:end])
                    actual = _extend(_value(prefix), head)
                    if data:
                        actual = _extend(actual, data)
                    if actual != crc:
                        raise RemoteProtocolError(f"link frame CRC32C mismatch (type {kind}, {length} bytes)")
                    if write is not None and data:
                        seq, offset, flags, budget, count = write
                        removals = read_u32s(head, WRITE.size, count, "WRITE") if count else ()
                        message: Message = Write(seq, offset, flags, budget, removals, data)
                    else:
                        message = decode_payload(kind, head)
                        if type(message) is WriteBatch:  # handed on one write at a time
                            self._ready.extend(message.writes)
                            message = self._ready.popleft()
                    self._pos = end
                    return message
                if kind == _WRITE_KIND and length >= GATHER_MIN_BYTES and self._start_gather(
                        buf, pos, length, crc):
                    return None
        except RemoteProtocolError as exc:
            self.failed = str(exc)
            buf.clear()
            self._pos = 0
            raise
        if pos:  # compact once per batch, not once per frame
            del buf[:pos]
            self._pos = 0
        return None

    def next_messages(self) -> list[Message]:
        """Every complete message in the buffer, in order: what ``next_message()`` returns in a
        loop, with plain WRITEs (the hot path) decoded in one loop pass each instead of a call
        (one buffer view, the limits read once): 2.5 -> 1.9 us per 4 KiB WRITE. The link uses
        it once authenticated, when ``max_frame_bytes`` no longer changes between messages.
        A damaged frame after good ones: the good ones are returned and ``failed`` is set (the
        caller checks it); any later call raises."""
        out: list[Message] = []
        ready = self._ready
        while True:
            if self._gather is None and self.failed is None and not ready:
                self._plain_writes(out)
            try:
                message = self.next_message()
            except RemoteProtocolError:
                if not out:
                    raise
                return out
            if message is None:
                return out
            out.append(message)
            if ready:  # the rest of a WRITES frame, before any later frame
                out += ready
                ready.clear()

    def _plain_writes(self, out: list[Message]) -> None:
        """Decode complete WRITE frames with data from the buffer into ``out``; stop at anything
        else (another type, a partial or damaged frame), which ``next_message`` then handles,
        with its errors."""
        buf, pos = self._buf, self._pos
        size, limit, fixed = FRAME_HEADER.size, self.max_frame_bytes, WRITE.size
        unpack_header, unpack_write = FRAME_HEADER.unpack_from, WRITE.unpack_from
        have = len(buf)
        view = memoryview(buf)  # copies of the frames only, not of the buffer
        try:
            while have - pos >= size:
                magic, kind, r1, r2, length, crc = unpack_header(buf, pos)
                end = pos + size + length
                if (magic != FRAME_MAGIC or r1 or r2 or length > limit or end > have
                        or kind != _WRITE_KIND or length < fixed):
                    break
                start = pos + size
                write = unpack_write(buf, start)  # seq, offset, flags, budget, count
                split = start + fixed + 4 * write[4]
                if split >= end:
                    break
                head = bytes(view[start:split])
                data = bytes(view[split:end])
                if _extend(_extend(_value(bytes(view[pos:start - 4])), head), data) != crc:
                    break
                seq, offset, flags, budget, count = write
                removals = read_u32s(head, fixed, count, "WRITE") if count else ()
                out.append(Write(seq, offset, flags, budget, removals, data))
                pos = end
        finally:
            view.release()
        self._pos = pos

    def _start_gather(self, buf: bytearray, pos: int, length: int, crc: int) -> bool:
        """Begin gathering the incomplete large WRITE at ``pos``, once its head (fixed part and
        removals) is all in ``buf``. False: not yet."""
        start = pos + FRAME_HEADER.size
        if len(buf) < start + WRITE.size:
            return False
        (count,) = COUNT.unpack_from(buf, start + WRITE.size - COUNT.size)
        split = start + WRITE.size + 4 * count
        if split > start + length:
            raise RemoteProtocolError("WRITE frame shorter than its removals")
        if len(buf) < split:
            return False
        size = start + length - split  # the data's
        if len(self._payload) < size:
            self._payload = bytearray(size)  # a new one: the old may still be exported
        with memoryview(buf) as view, memoryview(self._payload) as payload:
            prefix = bytes(view[pos : pos + _PREFIX.size])
            head = bytes(view[start:split])
            have = len(buf) - split
            payload[:have] = view[split:]
        self._gather = (crc, prefix, head)
        self._payload_fill = have
        self._gather_need = size - have
        buf.clear()
        self._pos = 0
        return True

    def feed(self, data: bytes) -> list[Message]:
        """Every message completed by ``data`` (``next_messages``); raises at a damaged frame."""
        self.push(data)
        out = self.next_messages()
        if self.failed is not None:
            raise RemoteProtocolError(self.failed)
        return out
