"""Site configuration: one TOML file per site, validated into frozen dataclasses.

Every error names the key and the value, so an operator can fix the file without reading code.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foresync.errors import ConfigError
from foresync.record.record import Eviction
from foresync.replication.primary import Mode
from foresync.units import parse_hostport, parse_size

MAX_WRITE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SiteConfig:
    path: str
    name: str
    data: str
    size: int
    meta: str
    nbd_listen: tuple[str, int]
    export: str
    link_listen: tuple[str, int]
    link_peer: tuple[str, int]
    mode: Mode
    window_bytes: int
    heartbeat_s: float
    timeout_s: float
    extent_size: int
    capacity: int
    lookahead: int
    eviction: Eviction
    watermark_interval_s: float
    admin_listen: tuple[str, int]
    on_disconnect: str = "continue"
    block_timeout_s: float = 30.0
    resync_rate_max: int = 0

    @property
    def max_write_bytes(self) -> int:
        """The largest NBD request we advertise: any write must fit the record (an unaligned
        write of N extents' worth of bytes touches N + 1 extents)."""
        return min(MAX_WRITE_BYTES, (self.capacity - 1) * self.extent_size)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _get(table: dict[str, Any], section: str, key: str, default: Any = None, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"[{section}] {key} is required")
        return default
    return table[key]


def _choice(value: Any, section: str, key: str, choices: list[str]) -> str:
    if value not in choices:
        raise ConfigError(f"[{section}] {key} = {value!r}: expected one of {', '.join(choices)}")
    return str(value)


def _int(value: Any, section: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"[{section}] {key} = {value!r}: expected an integer >= {minimum}")
    return value


def _float(value: Any, section: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[{section}] {key} = {value!r}: expected a positive number of seconds")
    return float(value)


KNOWN_KEYS: dict[str, set[str]] = {
    "volume": {"name", "data", "size", "meta"},
    "nbd": {"listen", "export"},
    "link": {"listen", "peer", "mode", "window", "heartbeat", "timeout", "on_disconnect",
             "block_timeout", "resync_rate_max"},
    "record": {"extent_size", "capacity", "lookahead", "eviction", "watermark_interval"},
    "admin": {"listen"},
}


def _check_keys(doc: dict[str, Any], path: str) -> None:
    """A misspelt key would otherwise be ignored silently and its default used."""
    for section, table in doc.items():
        known = KNOWN_KEYS.get(section)
        if known is None:
            raise ConfigError(f"{path}: unknown section [{section}] (known: "
                              f"{', '.join(sorted(KNOWN_KEYS))})")
        if isinstance(table, dict):
            for key in table:
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(f"{path}: unknown key [{section}] {key}{hint}")


def load(path: str) -> SiteConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    _check_keys(doc, path)
    base = Path(path).resolve().parent
    volume, nbd, link = _section(doc, "volume"), _section(doc, "nbd"), _section(doc, "link")
    record, admin = _section(doc, "record"), _section(doc, "admin")

    def resolve(p: Any, key: str) -> str:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"[volume] {key} must be a path")
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    size = parse_size(_get(volume, "volume", "size", required=True), "[volume] size")
    extent_size = parse_size(_get(record, "record", "extent_size", "1MiB"), "[record] extent_size")
    if size <= 0:
        raise ConfigError("[volume] size must be greater than zero")
    if extent_size < 4096 or extent_size & (extent_size - 1):
        raise ConfigError(f"[record] extent_size = {extent_size}: must be a power of two, at least 4096")
    capacity = _int(_get(record, "record", "capacity", 1024), "record", "capacity", 1)
    lookahead = _int(_get(record, "record", "lookahead", 4), "record", "lookahead", 0)
    if capacity < 2:
        raise ConfigError(f"[record] capacity = {capacity}: must be at least 2 extents")
    if capacity > 65535:
        raise ConfigError(f"[record] capacity = {capacity}: at most 65535 extents")
    mode = Mode(_choice(_get(link, "link", "mode", "lookahead"), "link", "mode", [m.value for m in Mode]))
    eviction = Eviction(_choice(_get(record, "record", "eviction", "generations"), "record", "eviction",
                                [e.value for e in Eviction]))
    window = parse_size(_get(link, "link", "window", "64MiB"), "[link] window")
    if window < MAX_WRITE_BYTES:
        raise ConfigError(f"[link] window = {window}: must be at least 32 MiB (the largest write)")
    name = _get(volume, "volume", "name", "vol0")
    if not isinstance(name, str) or not name:
        raise ConfigError("[volume] name must be a non-empty string")
    return SiteConfig(
        path=str(Path(path).resolve()),
        name=name,
        data=resolve(_get(volume, "volume", "data", required=True), "data"),
        size=size,
        meta=resolve(_get(volume, "volume", "meta", required=True), "meta"),
        nbd_listen=parse_hostport(_get(nbd, "nbd", "listen", "127.0.0.1:10809"), "[nbd] listen"),
        export=str(_get(nbd, "nbd", "export", name)),
        link_listen=parse_hostport(_get(link, "link", "listen", required=True), "[link] listen"),
        link_peer=parse_hostport(_get(link, "link", "peer", required=True), "[link] peer"),
        mode=mode,
        window_bytes=window,
        heartbeat_s=_float(_get(link, "link", "heartbeat", 1.0), "link", "heartbeat"),
        timeout_s=_float(_get(link, "link", "timeout", 10.0), "link", "timeout"),
        extent_size=extent_size,
        capacity=capacity,
        lookahead=lookahead,
        eviction=eviction,
        watermark_interval_s=_float(_get(record, "record", "watermark_interval", 0.05), "record",
                                    "watermark_interval"),
        admin_listen=parse_hostport(_get(admin, "admin", "listen", "127.0.0.1:7900"), "[admin] listen"),
        on_disconnect=_choice(_get(link, "link", "on_disconnect", "continue"), "link", "on_disconnect",
                              ["continue", "block"]),
        block_timeout_s=_float(_get(link, "link", "block_timeout", 30.0), "link", "block_timeout"),
        resync_rate_max=parse_size(_get(link, "link", "resync_rate_max", 0), "[link] resync_rate_max"),
    )
