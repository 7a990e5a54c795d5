"""A delaying TCP proxy: a WAN link emulated in user space, for tests and benchmarks.

Theory of operation. The kernel we test on has no netem, so the delay is added here. Every
accepted connection is paired with one connection to the target, and each direction of a pair is
a ``_Pipe``. A chunk read from one side is stamped ``release_at = receipt + delay`` and queued;
one timer per pipe, armed for the head of the queue, writes every chunk that is due to the other
side. Many chunks are in flight at once, so the pipe behaves like a link with a latency of
``delay`` and the bandwidth of loopback, not like one chunk per delay. The queue is FIFO and
``release_at`` never decreases (after ``set_delay`` shortens the delay, a new chunk still waits
for the older ones ahead of it), so byte order is kept. A round trip through the proxy therefore
takes at least ``2 * delay``.

Time is ``time.monotonic()``, the clock both asyncio's and uvloop's ``loop.time()`` run on. The
timer is set for the head's release time rounded up to a whole millisecond, with ``call_at``:
uvloop counts whole milliseconds of a cached clock, and a relative wait (``call_later``) would be
rounded to the nearest one and could fire early; a chunk found not yet due would then make the
loop spin, re-arming, burning CPU the endpoints need. An absolute whole-millisecond deadline is
never early on either loop, so a chunk arrives at most a millisecond late, never early (the
release still checks the clock, in case a loop runs on another one).

A bandwidth limit (``rate_bytes_per_s``, 0 for none) models the link's bottleneck: each
direction sends one chunk after another at that rate, so a chunk's last byte leaves at
``max(receipt, previous chunk's departure) + len / rate`` and arrives ``delay`` later. A WAN of
1 Gb/s and 6.5 ms RTT is ``rate_bytes_per_s=125e6, delay_s=0.00325``.

Buffering is bounded (TIGER_STYLE: a bound on every queue). The bytes a pipe holds, its queue plus
the sink transport's write buffer, stay under ``high_water_bytes``: past it the pipe stops reading
its source, so TCP flow control pushes back on the sender; it reads again once the total is down
to ``low_water_bytes``. The sink's write-buffer limits are set to the low-water mark, so the
sink's ``resume_writing`` tells the pipe when its buffer has drained that far.

``cut`` models a partition both ends notice at once: every open connection is aborted (RST),
bytes in flight are dropped, and connections accepted while cut are aborted as soon as they are
accepted. ``restore`` lets new connections through again; nothing is replayed.

Half-close is forwarded: an EOF is queued like data and delivered as ``write_eof`` after the
delay, and once both directions have delivered theirs both transports close. A side lost any
other way (a reset, an error) aborts its partner at once.

CLI: ``python -m foresync.testing.proxy --listen 127.0.0.1:P --target 127.0.0.1:Q --delay-ms 5
[--rate 125MB]``.
SIGUSR1 cuts, SIGUSR2 restores, SIGINT and SIGTERM stop it. Scripts wait for its stderr lines,
so they are an interface: ``delay proxy listening on HOST:PORT -> ...`` once it accepts (with
``--listen HOST:0`` that is how to learn the port), then ``proxy: cut: connections aborted`` and
``proxy: restored`` after each signal has taken effect.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from foresync.errors import ConfigError, LocalProtocolError
from foresync.units import parse_hostport, parse_size

log = logging.getLogger(__name__)

DEFAULT_HIGH_WATER_BYTES = 16 * 1024 * 1024  # per direction; >= bandwidth x delay of loopback at 5 ms


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    delay_s: float
    cut: bool
    connections_open: int
    connections_total: int  # accepted and paired with a connection to the target
    connections_refused: int  # accepted while cut, or the target could not be reached
    bytes_to_target: int
    bytes_to_client: int
    held_bytes_max: int  # the most one pipe held at once (queue + sink write buffer)
    read_pauses_total: int  # times a pipe stopped reading because it held too much
    rate_bytes_per_s: float = 0.0  # the bandwidth limit per direction, 0 for none


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    connections_refused: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    held_bytes_max: int = 0
    read_pauses_total: int = 0


class _Pipe:
    """One direction of a pair: chunks read from ``source``, held until due, written to ``sink``."""

    def __init__(self, proxy: DelayProxy, pair: _Pair, to_target: bool) -> None:
        self._proxy = proxy
        self._pair = pair
        self._to_target = to_target
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self._queue: deque[tuple[float, bytes | None]] = deque()  # (release_at, data); None = EOF
        self._queued_bytes = 0
        self._last_release_s = 0.0
        self._departed_s = 0.0  # when the last chunk finished leaving at the rate limit
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self.eof_delivered = False

    def push(self, data: bytes | None) -> None:
        """Queue a chunk (or, with None, the EOF) read from the source just now."""
        now = time.monotonic()
        proxy = self._proxy
        departs = now
        if proxy.rate_bytes_per_s and data:
            departs = self._departed_s = max(now, self._departed_s) + len(data) / proxy.rate_bytes_per_s
        release_at = max(departs + proxy.delay_s, self._last_release_s)
        self._last_release_s = release_at
        self._queue.append((release_at, data))
        if data is not None:
            self._queued_bytes += len(data)
        if self._timer is None:
            self._arm()
        self.check_pressure()

    def _arm(self) -> None:
        if self._queue:
            when = math.ceil(self._queue[0][0] * 1000) / 1000
            self._timer = asyncio.get_running_loop().call_at(when, self._release)

    def _release(self) -> None:
        self._timer = None
        sink = self.sink
        if sink is None or sink.is_closing():
            return  # the pair is being torn down
        now = time.monotonic()
        due: list[bytes] = []
        eof = False
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            if data is None:
                eof = True
                break
            due.append(data)
        if due:
            size = sum(len(chunk) for chunk in due)
            self._queued_bytes -= size
            sink.writelines(due)
            if self._to_target:
                self._proxy._counters.bytes_to_target += size
            else:
                self._proxy._counters.bytes_to_client += size
        if eof:
            self._queue.clear()  # nothing may follow an EOF
            if sink.can_write_eof():
                sink.write_eof()
            self.eof_delivered = True
            self._pair.eof_delivered()
            return
        self._arm()
        self.check_pressure()

    def held_bytes(self) -> int:
        buffered = self.sink.get_write_buffer_size() if self.sink is not None else 0
        return self._queued_bytes + buffered

    def check_pressure(self) -> None:
        """Stop reading the source above the high-water mark; start again at the low one."""
        held = self.held_bytes()
        counters = self._proxy._counters
        counters.held_bytes_max = max(counters.held_bytes_max, held)
        source = self.source
        if source is None or source.is_closing():
            return
        if not self._reading_paused and held > self._proxy.high_water_bytes:
            self._reading_paused = True
            counters.read_pauses_total += 1
            source.pause_reading()
        elif self._reading_paused and held <= self._proxy.low_water_bytes:
            self._reading_paused = False
            source.resume_reading()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._queued_bytes = 0


class _Side(asyncio.Protocol):
    """One TCP connection of a pair: the accepted client, or ours to the target."""

    def __init__(self, pair: _Pair, is_client: bool) -> None:
        self._pair = pair
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self._pair.client_made()
        else:
            self._pair.target_made()

    def data_received(self, data: bytes) -> None:
        self._pair.pipe_from(self).push(data)

    def eof_received(self) -> bool:
        self._pair.pipe_from(self).push(None)
        return True  # keep the transport open to write what the other side still sends

    def connection_lost(self, exc: Exception | None) -> None:
        self._pair.side_lost(exc)

    def pause_writing(self) -> None:
        pass  # the pipe writing to us bounds what it holds itself; see resume_writing

    def resume_writing(self) -> None:
        self._pair.pipe_to(self).check_pressure()


class _Pair:
    """An accepted connection and its connection to the target, with a pipe each way."""

    def __init__(self, proxy: DelayProxy) -> None:
        self._proxy = proxy
        self.client = _Side(self, is_client=True)
        self.target = _Side(self, is_client=False)
        self.up = _Pipe(proxy, self, to_target=True)
        self.down = _Pipe(proxy, self, to_target=False)
        self.closed = False
        self._connector: asyncio.Task[None] | None = None

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.up if side.is_client else self.down

    def pipe_to(self, side: _Side) -> _Pipe:
        return self.down if side.is_client else self.up

    def client_made(self) -> None:
        transport = self.client.transport
        assert transport is not None
        if self._proxy.is_cut:
            self.closed = True
            self._proxy._counters.connections_refused += 1
            transport.abort()
            return
        transport.pause_reading()  # until the target is connected
        self._proxy._pairs.add(self)
        self._connector = self._proxy._spawn(self._connect())

    async def _connect(self) -> None:
        host, port = self._proxy.target
        try:
            await asyncio.get_running_loop().create_connection(lambda: self.target, host, port)
        except OSError as exc:
            log.info("proxy: cannot reach target %s:%d (%s); dropping the client", host, port, exc)
            self._proxy._counters.connections_refused += 1
            self.abort()

    def target_made(self) -> None:
        client, target = self.client.transport, self.target.transport
        assert client is not None and target is not None
        if self.closed:
            target.abort()  # cut, closed or client gone while we were connecting
            return
        self.up.source, self.up.sink = client, target
        self.down.source, self.down.sink = target, client
        low = self._proxy.low_water_bytes
        for transport in (client, target):
            transport.set_write_buffer_limits(high=low, low=low)
        self._proxy._counters.connections_total += 1
        client.resume_reading()

    def eof_delivered(self) -> None:
        if self.up.eof_delivered and self.down.eof_delivered:
            self._teardown(abort=False)

    def side_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            log.debug("proxy: a side was lost (%s); aborting its partner", exc)
        self.abort()

    def abort(self) -> None:
        self._teardown(abort=True)

    def _teardown(self, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.close()
        self.down.close()
        for side in (self.client, self.target):
            if side.transport is not None:
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()  # flushes what is buffered, then closes
        connector = self._connector
        if connector is not None and not connector.done() and connector is not asyncio.current_task():
            connector.cancel()
        self._proxy._pairs.discard(self)


class DelayProxy:
    """Forward TCP connections to ``target`` with ``delay_s`` added in each direction.

    Use ``async with DelayProxy(...) as proxy`` or ``start()`` / ``aclose()``. ``start`` returns
    the bound address (listen on port 0 to let the kernel pick one)."""

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0,
                 listen: tuple[str, int] = ("127.0.0.1", 0),
                 high_water_bytes: int = DEFAULT_HIGH_WATER_BYTES, rate_bytes_per_s: float = 0.0) -> None:
        if not rate_bytes_per_s >= 0:
            raise LocalProtocolError(f"rate_bytes_per_s = {rate_bytes_per_s}: must be >= 0 (0: no limit)")
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        if high_water_bytes < 2:
            raise LocalProtocolError(f"high_water_bytes = {high_water_bytes}: must be at least 2")
        self.target = target
        self.listen = listen
        self.high_water_bytes = high_water_bytes
        self.low_water_bytes = high_water_bytes // 2
        self.delay_s = 0.0
        self.set_delay(delay_s)
        self.is_cut = False
        self._counters = _Counters()
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> tuple[str, int]:
        if self._server is not None:
            raise LocalProtocolError("proxy already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Pair(self).client, *self.listen,
                                                reuse_address=True)
        name = self._server.sockets[0].getsockname()
        self.listen = (name[0], name[1])
        return self.listen

    def set_delay(self, delay_s: float) -> None:
        """Change the one-way delay for chunks read from now on (earlier ones keep theirs)."""
        if not delay_s >= 0:
            raise LocalProtocolError(f"delay_s = {delay_s}: must be >= 0")
        self.delay_s = delay_s

    def cut_nowait(self) -> None:
        """Abort every connection and refuse new ones until ``restore``."""
        self.is_cut = True
        for pair in list(self._pairs):
            pair.abort()

    def restore_nowait(self) -> None:
        self.is_cut = False

    async def cut(self) -> None:
        self.cut_nowait()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost

    async def restore(self) -> None:
        self.restore_nowait()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def statistics(self) -> ProxyStatistics:
        c = self._counters
        return ProxyStatistics(self.delay_s, self.is_cut, len(self._pairs), c.connections_total,
                               c.connections_refused, c.bytes_to_target, c.bytes_to_client,
                               c.held_bytes_max, c.read_pauses_total, self.rate_bytes_per_s)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Tracked, and cancelled and awaited by aclose: no task outlives the proxy.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


# -- command line --------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m foresync.testing.proxy",
        description="Delaying TCP proxy. SIGUSR1 cuts every connection (and refuses new ones), "
                    "SIGUSR2 restores, SIGINT/SIGTERM stop.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="address to accept on (port 0 picks a free one)")
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="address to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, metavar="MS",
                        help="one-way delay added in each direction (RTT grows by twice this)")
    parser.add_argument("--rate", default="0", metavar="SIZE",
                        help="bandwidth limit per direction in bytes/s, e.g. 125MB (default 0: none)")
    parser.add_argument("--high-water", default="16MiB", metavar="SIZE",
                        help="bytes held per direction before reading pauses (default 16MiB)")
    args = parser.parse_args(argv)
    try:
        args.listen = parse_hostport(args.listen, "--listen")
        args.target = parse_hostport(args.target, "--target")
        args.high_water = parse_size(args.high_water, "--high-water")
        args.rate = parse_size(args.rate, "--rate")
    except ConfigError as exc:
        parser.error(str(exc))
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    return args


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with DelayProxy(args.target, args.delay_ms / 1000, args.listen, args.high_water, args.rate) as proxy:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _logged(proxy.cut_nowait, "cut: connections aborted"))
        loop.add_signal_handler(signal.SIGUSR2, _logged(proxy.restore_nowait, "restored"))
        host, port = proxy.listen
        print(f"delay proxy listening on {host}:{port} -> {args.target[0]}:{args.target[1]}, "
              f"one-way delay {args.delay_ms:g} ms" + (f", rate {args.rate} bytes/s" if args.rate else ""),
              file=sys.stderr, flush=True)
        await stop.wait()
        log.info("proxy: stopping (%s)", proxy.statistics())


def _logged(action: Callable[[], None], message: str) -> Callable[[], None]:
    def run() -> None:
        action()
        log.info("proxy: %s", message)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        import uvloop
    except ImportError:  # the default loop is a correct, slower fallback
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
