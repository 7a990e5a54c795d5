"""``foresync demo``: the two-site story on loopback, in about a minute.

Two ``foresync run`` sites with file-backed volumes; the primary reaches the secondary through a
user-space proxy that adds a WAN-like delay (5 ms each way by default). The demo:

1. writes through NBD with fio and shows lookahead's write latency and hit ratio next to what
   sync mirroring costs on the same link (a second, sync-mode pair, measured live);
2. kills the primary (kill -9) and shows the secondary's worst-case divergence: its record;
3. promotes the secondary and writes to it;
4. restarts the old primary, which fails back by itself, and shows the bytes copied against the
   volume size;
5. stops both sites and checks the two volume files are identical.

Everything it starts is stopped and removed on exit, Ctrl-C included, unless ``--keep``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from foresync.testing.chaos import Proxy, Site
from foresync.testing.fio import run_fio_json
from foresync.testing.processes import free_port
from foresync.units import format_size

VOLUME = "256MiB"


def _say(text: str) -> None:
    print(text, flush=True)


def _wait(what: str, check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _pair(root: Path, mode: str, delay_ms: int) -> tuple[Site, Site, list[Proxy]]:
    root.mkdir(parents=True)
    ports = {s: {k: free_port() for k in ("nbd", "admin", "link")} for s in ("a", "b")}
    via = {s: free_port() for s in ("a", "b")}
    proxies = [Proxy(via[s], ports[s]["link"], delay_ms) for s in ("a", "b")]
    a = Site(root, "a", ports["a"], via["b"], mode, size=VOLUME, extent_size="1MiB")
    b = Site(root, "b", ports["b"], via["a"], mode, size=VOLUME, extent_size="1MiB")
    a.cli("init", "--role", "primary")
    b.cli("init", "--role", "secondary")
    a.start()
    b.start()
    _wait("the pair to connect and sync", lambda: (a.status() or {}).get("in_sync") is True)
    return a, b, proxies


def _fio(port: int, seconds: int, offset: str) -> dict[str, float]:
    """4 KiB sequential writes at queue depth 1: the latency a host feels per write."""
    job = run_fio_json(
        ["fio", "--name=demo", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/", "--rw=write",
         "--bs=4k", "--iodepth=1", f"--offset={offset}", "--size=64M", "--time_based",
         f"--runtime={seconds}", "--output-format=json"], seconds + 60)["write"]
    return {"iops": job["iops"], "p50_us": job["clat_ns"]["percentile"]["50.000000"] / 1000}


def run_demo(keep: bool = False, delay_ms: int = 5) -> int:
    missing = [t for t in ("fio", "qemu-io") if shutil.which(t) is None]
    if missing:
        print(f"demo needs {', '.join(missing)}: run `make setup` first", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="foresync-demo-"))
    started: list[Site] = []
    proxies: list[Proxy] = []
    try:
        _say(f"== two sites on loopback, {VOLUME} volumes, link RTT {2 * delay_ms} ms (user-space proxy)")
        a, b, pair_proxies = _pair(root / "lookahead", "lookahead", delay_ms)
        started += [a, b]
        proxies += pair_proxies
        _say("\n== 1. a host writes 4 KiB blocks through NBD, one at a time (fio, 4 s)")
        look = _fio(a.nbd_port, 4, "0")
        status = a.status() or {}
        counters = status["counters"]
        hits = counters["record_hits"] / max(1, counters["writes"])
        s_a, s_b, sync_proxies = _pair(root / "sync", "sync", delay_ms)
        started += [s_a, s_b]
        proxies += sync_proxies
        sync = _fio(s_a.nbd_port, 4, "0")
        for site in (s_a, s_b):
            site.stop()
        _say(f"   lookahead: p50 {look['p50_us']:8.0f} us per write, {look['iops']:7.0f} writes/s, "
             f"record hit ratio {hits:.1%}")
        _say(f"   sync     : p50 {sync['p50_us']:8.0f} us per write, {sync['iops']:7.0f} writes/s "
             f"(every write waits for the secondary's disk)")
        _say(f"   -> lookahead answers {sync['p50_us'] / max(look['p50_us'], 1):.0f}x faster, yet the "
             "secondary always knows where it may be stale")

        _say("\n== 2. the primary dies (kill -9)")
        a.kill9()
        _wait("the secondary to notice", lambda: (b.status() or {}).get("link") != "connected")
        sec = b.status() or {}
        divergence = sec["worst_case_divergence_bytes"]
        _say(f"   secondary: worst-case divergence = its record = {sec['record']['extents']} extents = "
             f"{format_size(divergence)} of {VOLUME}")

        _say("\n== 3. promote the secondary and write to it")
        promoted = b.cli("promote")
        _say("   $ foresync promote   ->  " + promoted.stdout.strip())
        _wait("the promoted site to serve", lambda: (b.status() or {}).get("role") == "primary")
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 200M 2M",
                        f"nbd://127.0.0.1:{b.nbd_port}/"], check=True, capture_output=True, timeout=60)
        _say("   wrote 2 MiB at 200 MiB on the new primary")

        _say("\n== 4. the old primary comes back and fails back by itself")
        a.start()
        _wait("the old primary to step down", lambda: (a.status() or {}).get("role") == "secondary")
        _wait("the failback", lambda: (b.status() or {}).get("in_sync") is True)
        moved = (b.status() or {})["counters"]["resync_bytes"]
        size = a.data.stat().st_size
        _say(f"   failback copied {format_size(moved)} of a {format_size(size)} volume "
             f"({moved / size:.1%}); no full resync")

        _say("\n== 5. both copies identical?")
        if keep:
            _say(f"\nsites left running (data in {root}):\n"
                 f"  foresync status --config {a.config}\n  foresync status --config {b.config}\n"
                 f"  curl http://127.0.0.1:{b.admin_port}/metrics\n"
                 f"  nbdinfo nbd://127.0.0.1:{b.nbd_port}/")
            return 0
        for site in (a, b):
            site.stop()
        same = a.data.read_bytes() == b.data.read_bytes()
        _say(f"   {'yes' if same else 'NO'}: the two {VOLUME} volume files are byte-identical")
        return 0 if same else 1
    except (RuntimeError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if not keep:
            for site in started:
                site.kill9()
            for proxy in proxies:
                proxy.close()
            shutil.rmtree(root, ignore_errors=True)
