"""Consistency groups (issue 16 part 2) with real daemons and real clients.

A group [data, wal] is one replicated unit: each member is its own NBD export, the two are in
sync together, and a switchover named by either member moves both.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from foresync.testing.etcd import EtcdCluster

from .group_sites import GroupDaemon, group_pair
from .postgres_host import (
    ACCOUNTS,
    PG_BIN,
    START_BALANCE,
    Postgres,
    as_postgres,
    ext4_export,
    remove_work_dir,
    require_postgres,
    work_dir,
)
from .sites import free_ports, require_tool, run_tool
from .volume_sites import in_sync, start_up, wait


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
        start_up(p, s)
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
        lines = p.cli("status", "--config", str(p.config)).stdout.splitlines()
        assert any(line.startswith("db  role=primary") and line.endswith("members=data,wal")
                   for line in lines), lines
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
        assert re.search(r'foresync_group_member_base_bytes\{[^}]*member="wal"[^}]*\} 8\.388608e\+06',
                         metrics), metrics
    finally:
        errors = p.stop() + s.stop()
    assert not errors, errors


@pytest.mark.parametrize("mode", ["lookahead", "sync"])
def test_postgres_with_its_wal_on_another_member_recovers_after_kill_9_and_failover(tmp_path: Path,
                                                                                    mode: str) -> None:
    """PostgreSQL's data directory on the ``data`` member, its WAL on the ``wal`` member (issue
    16: "the database recovers after a failover"). Transfers between accounts run (pgbench) and
    checkpoints write data pages behind the WAL; the primary daemon is killed with SIGKILL in the
    middle. The secondary is promoted, both members are mounted from it, and PostgreSQL must
    recover: money is neither made nor lost, every balance matches the ledger, and amcheck finds
    the tables and indexes intact."""
    require_postgres()
    p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                      sizes={"data": "96MiB", "wal": "64MiB"}, mode=mode)
    both = (p, s)
    work = work_dir()
    sockets = work / "sockets"
    sockets.mkdir()
    pg_port, = free_ports(1)
    data_at, wal_at = work / "pg-data", work / "pg-wal"  # the same paths on both sites: pg_wal
    # is a symlink into the WAL member's filesystem
    pg: Postgres | None = None
    try:
        start_up(p, s)
        wait("db in sync", lambda: in_sync(p, s, "db"), both)
        with ext4_export(p.url("data"), work / "p-fuse-data", data_at, make_fs=True), \
                ext4_export(p.url("wal"), work / "p-fuse-wal", wal_at, make_fs=True):
            pg = Postgres(data_at, wal_at, sockets, pg_port)
            pg.init()
            pg.start()
            pg.sql("CREATE EXTENSION amcheck")
            pg.sql(f"CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); "
                   f"INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g; "
                   "CREATE TABLE ledger (id bigserial PRIMARY KEY, src int, dst int, amount int)")
            bench = pg.bench(60)
            for _ in range(6):  # checkpoints: data pages written out behind their WAL
                time.sleep(1)
                pg.sql("CHECKPOINT")
            running = pg
            wait("transfers committed", lambda: int(running.sql("SELECT count(*) FROM ledger")) > 300,
                 both, timeout_s=60)
            assert p.proc is not None and bench.poll() is None, "pgbench ended before the kill"
            p.proc.kill()  # kill -9 of the primary daemon, mid-transaction
            p.proc.wait()
            pg.kill9()
            bench.kill()
            bench.wait()
        pg.wait_gone()  # the mounts are detached now
        pg = None
        promoted = s.cli("promote", "--config", str(s.config), "--volume", "db", "--force")
        assert "promoted" in promoted.stdout
        wait("members exported by the promoted site", lambda: exports(s) == {"data", "wal"}, (s,))
        with ext4_export(s.url("data"), work / "s-fuse-data", data_at, make_fs=False), \
                ext4_export(s.url("wal"), work / "s-fuse-wal", wal_at, make_fs=False):
            pg = Postgres(data_at, wal_at, sockets, pg_port)
            pg.start()  # crash recovery replays the WAL member over the data member
            log = pg.log_text()
            assert "database system was interrupted" in log or "not properly shut down" in log, log
            transfers = int(pg.sql("SELECT count(*) FROM ledger"))
            total = int(pg.sql("SELECT sum(balance) FROM accounts"))
            assert total == ACCOUNTS * START_BALANCE, f"money made or lost: {total}"
            wrong = pg.sql(f"""SELECT count(*) FROM accounts a WHERE a.balance <> {START_BALANCE}
                - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)
                + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0)""")
            assert wrong == "0", f"{wrong} balances disagree with the ledger"
            check = as_postgres(PG_BIN / "pg_amcheck", "-h", sockets, "-p", str(pg_port),
                                "--heapallindexed", "--rootdescend", "-d", "postgres", ok=None)
            assert check.returncode == 0, check.stdout + check.stderr
            print(f"{mode}: recovered {transfers} transfers on the promoted site")
            assert transfers > 0
            pg.stop()
            pg = None
    finally:
        if pg is not None:
            pg.kill9()
        errors = p.stop() + s.stop()
        remove_work_dir(work)
    assert not errors, errors


def test_a_group_fails_over_by_itself_on_etcd_and_fails_back_whole(tmp_path: Path) -> None:
    """[cluster] (issue 16 part 3) over a group: the group's unit holds one lease; when the
    primary daemon is killed, the secondary promotes the group by itself within the lease, both
    members are served from it, and the old primary returns as the group's secondary and takes
    the failback for both members."""
    for tool in ("qemu-io", "nbdinfo"):
        require_tool(tool)
    etcd = EtcdCluster(tmp_path / "etcd")
    etcd.start()
    p: GroupDaemon | None = None
    s: GroupDaemon | None = None
    errors: list[str] = []
    try:
        section = '\n[cluster]\netcd = ["{}"]\nlease_ttl = "3s"\nsite = "{}"\n'
        p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                          sizes={"data": "8MiB", "wal": "4MiB"}, mode="sync",
                          extra=(section.format(etcd.urls[0], "a"), section.format(etcd.urls[0], "b")))
        both = (p, s)
        start_up(p, s)
        wait("db in sync", lambda: in_sync(p, s, "db"), both)
        wait("the primary holds the group's lease",
             lambda: bool(p.status()["volumes"]["db"]["cluster"]["holding_lease"]), both)
        qemu(p, "data", "write -P 0x41 0 1M")
        qemu(p, "wal", "write -P 0x42 0 1M")
        assert p.proc is not None
        p.proc.kill()  # kill -9: no demote, no lease release
        p.proc.wait()
        wait("the group promoted by itself",
             lambda: s.status()["volumes"]["db"]["role"] == "primary", (s,), timeout_s=3 + 10)
        wait("both members served by the new primary", lambda: exports(s) == {"data", "wal"}, (s,))
        qemu(s, "data", "read -P 0x41 0 1M", read_only=True)  # sync mode: nothing acked is lost
        qemu(s, "wal", "read -P 0x42 0 1M", read_only=True)
        qemu(s, "wal", "write -P 0x43 1M 1M")
        p.start()  # the old primary returns: secondary of the group, failback by itself
        p.wait_up()
        wait("the old primary is the group's secondary, in sync",
             lambda: in_sync(s, p, "db") and p.status()["volumes"]["db"]["role"] == "secondary",
             both, timeout_s=60)
        errors = p.stop() + s.stop()
        for volume in ("data", "wal"):
            assert p.data(volume).read_bytes() == s.data(volume).read_bytes(), volume
    finally:
        for daemon in (p, s):
            if daemon is not None:
                errors += daemon.stop()
        etcd.stop()
    assert not errors, errors
