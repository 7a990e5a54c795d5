"""A volume's data file swapped or replaced under its metadata is refused at start, not resynced
only where the record says (daemon/data_file.py, replication/data_identity.py), through real
``foresync run`` processes. Before the check each of these sites reported in sync while its data
differed from the primary's.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .sites import FORESYNC, TOOL_TIMEOUT_S, MiB, Settings, SitePair, assert_pattern, run_tool
from .volume_sites import Daemon, in_sync, pair, start_up, wait

pytestmark = pytest.mark.integration

MakePair = Callable[..., SitePair]
SMALL = Settings(size="32MiB")


def qemu_write(url: str, byte: int, offset_mib: int = 0) -> None:
    run_tool(["qemu-io", "-f", "raw", "-c", f"write -P {byte} {offset_mib}M 1M", url])


def refused(config: Path) -> str:
    """Run ``foresync run`` expecting a refusal: its one ``Error:`` line."""
    result = subprocess.run([str(FORESYNC), "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=TOOL_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def start_assuming_all(daemon: Daemon) -> None:
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen(
            [str(FORESYNC), "run", "--config", str(daemon.config), "--assume-all-out-of-sync"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def test_swapped_data_lines_are_refused_then_fully_compared(tmp_path: Path) -> None:
    p, s = pair(tmp_path, ["a", "c"], size="128MiB")  # more extents than the record holds
    try:
        start_up(p, s)
        qemu_write(p.url("a"), 0x11, offset_mib=100)
        qemu_write(p.url("c"), 0x22, offset_mib=3)
        wait("a and c in sync", lambda: in_sync(p, s, "a") and in_sync(p, s, "c"), (p, s))
        assert not s.stop()
        qemu_write(p.url("a"), 0x33, offset_mib=5)  # in the records: the only extents resynced
        qemu_write(p.url("c"), 0x44, offset_mib=9)
        # Before the check the secondary started, resynced extents 5 and 9 only and reported a
        # and c in sync while s-c.img (now a's) held c's 0x22 at 3 MiB and lacked a's 0x11.

        # The secondary restarted with its `data` lines swapped.
        text = s.config.read_text()
        a_line, c_line = f'data = "{s.data("a").name}"', f'data = "{s.data("c").name}"'
        assert a_line in text and c_line in text
        s.config.write_text(text.replace(a_line, "@A@").replace(c_line, a_line).replace("@A@", c_line))
        error = refused(s.config)
        assert "volume a" in error and "`data`" in error and str(s.config) in error, error
        assert str(s.data("c")) in error and "--assume-all-out-of-sync" in error, error

        # The way on: a full compare, after which the swapped files hold the other volume.
        start_assuming_all(s)
        s.wait_up()
        wait("a and c in sync", lambda: in_sync(p, s, "a") and in_sync(p, s, "c"), (p, s), 40.0)
        assert s.status()["volumes"]["a"]["in_sync"] is True
        assert not s.stop() and not p.stop()
        run_tool(["cmp", p.data("a"), s.data("c")])  # a's data is now in s-c.img
        run_tool(["cmp", p.data("c"), s.data("a")])
        assert_pattern(s.data("c"), 100 * MiB, MiB, 0x11)
        doc = json.loads((s.meta("a") / "site.json").read_text())
        assert doc["data_identity"]["path"] == os.path.realpath(s.data("c"))
    finally:
        p.stop()
        s.stop()


def test_a_data_file_restored_from_a_copy_is_refused(make_pair: MakePair) -> None:
    pair_ = make_pair(SMALL)
    pair_.init_both()
    pair_.start_both()
    qemu_write(pair_.nbd_url, 0x41)
    pair_.wait_in_sync()
    pair_.stop(pair_.secondary)
    backup = pair_.secondary.data_path.with_suffix(".backup")
    run_tool(["cp", "--sparse=always", pair_.secondary.data_path, backup])  # an old backup
    pair_.start(pair_.secondary)
    qemu_write(pair_.nbd_url, 0x42, offset_mib=7)  # replicated while connected: no record left
    pair_.wait_in_sync()
    pair_.stop(pair_.secondary)
    os.replace(backup, pair_.secondary.data_path)  # restored: same path, another inode

    error = refused(pair_.secondary.config_path)
    assert "`data`" in error and str(pair_.secondary.config_path) in error, error
    assert "inode" in error and "--assume-all-out-of-sync" in error, error

    pair_.start(pair_.secondary, "--assume-all-out-of-sync")
    pair_.wait_in_sync(timeout_s=40)
    pair_.stop_both()
    pair_.assert_identical()
    assert_pattern(pair_.secondary.data_path, 7 * MiB, MiB, 0x42)


def test_metadata_from_before_identities_starts_and_records_it(make_pair: MakePair) -> None:
    pair_ = make_pair(SMALL)
    pair_.init_both()
    for site in pair_.sites:
        path = site.meta_path / "site.json"
        doc = json.loads(path.read_text())
        del doc["data_identity"]
        path.write_text(json.dumps(doc))
    pair_.start_both()
    qemu_write(pair_.nbd_url, 0x51)
    pair_.wait_in_sync()
    for site in pair_.sites:
        recorded = site.site_json()["data_identity"]
        assert recorded["path"] == os.path.realpath(site.data_path), recorded
        assert recorded["ino"] == os.stat(site.data_path).st_ino, recorded
        assert "records no data file" in site.log(), site.log()


def test_a_reload_adding_a_volume_with_a_typo_in_data_refuses_it(tmp_path: Path) -> None:
    _, s = pair(tmp_path, ["a", "c"])
    try:
        s.volumes = ["a"]
        s.write_config()
        s.start()
        s.wait_up()
        s.volumes = ["a", "c"]
        s.write_config()
        text = s.config.read_text()  # a typo in c's `data`: before the check, a new empty file
        typo = tmp_path / "s-c.iimg"
        s.config.write_text(text.replace(f'data = "{s.data("c").name}"', f'data = "{typo.name}"'))
        request = urllib.request.Request(f"http://127.0.0.1:{s.admin_port}/reload", data=b"{}",
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            done = json.loads(answer.read())
        assert done["started"] == [] and len(done["refused"]) == 1, done
        assert "'c'" in done["refused"][0] and "`data`" in done["refused"][0], done
        assert "does not exist" in done["refused"][0], done
        assert set(s.status()["volumes"]) == {"a"} and not typo.exists()
    finally:
        assert not s.stop()


def test_a_group_members_data_file_replaced_is_refused(tmp_path: Path) -> None:
    """Every member of a consistency group has its data file recorded, not only the first: a
    second member's file restored from an old copy is refused, naming that member; the way on is
    a full compare of the group."""
    from .group_sites import group_pair

    p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                      sizes={"data": "8MiB", "wal": "8MiB"})
    try:
        start_up(p, s)
        wait("db in sync", lambda: in_sync(p, s, "db"), (p, s))
        doc = json.loads((s.group_meta("db") / "site.json").read_text())
        assert [m["path"] for m in doc["member_identities"]] == [os.path.realpath(s.data("wal"))]
        assert not s.stop()
        backup = s.data("wal").with_suffix(".backup")
        run_tool(["cp", "--sparse=always", s.data("wal"), backup])  # an old copy of wal
        start_up(s)
        qemu_write(p.url("wal"), 0x52, offset_mib=6)
        wait("db in sync", lambda: in_sync(p, s, "db"), (p, s))
        assert not s.stop()
        os.replace(backup, s.data("wal"))  # restored: same path, another inode, without 0x52

        error = refused(s.config)
        assert "member volume wal" in error and str(s.data("wal")) in error, error
        assert "inode" in error and "--assume-all-out-of-sync" in error, error

        start_assuming_all(s)
        s.wait_up()
        wait("db in sync after the full compare", lambda: in_sync(p, s, "db"), (p, s), 40.0)
        assert not s.stop() and not p.stop()
        run_tool(["cmp", p.data("wal"), s.data("wal")])
        assert_pattern(s.data("wal"), 6 * MiB, MiB, 0x52)
    finally:
        p.stop()
        s.stop()
