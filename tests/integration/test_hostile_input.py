"""Hostile input against live processes ("Security and hardening", "Hostile input").

A live ``foresync serve`` takes well over 100,000 malformed NBD frames, and a live secondary's
link listener a few thousand damaged link frames. Then the server must still be running and
serving real clients (nbdinfo, qemu-io, nbdcopy), every bad frame must have had the answer the
protocol prescribes, and not one byte of the volume may have changed.

Throughput comes from the protocol: a malformed request or option that the server can answer
(out of range, bad flags, unknown command or option, malformed option data) gets an error reply
and the connection carries on, so most frames go in pipelined batches over a few connections,
each reply checked against its request by cookie (or by option). Only the fatal kinds (bad
magic, bad client flags, garbage, a damaged link frame) need a connection each: everything is
sent in one write, then the connection must end (EOF or reset) within ``IO_TIMEOUT_S``.

Every random choice comes from ``random.Random(SEED)``, so a failure replays exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import pytest

from foresync.link import wire as link_wire

from .conftest import ServerProcess, StartServer, run_tool
from .sites import MiB, Settings, SitePair, assert_pattern

pytestmark = pytest.mark.integration

SEED = 20261126
VOLUME_BYTES = 48 * MiB  # over 32 MiB, so only the payload limit refuses the oversized WRITE
HEAD_BYTE = 0xA5  # the first MiB; the rest is seeded random bytes
IO_TIMEOUT_S = 5.0
MAX_PAYLOAD = 32 * MiB  # the server's largest READ/WRITE (INFO_BLOCK_SIZE maximum)

# NBD, from proto.md
NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
REQUEST_MAGIC, SIMPLE_MAGIC, CHUNK_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
EXPORT_NAME, ABORT, LIST, PEEK_EXPORT, STARTTLS, INFO, GO = 1, 2, 3, 4, 5, 6, 7
STRUCTURED_REPLY, LIST_META_CONTEXT, SET_META_CONTEXT, EXTENDED_HEADERS = 8, 9, 10, 11
REP_ACK, REP_ERR = 1, 1 << 31
REP_ERR_TOO_BIG = REP_ERR + 9
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = range(8)
EPERM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 22, 28, 75, 95
CHUNK_ERROR = (1 << 15) + 1

# How the bulk is split: a few long sessions carry the non-fatal frames.
SESSIONS = 4
OPTIONS_PER_SESSION = 4_000
REQUESTS_PER_SESSION = 22_000
BATCH = 2_000
FATAL_CONNECTIONS_PER_KIND = 300
LINK_CONNECTIONS_PER_KIND = 300
STRANGERS = 4  # connections that each park most of a maximum-size link frame
STRANGER_LIMIT_BYTES = 64 * MiB  # less than two parked frames


# -- a deliberately bad NBD client ----------------------------------------------------------------


def option(opt: int, payload: bytes = b"", *, magic: int = IHAVEOPT, length: int | None = None) -> bytes:
    return struct.pack(">QII", magic, opt, len(payload) if length is None else length) + payload


def string(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def request(command: int, offset: int, length: int, *, cookie: int, flags: int = 0,
            data: bytes = b"", magic: int = REQUEST_MAGIC) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, command, cookie, offset, length) + data


class Connection:
    """A blocking socket with a buffered reader; every read times out after ``IO_TIMEOUT_S``."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def read(self, n: int) -> bytes:
        data = self.reader.read(n)
        assert len(data) == n, f"connection ended after {len(data)} of {n} bytes"
        return data

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, opt, reply_type, length = struct.unpack(">QIII", self.read(20))
        assert magic == REPLY_MAGIC, f"bad option reply magic 0x{magic:x}"
        return opt, reply_type, self.read(length)

    def wait_closed(self) -> tuple[str, bytes]:
        """Read until the server ends the connection: ("eof" | "reset", what it sent first)."""
        received = bytearray()
        try:
            while chunk := self.reader.read1(65536):  # what the reader holds, then the socket
                received += chunk
        except ConnectionResetError:
            return "reset", bytes(received)
        except TimeoutError:
            return "hung", bytes(received)
        return "eof", bytes(received)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def nbd_connect(port: int) -> Connection:
    conn = Connection(port)
    magic, opt_magic, _ = struct.unpack(">QQH", conn.read(18))
    assert (magic, opt_magic) == (NBDMAGIC, IHAVEOPT)
    return conn


# -- non-fatal malformations: each must get exactly one error reply -------------------------------

Maker = Callable[[random.Random], tuple[int, bytes]]


def _bad_flag(rng: random.Random) -> int:
    return 1 << rng.randrange(5, 16)  # bits 0..4 are the defined command flags


def _past_end(rng: random.Random, length: int) -> int:
    return rng.randrange(VOLUME_BYTES - length + 1, VOLUME_BYTES + MiB)


# Requests as (command, flags, offset, length, payload); none may reach the volume.
BAD_REQUESTS: dict[str, Callable[[random.Random], tuple[int, int, int, int, bytes]]] = {
    "read_past_end": lambda r: (READ, 0, _past_end(r, 4096), 4096, b""),
    "read_offset_2**64": lambda r: (READ, 0, (1 << 64) - r.randrange(1, 4096), 4096, b""),
    "read_over_32MiB": lambda r: (READ, 0, 0, r.randrange(MAX_PAYLOAD + 1, 1 << 32), b""),
    "read_bad_flags": lambda r: (READ, _bad_flag(r), 0, 512, b""),
    "write_past_end": lambda r: (WRITE, 0, _past_end(r, 16), 16, b"\xee" * 16),
    "write_bad_flags": lambda r: (WRITE, _bad_flag(r), r.randrange(0, VOLUME_BYTES - 16), 16,
                                  b"\xee" * 16),
    "trim_past_end": lambda r: (TRIM, 0, _past_end(r, 4096), 4096, b""),
    "trim_bad_flags": lambda r: (TRIM, _bad_flag(r), r.randrange(0, VOLUME_BYTES - 4096), 4096, b""),
    "zeroes_past_end": lambda r: (WRITE_ZEROES, 0, _past_end(r, 4096), 4096, b""),
    "zeroes_bad_flags": lambda r: (WRITE_ZEROES, _bad_flag(r), r.randrange(0, VOLUME_BYTES - 4096),
                                   4096, b""),
    "cache_past_end": lambda r: (CACHE, 0, _past_end(r, 4096), 4096, b""),
    "block_status_no_context": lambda r: (BLOCK_STATUS, 0, 0, 4096, b""),
    "unknown_command": lambda r: (r.randrange(8, 1 << 16), 0, r.randrange(0, VOLUME_BYTES), 512, b""),
}
REQUEST_ERRNOS = {EPERM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP}


def _bad_info(r: random.Random) -> bytes:
    return r.choice([
        b"",
        struct.pack(">I", 1000) + b"x",  # name runs past the end
        string(b"") + struct.pack(">H", 3) + b"\0\1",  # fewer requests than counted
        string(b"") + struct.pack(">H", 0) + b"trailing",
        string(b"\xff\xfe") + struct.pack(">H", 0),  # not UTF-8
        string(b"no-such-export") + struct.pack(">H", 0),  # ERR_UNKNOWN
        struct.pack(">I", 0xFFFFFFFF),
    ])


# Options as (option, payload); each gets exactly one reply, an error, and negotiation goes on.
BAD_OPTIONS: dict[str, Callable[[random.Random], tuple[int, bytes]]] = {
    "unknown_option": lambda r: (r.randrange(EXTENDED_HEADERS + 1, 1 << 32), r.randbytes(r.randrange(33))),
    "unsupported_option": lambda r: (r.choice([PEEK_EXPORT, STARTTLS, EXTENDED_HEADERS]), b""),
    "list_with_data": lambda r: (LIST, r.randbytes(r.randrange(1, 17))),
    "info_malformed": lambda r: (INFO, _bad_info(r)),
    "go_malformed": lambda r: (GO, _bad_info(r)),
    "structured_reply_with_data": lambda r: (STRUCTURED_REPLY, r.randbytes(r.randrange(1, 9))),
    "set_meta_context_unstructured": lambda r: (
        SET_META_CONTEXT, string(b"") + struct.pack(">I", 1) + string(b"base:allocation")),
    "list_meta_context_malformed": lambda r: (
        LIST_META_CONTEXT, string(b"") + struct.pack(">I", r.choice([2, 1000, 0xFFFFFFFF])) + string(b"x")),
}


@dataclass
class Tally:
    frames: Counter[str] = field(default_factory=Counter)  # malformed frames sent, by kind
    outcomes: Counter[str] = field(default_factory=Counter)  # how each fatal connection ended

    @property
    def total(self) -> int:
        return sum(self.frames.values())


def haggle(conn: Connection, rng: random.Random, count: int, tally: Tally) -> None:
    """Send ``count`` bad options in pipelined batches; each must be answered by one error reply
    for that option, in order."""
    kinds = sorted(BAD_OPTIONS)
    sent = 0
    while sent < count:
        batch = []
        for _ in range(min(BATCH, count - sent)):
            kind = rng.choice(kinds)
            batch.append(BAD_OPTIONS[kind](rng))
            tally.frames[f"option:{kind}"] += 1
        conn.sock.sendall(b"".join(option(opt, payload) for opt, payload in batch))
        for opt, _ in batch:
            got_opt, reply_type, _ = conn.option_reply()
            assert got_opt == opt, f"reply for option {got_opt}, expected one for {opt}"
            assert reply_type & REP_ERR, f"option {opt} was accepted (reply type {reply_type})"
        sent += len(batch)
    # Options too large to buffer: skipped as they stream in, then ERR_TOO_BIG.
    for _ in range(3):
        conn.sock.sendall(option(INFO, rng.randbytes(64 * 1024 + 1)))
        assert conn.option_reply()[:2] == (INFO, REP_ERR_TOO_BIG)
        tally.frames["option:oversized"] += 1


def select_export(conn: Connection, structured: bool) -> None:
    if structured:
        conn.sock.sendall(option(STRUCTURED_REPLY))
        assert conn.option_reply()[:2] == (STRUCTURED_REPLY, REP_ACK)
    conn.sock.sendall(option(GO, string(b"") + struct.pack(">H", 0)))
    while (reply := conn.option_reply())[1] != REP_ACK:
        assert reply[1] & REP_ERR == 0, f"GO refused: {reply}"


def expected_reply_bytes(command: int, structured: bool) -> int:
    # An error for READ or BLOCK_STATUS is one structured ERROR chunk (20 + errno, message
    # length) once structured replies are on; every other error is a 16-byte simple reply.
    return 26 if structured and command in (READ, BLOCK_STATUS) else 16


def check_error_replies(data: bytes, cookies: list[int], structured_commands: list[bool]) -> None:
    pos = 0
    for cookie, chunked in zip(cookies, structured_commands, strict=True):
        if chunked:
            magic, flags, chunk_type, got, length = struct.unpack_from(">IHHQI", data, pos)
            assert (magic, flags, chunk_type, length) == (CHUNK_MAGIC, 1, CHUNK_ERROR, 6)
            (errno,) = struct.unpack_from(">I", data, pos + 20)
            pos += 26
        else:
            magic, errno, got = struct.unpack_from(">IIQ", data, pos)
            assert magic == SIMPLE_MAGIC, f"bad reply magic 0x{magic:08x}"
            pos += 16
        assert got == cookie, f"reply for cookie {got}, expected {cookie}"
        assert errno in REQUEST_ERRNOS, f"request {cookie} answered with errno {errno}"
    assert pos == len(data)


def bad_requests(conn: Connection, rng: random.Random, count: int, structured: bool,
                 tally: Tally, first_cookie: int) -> None:
    kinds = sorted(BAD_REQUESTS)
    sent = 0
    while sent < count:
        parts, cookies, chunked = [], [], []
        for i in range(min(BATCH, count - sent)):
            kind = rng.choice(kinds)
            command, flags, offset, length, payload = BAD_REQUESTS[kind](rng)
            cookie = first_cookie + sent + i
            parts.append(request(command, offset, length, cookie=cookie, flags=flags, data=payload))
            cookies.append(cookie)
            chunked.append(expected_reply_bytes(command, structured) == 26)
            tally.frames[f"request:{kind}"] += 1
        conn.sock.sendall(b"".join(parts))
        size = sum(26 if c else 16 for c in chunked)
        check_error_replies(conn.read(size), cookies, chunked)
        sent += len(parts)


def oversized_write(conn: Connection, tally: Tally) -> None:
    """One WRITE declaring more than the largest payload: refused, and its 32 MiB streamed
    through without reaching the volume."""
    length = MAX_PAYLOAD + 4096
    conn.sock.sendall(request(WRITE, 0, length, cookie=7))
    block = b"\xee" * MiB
    for _ in range(length // MiB):
        conn.sock.sendall(block)
    conn.sock.sendall(block[: length % MiB])
    check_error_replies(conn.read(16), [7], [False])
    tally.frames["request:write_over_32MiB"] += 1


# -- fatal malformations: one connection each ------------------------------------------------------

FLAGS = struct.pack(">I", 3)
GO_DEFAULT = option(GO, string(b"") + struct.pack(">H", 0))


def _garbage_after_go(r: random.Random) -> bytes:
    junk = r.randbytes(r.randrange(28, 200))
    return FLAGS + GO_DEFAULT + (junk if junk[:4] != struct.pack(">I", REQUEST_MAGIC) else b"\0" * 28)


# (stream, half-close after it): each makes the server end the connection. The torn ones then
# half-close, as a client that gives up; the server must close its side too.
FATAL: dict[str, tuple[Callable[[random.Random], bytes], bool]] = {
    "bad_client_flags": (lambda r: struct.pack(">I", r.randrange(4, 1 << 32)), False),
    "bad_option_magic": (lambda r: FLAGS + option(GO, magic=IHAVEOPT ^ r.randrange(1, 1 << 64)), False),
    "garbage_handshake": (lambda r: FLAGS + b"\xff" + r.randbytes(r.randrange(16, 200)), False),
    "export_name_unknown": (lambda r: FLAGS + option(EXPORT_NAME, b"nope%d" % r.randrange(1000)), False),
    "export_name_4GiB": (lambda r: FLAGS + option(EXPORT_NAME, length=r.randrange(1 << 20, 1 << 32)),
                         False),
    "bad_request_magic": (lambda r: FLAGS + GO_DEFAULT + request(
        READ, 0, 512, cookie=1, magic=REQUEST_MAGIC ^ r.randrange(1, 1 << 32)), False),
    "garbage_transmission": (_garbage_after_go, False),
    "torn_option_eof": (lambda r: FLAGS + option(INFO, b"x" * 40)[: r.randrange(1, 56)], True),
    "torn_request_eof": (lambda r: FLAGS + GO_DEFAULT + request(
        WRITE, 0, 4096, cookie=1, data=b"\xee" * 4096)[: r.randrange(1, 4124)], True),
}


def fatal_connections(port: int, rng: random.Random, tally: Tally) -> None:
    for _ in range(FATAL_CONNECTIONS_PER_KIND):
        for kind in sorted(FATAL):
            make, half_close = FATAL[kind]
            conn = nbd_connect(port)
            try:
                conn.sock.sendall(make(rng))
                if half_close:
                    conn.sock.shutdown(socket.SHUT_WR)
                outcome, received = conn.wait_closed()
            finally:
                conn.close()
            tally.frames[f"fatal:{kind}"] += 1
            tally.outcomes[f"{kind}:{outcome}"] += 1
            assert outcome != "hung", f"{kind}: the server kept the connection open"
            if received and kind.startswith(("bad_client", "bad_option", "garbage_hand", "export")):
                pytest.fail(f"{kind}: the server answered {received[:40]!r} to a fatal violation")


# -- the NBD test ------------------------------------------------------------------------------------


def fill_volume(path: Path) -> str:
    data = bytes([HEAD_BYTE]) * MiB + random.Random(SEED).randbytes(VOLUME_BYTES - MiB)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def assert_still_serving(server: ServerProcess, tmp_path: Path, digest: str) -> None:
    assert server.proc.poll() is None, f"the server died\n{server.log()}"
    size = run_tool(["nbdinfo", "--size", server.url]).stdout.strip()
    assert int(size) == VOLUME_BYTES
    run_tool(["qemu-io", "-f", "raw", "-r", "-c", f"read -P 0x{HEAD_BYTE:02x} 0 1M", server.url])
    copy = tmp_path / "copy.img"
    run_tool(["nbdcopy", server.url, str(copy)])
    assert file_digest(copy) == digest, "the volume read through the server has changed"


def test_nbd_server_survives_100k_malformed_frames(start_server: StartServer, tmp_path: Path) -> None:
    data_path = tmp_path / "volume.img"
    digest = fill_volume(data_path)
    server = start_server(VOLUME_BYTES, data_path=data_path)
    baseline_bytes = peak_rss_bytes(server.proc.pid)
    rng = random.Random(SEED)
    tally = Tally()
    started = time.monotonic()

    for session in range(SESSIONS):
        structured = session % 2 == 1
        conn = nbd_connect(server.volume.port)
        conn.sock.sendall(FLAGS)
        haggle(conn, rng, OPTIONS_PER_SESSION, tally)
        select_export(conn, structured)
        bad_requests(conn, rng, REQUESTS_PER_SESSION, structured, tally,
                     first_cookie=session * REQUESTS_PER_SESSION)
        if session == 0:
            oversized_write(conn, tally)
        conn.sock.sendall(request(DISC, 0, 0, cookie=0))
        assert conn.wait_closed() == ("eof", b""), "DISC did not end the session cleanly"
        conn.close()
    bulk_s = time.monotonic() - started
    fatal_connections(server.volume.port, rng, tally)
    elapsed_s = time.monotonic() - started

    fatal = sum(n for kind, n in tally.frames.items() if kind.startswith("fatal:"))
    print(f"\nNBD: {tally.total} malformed frames in {elapsed_s:.1f} s ({bulk_s:.1f} s for "
          f"{tally.total - fatal} over {SESSIONS} sessions, the rest for {fatal} connections "
          f"ending in {dict(sorted(Counter(k.split(':')[1] for k in tally.outcomes.elements()).items()))})")
    print("  frames by kind:", dict(sorted(tally.frames.items())))
    print("  fatal connections by ending:", dict(sorted(tally.outcomes.items())))
    assert tally.total >= 100_000
    assert sum(tally.outcomes.values()) == fatal == FATAL_CONNECTIONS_PER_KIND * len(FATAL)

    peak_bytes = peak_rss_bytes(server.proc.pid)
    print(f"  server peak RSS {peak_bytes / MiB:.0f} MiB (at start {baseline_bytes / MiB:.0f} MiB)")
    assert_still_serving(server, tmp_path, digest)
    assert file_digest(data_path) == digest, "the data file has changed"
    # The oversized WRITE streamed through without being buffered (its payload alone is 32 MiB).
    assert peak_bytes - baseline_bytes < MAX_PAYLOAD // 2, f"peak RSS {peak_bytes} bytes"
    assert "Traceback" not in server.log()


# -- the link listener ---------------------------------------------------------------------------------

LINK_MAGIC = 0x46534C4B
LINK_SECRET = "hostile-input-test-link-secret"


def link_frame(kind: int, payload: bytes, *, magic: int = LINK_MAGIC, length: int | None = None) -> bytes:
    prefix = struct.pack(">IBBHI", magic, kind, 0, 0, len(payload) if length is None else length)
    crc = google_crc32c.extend(google_crc32c.value(prefix), payload)
    return prefix + struct.pack(">I", crc) + payload


def _flipped(frame: bytes, r: random.Random, start: int = 0) -> bytes:
    damaged = bytearray(frame)
    index = r.randrange(start, len(damaged))
    if 8 <= index < 12:
        index = 12  # a damaged length only makes the frame wait for more; damage the CRC instead
    damaged[index] ^= 1 << r.randrange(8)
    return bytes(damaged)


def _hello(r: random.Random) -> bytes:
    return link_wire.encode_frame(link_wire.Hello(
        link_wire.PROTOCOL_VERSION, link_wire.Role.PRIMARY, 0, r.randbytes(16), VOLUME_BYTES, MiB,
        r.randrange(1, 100)))


def _stray_message(r: random.Random) -> bytes:
    """A well-formed frame that is not a HELLO: refused as a first message, never applied."""
    messages: list[link_wire.Message] = [
        link_wire.Write(r.randrange(1, 1 << 32), r.randrange(0, 16) * MiB, 0, 0, (), b"\xee" * 4096),
        link_wire.Zero(1, 0, VOLUME_BYTES, 0, 0, ()),
        link_wire.Demote((1, 2, 3)),
        link_wire.Remove((0, 1), ()),
        link_wire.Sync(1),
        link_wire.Verify(1, 0, 16),
    ]
    return link_wire.encode_frame(r.choice(messages))


def _forged_authentication(r: random.Random) -> bytes:
    """A challenge and then a proof that cannot be right: the attacker does not know the secret."""
    return (link_wire.encode_frame(link_wire.AuthChallenge(r.randbytes(32)))
            + link_wire.encode_frame(link_wire.AuthProof(r.randbytes(32))))


# Each must make the secondary drop the connection; none may touch its image or its real link.
LINK_ATTACKS: dict[str, Callable[[random.Random], bytes]] = {
    "random_bytes": lambda r: r.randbytes(r.randrange(16, 300)),
    "bad_magic": lambda r: link_frame(link_wire.MessageType.PING, bytes(8),
                                      magic=LINK_MAGIC ^ r.randrange(1, 1 << 32)),
    "bad_crc_hello": lambda r: _flipped(_hello(r), r, start=12),
    "bit_flipped_hello": lambda r: _flipped(_hello(r), r),
    "length_4GiB": lambda r: link_frame(link_wire.MessageType.WRITE, b"",
                                        length=r.randrange(1 << 30, 1 << 32)),
    "unknown_type": lambda r: link_frame(r.randrange(20, 256), r.randbytes(8)),
    "malformed_hello_payload": lambda r: link_frame(link_wire.MessageType.HELLO,
                                                    r.randbytes(r.randrange(60))),
    "stray_message": _stray_message,
    "forged_authentication": _forged_authentication,
}
# What a secondary may say to a stranger before hanging up: a refusal, or (with a secret) its
# answer to the stranger's challenge. A WELCOME would mean garbage passed for a HELLO.
LINK_REPLIES = (link_wire.Refuse, link_wire.AuthResponse)


def link_attack(port: int, rng: random.Random, tally: Tally) -> None:
    for _ in range(LINK_CONNECTIONS_PER_KIND):
        for kind in sorted(LINK_ATTACKS):
            conn = Connection(port)
            try:
                conn.sock.sendall(LINK_ATTACKS[kind](rng))
                outcome, received = conn.wait_closed()
            finally:
                conn.close()
            tally.frames[f"link:{kind}"] += 1
            assert outcome != "hung", f"{kind}: the secondary kept the connection open"
            replies = link_wire.FrameDecoder().feed(received)
            assert all(isinstance(m, LINK_REPLIES) for m in replies), f"{kind}: answered {replies}"
            refused = any(isinstance(m, link_wire.Refuse) for m in replies)
            tally.outcomes[f"{kind}:{outcome}{'+refuse' if refused else ''}"] += 1



def started_pair(make_pair: Callable[..., SitePair], tmp_path: Path, secret: bool) -> SitePair:
    settings = Settings(size="16MiB", capacity=8)
    if secret:
        path = tmp_path / "link-secret"
        path.write_text(LINK_SECRET + "\n")
        path.chmod(0o600)
        settings = dataclasses.replace(settings, link_extra=f'secret_file = "{path}"\n')
    pair = make_pair(settings)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    return pair


@pytest.mark.parametrize("secret", [False, True], ids=["no_secret", "secret"])
def test_secondary_link_listener_survives_damaged_frames(make_pair: Callable[..., SitePair],
                                                         tmp_path: Path, secret: bool) -> None:
    pair = started_pair(make_pair, tmp_path, secret)
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 2M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()

    rng = random.Random(SEED)
    tally = Tally()
    started = time.monotonic()
    link_attack(pair.secondary.link_port, rng, tally)
    elapsed_s = time.monotonic() - started
    endings = Counter(k.split(":")[1] for k in tally.outcomes.elements())
    print(f"\nlink ({'secret' if secret else 'no secret'}): {tally.total} damaged frames on "
          f"{tally.total} connections in {elapsed_s:.1f} s, ending in {dict(sorted(endings.items()))}; "
          f"secondary link_error now {pair.status(pair.secondary)['link_error']!r}")
    assert tally.total == LINK_CONNECTIONS_PER_KIND * len(LINK_ATTACKS)

    # The real link never noticed: still connected, still replicating.
    assert pair.secondary.running and pair.primary.running, pair.logs()
    assert pair.status(pair.secondary)["link"] == "connected"
    # Strangers' failures are logged, but do not overwrite the healthy link's state in /status.
    assert pair.status(pair.secondary)["link_error"] == ""
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4M 1M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()
    pair.stop_both()
    pair.assert_identical()  # no stray WRITE or ZERO reached the secondary's image
    assert_pattern(pair.secondary.data_path, 0, 2 * MiB, 0x3C)
    assert_pattern(pair.secondary.data_path, 4 * MiB, MiB, 0x5A)
    for site in pair.sites:
        assert "Traceback" not in site.log(), pair.logs()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def test_strangers_cannot_make_a_secondary_buffer_without_bound(make_pair: Callable[..., SitePair],
                                                                tmp_path: Path) -> None:
    pair = started_pair(make_pair, tmp_path, secret=False)
    assert pair.secondary.proc is not None
    pid = pair.secondary.proc.pid
    before = rss_bytes(pid)
    strangers = []
    try:
        for _ in range(STRANGERS):
            # A WRITE frame that declares just under the limit and then sends all but its last MiB.
            sock = socket.create_connection(("127.0.0.1", pair.secondary.link_port), timeout=IO_TIMEOUT_S)
            strangers.append(sock)
            header = struct.pack(">IBBHII", LINK_MAGIC, link_wire.MessageType.WRITE, 0, 0, 33 * MiB - 1, 0)
            with contextlib.suppress(ConnectionError):  # refused at the header: what a fix would do
                sock.sendall(header + bytes(32 * MiB))
        grown = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and grown <= STRANGER_LIMIT_BYTES:
            grown = rss_bytes(pid) - before
            time.sleep(0.05)
        print(f"\n{STRANGERS} strangers made the secondary grow by {grown / MiB:.0f} MiB")
        assert grown <= STRANGER_LIMIT_BYTES, (
            f"{STRANGERS} unauthenticated connections made the secondary hold {grown / MiB:.0f} MiB more")
    finally:
        for sock in strangers:
            sock.close()
