"""`foresync inspect` (issue 17): --config like every other command, a summary by default (role,
epoch, record size with extents as ranges, journal size, undo and out-of-sync state), the journal
with --entries, and --json."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from foresync.cli import main
from foresync.daemon import metadata as site
from foresync.journal import format as fmt


def _site(tmp_path: Path) -> Path:
    config = tmp_path / "a.toml"
    config.write_text('[volume]\nname = "vol0"\ndata = "a.img"\nsize = "64MiB"\nmeta = "a.meta"\n'
                      '[link]\nlisten = "127.0.0.1:7801"\npeer = "127.0.0.1:7802"\n'
                      '[record]\nextent_size = "1MiB"\n')
    result = CliRunner().invoke(main, ["init", "--config", str(config), "--role", "primary"])
    assert result.exit_code == 0, result.output
    meta = tmp_path / "a.meta"
    journal = meta / site.JOURNAL_FILE
    volume = bytes.fromhex(json.loads((meta / "site.json").read_text())["volume_id"])
    journal.write_bytes(fmt.encode_header(volume) + fmt.encode_checkpoint(fmt.RecordState())
                        + fmt.encode_add([0, 1, 2, 3, 8]) + fmt.encode_add([10, 11]))
    site.store_oos(str(meta), {4, 5, 6}, everything=False)
    return config


def test_inspect_takes_config_and_prints_a_summary(tmp_path: Path) -> None:
    config = _site(tmp_path)
    result = CliRunner().invoke(main, ["inspect", "--config", str(config)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "role primary, epoch 1, consistent" in out
    assert "record: 7 extents (7.0 MiB): 0-3, 8, 10-11" in out
    assert "oos.json: 3 extents (3.0 MiB): 4-6" in out
    assert "undo.log: none" in out
    assert "record.journal: " in out and "3 whole entries" in out
    assert "ADD" not in out  # entries only with --entries
    entries = CliRunner().invoke(main, ["inspect", "--config", str(config), "--entries"]).output
    assert entries.count(" ADD ") == 2 and "CHECKPOINT" in entries


def test_inspect_json_and_meta_still_work(tmp_path: Path) -> None:
    config = _site(tmp_path)
    result = CliRunner().invoke(main, ["inspect", "--meta", str(tmp_path / "a.meta"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["role"] == "primary" and doc["epoch"] == 1
    assert doc["journal"]["record"] == [0, 1, 2, 3, 8, 10, 11]
    assert doc["out_of_sync"] == {"present": True, "everything": False, "extents": [4, 5, 6]}
    with_config = json.loads(CliRunner().invoke(main, ["inspect", "--config", str(config),
                                                       "--json"]).output)
    assert with_config["extent_size_bytes"] == 1 << 20


def test_inspect_needs_exactly_one_of_config_or_meta(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect"])
    assert result.exit_code == 2 and "give --config SITE.toml or --meta DIR" in result.output
