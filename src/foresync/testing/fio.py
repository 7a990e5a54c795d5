"""Running fio's nbd engine and reading its JSON report: one helper for the benches and the demo."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any


def run_fio_json(argv: Sequence[str], timeout_s: float, what: str = "") -> dict[str, Any]:
    """Run fio (``--output-format=json`` must be in ``argv``) and return its first job.

    The nbd engine prints "fio: connected to NBD server" ahead of the JSON, so the report is
    read from the first ``{``. A non-zero exit or a job error is a RuntimeError naming ``what``."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout_s)
    where = f" against {what}" if what else ""
    if result.returncode != 0:
        raise RuntimeError(f"fio failed ({result.returncode}){where}: {result.stderr.strip()}")
    report: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{"):])
    job: dict[str, Any] = report["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio job error {job['error']}{where}")
    return job
