"""contrib/foresync@.service is a unit systemd accepts, with the settings operators rely on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "foresync@.service"


def _sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_restarts_on_failure_and_is_hardened() -> None:
    service = _sections()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("run --config /etc/foresync/%i.toml")
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectKernelModules"):
        assert key in service, key
    assert _sections()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_an_instance(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make setup` installs systemd"
    # An instance of the template, with ExecStart pointing at this checkout's real entry point
    # (verify checks that the command exists and is executable).
    foresync = Path(sys.executable).with_name("foresync")
    assert foresync.exists()
    text = UNIT.read_text().replace("/usr/local/bin/foresync", str(foresync))
    instance = tmp_path / "foresync@vol0.service"
    instance.write_text(text)
    done = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True,
                          timeout=60, check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "foresync@vol0.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    analyze = shutil.which("systemd-analyze")
    assert analyze
    foresync = Path(sys.executable).with_name("foresync")
    text = UNIT.read_text().replace("/usr/local/bin/foresync", str(foresync))
    instance = tmp_path / "foresync@vol0.service"
    instance.write_text(text.replace("Restart=on-failure", "Restartt=on-failure"))
    done = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "Restartt" in done.stdout + done.stderr
