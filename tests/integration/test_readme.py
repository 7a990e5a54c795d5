"""The README's quick start, run as written (ports moved to free ones): the `foresync status`
samples it prints are what the code prints (issue 17: the sample had fallen out of date)."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .sites import FORESYNC, free_ports, run_tool

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_output(command: str) -> list[str]:
    """The lines the README shows under ``$ <command>``, up to the next prompt."""
    lines = README.read_text().splitlines()
    start = lines.index(f"$ {command}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("$ ", "```")))
    return lines[start:end]


def masked(lines: list[str]) -> list[str]:
    """Times differ run to run: the rtt, and what the misses took (``misses`` lines)."""
    return [re.sub(r"[+-]?\d+\.\d+ ms", "X ms", line) for line in lines]


def test_the_quick_start_status_samples_are_what_the_code_prints(tmp_path: Path) -> None:
    def cli(*args: str) -> str:
        return run_tool([FORESYNC, *args]).stdout

    cli("config", "example", "--role", "primary", "-o", str(tmp_path / "a.toml"))
    cli("config", "example", "--role", "secondary", "-o", str(tmp_path / "b.toml"))
    nbd_a, nbd_b, link_a, link_b, admin_a, admin_b = free_ports(6)
    moves = {"10809": nbd_a, "10810": nbd_b, "7801": link_a, "7802": link_b, "7901": admin_a,
             "7902": admin_b}
    for name in ("a.toml", "b.toml"):
        path = tmp_path / name
        text = path.read_text()
        for old, new in moves.items():
            text = text.replace(f"127.0.0.1:{old}\"", f"127.0.0.1:{new}\"")
        path.write_text(text)
    cli("init", "--config", str(tmp_path / "a.toml"), "--role", "primary")
    cli("init", "--config", str(tmp_path / "b.toml"), "--role", "secondary")
    sites = [subprocess.Popen([FORESYNC, "run", "--config", str(tmp_path / name)],
                              stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("wb"))
             for name in ("a.toml", "b.toml")]
    try:
        deadline = time.monotonic() + 30
        while '"in_sync": true' not in _status(admin_a):
            assert time.monotonic() < deadline, (tmp_path / "a.toml.log").read_text()
            time.sleep(0.2)
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0xa5 0 4M", "-c", "flush",
                  f"nbd://127.0.0.1:{nbd_a}/vol0"])
        time.sleep(1)  # B's applied seq and durable watermark settle (in_sync on both)
        for site in ("b", "a"):
            shown = cli("status", "--config", str(tmp_path / f"{site}.toml")).splitlines()
            assert masked(shown) == masked(readme_output(f"foresync status --config {site}.toml")), shown
    finally:
        for proc in sites:
            proc.terminate()
        for proc in sites:
            assert proc.wait(timeout=30) == 0


def _status(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""
