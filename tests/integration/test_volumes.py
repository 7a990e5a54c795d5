"""Many volumes per daemon (issue 16 part 1), with real clients: two ``foresync run`` daemons
serving three volumes each over one NBD, one link and one admin port.

nbdinfo lists the exports and is refused an unknown one; qemu-io writes to each volume; each
volume reaches in sync on its own; one volume is switched over alone while the others stay;
/status, /metrics and ``foresync status`` speak per volume; and a SIGHUP adds one volume and
removes another while fio keeps writing to a third.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from .sites import require_tool, run_tool
from .volume_sites import Daemon, in_sync, pair, start_up, wait

VOLUMES = ["a", "b", "c"]
PATTERN = {"a": 0x11, "b": 0x22, "c": 0x33, "d": 0x44}


def exports(daemon: Daemon) -> set[str]:
    out = run_tool(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{daemon.nbd_port}"],
                   context=daemon.log()).stdout
    return set(re.findall(r'"export-name":\s*"([^"]*)"', out))


def roles(daemon: Daemon) -> dict[str, str]:
    return {name: doc["role"] for name, doc in daemon.status()["volumes"].items()}


def qemu_write(daemon: Daemon, volume: str, byte: int) -> None:
    run_tool(["qemu-io", "-f", "raw", "-c", f"write -P {byte} 0 1M", daemon.url(volume)],
             context=daemon.log())


def qemu_read(daemon: Daemon, volume: str, byte: int) -> None:
    out = run_tool(["qemu-io", "-f", "raw", "-r", "-c", f"read -P {byte} 0 1M", daemon.url(volume)],
                   context=daemon.log())
    assert "Pattern verification failed" not in out.stdout + out.stderr


def test_three_volumes_on_one_daemon_pair(tmp_path: Path) -> None:
    for tool in ("nbdinfo", "qemu-io", "fio"):
        require_tool(tool)
    p, s = pair(tmp_path, VOLUMES)
    both = (p, s)
    try:
        start_up(p, s)
        # One NBD listener serves every primary volume by name; the secondary serves none.
        wait("exports listed", lambda: exports(p) == set(VOLUMES), both)
        assert exports(s) == set()
        unknown = run_tool(["nbdinfo", f"nbd://127.0.0.1:{p.nbd_port}/nope"], ok=None)
        assert unknown.returncode != 0 and "nope" not in exports(p)
        assert re.search(r"unknown|No such|not found|ENOENT", unknown.stderr, re.I), unknown.stderr
        for volume in VOLUMES:
            qemu_write(p, volume, PATTERN[volume])
        for volume in VOLUMES:
            wait(f"{volume} in sync", lambda v=volume: in_sync(p, s, v), both)

        # /status: per volume under "volumes", no top-level view of one volume among three.
        doc = p.status()
        assert set(doc["volumes"]) == set(VOLUMES) and "role" not in doc
        assert all(doc["volumes"][v]["counters"]["writes"] >= 1 for v in VOLUMES)
        metrics = p.get("/metrics")
        for volume in VOLUMES:
            assert re.search(rf'foresync_writes_total\{{site="p",volume="{volume}"\}} [1-9]', metrics) \
                or re.search(rf'foresync_writes_total\{{volume="{volume}",site="p"\}} [1-9]', metrics), metrics
        assert metrics.count("# TYPE foresync_writes_total counter") == 1
        lines = p.cli("status", "--config", str(p.config)).stdout.splitlines()
        assert [line.split()[0] for line in lines] == VOLUMES
        assert all("role=primary" in line and "in_sync=yes" in line for line in lines)
        detail = p.cli("status", "--config", str(p.config), "--volume", "b").stdout
        assert detail.startswith("b  role=primary") and "record" in detail

        # An action on a daemon of several volumes must name one.
        refused = s.cli("promote", "--config", str(s.config), ok=(1,))
        assert "name one" in refused.stderr
        # Switch volume b over alone: the other volumes keep their roles and their link.
        p.cli("demote", "--config", str(p.config), "--volume", "b")
        s.cli("promote", "--config", str(s.config), "--volume", "b")
        assert roles(p) == {"a": "primary", "b": "secondary", "c": "primary"}
        assert roles(s) == {"a": "secondary", "b": "primary", "c": "secondary"}
        wait("exports moved", lambda: exports(p) == {"a", "c"} and exports(s) == {"b"}, both)
        qemu_read(s, "b", PATTERN["b"])
        qemu_write(s, "b", 0x5B)
        wait("b in sync the other way", lambda: in_sync(p, s, "b"), both)
        assert all(in_sync(p, s, v) for v in ("a", "c"))

        # Reload: add d, remove c, while fio writes to a; nothing of a's is disturbed.
        fio = subprocess.Popen(
            ["fio", "--name=a", "--ioengine=nbd", f"--uri={p.url('a')}", "--rw=randwrite",
             "--bs=4k", "--iodepth=4", "--time_based", "--runtime=6", "--size=8M"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for daemon in both:
            daemon.volumes = ["a", "b", "d"]
            daemon.write_config()
        p.cli("init", "--config", str(p.config), "--volume", "d", "--role", "primary")
        s.cli("init", "--config", str(s.config), "--volume", "d", "--role", "secondary")
        for daemon in both:
            daemon.hup()
        wait("d started, c stopped", lambda: all(set(d.status()["volumes"]) == {"a", "b", "d"}
                                                 for d in both), both)
        wait("d exported", lambda: exports(p) == {"a", "d"}, both)
        qemu_write(p, "d", PATTERN["d"])
        wait("d in sync", lambda: in_sync(p, s, "d"), both)
        output, _ = fio.communicate(timeout=60)
        assert fio.returncode == 0 and "err= 0" in output, output
        wait("a in sync after fio", lambda: in_sync(p, s, "a"), both)
        assert (p.meta("c") / "site.json").exists() and (s.meta("c") / "site.json").exists()
        assert "c" not in exports(p)
        # A changed volume is refused by name and keeps running as it was.
        p.size = "32MiB"
        p.write_config()
        p.hup()
        wait("refusal logged", lambda: "size changed" in p.log(), both)
        assert roles(p) == {"a": "primary", "b": "secondary", "d": "primary"}
        request = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}/reload", data=b"{}",
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            done = json.loads(answer.read())
        assert done["started"] == done["stopped"] == []
        assert "[[volume]] 'a': size changed; restart the daemon to apply it" in done["refused"]
    finally:
        problems = [problem for daemon in both for problem in daemon.stop()]
    assert not problems, problems


def test_each_volume_holds_its_own_lease_and_fails_over(tmp_path: Path) -> None:
    """[cluster] with two volumes: a lease per volume in etcd, `foresync cluster status` lists
    both, and a kill -9 of the primary daemon fails both over to the other site."""
    from foresync.testing.etcd import EtcdCluster

    etcd = EtcdCluster(tmp_path / "etcd")
    etcd.start()
    url = etcd.urls[0]
    toml = '[cluster]\netcd = ["{}"]\nlease_ttl = "3s"\nsite = "{}"\n'
    p, s = pair(tmp_path, ["a", "b"], extra=(toml.format(url, "p"), toml.format(url, "s")),
                mode="sync")
    both = (p, s)
    try:
        start_up(p, s)
        for volume in ("a", "b"):
            wait(f"{volume} in sync", lambda v=volume: in_sync(p, s, v), both)
        wait("p holds both leases", lambda: all(
            doc["cluster"]["holding_lease"] for doc in p.status()["volumes"].values()), both)
        view = json.loads(s.cli("cluster", "status", "--config", str(s.config), "--json").stdout)
        assert {v["volume"]: v["holder"] for v in view["volumes"]} == {"a": "p", "b": "p"}
        assert sorted(part["volume"] for part in view["sites"]) == ["a", "b"]
        qemu_write(p, "a", PATTERN["a"])
        wait("a in sync", lambda: in_sync(p, s, "a"), both)
        p.kill9()
        wait("s primary of both", lambda: roles(s) == {"a": "primary", "b": "primary"}, (s,),
             timeout_s=20)
        wait("s exports both", lambda: exports(s) == {"a", "b"}, (s,))
        qemu_read(s, "a", PATTERN["a"])
        view = json.loads(s.cli("cluster", "status", "--config", str(s.config), "--json").stdout)
        assert {v["volume"]: v["holder"] for v in view["volumes"]} == {"a": "s", "b": "s"}
    finally:
        problems = [problem for daemon in both for problem in daemon.stop()]
        etcd.stop()
    assert not problems, problems


def test_a_daemon_of_volumes_pairs_with_a_one_volume_site(tmp_path: Path) -> None:
    """A [[volume]] primary's dialler names its volume (ROUTE); a one-volume secondary of that
    name takes the connection as before, and the volume syncs."""
    p, s = pair(tmp_path, ["vol0"])
    s.config.write_text(
        f'[volume]\nname = "vol0"\ndata = "one.img"\nsize = "{s.size}"\nmeta = "one.meta"\n'
        f'[nbd]\nlisten = "127.0.0.1:{s.nbd_port}"\n'
        f'[link]\nlisten = "127.0.0.1:{s.link_port}"\npeer = "127.0.0.1:{s.peer_port}"\n'
        f'[record]\ncapacity = 64\n[admin]\nlisten = "127.0.0.1:{s.admin_port}"\n')
    s.cli("init", "--config", str(s.config), "--role", "secondary")
    both = (p, s)
    try:
        start_up(p, s)
        qemu_write(p, "vol0", PATTERN["a"])
        wait("vol0 in sync", lambda: in_sync(p, s, "vol0"), both)
        doc = s.status()
        assert doc["role"] == "secondary" and doc["in_sync"] and set(doc["volumes"]) == {"vol0"}
    finally:
        problems = [problem for daemon in both for problem in daemon.stop()]
    assert not problems, problems
