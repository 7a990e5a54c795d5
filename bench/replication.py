"""Benchmark the replication modes over an emulated 10 ms RTT link with fio (``make bench``).

Method. Every (scenario, workload) cell starts from nothing: two fresh sites (``foresync init``
then ``foresync run``) over new volume files on loopback, so each cell's record starts empty and
no cell inherits another's record, lag or dirty page cache. The files are prefilled (every byte
written once, in the workload's block size, and made durable) so that every cell runs in the
steady state of a volume in service; ``prefill()`` says why, ``--no-prefill`` starts on sparse
files instead. The primary dials the
secondary through ``foresync.testing.proxy``, which adds ``--delay-ms`` (5 ms) in each direction:
a 10 ms round trip (the proxy's timers tick in whole milliseconds and never fire early, so the
RTT the sites see is a little more; the bench measures and prints it first). Once the primary
reports the link connected and in sync (a new secondary's first full sync included), fio's nbd
engine (libnbd, one connection, one job) runs the workload against the primary, time-based with
an unmeasured ramp. The primary's ``/status`` is read just before and just after fio, so the miss
ratio (record misses / writes) covers the ramp and the measured seconds together, and the record
size is the number of extents it holds at the end. The CPU each process used over the same span
(from /proc) is divided by the writes: with two cores shared by fio, the proxy and both sites,
CPU per write is what bounds IOPS, and the load average shows what else was running.

Scenarios: sync, async and lookahead at 10 ms RTT; lookahead with no proxy (zero added RTT);
and a standalone ``foresync serve`` (no replication) for reference. Workloads: 4K sequential
write QD1, 4K random write QD16 with a zipf(1.2) distribution, 1M sequential write QD8.

Targets (reported, never enforced):
  * 10 ms RTT, 4K sequential QD1: lookahead p50 <= 1.3x async p50, and sync p50 >= 10x
    lookahead p50 (lookahead hides the round trip that sync pays on every write);
  * sequential workloads, lookahead: miss ratio <= 1 / (lookahead + 1);
  * zipf: lookahead IOPS >= 0.7x async IOPS;
  * zero RTT: lookahead IOPS >= 0.6x standalone IOPS, on every workload.

All processes share the machine's cores, so absolute numbers only mean something next to each
other. ``--py-spy DIR`` records the sites with py-spy (collapsed stacks, one file per process and
cell) to show where the time goes. A cell that fails is reported and the bench exits 1; missed
targets never change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from foresync.testing.fio import run_fio_json
from foresync.testing.processes import free_port, listening, stop_process

PY_SPY_EXTRA = tuple(os.environ.get("FORESYNC_PY_SPY_ARGS", "").split())  # e.g. "--gil"
PROXY_ANNOUNCE = re.compile(r"^delay proxy listening on 127\.0\.0\.1:(\d+) ", re.MULTILINE)
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
SEQ_P50_VS_ASYNC_MAX = 1.3
SYNC_P50_VS_LOOKAHEAD_MIN = 10.0
ZIPF_IOPS_VS_ASYNC_MIN = 0.7
ZERO_RTT_IOPS_VS_STANDALONE_MIN = 0.6


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    fio_args: tuple[str, ...]
    sequential: bool
    block_size: int


WORKLOADS = (
    Workload("4k seqwrite QD1", ("--rw=write", "--bs=4k", "--iodepth=1"), True, 4096),
    Workload("4k zipf randwrite QD16", ("--rw=randwrite", "--bs=4k", "--iodepth=16",
                                        "--random_distribution=zipf:1.2", "--norandommap"), False, 4096),
    Workload("1M seqwrite QD8", ("--rw=write", "--bs=1m", "--iodepth=8"), True, 1 << 20),
)
SEQ_QD1, ZIPF = WORKLOADS[0].name, WORKLOADS[1].name


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    mode: str | None  # None: standalone `foresync serve`
    delayed: bool  # through the delaying proxy


SCENARIOS = (
    Scenario("sync 10ms", "sync", True),
    Scenario("async 10ms", "async", True),
    Scenario("lookahead 10ms", "lookahead", True),
    Scenario("lookahead 0ms", "lookahead", False),
    Scenario("standalone", None, False),
)


@dataclass(frozen=True, slots=True)
class Cell:
    scenario: str
    workload: str
    iops: float
    mb_per_s: float
    p50_us: float
    p99_us: float
    writes: int | None = None
    record_misses: int | None = None
    record_extents: int | None = None
    link_rtt_s: float | None = None
    cpu_us_per_write: dict[str, float] = field(default_factory=dict)  # per process, fio included
    syscalls_per_write: dict[str, tuple[float, float]] = field(default_factory=dict)  # (reads, writes)
    load_1m: float = 0.0  # the machine's load average when the cell started
    setup_s: float = 0.0  # init, start and wait for the link to be in sync
    stop_s: float = 0.0  # SIGTERM to exit (the primary drains replication first)
    clean_stop: bool = True

    @property
    def miss_ratio(self) -> float | None:
        if self.writes is None or self.record_misses is None or self.writes == 0:
            return None
        return self.record_misses / self.writes


# -- processes -----------------------------------------------------------------------------------


def spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(what: str, ready: Any, procs: Sequence[subprocess.Popen[bytes]],
             timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: {proc.args!r} exited early with status {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout_s} s")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def syscalls(pid: int) -> tuple[int, int]:
    """Read-type and write-type system calls a process has made so far (/proc/PID/io: syscr and
    syscw, which count read/recv and write/writev/pwrite/send calls), without strace's cost."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["syscr"]), int(fields["syscw"])


def status(admin_port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=5) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except OSError:
        return None


# The emulated WAN should not slow down when the sites it links are busy, as a real one does not:
# the proxy runs at this nice value (it needs 2-6 % of a core at 2,000 writes a second), so on a
# loaded 2-core box its timers fire on time rather than behind the sites and fio. 0 turns it off;
# without the privilege (not root) it runs at the default and says so.
PROXY_NICE = int(os.environ.get("FORESYNC_BENCH_PROXY_NICE", "-10"))


def start_proxy(python: str, target_port: int, delay_ms: float, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the delaying proxy on a port the kernel picks; return it and that port.

    Readiness comes from the line it logs once listening, not from a test connection: the proxy
    would forward that connection to the target, which is not ours to poke."""
    proc = spawn([python, "-m", "foresync.testing.proxy", "--listen", "127.0.0.1:0",
                  "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms)], log_path)
    if PROXY_NICE:
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, PROXY_NICE)
        except PermissionError:
            print(f"  (the proxy runs at the default priority: nice {PROXY_NICE} needs root)", flush=True)
    found: list[int] = []

    def announced() -> bool:
        match = PROXY_ANNOUNCE.search(log_path.read_text(errors="replace"))
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    wait_for("proxy", announced, [proc])
    return proc, found[0]


def measure_proxy_rtt_ms(python: str, delay_ms: float, workdir: Path, pings: int = 100) -> list[float]:
    """Round trips of one byte through the proxy to a local echo thread: the RTT the sites see
    (the proxy's timers fire up to a millisecond or so after a chunk is due, never before)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def echo() -> None:
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        proc, port = start_proxy(python, listener.getsockname()[1], delay_ms, workdir / "rtt-proxy.log")
        rtts = []
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                # a lost echo fails the bench with a clear error instead of hanging it (seen once
                # in ~80 probes, 2026-12-05: a one-byte ping never came back through the proxy)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(pings):
                    started = time.perf_counter()
                    sock.sendall(b"x")
                    if sock.recv(1) != b"x":
                        raise RuntimeError("the proxy RTT probe lost its echo")
                    rtts.append((time.perf_counter() - started) * 1e3)
        finally:
            stop_process(proc, STOP_TIMEOUT_S)
        thread.join(timeout=5)
    return sorted(rtts)


# -- sites ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteSettings:
    size: int
    extent_size: int
    capacity: int
    lookahead: int
    eviction: str
    watermark_interval_s: float
    bound: int = 0  # bytes: size the record with [record] bound instead of capacity
    predictor: str = "next"


def prefill(paths: Sequence[Path], size: int, block_size: int) -> None:
    """Write every byte of each new volume file once, in the workload's block size (zeroes, as
    data), and make it durable: the workload-dependent preconditioning of a steady-state test.

    This VM hands freed guest pages back to its host, so the first write to a page costs a host
    fault: a first pass over a new 1 GiB file measured 1,572 us per MiB of pwrite, later passes
    120 us. A cell that starts on sparse files therefore spends its measured seconds paying that
    first touch, and the slower the scenario, the larger the share of its run it pays it for
    (the standalone server wraps the volume a dozen times in a run, a replicated pair once or
    twice, and on two files). Prefilled volumes put every cell in the steady state a volume in
    service is in: allocated blocks, pages in the page cache. Both sites get the same bytes, so
    a pair still starts in sync.

    The block size matters because the page cache keeps the folio size a page was first written
    with: a 4 KiB pwrite into a file filled by 1 MiB writes measured 17.6 us, into one filled by
    4 KiB writes 1.7 us (1 MiB writes: 111 vs 221 us). Filling with the workload's own block size
    is what a volume that workload has been running on looks like."""
    chunk = bytes(block_size)

    def fill(path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for offset in range(0, size, len(chunk)):
                os.pwrite(fd, chunk[:min(len(chunk), size - offset)], offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=fill, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def site_toml(name: str, mode: str, settings: SiteSettings, ports: dict[str, int], peer: int) -> str:
    return (f'[volume]\nname = "vol0"\ndata = "{name}.img"\nsize = {settings.size}\n'
            f'meta = "{name}-meta"\n\n[nbd]\nlisten = "127.0.0.1:{ports["nbd"]}"\n\n'
            f'[link]\nlisten = "127.0.0.1:{ports["link"]}"\npeer = "127.0.0.1:{peer}"\n'
            f'mode = "{mode}"\n\n[record]\nextent_size = {settings.extent_size}\n'
            + (f'bound = {settings.bound}\n' if settings.bound else f'capacity = {settings.capacity}\n')
            + (f'predictor = "{settings.predictor}"\n' if settings.predictor != "next" else "")
            + f'lookahead = {settings.lookahead}\n'
            f'eviction = "{settings.eviction}"\nwatermark_interval = {settings.watermark_interval_s}\n\n[admin]\nlisten = "127.0.0.1:{ports["admin"]}"\n')


class Sites:
    """A primary and a secondary on loopback, the primary's link optionally through the proxy."""

    def __init__(self, foresync: str, workdir: Path, mode: str, settings: SiteSettings,
                 delay_ms: float | None) -> None:
        self.foresync = foresync
        self.workdir = workdir
        self.mode = mode
        self.settings = settings
        self.delay_ms = delay_ms
        self.ports = {site: {"nbd": free_port(), "link": free_port(), "admin": free_port()}
                      for site in ("primary", "secondary")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def nbd_port(self) -> int:
        return self.ports["primary"]["nbd"]

    @property
    def admin_port(self) -> int:
        return self.ports["primary"]["admin"]

    def start(self) -> None:
        secondary_link = self.ports["secondary"]["link"]
        peer = secondary_link
        if self.delay_ms is not None:
            python = str(Path(self.foresync).with_name("python"))
            self.procs["proxy"], peer = start_proxy(python, secondary_link, self.delay_ms,
                                                    self.workdir / "proxy.log")
        configs = {
            "secondary": site_toml("secondary", self.mode, self.settings, self.ports["secondary"],
                                   self.ports["primary"]["link"]),
            "primary": site_toml("primary", self.mode, self.settings, self.ports["primary"], peer),
        }
        inits = []
        for site, text in configs.items():
            path = self.workdir / f"{site}.toml"
            path.write_text(text)
            inits.append(subprocess.Popen([self.foresync, "--log-level", "warning", "init", "--config",
                                           str(path), "--role", site], stdout=subprocess.DEVNULL))
        for init in inits:
            if init.wait(timeout=60) != 0:
                raise RuntimeError(f"{init.args!r} failed with status {init.returncode}")
        for site in ("secondary", "primary"):
            self.procs[site] = spawn([self.foresync, "--log-level", "warning", "run", "--config",
                                      str(self.workdir / f"{site}.toml")], self.workdir / f"{site}.log")
        wait_for(f"{self.mode} sites", self._ready, list(self.procs.values()))

    def _ready(self) -> bool:
        doc = status(self.admin_port)
        return doc is not None and doc["link"] == "connected" and bool(doc["in_sync"])

    def stop(self) -> bool:
        clean = True
        for name in ("primary", "secondary", "proxy"):
            proc = self.procs.get(name)
            if proc is not None and not stop_process(proc, STOP_TIMEOUT_S):
                print(f"  {name} did not stop cleanly (status {proc.returncode}); see "
                      f"{self.workdir / (name + '.log')}", flush=True)
                clean = False
        return clean


# -- fio and profiling ---------------------------------------------------------------------------


def run_fio(port: int, workload: Workload, size: int, duration_s: int,
            ramp_s: int) -> tuple[dict[str, Any], float]:
    """fio's write statistics, and the CPU seconds fio itself used while measuring."""
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}",
            *workload.fio_args, f"--size={size}", "--time_based", f"--runtime={duration_s}",
            f"--ramp_time={ramp_s}", "--output-format=json"]
    job = run_fio_json(argv, duration_s + ramp_s + 120)
    stats: dict[str, Any] = job["write"]
    return stats, (job["usr_cpu"] + job["sys_cpu"]) / 100 * duration_s


def start_profilers(pids: dict[str, int], out_dir: Path | None, cell: str,
                    seconds: int) -> list[subprocess.Popen[bytes]]:
    if out_dir is None:
        return []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for site, pid in pids.items():
        out = out_dir / f"{cell}-{site}.txt"
        procs.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
             "--format", "raw", "--output", str(out), "--nonblocking", *PY_SPY_EXTRA],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def start_perf(pids: dict[str, int], out_dir: Path | None, seconds: int) -> list[subprocess.Popen[bytes]]:
    """``perf record -g`` of each process into OUT_DIR/perf-SITE.data (bench/perf_split.py reads
    them). A software clock: this VM has no hardware cycle counter."""
    if out_dir is None:
        return []
    return [subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p",
                              str(pid), "-o", str(out_dir / f"perf-{site}.data"), "--", "sleep",
                              str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for site, pid in pids.items()]


def measure(args: argparse.Namespace, scenario: Scenario, workload: Workload, workdir: Path) -> Cell:
    """One cell: fresh sites (or a fresh standalone server), fio, counters, clean stop."""
    settings = SiteSettings(args.size, args.extent_size, args.capacity, args.lookahead, args.eviction,
                            args.watermark_interval)
    sites: Sites | None = None
    server: subprocess.Popen[bytes] | None = None
    before = after = None
    started = time.monotonic()
    try:
        if args.prefill:
            prefill([workdir / f"{name}.img" for name in
                     (("standalone",) if scenario.mode is None else ("primary", "secondary"))],
                    args.size, workload.block_size)
            started = time.monotonic()
        if scenario.mode is None:
            port = free_port()
            server = spawn([args.foresync, "--log-level", "warning", "serve", "--data",
                            str(workdir / "standalone.img"), "--size", str(args.size), "--listen",
                            f"127.0.0.1:{port}"], workdir / "standalone.log")
            wait_for("foresync serve", lambda: listening(port), [server])
            pids = {"standalone": server.pid}
        else:
            sites = Sites(args.foresync, workdir, scenario.mode, settings,
                          args.delay_ms if scenario.delayed else None)
            sites.start()
            port = sites.nbd_port
            before = status(sites.admin_port)
            pids = {name: proc.pid for name, proc in sites.procs.items()}
        setup_s = time.monotonic() - started
        os.sync()  # writeback left over from the previous cell must not land on this one
        cell_name = f"{scenario.name}-{workload.name}".replace(" ", "_")
        profiled = {name: pid for name, pid in pids.items() if name != "proxy"}
        profilers = start_profilers(profiled, args.py_spy, cell_name, args.ramp + args.duration)
        profilers += start_perf(profiled, workdir if getattr(args, "perf", False) else None,
                                args.ramp + args.duration)
        load_1m = os.getloadavg()[0]
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        calls_before = {name: syscalls(pid) for name, pid in pids.items()}
        stats, fio_cpu_s = run_fio(port, workload, args.size, args.duration, args.ramp)
        cpu_used = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        calls_made = {name: tuple(a - b for a, b in zip(syscalls(pid), calls_before[name], strict=True))
                      for name, pid in pids.items()}
        for profiler in profilers:
            profiler.wait(timeout=60)
        if sites is not None:
            after = status(sites.admin_port)
    finally:
        stopping = time.monotonic()
        clean = sites.stop() if sites is not None else True
        if server is not None:
            clean = stop_process(server, STOP_TIMEOUT_S) and clean
        stop_s = time.monotonic() - stopping
    cell = to_cell(scenario, workload, stats, before, after, clean)
    # Our processes were measured over ramp + run: divide by every write of that span (exact from
    # /status; for the standalone server, fio's count scaled up by the ramp). fio's CPU figure
    # covers the measured seconds only, so it goes over fio's own count.
    measured = max(int(stats["total_ios"]), 1)
    spanned = cell.writes or measured * (args.duration + args.ramp) / args.duration
    per_write = {name: 1e6 * used / max(spanned, 1) for name, used in cpu_used.items()}
    per_write["fio"] = 1e6 * fio_cpu_s / measured
    calls = {name: (made[0] / max(spanned, 1), made[1] / max(spanned, 1)) for name, made in calls_made.items()}
    return replace(cell, cpu_us_per_write=per_write, syscalls_per_write=calls, load_1m=load_1m,
                   setup_s=setup_s, stop_s=stop_s)


def to_cell(scenario: Scenario, workload: Workload, stats: dict[str, Any],
            before: dict[str, Any] | None, after: dict[str, Any] | None, clean: bool) -> Cell:
    percentiles = stats["clat_ns"]["percentile"]
    extra: dict[str, Any] = {}
    if before is not None and after is not None:
        b, a = before["counters"], after["counters"]
        extra = {"writes": a["writes"] - b["writes"],
                 "record_misses": a["record_misses"] - b["record_misses"],
                 "record_extents": after["record"]["extents"],
                 "link_rtt_s": after.get("link_rtt_s")}
    return Cell(scenario.name, workload.name, stats["iops"], stats["bw_bytes"] / 1e6,
                percentiles["50.000000"] / 1e3, percentiles["99.000000"] / 1e3,
                clean_stop=clean, **extra)


# -- targets and report --------------------------------------------------------------------------


def find(cells: Sequence[Cell], scenario: str, workload: str) -> Cell | None:
    return next((c for c in cells if c.scenario == scenario and c.workload == workload), None)


def check_targets(cells: Sequence[Cell], lookahead: int) -> list[dict[str, Any]]:
    """Each target: what it compares, the measured value, the bound, and met or not."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, bound: float, at_most: bool) -> None:
        met = None if value is None else (value <= bound if at_most else value >= bound)
        checks.append({"target": name, "value": value, "bound": bound,
                       "relation": "<=" if at_most else ">=", "met": met})

    def ratio(num: Cell | None, den: Cell | None, attr: str) -> float | None:
        if num is None or den is None or not getattr(den, attr):
            return None
        return float(getattr(num, attr) / getattr(den, attr))

    la, asy, syn = (find(cells, s, SEQ_QD1) for s in ("lookahead 10ms", "async 10ms", "sync 10ms"))
    check(f"{SEQ_QD1} p50: lookahead / async (10 ms RTT)", ratio(la, asy, "p50_us"),
          SEQ_P50_VS_ASYNC_MAX, True)
    check(f"{SEQ_QD1} p50: sync / lookahead (10 ms RTT)", ratio(syn, la, "p50_us"),
          SYNC_P50_VS_LOOKAHEAD_MIN, False)
    for workload in (w for w in WORKLOADS if w.sequential):
        cell = find(cells, "lookahead 10ms", workload.name)
        check(f"{workload.name} miss ratio, lookahead (10 ms RTT)",
              cell.miss_ratio if cell else None, 1 / (lookahead + 1), True)
    check(f"{ZIPF} IOPS: lookahead / async (10 ms RTT)",
          ratio(find(cells, "lookahead 10ms", ZIPF), find(cells, "async 10ms", ZIPF), "iops"),
          ZIPF_IOPS_VS_ASYNC_MIN, False)
    for workload in WORKLOADS:
        check(f"{workload.name} IOPS: lookahead 0 ms / standalone",
              ratio(find(cells, "lookahead 0ms", workload.name),
                    find(cells, "standalone", workload.name), "iops"),
              ZERO_RTT_IOPS_VS_STANDALONE_MIN, False)
    return checks


def print_report(cells: Sequence[Cell], checks: Sequence[dict[str, Any]]) -> None:
    header = ["scenario", "workload", "IOPS", "MB/s", "p50 us", "p99 us", "miss ratio", "record",
              "CPU us/write", "load"]
    table = [header]
    for c in cells:
        miss = "-" if c.miss_ratio is None else f"{c.miss_ratio:.4f}"
        record = "-" if c.record_extents is None else str(c.record_extents)
        ours = sum(us for name, us in c.cpu_us_per_write.items() if name != "fio")
        table.append([c.scenario, c.workload, f"{c.iops:,.0f}", f"{c.mb_per_s:,.1f}",
                      f"{c.p50_us:,.0f}", f"{c.p99_us:,.0f}", miss, record, f"{ours:,.0f}",
                      f"{c.load_1m:.1f}"])
    widths = [max(len(line[col]) for line in table) for col in range(len(header))]
    print()
    for line in table:
        print(" | ".join(cell.ljust(w) if col < 2 else cell.rjust(w)
                         for col, (cell, w) in enumerate(zip(line, widths, strict=True))))
    print("\ntargets (reported, never enforced):")
    for check in checks:
        value = "n/a" if check["value"] is None else f"{check['value']:.3f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        print(f"  {verdict:<12} {check['target']}: {value} {check['relation']} {check['bound']:.3f}")
    unclean = [f"{c.scenario} / {c.workload}" for c in cells if not c.clean_stop]
    if unclean:
        print(f"\nprocesses that did not stop cleanly: {', '.join(unclean)}")


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=6, metavar="S",
                        help="measured seconds per fio run (default 6; whole bench about 3 min)")
    parser.add_argument("--ramp", type=int, default=1, metavar="S",
                        help="unmeasured warm-up seconds before each run (default 1)")
    parser.add_argument("--delay-ms", type=float, default=5.0, metavar="MS",
                        help="one-way delay the proxy adds (default 5: a 10 ms RTT)")
    parser.add_argument("--size", type=int, default=1 << 30, metavar="BYTES",
                        help="volume size (default 1 GiB)")
    parser.add_argument("--no-prefill", dest="prefill", action="store_false",
                        help="start each cell on sparse volume files instead of prefilled ones "
                             "(see prefill(): on this VM the first touch of a page dominates)")
    parser.add_argument("--extent-size", type=int, default=1 << 20, metavar="BYTES",
                        help="[record] extent_size (default 1 MiB)")
    parser.add_argument("--capacity", type=int, default=1024, help="[record] capacity (default 1024)")
    parser.add_argument("--lookahead", type=int, default=4, help="[record] lookahead (default 4)")
    parser.add_argument("--eviction", default="generations", choices=["generations", "lru"],
                        help="[record] eviction (default generations)")
    parser.add_argument("--watermark-interval", type=float, default=0.05, metavar="S",
                        help="[record] watermark_interval: how often both sites fdatasync to advance "
                             "the durable watermark (default 0.05, the config default)")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS],
                        help="run only this scenario (repeatable; default all)")
    parser.add_argument("--workload", action="append", choices=[w.name for w in WORKLOADS],
                        help="run only this workload (repeatable; default all)")
    parser.add_argument("--workdir", type=Path, help="where volumes and logs go (default: a temp dir, "
                                                      "removed at the end)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="profile the sites with py-spy during each run (collapsed stacks in DIR)")
    parser.add_argument("--foresync", default=str(Path(sys.executable).parent / "foresync"),
                        help="the foresync CLI")
    return parser.parse_args(argv)


def run_cells(args: argparse.Namespace, workdir: Path) -> tuple[list[Cell], list[str]]:
    """Every selected cell; a cell that fails is reported and skipped, not the whole bench."""
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    cells: list[Cell] = []
    failures: list[str] = []
    for scenario in scenarios:
        for workload in workloads:
            cell_dir = workdir / f"{scenario.name}-{workload.name}".replace(" ", "_")
            cell_dir.mkdir(parents=True, exist_ok=True)
            try:
                cell = measure(args, scenario, workload, cell_dir)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                failures.append(f"{scenario.name} / {workload.name}: {exc} (logs in {cell_dir})")
                print(f"{scenario.name:<15} {workload.name:<23} FAILED: {exc}", flush=True)
                continue
            cells.append(cell)
            miss = "" if cell.miss_ratio is None else f" miss {cell.miss_ratio:.4f} record {cell.record_extents}"
            cpu = " ".join(f"{name} {us:,.0f}" for name, us in cell.cpu_us_per_write.items())
            print(f"{scenario.name:<15} {workload.name:<23} {cell.iops:>8,.0f} IOPS "
                  f"p50 {cell.p50_us:>8,.0f} us p99 {cell.p99_us:>9,.0f} us{miss}; CPU us/write "
                  f"{cpu}; load {cell.load_1m:.1f}; setup {cell.setup_s:.1f} s, stop "
                  f"{cell.stop_s:.1f} s", flush=True)
            for image in cell_dir.glob("*.img"):
                image.unlink()  # a GiB each at most; logs and configs stay for a look
    return cells, failures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("fio") is None:
        print("bench needs fio: run `make setup` first", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="foresync-repl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"replication bench in {workdir}: one-way delay {args.delay_ms:g} ms, capacity "
          f"{args.capacity}, lookahead {args.lookahead}, extent {args.extent_size}, "
          f"eviction {args.eviction}", flush=True)
    python = str(Path(args.foresync).with_name("python"))
    rtts = measure_proxy_rtt_ms(python, args.delay_ms, workdir)
    rtt_ms = {"min": rtts[0], "p50": rtts[len(rtts) // 2], "p99": rtts[int(len(rtts) * 0.99)]}
    print(f"proxy RTT with {args.delay_ms:g} ms each way: min {rtt_ms['min']:.2f} ms, p50 "
          f"{rtt_ms['p50']:.2f} ms, p99 {rtt_ms['p99']:.2f} ms", flush=True)
    cells: list[Cell] = []
    failures = ["interrupted"]
    try:
        cells, failures = run_cells(args, workdir)
    finally:
        if args.workdir is None and not failures:
            shutil.rmtree(workdir, ignore_errors=True)
    checks = check_targets(cells, args.lookahead)
    print_report(cells, checks)
    for failure in failures:
        print(f"FAILED cell {failure}")
    elapsed_s = time.monotonic() - started
    print(f"\nbench took {elapsed_s:.0f} s")
    if args.json:
        doc = {"method": {"duration_s": args.duration, "ramp_s": args.ramp, "delay_ms": args.delay_ms,
                          "size_bytes": args.size, "prefilled": args.prefill, "extent_size_bytes": args.extent_size,
                          "capacity": args.capacity, "lookahead": args.lookahead,
                          "eviction": args.eviction, "cpus": os.cpu_count(), "elapsed_s": elapsed_s,
                          "proxy_rtt_ms": rtt_ms},
               "cells": [asdict(c) | {"miss_ratio": c.miss_ratio} for c in cells],
               "targets": checks, "failures": failures}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failures else 0  # a cell that broke is a failure; a missed target is not


if __name__ == "__main__":
    sys.exit(main())
