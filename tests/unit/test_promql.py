"""The dashboard's PromQL subset (testing/promql.py), which draws docs/img/dashboard.png."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_admin_status import primary_statistics, secondary_statistics

from foresync.admin.metrics import SiteMetrics
from foresync.admin.status import PrimaryView
from foresync.testing.promql import Store, compile_query

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
JOB = {"job": "foresync-a", "instance": "127.0.0.1:1"}


def store_of(*scrapes: tuple[float, str]) -> Store:
    store = Store()
    for now, text in scrapes:
        store.add_scrape(now, text, JOB)
    return store


def test_selectors_rates_sums_and_arithmetic_follow_prometheus() -> None:
    store = store_of((0.0, 'c_total{volume="v",site="a"} 10\nc_total{volume="w",site="a"} 5\n'),
                     (10.0, 'c_total{volume="v",site="a"} 30\nc_total{volume="w",site="a"} 2\n'))
    rate = compile_query('rate(c_total{volume=~"$volume"}[1m])')(store, 10.0)
    assert isinstance(rate, dict)
    by_volume = {dict(k)["volume"]: v for k, v in rate.items()}
    assert by_volume == {"v": 2.0, "w": 0.2}  # the reset counts the value after it
    assert compile_query('c_total{volume="v"}')(store, 5.0) == {
        (("instance", "127.0.0.1:1"), ("job", "foresync-a"), ("site", "a"), ("volume", "v")): 10.0}
    assert compile_query("sum by (site) (c_total)")(store, 10.0) == {(("site", "a"),): 32.0}
    assert list(compile_query('c_total / clamp_min(c_total, 1) == 1')(store, 10.0).values()) == [1.0, 1.0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not covered"):
        compile_query("absent(c_total)")


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    text = "".join(f'h_bucket{{le="{le}"}} {n}\n' for le, n in (("0.001", 0), ("0.01", 100), ("+Inf", 100)))
    store = store_of((0.0, text.replace(" 100", " 0")), (10.0, text))
    value = compile_query("histogram_quantile(0.5, sum by (le) (rate(h_bucket[1m])))")(store, 10.0)
    assert value == {(): pytest.approx(0.0055)}


def test_every_dashboard_panel_evaluates_on_real_metrics() -> None:
    """Each query of each panel, over two scrapes of /metrics rendered from real statistics a
    second apart, gives at least one series (so render.py draws something for every panel)."""
    scrapes = []
    for now, writes in ((0.0, 9), (1.0, 109)):
        for role, stats in (("a", primary_statistics()), ("b", secondary_statistics())):
            if isinstance(stats.view, PrimaryView):
                core = dataclasses.replace(stats.view.core, writes=writes, record_hits=writes - 4)
                stats = dataclasses.replace(stats, view=dataclasses.replace(stats.view, core=core))
            metrics = SiteMetrics("vol0", lambda stats=stats: stats, site=role)  # type: ignore[misc]
            for _ in range(writes):
                metrics.write_latency.observe(0.002)
            scrapes.append((now, metrics.render().decode(), role))
    store = Store()
    for now, text, role in scrapes:
        store.add_scrape(now, text, {"job": f"foresync-{role}", "instance": role})
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        for target in panel.get("targets", []):
            value = compile_query(target["expr"])(store, 1.0)
            assert isinstance(value, dict) and value, (panel["title"], target["expr"])
