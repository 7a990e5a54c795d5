"""Sizes written by people (``256MiB``, ``1GiB``, ``4096``) and their byte counts.

Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB, TB) are powers of
1000, as in qemu-img and most storage tools; a bare ``K``/``M``/``G``/``T`` is binary, as qemu reads it.
"""

from __future__ import annotations

import re

from foresync.errors import ConfigError

_SUFFIXES = {
    "": 1,
    "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}
# ASCII only: int() would also take other scripts' digits, which no config file should contain.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$", re.ASCII)


def parse_size(text: object, what: str = "size") -> int:
    """Parse ``text`` into a byte count, or raise ConfigError naming ``what``."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: expected a size such as 256MiB, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{what}: must not be negative, got {text}")
        return text
    if not isinstance(text, str):  # a float, list or table from TOML: no rounding, no guessing
        raise ConfigError(f"{what}: expected a size such as 256MiB, 1GiB or a whole number of "
                          f"bytes, got {text!r}")
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{what}: expected a size such as 256MiB, 1GiB or 4096, got {text!r}")
    number, suffix = match.groups()
    factor = _SUFFIXES.get(suffix.lower())
    if factor is None:
        raise ConfigError(f"{what}: unknown unit {suffix!r} in {text!r} (use KiB, MiB, GiB, TiB)")
    return int(number) * factor


def format_size(n_bytes: int) -> str:
    """Render a byte count for a person, e.g. ``1.5 GiB``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        # Compare what will be printed, so 1048575 reads "1.0 MiB" and not "1024.0 KiB".
        if round(abs(value), 1) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_hostport(text: object, what: str = "address") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) into a tuple, or raise ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    host, sep, port = text.rpartition(":")
    # isdigit() alone also accepts digits such as "²" that int() then rejects with ValueError.
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or "[" in host or "]" in host:  # "[]:80", "[::1:80"
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    port_number = int(port)
    if not 0 <= port_number <= 65535:
        raise ConfigError(f"{what}: port {port_number} out of range 0-65535")
    return host, port_number
