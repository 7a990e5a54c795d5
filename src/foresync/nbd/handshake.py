"""The server side of NBD fixed-newstyle negotiation, as a pure state machine.

Theory of operation: the adapter sends ``data_to_send()`` once at start (the greeting), feeds every
received byte into ``receive_data`` and drains ``data_to_send()`` and ``next_event()`` after each
call. No I/O, no clock. Option requests are framed by their header (proto.md "Option haggling"), so
every option's full length is always consumed, even one we reject; an option larger than
``max_option_bytes`` is discarded as it streams in, without buffering, then answered with
``ERR_TOO_BIG``. Negotiation ends in exactly one event: ``ExportSelected`` (enter transmission with
any bytes the client pipelined after the final option), ``HandshakeAborted`` or ``HandshakeFailed``.

TLS (proto.md "TLS support"): a server made with ``tls=True`` runs in FORCEDTLS mode. Before TLS
every option but STARTTLS and ABORT is answered ``ERR_TLS_REQD``, and EXPORT_NAME (which has no
error reply) ends the session. STARTTLS is acknowledged and then yields ``StartTls``: the adapter
upgrades the socket and calls ``tls_established()``, which discards all negotiation state from
before TLS (structured replies, metadata contexts), since a man in the middle could have chosen it.
A client must not pipeline anything after STARTTLS: plaintext bytes already buffered behind it are
a violation, not the start of the TLS handshake.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from foresync.errors import LocalProtocolError
from foresync.nbd import wire
from foresync.nbd.wire import Option, Reply

DEFAULT_MAX_OPTION_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024  # the largest READ/WRITE we accept (INFO_BLOCK_SIZE maximum)
PREFERRED_BLOCK_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What a client may learn about one export and what the export can do."""

    name: str
    size: int
    description: str = ""
    read_only: bool = False
    can_trim: bool = True
    can_zero: bool = True
    can_fast_zero: bool = True
    can_cache: bool = True
    can_multi_conn: bool = True
    min_block: int = 1
    preferred_block: int = PREFERRED_BLOCK_BYTES
    max_block: int = MAX_PAYLOAD_BYTES

    def transmission_flags(self, structured: bool) -> int:
        flags = wire.TransmissionFlag.HAS_FLAGS | wire.TransmissionFlag.SEND_FLUSH
        flags |= wire.TransmissionFlag.SEND_FUA
        if self.read_only:
            flags |= wire.TransmissionFlag.READ_ONLY
        else:
            if self.can_trim:
                flags |= wire.TransmissionFlag.SEND_TRIM
            if self.can_zero:
                flags |= wire.TransmissionFlag.SEND_WRITE_ZEROES
                if self.can_fast_zero:
                    flags |= wire.TransmissionFlag.SEND_FAST_ZERO
        if self.can_cache:
            flags |= wire.TransmissionFlag.SEND_CACHE
        if self.can_multi_conn:
            flags |= wire.TransmissionFlag.CAN_MULTI_CONN
        if structured:
            # Every READ reply is a single OFFSET_DATA chunk, so "don't fragment" is always honoured.
            flags |= wire.TransmissionFlag.SEND_DF
        return int(flags)


@dataclass(frozen=True, slots=True)
class ExportSelected:
    export: ExportInfo
    transmission_flags: int
    structured_replies: bool
    meta_contexts: tuple[int, ...]  # context ids chosen with SET_META_CONTEXT for this export
    trailing: bytes  # bytes the client sent after the final option: the first requests


@dataclass(frozen=True, slots=True)
class HandshakeAborted:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS was acknowledged: upgrade the socket, then call ``tls_established()``."""


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    reason: str


HandshakeEvent = ExportSelected | HandshakeAborted | HandshakeFailed | StartTls


class HandshakeState(Enum):
    AWAIT_CLIENT_FLAGS = "await_client_flags"
    NEGOTIATING = "negotiating"
    TLS_STARTING = "tls_starting"
    TRANSMISSION = "transmission"
    CLOSED = "closed"
    ERROR = "error"


class _Input(Enum):
    CLIENT_FLAGS_OK = "client_flags_ok"
    OPTION_ANSWERED = "option_answered"
    EXPORT_SELECTED = "export_selected"
    ABORT = "abort"
    VIOLATION = "violation"
    STARTTLS = "starttls"
    TLS_UP = "tls_up"


_S, _I = HandshakeState, _Input
TRANSITIONS: Mapping[tuple[HandshakeState, _Input], HandshakeState] = {
    (_S.AWAIT_CLIENT_FLAGS, _I.CLIENT_FLAGS_OK): _S.NEGOTIATING,
    (_S.AWAIT_CLIENT_FLAGS, _I.VIOLATION): _S.ERROR,
    (_S.NEGOTIATING, _I.OPTION_ANSWERED): _S.NEGOTIATING,
    (_S.NEGOTIATING, _I.EXPORT_SELECTED): _S.TRANSMISSION,
    (_S.NEGOTIATING, _I.ABORT): _S.CLOSED,
    (_S.NEGOTIATING, _I.VIOLATION): _S.ERROR,
    (_S.NEGOTIATING, _I.STARTTLS): _S.TLS_STARTING,
    (_S.TLS_STARTING, _I.TLS_UP): _S.NEGOTIATING,
    (_S.TLS_STARTING, _I.VIOLATION): _S.ERROR,
}


class _BadOption(Exception):
    """An option's payload is malformed: answer ERR_INVALID and keep negotiating."""


class ServerHandshake:
    """Negotiation for one client connection. ``exports`` maps names to exports; ``""`` is the
    default export's alias when ``default_export`` is set."""

    def __init__(
        self,
        exports: Mapping[str, ExportInfo],
        default_export: str | None = None,
        max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES,
        tls: bool = False,
    ) -> None:
        self._exports = dict(exports)
        self._tls_required = tls
        self.tls_active = False
        self._default = default_export
        self._max_option_bytes = max_option_bytes
        self.state = HandshakeState.AWAIT_CLIENT_FLAGS
        self._buf = bytearray()
        self._out: list[bytes] = [
            wire.GREETING.pack(
                wire.NBDMAGIC,
                wire.IHAVEOPT,
                wire.HandshakeFlag.FIXED_NEWSTYLE | wire.HandshakeFlag.NO_ZEROES,
            )
        ]
        self._events: deque[HandshakeEvent] = deque()
        self._no_zeroes = False
        self._structured = False
        self._meta_export: ExportInfo | None = None
        self._meta_ids: tuple[int, ...] = ()
        self._skip_bytes = 0  # bytes of an oversized option still to discard
        self._skipped_option = 0
        self.options_seen = 0
        self.oversized_options = 0  # options refused with ERR_TOO_BIG (for the adapter's log)

    # -- the three calls an adapter makes -------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state not in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING):
            raise LocalProtocolError(f"receive_data in handshake state {self.state.value}")
        data = self._discard_oversized(data)
        self._buf += data
        while self.state in (HandshakeState.AWAIT_CLIENT_FLAGS, HandshakeState.NEGOTIATING):
            if self._skip_bytes or not self._step():
                break

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> HandshakeEvent | None:
        return self._events.popleft() if self._events else None

    def tls_established(self) -> None:
        """The adapter finished the TLS handshake: negotiate again, from scratch, over TLS."""
        self._transition(_Input.TLS_UP)
        self.tls_active = True
        self._structured = False
        self._meta_export = None
        self._meta_ids = ()

    # -- state machine ---------------------------------------------------------------------------

    def _transition(self, event: _Input) -> None:
        new_state = TRANSITIONS.get((self.state, event))
        if new_state is None:
            raise LocalProtocolError(f"no handshake transition from {self.state.value} on {event.value}")
        self.state = new_state

    def _fail(self, reason: str) -> None:
        self._transition(_Input.VIOLATION)
        self._events.append(HandshakeFailed(reason))

    def _discard_oversized(self, data: bytes) -> bytes:
        if not self._skip_bytes:
            return data
        taken = min(self._skip_bytes, len(data))
        self._skip_bytes -= taken
        if not self._skip_bytes:
            self._reply(self._skipped_option, Reply.ERR_TOO_BIG, b"option payload too large")
            self._transition(_Input.OPTION_ANSWERED)
        return data[taken:]

    def _step(self) -> bool:
        """Consume one complete unit from the buffer; False when more bytes are needed."""
        if self.state is HandshakeState.AWAIT_CLIENT_FLAGS:
            if len(self._buf) < wire.CLIENT_FLAGS.size:
                return False
            (flags,) = wire.CLIENT_FLAGS.unpack_from(self._buf)
            del self._buf[: wire.CLIENT_FLAGS.size]
            if flags & ~int(wire.ClientFlag.FIXED_NEWSTYLE | wire.ClientFlag.NO_ZEROES):
                self._fail(f"client sent unknown handshake flags 0x{flags:08x}")
                return False
            self._no_zeroes = bool(flags & wire.ClientFlag.NO_ZEROES)
            self._transition(_Input.CLIENT_FLAGS_OK)
            return True
        if len(self._buf) < wire.OPTION_HEADER.size:
            return False
        magic, option, length = wire.OPTION_HEADER.unpack_from(self._buf)
        if magic != wire.IHAVEOPT:
            self._fail(f"bad option magic 0x{magic:016x}")
            return False
        if length > self._max_option_bytes:
            if option == Option.EXPORT_NAME:
                self._fail(f"EXPORT_NAME payload of {length} bytes is over the limit")
                return False
            self.options_seen += 1
            del self._buf[: wire.OPTION_HEADER.size]
            self._skip_bytes = length
            self._skipped_option = option
            self.oversized_options += 1
            rest = bytes(self._buf)
            self._buf.clear()
            self._buf += self._discard_oversized(rest)
            return not self._skip_bytes
        end = wire.OPTION_HEADER.size + length
        if len(self._buf) < end:
            return False
        payload = bytes(self._buf[wire.OPTION_HEADER.size : end])
        del self._buf[:end]
        self.options_seen += 1
        self._handle_option(option, payload)
        return True

    # -- options ---------------------------------------------------------------------------------

    def _handle_option(self, option: int, payload: bytes) -> None:
        if self._tls_required and not self.tls_active and option not in (Option.STARTTLS, Option.ABORT):
            if option == Option.EXPORT_NAME:
                self._fail("client sent EXPORT_NAME before STARTTLS; this server requires TLS")
                return
            self._reply(option, Reply.ERR_TLS_REQD, b"this server requires TLS: use STARTTLS first")
            self._transition(_Input.OPTION_ANSWERED)
            return
        handler = _HANDLERS.get(option)
        if handler is None:
            self._reply(option, Reply.ERR_UNSUP, f"option {option} is not supported".encode())
            self._transition(_Input.OPTION_ANSWERED)
            return
        try:
            handler(self, option, payload)
        except _BadOption as exc:
            self._reply(option, Reply.ERR_INVALID, str(exc).encode())
            self._transition(_Input.OPTION_ANSWERED)

    def _reply(self, option: int, reply: int, data: bytes = b"") -> None:
        self._out.append(wire.OPTION_REPLY_HEADER.pack(wire.OPTION_REPLY_MAGIC, option, reply, len(data)))
        if data:
            self._out.append(data)

    def _lookup(self, name: str) -> ExportInfo | None:
        if name == "" and self._default is not None:
            return self._exports.get(self._default)
        return self._exports.get(name)

    def _select(self, export: ExportInfo) -> None:
        contexts = self._meta_ids if self._meta_export is export else ()
        self._transition(_Input.EXPORT_SELECTED)
        trailing = bytes(self._buf)
        self._buf.clear()
        self._events.append(
            ExportSelected(
                export=export,
                transmission_flags=export.transmission_flags(self._structured),
                structured_replies=self._structured,
                meta_contexts=contexts,
                trailing=trailing,
            )
        )

    def _opt_export_name(self, option: int, payload: bytes) -> None:
        # EXPORT_NAME has no error reply (a client reads the next bytes as the export size), so
        # every refusal, an overlong name included, is the spec's only answer: close.
        if len(payload) > wire.MAX_STRING_BYTES:
            self._fail(f"EXPORT_NAME name of {len(payload)} bytes is over {wire.MAX_STRING_BYTES}")
            return
        export = self._lookup(_decode_string(payload, "export name", strict=False))
        if export is None:
            self._fail("client asked for an unknown export with EXPORT_NAME")
            return
        self._out.append(wire.EXPORT_NAME_REPLY.pack(export.size, export.transmission_flags(self._structured)))
        if not self._no_zeroes:
            self._out.append(wire.EXPORT_NAME_PADDING)
        self._select(export)

    def _opt_abort(self, option: int, payload: bytes) -> None:
        self._reply(option, Reply.ACK)
        self._transition(_Input.ABORT)
        self._events.append(HandshakeAborted())

    def _opt_starttls(self, option: int, payload: bytes) -> None:
        if not self._tls_required:
            self._reply(option, Reply.ERR_UNSUP, b"TLS is not configured on this server")
            self._transition(_Input.OPTION_ANSWERED)
            return
        if payload:
            raise _BadOption("STARTTLS takes no data")
        if self.tls_active:
            raise _BadOption("TLS is already active on this connection")
        if self._buf:
            self._fail("client sent data after STARTTLS before the TLS handshake")
            return
        self._reply(option, Reply.ACK)
        self._transition(_Input.STARTTLS)
        self._events.append(StartTls())

    def _opt_list(self, option: int, payload: bytes) -> None:
        if payload:
            raise _BadOption("LIST takes no data")
        for export in self._exports.values():
            name = export.name.encode()
            self._reply(option, Reply.SERVER, wire.U32.pack(len(name)) + name + export.description.encode())
        self._reply(option, Reply.ACK)
        self._transition(_Input.OPTION_ANSWERED)

    def _opt_info_go(self, option: int, payload: bytes) -> None:
        reader = _Reader(payload)
        name = reader.string("export name")
        count = reader.u16("information request count")
        requests = {reader.u16("information request") for _ in range(count)}
        reader.finish()
        export = self._lookup(name)
        if export is None:
            self._reply(option, Reply.ERR_UNKNOWN, f"no export named {name!r}".encode())
            self._transition(_Input.OPTION_ANSWERED)
            return
        flags = export.transmission_flags(self._structured)
        self._reply(option, Reply.INFO, wire.INFO_EXPORT.pack(wire.Info.EXPORT, export.size, flags))
        if wire.Info.NAME in requests:
            self._reply(option, Reply.INFO, wire.U16.pack(wire.Info.NAME) + export.name.encode())
        if wire.Info.DESCRIPTION in requests:
            self._reply(option, Reply.INFO, wire.U16.pack(wire.Info.DESCRIPTION) + export.description.encode())
        block = wire.INFO_BLOCK_SIZE.pack(
            wire.Info.BLOCK_SIZE, export.min_block, export.preferred_block, export.max_block
        )
        self._reply(option, Reply.INFO, block)
        self._reply(option, Reply.ACK)
        if option == Option.GO:
            self._select(export)
        else:
            self._transition(_Input.OPTION_ANSWERED)

    def _opt_structured_reply(self, option: int, payload: bytes) -> None:
        if payload:
            raise _BadOption("STRUCTURED_REPLY takes no data")
        self._structured = True
        self._reply(option, Reply.ACK)
        self._transition(_Input.OPTION_ANSWERED)

    def _opt_meta_context(self, option: int, payload: bytes) -> None:
        reader = _Reader(payload)
        name = reader.string("export name")
        count = reader.u32("query count")
        queries = [reader.string("query") for _ in range(min(count, len(payload)))]
        if len(queries) != count:
            raise _BadOption("query count does not match the data")
        reader.finish()
        is_set = option == Option.SET_META_CONTEXT
        if is_set and not self._structured:
            raise _BadOption("SET_META_CONTEXT needs STRUCTURED_REPLY first")
        export = self._lookup(name)
        if export is None:
            self._reply(option, Reply.ERR_UNKNOWN, f"no export named {name!r}".encode())
            self._transition(_Input.OPTION_ANSWERED)
            return
        matched = _match_contexts(queries, listing=not is_set)
        for context_id, context_name in matched:
            body = wire.U32.pack(context_id if is_set else 0) + context_name.encode()
            self._reply(option, Reply.META_CONTEXT, body)
        if is_set:
            self._meta_export = export
            self._meta_ids = tuple(context_id for context_id, _ in matched)
        self._reply(option, Reply.ACK)
        self._transition(_Input.OPTION_ANSWERED)


_HANDLERS: dict[int, Callable[[ServerHandshake, int, bytes], None]] = {
    Option.EXPORT_NAME: ServerHandshake._opt_export_name,
    Option.ABORT: ServerHandshake._opt_abort,
    Option.STARTTLS: ServerHandshake._opt_starttls,
    Option.LIST: ServerHandshake._opt_list,
    Option.INFO: ServerHandshake._opt_info_go,
    Option.GO: ServerHandshake._opt_info_go,
    Option.STRUCTURED_REPLY: ServerHandshake._opt_structured_reply,
    Option.LIST_META_CONTEXT: ServerHandshake._opt_meta_context,
    Option.SET_META_CONTEXT: ServerHandshake._opt_meta_context,
}


def _match_contexts(queries: list[str], listing: bool) -> list[tuple[int, str]]:
    """Contexts we serve that the queries select ("Metadata querying"). Only base:allocation.

    With no queries, LIST returns every context and SET selects none; the query ``base:`` lists
    every context in the ``base`` namespace."""
    base = (wire.BASE_ALLOCATION_ID, wire.BASE_ALLOCATION)
    if not queries:
        return [base] if listing else []
    for query in queries:
        if query == wire.BASE_ALLOCATION or (listing and query == "base:"):
            return [base]
    return []


def _decode_string(raw: bytes, what: str, strict: bool = True) -> str:
    if len(raw) > wire.MAX_STRING_BYTES:
        raise _BadOption(f"{what} is longer than {wire.MAX_STRING_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if strict:
            raise _BadOption(f"{what} is not valid UTF-8") from None
        return raw.decode("utf-8", "replace")


class _Reader:
    """Bounds-checked reads from an option payload; any overrun is ERR_INVALID, not a crash."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int, what: str) -> bytes:
        if self._pos + n > len(self._data):
            raise _BadOption(f"option data ends inside the {what}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u16(self, what: str) -> int:
        value: int = wire.U16.unpack(self._take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = wire.U32.unpack(self._take(4, what))[0]
        return value

    def string(self, what: str) -> str:
        length = self.u32(f"{what} length")
        if length > wire.MAX_STRING_BYTES:
            raise _BadOption(f"{what} is longer than {wire.MAX_STRING_BYTES} bytes")
        return _decode_string(self._take(length, what), what)

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise _BadOption(f"{len(self._data) - self._pos} unexpected trailing bytes in option data")
