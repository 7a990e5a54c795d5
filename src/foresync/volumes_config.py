"""``[[volume]]`` tables (issue 16): many volumes served by one ``foresync run``.

A config with one ``[volume]`` table is today's one-volume site, parsed by ``config.py`` alone.
A config with ``[[volume]]`` tables gives one ``SiteConfig`` per table: the daemon-level
sections ([nbd], [link], [admin], [cluster], [log], [s3], [record]) are shared, and each table
may override the settings that make sense per volume (``VOLUME_KEYS``; a ``[volume.record]``
sub-table overrides [record] key by key). Each volume is built by the same code as a one-volume
config (``config._build``), so every value is checked the same way; its errors are prefixed
with the volume's table. Names, exports, data files and metadata directories must be distinct:
two volumes sharing a data file or a metadata directory would corrupt each other.

Consistency groups (``[[group]]``, issue 16 part 2) are parsed on top of these volumes: see the
spot marked GROUPS below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from foresync import groups_config
from foresync.config import SiteConfig, check_array_table
from foresync.errors import ConfigError

# Keys of a [[volume]] table: its identity and files, then per-volume overrides of [link]
# (mode and its flow settings) and [record] (as a sub-table, [volume.record]).
IDENTITY_KEYS = {"name", "data", "size", "meta", "export"}
LINK_KEYS = {"mode", "window", "on_disconnect", "block_timeout", "resync_rate_max"}
VOLUME_KEYS = IDENTITY_KEYS | LINK_KEYS | {"record", "s3"}
# A volume's name: one plain word (see _check_table).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Daemon-level keys that name one volume's things and so cannot be shared by several.
ONE_VOLUME_KEYS = (("nbd", "export", "set export in each [[volume]] table"),
                   ("nbd", "trace", "a trace records one volume's requests; use a one-volume config"))


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """What one ``foresync run`` serves. ``multi``: the config has ``[[volume]]`` tables, so the
    daemon shares one NBD listener (exports by name) and one link listener (routed by volume
    name) among them; a one-volume ``[volume]`` config runs exactly as before."""

    path: str
    volumes: tuple[SiteConfig, ...]
    multi: bool

    @property
    def first(self) -> SiteConfig:
        """The daemon-level settings ([admin], [nbd] listen, [link] listen...) are in every
        volume's config alike; the first one carries them."""
        return self.volumes[0]

    def names(self) -> list[str]:
        return [cfg.name for cfg in self.volumes]

    def volume(self, name: str | None) -> SiteConfig:
        if name is None:
            return self.first
        for cfg in self.volumes:
            if cfg.name == name:
                return cfg
        for cfg in self.volumes:  # a consistency group's member: the group acts as a whole
            if cfg.group is not None and name in (member.name for member in cfg.group.members):
                return cfg
        raise ConfigError(f"{self.path}: no volume named {name!r} (volumes: {', '.join(self.names())})")


def _where(path: str, index: int, table: dict[str, Any]) -> str:
    name = table.get("name")
    return f"{path}: [[volume]] #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")


def _check_table(path: str, index: int, table: Any) -> dict[str, Any]:
    check_array_table(path, "volume", index, table, VOLUME_KEYS)
    name = table["name"]
    if not NAME.match(name):
        raise ConfigError(f"{_where(path, index, table)}: name = {name!r}: letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit, at most 128 characters (it is a "
                          "log field, a metric label, a column of `foresync status` and an etcd key)")
    if "s3" in table and not isinstance(table["s3"], bool):
        raise ConfigError(f"{_where(path, index, table)}: s3 = {table['s3']!r}: expected true or false")
    checked: dict[str, Any] = table
    return checked


def _volume_doc(doc: dict[str, Any], table: dict[str, Any], with_s3: bool) -> dict[str, Any]:
    """The one-volume config this table amounts to, for ``config._build``."""
    sub = {key: value for key, value in doc.items() if key not in ("volume", "s3")}
    if with_s3 and "s3" in doc:
        sub["s3"] = doc["s3"]
    sub["volume"] = {key: table[key] for key in ("name", "data", "size", "meta") if key in table}
    link = dict(doc.get("link", {}))
    link.update({key: table[key] for key in LINK_KEYS if key in table})
    sub["link"] = link
    nbd = dict(doc.get("nbd", {}))
    nbd["export"] = table.get("export", table["name"])
    sub["nbd"] = nbd
    record = dict(doc.get("record", {}))
    record.update(table.get("record", {}))
    if "bound" in table.get("record", {}) and "capacity" not in table.get("record", {}):
        record.pop("capacity", None)  # a volume's own bound replaces the daemon's capacity
    if "capacity" in table.get("record", {}) and "bound" not in table.get("record", {}):
        record.pop("bound", None)
    sub["record"] = record
    return sub


def _s3_volume(path: str, tables: list[dict[str, Any]]) -> int:
    """Which volume carries [s3]'s object store: the one with ``s3 = true``, else the first."""
    chosen = [i for i, table in enumerate(tables) if table.get("s3") is True]
    if len(chosen) > 1:
        raise ConfigError(f"{path}: s3 = true in [[volume]] {tables[chosen[0]]['name']!r} and "
                          f"{tables[chosen[1]]['name']!r}: [s3] is served by one volume")
    return chosen[0] if chosen else 0


def _same_file(key: str, value: str) -> str:
    """Files are compared by their real path: an absolute path is taken as written by
    config._build, and one data file spelt twice (``/x/./a.img``, a /dev/disk/by-id link to
    /dev/sdb) would have two volumes write over each other."""
    return os.path.realpath(value) if key in ("data", "meta") else value


def _check_distinct(path: str, volumes: list[SiteConfig]) -> None:
    for what, key in (("name", "name"), ("export", "export"), ("data", "data"), ("meta", "meta")):
        seen: dict[str, str] = {}
        for cfg in volumes:
            value = _same_file(key, getattr(cfg, key))
            if value in seen:
                raise ConfigError(f"{path}: [[volume]] {seen[value]!r} and {cfg.name!r} have the same "
                                  f"{what} = {value!r}: every volume needs its own")
            seen[value] = cfg.name
    metas = {os.path.realpath(cfg.meta): cfg.name for cfg in volumes}
    for cfg in volumes:  # one volume's data file is another's metadata directory
        data = os.path.realpath(cfg.data)
        if data in metas:
            raise ConfigError(f"{path}: [[volume]] {cfg.name!r} data = {cfg.data!r} is the meta "
                              f"directory of {metas[data]!r}")


def parse_volumes(path: str, doc: dict[str, Any],
                  check_keys: Callable[[dict[str, Any], str], None],
                  build: Callable[[dict[str, Any], str], SiteConfig]) -> DaemonConfig:
    tables = doc["volume"]
    if not tables:
        raise ConfigError(f"{path}: no [[volume]] tables")
    check_keys({key: value for key, value in doc.items() if key not in ("volume", "group")}, path)
    for section, key, why in ONE_VOLUME_KEYS:
        if key in doc.get(section, {}):
            raise ConfigError(f"{path}: [{section}] {key} cannot be shared by [[volume]] tables: {why}")
    tables = [_check_table(path, i, table) for i, table in enumerate(tables)]
    tables, groups = groups_config.prepare(path, doc.get("group", []), tables)
    with_s3 = _s3_volume(path, tables)
    volumes = []
    for i, table in enumerate(tables):
        try:
            cfg = build(_volume_doc(doc, table, i == with_s3), path)
        except ConfigError as exc:
            raise ConfigError(f"{_where(path, i, table)}: {exc}") from None
        volumes.append(replace(cfg, link_route=cfg.name))
    _check_distinct(path, volumes)
    if groups:  # [[group]] tables (issue 16 part 2): each group one unit in place of its members
        volumes = groups_config.fold(path, groups, volumes,
                                     lambda table: build(_volume_doc(doc, table, False), path))
        _check_distinct(path, volumes)
    return DaemonConfig(str(Path(path).resolve()), tuple(volumes), multi=True)
