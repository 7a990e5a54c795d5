"""Mirrored S3 PUT latency (issue 18): PUTs through boto3 to real pairs at ~10 ms RTT.

    .venv/bin/python bench/objects_latency.py [--puts N] [--warm N] [--uploads N] [--delay-ms 5]

Real ``foresync run`` pairs on loopback with ``[s3]``, one per mode (async, lookahead, lookahead
with a record of exact names only (no prefix entries), lookahead without prediction, sync),
running at once; each primary dials its secondary through
``foresync.testing.proxy`` adding ``--delay-ms`` each way (10 ms round trip). The timed requests
go to each pair in turn, so every mode sees the same load on a shared box. Workloads: small PUTs
of 4-64 KiB (keys in 300 prefixes, skewed; ``--warm`` untimed PUTs first fill the record), then
numbered frames, then backup-style multipart uploads (two 5 MiB parts, numbered keys; the
CompleteMultipartUpload, which makes and mirrors the object, is timed). The record of objects
holds ``CAPACITY`` names, below the small-PUT working set. Prints p50 and p99 latency,
throughput, the miss ratio (from /status) and the p50 of hits alone, then the issue's targets:
lookahead p50 <= 1.3x async, sync p50 >= 5x lookahead.
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


def _config(work: Path, role: str, mode: str, ports: dict[str, int], peer: int, budget: int,
            prefix_max: int, mirror_parts: bool = True) -> Path:
    path = work / f"{role}.toml"
    path.write_text(
        f'[volume]\nname = "v"\ndata = "{role}.img"\nsize = "8MiB"\nmeta = "{role}.meta"\n'
        f'[nbd]\nlisten = "127.0.0.1:{ports[role + "-nbd"]}"\n'
        f'[link]\nlisten = "127.0.0.1:{ports[role + "-link"]}"\npeer = "127.0.0.1:{peer}"\n'
        f'mode = "{mode}"\n[admin]\nlisten = "127.0.0.1:{ports[role + "-admin"]}"\n'
        f'[s3]\nlisten = "127.0.0.1:{ports[role + "-s3"]}"\ncredentials_file = "{work}/creds"\n'
        f"record_capacity = {CAPACITY}\nlookahead = {budget}\nprefix_entry_max = {prefix_max}\n"
        f"mirror_parts = {str(mirror_parts).lower()}\n")
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


# label, mode, lookahead, prefix_entry_max ("exact names": the record before prefix entries)
ROWS = (("async", "async", 8, 64), ("lookahead", "lookahead", 8, 64),
        ("lookahead, exact names", "lookahead", 8, 0),
        ("lookahead, no prediction", "lookahead", 0, 0), ("sync", "sync", 8, 64))


class Pair:
    """A primary and a secondary with [s3], the primary's link through the delaying proxy."""

    def __init__(self, root: Path, label: str, mode: str, budget: int, prefix_max: int,
                 delay_ms: float, python: str, mirror_parts: bool = True) -> None:
        import boto3
        from botocore.config import Config

        self.mode = mode
        work = root / label.replace(" ", "").replace(",", "-")
        work.mkdir()
        (work / "creds").write_text(f"{ACCESS} {SECRET}\n")
        self.ports = ports = {f"{r}-{k}": _port() for r in ("primary", "secondary")
                              for k in ("nbd", "link", "admin", "s3")}
        self.procs: list[subprocess.Popen[bytes]] = []
        proxy, proxy_port = start_proxy(python, ports["secondary-link"], delay_ms, work / "proxy.log")
        self.procs.append(proxy)
        configs = {role: _config(work, role, mode, ports, peer, budget, prefix_max, mirror_parts)
                   for role, peer in (("primary", proxy_port), ("secondary", ports["primary-link"]))}
        foresync = str(Path(python).with_name("foresync"))
        for role, config in configs.items():
            done = subprocess.run([foresync, "init", "--config", str(config), "--role", role],
                                  capture_output=True, text=True, cwd=work, check=False)
            if done.returncode:
                raise RuntimeError(f"foresync init of {config} failed: {done.stderr}")
        for role, config in configs.items():
            self.procs.append(spawn([foresync, "run", "--config", str(config)], work / f"{role}.log"))
        wait_for("the pair", lambda: self.objects().get("link") == "connected", self.procs, timeout_s=60)
        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['primary-s3']}",
                               aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                               region_name="us-east-1",
                               config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
        self.s3.create_bucket(Bucket="bench")
        self.latencies: list[float] = []

    def objects(self) -> dict[str, Any]:
        doc = _status(self.ports["primary-admin"]) or {}
        objects: dict[str, Any] = doc.get("objects", {})
        return objects

    def put(self, key: str, body: bytes) -> float:
        t0 = time.perf_counter()
        self.s3.put_object(Bucket="bench", Key=key, Body=body)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_workload(workload: str, puts: int, warm: int, delay_ms: float, python: str) -> dict[str, dict[str, float]]:
    """Every mode at once, one pair each; the timed PUTs go to the pairs in turn, so that every
    mode sees the same load on the shared box."""
    with tempfile.TemporaryDirectory(prefix="objects-bench-") as tmp:
        pairs: dict[str, Pair] = {}
        try:
            for label, mode, budget, prefix_max in ROWS:
                pairs[label] = Pair(Path(tmp), label, mode, budget, prefix_max, delay_ms, python)
            rng = random.Random(7)
            names = WORKLOADS[workload](rng, warm + puts)
            for key in names[:warm]:  # fills the records; not timed
                for pair in pairs.values():
                    pair.s3.put_object(Bucket="bench", Key=key, Body=b"w" * 4096)
            before = {label: pair.objects() for label, pair in pairs.items()}
            elapsed = dict.fromkeys(pairs, 0.0)
            hit_latencies: dict[str, list[float]] = {label: [] for label in pairs}
            for key in names[warm:]:
                body = os.urandom(rng.choice((4, 8, 16, 32, 64)) * 1024)
                for label, pair in pairs.items():
                    hits_before = pair.objects().get("hits", 0) if pair.mode != "async" else 0
                    latency = pair.put(key, body)
                    pair.latencies.append(latency)
                    elapsed[label] += latency / 1000
                    if pair.mode == "async" or pair.objects().get("hits", 0) > hits_before:
                        hit_latencies[label].append(latency)
            rows = {}
            for label, pair in pairs.items():
                after = pair.objects()
                hits = after.get("hits", 0) - before[label].get("hits", 0)
                misses = after.get("misses", 0) - before[label].get("misses", 0)
                ordered = sorted(pair.latencies)
                rows[label] = {"p50": statistics.median(ordered),
                               "p99": ordered[max(int(len(ordered) * 0.99) - 1, 0)],
                               "ops_s": puts / elapsed[label],
                               "hit_p50": statistics.median(hit_latencies[label] or [0.0]),
                               "miss": misses / max(hits + misses, 1) if pair.mode != "async" else 0.0}
        finally:
            for pair in pairs.values():
                pair.close()
    return rows


# label, mode, lookahead, mirror_parts ("whole at Complete": parts not mirrored, as before)
BACKUP_ROWS = (("async", "async", 8, True), ("lookahead", "lookahead", 8, True),
               ("lookahead, no prediction", "lookahead", 0, True),
               ("lookahead, whole at Complete", "lookahead", 8, False),
               ("sync", "sync", 8, True), ("sync, whole at Complete", "sync", 8, False))


def run_backups(uploads: int, parts_per_upload: int, part_mib: int, delay_ms: float,
                python: str) -> dict[str, dict[str, float]]:
    """Backup-style multipart uploads (``parts_per_upload`` parts of ``part_mib`` MiB, numbered
    keys): the timed call is CompleteMultipartUpload. With parts mirrored as uploaded it is a
    small op the secondary assembles; "whole at Complete" sends the object then (as before)."""
    part = os.urandom(part_mib * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="objects-bench-") as tmp:
        pairs: dict[str, Pair] = {}
        try:
            for label, mode, budget, mirror in BACKUP_ROWS:
                pairs[label] = Pair(Path(tmp), label, mode, budget, 0, delay_ms, python, mirror)
            before = {label: pair.objects() for label, pair in pairs.items()}
            totals: dict[str, list[float]] = {label: [] for label in pairs}
            for i in range(uploads):
                key = f"backups/host1/{i:06d}.tar"
                for label, pair in pairs.items():
                    start = time.perf_counter()
                    upload = pair.s3.create_multipart_upload(Bucket="bench", Key=key)["UploadId"]
                    parts = [{"PartNumber": n, "ETag": pair.s3.upload_part(
                        Bucket="bench", Key=key, UploadId=upload, PartNumber=n, Body=part)["ETag"]}
                        for n in range(1, parts_per_upload + 1)]
                    t0 = time.perf_counter()  # right after the last part, as a client does
                    pair.s3.complete_multipart_upload(Bucket="bench", Key=key, UploadId=upload,
                                                      MultipartUpload={"Parts": parts})
                    pair.latencies.append((time.perf_counter() - t0) * 1000)
                    totals[label].append((time.perf_counter() - start) * 1000)
            rows = {}
            for label, pair in pairs.items():
                after = pair.objects()
                hits = after.get("hits", 0) - before[label].get("hits", 0)
                misses = after.get("misses", 0) - before[label].get("misses", 0)
                ordered = sorted(pair.latencies)
                rows[label] = {"p50": statistics.median(ordered), "p99": ordered[-1],
                               "upload_p50": statistics.median(totals[label]),
                               "miss": misses / max(hits + misses, 1) if pair.mode != "async" else 0.0}
        finally:
            for pair in pairs.values():
                pair.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=500, help="timed PUTs per mode and workload")
    parser.add_argument("--warm", type=int, default=2000, help="untimed PUTs first (small-puts)")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--uploads", type=int, default=12, help="backup multipart uploads per mode")
    parser.add_argument("--parts", type=int, default=5, help="parts per backup upload")
    parser.add_argument("--part-mib", type=int, default=8, help="MiB per part")
    parser.add_argument("--only", choices=("all", "backups"), default="all")
    args = parser.parse_args()
    python = sys.executable
    print(f"objects over a {2 * args.delay_ms:g} ms RTT link, record of {CAPACITY} names, "
          f"{args.puts} timed PUTs (4-64 KiB) per row, the four modes interleaved PUT by PUT")
    for workload in WORKLOADS if args.only == "all" else ():
        warm = args.warm if workload == "small-puts" else 0
        rows = run_workload(workload, args.puts, warm, args.delay_ms, python)
        for label, r in rows.items():
            print(f"{workload:10s} {label:26s} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                  f"{r['ops_s']:6.1f} PUT/s  miss ratio {r['miss']:.3f}  p50 of hits "
                  f"{r['hit_p50']:6.2f} ms", flush=True)
        look, sync, asyn = rows["lookahead"]["p50"], rows["sync"]["p50"], rows["async"]["p50"]
        print(f"{workload:10s} lookahead p50 / async p50 = {look / asyn:.2f} (target <= 1.3); "
              f"sync p50 / lookahead p50 = {sync / look:.2f} (target >= 5); miss ratio "
              f"{rows['lookahead, no prediction']['miss']:.3f} without prediction, "
              f"{rows['lookahead, exact names']['miss']:.3f} with exact names only, "
              f"{rows['lookahead']['miss']:.3f} with prefix entries", flush=True)
    backups = run_backups(args.uploads, args.parts, args.part_mib, args.delay_ms, python)
    print(f"backup: {args.uploads} uploads per row of {args.parts} x {args.part_mib} MiB parts; "
          "Complete timed right after the last part; miss ratio of parts and completes")
    for label, r in backups.items():
        print(f"{'backup':10s} {label:30s} complete p50 {r['p50']:8.2f} ms  max {r['p99']:8.2f} ms  "
              f"whole upload p50 {r['upload_p50']:8.1f} ms  miss ratio {r['miss']:.3f}", flush=True)


if __name__ == "__main__":
    main()
