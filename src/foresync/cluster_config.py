"""``[cluster]``: automatic failover with fencing on etcd (issue 16, part 3; docs/operations.md).

    [cluster]
    etcd = ["http://127.0.0.1:2379"]   # one URL per etcd member; https:// needs ca_file
    lease_ttl = "5s"                   # the primary lease; failover within lease_ttl + 2 s
    name = "foresync"                  # the key prefix /foresync/<name>/...
    site = "a"                         # this site's name in etcd (default: the config file's stem)
    ca_file = "etcd-ca.pem"            # TLS: the CA that signed the etcd servers' certificates
    cert_file = "client.pem"           # TLS client certificate and key, if etcd asks for one
    key_file = "client-key.pem"
    user = "foresync"                  # etcd authentication, with the password in a file
    password_file = "etcd-password"

Without the section a site runs as before: no lease, no fencing, promote by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from foresync.errors import ConfigError

KEYS = {"etcd", "lease_ttl", "name", "site", "ca_file", "cert_file", "key_file", "user",
        "password_file"}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    endpoints: tuple[tuple[str, int], ...]
    tls: bool
    lease_ttl_s: float
    name: str
    site: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password_file: str | None = None

    def prefix(self, volume: str) -> str:
        """The keys of one unit: a volume, or a consistency group under its group name."""
        return f"/foresync/{self.name}/volumes/{volume}/"


def parse_duration(value: Any, what: str) -> float:
    """``"5s"``, ``"500ms"`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise ConfigError(f"{what} = {value!r}: expected a duration such as \"5s\" or \"500ms\"")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    return seconds


def _endpoint(url: Any) -> tuple[str, int, bool]:
    if not isinstance(url, str):
        raise ConfigError(f"[cluster] etcd: {url!r} is not a URL such as \"http://127.0.0.1:2379\"")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"[cluster] etcd: {url!r} is not a URL such as \"http://127.0.0.1:2379\"")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ConfigError(f"[cluster] etcd: {url!r}: bad port") from None
    return parts.hostname, port, parts.scheme == "https"


def parse(table: dict[str, Any], default_site: str,
          optional_path: Callable[[dict[str, Any], str, str], str | None]) -> ClusterConfig:
    urls = table.get("etcd")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls:
        raise ConfigError("[cluster] etcd is required: a list of URLs such as "
                          "[\"http://127.0.0.1:2379\"]")
    endpoints = [_endpoint(url) for url in urls]
    schemes = {tls for _, _, tls in endpoints}
    if len(schemes) > 1:
        raise ConfigError("[cluster] etcd: mixes http:// and https:// URLs; use one scheme")
    tls = schemes.pop()
    ttl = parse_duration(table.get("lease_ttl", "5s"), "[cluster] lease_ttl")
    if ttl < 2 or ttl != int(ttl):
        raise ConfigError(f"[cluster] lease_ttl = {table.get('lease_ttl')!r}: a whole number of "
                          "seconds, at least 2 (etcd leases count in seconds)")
    names = {}
    for key, default in (("name", "foresync"), ("site", default_site)):
        value = table.get(key, default)
        if not isinstance(value, str) or not _NAME.match(value):
            raise ConfigError(f"[cluster] {key} = {value!r}: letters, digits, '.', '_' or '-'")
        names[key] = value
    paths = {key: optional_path(table, "cluster", key)
             for key in ("ca_file", "cert_file", "key_file", "password_file")}
    if tls and paths["ca_file"] is None:
        raise ConfigError("[cluster] etcd uses https://: set [cluster] ca_file")
    if (paths["cert_file"] is None) != (paths["key_file"] is None):
        raise ConfigError("[cluster] cert_file and key_file go together")
    if paths["cert_file"] is not None and not tls:
        raise ConfigError("[cluster] cert_file needs https:// etcd URLs")
    user = table.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise ConfigError(f"[cluster] user = {user!r}: expected a name")
    if (user is None) != (paths["password_file"] is None):
        raise ConfigError("[cluster] user and password_file go together")
    for key, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"[cluster] {key} = {path}: no such file")
    return ClusterConfig(endpoints=tuple((host, port) for host, port, _ in endpoints), tls=tls,
                         lease_ttl_s=ttl, name=names["name"], site=names["site"], user=user,
                         **paths)
