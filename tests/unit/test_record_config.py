"""Config keys of the record issue: the default policy, [record] bound, predictor, [nbd] trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresync import config
from foresync.errors import ConfigError
from foresync.record.record import Eviction

BASE = """
[volume]
data = "v.img"
size = "1GiB"
meta = "v.meta"
[link]
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
"""


def load(tmp_path: Path, extra: str) -> config.SiteConfig:
    path = tmp_path / "site.toml"
    path.write_text(BASE + extra)
    return config.load(str(path))




def test_the_default_policy_is_s3fifo_and_the_claimed_ones_stay(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.eviction is Eviction.S3FIFO and cfg.predictor == "next" and cfg.nbd_trace is None
    assert cfg.capacity == 1024
    for name in ("lru", "generations"):
        assert load(tmp_path, f'[record]\neviction = "{name}"\n').eviction.value == name


def test_bound_derives_the_capacity(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[record]\nbound = "256MiB"\nextent_size = "64KiB"\n')
    assert cfg.capacity == 4096 and cfg.capacity * cfg.extent_size == 256 << 20
    cfg = load(tmp_path, '[record]\nbound = "64MiB"\ncapacity = 64\n')  # 1 MiB extents: they agree
    assert cfg.capacity == 64


@pytest.mark.parametrize("record, message", [
    ('bound = "64MiB"\ncapacity = 65', "disagree"),
    ('bound = "100KiB"\nextent_size = "64KiB"', "not a multiple"),
    ('bound = "1MiB"', "at least 2 extents"),
    ('bound = "lots"', "[record] bound"),
    ('predictor = "oracle"', "[record] predictor"),
    ('eviction = "random"', "s3fifo"),
])
def test_bad_record_keys_are_named(tmp_path: Path, record: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, f"[record]\n{record}\n")


def test_nbd_trace_resolves_relative_to_the_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[nbd]\ntrace = "w.fstrace"\n[record]\npredictor = "history"\n')
    assert cfg.nbd_trace == str(tmp_path / "w.fstrace") and cfg.predictor == "history"
