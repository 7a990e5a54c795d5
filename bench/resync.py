"""Benchmark resync speed against what async mode streams through the same link (issue 19).

Every case runs two real ``foresync run`` processes on loopback, each dialling its peer through
``foresync.testing.proxy`` (``--delay-ms`` each way, 3.25 ms by default: about 6.5 ms RTT; with
``--rate`` a bandwidth limit per direction too). Cases, all with 1 MiB extents and a record of
``--capacity`` (256) extents, always smaller than what the resync moves:

* ``async stream``: an async-mode pair in sync; fio writes ``--data`` (1 GiB) of 1 MiB writes
  (QD8) to the primary; time from the first write until the secondary has it all (lag 0, in
  sync). The yardstick: what foresync itself moves over this link.
* ``initial sync``: a lookahead primary already holds ``--data`` of fresh data when a new
  secondary first connects; time from the secondary's start until the pair is in sync.
* ``failback``: a lookahead pair in sync; the primary writes a full record (capacity x 1 MiB);
  it is stopped, the secondary promoted, and the new primary writes as much again elsewhere, so
  the failback set is twice the record. The old primary restarts, steps down, and the new one
  copies the failback set back: time from the old primary's restart (its process start and
  step-down included) until in sync.

Each case prints seconds, bytes moved and MB/s, and the ratio to ``async stream``. Then the host's
4 KiB QD1 random write p99 (fio, 3 s) during an initial sync and once in sync, its 64 MiB region
written once into the record before each sample (hits in both: the first write to an extent is
a miss, which waits for the secondary behind what is in flight). Then, for each
``--large`` size (100 GiB, 1 TiB, 4 TiB: sparse files, no disk space needed), a full sync of a
new pair: seconds to in sync, the slowest /status answer meanwhile, each site's peak RSS and any
heartbeat timeout. ``--foresync``
runs the sites from another checkout (before/after comparisons); the proxy always comes from
this one. The machine may be shared: figures are noisy, compare cases of one run.

Run: ``.venv/bin/python bench/resync.py [--delay-ms 3.25] [--rate 125MB] [--data 1GiB]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foresync.testing.fio import run_fio_json
from foresync.testing.processes import free_port, stop_process
from foresync.units import parse_size

MiB = 1 << 20
PROXY_ANNOUNCE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
TIMEOUT_S = 600.0


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except OSError:
        return None


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float = TIMEOUT_S, poll_s: float = 0.02) -> float:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s} s")
        time.sleep(poll_s)
    return time.monotonic()


class Pair:
    """Sites A (first primary) and B, each dialling the other through a delaying proxy."""

    def __init__(self, args: argparse.Namespace, workdir: Path, mode: str, size: int) -> None:
        self.args = args
        self.workdir = workdir
        self.ports = {s: {"nbd": free_port(), "link": free_port(), "admin": free_port()} for s in "AB"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        peers = {"A": self._proxy("A", self.ports["B"]["link"]), "B": self._proxy("B", self.ports["A"]["link"])}
        rate_line = f'resync_rate_max = {args.resync_rate_max}\n' if args.resync_rate_max else ""
        for site in "AB":
            p = self.ports[site]
            (workdir / f"{site}.toml").write_text(
                f'[volume]\nname = "vol0"\ndata = "{site}.img"\nsize = {size}\nmeta = "{site}-meta"\n'
                f'[nbd]\nlisten = "127.0.0.1:{p["nbd"]}"\n'
                f'[link]\nlisten = "127.0.0.1:{p["link"]}"\npeer = "127.0.0.1:{peers[site]}"\nmode = "{mode}"\n'
                f'{rate_line}'
                f'[record]\nextent_size = "1MiB"\ncapacity = {args.capacity}\nlookahead = 4\n'
                f'[admin]\nlisten = "127.0.0.1:{p["admin"]}"\n')
        for site, role in (("A", "primary"), ("B", "secondary")):
            self.cli("init", "--config", str(workdir / f"{site}.toml"), "--role", role)

    def _proxy(self, site: str, target: int) -> int:
        log = self.workdir / f"proxy-{site}.log"
        argv = [sys.executable, "-m", "foresync.testing.proxy", "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{target}", "--delay-ms", str(self.args.delay_ms)]
        if self.args.rate:
            argv += ["--rate", str(self.args.rate)]
        with log.open("wb") as out:
            self.procs[f"proxy-{site}"] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        found: list[int] = []

        def announced() -> bool:
            match = PROXY_ANNOUNCE.search(log.read_text(errors="replace"))
            if match:
                found.append(int(match.group(1)))
            return bool(match)

        wait_for("proxy", announced, 15)
        return found[0]

    def cli(self, *argv: str) -> None:
        subprocess.run([self.args.foresync, "--log-level", "warning", *argv], check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)

    def start(self, site: str) -> None:
        with (self.workdir / f"{site}.log").open("ab") as out:
            self.procs[site] = subprocess.Popen([self.args.foresync, "--log-level", "info", "run", "--config",
                                                 str(self.workdir / f"{site}.toml")], stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(f"{site} admin", lambda: status(self.ports[site]["admin"]) is not None, 30)

    def stop(self, site: str) -> None:
        proc = self.procs.pop(site, None)
        if proc is not None and not stop_process(proc, 60):
            raise RuntimeError(f"site {site} did not stop cleanly; see {self.workdir}/{site}.log")

    def status(self, site: str) -> dict[str, Any]:
        doc = status(self.ports[site]["admin"])
        if doc is None:
            raise RuntimeError(f"site {site} /status did not answer")
        return doc

    def in_sync(self, site: str) -> bool:
        doc = status(self.ports[site]["admin"])
        return bool(doc and doc["role"] == "primary" and doc["link"] == "connected" and doc["in_sync"]
                    and doc["lag"]["bytes"] == 0)

    def write(self, site: str, offset: int, length: int) -> None:
        """Fresh data (fio's random buffers), 1 MiB writes at QD8, on ``site``'s export."""
        run_fio_json(["fio", "--name=w", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.ports[site]['nbd']}/",
                      "--rw=write", "--bs=1M", "--iodepth=8", f"--offset={offset}", f"--size={length}",
                      "--refill_buffers", "--output-format=json"], TIMEOUT_S, f"site {site}")

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name) if name in "AB" else stop_process(self.procs.pop(name), 10)


def case_async_stream(args: argparse.Namespace, workdir: Path) -> tuple[float, int]:
    pair = Pair(args, workdir, "async", args.data)
    try:
        pair.start("B")
        pair.start("A")
        wait_for("async pair in sync", lambda: pair.in_sync("A"))
        began = time.monotonic()
        pair.write("A", 0, args.data)
        done = wait_for("async drained", lambda: pair.in_sync("A"))
        return done - began, args.data
    finally:
        pair.close()


def case_initial_sync(args: argparse.Namespace, workdir: Path) -> tuple[float, int]:
    pair = Pair(args, workdir, "lookahead", args.data)
    try:
        pair.start("A")
        pair.write("A", 0, args.data)
        began = time.monotonic()
        pair.start("B")
        done = wait_for("initial sync", lambda: pair.in_sync("A"))
        return done - began, int(pair.status("A")["counters"]["resync_bytes"])
    finally:
        pair.close()


def case_failback(args: argparse.Namespace, workdir: Path) -> tuple[float, int]:
    record = args.capacity * MiB
    pair = Pair(args, workdir, "lookahead", 4 * record)
    try:
        pair.start("B")
        pair.start("A")
        wait_for("pair in sync", lambda: pair.in_sync("A"))
        pair.write("A", 0, record)  # a full record on B
        wait_for("record replicated", lambda: pair.in_sync("A"))
        pair.stop("A")
        pair.cli("promote", "--config", str(workdir / "B.toml"))
        wait_for("B promoted", lambda: (status(pair.ports["B"]["admin"]) or {}).get("role") == "primary", 60)
        pair.write("B", 2 * record, record)  # while A is away: B's out-of-sync set
        began = time.monotonic()
        pair.start("A")  # steps down on reaching B; B then copies the failback set to it
        connected = wait_for("failback pass starting", lambda: pair.status("B")["link"] == "connected")
        done = wait_for("failback", lambda: pair.in_sync("B"))
        moved = int(pair.status("B")["counters"]["resync_bytes"])
        print(f"  failback: {moved / MiB:.0f} MiB; B reconnected to A (restart, step-down, redial) "
              f"{connected - began:.2f} s after A's start, then the pass {done - connected:.2f} s "
              f"({moved / (done - connected) / 1e6:.1f} MB/s)", flush=True)
        return done - began, moved
    finally:
        pair.close()


HOST_REGION = "64M"  # the host's working set: 64 extents, well inside the record (256)


def warm_host_region(pair: Pair) -> None:
    """One 4 KiB write into each extent of the host's region (fio ``write:1020k`` strides 1 MiB):
    every extent is then in the record, so both samples measure hits, not the first write's miss
    (a miss waits for the secondary's ADDED, behind whatever is in flight)."""
    run_fio_json(["fio", "--name=warm", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{pair.ports['A']['nbd']}/",
                  "--rw=write:1020k", "--bs=4k", "--iodepth=1", f"--size={HOST_REGION}",
                  "--output-format=json"], TIMEOUT_S, "site A")


def host_p99_ms(pair: Pair, seconds: int) -> float:
    """fio 4 KiB random writes at QD1 on A's export for ``seconds``, the region warmed into the
    record first: the p99 completion latency."""
    warm_host_region(pair)
    job = run_fio_json(["fio", "--name=p99", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{pair.ports['A']['nbd']}/",
                        "--rw=randwrite", "--bs=4k", "--iodepth=1", f"--size={HOST_REGION}", "--time_based",
                        f"--runtime={seconds}", "--randrepeat=0", "--output-format=json"], TIMEOUT_S, "site A")
    return float(job["write"]["clat_ns"]["percentile"]["99.000000"]) / 1e6


def case_host_latency(args: argparse.Namespace, workdir: Path) -> str:
    """Host 4 KiB QD1 write p99 during an initial sync of ``--data``, then once in sync."""
    pair = Pair(args, workdir, "lookahead", args.data)
    try:
        pair.start("A")
        pair.write("A", 0, args.data)
        pair.start("B")
        wait_for("sync started", lambda: pair.status("A")["counters"]["resync_bytes"] > 0)
        during = host_p99_ms(pair, 3)
        still = not pair.in_sync("A")
        wait_for("initial sync", lambda: pair.in_sync("A"))
        idle = host_p99_ms(pair, 3)
        note = "" if still else " (the sync ended during the sample)"
        verdict = "meets" if during <= 2 * idle else "misses"
        return (f"host 4K QD1 write p99 (region warmed into the record) {during:.2f} ms during the sync, "
                f"{idle:.2f} ms without: {during / idle:.2f}x, {verdict} the 2x target{note}")
    finally:
        pair.close()


CASES = {"async stream": case_async_stream, "initial sync": case_initial_sync, "failback": case_failback}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def case_large(args: argparse.Namespace, workdir: Path, size: int) -> str:
    """A sparse volume of ``size``, both sites new: seconds from the secondary's start until in
    sync, the slowest /status answer of either site meanwhile, and each site's peak RSS."""
    pair = Pair(args, workdir, "lookahead", size)
    try:
        pair.start("A")
        began = time.monotonic()
        pair.start("B")
        slowest = {"A": 0.0, "B": 0.0}
        while True:
            for site in "AB":
                asked = time.monotonic()
                doc = pair.status(site)
                slowest[site] = max(slowest[site], time.monotonic() - asked)
                if site == "A" and doc["link"] == "connected" and doc["in_sync"]:
                    break
            else:
                if time.monotonic() - began > TIMEOUT_S:
                    raise RuntimeError(f"{size} bytes: not in sync within {TIMEOUT_S} s")
                time.sleep(0.05)
                continue
            break
        elapsed = time.monotonic() - began
        rss = {site: peak_rss_mb(pair.procs[site].pid) for site in "AB"}
        timeouts = sum(pair.workdir.joinpath(f"{s}.log").read_text().count("no frame from") for s in "AB")
        return (f"in sync {elapsed:6.1f} s, slowest /status primary {slowest['A']:.2f} s secondary "
                f"{slowest['B']:.2f} s, peak RSS primary "
                f"{rss['A']:.0f} MB secondary {rss['B']:.0f} MB, heartbeat timeouts {timeouts}")
    finally:
        pair.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=3.25, help="one-way proxy delay (default 3.25)")
    parser.add_argument("--rate", default="0", help="proxy bandwidth limit per direction, e.g. 125MB")
    parser.add_argument("--data", default="1GiB", help="fresh data for async stream and initial sync")
    parser.add_argument("--resync-rate-max", type=int, default=0,
                        help="[link] resync_rate_max of both sites, bytes/s (default 0: none)")
    parser.add_argument("--capacity", type=int, default=256, help="record capacity in 1 MiB extents")
    parser.add_argument("--foresync", default=str(Path(sys.executable).with_name("foresync")),
                        help="the foresync executable the sites run (another checkout's, for 'before')")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="skip the host write p99 during an initial sync")
    parser.add_argument("--large", default="100GiB,1TiB,4TiB",
                        help="sparse volume sizes to fully sync (empty: none); needs no disk space")
    args = parser.parse_args(argv)
    args.data = parse_size(args.data, "--data")
    args.rate = parse_size(args.rate, "--rate")
    rate = f", rate {args.rate / 1e6:g} MB/s" if args.rate else ""
    print(f"resync bench: {args.delay_ms:g} ms each way{rate}, record {args.capacity} x 1 MiB, "
          f"data {args.data // MiB} MiB, sites {args.foresync}", flush=True)
    results: dict[str, float] = {}
    failed = False
    for name in filter(None, args.cases.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix=f"resync-bench-{name.replace(' ', '-')}-"))
        try:
            seconds, moved = CASES[name](args, workdir)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"  {name:13s} FAILED: {exc} (logs in {workdir})", flush=True)
            failed = True
            continue
        results[name] = moved / seconds / 1e6
        ratio = (f"  {results[name] / results['async stream']:.2f}x async"
                 if "async stream" in results and name != "async stream" else "")
        print(f"  {name:13s} {seconds:7.2f} s  {moved / MiB:7.0f} MiB  {results[name]:7.1f} MB/s{ratio}",
              flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.latency:
        workdir = Path(tempfile.mkdtemp(prefix="resync-bench-latency-"))
        try:
            print(f"  {case_host_latency(args, workdir)}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"  host latency FAILED: {exc} (logs in {workdir})", flush=True)
            failed = True
    for text in filter(None, args.large.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="resync-bench-large-"))
        try:
            print(f"  sparse {text:>6s}  {case_large(args, workdir, parse_size(text, '--large'))}", flush=True)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"  sparse {text:>6s}  FAILED: {exc} (logs in {workdir})", flush=True)
            failed = True
            continue
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
