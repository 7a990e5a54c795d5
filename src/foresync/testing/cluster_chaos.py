"""Chaos runs of a cluster (issue 16, part 3): ``make chaos CLUSTER=1``.

The pair of ``testing.chaos`` (two real sites, the link through cuttable proxies, a writer that
records what each completed FLUSH or FUA promised), with ``[cluster]`` on both sites: a real etcd
(``testing.etcd``), each site reaching it through its own cuttable proxy, and no operator. Each
cycle draws one fault and lets the automatic failover and failback run:

* ``kill_primary``: kill -9 the primary; the secondary must take over by itself; the old primary
  is restarted and must come back as the secondary and fail back by itself;
* ``kill_secondary``: kill -9 the secondary, restart it;
* ``cut_link``: cut the link between the sites for a while (etcd fine): nothing may be promoted;
* ``cut_link_kill_primary``: cut the link (etcd fine), let the primary answer writes alone, kill
  -9 it: the secondary, marked outdated in etcd, must not promote itself (DRBD's outdate); the
  old primary restarts with the link back, retakes its lease and resyncs (in ``sync`` mode no
  acknowledged write may be lost). Unmarked (nothing answered alone), it may take over;
* ``cut_etcd``: cut the primary off from etcd until the secondary has taken over, then heal;
* ``etcd_restart``: stop etcd for longer than the lease, then start it: nothing may be promoted.

Checked throughout by a poller of both sites' /status: at most one writable primary (primary and
not fenced) per epoch, and none of an older epoch once a newer one was writable, by the sites' own
timestamps. Checked after each cycle (``Chaos.check``): identical images, no
block holding garbage, and (in ``sync`` mode, the default here) every promise kept, across the
failovers too.

``python -m foresync.testing.cluster_chaos --cycles N [--seed S] [--mode sync] [--ttl 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from foresync.testing.chaos import Chaos, Proxy, Site, Writer
from foresync.testing.etcd import EtcdCluster
from foresync.testing.processes import free_port

FAULTS = ("kill_primary", "kill_secondary", "cut_link", "cut_etcd", "etcd_restart",
          "cut_link_kill_primary")
FAILOVER_FAULTS = ("kill_primary", "cut_etcd", "cut_link_kill_primary")


class ClusterChaos(Chaos):
    def __init__(self, root: Path, seed: int, mode: str, ttl_s: int) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.mode = mode
        self.ttl_s = ttl_s
        self.etcd = EtcdCluster(root / "etcd")
        self.etcd.start()
        etcd_port = self.etcd.members[0].client_port
        ports = {s: {k: free_port() for k in ("nbd", "admin", "link")} for s in ("a", "b")}
        proxy_to = {s: free_port() for s in ("a", "b")}
        self.proxies = {s: Proxy(proxy_to[s], ports[s]["link"]) for s in ("a", "b")}
        etcd_via = {s: free_port() for s in ("a", "b")}
        self.etcd_proxies = {s: Proxy(etcd_via[s], etcd_port, delay_ms=0) for s in ("a", "b")}
        self.sites = {"a": Site(root, "a", ports["a"], proxy_to["b"], mode),
                      "b": Site(root, "b", ports["b"], proxy_to["a"], mode)}
        for name, site in self.sites.items():
            with site.config.open("a") as config:
                config.write(f'[cluster]\netcd = ["http://127.0.0.1:{etcd_via[name]}"]\n'
                             f'lease_ttl = "{ttl_s}s"\nsite = "{name}"\n')
        self.model = {"written": {}, "promised": {}, "version": 0}
        self.sites["a"].cli("init", "--role", "primary")
        self.sites["b"].cli("init", "--role", "secondary")
        for site in self.sites.values():
            site.start()
        self.violations: list[str] = []
        self.writable: list[tuple[float, int, str]] = []
        self.promotions = 0
        self.outdated_refusals = 0  # secondaries that waited for a primary that answered alone
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Samples of which site is writable (primary, not fenced), with the epoch and the
        site's own monotonic time (the machine's one clock): ``_check_epochs`` reads them."""
        while not self._stop.wait(0.05):
            for name, site in self.sites.items():
                status = site.status()
                cluster = (status or {}).get("cluster") or {}
                if status and status["role"] == "primary" and cluster.get("fenced") is False:
                    self.writable.append((cluster["monotonic_s"], status["epoch"], name))

    def _check_epochs(self) -> None:
        """At most one writable primary per epoch, and none of an older epoch once a newer
        one was writable."""
        by_epoch: dict[int, set[str]] = {}
        last_of: dict[int, float] = {}
        first_of: dict[int, float] = {}
        for at, epoch, name in list(self.writable):
            by_epoch.setdefault(epoch, set()).add(name)
            last_of[epoch] = max(last_of.get(epoch, at), at)
            first_of[epoch] = min(first_of.get(epoch, at), at)
        for epoch, names in by_epoch.items():
            if len(names) > 1:
                self.violations.append(f"epoch {epoch} writable on {sorted(names)}")
        epochs = sorted(by_epoch)
        for older, newer in itertools.pairwise(epochs):
            if last_of[older] > first_of[newer]:
                self.violations.append(f"epoch {older} still writable {last_of[older] - first_of[newer]:.3f} s "
                                       f"after epoch {newer} was")

    def roles(self) -> tuple[Site, Site]:
        """The primary is the site that says primary and holds the lease (an old primary that
        restarted says primary too, fenced, until it is told to step down)."""
        for name, site in self.sites.items():
            status = site.status()
            if (status is not None and status["role"] == "primary"
                    and (status.get("cluster") or {}).get("holding_lease")):
                return site, self.sites["b" if name == "a" else "a"]
        raise RuntimeError("no site is primary with the lease")

    def _name(self, site: Site) -> str:
        return next(name for name, s in self.sites.items() if s is site)

    def _wait_primary(self, site: Site, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = site.status()
            if status is not None and status["role"] == "primary":
                self.promotions += 1
                return
            time.sleep(0.05)
        raise RuntimeError(f"site {site.name} did not take over within {timeout_s:g} s")

    def _still_secondary(self, site: Site, what: str) -> None:
        status = site.status()
        if status is not None and status["role"] != "secondary":
            raise RuntimeError(f"{what}: site {site.name} was promoted")

    def cycle(self, number: int) -> str:
        self.wait_in_sync()
        primary, secondary = self.roles()
        writer = Writer(primary.nbd_port, self.rng, self.model)
        writer.start()
        time.sleep(self.rng.uniform(0.3, 1.5))
        fault = self.rng.choice(FAULTS)
        if fault == "kill_primary":
            primary.kill9()
            self._wait_primary(secondary, self.ttl_s + 10)
            primary.start()  # comes back as the secondary and fails back by itself
        elif fault == "kill_secondary":
            secondary.kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            secondary.start()
        elif fault == "cut_link":
            for proxy in self.proxies.values():
                proxy.cut()
            time.sleep(self.rng.uniform(self.ttl_s, 2 * self.ttl_s))
            self._still_secondary(secondary, "link cut, etcd fine")
            for proxy in self.proxies.values():
                proxy.restore()
        elif fault == "cut_link_kill_primary":
            self._outdate(primary, secondary)
        elif fault == "cut_etcd":
            self.etcd_proxies[self._name(primary)].cut()
            self._wait_primary(secondary, self.ttl_s + 10)
            self.etcd_proxies[self._name(primary)].restore()
        else:
            self.etcd.members[0].stop()
            time.sleep(self.ttl_s + self.rng.uniform(0.5, 2.0))
            self._still_secondary(secondary, "etcd down")
            self.etcd.members[0].start()
        writer.stop_flag.set()
        writer.join(30)
        self.wait_in_sync()
        self._check_epochs()
        if self.violations:
            raise RuntimeError(f"cycle {number} ({fault}): {self.violations[0]}")
        self.check(f"cycle {number} ({fault}, {writer.writes} writes)",
                   keep_promises=self.mode == "sync" or fault not in FAILOVER_FAULTS)
        return fault

    def _outdate(self, primary: Site, secondary: Site) -> None:
        for proxy in self.proxies.values():
            proxy.cut()
        time.sleep(self.rng.uniform(0.5, 1.5))  # the writer's writes are answered alone
        primary.kill9()
        time.sleep(self.ttl_s + 2)  # past the lease: a takeover would have happened by now
        status = secondary.status() or {}
        marked = (status.get("cluster") or {}).get("outdated") is not None
        if marked:
            self._still_secondary(secondary, "the primary answered writes alone, then died")
            self.outdated_refusals += 1
        for proxy in self.proxies.values():
            proxy.restore()
        if not marked:  # nothing answered alone: it may take over, and the old one fails back
            self._wait_primary(secondary, self.ttl_s + 10)
        primary.start()

    def close(self) -> None:
        self._stop.set()
        super().close()
        for proxy in self.etcd_proxies.values():
            with contextlib.suppress(Exception):
                proxy.close()
        self.etcd.stop()


def run(cycles: int, seed: int, mode: str, ttl_s: int, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="foresync-cluster-chaos-"))
    chaos = ClusterChaos(root, seed, mode, ttl_s)
    faults: dict[str, int] = {}
    started = time.monotonic()
    try:
        for number in range(1, cycles + 1):
            fault = chaos.cycle(number)
            faults[fault] = faults.get(fault, 0) + 1
            print(f"cluster chaos: cycle {number}/{cycles} ok ({fault})", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"cluster chaos: FAILED: {exc}\n  logs and images kept in {root}\n  replay: python -m "
              f"foresync.testing.cluster_chaos --cycles {cycles} --seed {seed} --mode {mode} "
              f"--ttl {ttl_s}", flush=True)
        chaos.close()
        return 1
    chaos.close()
    print(f"cluster chaos: {cycles} passed, 0 failed (seed {seed}, mode {mode}, lease_ttl "
          f"{ttl_s} s, faults {faults}, automatic takeovers {chaos.promotions}, outdated "
          f"secondaries that waited {chaos.outdated_refusals}, "
          f"{time.monotonic() - started:.0f} s)")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foresync.testing.cluster_chaos",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--mode", choices=["lookahead", "sync", "async"], default="sync")
    parser.add_argument("--ttl", type=int, default=3, help="[cluster] lease_ttl in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    return run(args.cycles, args.seed, args.mode, args.ttl, args.keep)


if __name__ == "__main__":
    sys.exit(main())
