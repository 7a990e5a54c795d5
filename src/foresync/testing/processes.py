"""Child processes for the demos, the benches and the chaos runs: a free port, waiting until a
server listens, and a clean stop. One copy, shared, like ``testing.fio``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out as a connection's source port (Linux), or 0."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_next_port = 0


def bind_free_port(sock: socket.socket) -> int:
    """Bind ``sock`` on 127.0.0.1 to a free port below the kernel's ephemeral range, so that no
    outgoing connection of another process can take it as its source port before a site that
    is restarted binds it again (a chaos run once failed with "Address already in use" that
    way); port 0 (the kernel's choice) where that range leaves too little room below it."""
    global _next_port
    floor = _ephemeral_floor()
    low = 20000
    if floor - low >= 2000:
        span = floor - low
        if not _next_port:
            _next_port = low + (os.getpid() * 97) % span  # processes start at different places
        for _ in range(span):
            port = _next_port
            _next_port = low + (_next_port - low + 1) % span
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    sock.bind(("127.0.0.1", 0))
    bound: int = sock.getsockname()[1]
    return bound


def free_port() -> int:
    """A port that is free right now on 127.0.0.1 (``bind_free_port``)."""
    with socket.socket() as sock:
        return bind_free_port(sock)


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
