"""One link connection per volume, or one shared by every volume? (issue 16 part 1, the link.)

What a shared connection would cost is head-of-line blocking: its bytes leave in the order they
were queued, so a host write to volume B waits behind whatever volume A queued before it, and a
resync queues as much as flow control lets it. Separate connections through the same bottleneck
share it flow by flow instead (TCP's fairness, roughly round robin).

This bench emulates exactly that difference and nothing else. Both sites run for real (two
``foresync run`` daemons with two volumes each, ``[[volume]]`` tables); the primary's link goes
through a user-space bottleneck of ``--rate`` (50 MB/s: a 400 Mb/s WAN) that holds at most
``--queue`` (4 MiB) per queue, in one of two disciplines:

* ``fifo``: every connection's chunks in one queue, in arrival order: a shared connection;
* ``fair``: one queue per connection, served round robin: per-volume connections (ours).

Volume A (256 MiB of random data) meets a new secondary: a full resync that keeps its queue
full. Volume B (sync mode: every write waits for the secondary) takes 4 KiB random writes at
QD1 from fio for ``--seconds`` during A's resync, and again once A is in sync (the baseline of
the same run). Printed: B's write latency p50, p99 and IOPS in each case and discipline.

Run: ``.venv/bin/python bench/link_share.py [--rate 50MB] [--queue 4MiB]``. The machine may be
shared (the figures say how loaded): compare the disciplines of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from volumes import FORESYNC, status, wait_for  # bench/volumes.py, on sys.path as a script

from foresync.testing.processes import free_port, stop_process
from foresync.units import parse_size

CHUNK = 64 * 1024


class Bottleneck:
    """Upstream (primary -> secondary) chunks leave at ``rate`` bytes/s, ``fair`` or ``fifo``."""

    def __init__(self, rate: float, queue_bytes: int, fair: bool) -> None:
        self.rate, self.queue_bytes, self.fair = rate, queue_bytes, fair
        self.queues: dict[int, collections.deque[tuple[bytes, asyncio.StreamWriter]]] = {}
        self.queued: dict[int, int] = collections.defaultdict(int)
        self.fifo: collections.deque[int] = collections.deque()  # connection ids, arrival order
        self.turn: collections.deque[int] = collections.deque()  # round robin
        self.changed = asyncio.Event()

    def _full(self, conn: int) -> bool:
        if self.fair:
            return self.queued[conn] >= self.queue_bytes
        return sum(self.queued.values()) >= self.queue_bytes

    async def put(self, conn: int, data: bytes, writer: asyncio.StreamWriter) -> None:
        while self._full(conn):
            self.changed.clear()
            await self.changed.wait()
        queue = self.queues.setdefault(conn, collections.deque())
        if not queue and conn not in self.turn:
            self.turn.append(conn)
        queue.append((data, writer))
        self.queued[conn] += len(data)
        self.fifo.append(conn)
        self.changed.set()

    def _next(self) -> int | None:
        if not self.fair:
            return self.fifo.popleft() if self.fifo else None
        while self.turn:
            conn = self.turn.popleft()
            if self.queues.get(conn):
                return conn
        return None

    async def run(self) -> None:
        departs = time.monotonic()
        while True:
            conn = self._next()
            if conn is None:
                self.changed.clear()
                await self.changed.wait()
                continue
            data, writer = self.queues[conn].popleft()
            if self.fair and self.queues[conn]:
                self.turn.append(conn)
            departs = max(departs, time.monotonic()) + len(data) / self.rate
            delay = departs - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.queued[conn] -= len(data)
            self.changed.set()
            if not writer.is_closing():
                writer.write(data)


async def serve(listen: int, target: int, bottleneck: Bottleneck, ready: threading.Event,
                stopping: list[asyncio.Event]) -> None:
    ids = iter(range(1 << 30))

    async def pipe_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(ids)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        down = asyncio.ensure_future(pipe_down(up_reader, writer))
        try:
            while data := await reader.read(CHUNK):
                await bottleneck.put(conn, data, up_writer)
        except ConnectionError:
            pass
        finally:
            up_writer.close()
            down.cancel()

    server = await asyncio.start_server(accepted, "127.0.0.1", listen)
    runner = asyncio.ensure_future(bottleneck.run())
    stop = asyncio.Event()
    stopping.append(stop)
    ready.set()
    async with server:
        await stop.wait()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


def config(directory: Path, site: str, ports: dict[str, int], peer: int) -> Path:
    path = directory / f"{site}.toml"
    path.write_text(
        f'[nbd]\nlisten = "127.0.0.1:{ports["nbd"]}"\n'
        f'[link]\nlisten = "127.0.0.1:{ports["link"]}"\npeer = "127.0.0.1:{peer}"\n'
        f'[record]\ncapacity = 64\n[admin]\nlisten = "127.0.0.1:{ports["admin"]}"\n'
        f'[[volume]]\nname = "a"\ndata = "{site}-a.img"\nsize = "256MiB"\nmeta = "{site}-a.meta"\n'
        f'[[volume]]\nname = "b"\ndata = "{site}-b.img"\nsize = "64MiB"\nmeta = "{site}-b.meta"\n'
        'mode = "sync"\n')
    return path


def volume(port: int, name: str) -> dict[str, Any]:
    doc = status(port) or {}
    part: dict[str, Any] = doc.get("volumes", {}).get(name, {})
    return part


def fio_b(nbd_port: int, seconds: int) -> dict[str, float]:
    result = subprocess.run(
        ["fio", "--output-format=json", "--name=b", "--ioengine=nbd",
         f"--uri=nbd://127.0.0.1:{nbd_port}/b", "--rw=randwrite", "--bs=4k", "--iodepth=1",
         "--time_based", f"--runtime={seconds}", "--size=16M", "--randrepeat=0"],
        capture_output=True, text=True, check=True, timeout=seconds + 60)
    job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]["write"]
    pct = job["clat_ns"]["percentile"]
    return {"p50_ms": pct["50.000000"] / 1e6, "p99_ms": pct["99.000000"] / 1e6, "iops": job["iops"]}


def run_case(fair: bool, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    ports = {s: {"nbd": free_port(), "link": free_port(), "admin": free_port()} for s in "ps"}
    proxy = free_port()
    paths = {"p": config(directory, "p", ports["p"], proxy),
             "s": config(directory, "s", ports["s"], ports["p"]["link"])}
    subprocess.run([FORESYNC, "init", "--config", str(paths["p"]), "--role", "primary"],
                   check=True, capture_output=True)
    subprocess.run([FORESYNC, "init", "--config", str(paths["s"]), "--role", "secondary"],
                   check=True, capture_output=True)
    with (directory / "p-a.img").open("r+b") as image:  # data the new secondary lacks
        for _ in range(256):
            image.write(os.urandom(1 << 20))
    bottleneck = Bottleneck(args.rate, args.queue, fair)
    ready = threading.Event()
    stopping: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, daemon=True,
                              args=(serve(proxy, ports["s"]["link"], bottleneck, ready, stopping),))
    thread.start()
    ready.wait(10)
    procs = []
    for site in "sp":
        with (directory / f"{site}.log").open("ab") as log:
            procs.append(subprocess.Popen([FORESYNC, "run", "--config", str(paths[site])],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
    try:
        admin = ports["p"]["admin"]
        wait_for("b in sync", lambda: bool(volume(admin, "b").get("in_sync")), procs)
        resyncing = fio_b(ports["p"]["nbd"], args.seconds)
        still = not volume(admin, "a").get("in_sync")
        wait_for("a in sync", lambda: bool(volume(admin, "a").get("in_sync")), procs)
        quiet = fio_b(ports["p"]["nbd"], args.seconds)
        return {"discipline": "fair" if fair else "fifo", "during_resync": resyncing,
                "resync_ran_throughout": still, "a_in_sync": quiet}
    finally:
        for proc in procs:
            stop_process(proc)
        for stop in stopping:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="50MB", help="bottleneck bytes per second")
    parser.add_argument("--queue", default="4MiB", help="bytes a queue may hold")
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    args.rate = parse_size(args.rate, "--rate")
    args.queue = parse_size(args.queue, "--queue")
    if shutil.which("fio") is None:
        print("needs fio: run make setup", file=sys.stderr)
        return 2
    rows = []
    for fair in (True, False):
        directory = Path(tempfile.mkdtemp(prefix="foresync-link-share-"))
        try:
            rows.append(run_case(fair, args, directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"volume B (sync, 4 KiB randwrite QD1, {args.seconds} s) while volume A resyncs 256 MiB; "
          f"bottleneck {args.rate / 1e6:g} MB/s, queue {args.queue >> 10} KiB; load {os.getloadavg()[0]:.1f}")
    print(f"{'discipline':>28} {'p50 ms':>8} {'p99 ms':>8} {'IOPS':>7} | A in sync: {'p50':>6} {'p99':>6} {'IOPS':>7}")
    for row in rows:
        name = {"fair": "per-volume connections", "fifo": "one shared connection"}[row["discipline"]]
        d, q = row["during_resync"], row["a_in_sync"]
        flag = "" if row["resync_ran_throughout"] else " (A finished early)"
        print(f"{name:>28} {d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f} {d['iops']:>7.0f} | "
              f"{q['p50_ms']:>11.2f} {q['p99_ms']:>6.2f} {q['iops']:>7.0f}{flag}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
