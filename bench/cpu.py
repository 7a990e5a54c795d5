"""CPU per replicated write, per process, against the standalone server and the floor (issue 15).

On a 2-core machine fio and both sites share the cores, so an IOPS ratio measures the machine as
much as the code. What a replicated write costs each site is its own CPU time: this bench reads
every process's utime + stime from /proc/PID/stat just before and just after a fio run over NBD
(``replication.measure``: fresh prefilled volumes, fresh processes per cell) and divides by the
writes of that span. It prints, per cell, CPU µs per write and per MiB for the primary, the
secondary and the standalone server (``foresync serve``), fio's for context, and the IOPS.

Cells: zero RTT (no proxy), ``lookahead``, ``async`` and ``sync`` sites, and the standalone
server, on 4 KiB sequential QD1, 4 KiB zipf QD16 and 1 MiB sequential QD8. The floor a replicated
MiB must add whatever the code does (one more loopback TCP transfer, one more page-cache write,
CRC32C twice) is measured in the same run with ``floor.py``'s functions.

Targets (issue 15; reported, never enforced), lookahead at zero RTT:
  * 4 KiB (seq QD1 and zipf QD16): primary CPU per write <= 1.3x the standalone server's,
    secondary <= 0.6x;
  * 1 MiB seq QD8: what the two sites spend per MiB beyond the standalone server <= 1.25x the
    floor.
``sync`` and ``async`` must not get worse: ``--baseline PATH`` runs every replicated cell a
second time with another foresync CLI (the tree before a change: a wrapper that sets PYTHONPATH,
as in docs/benchmarks.md), interleaved, so before and after come from the same run.

Run: ``.venv/bin/python bench/cpu.py`` (about 4 minutes; ``--modes lookahead`` for a third).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import floor  # bench/floor.py: this script's directory is on sys.path when run as a script
import perf_split
import replication
from replication import WORKLOADS, Cell, Scenario, Workload

MiB = 1 << 20
PRIMARY_VS_STANDALONE_MAX = 1.3
SECONDARY_VS_STANDALONE_MAX = 0.6
ADDED_VS_FLOOR_MAX = 1.25
MODES = ("lookahead", "async", "sync")
LARGE = WORKLOADS[2].name


@dataclass(frozen=True, slots=True)
class Row:
    variant: str  # "now" or "baseline"
    mode: str  # a replication mode, or "standalone"
    workload: str
    block_size: int
    iops: float
    cpu_us_per_write: dict[str, float]  # primary, secondary (or standalone), fio
    syscalls_per_write: dict[str, tuple[float, float]]  # read-type, write-type (/proc/PID/io)

    def per_mib(self, process: str) -> float:
        return self.cpu_us_per_write.get(process, 0.0) * MiB / self.block_size


def measure_floor(count: int, directory: str) -> dict[str, float]:
    """floor.py's four raw costs, µs per MiB, and their sum (the CRC counted twice)."""
    data = os.urandom(MiB)
    sent, received = floor.tcp_transfer(data, count)
    written = floor.page_cache_write(data, count, directory)
    checked = floor.crc(data, count)
    parts = {"send": sent, "receive": received, "pwrite": written, "crc32c": checked}
    us = {name: seconds / count * 1e6 for name, seconds in parts.items()}
    us["floor"] = us["send"] + us["receive"] + us["pwrite"] + 2 * us["crc32c"]
    return us


def run_cell(args: argparse.Namespace, variant: str, foresync: str, mode: str, workload: Workload,
             workdir: Path, round_index: int) -> Row:
    scenario = Scenario("standalone" if mode == "standalone" else f"{mode} 0ms",
                        None if mode == "standalone" else mode, False)
    cell_dir = workdir / f"r{round_index}-{variant}-{mode}-{workload.name}".replace(" ", "_")
    cell_dir.mkdir(parents=True, exist_ok=True)
    try:
        cell: Cell = replication.measure(argparse.Namespace(**{**vars(args), "foresync": foresync}),
                                         scenario, workload, cell_dir)
    finally:
        for image in cell_dir.glob("*.img"):
            image.unlink()  # a failed cell too: its logs stay, its volumes would fill /tmp
    row = Row(variant, mode, workload.name, workload.block_size, cell.iops, cell.cpu_us_per_write,
              {name: calls for name, calls in cell.syscalls_per_write.items() if name != "proxy"})
    cpu = "  ".join(f"{name} {us:,.1f} us/write {row.per_mib(name):,.0f} us/MiB"
                    + (f" ({sum(row.syscalls_per_write[name]):.2f} syscalls)"
                       if name in row.syscalls_per_write else "")
                    for name, us in row.cpu_us_per_write.items())
    print(f"{variant:<8} {mode:<10} {workload.name:<23} {cell.iops:>9,.0f} IOPS  {cpu}  "
          f"load {cell.load_1m:.1f}", flush=True)
    for name, us in row.cpu_us_per_write.items():
        data = cell_dir / f"perf-{name}.data"
        if args.perf and data.exists():
            print(f"    perf {name}: {perf_split.render(perf_split.split(data), us)} per write",
                  flush=True)
    return row


def medians(rows: Sequence[Row]) -> list[Row]:
    """One row per (variant, mode, workload): the median of each figure over the rounds."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.variant, row.mode, row.workload), []).append(row)

    def median(values: Sequence[float]) -> float:
        return statistics.median(values)

    out = []
    for same in groups.values():
        first = same[0]
        cpu = {name: median([r.cpu_us_per_write.get(name, 0.0) for r in same])
               for name in first.cpu_us_per_write}
        calls = {name: (median([r.syscalls_per_write.get(name, (0.0, 0.0))[0] for r in same]),
                        median([r.syscalls_per_write.get(name, (0.0, 0.0))[1] for r in same]))
                 for name in first.syscalls_per_write}
        out.append(Row(first.variant, first.mode, first.workload, first.block_size,
                       median([r.iops for r in same]), cpu, calls))
    return out


def ratios(rows: Sequence[Row], floor_us: float, variant: str) -> list[dict[str, object]]:
    """For each mode and workload of one variant: the ratios the targets name."""
    found = {(r.variant, r.mode, r.workload): r for r in rows}
    out: list[dict[str, object]] = []
    for workload in WORKLOADS:
        alone = found.get(("now", "standalone", workload.name))
        if alone is None:
            continue
        server_us = alone.cpu_us_per_write["standalone"]
        for mode in MODES:
            row = found.get((variant, mode, workload.name))
            if row is None:
                continue
            primary, secondary = (row.cpu_us_per_write.get(p, 0.0) for p in ("primary", "secondary"))
            added_per_mib = row.per_mib("primary") + row.per_mib("secondary") - alone.per_mib("standalone")
            out.append({"variant": variant, "mode": mode, "workload": workload.name,
                        "primary_vs_standalone": primary / server_us,
                        "secondary_vs_standalone": secondary / server_us,
                        "added_us_per_mib": added_per_mib,
                        "added_vs_floor": added_per_mib / floor_us,
                        "iops_vs_standalone": row.iops / alone.iops})
    return out


def print_report(rows: Sequence[Row], floor_us: dict[str, float], variants: Sequence[str]) -> None:
    print("\nCPU per write (µs) and per MiB (µs), per process, medians over the rounds; system calls "
          "per write (/proc/PID/io); IOPS as context:")
    header = ["variant", "mode", "workload", "IOPS", "primary", "secondary", "standalone", "fio",
              "primary/MiB", "secondary/MiB", "standalone/MiB", "syscalls p/s/standalone"]
    table = [header]
    for r in rows:
        table.append([r.variant, r.mode, r.workload, f"{r.iops:,.0f}",
                      *(f"{r.cpu_us_per_write[p]:,.1f}" if p in r.cpu_us_per_write else "-"
                        for p in ("primary", "secondary", "standalone", "fio")),
                      *(f"{r.per_mib(p):,.0f}" if p in r.cpu_us_per_write else "-"
                        for p in ("primary", "secondary", "standalone")),
                      " / ".join(f"{sum(r.syscalls_per_write[p]):.2f}"
                                 for p in ("primary", "secondary", "standalone") if p in r.syscalls_per_write)])
    widths = [max(len(line[col]) for line in table) for col in range(len(header))]
    for line in table:
        print(" | ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    print(f"\nfloor (floor.py, this run): send {floor_us['send']:.0f} + receive "
          f"{floor_us['receive']:.0f} + pwrite {floor_us['pwrite']:.0f} + 2 x CRC32C "
          f"{floor_us['crc32c']:.0f} = {floor_us['floor']:.0f} µs per MiB")
    print("\nratios to the standalone server of this run (targets for lookahead; reported, never enforced):")
    for variant in variants:
        for ratio in ratios(rows, floor_us["floor"], variant):
            print(f"  {ratio['variant']:<8} {ratio['mode']:<10} {ratio['workload']:<23} "
                  f"primary {ratio['primary_vs_standalone']:.2f}x  secondary "
                  f"{ratio['secondary_vs_standalone']:.2f}x  added {ratio['added_us_per_mib']:,.0f} "
                  f"µs/MiB = {ratio['added_vs_floor']:.2f}x floor  IOPS {ratio['iops_vs_standalone']:.2f}x")
    print("\ntargets, lookahead at zero RTT:")
    for check in check_targets(rows, floor_us["floor"]):
        verdict = {True: "met", False: "MISSED"}[bool(check["met"])]
        print(f"  {verdict:<7} {check['target']}: {check['value']:.2f} <= {check['bound']:.2f}")


def check_targets(rows: Sequence[Row], floor_us: float) -> list[dict[str, object]]:
    checks: list[dict[str, object]] = []
    for ratio in ratios(rows, floor_us, "now"):
        if ratio["mode"] != "lookahead":
            continue
        name = str(ratio["workload"])
        if name == LARGE:
            bounds = [("added CPU per MiB / floor", "added_vs_floor", ADDED_VS_FLOOR_MAX)]
        else:
            bounds = [("primary / standalone CPU per write", "primary_vs_standalone", PRIMARY_VS_STANDALONE_MAX),
                      ("secondary / standalone CPU per write", "secondary_vs_standalone",
                       SECONDARY_VS_STANDALONE_MAX)]
        for label, key, bound in bounds:
            value = float(ratio[key])  # type: ignore[arg-type]
            checks.append({"target": f"{name} {label}", "value": value, "bound": bound,
                           "met": value <= bound})
    return checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, metavar="S", help="measured seconds per fio run")
    parser.add_argument("--ramp", type=int, default=1, metavar="S", help="unmeasured warm-up seconds")
    parser.add_argument("--size", type=int, default=512 << 20, metavar="BYTES",
                        help="volume size (default 512 MiB)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="replication modes to run, comma-separated (default lookahead,async,sync)")
    parser.add_argument("--workload", action="append", choices=[w.name for w in WORKLOADS],
                        help="run only this workload (repeatable; default all)")
    parser.add_argument("--floor-count", type=int, default=1000, help="1 MiB operations per floor measurement")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every cell this many times (interleaved) and report medians")
    parser.add_argument("--baseline", metavar="PATH",
                        help="another foresync CLI to run every replicated cell with as well")
    parser.add_argument("--foresync", default=str(Path(sys.executable).parent / "foresync"))
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile each cell with py-spy")
    parser.add_argument("--perf", action="store_true",
                        help="perf record each process of each cell and print where its CPU per "
                             "write goes (bench/perf_split.py)")
    parser.add_argument("--workdir", type=Path, help="where volumes and logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    # what replication.measure reads from its own arguments
    args.prefill, args.delay_ms, args.extent_size, args.capacity = True, 0.0, 1 << 20, 1024
    args.lookahead, args.eviction, args.watermark_interval = 4, "generations", 0.05
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("fio") is None:
        print("bench needs fio: run `make setup` first", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"--modes: unknown mode(s) {', '.join(unknown)} (known: {', '.join(MODES)})", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="foresync-cpu-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    floor_us = measure_floor(args.floor_count, str(workdir))
    print(f"floor: {floor_us['floor']:.0f} µs per MiB; load {os.getloadavg()[0]:.1f}", flush=True)
    variants = [("now", args.foresync)] + ([("baseline", args.baseline)] if args.baseline else [])
    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    rows: list[Row] = []
    failures: list[str] = []
    for round_index, workload in ((r, w) for r in range(args.rounds) for w in workloads):
        plan = [("now", args.foresync, "standalone")]
        order = variants if round_index % 2 == 0 else variants[::-1]  # neither always goes first
        plan += [(variant, path, mode) for mode in modes for variant, path in order]
        for variant, path, mode in plan:
            try:
                rows.append(run_cell(args, variant, path, mode, workload, workdir, round_index))
            except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
                failures.append(f"{variant} {mode} {workload.name}: {exc}")
                print(f"{variant:<8} {mode:<10} {workload.name:<23} FAILED: {exc}", flush=True)
    all_rows, rows = rows, medians(rows)
    print_report(rows, floor_us, [v for v, _ in variants])
    for failure in failures:
        print(f"FAILED cell {failure}")
    if args.json:
        doc = {"floor_us_per_mib": floor_us, "rows": [asdict(r) for r in rows],
               "rounds": [asdict(r) for r in all_rows],
               "ratios": [r for v, _ in variants for r in ratios(rows, floor_us["floor"], v)],
               "targets": check_targets(rows, floor_us["floor"]), "failures": failures}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.workdir is None and not failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
