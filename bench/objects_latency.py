"""Mirrored S3 PUT latency (issue 18): small PUTs through boto3 to a real pair at ~10 ms RTT.

    .venv/bin/python bench/objects_latency.py [--puts N] [--delay-ms 5]

Two real ``foresync run`` sites on loopback with ``[s3]``; the primary dials the secondary
through ``foresync.testing.proxy`` adding ``--delay-ms`` each way (10 ms round trip). For each
mode (async, lookahead, lookahead without prediction, sync) a fresh pair takes N sequential
PUTs of 4-64 KiB objects, keys in 300 prefixes with skewed popularity, numbered within each
prefix, the record of objects bounded below the working set (``[s3] record_capacity``). Prints
p50 and p99 latency, throughput and the miss ratio (from /status), then the ratios the issue
targets: lookahead p50 <= 1.3x async, sync p50 >= 5x lookahead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objects_predict import frames, zipf_index
from replication import spawn, start_proxy, wait_for

from foresync.testing.processes import bind_free_port

ACCESS, SECRET = "BENCHKEY", "bench-secret"
CAPACITY = 1024  # names: below the working set of small-puts (about 1300 names)


def _port() -> int:
    import socket
    sock = socket.socket()
    port = bind_free_port(sock)
    sock.close()
    return port


def _config(work: Path, role: str, mode: str, ports: dict[str, int], peer: int, budget: int) -> Path:
    path = work / f"{role}.toml"
    path.write_text(
        f'[volume]\nname = "v"\ndata = "{role}.img"\nsize = "8MiB"\nmeta = "{role}.meta"\n'
        f'[nbd]\nlisten = "127.0.0.1:{ports[role + "-nbd"]}"\n'
        f'[link]\nlisten = "127.0.0.1:{ports[role + "-link"]}"\npeer = "127.0.0.1:{peer}"\n'
        f'mode = "{mode}"\n[admin]\nlisten = "127.0.0.1:{ports[role + "-admin"]}"\n'
        f'[s3]\nlisten = "127.0.0.1:{ports[role + "-s3"]}"\ncredentials_file = "{work}/creds"\n'
        f"record_capacity = {CAPACITY}\nlookahead = {budget}\n")
    return path


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as answer:
            doc: dict[str, Any] = json.load(answer)
            return doc
    except OSError:
        return None


def _small_puts(rng: random.Random, count: int) -> list[str]:
    """Keys in 300 tenant prefixes and 20 keys each, both skewed; a third of the writes are
    commits (data, then the tenant's manifest, then its index entry), as in objects_predict.py."""
    names: list[str] = []
    while len(names) < count:
        tenant, key = zipf_index(rng, 300), zipf_index(rng, 20)
        names.append(f"data/t{tenant:03d}/obj-{key}.bin")
        if rng.random() < 1 / 3:
            names += [f"data/t{tenant:03d}/manifest.json", f"data/index/t{tenant:03d}.idx"]
    return names[:count]


def _frames(rng: random.Random, count: int) -> list[str]:
    return list(frames(rng, count))


WORKLOADS = {"small-puts": _small_puts, "frames": _frames}


def run_mode(workload: str, mode: str, budget: int, puts: int, warm: int, delay_ms: float,
             python: str) -> dict[str, float]:
    import boto3
    from botocore.config import Config

    with tempfile.TemporaryDirectory(prefix="objects-bench-") as tmp:
        work = Path(tmp)
        (work / "creds").write_text(f"{ACCESS} {SECRET}\n")
        ports = {f"{r}-{k}": _port() for r in ("primary", "secondary") for k in ("nbd", "link", "admin", "s3")}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            proxy, proxy_port = start_proxy(python, ports["secondary-link"], delay_ms, work / "proxy.log")
            procs.append(proxy)
            configs = {"primary": _config(work, "primary", mode, ports, proxy_port, budget),
                       "secondary": _config(work, "secondary", mode, ports, ports["primary-link"], budget)}
            foresync = str(Path(python).with_name("foresync"))
            for role, config in configs.items():
                subprocess.run([foresync, "init", "--config", str(config), "--role", role], check=True,
                               capture_output=True, cwd=work)
            for role, config in configs.items():
                procs.append(spawn([foresync, "run", "--config", str(config)], work / f"{role}.log"))

            def linked() -> bool:
                doc = _status(ports["primary-admin"])
                return bool(doc and doc.get("objects", {}).get("link") == "connected")

            wait_for("the pair", linked, procs, timeout_s=60)
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['primary-s3']}",
                              aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                              region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
            s3.create_bucket(Bucket="bench")
            rng = random.Random(7)
            names = WORKLOADS[workload](rng, warm + puts)
            for key in names[:warm]:  # fills the record; not timed
                s3.put_object(Bucket="bench", Key=key, Body=b"w" * 4096)
            before = (_status(ports["primary-admin"]) or {}).get("objects", {})
            latencies = []
            started = time.perf_counter()
            for key in names[warm:]:
                body = os.urandom(rng.choice((4, 8, 16, 32, 64)) * 1024)
                t0 = time.perf_counter()
                s3.put_object(Bucket="bench", Key=key, Body=body)
                latencies.append((time.perf_counter() - t0) * 1000)
            elapsed = time.perf_counter() - started
            after = (_status(ports["primary-admin"]) or {}).get("objects", {})
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if os.environ.get("OBJECTS_BENCH_DECILES"):
        ordered = sorted(latencies)
        print("deciles", [round(ordered[len(ordered) * i // 10], 1) for i in range(10)])
    latencies.sort()
    hits = after.get("hits", 0) - before.get("hits", 0)
    misses = after.get("misses", 0) - before.get("misses", 0)
    return {"p50": statistics.median(latencies), "p99": latencies[int(len(latencies) * 0.99) - 1],
            "ops_s": puts / elapsed, "miss": misses / max(hits + misses, 1) if mode != "async" else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=500, help="timed PUTs per mode and workload")
    parser.add_argument("--warm", type=int, default=2000, help="untimed PUTs first (small-puts)")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    python = sys.executable
    print(f"objects over a {2 * args.delay_ms:g} ms RTT link, record of {CAPACITY} names, "
          f"{args.puts} timed PUTs (4-64 KiB) per row")
    for workload in WORKLOADS:
        rows = {}
        warm = args.warm if workload == "small-puts" else 0
        for label, mode, budget in (("async", "async", 8), ("lookahead", "lookahead", 8),
                                    ("lookahead, no prediction", "lookahead", 0), ("sync", "sync", 8)):
            rows[label] = r = run_mode(workload, mode, budget, args.puts, warm, args.delay_ms, python)
            print(f"{workload:10s} {label:26s} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                  f"{r['ops_s']:6.1f} PUT/s  miss ratio {r['miss']:.3f}", flush=True)
        look, sync, asyn = rows["lookahead"]["p50"], rows["sync"]["p50"], rows["async"]["p50"]
        print(f"{workload:10s} lookahead p50 / async p50 = {look / asyn:.2f} (target <= 1.3); "
              f"sync p50 / lookahead p50 = {sync / look:.2f} (target >= 5); miss ratio "
              f"{rows['lookahead, no prediction']['miss']:.3f} without prediction, "
              f"{rows['lookahead']['miss']:.3f} with")


if __name__ == "__main__":
    main()
