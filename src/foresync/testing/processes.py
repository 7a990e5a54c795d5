"""Child processes for the demos, the benches and the chaos runs: a free port, waiting until a
server listens, and a clean stop. One copy, shared, like ``testing.fio``."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def free_port() -> int:
    """A port the kernel considers free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_listening(port: int, proc: subprocess.Popen[bytes], name: str, timeout_s: float = 15.0) -> None:
    """Until something accepts on ``port``; a RuntimeError naming ``name`` if ``proc`` exits
    first or nothing listens within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with status {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout_s} s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> bool:
    """SIGTERM and wait, SIGKILL after ``timeout_s``; True if it exited on its own with status 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    return proc.returncode == 0
