"""``foresync serve`` as a person runs it: file creation, --size, refusals, --read-only, names, SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import (
    SIZE_BYTES,
    STOP_TIMEOUT_S,
    ServerProcess,
    StartServer,
    file_bytes,
    qemu_io,
    run_tool,
    serve_argv,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
GiB = 1024 * MiB


def run_serve_expecting_refusal(argv: list[str], preexec_fn: Callable[[], None] | None = None,
                                ) -> subprocess.CompletedProcess[str]:
    """Run a ``foresync serve`` that must refuse to start; a server that starts instead is a failure."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=STOP_TIMEOUT_S,
                                check=False, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        pytest.fail(f"foresync serve started instead of refusing: {argv}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def snapshot(path: Path) -> tuple[str, int, int, int]:
    """Everything a careless open/truncate/write would change: content, size, mtime, allocation."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_blocks


def test_missing_file_is_created_sparse(start_server: StartServer, tmp_path: Path) -> None:
    data_path = tmp_path / "big.img"
    assert not data_path.exists()
    start_server(GiB, size_arg="1GiB", data_path=data_path)
    st = data_path.stat()
    assert st.st_size == GiB
    # ftruncate allocates nothing; a server that wrote zeroes would hold 1 GiB of blocks.
    assert st.st_blocks * 512 <= 64 * 1024, f"{st.st_blocks} blocks allocated"


@pytest.mark.parametrize(("size_arg", "size_bytes"), [
    ("256MiB", 256 * MiB),
    ("1GiB", GiB),
    ("4194304", 4 * MiB),
])
def test_size_forms(start_server: StartServer, size_arg: str, size_bytes: int) -> None:
    server = start_server(size_bytes, size_arg=size_arg)
    assert server.volume.data_path.stat().st_size == size_bytes
    reported = run_tool(["nbdinfo", "--size", server.url]).stdout.strip()
    assert int(reported) == size_bytes


@pytest.mark.parametrize("size_arg", ["32MiB", "128MiB", str(SIZE_BYTES + 512)])
def test_size_mismatch_is_refused_and_file_untouched(tmp_path: Path, size_arg: str) -> None:
    data_path = tmp_path / "existing.img"
    with data_path.open("wb") as volume:
        volume.truncate(SIZE_BYTES)
        volume.write(os.urandom(4096))
        volume.seek(SIZE_BYTES // 2)
        volume.write(os.urandom(4096))
    os.utime(data_path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = snapshot(data_path)

    result = run_serve_expecting_refusal(serve_argv(data_path, size_arg))

    assert f"{SIZE_BYTES} bytes" in result.stderr
    assert "refusing" in result.stderr
    assert str(data_path) in result.stderr
    assert snapshot(data_path) == before


@pytest.mark.parametrize(("size_arg", "message"), [
    ("12XB", "unknown unit"),
    ("0", "greater than zero"),
    ("lots", "expected a size"),
])
def test_bad_size_is_refused_before_creating_anything(tmp_path: Path, size_arg: str,
                                                      message: str) -> None:
    data_path = tmp_path / "never.img"
    result = run_serve_expecting_refusal(serve_argv(data_path, size_arg))
    assert "--size" in result.stderr
    assert message in result.stderr
    assert not data_path.exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    data_path = tmp_path / "no-such-dir" / "vol.img"
    result = run_serve_expecting_refusal(serve_argv(data_path, "1MiB"))
    assert f"cannot create volume {data_path}" in result.stderr
    assert not data_path.parent.exists()


def test_size_beyond_any_file_is_refused(tmp_path: Path) -> None:
    data_path = tmp_path / "huge.img"
    result = run_serve_expecting_refusal(serve_argv(data_path, "16777216TiB"))  # 2**64 bytes
    assert "larger than any file" in result.stderr
    assert not data_path.exists()


def _limit_file_size_to_1mib() -> None:
    # ftruncate past RLIMIT_FSIZE fails with EFBIG (Python ignores the SIGXFSZ that comes with it),
    # the same failure a filesystem's own size limit gives, on any filesystem.
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))


def test_failed_creation_leaves_no_file_behind(tmp_path: Path) -> None:
    data_path = tmp_path / "too-big.img"
    result = run_serve_expecting_refusal(serve_argv(data_path, "2MiB"), _limit_file_size_to_1mib)
    assert f"cannot create volume {data_path}" in result.stderr
    assert "File too large" in result.stderr
    # A leftover empty file would make the next start fail with a misleading size mismatch.
    assert not data_path.exists()


def test_read_only_needs_an_existing_file(tmp_path: Path) -> None:
    data_path = tmp_path / "absent.img"
    result = run_serve_expecting_refusal(serve_argv(data_path, "1MiB", read_only=True))
    assert "does not exist" in result.stderr
    assert not data_path.exists()


def test_read_only_serves_reads_and_refuses_writes(start_server: StartServer,
                                                   tmp_path: Path) -> None:
    data_path = tmp_path / "ro.img"
    with data_path.open("wb") as volume:
        volume.truncate(SIZE_BYTES)
        volume.write(b"\xa5" * 65536)
    before = snapshot(data_path)
    server = start_server(data_path=data_path, read_only=True)

    qemu_io(server.url, "read -P 0xa5 0 64k", "read -P 0 64k 64k", read_only=True)
    write = qemu_io(server.url, "write -P 0xcd 0 4k", ok=None)
    assert write.returncode != 0, write.stdout
    assert "wrote" not in write.stdout
    zero = qemu_io(server.url, "write -z 0 4k", ok=None)
    assert zero.returncode != 0, zero.stdout

    assert snapshot(data_path) == before


def test_default_empty_export_name_reaches_the_export(server: ServerProcess) -> None:
    qemu_io(server.url, "write -P 0x5a 1M 64k")

    info = json.loads(run_tool(["nbdinfo", "--json", server.base_url]).stdout)
    assert [export["export-size"] for export in info["exports"]] == [server.volume.size]
    qemu_io(server.base_url, "read -P 0x5a 1M 64k", "write -P 0x3c 2M 4k")
    qemu_io(server.url, "read -P 0x3c 2M 4k")


def test_unknown_export_name_is_refused(server: ServerProcess) -> None:
    result = run_tool(["nbdinfo", f"{server.base_url}/no-such-export"], ok=None)
    assert result.returncode != 0
    assert "no-such-export" in result.stderr


def _recv_exact(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {length} bytes")
        data += chunk
    return data


def _recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _negotiate_export_name(port: int, name: bytes) -> tuple[socket.socket, int]:
    """A hand-rolled fixed-newstyle handshake (NBD spec "Newstyle negotiation") with
    NBD_OPT_EXPORT_NAME, independent of the server's own code; returns the socket and export size."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STOP_TIMEOUT_S)
    magic, opts_magic, _flags = struct.unpack(">8sQH", _recv_exact(sock, 18))
    assert (magic, opts_magic) == (b"NBDMAGIC", 0x49484156454F5054)
    fixed_newstyle, no_zeroes = 1, 2
    sock.sendall(struct.pack(">I", fixed_newstyle | no_zeroes))
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)  # NBD_OPT_EXPORT_NAME
    size, _transmission_flags = struct.unpack(">QH", _recv_exact(sock, 10))
    return sock, size


def test_sigterm_with_clients_connected_exits_zero(start_server: StartServer) -> None:
    server = start_server()
    qemu_io(server.url, "write -P 0x77 0 1M", "flush")
    idle, size = _negotiate_export_name(server.volume.port, b"vol0")
    assert size == server.volume.size
    mid_handshake = socket.create_connection(("127.0.0.1", server.volume.port), timeout=5)
    try:
        assert server.stop() == 0, server.log()
        # The server closed both connections on its way out rather than leaving them dangling.
        assert _recv_until_eof(idle) == b""
        assert _recv_until_eof(mid_handshake)[:8] == b"NBDMAGIC"  # the greeting, then EOF
    finally:
        idle.close()
        mid_handshake.close()
    assert "stopping" in server.log()
    assert file_bytes(server.volume.data_path, 0, 1 * MiB) == b"\x77" * MiB
