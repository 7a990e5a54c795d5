"""The NBD transmission phase, as a pure state machine.

Theory of operation: ``receive_data`` parses request headers (proto.md "Transmission") and returns
``Request`` events for requests the export can serve. Requests that are invalid but answerable
(out of range, too large, read-only, unknown command or flag) never reach the adapter: the core
answers them itself with the right errno and keeps the connection, per the rule that a server
should not disconnect over a single bad request it can answer. WRITE payloads are always consumed,
even when the write is rejected; rejected payloads are discarded as they stream in, so a client
cannot make us buffer more than one request of at most ``max_payload`` bytes.

Only a bad request magic ends the connection, because framing is lost. After DISC the core parses
nothing more; the adapter finishes what is in flight (``in_flight`` reaches 0) and closes.

Replies are built by the ``reply_*`` methods, which return the bytes to write. Each reply is a
whole message, so replies to pipelined requests can be written in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from foresync.errors import LocalProtocolError
from foresync.gather import Parts, add_part, join
from foresync.nbd import wire
from foresync.nbd.handshake import MAX_PAYLOAD_BYTES, ExportInfo
from foresync.nbd.wire import ChunkType, Command, CommandFlag, Errno

MAX_EXTENTS_PER_REPLY = 2048  # bounds a BLOCK_STATUS reply; clients re-query the rest
# A WRITE payload this big or bigger is gathered from the chunks as they arrive and joined once
# (one copy), instead of being appended to the parse buffer and sliced out of it (three copies,
# a third of the CPU of a 1 MiB write at zero RTT).
GATHER_MIN_BYTES = 64 * 1024

_HEADER = wire.REQUEST_HEADER
_HEADER_SIZE = _HEADER.size
_SIMPLE = wire.SIMPLE_REPLY
_CHUNK = wire.CHUNK_HEADER
_U64 = wire.U64
_DATA_CHUNK_FLAGS = wire.CHUNK_FLAG_DONE
_READ, _WRITE, _DISC = int(Command.READ), int(Command.WRITE), int(Command.DISC)
_FLUSH, _TRIM, _CACHE = int(Command.FLUSH), int(Command.TRIM), int(Command.CACHE)
_ZEROES, _STATUS = int(Command.WRITE_ZEROES), int(Command.BLOCK_STATUS)


@dataclass(frozen=True, slots=True)
class Request:
    """One valid request for the adapter to carry out and answer with a ``reply_*`` call."""

    command: int  # a wire.Command value
    flags: int  # wire.CommandFlag bits
    cookie: int
    offset: int
    length: int
    data: bytes = b""  # WRITE payload


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The client sent DISC: finish in-flight requests, then close."""


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    reason: str


Event = Request | Disconnect | ConnectionFailed


class ConnectionState(Enum):
    OPEN = "open"
    DRAINING = "draining"  # DISC received; in-flight requests still to be answered
    ERROR = "error"


class Transmission:
    """One client connection after negotiation."""

    def __init__(
        self,
        export: ExportInfo,
        structured_replies: bool,
        meta_contexts: Sequence[int] = (),
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.export = export
        self.structured = structured_replies
        self.meta_contexts = tuple(meta_contexts)
        self.max_payload = max_payload
        self.state = ConnectionState.OPEN
        self.in_flight = 0
        self._buf = bytearray()
        self._discard = 0  # bytes of a rejected WRITE payload still to drop
        self._discard_reply = b""  # its error reply, held until the payload is consumed
        self._need = _HEADER_SIZE  # bytes needed before the next parse can make progress
        self._size = export.size
        self._parts: Parts = []  # a large WRITE payload being gathered
        self._parts_need = 0  # its bytes still to come
        self._parts_request = (0, 0, 0, 0)  # its flags, cookie, offset, length

    # -- input -----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> tuple[list[Event], bytes]:
        """Parse what can be parsed. Returns (events, replies the core answered itself)."""
        if self.state is not ConnectionState.OPEN:
            return [], b""  # after DISC or a fatal error nothing more is read
        replies: list[bytes] = []
        events: list[Event] = []
        if self._parts_need:
            take = min(self._parts_need, len(data))
            add_part(self._parts, data, take)
            self._parts_need -= take
            if self._parts_need:
                return [], b""
            flags, cookie, offset, length = self._parts_request
            payload = join(self._parts)
            self._parts = []
            self.in_flight += 1
            events.append(Request(_WRITE, flags, cookie, offset, length, payload))
            data = data[take:]
            if not data:
                return events, b""
        if self._discard:
            taken = min(self._discard, len(data))
            self._discard -= taken
            data = data[taken:]
            if self._discard:
                return events, b""
            # The rejected WRITE is now wholly read: only now may its error reply go out, or
            # a client still sending the payload would see an answer to a request it has not
            # finished (libnbd drops the connection on that).
            replies.append(self._discard_reply)
            self._discard_reply = b""
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return events, b"".join(replies)
        pos = 0
        end = len(buf)
        while end - pos >= _HEADER_SIZE:
            magic, flags, command, cookie, offset, length = _HEADER.unpack_from(buf, pos)
            if magic != wire.REQUEST_MAGIC:
                self.state = ConnectionState.ERROR
                events.append(ConnectionFailed(f"bad request magic 0x{magic:08x}"))
                buf.clear()
                return events, b"".join(replies)
            if command == _WRITE:
                total = _HEADER_SIZE + length
                errno = self._check_write(flags, offset, length)
                if errno:
                    reply = self._error_reply(cookie, errno, command)
                    pos += _HEADER_SIZE
                    available = min(length, end - pos)
                    pos += available
                    self._discard = length - available
                    if self._discard:
                        self._discard_reply = reply  # sent once the payload is consumed
                        break
                    replies.append(reply)
                    continue
                if end - pos < total:
                    if length >= GATHER_MIN_BYTES:
                        with memoryview(buf) as view:
                            part = bytearray(view[pos + _HEADER_SIZE : end])
                        self._parts = [part]
                        self._parts_need = length - len(part)
                        self._parts_request = (flags, cookie, offset, length)
                        pos = end
                        break
                    self._need = total
                    break
                if length < GATHER_MIN_BYTES:
                    payload = bytes(buf[pos + _HEADER_SIZE : pos + total])
                else:
                    with memoryview(buf) as view:  # one copy, not a bytearray slice and bytes()
                        payload = bytes(view[pos + _HEADER_SIZE : pos + total])
                pos += total
                self.in_flight += 1
                events.append(Request(command, flags, cookie, offset, length, payload))
                continue
            pos += _HEADER_SIZE
            if command == _DISC:
                self.state = ConnectionState.DRAINING
                events.append(Disconnect())
                break
            errno = self._check(command, flags, offset, length)
            if errno:
                replies.append(self._error_reply(cookie, errno, command))
                continue
            self.in_flight += 1
            events.append(Request(command, flags, cookie, offset, length))
        if pos:
            del buf[:pos]
        if len(buf) < _HEADER_SIZE:
            self._need = _HEADER_SIZE
        return events, b"".join(replies)

    def _check_write(self, flags: int, offset: int, length: int) -> int:
        if flags & ~wire.KNOWN_COMMAND_FLAGS:
            return Errno.EINVAL
        if self.export.read_only:
            return Errno.EPERM
        if length > self.max_payload:
            return Errno.EINVAL
        if offset + length > self._size:
            return Errno.ENOSPC
        return 0

    def _check(self, command: int, flags: int, offset: int, length: int) -> int:
        """The errno for a non-WRITE request the core must refuse, or 0 when it is valid."""
        if flags & ~wire.KNOWN_COMMAND_FLAGS:
            return Errno.EINVAL
        in_range = offset + length <= self._size
        if command == _READ:
            if length > self.max_payload:
                return Errno.EINVAL
            return 0 if in_range else Errno.EINVAL
        if command == _FLUSH:
            return 0
        if command in (_TRIM, _ZEROES):
            if self.export.read_only:
                return Errno.EPERM
            if command == _TRIM and not self.export.can_trim:
                return Errno.EINVAL
            if command == _ZEROES and not self.export.can_zero:
                return Errno.EINVAL
            if not in_range:
                return Errno.ENOSPC if command == _ZEROES else Errno.EINVAL
            return 0
        if command == _CACHE:
            return 0 if in_range else Errno.EINVAL
        if command == _STATUS:
            if not self.meta_contexts or length == 0 or not in_range:
                return Errno.EINVAL
            return 0
        return Errno.EINVAL  # unknown command: answerable, so answered

    # -- replies ---------------------------------------------------------------------------------

    def _error_reply(self, cookie: int, errno: int, command: int) -> bytes:
        if self.structured and command in (_READ, _STATUS):
            message = b""
            body = wire.CHUNK_ERROR.pack(errno, len(message)) + message
            return _CHUNK.pack(wire.STRUCTURED_REPLY_MAGIC, wire.CHUNK_FLAG_DONE, ChunkType.ERROR, cookie, len(body)) + body
        return _SIMPLE.pack(wire.SIMPLE_REPLY_MAGIC, errno, cookie)

    def _complete(self) -> None:
        if self.in_flight <= 0:
            raise LocalProtocolError("a reply was built for a request that is not in flight")
        self.in_flight -= 1

    def reply_ok(self, request: Request) -> bytes:
        """Success for any command but READ and BLOCK_STATUS."""
        self._complete()
        return _SIMPLE.pack(wire.SIMPLE_REPLY_MAGIC, 0, request.cookie)

    def reply_error(self, request: Request, errno: int) -> bytes:
        if errno == 0:
            raise LocalProtocolError("reply_error needs a non-zero errno")
        self._complete()
        return self._error_reply(request.cookie, errno, request.command)

    def reply_read_header(self, request: Request) -> bytes:
        """The header that precedes READ data of ``request.length`` bytes; write the data next."""
        self._complete()
        if self.structured:
            if request.length == 0:
                return _CHUNK.pack(wire.STRUCTURED_REPLY_MAGIC, wire.CHUNK_FLAG_DONE, ChunkType.NONE, request.cookie, 0)
            return _CHUNK.pack(
                wire.STRUCTURED_REPLY_MAGIC, _DATA_CHUNK_FLAGS, ChunkType.OFFSET_DATA, request.cookie, 8 + request.length
            ) + _U64.pack(request.offset)
        return _SIMPLE.pack(wire.SIMPLE_REPLY_MAGIC, 0, request.cookie)

    def reply_block_status(self, request: Request, extents: Sequence[tuple[int, int]]) -> bytes:
        """Answer BLOCK_STATUS with (length, flags) extents starting at the request offset.

        Extents are clamped to the requested range, zero-length ones are dropped (the spec forbids
        them), and REQ_ONE keeps just the first."""
        self._complete()
        limit = 1 if request.flags & CommandFlag.REQ_ONE else MAX_EXTENTS_PER_REPLY
        remaining = request.length
        parts: list[bytes] = []
        for length, status in extents:
            if remaining <= 0 or len(parts) >= limit:
                break
            length = min(length, remaining, 0xFFFFFFFF)
            if length <= 0:
                continue
            parts.append(wire.BLOCK_DESCRIPTOR.pack(length, status))
            remaining -= length
        if not parts:
            # A backend that reported nothing: describe the range as allocated data.
            parts.append(wire.BLOCK_DESCRIPTOR.pack(min(request.length, 0xFFFFFFFF), 0))
        descriptors = b"".join(parts)
        out: list[bytes] = []
        last = len(self.meta_contexts) - 1
        for index, context_id in enumerate(self.meta_contexts):
            body = wire.U32.pack(context_id) + descriptors
            flags = wire.CHUNK_FLAG_DONE if index == last else 0
            out.append(_CHUNK.pack(wire.STRUCTURED_REPLY_MAGIC, flags, ChunkType.BLOCK_STATUS, request.cookie, len(body)))
            out.append(body)
        return b"".join(out)
