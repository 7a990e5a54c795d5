"""/metrics (issue 17): the state series beside the counters, a site label beside volume, the
standard process_* series, and a dashboard whose every query names a series /metrics exports."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_admin_status import primary_statistics, secondary_statistics

from foresync.admin.metrics import SiteMetrics
from foresync.admin.status import PrimaryView, SiteStatistics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _samples(statistics: SiteStatistics) -> dict[tuple[str, str], float]:
    text = SiteMetrics("vol0", lambda: statistics, site="siteA").render().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("process_"):
                samples[(sample.name, "")] = sample.value
                continue
            assert sample.labels["volume"] == "vol0", sample
            assert sample.labels["site"] == "siteA", sample  # every family, the estimate's too
            key = (sample.labels.get("role") or sample.labels.get("phase")
                   or sample.labels.get("capacity") or "")
            samples[(sample.name, key)] = sample.value
    return samples


def test_state_series_follow_status() -> None:
    p = _samples(primary_statistics())
    assert p[("foresync_role", "primary")] == 1 and p[("foresync_role", "secondary")] == 0
    assert p[("foresync_epoch", "")] == 3 and p[("foresync_split_brain", "")] == 1
    assert p[("foresync_consistent", "")] == 1
    assert p[("foresync_out_of_sync_extents", "")] == 6
    assert p[("foresync_out_of_sync_bytes", "")] == 6 << 20
    assert p[("foresync_nbd_connections", "")] == 2 and p[("foresync_verify_mismatches", "")] == 3
    assert p[("foresync_resync_total_bytes", "compare")] == 16 << 20
    assert p[("foresync_resync_done_bytes", "send")] == 1 << 20
    assert ("process_cpu_seconds_total", "") in p and ("process_resident_memory_bytes", "") in p
    assert p[("foresync_record_miss_ratio_estimate", "32")] == 0.5
    assert p[("foresync_failback_bound_bytes", "")] == 10 << 20
    assert p[("foresync_record_hits_total", "")] == 5 and p[("foresync_writes_total", "")] == 9
    s = _samples(secondary_statistics())
    assert s[("foresync_in_sync", "")] == 0 and s[("foresync_consistent", "")] == 0
    assert s[("foresync_role", "secondary")] == 1 and s[("foresync_resync_active", "")] == 1
    assert s[("foresync_resync_received_bytes", "")] == 7 << 20
    # The secondary reports the pass's progress too, measured from its side (issue 17).
    assert s[("foresync_resync_total_bytes", "send")] == 16 << 20
    assert s[("foresync_resync_done_bytes", "send")] == 8 << 20
    assert s[("foresync_resync_remaining_bytes", "")] == 8 << 20
    assert s[("foresync_failback_bound_bytes", "")] == 4 << 20  # the record, in bytes
    assert s[("foresync_record_hits_total", "")] == 0  # a secondary counts none


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
    exported = {name for name, _ in _samples(primary_statistics())} | {
        name for name, _ in _samples(secondary_statistics())}
    used = dashboard_series()
    assert len(used) >= 20, used
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries series /metrics does not export: {missing}"


def test_metrics_export_the_estimates_by_capacity() -> None:
    """(Moved from test_status_view.py.) The estimate family carries the site label the other
    families carry, beside its capacity."""
    statistics = primary_statistics()
    assert isinstance(statistics.view, PrimaryView)
    view = dataclasses.replace(statistics.view, miss_ratio_estimate=((20, 0.4), (80, 0.09)))
    text = SiteMetrics("vol0", lambda: dataclasses.replace(statistics, view=view),
                       site="siteA").render().decode()
    assert 'foresync_record_miss_ratio_estimate{capacity="80",site="siteA",volume="vol0"} 0.09' in text
