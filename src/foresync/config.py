"""Site configuration: one TOML file per site, validated into frozen dataclasses.

Every error names the key and the value, so an operator can fix the file without reading code.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foresync import cluster_config
from foresync.cluster_config import ClusterConfig
from foresync.errors import ConfigError
from foresync.group_layout import GroupSpec
from foresync.record.predict import PREDICTORS
from foresync.record.record import Eviction
from foresync.replication.primary import Mode
from foresync.units import parse_hostport, parse_size

if TYPE_CHECKING:
    from foresync.volumes_config import DaemonConfig

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
    nbd_tls_dir: str | None = None
    nbd_tls_verify_client: bool = False
    nbd_max_connections: int = 64
    nbd_max_in_flight: int = 256
    nbd_max_in_flight_bytes: int = 64 * 1024 * 1024
    nbd_max_option_bytes: int = 64 * 1024
    nbd_handshake_timeout_s: float = 30.0
    nbd_idle_timeout_s: float = 60.0
    link_secret_file: str | None = None
    link_tls_dir: str | None = None
    link_max_frame_bytes: int = 33 * 1024 * 1024
    admin_token_file: str | None = None
    log_format: str = "text"  # [log] format: text | json; only the CLI acts on it
    nbd_trace: str | None = None  # record every NBD request here (nbd/trace.py)
    predictor: str = "next"  # record/predict.py PREDICTORS
    # [s3] (issue 18): objects served by the primary and mirrored over the link (daemon/objects.py)
    s3_listen: tuple[str, int] | None = None
    s3_credentials_file: str | None = None
    s3_tls_dir: str | None = None
    s3_dir: str | None = None  # the object store; default <[volume] meta>/objects
    s3_record_capacity: int = 4096  # names in the record of objects
    s3_record_bytes: int = 1024 * 1024  # bytes of names in it
    s3_budget: int = 8  # predicted names a miss may add
    s3_prefix_entry_max: int = 64  # names one prefix entry may cover (0: exact names only)
    s3_window_bytes: int = 64 * 1024 * 1024  # object data sent and not yet durable there
    s3_mirror_parts: bool = True  # parts mirrored as uploaded; false: Complete sends the object whole
    cluster: ClusterConfig | None = None  # [cluster] (issue 16): failover with fencing on etcd
    # [[volume]] tables (issue 16): the link dialler names its volume first (wire.Route), for the
    # daemon's one link listener; None in a one-volume [volume] config (no routing)
    link_route: str | None = None
    # [[group]] (issue 16 part 2): this unit is a consistency group over these member volumes
    # (groups_config.py); None for a volume
    group: GroupSpec | None = None

    @property
    def admin_is_loopback(self) -> bool:
        return is_loopback(self.admin_listen[0])

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
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value <= 0):
        raise ConfigError(f"[{section}] {key} = {value!r}: expected a positive number of seconds")
    return float(value)


def _string(value: Any, section: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"[{section}] {key} = {value!r}: expected a string")
    return value


def listen_error(key: str, address: tuple[str, int], exc: OSError) -> ConfigError:
    """A listener could not bind: name the config key, the address and why (a port already in
    use, an address this machine does not have)."""
    # Not exc.strerror: asyncio's create_server puts its own sentence there.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(f"{key} = {address[0]}:{address[1]}: cannot listen there: {reason}")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bool(value: Any, section: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"[{section}] {key} = {value!r}: expected true or false")
    return value


KNOWN_KEYS: dict[str, set[str]] = {
    "volume": {"name", "data", "size", "meta"},
    "nbd": {"listen", "export", "tls_dir", "tls_verify_client", "max_connections", "max_in_flight",
            "max_in_flight_size", "max_option_size", "handshake_timeout", "idle_timeout", "trace"},
    "link": {"listen", "peer", "mode", "window", "heartbeat", "timeout", "on_disconnect",
             "block_timeout", "resync_rate_max", "secret_file", "tls_dir", "max_frame_size"},
    "record": {"extent_size", "capacity", "bound", "lookahead", "eviction", "predictor",
               "watermark_interval"},
    "admin": {"listen", "token_file"},
    "log": {"format"},
    "s3": {"listen", "credentials_file", "tls_dir", "dir", "record_capacity", "record_size",
           "lookahead", "prefix_entry_max", "window", "mirror_parts"},
    "cluster": cluster_config.KEYS,
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


def _capacity(record: dict[str, Any], extent_size: int) -> int:
    """``capacity`` in extents, or derived from ``bound``: the most a failback may copy, in bytes
    (capacity x extent_size). Both may be given only if they agree."""
    bound = _get(record, "record", "bound")
    capacity = _get(record, "record", "capacity")
    if bound is None:
        return _int(1024 if capacity is None else capacity, "record", "capacity", 1)
    bound_bytes = parse_size(bound, "[record] bound")
    derived = bound_bytes // extent_size
    if derived * extent_size != bound_bytes:
        raise ConfigError(f"[record] bound = {bound!r}: not a multiple of [record] extent_size "
                          f"({extent_size} bytes)")
    if capacity is not None and _int(capacity, "record", "capacity", 1) != derived:
        raise ConfigError(f"[record] bound = {bound!r} and capacity = {capacity} disagree: the bound "
                          f"at this extent_size is {derived} extents; give only one of them")
    return derived


def _read(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def load(path: str, volume: str | None = None) -> SiteConfig:
    """One volume's configuration: the only one of a ``[volume]`` config, or the ``[[volume]]``
    table named ``volume`` (the first when None: the daemon-level settings, [admin] and the
    rest, are the same in every volume's)."""
    doc = _read(path)
    if isinstance(doc.get("volume"), list):
        return volumes_of(path, doc).volume(volume)
    _check_keys(doc, path)
    cfg = _build(doc, path)
    if volume is not None and volume != cfg.name:
        raise ConfigError(f"{path}: no volume named {volume!r} (its [volume] name is {cfg.name!r})")
    return cfg


def load_daemon(path: str) -> DaemonConfig:
    """Every volume a ``foresync run`` of this config serves (volumes.py)."""
    doc = _read(path)
    if isinstance(doc.get("volume"), list):
        return volumes_of(path, doc)
    from foresync.volumes_config import DaemonConfig

    _check_keys(doc, path)
    return DaemonConfig(str(Path(path).resolve()), (_build(doc, path),), multi=False)


def _build(doc: dict[str, Any], path: str) -> SiteConfig:
    base = Path(path).resolve().parent
    volume, nbd, link = _section(doc, "volume"), _section(doc, "nbd"), _section(doc, "link")
    record, admin = _section(doc, "record"), _section(doc, "admin")
    log_table = _section(doc, "log")
    s3 = _section(doc, "s3")

    def resolve(p: Any, key: str, section: str = "volume") -> str:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"[{section}] {key} must be a path")
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    def optional_path(table: dict[str, Any], section: str, key: str) -> str | None:
        value = _get(table, section, key)
        return None if value is None else resolve(value, key, section)

    size = parse_size(_get(volume, "volume", "size", required=True), "[volume] size")
    extent_size = parse_size(_get(record, "record", "extent_size", "1MiB"), "[record] extent_size")
    if size <= 0:
        raise ConfigError("[volume] size must be greater than zero")
    if extent_size < 4096 or extent_size & (extent_size - 1):
        raise ConfigError(f"[record] extent_size = {extent_size}: must be a power of two, at least 4096")
    capacity = _capacity(record, extent_size)
    lookahead = _int(_get(record, "record", "lookahead", 4), "record", "lookahead", 0)
    if capacity < 2:
        raise ConfigError(f"[record] capacity = {capacity}: must be at least 2 extents")
    if capacity > 65535:
        raise ConfigError(f"[record] capacity = {capacity}: at most 65535 extents")
    mode = Mode(_choice(_get(link, "link", "mode", "lookahead"), "link", "mode", [m.value for m in Mode]))
    eviction = Eviction(_choice(_get(record, "record", "eviction", "streams"), "record", "eviction",
                                [e.value for e in Eviction]))
    window = parse_size(_get(link, "link", "window", "64MiB"), "[link] window")
    if window < MAX_WRITE_BYTES:
        raise ConfigError(f"[link] window = {window}: must be at least 32 MiB (the largest write)")
    max_frame = parse_size(_get(link, "link", "max_frame_size", "33MiB"), "[link] max_frame_size")
    if max_frame < MAX_WRITE_BYTES + 64 * 1024:
        raise ConfigError(f"[link] max_frame_size = {max_frame}: must be at least 32 MiB + 64 KiB "
                          "(the largest write with its header)")
    admin_listen = parse_hostport(_get(admin, "admin", "listen", "127.0.0.1:7900"), "[admin] listen")
    admin_token_file = optional_path(admin, "admin", "token_file")
    if admin_token_file is None and not is_loopback(admin_listen[0]):
        raise ConfigError(f"[admin] listen = {admin_listen[0]}:{admin_listen[1]} is not loopback: "
                          "set [admin] token_file so that promote, demote and verify need a token")
    nbd_tls_dir = optional_path(nbd, "nbd", "tls_dir")
    nbd_verify = _bool(_get(nbd, "nbd", "tls_verify_client", False), "nbd", "tls_verify_client")
    if nbd_verify and nbd_tls_dir is None:
        raise ConfigError("[nbd] tls_verify_client = true needs [nbd] tls_dir")
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
        export=_string(_get(nbd, "nbd", "export", name), "nbd", "export"),
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
        predictor=_choice(_get(record, "record", "predictor", "next"), "record", "predictor",
                          sorted(PREDICTORS)),
        watermark_interval_s=_float(_get(record, "record", "watermark_interval", 0.05), "record",
                                    "watermark_interval"),
        admin_listen=admin_listen,
        on_disconnect=_choice(_get(link, "link", "on_disconnect", "continue"), "link", "on_disconnect",
                              ["continue", "block"]),
        block_timeout_s=_float(_get(link, "link", "block_timeout", 30.0), "link", "block_timeout"),
        resync_rate_max=parse_size(_get(link, "link", "resync_rate_max", 0), "[link] resync_rate_max"),
        nbd_tls_dir=nbd_tls_dir,
        nbd_tls_verify_client=nbd_verify,
        nbd_max_connections=_int(_get(nbd, "nbd", "max_connections", 64), "nbd", "max_connections", 1),
        nbd_max_in_flight=_int(_get(nbd, "nbd", "max_in_flight", 256), "nbd", "max_in_flight", 1),
        nbd_max_in_flight_bytes=parse_size(_get(nbd, "nbd", "max_in_flight_size", "64MiB"),
                                           "[nbd] max_in_flight_size"),
        nbd_max_option_bytes=parse_size(_get(nbd, "nbd", "max_option_size", "64KiB"),
                                        "[nbd] max_option_size"),
        nbd_handshake_timeout_s=_float(_get(nbd, "nbd", "handshake_timeout", 30.0), "nbd",
                                       "handshake_timeout"),
        nbd_idle_timeout_s=_float(_get(nbd, "nbd", "idle_timeout", 60.0), "nbd", "idle_timeout"),
        link_secret_file=optional_path(link, "link", "secret_file"),
        link_tls_dir=optional_path(link, "link", "tls_dir"),
        link_max_frame_bytes=max_frame,
        admin_token_file=admin_token_file,
        log_format=_choice(_get(log_table, "log", "format", "text"), "log", "format", ["text", "json"]),
        nbd_trace=optional_path(nbd, "nbd", "trace"),
        **_s3_keys(doc, s3, optional_path),
        cluster=None if "cluster" not in doc else cluster_config.parse(
            _section(doc, "cluster"), Path(path).stem, optional_path),
    )


def _s3_keys(doc: dict[str, Any], s3: dict[str, Any],
             optional_path: Callable[[dict[str, Any], str, str], str | None]) -> dict[str, Any]:
    """``[s3]``: listen and credentials_file are both required once the section is there."""
    if "s3" not in doc:
        return {}
    return {
        "s3_listen": parse_hostport(_get(s3, "s3", "listen", "127.0.0.1:9000"), "[s3] listen"),
        "s3_credentials_file": optional_path(s3, "s3", "credentials_file")
        or _get(s3, "s3", "credentials_file", required=True),
        "s3_tls_dir": optional_path(s3, "s3", "tls_dir"),
        "s3_dir": optional_path(s3, "s3", "dir"),
        "s3_record_capacity": _positive(_get(s3, "s3", "record_capacity", 4096), "[s3] record_capacity"),
        "s3_record_bytes": parse_size(_get(s3, "s3", "record_size", "1MiB"), "[s3] record_size"),
        "s3_budget": _positive(_get(s3, "s3", "lookahead", 8), "[s3] lookahead", minimum=0),
        "s3_prefix_entry_max": _positive(_get(s3, "s3", "prefix_entry_max", 64),
                                         "[s3] prefix_entry_max", minimum=0),
        "s3_window_bytes": parse_size(_get(s3, "s3", "window", "64MiB"), "[s3] window"),
        "s3_mirror_parts": _bool(_get(s3, "s3", "mirror_parts", True), "s3", "mirror_parts"),
    }


def _positive(value: Any, key: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer of at least {minimum}, not {value!r}")
    return value


def volumes_of(path: str, doc: dict[str, Any]) -> DaemonConfig:
    from foresync.volumes_config import parse_volumes  # [[volume]] tables: volumes_config.py

    return parse_volumes(path, doc, _check_keys, _build)


def check_array_table(path: str, kind: str, index: int, table: Any, allowed: set[str]) -> str:
    """The shape shared by ``[[volume]]`` and ``[[group]]`` tables: a table, of known keys (a close
    match suggested), whose ``record`` sub-table takes only ``[record]`` keys, with a non-empty
    name. Returns the table's place for the caller's own errors (file, table, number, name)."""
    name = table.get("name") if isinstance(table, dict) else None
    where = f"{path}: [[{kind}]] #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for key, value in table.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key}{hint} (a [[{kind}]] table takes "
                              f"{', '.join(sorted(allowed))})")
        if key == "record":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: record must be a table ([{kind}.record])")
            for sub in value:
                if sub not in KNOWN_KEYS["record"]:
                    raise ConfigError(f"{where}: unknown key [{kind}.record] {sub}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name is required (a non-empty string: it names the {kind} in "
                          "/status, metrics, the CLI and the link)")
    return where
