"""[[group]] tables (issue 16 part 2, groups_config.py): a group is one unit over its member
volumes, and every mistake is an error naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from foresync import config
from foresync.daemon.group_unit import exports_of, group_status
from foresync.errors import ConfigError
from foresync.replication.primary import Mode

DAEMON = """
[link]
listen = "127.0.0.1:7800"
peer = "127.0.0.1:7801"
[record]
capacity = 64
extent_size = "1MiB"
"""


def volume(name: str, size: str = "16MiB", **keys: str) -> str:
    values = {"data": f"{name}.img", "size": size, **keys}
    return f'[[volume]]\nname = "{name}"\n' + "".join(f'{k} = "{v}"\n' for k, v in values.items())


def group(name: str = "db", volumes: str = '["data", "wal"]', extra: str = "", meta: str = "db.meta") -> str:
    text = f'[[group]]\nname = "{name}"\nvolumes = {volumes}\n'
    return text + (f'meta = "{meta}"\n' if meta else "") + extra


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.toml"
    path.write_text(DAEMON + text)
    return str(path)


def test_a_group_is_one_unit_in_place_of_its_members(tmp_path: Path) -> None:
    path = write(tmp_path, volume("solo", meta="solo.meta") + volume("data", "10MiB", export="pgdata")
                 + volume("wal", "3000000") + group(extra='mode = "sync"\n[group.record]\ncapacity = 32\n'))
    daemon = config.load_daemon(path)
    assert daemon.names() == ["solo", "db"]
    solo, db = daemon.volumes
    assert solo.group is None and solo.mode is Mode.LOOKAHEAD
    assert db.group is not None and [m.name for m in db.group.members] == ["data", "wal"]
    assert (db.mode, db.capacity, db.link_route) == (Mode.SYNC, 32, "db")
    assert db.meta == str(tmp_path / "db.meta")
    # data: 10 MiB (whole extents); wal: 3000000 bytes padded to 3 MiB: the unit is 13 MiB.
    assert db.size == 13 << 20
    specs = exports_of(db)
    assert [(s.name, s.offset, s.size) for s in specs] == [("pgdata", 0, 10 << 20),
                                                            ("wal", 10 << 20, 3000000)]
    members = group_status(db, specs)["members"]
    assert members[1] == {"volume": "wal", "export": "wal", "base_bytes": 10 << 20,
                          "size_bytes": 3000000, "data": str(tmp_path / "wal.img")}
    assert config.load(path, "db") == db


@pytest.mark.parametrize(("text", "message"), [
    (volume("data") + volume("wal") + group(volumes='["data", "wall"]'),
     r"\[\[group\]\] #1 \('db'\): volumes names 'wall', which is no \[\[volume\]\] table; did you mean 'wal'"),
    (volume("data") + volume("wal") + group(volumes='["data"]'), r"a group needs at least two volumes"),
    (volume("data") + volume("wal") + group(volumes='["data", "data"]'), r"names 'data' twice"),
    (volume("data") + volume("wal") + volume("x", meta="x.meta") + group() + group("db2", '["wal", "x"]', meta="m2"),
     r"\[\[volume\]\] 'wal' is in \[\[group\]\] 'db' and in \[\[group\]\] 'db2'"),
    (volume("data") + volume("wal") + group(meta=""), r"#1 \('db'\): meta is required"),
    (volume("data") + volume("wal") + group(extra='mod = "sync"\n'), r"unknown key mod; did you mean 'mode'"),
    (volume("data", meta="d.meta") + volume("wal") + group(),
     r"\[\[volume\]\] 'data' sets meta, but it is a member of \[\[group\]\] 'db'.*set meta on the group"),
    (volume("data", mode="sync") + volume("wal") + group(), r"'data' sets mode, but it is a member"),
    (volume("data") + volume("wal") + group(name="wal"), r"name 'wal' is also a \[\[volume\]\]'s"),
    (volume("data") + volume("wal") + group(name="d b"), r"name = 'd b': letters, digits"),
    (volume("data") + volume("wal") + group() + group(volumes='["data", "wal"]', meta="m2"),
     r"two \[\[group\]\] tables are named 'db'"),
    (volume("data") + volume("wal") + '[group]\nname = "db"\n', r"\[\[group\]\], not \[group\]"),
    (volume("data") + volume("wal") + group(extra='mode = "fast"\n'), r"\[\[group\]\] 'db': .*mode"),
    (volume("data") + volume("wal", meta="x") + group(volumes='["data", 3]'), r"volumes must be a list"),
])
def test_a_bad_group_is_refused_naming_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_daemon(path)
    assert path in str(caught.value)
