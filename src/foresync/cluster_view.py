"""``foresync cluster status``: etcd's view of every volume, and this site's own (issue 16).

One line per (volume, site): the lease holder of each volume as etcd has it (and, in its note,
the ``outdated`` mark if one stands: the secondary of that volume will not promote itself), and
this site from its /status ``cluster`` section (role, epoch, whether it is fenced, and why it does
not promote).
"""

from __future__ import annotations

import asyncio
from typing import Any

from foresync.config import SiteConfig
from foresync.daemon.etcd import EtcdUnavailable, overview
from foresync.errors import ConfigError, ForesyncError
from foresync.status_view import fetch_status

HEADER = ("VOLUME", "SITE", "ROLE", "EPOCH", "LEASE HOLDER", "REMAINING", "NOTE")


def cluster_status(cfg: SiteConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """etcd's volumes and this site's /status ``cluster`` sections, one per volume of the
    daemon (None if it is not running)."""
    if cfg.cluster is None:
        raise ConfigError(f"{cfg.path}: no [cluster] section: this site is not in a cluster")
    try:
        volumes = asyncio.run(overview(cfg.cluster))
    except EtcdUnavailable as exc:
        raise ForesyncError(f"cannot read the cluster from etcd: {exc}") from None
    try:
        doc = fetch_status(cfg)
    except ConfigError:
        return volumes, None
    parts = list(doc["volumes"].values()) if "volumes" in doc else [doc]
    return volumes, [part["cluster"] for part in parts if part.get("cluster") is not None]


def _remaining(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds} s"


def rows(volumes: list[dict[str, Any]], heres: list[dict[str, Any]] | None) -> list[tuple[str, ...]]:
    lines: list[tuple[str, ...]] = []
    for volume in volumes:
        holder = volume["holder"]
        mark = volume.get("outdated")
        outdated = (f"secondary outdated: {mark['site']} (epoch {mark['epoch']}) answered writes "
                    f"without it; it will not promote itself" if mark else "")
        if holder is not None:
            lines.append((volume["volume"], holder, "primary", str(volume["holder_epoch"]), holder,
                          _remaining(volume["remaining_s"]), outdated))
        else:
            note = "lease expired: no primary may acknowledge writes"
            lines.append((volume["volume"], volume["epoch_site"] or "-", "-",
                          str(volume["epoch"]), "(none)", "-",
                          f"{note}; {outdated}" if outdated else note))
    for here in heres or ():
        note = "fenced" if here["fenced"] else ""
        if here["reason"]:
            note = f"{note}: {here['reason']}" if note else here["reason"]
        if here["etcd_error"]:
            note = f"{note}; {here['etcd_error']}" if note else here["etcd_error"]
        lines.append((here["volume"], f"{here['site']} (this site)", here["role"],
                      str(here["epoch"]), here["holder"] or "(none)",
                      _remaining(here["holder_ttl_s"]), note))
    return lines


def render_cluster(volumes: list[dict[str, Any]], heres: list[dict[str, Any]] | None) -> str:
    table = [HEADER, *rows(volumes, heres)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
           + ("  " + line[-1] if line[-1] else "") for line in table]
    if heres is None:
        out.append("(this site is not running: its own line is missing)")
    return "\n".join(out)
