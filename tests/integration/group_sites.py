"""Two real daemons whose volumes form consistency groups ([[group]] tables, issue 16 part 2):
the config writer of test_groups.py, over volume_sites.Daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sites import free_ports
from .volume_sites import Daemon


@dataclass
class GroupDaemon(Daemon):
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> member volumes
    sizes: dict[str, str] = field(default_factory=dict)  # volume -> size (default: ``size``)
    extra: str = ""  # more config text, such as a [cluster] section

    def group_meta(self, group: str) -> Path:
        return self.directory / f"{self.name}-{group}.meta"

    def write_config(self) -> None:
        members = {v for vs in self.groups.values() for v in vs}
        tables = "".join(
            f'[[volume]]\nname = "{v}"\ndata = "{self.data(v).name}"\n'
            f'size = "{self.sizes.get(v, self.size)}"\n'
            + ("" if v in members else f'meta = "{self.meta(v).name}"\n') for v in self.volumes)
        tables += "".join(
            f'[[group]]\nname = "{g}"\nvolumes = {vs!r}\nmeta = "{self.group_meta(g).name}"\n'.replace("'", '"')
            for g, vs in self.groups.items())
        self.config.write_text(
            f'[nbd]\nlisten = "127.0.0.1:{self.nbd_port}"\n'
            f'[link]\nlisten = "127.0.0.1:{self.link_port}"\npeer = "127.0.0.1:{self.peer_port}"\n'
            f'mode = "{self.mode}"\n'
            f'[record]\ncapacity = 256\n[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n'
            + self.extra + "\n" + tables)


def group_pair(directory: Path, volumes: list[str], groups: dict[str, list[str]],
               extra: tuple[str, str] = ("", ""), secondary_sizes: dict[str, str] | None = None,
               secondary_groups: dict[str, list[str]] | None = None,
               **settings: Any) -> tuple[GroupDaemon, GroupDaemon]:
    """``extra``: more config text for the first primary and the first secondary;
    ``secondary_sizes``: member sizes of the secondary's that differ from ``sizes``;
    ``secondary_groups``: the secondary's groups, if they differ from ``groups``."""
    nbd_p, nbd_s, link_p, link_s, admin_p, admin_s = free_ports(6)
    p = GroupDaemon("p", directory, nbd_p, link_p, link_s, admin_p, list(volumes), groups=groups,
                    extra=extra[0], **settings)
    s = GroupDaemon("s", directory, nbd_s, link_s, link_p, admin_s, list(volumes),
                    groups=secondary_groups or groups,
                    extra=extra[1], **settings)
    if secondary_sizes:
        s.sizes = {**s.sizes, **secondary_sizes}
    for daemon in (p, s):
        daemon.write_config()
    p.cli("init", "--config", str(p.config), "--role", "primary")
    s.cli("init", "--config", str(s.config), "--role", "secondary")
    return p, s
