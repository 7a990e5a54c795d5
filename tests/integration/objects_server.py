"""A real ``foresync objects serve`` process on loopback, and clients configured for it.

The server listens on port 0 and we read the port back from the line it prints. Its log goes to
a file (quoted in failures). Teardown SIGTERMs it and requires exit status 0 and no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .sites import FORESYNC, STOP_TIMEOUT_S

ACCESS_KEY, SECRET = "FSTESTKEY0001", "s3cr3t/with+odd=chars"
STARTUP_TIMEOUT_S = 15.0
_ANNOUNCE_RE = re.compile(r"serving objects in .+ as (?P<scheme>https?)://(?P<host>[^\s:]+):(?P<port>\d+)")


@dataclass
class ObjectServer:
    proc: subprocess.Popen[bytes]
    log_path: Path
    store_dir: Path
    url: str
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"foresync objects serve ignored {sig.name}\n{self.log()}")


def start_object_server(tmp_path: Path, store_dir: Path, *, name: str = "s3",
                        tls_dir: Path | None = None, extra: Sequence[str] = (),
                        log_level: str = "info") -> ObjectServer:
    creds = tmp_path / "credentials"
    if not creds.exists():
        creds.write_text(f"# test credentials\n{ACCESS_KEY} {SECRET}\n")
    log_path = tmp_path / f"{name}.log"
    argv = [str(FORESYNC), "--log-level", log_level, "objects", "serve", "--dir", str(store_dir), "--listen", "127.0.0.1:0",
            "--credentials-file", str(creds), *(["--tls-dir", str(tls_dir)] if tls_dir else []),
            *extra]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        matches = list(_ANNOUNCE_RE.finditer(log_path.read_text(errors="replace")))
        if matches:
            match = matches[-1]
            port = int(match["port"])
            with socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT_S):
                pass
            url = f"{match['scheme']}://{'localhost' if tls_dir else '127.0.0.1'}:{port}"
            return ObjectServer(proc, log_path, store_dir, url, port)
        if proc.poll() is not None:
            pytest.fail(f"foresync objects serve exited {proc.returncode}\n{log_path.read_text()}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"foresync objects serve did not listen\n{log_path.read_text()}")


def boto3_client(url: str, *, access_key: str = ACCESS_KEY, secret: str = SECRET,
                 verify: str | bool = True) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret, region_name="us-east-1", verify=verify,
                        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))


def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for the aws CLI, s3cmd and rclone: our keys, no user config, and no
    AWS_CA_BUNDLE (rclone 1.60 refuses to start with it set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
               HOME=str(tmp_path))
    return env
