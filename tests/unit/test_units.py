"""Unit tests for ``foresync.units``: sizes and addresses as people write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foresync.errors import ConfigError
from foresync.units import format_size, parse_hostport, parse_size

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

SIZES = {
    "4096": 4096,
    "0": 0,
    "512b": 512,
    "512B": 512,
    "1K": KiB,
    "1k": KiB,
    "1KiB": KiB,
    "1kib": KiB,
    "1KB": 1000,
    "1kB": 1000,
    "256MiB": 256 * MiB,
    "256M": 256 * MiB,
    "2MB": 2_000_000,
    "1GiB": GiB,
    "1G": GiB,
    "3GB": 3_000_000_000,
    "2TiB": 2 * TiB,
    "2T": 2 * TiB,
    "1TB": 10**12,
    " 16 MiB ": 16 * MiB,
    "\t8\tKiB\n": 8 * KiB,
    "007": 7,
    "99999999999999999999TiB": 99999999999999999999 * TiB,
}


@pytest.mark.parametrize(("text", "expected"), SIZES.items(), ids=[repr(k) for k in SIZES])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [0, 1, 4096, 1 << 62])
def test_parse_size_takes_non_negative_ints_as_they_are(value: int) -> None:
    assert parse_size(value) == value


BAD_SIZES = [
    "",
    " ",
    "MiB",
    "-1",
    "-1MiB",
    "1.5GiB",
    "1e9",
    "0x10",
    "1 2",
    "1PiB",
    "1KiBs",
    "1 i",
    "1_000",
]


@pytest.mark.parametrize("text", BAD_SIZES)
def test_parse_size_rejects_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^volume size: "):
        parse_size(text, "volume size")


@pytest.mark.parametrize("text", ["\u0663", "\uff11\uff12KiB", "\u00b9", "4096\u00a0"])
def test_parse_size_takes_ascii_digits_and_spaces_only(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, True, False])
def test_parse_size_rejects_negative_and_bool(value: int) -> None:
    with pytest.raises(ConfigError, match=r"^cache: "):
        parse_size(value, "cache")


def test_parse_size_names_the_unit_it_does_not_know() -> None:
    with pytest.raises(ConfigError, match="'PiB'"):
        parse_size("1PiB")


@given(
    st.integers(0, 10**15),
    st.sampled_from(["", "b", "K", "KiB", "KB", "M", "MiB", "MB", "G", "GiB", "GB"]),
)
def test_parse_size_is_number_times_unit(number: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "K": KiB, "KiB": KiB, "KB": 1000, "M": MiB, "MiB": MiB, "MB": 10**6}
    factor |= {"G": GiB, "GiB": GiB, "GB": 10**9}
    assert parse_size(f"{number}{unit}") == number * factor[unit]
    assert parse_size(f"{number} {unit.lower()}") == number * factor[unit]


FORMATTED = {
    0: "0 B",
    1: "1 B",
    1023: "1023 B",
    1024: "1.0 KiB",
    1536: "1.5 KiB",
    MiB - 1: "1.0 MiB",
    MiB: "1.0 MiB",
    256 * MiB: "256.0 MiB",
    GiB + GiB // 2: "1.5 GiB",
    GiB - 1: "1.0 GiB",
    TiB: "1.0 TiB",
    5000 * TiB: "5000.0 TiB",
    -2048: "-2.0 KiB",
}


@pytest.mark.parametrize(("n_bytes", "expected"), FORMATTED.items())
def test_format_size(n_bytes: int, expected: str) -> None:
    assert format_size(n_bytes) == expected


@given(st.integers(0, 1 << 50))
def test_format_size_never_prints_1024_of_a_unit_below_tib(n_bytes: int) -> None:
    number, unit = format_size(n_bytes).split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert unit == "TiB" or float(number) < 1024


ADDRESSES = {
    "localhost:10809": ("localhost", 10809),
    "0.0.0.0:0": ("0.0.0.0", 0),
    "192.0.2.1:65535": ("192.0.2.1", 65535),
    "[::1]:10809": ("::1", 10809),
    "[fe80::1%eth0]:80": ("fe80::1%eth0", 80),
    "::1:80": ("::1", 80),
    "host.example:00080": ("host.example", 80),
}


@pytest.mark.parametrize(("text", "expected"), ADDRESSES.items())
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


BAD_ADDRESSES = [
    "",
    "localhost",
    "localhost:",
    ":10809",
    "host:port",
    "host:-1",
    "host:+80",
    "host:8 0",
    "[::1]",
    "[]:80",
    "[::1:80",
    "::1]:80",
    "host:\u00b2",  # isdigit() is true for superscript two, but int() refuses it
    "host:\u0661\u0662",  # Arabic-Indic digits
]


@pytest.mark.parametrize("text", BAD_ADDRESSES)
def test_parse_hostport_rejects_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^listen: expected HOST:PORT"):
        parse_hostport(text, "listen")


@pytest.mark.parametrize("port", [65536, 99999, 10**30])
def test_parse_hostport_rejects_ports_out_of_range(port: int) -> None:
    with pytest.raises(ConfigError, match=rf"^peer: port {port} out of range"):
        parse_hostport(f"host:{port}", "peer")


@given(st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), st.integers(0, 65535))
def test_parse_hostport_round_trips(host: str, port: int) -> None:
    assert parse_hostport(f"{host}:{port}") == (host, port)
    assert parse_hostport(f"[{host}]:{port}") == (host, port)
