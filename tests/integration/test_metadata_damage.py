"""Damaged or missing metadata (issue 12, item 1 and the oos.json part of item 8), with real
``foresync run`` processes: a site whose metadata cannot be trusted widens (every extent may
differ), says so, refuses an unforced promote, and the copies end byte for byte identical.

The divergence a record exists for (a write the primary made that the secondary may lack) is
made by writing into the primary's stopped image directly, inside an extent the secondary's
record holds: exactly what a primary crash right after its local write leaves. Before issue 12,
a damaged record then gave "failback set 0 extents" and the copies stayed different.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from foresync.journal import format as jfmt
from foresync.journal import oos_format

from .sites import (
    FORESYNC,
    MiB,
    Settings,
    Site,
    SitePair,
    assert_pattern,
    run_tool,
)

pytestmark = pytest.mark.integration

SMALL = Settings(size="64MiB", capacity=16, lookahead=2)
EXTENTS = 64

MakePair = Callable[..., SitePair]



def qemu_io(pair: SitePair, site: Site, *commands: str) -> None:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    run_tool([*argv, pair.nbd_url_of(site)], context=pair.logs())


def poke(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as image:
        image.seek(offset)
        image.write(data)


def record_of(site: Site) -> set[int]:
    return set(jfmt.replay((site.meta_path / "record.journal").read_bytes()).state.extents)


def secondary_record_after_a_clean_stop(pair: SitePair) -> set[int]:
    """Write 4 MiB, let it replicate, stop both sites cleanly (the secondary's journal is then
    one checkpoint), and make the primary hold data in extent 0 the secondary lacks."""
    qemu_io(pair, pair.primary, "write -P 0x61 0 4M")
    pair.wait_in_sync()
    pair.stop_both()
    record = record_of(pair.secondary)
    assert 0 in record, f"extent 0 should be in the secondary's record: {sorted(record)}"
    poke(pair.primary.data_path, 0, b"\x99" * MiB)
    return record


def fail_back_and_compare(pair: SitePair, old: Site, new: Site) -> None:
    pair.start(new)
    pair.start(old)  # steps down; the failback copies the whole volume
    old_status, new_status = pair.wait_in_sync(timeout_s=60)
    assert old_status["role"] == "secondary" and old_status["epoch"] == 2, old_status
    assert new_status["counters"]["resync_bytes"] >= EXTENTS * MiB - MiB, new_status
    pair.stop_both()
    pair.assert_identical()
    assert_pattern(old.data_path, 0, 4 * MiB, 0x61)


@pytest.mark.parametrize("damage", ["flipped byte in the checkpoint", "journal deleted"])
def test_damaged_secondary_journal_is_not_promotable_unforced_and_fails_back_everything(
        make_pair: MakePair, damage: str) -> None:
    pair = make_pair(SMALL)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    old, new = pair.primary, pair.secondary
    secondary_record_after_a_clean_stop(pair)
    journal = new.meta_path / "record.journal"
    if damage == "journal deleted":
        journal.unlink()
    else:
        data = bytearray(journal.read_bytes())
        data[-5] ^= 0x01  # inside the checkpoint's extent list: no crash writes that
        journal.write_bytes(bytes(data))

    pair.start(new)  # the primary is "lost": failover
    status = pair.status(new)
    assert status["consistent"] is False and "record journal" in status["metadata_damage"], status
    assert "every extent of this copy may now differ" in new.log()
    refused = pair.promote(new, ok=None)
    assert refused.returncode != 0, refused.stdout
    assert "record journal" in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert pair.role_of(new) == "secondary"

    promoted = pair.promote(new, force=True)
    assert f"failback set {EXTENTS} extents" in promoted.stdout, promoted.stdout
    pair.wait_role(new, "primary")
    pair.stop(new)
    if damage != "journal deleted":
        assert [p.name for p in new.meta_path.iterdir() if ".damaged-" in p.name] == ["record.journal.damaged-1"]
    fail_back_and_compare(pair, old, new)


def test_damaged_undo_log_keeps_the_copy_inconsistent(make_pair: MakePair) -> None:
    """A flipped byte in the middle of undo.log: the rollback cannot be trusted, so the copy
    stays inconsistent (promote needs --force) instead of "rolled back, consistent: true"."""
    pair = make_pair(Settings(size="64MiB", capacity=16, lookahead=2, resync_rate_max="2MiB"),
                     via_proxy=True)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    old, new = pair.primary, pair.secondary
    qemu_io(pair, old, "write -P 0x67 0 12M")
    pair.wait_in_sync()
    pair.cut_link()
    pair.wait_link(new, "disconnected")
    qemu_io(pair, old, "write -P 0x68 0 12M")
    pair.restore_link()
    pair.wait_for("the resync to be under way",
                  lambda: pair.status(old)["counters"]["resync_bytes"] >= 4 * MiB, timeout_s=30)
    pair.kill9(old)
    pair.wait_link(new, "disconnected")
    pair.stop(new)  # a clean stop keeps the undo log of the unfinished pass
    log_path = new.meta_path / "undo.log"
    data = bytearray(log_path.read_bytes())
    assert len(data) >= 16 + 3 * (12 + MiB), f"too few extents saved: {len(data)} bytes"
    data[16 + (12 + MiB) + 12 + 1000] ^= 0x04  # inside the second saved extent
    log_path.write_bytes(bytes(data))

    pair.start(new)
    status = pair.status(new)
    assert status["consistent"] is False and "undo log" in status["metadata_damage"], status
    refused = pair.promote(new, ok=None)
    assert refused.returncode != 0 and "--force" in refused.stderr, refused
    promoted = pair.promote(new, force=True)
    assert f"failback set {EXTENTS} extents" in promoted.stdout, promoted.stdout
    pair.wait_role(new, "primary")
    assert (new.meta_path / "undo.log.damaged-1").read_bytes() == bytes(data)
    pair.restart(old)
    # The old primary acknowledged the 0x68 writes while cut off and the promoted copy may lack
    # them: a split brain (issue 13), which the operator resolves for the promoted site.
    for site in pair.sites:
        pair.wait_for(f"{site.role} site to report split brain",
                      lambda s=site: pair.status(s)["split_brain"] is True)
    pair.resolve_discard_local(old)
    pair.wait_in_sync(timeout_s=90)
    pair.stop_both()
    pair.assert_identical()


def test_deleted_primary_oos_json_copies_everything_before_in_sync(make_pair: MakePair) -> None:
    pair = make_pair(SMALL)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    pair.stop(pair.secondary)
    pair.wait_link(pair.primary, "disconnected")
    qemu_io(pair, pair.primary, "write -P 0x71 40M 2M")  # the secondary lacks 40, 41: only in oos.json
    pair.stop(pair.primary)
    (pair.primary.meta_path / "oos.json").unlink()

    pair.start(pair.primary)
    before = pair.status(pair.primary)
    pair.start(pair.secondary)
    primary, _ = pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    # Before issue 12 the primary forgot extents 40 and 41: in sync, yet the images differed.
    pair.assert_identical()
    assert_pattern(pair.secondary.data_path, 40 * MiB, 2 * MiB, 0x71)
    assert primary["counters"]["resync_bytes"] >= EXTENTS * MiB - MiB, primary
    assert before.get("full_resync_pending") is True, before
    assert "oos.json is missing" in before["metadata_damage"], before
    assert primary["full_resync_pending"] is False and primary["metadata_damage"] == "", primary
    stored = oos_format.decode((pair.primary.meta_path / "oos.json").read_text(), EXTENTS)
    assert not stored.everything, stored  # the finished pass cleared it


@pytest.mark.parametrize("content", ["5", "[-1]", "[99999]", '["x"]', "not json {"])
def test_malformed_oos_json_is_a_one_line_error(make_pair: MakePair, content: str) -> None:
    pair = make_pair(SMALL)
    pair.init(pair.primary)
    oos = pair.primary.meta_path / "oos.json"
    oos.write_text(content)
    result = subprocess.run([str(FORESYNC), "run", "--config", str(pair.primary.config_path)],
                            capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(oos) in lines[0] and "--assume-all-out-of-sync" in lines[0], lines[0]
    assert oos.read_text() == content  # untouched

    # The documented way out: start once with the flag; the whole volume is copied.
    pair.init(pair.secondary)
    pair.start(pair.primary, "--assume-all-out-of-sync")
    assert (pair.primary.meta_path / "oos.json.damaged-1").read_text() == content
    pair.start(pair.secondary)
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    pair.assert_identical()

