"""Benchmark ``foresync serve`` against ``qemu-nbd`` with fio's nbd engine (``make bench``).

Method. Both servers run for the whole bench, each over its own file of the same size. The files
are filled with non-zero data and synced before the first run, so reads hit allocated blocks (in
the page cache, like every write) and no run pays for allocating blocks. How they are filled
matters: written in 1 MiB blocks (``--fill-bs``, the default, like a copied image), Linux 6.x
ext4 caches them in large folios, and every 4 KiB rewrite of one then costs tens of microseconds
of kernel CPU in either server; filled in 4 KiB blocks, it costs a few. qemu-nbd runs with
``--cache=writeback`` (the page cache, as ``foresync serve`` uses it). fio's nbd engine (libnbd,
one connection, one job) runs each workload time-based, with a ramp whose I/O is not counted.
Each (workload, round) measures both servers back to back, and the order alternates from round to
round, so both see the same conditions, and every run starts after an ``os.sync()`` so that
writeback left over from the previous run does not land on the next one. Figures are the mean
over rounds of IOPS, MB/s (10^6 bytes/s) and the p50/p99 completion latency fio reports. The
server's CPU time per I/O (user + system, all threads, from /proc; ramp included, so approximate)
is reported too: unlike throughput it barely moves when other processes load the machine.

Targets (reported, never enforced): IOPS and MB/s at least 0.9x qemu-nbd on every workload, and
the QD1 p50 latency at most 1.2x qemu-nbd. Both servers and fio share the machine's cores, so
absolute numbers only mean something next to each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from foresync.testing.fio import run_fio_json
from foresync.testing.processes import free_port, stop_process, wait_listening

FILL_PATTERN_BYTES = 1 << 20
IOPS_TARGET = 0.9  # foresync IOPS and MB/s as a fraction of qemu-nbd's, at least
QD1_P50_TARGET = 1.2  # foresync QD1 p50 latency as a multiple of qemu-nbd's, at most
SERVERS = ("foresync", "qemu-nbd")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    rw: str  # fio --rw
    bs: str  # fio --bs
    iodepth: int

    @property
    def direction(self) -> str:
        return "read" if "read" in self.rw else "write"


WORKLOADS = (
    Workload("4k randwrite QD32", "randwrite", "4k", 32),
    Workload("4k randwrite QD1", "randwrite", "4k", 1),
    Workload("1M seqwrite QD8", "write", "1m", 8),
    Workload("4k randread QD32", "randread", "4k", 32),
)
QD1_WORKLOAD = "4k randwrite QD1"


@dataclass(frozen=True, slots=True)
class Run:
    server: str
    workload: str
    round: int
    iops: float
    mb_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_io: float


# -- servers -------------------------------------------------------------------------------------


def start_server(name: str, argv: list[str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_listening(port, proc, name)
    print(f"{name}: pid {proc.pid}, nbd://127.0.0.1:{port}, log {log_path}", flush=True)
    return proc


def fill(path: Path, size: int, block_bytes: int) -> None:
    """Write ``size`` bytes of non-zero data in ``block_bytes`` writes, so every block is allocated
    and reads hit data."""
    pattern = memoryview(os.urandom(FILL_PATTERN_BYTES))
    with path.open("wb", buffering=0) as out:
        for offset in range(0, size, block_bytes):
            start = offset % FILL_PATTERN_BYTES
            out.write(pattern[start : start + min(block_bytes, size - offset)])
        os.fsync(out.fileno())


# -- fio -----------------------------------------------------------------------------------------


def run_fio(uri: str, workload: Workload, size: int, duration_s: int, ramp_s: int) -> dict[str, Any]:
    argv = [
        "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={workload.rw}",
        f"--bs={workload.bs}", f"--iodepth={workload.iodepth}", f"--size={size}",
        "--time_based", f"--runtime={duration_s}", f"--ramp_time={ramp_s}", "--norandommap",
        "--output-format=json",
    ]
    job = run_fio_json(argv, duration_s + ramp_s + 60, what=uri)
    stats: dict[str, Any] = job[workload.direction]
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def to_run(server: str, workload: Workload, round_: int, stats: dict[str, Any], cpu_s: float,
           seconds: int) -> Run:
    percentiles = stats["clat_ns"]["percentile"]
    ios = stats["iops"] * seconds  # fio does not count the ramp's I/Os; estimate them at the same rate
    return Run(server, workload.name, round_, stats["iops"], stats["bw_bytes"] / 1e6,
               percentiles["50.000000"] / 1e3, percentiles["99.000000"] / 1e3,
               cpu_s / ios * 1e6 if ios else 0.0)


# -- results -------------------------------------------------------------------------------------


def per_round_ratios(runs: Sequence[Run], workload: str) -> list[float]:
    """foresync/qemu-nbd IOPS in each round: runs measured back to back, so their spread shows the noise."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run.workload == workload:
            by_round.setdefault(run.round, {})[run.server] = run.iops
    return [pair["foresync"] / pair["qemu-nbd"] for _, pair in sorted(by_round.items())
            if len(pair) == len(SERVERS)]


def summarize(runs: Sequence[Run], workloads: Sequence[Workload]) -> list[dict[str, Any]]:
    rows = []
    for workload in workloads:
        row: dict[str, Any] = {"workload": workload.name}
        for server in SERVERS:
            mine = [run for run in runs if run.server == server and run.workload == workload.name]
            row[server] = {
                "iops": mean(run.iops for run in mine),
                "mb_per_s": mean(run.mb_per_s for run in mine),
                "p50_us": mean(run.p50_us for run in mine),
                "p99_us": mean(run.p99_us for run in mine),
                "cpu_us_per_io": mean(run.cpu_us_per_io for run in mine),
            }
        ours, theirs = row["foresync"], row["qemu-nbd"]
        row["iops_ratio"] = ours["iops"] / theirs["iops"]
        row["iops_ratio_per_round"] = per_round_ratios(runs, workload.name)
        row["mb_per_s_ratio"] = ours["mb_per_s"] / theirs["mb_per_s"]
        row["p50_ratio"] = ours["p50_us"] / theirs["p50_us"]
        misses = []
        if row["iops_ratio"] < IOPS_TARGET:
            misses.append(f"IOPS {row['iops_ratio']:.2f}x < {IOPS_TARGET}x")
        if row["mb_per_s_ratio"] < IOPS_TARGET:
            misses.append(f"MB/s {row['mb_per_s_ratio']:.2f}x < {IOPS_TARGET}x")
        if workload.name == QD1_WORKLOAD and row["p50_ratio"] > QD1_P50_TARGET:
            misses.append(f"p50 {row['p50_ratio']:.2f}x > {QD1_P50_TARGET}x")
        row["targets_met"] = not misses
        row["misses"] = misses
        rows.append(row)
    return rows


def ratio_cell(ratio: float, per_round: Sequence[float]) -> str:
    if len(per_round) < 2:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    def cells(stats: dict[str, float]) -> list[str]:
        return [f"{stats['iops']:,.0f}", f"{stats['mb_per_s']:,.1f}",
                f"{stats['p50_us']:,.0f}", f"{stats['p99_us']:,.0f}"]

    header = ["workload", "foresync IOPS", "MB/s", "p50 us", "p99 us",
              "qemu-nbd IOPS", "MB/s", "p50 us", "p99 us", "IOPS x (rounds)", "p50 x", "targets"]
    table = [header]
    for row in rows:
        verdict = "met" if row["targets_met"] else "MISSED: " + "; ".join(row["misses"])
        table.append([row["workload"], *cells(row["foresync"]), *cells(row["qemu-nbd"]),
                      ratio_cell(row["iops_ratio"], row["iops_ratio_per_round"]),
                      f"{row['p50_ratio']:.2f}", verdict])
    widths = [max(len(line[col]) for line in table) for col in range(len(header) - 1)]
    print()
    for line in table:
        print(" | ".join(cell.rjust(width) if col else cell.ljust(width)
                         for col, (cell, width) in enumerate(zip(line, widths, strict=False)))
              + " | " + line[-1])
    print("\nserver CPU per I/O (us): " + "; ".join(
        f"{row['workload']}: {row['foresync']['cpu_us_per_io']:,.1f} vs {row['qemu-nbd']['cpu_us_per_io']:,.1f}"
        for row in rows))
    met = sum(row["targets_met"] for row in rows)
    print(f"\ntargets: IOPS and MB/s >= {IOPS_TARGET}x qemu-nbd; {QD1_WORKLOAD} p50 <= "
          f"{QD1_P50_TARGET}x qemu-nbd. Met on {met} of {len(rows)} workloads.")


def tool_versions(foresync: str) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    return {"foresync": first_line([foresync, "--version"]), "fio": first_line(["fio", "--version"]),
            "qemu-nbd": first_line(["qemu-nbd", "--version"]), "python": sys.version.split()[0],
            "cpus": str(os.cpu_count())}


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=4, metavar="S",
                        help="measured seconds per fio run (default 4; whole bench about 2 min)")
    parser.add_argument("--ramp", type=int, default=1, metavar="S",
                        help="unmeasured warm-up seconds before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per workload and server, order alternating (default 3)")
    parser.add_argument("--size", type=int, default=1 << 30, metavar="BYTES",
                        help="size of each volume file (default 1 GiB)")
    parser.add_argument("--fill-bs", type=int, default=1 << 20, metavar="BYTES",
                        help="write size used to fill the volume files (default 1 MiB; a power of "
                             "two up to 1 MiB)")
    parser.add_argument("--workload", action="append", choices=[w.name for w in WORKLOADS],
                        help="run only this workload (repeatable; default all)")
    parser.add_argument("--workdir", type=Path, help="where the volume files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    default_foresync = Path(sys.executable).parent / "foresync"
    parser.add_argument("--foresync", default=str(default_foresync), help="the foresync CLI")
    args = parser.parse_args(argv)
    if args.fill_bs <= 0 or FILL_PATTERN_BYTES % args.fill_bs:
        parser.error("--fill-bs must be a power of two no larger than 1 MiB")
    return args


def measure(args: argparse.Namespace, workloads: Sequence[Workload], workdir: Path) -> list[Run]:
    """Fill the two volume files, start both servers on them, and run every (workload, round)."""
    files = {server: workdir / f"{server}.img" for server in SERVERS}
    ports = {server: free_port() for server in SERVERS}
    argvs = {
        "foresync": [args.foresync, "--log-level", "warning", "serve", "--data", str(files["foresync"]),
                     "--size", str(args.size), "--listen", f"127.0.0.1:{ports['foresync']}"],
        "qemu-nbd": ["qemu-nbd", "--cache=writeback", "--format=raw", "--persistent", "--shared=8",
                     "--bind", "127.0.0.1", "--port", str(ports["qemu-nbd"]), str(files["qemu-nbd"])],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    runs: list[Run] = []
    try:
        print(f"filling two {args.size}-byte volume files in {workdir}", flush=True)
        for path in files.values():
            fill(path, args.size, args.fill_bs)
        for server in SERVERS:
            procs[server] = start_server(server, argvs[server], ports[server], workdir / f"{server}.log")
        for workload in workloads:
            for round_ in range(args.rounds):
                for server in SERVERS if round_ % 2 == 0 else SERVERS[::-1]:
                    os.sync()
                    cpu_before = cpu_seconds(procs[server].pid)
                    stats = run_fio(f"nbd://127.0.0.1:{ports[server]}", workload, args.size,
                                    args.duration, args.ramp)
                    cpu_s = cpu_seconds(procs[server].pid) - cpu_before
                    run = to_run(server, workload, round_, stats, cpu_s, args.duration + args.ramp)
                    runs.append(run)
                    print(f"{workload.name:<18} round {round_} {server:<8} {run.iops:>9,.0f} IOPS "
                          f"{run.mb_per_s:>8,.1f} MB/s p50 {run.p50_us:>7,.0f} us "
                          f"p99 {run.p99_us:>7,.0f} us cpu {run.cpu_us_per_io:>7,.1f} us/io",
                          flush=True)
    finally:
        for proc in procs.values():
            stop_process(proc)
        for path in files.values():
            path.unlink(missing_ok=True)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("fio", "qemu-nbd") if shutil.which(tool) is None]
    if missing:
        print(f"bench needs {', '.join(missing)}: run `make setup` first", file=sys.stderr)
        return 2
    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="foresync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    if load_start > 1.0:
        print(f"warning: load average {load_start:.1f} before the bench; other processes share the "
              "CPUs, so throughput and latency will be noisy (CPU per I/O much less so)", flush=True)
    try:
        runs = measure(args, workloads, workdir)
    except BaseException:
        print(f"bench failed; server logs are in {workdir}", file=sys.stderr)
        raise
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(runs, workloads)
    print_table(rows)
    elapsed_s = time.monotonic() - started
    load_end = os.getloadavg()[0]
    print(f"bench took {elapsed_s:.0f} s; load average {load_start:.1f} before, {load_end:.1f} after")
    if args.json:
        result = {
            "method": {"duration_s": args.duration, "ramp_s": args.ramp, "rounds": args.rounds,
                       "size_bytes": args.size, "fill_bs": args.fill_bs, "elapsed_s": elapsed_s,
                       "load_average_start": load_start, "load_average_end": load_end},
            "versions": tool_versions(args.foresync),
            "summary": rows,
            "runs": [asdict(run) for run in runs],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
