"""Many volumes per daemon (issue 16 part 1), the edges: what a careful client or operator tries
on a daemon of several volumes, with real ``foresync run`` processes and real clients.

- ``GET /events?volume=NAME`` for a volume the daemon does not serve is a 404 naming it, never
  another volume's events.
- A reload that adds a volume while it also (wrongly) changes a daemon-level setting, here
  ``[link] peer``: the change is refused and logged, and the new volume runs with the settings
  in force, like the others: it reaches in sync with its peer.
- What a write through the shared NBD listener logs names its volume (``vol=b``).
- A link cut that hits one volume only (mixed roles: a's primary dials through a proxy, b's
  the other way, directly): a is never reported in sync while its copies differ, b stays in
  sync and takes writes, and both copies of each are identical once the link is back.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .sites import LinkProxy, free_ports, require_tool, run_tool
from .volume_sites import Daemon, in_sync, pair, start_up, wait


def test_unknown_volume_events_and_a_reload_with_a_refused_peer_change(tmp_path: Path) -> None:
    require_tool("qemu-io")
    p, s = pair(tmp_path, ["a", "b"])
    both = (p, s)
    try:
        start_up(p, s)
        for volume in ("a", "b"):
            wait(f"{volume} in sync", lambda v=volume: in_sync(p, s, v), both)

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/events?volume=nope",
                                   timeout=5).close()
        assert refused.value.code == 404 and "nope" in refused.value.read().decode()

        # p's reload adds d, and its [link] peer now names a port where nothing listens.
        (dead,) = free_ports(1)
        p.peer_port = dead
        for daemon in both:
            daemon.volumes = ["a", "b", "d"]
            daemon.write_config()
        p.cli("init", "--config", str(p.config), "--volume", "d", "--role", "primary")
        s.cli("init", "--config", str(s.config), "--volume", "d", "--role", "secondary")
        for daemon in both:
            daemon.hup()
        wait("refusal logged", lambda: "link_peer changed" in p.log(), both)
        wait("d started", lambda: "d" in p.status()["volumes"] and "d" in s.status()["volumes"], both)
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x44 0 1M", p.url("d")], context=p.log())
        wait("d in sync with the peer in force", lambda: in_sync(p, s, "d"), both, timeout_s=15)
        assert all(in_sync(p, s, v) for v in ("a", "b"))

        # A write through the shared NBD listener: the log lines it causes name its volume.
        s.kill9()
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 1M", p.url("b")], context=p.log())
        wait("a new data generation", lambda: "data generation" in p.log(), both)
        started = [line for line in p.log().splitlines() if "data generation" in line]
        assert all(" vol=b " in line for line in started), started
    finally:
        problems = [problem for daemon in both for problem in daemon.stop()]
    assert not problems, problems


def roles(daemon: Daemon) -> dict[str, str]:
    return {name: doc["role"] for name, doc in daemon.status()["volumes"].items()}


def first_mib(daemon: Daemon, volume: str) -> bytes:
    with daemon.data(volume).open("rb") as image:
        return image.read(1 << 20)


def test_a_link_cut_that_hits_one_volume_only(tmp_path: Path) -> None:
    require_tool("qemu-io")
    p, s = pair(tmp_path, ["a", "b"])
    (proxy_port,) = free_ports(1)
    proxy = LinkProxy("p->s", proxy_port, s.link_port, tmp_path / "proxy.log")
    p.peer_port = proxy_port  # p's primaries dial s through the proxy; s's dial p directly
    p.write_config()
    both = (p, s)
    try:
        proxy.start()
        for daemon in both:
            daemon.start()
        for daemon in both:
            daemon.wait_up()
        for volume in ("a", "b"):
            wait(f"{volume} in sync", lambda v=volume: in_sync(p, s, v), both)
        p.cli("demote", "--config", str(p.config), "--volume", "b")
        s.cli("promote", "--config", str(s.config), "--volume", "b")
        wait("b in sync from s", lambda: in_sync(p, s, "b") and roles(s)["b"] == "primary", both)

        proxy.cut()
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0xa1 0 1M", p.url("a")], context=p.log())
        assert first_mib(p, "a") != first_mib(s, "a")  # the copies differ now
        assert not p.status()["volumes"]["a"]["in_sync"] and not in_sync(p, s, "a")
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0xb1 0 1M", s.url("b")], context=s.log())
        wait("b in sync during a's cut", lambda: in_sync(p, s, "b"), both)
        assert not p.status()["volumes"]["a"]["in_sync"]
        proxy.restore()
        wait("a in sync again", lambda: in_sync(p, s, "a"), both)
        for volume in ("a", "b"):
            assert p.data(volume).read_bytes() == s.data(volume).read_bytes(), volume
    finally:
        problems = [problem for daemon in both for problem in daemon.stop()] + proxy.close()
    assert not problems, problems


def test_a_sighup_while_the_volumes_start_is_kept_not_fatal(tmp_path: Path) -> None:
    """A SIGHUP's default action ends a process. A process manager that reloads right after it
    started the daemon must not kill it half-started: until every volume has started, a SIGHUP
    is kept and the reload runs once they have."""
    import time

    volumes = [f"v{i}" for i in range(6)]
    p, _ = pair(tmp_path, volumes)
    try:
        p.start()
        deadline = time.monotonic() + 30
        while "starting 6 volume(s)" not in p.log():
            assert p.proc is not None and p.proc.poll() is None, p.log()
            assert time.monotonic() < deadline, p.log()
            time.sleep(0.001)
        sent = 0
        while True:  # a SIGHUP every few milliseconds from then until all six are listed
            assert p.proc is not None
            assert p.proc.poll() is None, f"died after {sent} SIGHUP(s)\n{p.log()}"
            p.hup()
            sent += 1
            try:
                if sorted(p.status()["volumes"]) == volumes:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, p.log()
            time.sleep(0.002)
        wait("a reload ran", lambda: "reload: started none" in p.log(), (p,))
        assert p.proc.poll() is None
        assert sorted(p.status()["volumes"]) == volumes
    finally:
        p.stop()
