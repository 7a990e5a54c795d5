"""`foresync config example` (issue 17): a commented config that the real loader accepts and
`init` runs on, naming every key the loader knows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from foresync import config
from foresync.cli import main


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_the_example_loads_and_init_runs_on_it(tmp_path: Path, role: str) -> None:
    path = tmp_path / f"{role}.toml"
    result = CliRunner().invoke(main, ["config", "example", "--role", role, "-o", str(path)])
    assert result.exit_code == 0, result.output
    cfg = config.load(str(path))
    assert cfg.meta == str(tmp_path / f"{role}.meta") and cfg.size == 256 << 20
    result = CliRunner().invoke(main, ["init", "--config", str(path), "--role", role])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(main, ["config", "example", "--role", role, "-o", str(path)])
    assert again.exit_code == 1 and "not overwritten" in again.output


def test_the_two_roles_fit_together_and_peer_is_taken() -> None:
    out_p = CliRunner().invoke(main, ["config", "example", "--role", "primary"]).output
    out_s = CliRunner().invoke(main, ["config", "example", "--role", "secondary"]).output
    p, s = tomllib.loads(out_p), tomllib.loads(out_s)
    assert p["link"]["peer"] == s["link"]["listen"] and s["link"]["peer"] == p["link"]["listen"]
    assert p["nbd"]["listen"] != s["nbd"]["listen"] and p["admin"]["listen"] != s["admin"]["listen"]
    remote = CliRunner().invoke(main, ["config", "example", "--role", "primary", "--peer",
                                       "10.0.0.2:7802"]).output
    assert tomllib.loads(remote)["link"]["peer"] == "10.0.0.2:7802"
    bad = CliRunner().invoke(main, ["config", "example", "--role", "primary", "--peer", "nowhere"])
    assert bad.exit_code == 1 and "--peer: expected HOST:PORT" in bad.output


def test_the_example_names_every_key_the_loader_knows() -> None:
    text = CliRunner().invoke(main, ["config", "example", "--role", "primary"]).output
    uncommented = "\n".join(line.lstrip("# ") for line in text.splitlines())
    for section, keys in config.KNOWN_KEYS.items():
        assert f"[{section}]" in uncommented, section
        for key in keys:
            assert f"\n{key} = " in uncommented, f"[{section}] {key} is not in the example"
