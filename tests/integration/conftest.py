"""Integration fixtures: a real ``foresync serve`` process and the Debian NBD clients that use it.

Each server is a subprocess listening on ``127.0.0.1:0``: the kernel picks a free port and we read
it back from the line the CLI prints, so parallel runs never race for a port the way
"find a free port, then bind it" does. We still connect once before handing the server out, so a
test never starts against a server that is not accepting yet.

The server's stderr goes to a file in ``tmp_path``, not a pipe: a chatty server cannot block on a
full pipe, and the log is quoted in every failure message. Teardown sends SIGTERM and requires exit
status 0, because a clean shutdown is part of the contract under test.

A missing client tool fails the test (never skips it): a green run must mean every client ran.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import pytest

from .sites import (
    FORESYNC,
    TOOL_TIMEOUT_S,
    MakePair,
    describe,
    open_site_pairs,
    require_tool,
    run_tool,
)

__all__ = ["FORESYNC", "TOOL_TIMEOUT_S", "describe", "require_tool", "run_tool"]
EXPORT = "vol0"
SIZE_BYTES = 64 * 1024 * 1024
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
# cli.serve prints this once it is listening: "serving PATH as nbd://HOST:PORT/EXPORT"
_ANNOUNCE_RE = re.compile(r"^serving .+ as nbds?://(?P<host>[^\s/]+):(?P<port>\d+)/", re.MULTILINE)
# Python with libnbd's bindings (python3-libnbd) is Debian's, not the venv's.
SYSTEM_PYTHON = "/usr/bin/python3"


def require_python_libnbd() -> str:
    """Return Debian's python3 if it can ``import nbd`` (python3-libnbd), else fail the test."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import nbd"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.fail("needs python3-libnbd: run make setup", pytrace=False)
    return SYSTEM_PYTHON


class ServedVolume(NamedTuple):
    url: str
    data_path: Path
    port: int
    size: int


@dataclass
class ServerProcess:
    """One running ``foresync serve``; ``stop()`` ends it and returns its exit status."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    volume: ServedVolume
    export: str
    stopped_status: int | None = field(default=None)

    @property
    def url(self) -> str:
        return self.volume.url

    @property
    def base_url(self) -> str:
        """The URL without an export name: it selects the default (empty) export name."""
        return f"nbd://127.0.0.1:{self.volume.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.stopped_status is not None:
            return self.stopped_status
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"foresync serve ignored {sig.name} for {STOP_TIMEOUT_S} s\n{self.log()}")
        self.stopped_status = status
        return status


class StartServer(Protocol):
    def __call__(self, size_bytes: int = ..., *, size_arg: str | None = ...,
                 data_path: Path | None = ..., export: str = ...,
                 read_only: bool = ..., extra_args: Sequence[str] = ...) -> ServerProcess: ...


def serve_argv(data_path: Path, size_arg: str, *, listen: str = "127.0.0.1:0",
               export: str = EXPORT, read_only: bool = False) -> list[str]:
    if not FORESYNC.exists():
        pytest.fail(f"needs {FORESYNC} (the foresync entry point): run make setup", pytrace=False)
    argv = [str(FORESYNC), "serve", "--data", str(data_path), "--size", size_arg,
            "--listen", listen, "--export", export]
    return [*argv, "--read-only"] if read_only else argv


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _ANNOUNCE_RE.search(log_path.read_text(errors="replace"))
        if match is not None:
            port = int(match["port"])
            with socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT_S):
                return port
        if proc.poll() is not None:
            pytest.fail(f"foresync serve exited with status {proc.returncode} before listening\n"
                        f"{log_path.read_text(errors='replace')}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"foresync serve did not listen within {STARTUP_TIMEOUT_S} s\n"
                f"{log_path.read_text(errors='replace')}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: start ``foresync serve`` processes; every one still running is SIGTERMed at the end
    and must exit 0, and no server may have logged a traceback."""
    servers: list[ServerProcess] = []

    def start(size_bytes: int = SIZE_BYTES, *, size_arg: str | None = None,
              data_path: Path | None = None, export: str = EXPORT,
              read_only: bool = False, extra_args: Sequence[str] = ()) -> ServerProcess:
        number = len(servers)
        path = data_path if data_path is not None else tmp_path / f"vol{number}.img"
        if read_only and data_path is None:  # a read-only server will not create its file
            with path.open("wb") as empty:
                empty.truncate(size_bytes)
        log_path = tmp_path / f"serve{number}.log"
        argv = [*serve_argv(path, size_arg or str(size_bytes), export=export, read_only=read_only),
                *extra_args]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        port = _wait_listening(proc, log_path)
        volume = ServedVolume(f"nbd://127.0.0.1:{port}/{export}", path, port, size_bytes)
        server = ServerProcess(proc, log_path, volume, export)
        servers.append(server)
        return server

    yield start
    failures = []
    for server in servers:
        was_running = server.stopped_status is None
        status = server.stop()
        if was_running and status != 0:
            failures.append(f"{server.url}: exit status {status} after SIGTERM\n{server.log()}")
        elif "Traceback" in server.log():  # an exception the loop logged and the client survived
            failures.append(f"{server.url}: the server logged an exception\n{server.log()}")
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A read-write 64 MiB export named ``vol0`` on a fresh sparse file."""
    return start_server()


@pytest.fixture
def nbd_server(server: ServerProcess) -> ServedVolume:
    """``(url, data_path, port, size)`` of a running read-write 64 MiB export."""
    return server.volume


def qemu_io(url: str, *commands: str, read_only: bool = False,
            ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
    """Run qemu-io commands in one session on the raw export at ``url``.

    qemu-io exits non-zero when any command fails, a ``read -P`` pattern mismatch included."""
    argv = ["qemu-io", "-f", "raw", *(["-r"] if read_only else [])]
    for command in commands:
        argv += ["-c", command]
    return run_tool([*argv, url], ok=ok)


def file_bytes(path: Path, offset: int, length: int) -> bytes:
    """Bytes of the server's data file, read directly rather than through NBD."""
    with path.open("rb") as volume:
        volume.seek(offset)
        return volume.read(length)


@pytest.fixture
def make_pair(tmp_path: Path) -> Iterator[MakePair]:
    """Pairs of real sites on loopback, stopped (and their processes reaped) after the test."""
    with open_site_pairs(tmp_path) as make:
        yield make
