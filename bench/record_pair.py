"""The record on a real pair: the miss path and application traces at 10 ms RTT (issue 14).

Method. Every cell starts two fresh sites (``foresync init``, ``foresync run``) on loopback with
prefilled volume files, the primary's link through ``foresync.testing.proxy`` with ``--delay-ms``
(5 ms) each way, as bench/replication.py does (its helpers are reused). The record is sized with
``[record] bound`` at a fraction of the volume (1/4 and 1/16 by default), never the whole volume;
the other record settings are the defaults (1 MiB extents, lookahead 4, s3fifo, predictor next)
unless given.

1. fio's nbd engine, 4 KiB randwrite QD16 ``zipf:1.2`` over the volume (256 MiB): async (the
   baseline, no record), sync, and lookahead at each bound; plus sync QD1, whose p50 is the
   *miss cost* (one write that waits for its own round trip and the secondary's commit). For
   each lookahead cell, with its own miss ratio m (record misses / writes, from /status):

       ideal = QD / (m x miss_cost + (1 - m) x QD / async_IOPS)

   and the targets: lookahead IOPS / ideal >= 0.9, p99 / RTT <= 3.
2. Application traces from bench/workloads (pgbench and sqlite by default) replayed against the
   pair by ``replay_trace`` (a small NBD client: writes, zeroes, trims and flushes in trace order,
   at most ``--trace-qd`` in flight, a FLUSH waits for everything before it, as a filesystem's
   flush does; reads are left out, they never touch the record), in async and in lookahead at
   each bound, on a volume of the trace's own size. Targets: lookahead / async throughput >= 0.9
   at 1/4, >= 0.8 at 1/16. ``--trace-requests`` caps a trace's prefix (the same prefix in every
   cell of that trace). A cell replays its trace again, each time on a fresh pair with a cold
   record as the first, until its replays add up to ``--min-replay-s`` (2 s; ``trace_cell``).

3. Where a miss's time went, from the primary's /status (means of ``record_miss_round_trip_s``,
   ``record_miss_queued_s`` and ``record_behind_add_waited_s``) against the link's RTT, split
   into the secondary's share (its /status ``miss_added_s`` / ``misses_added``: MISS read to
   ADDED sent; RANGE ops are in neither) and the link's (the rest: both ways, and what the MISS
   queued behind), and the
   CPU seconds each process (primary, secondary, proxy) used per 1,000 writes; and for each
   trace cell, the most lookahead / async could be for that trace's flushes and inherent misses
   at the run's RTT and async rate (bench/flush_bound.py), and the measured ratio against it.

Ratios mean something only within one run: the box is shared. Targets are printed, never
enforced; a cell that fails makes the exit status 1. ``--foresync PATH`` measures another build
(e.g. a baseline checkout with its own venv).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import flush_bound  # bench/flush_bound.py
from replication import (  # bench/replication.py: run as a script, bench/ is on sys.path
    Sites,
    SiteSettings,
    Workload,
    measure_proxy_rtt_ms,
    prefill,
    run_fio,
    spawn,
    status,
    wait_for,
)

from foresync.nbd import trace
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig
from foresync.testing.processes import free_port, listening, stop_process
from foresync.units import parse_size

HERE = Path(__file__).parent
QD = 16
ZIPF = Workload("4k zipf randwrite QD16", ("--rw=randwrite", "--bs=4k", f"--iodepth={QD}",
                                           "--random_distribution=zipf:1.2", "--norandommap"), False, 4096)
ZIPF_QD1 = Workload("4k zipf randwrite QD1", ("--rw=randwrite", "--bs=4k", "--iodepth=1",
                                              "--random_distribution=zipf:1.2", "--norandommap"), False, 4096)
IDEAL_MIN, P99_RTT_MAX = 0.9, 3.0
TRACE_TARGETS = {4: 0.9, 16: 0.8}


@dataclass(frozen=True, slots=True)
class Cell:
    name: str
    mode: str
    fraction: int  # record bound = volume / fraction (0: no record, async)
    iops: float
    p50_us: float
    p99_us: float
    writes: int = 0
    misses: int = 0
    load_1m: float = 0.0
    room_waits: int = 0  # misses that waited for the watermark (record_room_waits)
    add_waits: int = 0  # writes that waited for another miss's ADDED (record_add_waits)
    behind_add: int = 0  # of the hits, those that waited so (record_writes_behind_add)
    journal_commits: int = 0  # the secondary's group commits (0 on a build without the counter)
    misses_received: int = 0  # MISS writes the secondary received
    journal_commits_overlapped: int = 0  # commits started beside one in flight (0 before issue 14's)
    record: str = ""  # the record's configuration, for the report
    # Where a miss's time went, means in ms from the primary's /status (0 on a build without):
    miss_round_trip_ms: float = 0.0  # its MISS to its ADDED
    miss_queued_ms: float = 0.0  # its arrival to its MISS
    behind_add_ms: float = 0.0  # what a write behind another miss's ADD waited
    miss_at_secondary_ms: float = 0.0  # of the trip, the secondary's MISS read to its ADDED sent
    # CPU seconds each process used during the workload (utime + stime from /proc)
    cpu_primary_s: float = 0.0
    cpu_secondary_s: float = 0.0
    cpu_proxy_s: float = 0.0
    # a trace cell's record, for bench/flush_bound.py's bound (capacity 0: none, or a fio cell)
    extent_size: int = 0
    capacity: int = 0
    lookahead: int = 0
    eviction: str = ""
    predictor: str = ""
    # fio's completion-latency percentiles (us, by percent), for reading a fio cell's hits apart
    # from its misses: the percentiles below 1 - m' are the writes that waited for no ADD
    clat_pct_us: dict[str, float] = field(default_factory=dict)
    mean_us: float = 0.0
    replays: int = 1  # a trace cell: the fresh pairs it replayed the trace on (--min-replay-s)

    @property
    def waited_ratio(self) -> float:
        """Writes that waited for an addition (their own miss, or another miss's ADDED) / writes.
        A build without record_writes_behind_add counts record_add_waits instead."""
        behind = self.behind_add or self.add_waits
        return (self.misses + behind) / self.writes if self.writes else 0.0

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.writes if self.writes else 0.0


@dataclass(frozen=True, slots=True)
class Record:
    """The [record] settings of a cell other than its bound."""

    extent_size: int
    lookahead: int
    eviction: str
    predictor: str = "next"

    def describe(self, fraction: int) -> str:
        return (f"bound 1/{fraction}, {self.extent_size // 1024} KiB extents, lookahead {self.lookahead}, "
                f"{self.eviction}, {self.predictor}")


def default_record(args: argparse.Namespace) -> Record:
    return Record(args.extent_size, args.lookahead, args.eviction)


def settings(args: argparse.Namespace, size: int, fraction: int, record: Record) -> SiteSettings:
    """The record sized by ``[record] bound`` = volume / fraction, never the whole volume."""
    bound = size // fraction
    if bound >= size:
        raise ValueError(f"a record bound of 1/{fraction} holds the whole volume")
    return SiteSettings(size, record.extent_size, bound // record.extent_size, record.lookahead,
                        record.eviction, args.watermark_interval, bound, record.predictor)


COUNTERS = ("writes", "record_misses", "record_room_waits", "record_add_waits",
            "record_writes_behind_add")
SECONDARY_COUNTERS = ("journal_commits", "misses_received", "journal_commits_overlapped")


def counters(doc: dict[str, Any] | None, names: Sequence[str] = COUNTERS) -> tuple[int, ...]:
    """The /status counters ``names`` (0 where an older build has none)."""
    found = doc["counters"] if doc is not None else {}
    return tuple(int(found.get(name, 0)) for name in names)


def both_counters(sites: Sites) -> tuple[int, ...]:
    return (counters(status(sites.admin_port))
            + counters(status(sites.ports["secondary"]["admin"]), SECONDARY_COUNTERS))


TIMING = ("record_misses_answered", "record_miss_round_trip_s", "record_miss_queued_s",
          "record_behind_add_waited_s", "record_writes_behind_add")
PROCESSES = ("primary", "secondary", "proxy")
SECONDARY_TIMING = ("misses_added", "miss_added_s")  # the secondary's share of the misses' trips


def timing(sites: Sites) -> tuple[float, ...]:
    """The primary's miss timing sums (0 where an older build has none), then the CPU seconds
    of PROCESSES so far."""
    doc = status(sites.admin_port)
    found = doc["counters"] if doc is not None else {}
    secondary = status(sites.ports["secondary"]["admin"])
    theirs = secondary["counters"] if secondary is not None else {}
    return (*(float(found.get(name, 0)) for name in TIMING),
            *(cpu_seconds(sites.procs[name].pid) if name in sites.procs else 0.0 for name in PROCESSES),
            *(float(theirs.get(name, 0)) for name in SECONDARY_TIMING))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timing_fields(d: Sequence[float]) -> dict[str, float]:
    """The Cell fields of the miss timing and CPU from the differences of two ``timing``
    snapshots (those of one pair, or summed over several)."""
    answered, round_trip, queued, behind_s, behind = d[:5]
    return {"miss_round_trip_ms": round_trip / answered * 1e3 if answered else 0.0,
            "miss_queued_ms": queued / answered * 1e3 if answered else 0.0,
            "behind_add_ms": behind_s / behind * 1e3 if behind else 0.0,
            "cpu_primary_s": d[5], "cpu_secondary_s": d[6], "cpu_proxy_s": d[7],
            "miss_at_secondary_ms": d[9] / d[8] * 1e3 if d[8] else 0.0}


def with_pair(args: argparse.Namespace, workdir: Path, mode: str, size: int, fraction: int,
              block_size: int, run: Any, record: Record) -> tuple[Any, tuple[int, ...], dict[str, float]]:
    """Fresh prefilled sites, ``run(nbd_port)``, the counters (COUNTERS of the primary's
    /status, then SECONDARY_COUNTERS of the secondary's) counted meanwhile, and the miss timing
    and CPU fields (``timing_fields``)."""
    result, counted, timed = with_pair_raw(args, workdir, mode, size, fraction, block_size, run, record)
    return result, counted, timing_fields(timed)


def with_pair_raw(args: argparse.Namespace, workdir: Path, mode: str, size: int, fraction: int,
                  block_size: int, run: Any, record: Record) -> tuple[Any, tuple[int, ...], tuple[float, ...]]:
    """``with_pair``, with the ``timing`` differences themselves (they add up over pairs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefill([workdir / "primary.img", workdir / "secondary.img"], size, block_size)
    sites = Sites(args.foresync, workdir, mode, settings(args, size, fraction or 4, record), args.delay_ms)
    try:
        sites.start()
        os.sync()
        before, timed_before = both_counters(sites), timing(sites)
        result = run(sites.nbd_port)
        after, timed_after = both_counters(sites), timing(sites)
    finally:
        sites.stop()
        for image in workdir.glob("*.img"):
            image.unlink()
    return (result, tuple(a - b for a, b in zip(after, before, strict=True)),
            tuple(a - b for a, b in zip(timed_after, timed_before, strict=True)))


def fio_cell(args: argparse.Namespace, workdir: Path, name: str, mode: str, fraction: int,
             workload: Workload, record: Record) -> Cell:
    load = os.getloadavg()[0]
    (stats, _), counted, timed = with_pair(
        args, workdir / name.replace(" ", "_").replace("/", "_"), mode, args.size, fraction,
        workload.block_size, lambda port: run_fio(port, workload, args.size, args.duration, args.ramp),
        record)
    pct = stats["clat_ns"]["percentile"]
    return Cell(name, mode, fraction, stats["iops"], pct["50.000000"] / 1e3, pct["99.000000"] / 1e3,
                *counted[:2], load, *counted[2:], record=record.describe(fraction) if fraction else "",
                clat_pct_us={k.rstrip("0").rstrip("."): v / 1e3 for k, v in pct.items()},
                mean_us=stats["clat_ns"]["mean"] / 1e3, **timed)


# -- the record foresync tune recommends for the zipf workload ------------------------------------


def capture_zipf_trace(args: argparse.Namespace, workdir: Path) -> Path:
    """The fio zipf workload against a plain ``foresync serve --trace`` (no replication), paced
    at ``--tune-rate-iops`` (about what a lookahead pair takes), so the trace's timing, which
    decides when a write turns clean in the replay, is close to the pair's."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, image, port = workdir / "zipf.fstrace", workdir / "zipf.img", free_port()
    server = spawn([args.foresync, "--log-level", "warning", "serve", "--data", str(image), "--size",
                    str(args.size), "--listen", f"127.0.0.1:{port}", "--trace", str(path)],
                   workdir / "serve.log")
    try:
        wait_for("foresync serve", lambda: listening(port), [server])
        paced = Workload(ZIPF.name, (*ZIPF.fio_args, f"--rate_iops={args.tune_rate_iops}"), False, 4096)
        run_fio(port, paced, args.size, args.duration, 0)
    finally:
        if not stop_process(server, 30):
            raise RuntimeError(f"foresync serve did not stop cleanly; see {workdir / 'serve.log'}")
        image.unlink(missing_ok=True)
    return path


def tuned_record(args: argparse.Namespace, workdir: Path, what: str, fraction: int,
                 rtt_ms: float) -> Record:
    """Run ``foresync tune`` on a trace (``zipf``: one captured now; else bench/workloads' trace
    of that name, whole) at the bound volume / fraction, print its report, and take the
    configuration it recommends (its ``[record]`` section)."""
    if what == "zipf":
        path, size = capture_zipf_trace(args, workdir / f"tune-1_{fraction}"), args.size
    else:
        path = HERE / "workloads" / f"{what}.fstrace.xz"
        size = trace_requests(path, 1)[0]
    rtt = f"{max(1, round(rtt_ms))}ms"
    argv = [args.foresync, "--log-level", "warning", "tune", "--trace", str(path), "--bound",
            str(size // fraction), "--rtt", rtt, "--qd", str(QD)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    print(f"$ foresync tune --trace {path.name} --bound {size // fraction} --rtt {rtt} --qd {QD}\n"
          f"{done.stdout}", flush=True)
    section = done.stdout[done.stdout.index("[record]"):]
    found = tomllib.loads(section)["record"]
    return Record(parse_size(found["extent_size"]), int(found["lookahead"]), str(found["eviction"]),
                  str(found.get("predictor", "next")))


# -- the trace replayer --------------------------------------------------------------------------

NBDMAGIC, IHAVEOPT, OPT_EXPORT_NAME = 0x4E42444D41474943, 0x49484156454F5054, 1
REQUEST = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
TRACES = ("pgbench", "sqlite", "build", "log", "git")  # bench/workloads/*.fstrace.xz
MIN_REPLAY_S = 2.0  # a cell's replays add up to at least this (trace_cell)
MAX_REPLAYS = 8
CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 1, 3, 4, 6


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("the NBD server closed the connection")
        buf += chunk
    return bytes(buf)


def nbd_connect(port: int) -> tuple[socket.socket, int]:
    """Fixed newstyle handshake with NBD_OPT_EXPORT_NAME "" (NBD spec, "Newstyle negotiation")."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    magic, opt, _ = struct.unpack(">QQH", recv_exactly(sock, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RuntimeError("not a newstyle NBD server")
    sock.sendall(struct.pack(">I", 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
    sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 0))
    size, _ = struct.unpack(">QH", recv_exactly(sock, 10))
    return sock, size


def trace_requests(path: Path, limit: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(volume size, [(command, offset, length, flags)]) of a trace's changes and flushes."""
    size, records = trace.decode(lzma.decompress(path.read_bytes()), str(path))
    out = [(r.command, r.offset, r.length, r.flags) for r in records
           if r.command in (trace.WRITE, trace.TRIM, trace.WRITE_ZEROES, trace.FLUSH)]
    return size, out[:limit] if limit else out


def replay_trace(port: int, requests: Sequence[tuple[int, int, int, int]], qd: int) -> tuple[float, int]:
    """Send ``requests`` in order, at most ``qd`` in flight, a FLUSH after all before it is
    answered; (seconds, requests). Every reply must be a success."""
    sock, _ = nbd_connect(port)
    payload = os.urandom(1 << 20) * 33  # up to 33 MiB per write (the traces stay under 32 MiB)
    slots = threading.Semaphore(qd)
    idle = threading.Condition()
    state = {"inflight": 0, "error": ""}

    def receive() -> None:
        try:
            for _ in range(len(requests)):
                magic, error, handle = REPLY.unpack(recv_exactly(sock, REPLY.size))
                if magic != SIMPLE_REPLY_MAGIC or error:
                    state["error"] = f"reply {handle}: magic {magic:#x} error {error}"
                with idle:
                    state["inflight"] = int(state["inflight"]) - 1
                    idle.notify_all()
                slots.release()
        except (OSError, RuntimeError) as exc:
            state["error"] = str(exc)
            with idle:
                idle.notify_all()

    reader = threading.Thread(target=receive, daemon=True)
    started = time.perf_counter()
    reader.start()
    for handle, (command, offset, length, flags) in enumerate(requests):
        if command == CMD_FLUSH:
            with idle:
                idle.wait_for(lambda: state["inflight"] == 0 or bool(state["error"]))
        slots.acquire()
        if state["error"]:
            break
        with idle:
            state["inflight"] = int(state["inflight"]) + 1
        nbd_flags = flags & 1  # FUA
        header = REQUEST.pack(REQUEST_MAGIC, nbd_flags, command, handle, offset,
                              0 if command == CMD_FLUSH else length)
        if command == CMD_WRITE:
            sock.sendall(header + payload[offset % 4096:offset % 4096 + length])
        else:
            sock.sendall(header)
    reader.join(timeout=600)
    elapsed = time.perf_counter() - started
    sock.close()
    if state["error"]:
        raise RuntimeError(f"trace replay failed: {state['error']}")
    return elapsed, len(requests)


def trace_cell(args: argparse.Namespace, workdir: Path, name: str, mode: str, fraction: int,
               path: Path, record: Record) -> Cell:
    """Replay the trace on a fresh pair; again, each time on a fresh pair (a cold record, as the
    first time), until the replays add up to ``--min-replay-s``: a short trace (git: about
    0.7 s async) measured once swung from 0.65 to 1.26 of async between runs (docs/benchmarks.md).
    Requests / seconds over every replay, counters summed."""
    size, requests = trace_requests(path, args.trace_requests)
    load = os.getloadavg()[0]
    elapsed = 0.0
    count, replays = 0, 0
    counted: tuple[int, ...] = ()
    timed: tuple[float, ...] = ()
    while replays == 0 or (elapsed < args.min_replay_s and replays < MAX_REPLAYS):
        (took, done), pair_counted, pair_timed = with_pair_raw(
            args, workdir / f"{name.replace(' ', '_').replace('/', '_')}-{replays}", mode, size,
            fraction, 4096, lambda port: replay_trace(port, requests, args.trace_qd), record)
        elapsed += took
        count += done
        replays += 1
        counted = tuple(a + b for a, b in zip(counted, pair_counted, strict=True)) if counted else pair_counted
        timed = tuple(a + b for a, b in zip(timed, pair_timed, strict=True)) if timed else pair_timed
    placed = settings(args, size, fraction or 4, record)
    return Cell(name, mode, fraction, count / elapsed, 0.0, 0.0, *counted[:2], load, *counted[2:],
                record=record.describe(fraction) if fraction else "", **timing_fields(timed),
                replays=replays,
                extent_size=record.extent_size, capacity=placed.capacity if fraction else 0,
                lookahead=record.lookahead, eviction=record.eviction, predictor=record.predictor)


# -- report --------------------------------------------------------------------------------------


def ideal_iops(miss_ratio: float, miss_cost_us: float, async_iops: float) -> float:
    """QD / (m x miss cost + (1 - m) x QD / async IOPS): every miss pays its own round trip."""
    return QD / (miss_ratio * miss_cost_us / 1e6 + (1 - miss_ratio) * QD / async_iops)


def cells_to_run(args: argparse.Namespace,
                 tuned: dict[tuple[str, int], Record]) -> Iterator[tuple[str, str, int, Any, Record]]:
    """(name, mode, fraction, what, record): what is a Workload or a trace path."""
    default = default_record(args)
    yield "async zipf QD16", "async", 0, ZIPF, default
    yield "sync zipf QD1 (miss cost)", "sync", 4, ZIPF_QD1, default
    yield "sync zipf QD16 1/4", "sync", 4, ZIPF, default
    for fraction in args.fractions:
        yield f"lookahead zipf QD16 1/{fraction}", "lookahead", fraction, ZIPF, default
        if tuned.get(("zipf", fraction), default) != default:
            yield f"lookahead zipf QD16 1/{fraction} tuned", "lookahead", fraction, ZIPF, tuned["zipf", fraction]
    for name in args.traces:
        path = HERE / "workloads" / f"{name}.fstrace.xz"
        yield f"{name} async", "async", 0, path, default
        for fraction in args.fractions:
            yield f"{name} lookahead 1/{fraction}", "lookahead", fraction, path, default
            if tuned.get((name, fraction), default) != default:
                yield f"{name} lookahead 1/{fraction} tuned", "lookahead", fraction, path, tuned[name, fraction]


# How fast a site punched a RANGE op's 96-128 MiB of the prefilled image (issue 14, the build
# trace's trims: 40-80 ms each, one after another, on this box's disk). The bound places the
# primary's zeroing (async mode's too) at the trims, and before EARLY_RANGES the secondary's
# before its answer.
ZERO_BYTES_PER_S = 2e9


def inherent_bound(cell: Cell, trace_name: str, async_rate: float, rtt_ms: float, limit: int,
                   trip_ms: float | None = None, zero_bytes_per_s: float = 0.0,
                   zero_before_answer: bool = False) -> float:
    """bench/flush_bound.py's bound on lookahead / async for a trace cell's record: a MISS (a
    miss's or a read-ahead's) answered one RTT after it is sent, or ``trip_ms`` after, and a
    RANGE op one trip after it is sent, plus (``zero_before_answer``: a build before issue 14's
    EARLY_RANGES) the secondary's zeroing at ``zero_bytes_per_s`` one op after another."""
    size, records = flush_bound.load(HERE / "workloads" / f"{trace_name}.fstrace.xz", limit)
    config = ReplayConfig(cell.extent_size, cell.capacity, Eviction(cell.eviction), cell.lookahead,
                          cell.predictor, rtt_ms / 1e3 + 0.005)
    return flush_bound.simulate(size, records, config, QD, async_rate, rtt_ms / 1e3,
                                None if trip_ms is None else trip_ms / 1e3, zero_bytes_per_s,
                                zero_before_answer).bound


def report(cells: Sequence[Cell], rtt_ms: float, traces: Sequence[str],
           trace_limit: int = 0) -> list[dict[str, Any]]:
    by_name = {c.name: c for c in cells}
    print("\n| cell | record | IOPS | miss | waited for an ADD (m') | room waits / miss | commits / miss | p50 us | p99 us | load |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for c in cells:
        commits = f"{c.journal_commits / c.misses_received:.2f}" if c.misses_received else "-"
        print(f"| {c.name} | {c.record or '-'} | {c.iops:,.0f} | {c.miss_ratio:.1%} | {c.waited_ratio:.1%} "
              f"| {c.room_waits / max(c.misses, 1):.1%} | {commits} | {c.p50_us:,.0f} | {c.p99_us:,.0f} "
              f"| {c.load_1m:.1f} |")
    print(f"\nWhere a miss's time went (means from the primary's /status) against the link's RTT "
          f"p50 ({rtt_ms:.2f} ms), and the CPU each process used per 1,000 writes:")
    print("\n| cell | MISS to ADDED ms | beyond RTT ms | of it at the secondary ms | on the link beyond "
          "RTT ms | queued before its MISS ms | behind an ADD ms | CPU ms / 1k writes: primary, "
          "secondary, proxy |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for c in cells:
        per_k = 1e6 / max(c.writes, 1)
        link = c.miss_round_trip_ms - c.miss_at_secondary_ms - rtt_ms
        trip = (f"{c.miss_round_trip_ms:.2f} | {c.miss_round_trip_ms - rtt_ms:+.2f} | "
                f"{c.miss_at_secondary_ms:.2f} | {link:+.2f}" if c.miss_round_trip_ms else "- | - | - | -")
        print(f"| {c.name} | {trip} | {c.miss_queued_ms:.2f} | {c.behind_add_ms:.2f} | "
              f"{c.cpu_primary_s * per_k:.0f}, {c.cpu_secondary_s * per_k:.0f}, {c.cpu_proxy_s * per_k:.0f} |")
    checks: list[dict[str, Any]] = []
    base, cost = by_name.get("async zipf QD16"), by_name.get("sync zipf QD1 (miss cost)")
    print("\nThe ideal for a miss ratio m is QD / (m x miss cost + (1 - m) x QD / async IOPS). Two m:"
          "\n  m  = record misses / writes;"
          "\n  m' = writes that waited for an ADD / writes: their own miss, or another miss's ADD"
          " (record_writes_behind_add). The TARGET uses m': such a write's extent was not durably"
          "\n       in the record when it came, so it is no hit in the claims' sense.")
    for c in cells:
        if c.mode != "lookahead" or "zipf" not in c.name or base is None or cost is None:
            continue
        ideal = ideal_iops(c.miss_ratio, cost.p50_us, base.iops)
        ideal_waited = ideal_iops(c.waited_ratio, cost.p50_us, base.iops)
        checks.append({"target": f"{c.name}: IOPS / ideal(m')", "value": c.iops / ideal_waited,
                       "bound": IDEAL_MIN})
        checks.append({"target": f"{c.name}: p99 / RTT", "value": c.p99_us / 1e3 / rtt_ms,
                       "bound": P99_RTT_MAX, "at_most": True})
        print(f"{c.name} ({c.record}): miss cost {cost.p50_us:,.0f} us, measured {c.iops:,.0f} IOPS; "
              f"m {c.miss_ratio:.1%}: ideal {ideal:,.0f} ({c.iops / ideal:.2f}x); m' {c.waited_ratio:.1%}: "
              f"ideal {ideal_waited:,.0f} ({c.iops / ideal_waited:.2f}x); p99 {c.p99_us / 1e3 / rtt_ms:.1f}x RTT")
    for name in traces:
        asy = by_name.get(f"{name} async")
        for fraction, bound in TRACE_TARGETS.items():
            for suffix in ("", " tuned"):
                la = by_name.get(f"{name} lookahead 1/{fraction}{suffix}")
                if asy is None or la is None:
                    continue
                checks.append({"target": f"{name} 1/{fraction}{suffix}: lookahead / async",
                               "value": la.iops / asy.iops, "bound": bound})
                if la.capacity:
                    inherent = inherent_bound(la, name, asy.iops, rtt_ms, trace_limit, None,
                                              ZERO_BYTES_PER_S)
                    print(f"{la.name}: lookahead / async {la.iops / asy.iops:.2f}; at most "
                          f"{inherent:.2f} for this trace's flushes, inherent misses and read-aheads "
                          f"at this RTT and async rate (bench/flush_bound.py): "
                          f"{la.iops / asy.iops / inherent:.2f}x that")
                    if la.miss_round_trip_ms:
                        tripped = inherent_bound(la, name, asy.iops, rtt_ms, trace_limit,
                                                 la.miss_round_trip_ms, ZERO_BYTES_PER_S)
                        before = inherent_bound(la, name, asy.iops, rtt_ms, trace_limit,
                                                la.miss_round_trip_ms, ZERO_BYTES_PER_S, True)
                        print(f"  with every MISS taking this cell's own MISS-to-ADDED mean "
                              f"({la.miss_round_trip_ms:.2f} ms) instead of one RTT: at most "
                              f"{tripped:.2f}, {la.iops / asy.iops / tripped:.2f}x that; for a build "
                              f"without EARLY_RANGES (the secondary zeroing RANGE ops at "
                              f"{ZERO_BYTES_PER_S / 1e9:.0f} GB/s before answering) {before:.2f}")
    print("\ntargets (reported, never enforced):")
    for check in checks:
        at_most = check.get("at_most", False)
        met = check["value"] <= check["bound"] if at_most else check["value"] >= check["bound"]
        print(f"  {'met' if met else 'MISSED':<7} {check['target']}: {check['value']:.2f} "
              f"{'<=' if at_most else '>='} {check['bound']}")
        check["met"] = met
    return checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=256 << 20, help="fio volume bytes (default 256 MiB)")
    parser.add_argument("--fractions", type=int, nargs="+", default=[4, 16],
                        help="record bounds as volume fractions (default 4 16)")
    parser.add_argument("--tune-fractions", type=int, nargs="*", default=[16],
                        help="also run the zipf workload with the record `foresync tune` recommends "
                             "at these bounds (default 16)")
    parser.add_argument("--tune-traces", nargs="*", default=["sqlite"],
                        help="also replay these traces with the record tune recommends for them at "
                             "--tune-fractions (default sqlite)")
    parser.add_argument("--tune-rate-iops", type=int, default=2000,
                        help="the pace of the zipf trace captured for tune (default 2000)")
    parser.add_argument("--duration", type=int, default=5, metavar="S", help="fio seconds (default 5)")
    parser.add_argument("--ramp", type=int, default=1, metavar="S", help="fio ramp (default 1)")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay (default 5)")
    parser.add_argument("--extent-size", type=int, default=1 << 20, help="[record] extent_size")
    parser.add_argument("--lookahead", type=int, default=4, help="[record] lookahead (default 4)")
    parser.add_argument("--eviction", default="streams",
                        help="[record] eviction (default streams, the daemon's default)")
    parser.add_argument("--watermark-interval", type=float, default=0.05, metavar="S")
    parser.add_argument("--traces", nargs="*", default=list(TRACES),
                        help=f"bench/workloads traces to replay (default: all, {' '.join(TRACES)})")
    parser.add_argument("--trace-requests", type=int, default=20000,
                        help="replay at most this many requests of each trace (0: all; default 20000)")
    parser.add_argument("--trace-qd", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--min-replay-s", type=float, default=MIN_REPLAY_S, metavar="S",
                        help="replay a trace again, on a fresh pair each time, until the replays "
                             f"of a cell add up to S seconds (at most {MAX_REPLAYS}; default "
                             f"{MIN_REPLAY_S:g}; 0: once)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every cell this many times, round by round, and report each "
                             "target's median over the rounds (default 1)")
    parser.add_argument("--only", nargs="*", help="run only cells whose name contains one of these")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, metavar="OUT")
    parser.add_argument("--foresync", default=str(Path(sys.executable).parent / "foresync"))
    return parser.parse_args(argv)


def run_round(args: argparse.Namespace, workdir: Path, tuned: dict[tuple[str, int], Record],
              failures: list[str]) -> list[Cell]:
    """Every cell once, on fresh pairs, in the order ``cells_to_run`` gives."""
    cells: list[Cell] = []
    for name, mode, fraction, what, record in cells_to_run(args, tuned):
        if args.only and not any(part in name for part in args.only):
            continue
        try:
            if isinstance(what, Workload):
                cell = fio_cell(args, workdir, name, mode, fraction, what, record)
            else:
                cell = trace_cell(args, workdir, name, mode, fraction, what, record)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            failures.append(f"{name}: {exc}")
            print(f"{name}: FAILED {exc}", flush=True)
            continue
        cells.append(cell)
        print(f"{name:<36} {cell.iops:>9,.0f} IOPS miss {cell.miss_ratio:6.1%} m' {cell.waited_ratio:6.1%} "
              f"(room waits {cell.room_waits}, behind an ADD {cell.behind_add or cell.add_waits}, commits "
              f"{cell.journal_commits}/{cell.misses_received} misses, {cell.journal_commits_overlapped} "
              f"overlapped) p50 {cell.p50_us:>8,.0f} us p99 "
              f"{cell.p99_us:>8,.0f} us load {cell.load_1m:.1f}; MISS to ADDED {cell.miss_round_trip_ms:.2f} ms, "
              f"queued {cell.miss_queued_ms:.2f} ms, behind an ADD {cell.behind_add_ms:.2f} ms; CPU s "
              f"{cell.cpu_primary_s:.2f}/{cell.cpu_secondary_s:.2f}/{cell.cpu_proxy_s:.2f}"
              f"{f'; {cell.replays} replays, each on a fresh pair' if cell.replays > 1 else ''}", flush=True)
    return cells


def summarize(rounds: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target's median over the rounds (every value a ratio measured within its own round),
    with how many rounds met it."""
    print(f"\ntargets over {len(rounds)} rounds (median of the per-round ratios; reported, never enforced):")
    names = list(dict.fromkeys(check["target"] for checks in rounds for check in checks))
    out = []
    for name in names:
        found = [c for checks in rounds for c in checks if c["target"] == name]
        values = sorted(c["value"] for c in found)
        median = statistics.median(values)
        at_most = found[0].get("at_most", False)
        met = median <= found[0]["bound"] if at_most else median >= found[0]["bound"]
        print(f"  {'met' if met else 'MISSED':<7} {name}: median {median:.2f} "
              f"{'<=' if at_most else '>='} {found[0]['bound']} (rounds: "
              f"{', '.join(f'{v:.2f}' for v in (c['value'] for c in found))}; met in "
              f"{sum(bool(c['met']) for c in found)} of {len(found)})")
        out.append({"target": name, "value": median, "bound": found[0]["bound"], "at_most": at_most,
                    "met": met, "values": [c["value"] for c in found]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("fio") is None:
        print("bench needs fio: run `make setup` first", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="foresync-record-pair-"))
    workdir.mkdir(parents=True, exist_ok=True)
    python = str(Path(args.foresync).with_name("python"))
    rtts = measure_proxy_rtt_ms(python, args.delay_ms, workdir)
    rtt_ms = rtts[len(rtts) // 2]
    print(f"record pair bench ({args.foresync}) in {workdir}: RTT p50 {rtt_ms:.2f} ms, bounds "
          f"{', '.join(f'1/{f}' for f in args.fractions)}, default record: "
          f"{default_record(args).describe(0).split(', ', 1)[1]}", flush=True)
    failures: list[str] = []
    tuned: dict[tuple[str, int], Record] = {}
    for what, fraction in [(w, f) for w in ("zipf", *args.tune_traces) for f in args.tune_fractions]:
        cell = f"lookahead zipf QD16 1/{fraction} tuned" if what == "zipf" else f"{what} lookahead 1/{fraction} tuned"
        if (args.only and not any(part in cell for part in args.only)) or (what != "zipf" and what not in args.traces):
            continue
        try:
            tuned[what, fraction] = tuned_record(args, workdir, what, fraction, rtt_ms)
        except (RuntimeError, OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
            failures.append(f"tune {what} at 1/{fraction}: {exc}")
            print(f"tune {what} at 1/{fraction}: FAILED {exc}", flush=True)
            continue
        print(f"tuned record for {what}: {tuned[what, fraction].describe(fraction)}", flush=True)
    rounds: list[list[Cell]] = []
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n-- round {round_no} of {args.rounds} --", flush=True)
        rounds.append(run_round(args, workdir / f"round-{round_no}" if args.rounds > 1 else workdir,
                                tuned, failures))
    checks = [report(cells, rtt_ms, args.traces, args.trace_requests) for cells in rounds]
    summary = summarize(checks) if args.rounds > 1 else checks[0]
    cells = [cell for cells in rounds for cell in cells]
    if args.json:
        args.json.write_text(json.dumps({"rtt_ms": rtt_ms, "cells": [asdict(c) for c in cells],
                                         "tuned": {f"{w} 1/{f}": asdict(r) for (w, f), r in tuned.items()},
                                         "targets": summary, "rounds": checks, "failures": failures},
                                        indent=2) + "\n")
    if args.workdir is None and not failures:
        shutil.rmtree(workdir, ignore_errors=True)
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
