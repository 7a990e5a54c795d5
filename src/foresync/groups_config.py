"""``[[group]]`` tables (issue 16, part 2): consistency groups over ``[[volume]]`` tables.

    [[group]]
    name = "db"                  # names the group's unit: /status, metrics, the CLI, the link
    volumes = ["data", "wal"]    # two or more [[volume]] tables, laid end to end in this order
    meta = "meta/db"             # the unit's metadata: record, journal, epochs, out-of-sync set
    mode = "sync"                # optional: the group's [link] settings (LINK_KEYS) ...
    record = { capacity = 512 }  # ... and [record] overrides, as a [[volume]] table takes them

A group is ONE replicated unit over its members (group_layout.py): one record, epoch and link
session, so its secondary is always a prefix of one write order across the members. Each member
keeps its own ``data``, ``size`` and ``export`` (it is served as its own NBD export), but what
belongs to the unit is set on the group only: a member's table may not set ``meta``, ``mode``,
the other [link] keys, ``record`` or ``s3`` (an error naming the key and the file, never silently
ignored, so no one believes a member has metadata or a mode of its own).

``prepare`` checks the tables before the volumes are built (and gives each member a placeholder
``meta`` that is never opened: the group's directory holds the unit's metadata); ``fold`` then
replaces the members' configs with the group's one unit config, whose ``group`` names them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from foresync import volumes_config  # NAME (a circular import: used at call time only)
from foresync.config import SiteConfig, check_array_table
from foresync.errors import ConfigError
from foresync.group_layout import GroupSpec, MemberVolume

LINK_KEYS = {"mode", "window", "on_disconnect", "block_timeout", "resync_rate_max"}
GROUP_KEYS = {"name", "volumes", "meta", "record"} | LINK_KEYS
MEMBER_FORBIDDEN = {"meta", "record", "s3"} | LINK_KEYS  # the unit's, set on the group
PLACEHOLDER_META = ".member-of-group"  # a member's meta: a path never created or opened


@dataclass(frozen=True, slots=True)
class GroupTable:
    name: str
    volumes: tuple[str, ...]
    table: dict[str, Any]



def _check_group(path: str, index: int, table: Any, volume_names: list[str]) -> GroupTable:
    where = check_array_table(path, "group", index, table, GROUP_KEYS)
    name = table["name"]
    if not volumes_config.NAME.match(name):
        raise ConfigError(f"{where}: name = {name!r}: letters, digits, '.', '_' or '-', starting with "
                          "a letter or digit, at most 128 characters (as a [[volume]]'s: it is a log "
                          "field, a metric label, a column of `foresync status` and an etcd key)")
    if name in volume_names:
        raise ConfigError(f"{where}: name {name!r} is also a [[volume]]'s: a group needs a name "
                          "of its own (admin calls and the link name it)")
    if not isinstance(table.get("meta"), str) or not table["meta"]:
        raise ConfigError(f"{where}: meta is required (the directory of the group's record, "
                          "journal and epochs)")
    members = table.get("volumes")
    if not isinstance(members, list) or not all(isinstance(v, str) for v in members):
        raise ConfigError(f"{where}: volumes must be a list of [[volume]] names, such as "
                          '["data", "wal"]')
    if len(members) < 2:
        raise ConfigError(f"{where}: volumes = {members!r}: a group needs at least two volumes "
                          "(one volume is ordered on its own: leave it out of any group)")
    for member in members:
        if members.count(member) > 1:
            raise ConfigError(f"{where}: volumes names {member!r} twice")
        if member not in volume_names:
            close = difflib.get_close_matches(member, volume_names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: volumes names {member!r}, which is no [[volume]] "
                              f"table{hint} (volumes: {', '.join(volume_names)})")
    return GroupTable(name, tuple(members), table)


def prepare(path: str, groups: Any, volumes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[GroupTable]]:
    """Check the ``[[group]]`` tables against the ``[[volume]]`` tables; returns the volume tables
    to build (members with a placeholder meta) and the groups."""
    if not isinstance(groups, list):
        raise ConfigError(f"{path}: group must be an array of tables ([[group]], not [group])")
    names = [table["name"] for table in volumes]
    checked = [_check_group(path, i, table, names) for i, table in enumerate(groups)]
    owner: dict[str, str] = {}
    for group in checked:
        if group.name in {other.name for other in checked if other is not group}:
            raise ConfigError(f"{path}: two [[group]] tables are named {group.name!r}")
        for member in group.volumes:
            if member in owner:
                raise ConfigError(f"{path}: [[volume]] {member!r} is in [[group]] {owner[member]!r} "
                                  f"and in [[group]] {group.name!r}: a volume is in one group at most")
            owner[member] = group.name
    prepared = []
    for table in volumes:
        group_name = owner.get(table["name"])
        if group_name is None:
            prepared.append(table)
            continue
        forbidden = sorted(MEMBER_FORBIDDEN & set(table))
        if forbidden:
            key = forbidden[0]
            why = ("[s3] is served by a volume of its own" if key == "s3" else
                   f"it replicates as one unit: set {key} on the group"
                   + (" (the group's meta holds the unit's metadata)" if key == "meta" else ""))
            raise ConfigError(f"{path}: [[volume]] {table['name']!r} sets {key}, but it is a member "
                              f"of [[group]] {group_name!r}: {why}")
        prepared.append({**table, "meta": os.path.join(PLACEHOLDER_META, table["name"])})
    return prepared, checked


def fold(path: str, groups: list[GroupTable], volumes: list[SiteConfig],
         build_unit: Callable[[dict[str, Any]], SiteConfig]) -> list[SiteConfig]:
    """The units: each ungrouped volume as it is, each group as one unit config in the place
    of its first member. ``build_unit`` builds a config from a [[volume]]-like table."""
    by_name = {cfg.name: cfg for cfg in volumes}
    first_of = {group.volumes[0]: group for group in groups}
    members = {name for group in groups for name in group.volumes}
    units = []
    for cfg in volumes:
        group = first_of.get(cfg.name)
        if group is not None:
            units.append(_unit(path, group, [by_name[name] for name in group.volumes], build_unit))
        elif cfg.name not in members:
            units.append(cfg)
    return units


def _unit(path: str, group: GroupTable, members: list[SiteConfig],
          build_unit: Callable[[dict[str, Any]], SiteConfig]) -> SiteConfig:
    table = {key: value for key, value in group.table.items() if key != "volumes"}
    # The unit's data key is the first member's (never opened as such: the daemon opens the
    # group's members, daemon/group_unit.py); its size is fixed below, once the extent is known.
    table.update(data=members[0].data, size=sum(cfg.size for cfg in members), export=group.name)
    try:
        cfg = build_unit(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [[group]] {group.name!r}: {exc}") from None
    spec = GroupSpec(group.name, tuple(MemberVolume(m.name, m.data, m.size, m.export) for m in members))
    return replace(cfg, size=spec.layout(cfg.extent_size).size, group=spec, link_route=group.name)
