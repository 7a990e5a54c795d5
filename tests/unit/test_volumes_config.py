"""[[volume]] tables (issue 16, volumes_config.py): many volumes in one config, and the errors
that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresync import config
from foresync.errors import ConfigError
from foresync.replication.primary import Mode

DAEMON = """
[link]
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
[record]
capacity = 64
"""


def table(name: str, extra: str = "", **keys: str) -> str:
    values = {"data": f"{name}.img", "meta": f"{name}.meta", "size": "16MiB", **keys}
    return f'[[volume]]\nname = "{name}"\n' + "".join(f'{k} = "{v}"\n' for k, v in values.items()) + extra


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.toml"
    path.write_text(DAEMON + text)
    return str(path)


def test_volumes_share_the_daemon_settings_and_override_their_own(tmp_path: Path) -> None:
    path = write(tmp_path, table("a") + table("b", mode="sync", export="bee")
                 + "[volume.record]\ncapacity = 32\n")
    daemon = config.load_daemon(path)
    a, b = daemon.volumes
    assert daemon.multi and daemon.names() == ["a", "b"]
    assert (a.export, a.mode, a.capacity, a.link_route) == ("a", Mode.LOOKAHEAD, 64, "a")
    assert (b.export, b.mode, b.capacity, b.link_route) == ("bee", Mode.SYNC, 32, "b")
    assert a.link_listen == b.link_listen and a.meta == str(tmp_path / "a.meta")
    assert config.load(path, "b") == b and config.load(path) == a


def test_a_one_volume_config_is_as_before(tmp_path: Path) -> None:
    path = write(tmp_path, '[volume]\ndata = "v.img"\nsize = "16MiB"\nmeta = "v.meta"\n')
    daemon = config.load_daemon(path)
    assert not daemon.multi and daemon.first == config.load(path)
    assert daemon.first.link_route is None and daemon.first.name == "vol0"


@pytest.mark.parametrize(("tables", "message"), [
    (table("a") + table("a", data="x.img", meta="x.meta"), r"'a' and 'a' have the same name"),
    (table("a") + table("b", export="a"), r"same export = 'a'"),
    (table("a") + table("b", data="a.img"), r"same data = .*a\.img"),
    (table("a") + table("b", meta="a.meta"), r"same meta = .*a\.meta"),
    (table("a") + table("b", data="a.meta"), r"data = .*a\.meta.* is the meta directory of 'a'"),
    ('[[volume]]\ndata = "a.img"\nsize = "1MiB"\nmeta = "m"\n', r"#1: name is required"),
    (table("a", sise="1MiB"), r"\[\[volume\]\] #1 \('a'\): unknown key sise"),
    (table("a", size="0"), r"\[\[volume\]\] #1 \('a'\): \[volume\] size must be greater than zero"),
    (table("a", mode="fast"), r"\('a'\): \[link\] mode = 'fast'"),
    (table("a", extra="[volume.record]\ncapacity = 1\n"), r"\('a'\): \[record\] capacity = 1"),
    (table("a", extra="[volume.record]\ncolour = 1\n"), r"unknown key \[volume.record\] colour"),
    (table("a", extra="s3 = true\n") + table("b", extra="s3 = true\n"), r"\[s3\] is served by one volume"),
])
def test_errors_name_the_key_and_the_file(tmp_path: Path, tables: str, message: str) -> None:
    path = write(tmp_path, tables)
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_daemon(path)
    assert path in str(caught.value)


def test_daemon_keys_that_name_one_volume_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(DAEMON + '[nbd]\nexport = "x"\n' + table("a"))
    with pytest.raises(ConfigError, match=r"\[nbd\] export cannot be shared by \[\[volume\]\] tables"):
        config.load_daemon(str(path))


def test_an_unknown_volume_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, table("a") + table("b"))
    with pytest.raises(ConfigError, match=r"no volume named 'z' \(volumes: a, b\)"):
        config.load(path, "z")


def test_a_reload_names_the_first_changed_key_of_a_running_volume(tmp_path: Path) -> None:
    from foresync.daemon.volumes import _changed_key, _daemon_level_changes

    before = config.load_daemon(write(tmp_path, table("a") + table("b")))
    after = config.load_daemon(write(tmp_path, table("a", mode="sync") + table("b") + table("c")))
    assert _changed_key(before.volume("a"), after.volume("a")) == "mode"
    assert _changed_key(before.volume("b"), after.volume("b")) is None
    assert _daemon_level_changes(before, after) == []
    path = tmp_path / "site.toml"
    path.write_text(DAEMON.replace("7800", "7802") + table("a") + table("b"))
    assert _daemon_level_changes(before, config.load_daemon(str(path))) == [
        "daemon-level link_listen changed; restart the daemon to apply it"]


def test_one_file_under_two_names_is_refused(tmp_path: Path) -> None:
    """Absolute paths are not resolved by config._build: the same data file or meta directory
    spelt two ways (``/x/./a.img``, a symlink such as /dev/disk/by-id/... to /dev/sdb) would let
    two volumes write over each other. Compared by their real path."""
    (tmp_path / "link.img").symlink_to(tmp_path / "a.img")
    for tables, message in [
        (table("a", data=str(tmp_path / "a.img")) + table("b", data=f"{tmp_path}/./a.img"), "same data"),
        (table("a", data=str(tmp_path / "a.img")) + table("b", data=str(tmp_path / "link.img")),
         "same data"),
        (table("a", meta=str(tmp_path / "m")) + table("b", meta=f"{tmp_path}//m/"), "same meta"),
    ]:
        path = write(tmp_path, tables)
        with pytest.raises(ConfigError, match=message):
            config.load_daemon(path)


def test_init_of_several_volumes_checks_them_all_before_making_any(tmp_path: Path) -> None:
    """`foresync init` of a config with [[volume]] tables: one volume it must refuse (its data
    file has another size) stops it before any volume is initialised, and the error names that
    volume; once fixed, the same command initialises them all (no half-done state to unpick)."""
    from click.testing import CliRunner

    from foresync.cli import main

    path = write(tmp_path, table("a") + table("b"))
    (tmp_path / "b.img").write_bytes(b"\0" * 4096)
    refused = CliRunner().invoke(main, ["init", "--config", path, "--role", "primary"])
    assert refused.exit_code == 1 and "b: " in refused.output and "16.0 MiB" in refused.output
    assert not (tmp_path / "a.meta").exists() and not (tmp_path / "a.img").exists()
    assert not (tmp_path / "b.meta").exists()
    (tmp_path / "b.img").unlink()
    done = CliRunner().invoke(main, ["init", "--config", path, "--role", "primary"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "a.meta" / "site.json").exists() and (tmp_path / "b.meta" / "site.json").exists()
    again = CliRunner().invoke(main, ["init", "--config", path, "--role", "primary"])
    assert again.exit_code == 1 and "a: site metadata already exists" in again.output


@pytest.mark.parametrize("name", ["a b", "a\nb", "a/b", "-", ".", "..", "x" * 129])
def test_a_volume_name_is_a_plain_word(tmp_path: Path, name: str) -> None:
    """The name is a log field (``vol=NAME``), a metric label, the first column of `foresync
    status`, an etcd key component and the link's ROUTE: a newline would forge log lines, a
    space would shift the status columns, a '/' would nest etcd keys."""
    path = write(tmp_path, table("ok") + table("x").replace('name = "x"', f"name = {name!r}".replace("'", '"')
                                                              .replace("\n", "\\n")))
    with pytest.raises(ConfigError, match=r"#2.*name = .*letters, digits"):
        config.load_daemon(path)
