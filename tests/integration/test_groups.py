"""Consistency groups (issue 16 part 2) with real daemons and real clients.

A group [data, wal] is one replicated unit: each member is its own NBD export, the two are in
sync together, and a switchover named by either member moves both.
"""

from __future__ import annotations

import re
from pathlib import Path

from .group_sites import GroupDaemon, group_pair
from .sites import require_tool, run_tool
from .volume_sites import in_sync, wait


def exports(daemon: GroupDaemon) -> set[str]:
    out = run_tool(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{daemon.nbd_port}"],
                   context=daemon.log()).stdout
    return set(re.findall(r'"export-name":\s*"([^"]*)"', out))


def qemu(daemon: GroupDaemon, volume: str, command: str, read_only: bool = False) -> str:
    out = run_tool(["qemu-io", "-f", "raw", *(["-r"] if read_only else []), "-c", command,
                    daemon.url(volume)], context=daemon.log())
    assert "Pattern verification failed" not in out.stdout + out.stderr, out.stdout
    return out.stdout


def test_a_group_serves_each_member_and_switches_over_as_one(tmp_path: Path) -> None:
    for tool in ("nbdinfo", "qemu-io"):
        require_tool(tool)
    p, s = group_pair(tmp_path, ["data", "wal", "solo"], {"db": ["data", "wal"]},
                      sizes={"data": "8MiB", "wal": "3000000", "solo": "4MiB"})
    both = (p, s)
    try:
        p.start()
        s.start()
        p.wait_up()
        s.wait_up()
        wait("exports listed", lambda: exports(p) == {"data", "wal", "solo"}, both)
        size = run_tool(["nbdinfo", "--size", p.url("wal")]).stdout.strip()
        assert size == "3000000"  # the member's own size, not its padded span
        qemu(p, "data", "write -P 0x11 0 1M")
        qemu(p, "wal", "write -P 0x22 0 1M")
        qemu(p, "wal", "write -P 0x23 2998976 1024")  # its last KiB, right before the padding
        refused = run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x24 2999808 4096", p.url("wal")],
                           ok=None)
        assert "Input/output error" in refused.stdout + refused.stderr or refused.returncode != 0
        wait("db in sync", lambda: in_sync(p, s, "db"), both)
        doc = p.status()["volumes"]
        assert set(doc) == {"db", "solo"}
        members = doc["db"]["group"]["members"]
        assert [(m["volume"], m["base_bytes"], m["size_bytes"]) for m in members] == [
            ("data", 0, 8 << 20), ("wal", 8 << 20, 3000000)]
        # Each member file holds its own bytes on the secondary: the unit is split back apart.
        assert s.data("wal").read_bytes()[:1 << 20] == b"\x22" * (1 << 20)
        assert s.data("wal").read_bytes()[2998976:] == b"\x23" * 1024
        assert s.data("wal").stat().st_size == 3000000
        assert s.data("data").read_bytes()[:1 << 20] == b"\x11" * (1 << 20)

        # A switchover named by one member moves the whole group; solo stays where it is.
        p.cli("demote", "--config", str(p.config), "--volume", "wal")
        s.cli("promote", "--config", str(s.config), "--volume", "db")
        wait("exports moved", lambda: exports(s) == {"data", "wal"} and exports(p) == {"solo"}, both)
        qemu(s, "data", "read -P 0x11 0 1M", read_only=True)
        qemu(s, "wal", "read -P 0x22 0 1M", read_only=True)
        qemu(s, "data", "write -P 0x31 1M 1M")
        wait("db in sync the other way", lambda: in_sync(p, s, "db"), both)
        assert p.data("data").read_bytes()[1 << 20 : 2 << 20] == b"\x31" * (1 << 20)
        metrics = p.get("/metrics")
        assert re.search(r'foresync_writes_total\{[^}]*volume="db"', metrics), metrics
    finally:
        errors = p.stop() + s.stop()
    assert not errors, errors
