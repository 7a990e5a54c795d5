"""Real-process chaos runs (issue 5): two ``foresync run`` processes, a cuttable link, faults.

Each site dials its peer through a user-space proxy (``foresync.testing.proxy``), so the link can
be cut and restored, whichever site is primary. Each cycle:

1. a writer thread writes verifiable 4 KiB blocks through the primary's NBD export (libnbd),
   with a FLUSH every few writes, and records what was written and what a completed FLUSH or FUA
   promised;
2. at a random moment one fault: kill -9 the primary, kill -9 the secondary, cut the link for a
   while, or kill -9 the primary, promote the secondary and fail back (restart the old primary);
3. restart what was killed and wait until the primary reports ``in_sync``;
4. stop both sites cleanly and check: the two data files are byte-identical, every block holds
   one of the contents written to it (never garbage), and every promised block holds its promised
   content or a later one.

``python -m foresync.testing.chaos --cycles N [--seed S] [--mode lookahead|sync|async]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from foresync.testing.processes import free_port

BLOCK = 4096
VOLUME_BYTES = 64 << 20
BLOCKS = VOLUME_BYTES // BLOCK
SETTLE_TIMEOUT_S = 90.0


def _content(block: int, version: int) -> bytes:
    head = f"foresync chaos block {block} version {version}\n".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def _version_of(data: bytes, block: int) -> int | None:
    """The version a block holds, or None for garbage; 0 for never written (zeroes)."""
    if data == bytes(BLOCK):
        return 0
    prefix = f"foresync chaos block {block} version ".encode()
    if not data.startswith(prefix):
        return None
    try:
        version = int(data[len(prefix) : data.index(b"\n")])
    except ValueError:
        return None
    return version if data == _content(block, version) else None


class Site:
    def __init__(self, root: Path, name: str, ports: dict[str, int], peer_proxy: int, mode: str,
                 size: str = str(VOLUME_BYTES), extent_size: str = "256KiB") -> None:
        self.name = name
        self.root = root
        self.config = root / f"{name}.toml"
        self.data = root / f"{name}.img"
        self.nbd_port = ports["nbd"]
        self.admin_port = ports["admin"]
        self.link_port = ports["link"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"{name}.log"
        self.config.write_text(f"""[volume]
name = "chaos"
data = "{self.data}"
size = "{size}"
meta = "{root / (name + '.meta')}"
[nbd]
listen = "127.0.0.1:{self.nbd_port}"
[link]
listen = "127.0.0.1:{self.link_port}"
peer = "127.0.0.1:{peer_proxy}"
mode = "{mode}"
timeout = 3
[record]
extent_size = "{extent_size}"
capacity = 64
lookahead = 4
[admin]
listen = "127.0.0.1:{self.admin_port}"
""")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "foresync.cli", *args, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "foresync.cli", "run", "--config",
                                          str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.status() is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"site {self.name} did not start; see {self.log}")

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        if code != 0:
            raise RuntimeError(f"site {self.name} exited {code} on SIGTERM; see {self.log}")

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/status", timeout=3) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except (urllib.error.URLError, OSError, ValueError):
            return None


class Proxy:
    def __init__(self, listen: int, target: int, delay_ms: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "foresync.testing.proxy", "--listen", f"127.0.0.1:{listen}",
             "--target", f"127.0.0.1:{target}", "--delay-ms", str(delay_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cut(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def restore(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Writer(threading.Thread):
    """Writes verifiable blocks through NBD until stopped or the server goes away."""

    def __init__(self, port: int, rng: random.Random, model: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.rng = random.Random(rng.random())
        self.model = model
        self.stop_flag = threading.Event()
        self.writes = 0

    def run(self) -> None:
        sys.path.append("/usr/lib/python3/dist-packages")
        import nbd  # Debian's python3-libnbd

        handle = nbd.NBD()
        try:
            handle.connect_uri(f"nbd://127.0.0.1:{self.port}/")
        except nbd.Error:
            return
        written: dict[int, list[int]] = self.model["written"]
        promised: dict[int, int] = self.model["promised"]
        pending: dict[int, int] = {}
        hot = [self.rng.randrange(BLOCKS) for _ in range(64)]  # rewrite some blocks often
        try:
            while not self.stop_flag.is_set():
                block = self.rng.choice(hot) if self.rng.random() < 0.5 else self.rng.randrange(BLOCKS)
                self.model["version"] += 1
                version = self.model["version"]
                written.setdefault(block, []).append(version)
                fua = self.rng.random() < 0.1
                handle.pwrite(_content(block, version), block * BLOCK,
                              nbd.CMD_FLAG_FUA if fua else 0)
                self.writes += 1
                pending[block] = version
                if fua:
                    promised[block] = version
                    pending.pop(block)
                if self.writes % 16 == 0:
                    handle.flush()
                    promised.update(pending)
                    pending.clear()
        except nbd.Error:
            return  # the primary went away mid-write: expected under chaos
        finally:
            with contextlib.suppress(nbd.Error):
                handle.shutdown()


class Chaos:
    def __init__(self, root: Path, seed: int, mode: str) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.mode = mode
        ports = {s: {k: free_port() for k in ("nbd", "admin", "link")} for s in ("a", "b")}
        proxy_to = {s: free_port() for s in ("a", "b")}
        self.proxies = {s: Proxy(proxy_to[s], ports[s]["link"]) for s in ("a", "b")}
        self.sites = {"a": Site(root, "a", ports["a"], proxy_to["b"], mode),
                      "b": Site(root, "b", ports["b"], proxy_to["a"], mode)}
        self.model: dict[str, Any] = {"written": {}, "promised": {}, "version": 0}
        self.sites["a"].cli("init", "--role", "primary")
        self.sites["b"].cli("init", "--role", "secondary")
        for site in self.sites.values():
            site.start()

    def roles(self) -> tuple[Site, Site]:
        for name, site in self.sites.items():
            status = site.status()
            if status is not None and status["role"] == "primary":
                other = self.sites["b" if name == "a" else "a"]
                return site, other
        raise RuntimeError("no site is primary")

    def wait_in_sync(self) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                primary, _ = self.roles()
                status = primary.status()
                if status is not None and status["in_sync"]:
                    return
            time.sleep(0.2)
        raise RuntimeError("the sites did not get back in sync")

    def cycle(self, number: int) -> str:
        self.wait_in_sync()
        primary, secondary = self.roles()
        writer = Writer(primary.nbd_port, self.rng, self.model)
        writer.start()
        time.sleep(self.rng.uniform(0.3, 1.5))
        fault = self.rng.choice(["kill_primary", "kill_secondary", "cut_link", "failover"])
        if fault == "kill_primary":
            primary.kill9()
            writer.stop_flag.set()
            writer.join(30)
            primary.start()
        elif fault == "kill_secondary":
            secondary.kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            secondary.start()
            writer.stop_flag.set()
            writer.join(30)
        elif fault == "cut_link":
            for proxy in self.proxies.values():
                proxy.cut()
            time.sleep(self.rng.uniform(0.5, 2.0))
            for proxy in self.proxies.values():
                proxy.restore()
            writer.stop_flag.set()
            writer.join(30)
        else:
            primary.kill9()
            writer.stop_flag.set()
            writer.join(30)
            time.sleep(0.5)
            secondary.cli("promote", "--force")
            primary.start()  # the old primary steps down and receives the failback
        self.wait_in_sync()
        self.check(f"cycle {number} ({fault}, {writer.writes} writes)",
                   keep_promises=self.mode == "sync" or fault != "failover")
        return fault

    def check(self, what: str, keep_promises: bool) -> None:
        """Lookahead and async promise local durability only: after a failover the new primary
        may lack what the old one flushed last (the failback overwrites it), so only sync mode
        is held to its promises across a failover; the next cycle starts from what is there."""
        for site in self.sites.values():
            site.stop()
        a, b = self.sites["a"].data.read_bytes(), self.sites["b"].data.read_bytes()
        if a != b:
            raise RuntimeError(f"{what}: the two data files differ")
        written: dict[int, list[int]] = self.model["written"]
        for block, versions in written.items():
            have = _version_of(a[block * BLOCK : (block + 1) * BLOCK], block)
            if have is None:
                raise RuntimeError(f"{what}: block {block} holds garbage")
            if have and have not in versions:
                raise RuntimeError(f"{what}: block {block} holds version {have}, never written")
            promised = self.model["promised"].get(block)
            if keep_promises and promised is not None and have < promised:
                raise RuntimeError(f"{what}: block {block} lost promised version {promised} (has {have})")
            if not keep_promises:
                self.model["promised"][block] = have
        for site in self.sites.values():
            site.start()

    def close(self) -> None:
        for site in self.sites.values():
            with contextlib.suppress(Exception):
                site.kill9()
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.close()


def run(cycles: int, seed: int, mode: str, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="foresync-chaos-"))
    chaos = Chaos(root, seed, mode)
    faults: dict[str, int] = {}
    try:
        for number in range(1, cycles + 1):
            fault = chaos.cycle(number)
            faults[fault] = faults.get(fault, 0) + 1
            print(f"chaos: cycle {number}/{cycles} ok ({fault})", flush=True)
    except RuntimeError as exc:
        print(f"chaos: FAILED: {exc}\n  logs and images kept in {root}\n  replay: python -m "
              f"foresync.testing.chaos --cycles {cycles} --seed {seed} --mode {mode}", flush=True)
        chaos.close()
        return 1
    chaos.close()
    print(f"chaos: {cycles} passed, 0 failed (seed {seed}, mode {mode}, faults {faults})")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foresync.testing.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--mode", choices=["lookahead", "sync", "async"], default="lookahead")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    return run(args.cycles, args.seed, args.mode, args.keep)


if __name__ == "__main__":
    sys.exit(main())
