"""Loading secrets and TLS directories: clear errors that name files, never contents."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from foresync import config, tls
from foresync.config import SiteConfig
from foresync.daemon.security import read_secret, warn_if_link_is_open
from foresync.errors import ConfigError


def test_a_secret_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdefXYZ\n")
    path.chmod(0o600)
    assert read_secret(str(path), "[link] secret_file") == b"0123456789abcdefXYZ"


def test_a_short_secret_is_refused_without_printing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"hunter2\n")
    with pytest.raises(ConfigError) as info:
        read_secret(str(path), "[link] secret_file")
    assert "holds 7 bytes; use at least 16" in str(info.value) and "hunter2" not in str(info.value)


def test_a_missing_secret_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[admin\] token_file .*/nope: cannot read it"):
        read_secret(str(tmp_path / "nope"), "[admin] token_file")


def test_a_world_readable_secret_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdef-secret")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_secret(str(path), "[link] secret_file")
    assert "can be read by other users (mode 644)" in caplog.text
    assert "0123456789abcdef-secret" not in caplog.text


def test_tls_dir_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server-cert\.pem is missing"):
        tls.server_context(str(tmp_path))
    (tmp_path / "server-cert.pem").write_text("not a certificate")
    (tmp_path / "server-key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"cannot load server-cert\.pem with server-key\.pem"):
        tls.server_context(str(tmp_path))
    with pytest.raises(ConfigError, match=r"ca-cert\.pem is missing"):
        tls.client_context(str(tmp_path))


def _site_config(tmp_path: Path, link_listen: str, extra: str = "") -> SiteConfig:
    path = tmp_path / "site.toml"
    path.write_text(f'[volume]\ndata = "d.img"\nsize = "1MiB"\nmeta = "m"\n'
                    f'[link]\nlisten = "{link_listen}"\npeer = "127.0.0.1:1"\n{extra}')
    return config.load(str(path))


@pytest.mark.parametrize(("listen", "extra", "warned"), [
    ("0.0.0.0:7800", "", True),
    ("192.0.2.10:7800", "", True),
    ("127.0.0.1:7800", "", False),
    ("[::1]:7800", "", False),
    ("0.0.0.0:7800", 'secret_file = "/etc/foresync/link.secret"\n', False),
    ("0.0.0.0:7800", 'tls_dir = "/etc/foresync/tls"\n', False),
])
def test_an_open_link_listener_is_warned_about_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, listen: str, extra: str, warned: bool) -> None:
    cfg = _site_config(tmp_path, listen, extra)
    with caplog.at_level(logging.WARNING):
        assert warn_if_link_is_open(cfg) is warned
    if warned:
        assert f"[link] listen = {listen.replace('[', '').replace(']', '')}" in caplog.text
        assert "neither [link] secret_file nor [link] tls_dir is set" in caplog.text
    else:
        assert caplog.text == ""
