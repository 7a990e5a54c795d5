"""The least CPU a replicated 1 MiB write can add on this machine, whatever the code does.

Each replicated write costs, beyond what a standalone server spends on it: one more loopback TCP
transfer (the primary sends the data, the secondary receives it), one more write into a page
cache (the secondary's), and CRC32C twice (the frame is made and checked). This script measures
those four raw costs with nothing else around them: sendall/recv_into of 1 MiB buffers between
two processes, pwrite into a file already written once (steady state), google_crc32c. Python's
share is one call per MiB, so the figures are the kernel's and the CRC library's.

``bench/replication.py`` prints the standalone server's CPU per write (and fio's); set against the
sum below, it bounds the zero-RTT ratio lookahead / standalone that any implementation of the
design could reach on this machine when the cores are the limit:

    ratio <= (server + fio) / (server + fio + floor)

Run: ``.venv/bin/python bench/floor.py`` (about 5 s).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile

import google_crc32c

MiB = 1 << 20


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def tcp_transfer(data: bytes, count: int) -> tuple[float, float]:
    """CPU seconds of the sender and of the receiver (another process) for ``count`` sends."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the receiver
            conn, _ = server.accept()
            buf = bytearray(256 * 1024)
            got, start = 0, cpu_s()
            while got < count * len(data):
                got += conn.recv_into(buf)
            os.write(write_end, repr(cpu_s() - start).encode())
            os._exit(0)
        with socket.create_connection(server.getsockname()) as sender:
            sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = cpu_s()
            for _ in range(count):
                sender.sendall(data)
            sent = cpu_s() - start
        os.waitpid(pid, 0)
        received = float(os.read(read_end, 100))
        os.close(read_end)
        os.close(write_end)
    return sent, received


def page_cache_write(data: bytes, count: int, directory: str) -> float:
    size = 256 * MiB
    with tempfile.NamedTemporaryFile(dir=directory) as file:
        fd = file.fileno()
        for offset in range(0, size, len(data)):  # steady state: every page written once before
            os.pwrite(fd, data, offset)
        start = cpu_s()
        for index in range(count):
            os.pwrite(fd, data, (index * len(data)) % size)
        return cpu_s() - start


def crc(data: bytes, count: int) -> float:
    start = cpu_s()
    for _ in range(count):
        google_crc32c.value(data)
    return cpu_s() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000, help="1 MiB operations per measurement")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the page-cache file goes")
    args = parser.parse_args()
    data = os.urandom(MiB)
    sent, received = tcp_transfer(data, args.count)
    written = page_cache_write(data, args.count, args.dir)
    checked = crc(data, args.count)

    def us(seconds: float) -> float:
        return seconds / args.count * 1e6

    floor = us(sent) + us(received) + us(written) + 2 * us(checked)
    print(f"per MiB: TCP loopback send {us(sent):.0f} us, receive {us(received):.0f} us; "
          f"pwrite into the page cache {us(written):.0f} us; CRC32C {us(checked):.0f} us")
    print(f"a replicated 1 MiB write adds at least {floor:.0f} us of CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
