"""Two real ``foresync run`` daemons on loopback, each serving several volumes ([[volume]]
tables, issue 16): the config writer and the few helpers test_volumes.py and bench/volumes.py
share. Each daemon has one NBD, one link and one admin port whatever the number of volumes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .sites import FORESYNC, STARTUP_TIMEOUT_S, free_ports, run_tool, terminate


@dataclass
class Daemon:
    name: str  # "p" or "s": the site
    directory: Path
    nbd_port: int
    link_port: int
    peer_port: int
    admin_port: int
    volumes: list[str]
    size: str = "16MiB"
    mode: str = "lookahead"
    extra: str = ""  # more daemon-level TOML ([cluster], say)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.directory / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def meta(self, volume: str) -> Path:
        return self.directory / f"{self.name}-{volume}.meta"

    def data(self, volume: str) -> Path:
        return self.directory / f"{self.name}-{volume}.img"

    def write_config(self) -> None:
        tables = "".join(
            f'[[volume]]\nname = "{v}"\ndata = "{self.data(v).name}"\nsize = "{self.size}"\n'
            f'meta = "{self.meta(v).name}"\n' for v in self.volumes)
        self.config.write_text(
            f'[nbd]\nlisten = "127.0.0.1:{self.nbd_port}"\n'
            f'[link]\nlisten = "127.0.0.1:{self.link_port}"\npeer = "127.0.0.1:{self.peer_port}"\n'
            f'mode = "{self.mode}"\n'
            f'[record]\ncapacity = 64\n[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n'
            + self.extra + tables)

    def url(self, volume: str) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/{volume}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, ok: tuple[int, ...] | None = (0,)) -> subprocess.CompletedProcess[str]:
        return run_tool([FORESYNC, *args], ok=ok, context=self.log())

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(FORESYNC), "run", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def wait_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited {self.proc.returncode}\n{self.log()}")
            try:
                self.status()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name} did not come up\n{self.log()}")
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/status", timeout=5) as answer:
            doc: dict[str, Any] = json.loads(answer.read())
            return doc

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> list[str]:
        return terminate(self.proc, f"daemon {self.name}")


def pair(directory: Path, volumes: list[str], extra: tuple[str, str] = ("", ""),
         **settings: Any) -> tuple[Daemon, Daemon]:
    nbd_p, nbd_s, link_p, link_s, admin_p, admin_s = free_ports(6)
    p = Daemon("p", directory, nbd_p, link_p, link_s, admin_p, list(volumes), extra=extra[0], **settings)
    s = Daemon("s", directory, nbd_s, link_s, link_p, admin_s, list(volumes), extra=extra[1], **settings)
    for daemon in (p, s):
        daemon.write_config()
    p.cli("init", "--config", str(p.config), "--role", "primary")
    s.cli("init", "--config", str(s.config), "--role", "secondary")
    return p, s


def start_up(*daemons: Daemon) -> None:
    """Start every daemon, then wait until each answers on its admin port."""
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_up()


def in_sync(p: Daemon, s: Daemon, volume: str) -> bool:
    """Both sites of ``volume`` in sync over a connected link, one primary and one secondary."""
    try:
        a, b = p.status()["volumes"].get(volume), s.status()["volumes"].get(volume)
    except OSError:
        return False
    return bool(a and b and a["in_sync"] and b["in_sync"] and a["link"] == b["link"] == "connected"
                and sorted((a["role"], b["role"])) == ["primary", "secondary"])


def wait(what: str, check: Any, daemons: tuple[Daemon, ...], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"===== {d.name}\n{d.log()}" for d in daemons)
            pytest.fail(f"not {what} within {timeout_s} s\n{logs}")
        time.sleep(0.05)
