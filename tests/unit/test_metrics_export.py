"""/metrics (issue 17): the state series beside the counters, a site label beside volume, the
standard process_* series, and a dashboard whose every query names a series /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from foresync.admin.metrics import SiteMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _secondary_doc() -> dict[str, Any]:
    return {
        "role": "secondary", "epoch": 3, "mode": "lookahead", "link": "connected", "in_sync": False,
        "consistent": False, "split_brain": False, "record": {"extents": 4, "capacity": 64,
                                                              "extent_size_bytes": 1 << 20},
        "counters": {"writes": 0, "record_hits": 0, "record_misses": 0, "resync_bytes": 0},
        "lag": {"bytes": 0, "writes": 0, "seconds": 0.0},
        "resync": {"done_bytes": 0, "total_bytes": 0, "rate_bytes_per_s": 5, "active": 1,
                   "received_bytes": 7 << 20},
    }


def _primary_doc() -> dict[str, Any]:
    return {
        "role": "primary", "epoch": 3, "mode": "lookahead", "link": "connected", "in_sync": False,
        "split_brain": True, "record": {"extents": 4, "capacity": 64, "extent_size_bytes": 1 << 20},
        "counters": {"writes": 9, "record_hits": 5, "record_misses": 4, "resync_bytes": 0},
        "lag": {"bytes": 0, "writes": 0, "seconds": 0.0}, "out_of_sync_extents": 6,
        "nbd": {"connections": 2}, "verify": {"active": False, "mismatches": 3},
        "resync": {"done_bytes": 10, "total_bytes": 20, "rate_bytes_per_s": 1, "remaining_bytes": 10,
                   "active": 1, "compare_total_bytes": 16 << 20, "compare_done_bytes": 8 << 20,
                   "compare_rate_bytes_per_s": 1, "send_total_bytes": 2 << 20,
                   "send_done_bytes": 1 << 20, "send_rate_bytes_per_s": 1},
    }


def _samples(doc: dict[str, Any]) -> dict[tuple[str, str], float]:
    text = SiteMetrics("vol0", lambda: doc, site="siteA").render().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("process_"):
                samples[(sample.name, "")] = sample.value
                continue
            assert sample.labels["volume"] == "vol0" and sample.labels["site"] == "siteA", sample
            key = sample.labels.get("role") or sample.labels.get("phase") or ""
            samples[(sample.name, key)] = sample.value
    return samples


def test_state_series_follow_status() -> None:
    p = _samples(_primary_doc())
    assert p[("foresync_role", "primary")] == 1 and p[("foresync_role", "secondary")] == 0
    assert p[("foresync_epoch", "")] == 3 and p[("foresync_split_brain", "")] == 1
    assert p[("foresync_consistent", "")] == 1
    assert p[("foresync_out_of_sync_extents", "")] == 6
    assert p[("foresync_out_of_sync_bytes", "")] == 6 << 20
    assert p[("foresync_nbd_connections", "")] == 2 and p[("foresync_verify_mismatches", "")] == 3
    assert p[("foresync_resync_total_bytes", "compare")] == 16 << 20
    assert p[("foresync_resync_done_bytes", "send")] == 1 << 20
    assert ("process_cpu_seconds_total", "") in p and ("process_resident_memory_bytes", "") in p
    s = _samples(_secondary_doc())
    assert s[("foresync_in_sync", "")] == 0 and s[("foresync_consistent", "")] == 0
    assert s[("foresync_role", "secondary")] == 1 and s[("foresync_resync_active", "")] == 1
    assert s[("foresync_resync_received_bytes", "")] == 7 << 20


def dashboard_series() -> set[str]:
    """Every series name a dashboard query (or variable) uses."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in doc["panels"] for target in panel.get("targets", [])]
    exprs += [var.get("query", "") for var in doc["templating"]["list"]]
    names = set()
    for expr in exprs:
        names.update(re.findall(r"\b((?:foresync|process)_[a-z_]+)\b", expr))
    return names


def test_every_dashboard_query_names_an_exported_series() -> None:
    exported = {name for name, _ in _samples(_primary_doc())} | {
        name for name, _ in _samples(_secondary_doc())}
    used = dashboard_series()
    assert len(used) >= 20, used
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries series /metrics does not export: {missing}"
