"""The data file's identity (replication/data_identity.py, daemon/data_file.py): what counts as
another data file, its JSON form in site.json, and the start checks on real files."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from foresync import config as config_mod
from foresync.daemon import data_file
from foresync.daemon import metadata as site
from foresync.daemon.run import init_site
from foresync.errors import ConfigError
from foresync.faults import Faults
from foresync.replication.data_identity import DataIdentity, mismatch

FILE = DataIdentity("/srv/a.img", 2049, 1234, 0, 16 << 20)
DEVICE = DataIdentity("/dev/dm-3", 5, 777, (253 << 8) | 3, 1 << 30)


def test_the_same_file_matches() -> None:
    assert mismatch(FILE, FILE) == ""
    assert mismatch(DEVICE, DEVICE) == ""


@pytest.mark.parametrize(("change", "named"), [
    ({"path": "/srv/c.img"}, "real path"),
    ({"ino": 99}, "inode"),  # a copy restored to the same path
    ({"dev": 2050}, "device"),  # another disk mounted at the same place
    ({"size": 8 << 20}, "size"),
    ({"rdev": 7 << 8}, "file type"),  # a block device where a file was
])
def test_another_file_is_named(change: dict[str, object], named: str) -> None:
    found = DataIdentity(**{**FILE.to_json(), **change})  # type: ignore[arg-type]
    assert named in mismatch(FILE, found)


def test_a_missing_file_differs() -> None:
    assert "does not exist" in mismatch(FILE, None)


def test_a_block_device_compares_its_number_not_its_node() -> None:
    rebooted = DataIdentity(DEVICE.path, 6, 4242, DEVICE.rdev, DEVICE.size)  # /dev made anew
    assert mismatch(DEVICE, rebooted) == ""
    other = DataIdentity(DEVICE.path, DEVICE.dev, DEVICE.ino, (253 << 8) | 4, DEVICE.size)
    assert "block device number" in mismatch(DEVICE, other)


def test_the_deliberate_bug_takes_any_file() -> None:
    assert mismatch(FILE, None, Faults(data_identity_ignored=True)) == ""


def test_json_round_trip_and_damage() -> None:
    assert DataIdentity.from_json(json.loads(json.dumps(FILE.to_json()))) == FILE
    for bad in (None, [], {"path": "/x"}, {**FILE.to_json(), "ino": "12"},
                {**FILE.to_json(), "size": True}):
        with pytest.raises(ValueError):
            DataIdentity.from_json(bad)


def _config(tmp_path: Path, data: str = "a.img") -> config_mod.SiteConfig:
    path = tmp_path / "site.toml"
    path.write_text(f'[volume]\nname = "vol"\ndata = "{data}"\nsize = "1MiB"\nmeta = "meta"\n'
                    '[nbd]\nlisten = "127.0.0.1:0"\n[link]\nlisten = "127.0.0.1:0"\n'
                    'peer = "127.0.0.1:1"\n[admin]\nlisten = "127.0.0.1:0"\n')
    return config_mod.load(str(path))


def test_init_records_and_a_start_checks(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = init_site(cfg.path, "secondary", force=False)
    recorded = site.load(cfg.meta).data_identity
    assert recorded is not None and recorded == meta.data_identity
    assert recorded.path == os.path.realpath(cfg.data) and recorded.size == 1 << 20
    data_file.check(cfg, assume_all=False)  # the same file: no refusal

    shutil.copy(cfg.data, cfg.data + ".copy")  # restored by copy: same path, new inode
    os.replace(cfg.data + ".copy", cfg.data)
    with pytest.raises(ConfigError) as refused:
        data_file.check(cfg, assume_all=False)
    text = str(refused.value)
    assert "`data`" in text and cfg.path in text and "inode" in text
    assert "--assume-all-out-of-sync" in text and str(recorded.ino) in text
    with pytest.raises(ConfigError):  # nor may the open record it silently
        data_file.reconcile(cfg, site.load(cfg.meta), assume_all=False)

    data_file.check(cfg, assume_all=True)  # the operator's way on: it records the new file
    stored = data_file.reconcile(cfg, site.load(cfg.meta), assume_all=True)
    assert site.load(cfg.meta).data_identity == stored.data_identity != recorded
    data_file.check(cfg, assume_all=False)


def test_a_missing_data_file_is_refused_before_it_is_created(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    init_site(cfg.path, "primary", force=False)
    os.unlink(cfg.data)
    with pytest.raises(ConfigError, match="does not exist"):
        data_file.check(cfg, assume_all=False)
    assert not os.path.exists(cfg.data)


def test_metadata_from_before_is_recorded_not_refused(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path)
    init_site(cfg.path, "primary", force=False)
    path = site.site_path(cfg.meta)
    doc = json.loads(path.read_text())
    del doc["data_identity"]
    path.write_text(json.dumps(doc))
    data_file.check(cfg, assume_all=False)
    with caplog.at_level(logging.WARNING):
        meta = data_file.reconcile(cfg, site.load(cfg.meta), assume_all=False)
    assert "records no data file" in caplog.text
    assert site.load(cfg.meta).data_identity == meta.data_identity is not None


def test_a_damaged_identity_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    init_site(cfg.path, "primary", force=False)
    path = site.site_path(cfg.meta)
    doc = json.loads(path.read_text())
    doc["data_identity"] = {"path": 3}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="damaged"):
        data_file.check(cfg, assume_all=False)


def test_a_role_change_keeps_the_identity(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = init_site(cfg.path, "primary", force=False)
    site.store(cfg.meta, site.load(cfg.meta).update(role="secondary"))
    assert site.load(cfg.meta).data_identity == meta.data_identity


def test_a_groups_member_identities_round_trip_and_damage_is_refused(tmp_path: Path) -> None:
    meta_dir = str(tmp_path / "meta")
    other = DataIdentity("/data/wal.img", 2049, 99, 0, 4096)
    site.store(meta_dir, site.SiteMeta(role="secondary", volume_id=None, data_identity=FILE,
                                       member_identities=(other,)))
    assert site.load(meta_dir).member_identities == (other,)
    path = Path(meta_dir) / "site.json"
    doc = json.loads(path.read_text())
    doc["member_identities"] = [{"path": "/data/wal.img"}]  # damaged: matches no file
    path.write_text(json.dumps(doc))
    (damaged,) = site.load(meta_dir).member_identities
    assert mismatch(damaged, other)  # so a start refuses the group (the safe side)
