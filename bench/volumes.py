"""Many volumes on one daemon pair (issue 16): IOPS per volume, CPU and memory per volume.

For each count (1, 8 and 32 volumes by default) a fresh pair of ``foresync run`` daemons on
loopback (no proxy: zero RTT), lookahead mode, each volume a sparse 64 MiB file, a config of
``[[volume]]`` tables. Once every volume is in sync, one fio process (nbd engine) runs one job
per volume, up to ``--jobs`` (8) volumes: with 32 volumes the first 8 get a job and the other 24
sit idle but connected (say so in the figures); ``--same-volume`` puts every job on the first
volume instead, to tell what the number of connections costs from what the volumes cost. Each job: 4 KiB random writes, QD ``--qd`` (4),
``--seconds`` (8), over that volume's export on the daemon's one NBD listener.

Printed per count: IOPS per busy volume (mean, min, max) and in all; the primary daemon's CPU
time (utime + stime from /proc/PID/stat, as bench/cpu.py) per write and per second, and its
read- and write-type system calls per write (/proc/PID/io); its RSS
(VmRSS) and its CPU per second idle with every volume in sync (``--idle-seconds``, before fio),
and its RSS after the run; RSS per volume, and the marginal
RSS of each volume beyond the first count's (the daemon's fixed cost taken out).

On a 2-core machine shared with fio and the secondary, IOPS measure the machine as much as the
code; compare counts of one run. Run: ``.venv/bin/python bench/volumes.py [--counts 1,8,32]``.
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
import urllib.request
from pathlib import Path
from typing import Any

from foresync.testing.processes import free_port, stop_process

FORESYNC = str(Path(sys.executable).with_name("foresync"))
TIMEOUT_S = 180.0


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except OSError:
        return None


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def syscalls(pid: int) -> int:
    """Read- and write-type system calls so far (/proc/PID/io syscr + syscw)."""
    counts = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(counts["syscr"]) + int(counts["syscw"])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def config(directory: Path, site: str, names: list[str], ports: dict[str, int], peer: int) -> Path:
    tables = "".join(f'[[volume]]\nname = "{n}"\ndata = "{site}-{n}.img"\nsize = "64MiB"\n'
                     f'meta = "{site}-{n}.meta"\n' for n in names)
    path = directory / f"{site}.toml"
    path.write_text(f'[nbd]\nlisten = "127.0.0.1:{ports["nbd"]}"\n'
                    f'[link]\nlisten = "127.0.0.1:{ports["link"]}"\npeer = "127.0.0.1:{peer}"\n'
                    f'mode = "lookahead"\n[record]\ncapacity = 64\n'
                    f'[admin]\nlisten = "127.0.0.1:{ports["admin"]}"\n' + tables)
    return path


def all_in_sync(port: int, names: list[str]) -> bool:
    doc = status(port)
    volumes = (doc or {}).get("volumes", {})
    return all(n in volumes and volumes[n]["in_sync"] and volumes[n]["link"] == "connected"
               for n in names)


def wait_for(what: str, ready: Any, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{what}: a daemon exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {TIMEOUT_S} s")
        time.sleep(0.1)


def measure(count: int, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    names = [f"v{i:02d}" for i in range(count)]
    ports = {s: {"nbd": free_port(), "link": free_port(), "admin": free_port()} for s in "ps"}
    paths = {"p": config(directory, "p", names, ports["p"], ports["s"]["link"]),
             "s": config(directory, "s", names, ports["s"], ports["p"]["link"])}
    for site, role in (("p", "primary"), ("s", "secondary")):
        subprocess.run([FORESYNC, "init", "--config", str(paths[site]), "--role", role],
                       check=True, capture_output=True)
    procs = {}
    for site in "ps":
        with (directory / f"{site}.log").open("ab") as log:
            procs[site] = subprocess.Popen([FORESYNC, "run", "--config", str(paths[site])],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"{count} volumes in sync", lambda: all_in_sync(ports["p"]["admin"], names),
                 list(procs.values()))
        time.sleep(1.0)  # the sweep's last frames, the first watermark
        pid = procs["p"].pid
        rss_idle = rss_bytes(pid)
        idle0 = cpu_s(pid)
        time.sleep(args.idle_seconds)  # every volume in sync, nothing written: timers, /events
        idle_cpu = (cpu_s(pid) - idle0) / args.idle_seconds
        busy = names[: args.jobs] if not args.same_volume else [names[0]] * args.jobs
        argv = ["fio", "--output-format=json", "--ioengine=nbd", "--rw=randwrite", "--bs=4k",
                f"--iodepth={args.qd}", "--time_based", f"--runtime={args.seconds}", "--size=64M",
                "--randrepeat=0"]
        for i, name in enumerate(busy):
            argv += [f"--name={name}-{i}", f"--uri=nbd://127.0.0.1:{ports['p']['nbd']}/{name}"]
        cpu0, calls0 = cpu_s(pid), syscalls(pid)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                                    str(pid), "-o", args.profile, "-f", "raw", "-d",
                                    str(args.seconds)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=args.seconds + 120)
        elapsed = time.monotonic() - started
        cpu1, calls1 = cpu_s(pid), syscalls(pid)
        if spy is not None:
            spy.wait(timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"fio failed: {result.stderr}")
        report = json.loads(result.stdout[result.stdout.index("{"):])
        iops = [job["write"]["iops"] for job in report["jobs"]]
        writes = sum(job["write"]["total_ios"] for job in report["jobs"])
        rss_after = rss_bytes(pid)
        return {"volumes": count, "busy": len(set(busy)), "iops_mean": sum(iops) / len(iops),
                "iops_min": min(iops), "iops_max": max(iops), "iops_total": sum(iops),
                "cpu_us_per_write": (cpu1 - cpu0) / writes * 1e6 if writes else 0.0,
                "cpu_s_per_s": (cpu1 - cpu0) / elapsed,
                "syscalls_per_write": (calls1 - calls0) / writes if writes else 0.0,
                "idle_cpu_s_per_s": idle_cpu,
                "rss_idle_mib": rss_idle / 2**20, "rss_after_mib": rss_after / 2**20}
    finally:
        clean = [stop_process(proc) for proc in procs.values()]
        if not all(clean):
            print(f"warning: a daemon of the {count}-volume pair did not stop cleanly",
                  file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,8,32")
    parser.add_argument("--jobs", type=int, default=8, help="volumes with a fio job (the rest idle)")
    parser.add_argument("--qd", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=4.0,
                        help="how long the idle CPU is measured before fio starts")
    parser.add_argument("--same-volume", action="store_true",
                        help="every fio job on the first volume (connections, not volumes, vary)")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the primary during the run (raw)")
    args = parser.parse_args()
    if shutil.which("fio") is None:
        print("needs fio: run make setup", file=sys.stderr)
        return 2
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        directory = Path(tempfile.mkdtemp(prefix=f"foresync-volumes-{count}-"))
        try:
            rows.append(measure(count, args, directory))
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    base = rows[0]
    print(f"many volumes per daemon: 4 KiB randwrite QD{args.qd}, {args.seconds} s, lookahead, "
          f"loopback; fio jobs on the first {args.jobs} volumes")
    print(f"{'volumes':>7} {'busy':>4} {'IOPS/vol':>9} {'min':>7} {'max':>7} {'IOPS all':>9} "
          f"{'CPU us/wr':>9} {'CPU s/s':>7} {'sys/wr':>6} {'idle ms/s':>9} {'RSS idle':>9} {'RSS/vol':>8} {'marg/vol':>8} {'RSS run':>8}")
    for row in rows:
        marginal = ((row["rss_idle_mib"] - base["rss_idle_mib"]) / (row["volumes"] - base["volumes"])
                    if row["volumes"] != base["volumes"] else float("nan"))
        print(f"{row['volumes']:>7} {row['busy']:>4} {row['iops_mean']:>9.0f} {row['iops_min']:>7.0f} "
              f"{row['iops_max']:>7.0f} {row['iops_total']:>9.0f} {row['cpu_us_per_write']:>9.1f} "
              f"{row['cpu_s_per_s']:>7.2f} {row['syscalls_per_write']:>6.2f} "
              f"{row['idle_cpu_s_per_s'] * 1000:>9.1f} {row['rss_idle_mib']:>7.1f}Mi "
              f"{row['rss_idle_mib'] / row['volumes']:>6.2f}Mi {marginal:>6.2f}Mi "
              f"{row['rss_after_mib']:>6.1f}Mi")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
