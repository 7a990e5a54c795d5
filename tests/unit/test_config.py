"""Config keys of the security issue: TLS directories, secrets, limits, the admin token rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresync import config
from foresync.errors import ConfigError
from foresync.record.record import Eviction

BASE = """
[volume]
data = "v.img"
size = "{size}"
meta = "v.meta"
[link]
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
"""


def load(tmp_path: Path, extra: str, size: str = "64MiB") -> config.SiteConfig:
    path = tmp_path / "site.toml"
    path.write_text(BASE.format(size=size) + extra)
    return config.load(str(path))


def test_defaults_are_plain_loopback_and_bounded(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.nbd_tls_dir is None and cfg.link_secret_file is None and cfg.link_tls_dir is None
    assert cfg.admin_token_file is None and cfg.admin_is_loopback
    assert (cfg.nbd_max_connections, cfg.nbd_max_in_flight) == (64, 256)
    assert cfg.nbd_max_in_flight_bytes == 64 << 20 and cfg.nbd_max_option_bytes == 64 << 10
    assert cfg.nbd_handshake_timeout_s == 30.0 and cfg.link_max_frame_bytes == 33 << 20


def test_security_keys_resolve_relative_to_the_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, '''secret_file = "secret"
tls_dir = "link-tls"
max_frame_size = "40MiB"
[nbd]
tls_dir = "nbd-tls"
tls_verify_client = true
max_connections = 8
max_in_flight = 16
max_in_flight_size = "8MiB"
max_option_size = "4KiB"
handshake_timeout = 5
[admin]
listen = "0.0.0.0:7900"
token_file = "/etc/foresync/token"
''')
    assert cfg.link_secret_file == str(tmp_path / "secret")
    assert cfg.link_tls_dir == str(tmp_path / "link-tls") and cfg.nbd_tls_dir == str(tmp_path / "nbd-tls")
    assert cfg.nbd_tls_verify_client and cfg.nbd_max_connections == 8 and cfg.nbd_max_in_flight == 16
    assert cfg.nbd_max_in_flight_bytes == 8 << 20 and cfg.nbd_max_option_bytes == 4096
    assert cfg.nbd_handshake_timeout_s == 5.0 and cfg.link_max_frame_bytes == 40 << 20
    assert cfg.admin_token_file == "/etc/foresync/token" and not cfg.admin_is_loopback


@pytest.mark.parametrize(("extra", "message"), [
    ('[admin]\nlisten = "0.0.0.0:7900"\n', "is not loopback: set [admin] token_file"),
    ('[admin]\nlisten = "192.0.2.1:7900"\n', "is not loopback"),
    ('[nbd]\ntls_verify_client = true\n', "tls_verify_client = true needs [nbd] tls_dir"),
    ('[nbd]\ntls_verify_client = "yes"\n', "expected true or false"),
    ('max_frame_size = "1MiB"\n', "must be at least 32 MiB"),
    ('[nbd]\nmax_connections = 0\n', "max_connections = 0"),
    ('[link2]\n', "unknown section"),
    ('secret = "x"\n', "did you mean 'secret_file'"),
])
def test_bad_security_settings_are_refused_clearly(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    assert message in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_admin_needs_no_token(tmp_path: Path, host: str) -> None:
    listen = f"[{host}]:7900" if ":" in host else f"{host}:7900"
    assert load(tmp_path, f'[admin]\nlisten = "{listen}"\n').admin_is_loopback


FULL = {  # every key, each with a valid TOML value
    "volume": {"name": '"v"', "data": '"v.img"', "size": '"64MiB"', "meta": '"v.meta"'},
    "nbd": {"listen": '"127.0.0.1:10809"', "export": '"v"', "tls_dir": '"t"',
            "tls_verify_client": "true", "max_connections": "8", "max_in_flight": "16",
            "max_in_flight_size": '"8MiB"', "max_option_size": '"4KiB"', "handshake_timeout": "5",
            "idle_timeout": "60"},
    "link": {"listen": '"127.0.0.1:7800"', "peer": '"127.0.0.1:7801"', "mode": '"sync"',
             "window": '"64MiB"', "heartbeat": "1", "timeout": "10", "on_disconnect": '"block"',
             "block_timeout": "30", "resync_rate_max": '"10MiB"', "secret_file": '"s"',
             "tls_dir": '"t"', "max_frame_size": '"33MiB"'},
    "record": {"extent_size": '"1MiB"', "capacity": "64", "lookahead": "4",
               "eviction": '"lru"', "watermark_interval": "0.05"},
    "admin": {"listen": '"127.0.0.1:7900"', "token_file": '"a"'},
}
BAD_VALUES = ["[1, 2]", "1.5", "-1", "true", "{ a = 1 }", '"x"', '""', "0", "inf", "nan",
              "1979-05-27"]


def toml_with(section: str, key: str, value: str) -> str:
    lines = []
    for name, table in FULL.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value if (name, k) == (section, key) else v}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def test_the_full_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(toml_with("", "", ""))
    assert config.load(str(path)).nbd_idle_timeout_s == 60.0


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, table in FULL.items() for k in table])
def test_a_value_of_the_wrong_type_is_a_config_error_naming_the_key(tmp_path: Path, section: str,
                                                                    key: str) -> None:
    """Any value in any key: it loads, or a ConfigError names the key (never a traceback)."""
    path = tmp_path / "site.toml"
    for value in BAD_VALUES:
        path.write_text(toml_with(section, key, value))
        try:
            config.load(str(path))
        except ConfigError as exc:
            assert f"[{section}] {key}" in str(exc), (value, str(exc))


@pytest.mark.parametrize("value", ["[1, 2]", "1.5", "{ a = 1 }", "true"])
def test_a_size_that_is_not_a_size_says_so(tmp_path: Path, value: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(toml_with("volume", "size", value))
    with pytest.raises(ConfigError, match=r"^\[volume\] size: expected a size such as 256MiB"):
        config.load(str(path))


def test_log_format_is_text_by_default_json_on_request_and_checked(tmp_path: Path) -> None:
    assert load(tmp_path, "").log_format == "text"
    assert load(tmp_path, '[log]\nformat = "json"\n').log_format == "json"
    with pytest.raises(ConfigError, match=r"\[log\] format = 'xml': expected one of text, json"):
        load(tmp_path, '[log]\nformat = "xml"\n')


def test_json_log_lines_carry_the_same_facts_as_text() -> None:
    import json
    import logging

    from foresync.logctx import JsonFormatter, VolumeContext

    record = logging.LogRecord("foresync.daemon.primary", logging.WARNING, __file__, 1,
                               "link: lost the secondary at %s (%s)", ("10.0.0.2:7802", "timeout"),
                               None)
    VolumeContext().filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "WARNING" and doc["logger"] == "foresync.daemon.primary"
    assert doc["message"] == "link: lost the secondary at 10.0.0.2:7802 (timeout)"
    assert doc["ts"].endswith("+00:00") and "volume" in doc


# -- the record's keys (issue 14): the default policy, [record] bound, predictor, [nbd] trace ---


def load_1g(tmp_path: Path, extra: str) -> config.SiteConfig:
    return load(tmp_path, extra, size="1GiB")


def test_the_default_policy_is_streams_and_the_claimed_ones_stay(tmp_path: Path) -> None:
    cfg = load_1g(tmp_path, "")
    assert cfg.eviction is Eviction.STREAMS and cfg.predictor == "next" and cfg.nbd_trace is None
    assert cfg.capacity == 1024
    for name in ("lru", "generations", "s3fifo", "adaptive"):
        assert load_1g(tmp_path, f'[record]\neviction = "{name}"\n').eviction.value == name


def test_bound_derives_the_capacity(tmp_path: Path) -> None:
    cfg = load_1g(tmp_path, '[record]\nbound = "256MiB"\nextent_size = "64KiB"\n')
    assert cfg.capacity == 4096 and cfg.capacity * cfg.extent_size == 256 << 20
    cfg = load_1g(tmp_path, '[record]\nbound = "64MiB"\ncapacity = 64\n')  # 1 MiB extents: they agree
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
        load_1g(tmp_path, f"[record]\n{record}\n")


def test_nbd_trace_resolves_relative_to_the_config(tmp_path: Path) -> None:
    cfg = load_1g(tmp_path, '[nbd]\ntrace = "w.fstrace"\n[record]\npredictor = "history"\n')
    assert cfg.nbd_trace == str(tmp_path / "w.fstrace") and cfg.predictor == "history"


def test_s3_section_is_parsed_and_checked(tmp_path: Path) -> None:
    assert load(tmp_path, "").s3_listen is None
    cfg = load(tmp_path, '[s3]\nlisten = "127.0.0.1:9100"\ncredentials_file = "s3.keys"\n'
                         'tls_dir = "s3-tls"\n')
    assert cfg.s3_listen == ("127.0.0.1", 9100)
    assert cfg.s3_credentials_file == str(tmp_path / "s3.keys")
    assert cfg.s3_tls_dir == str(tmp_path / "s3-tls")
    assert load(tmp_path, '[s3]\ncredentials_file = "k"\n').s3_listen == ("127.0.0.1", 9000)
    with pytest.raises(ConfigError, match=r"\[s3\] credentials_file is required"):
        load(tmp_path, '[s3]\nlisten = "127.0.0.1:9000"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load(tmp_path, '[s3]\ncredentials_file = "k"\nsecret = "x"\n')
