"""Draw docs/grafana-dashboard.json from a real pair, without Grafana (``make dashboard``).

Grafana is not installable on the machines this project builds on, so this script stands in for
it, honestly: it runs two real ``foresync run`` sites on loopback (the link through the
user-space proxy, 2 ms each way, held to 40 MB/s), drives them through an operator's day while
scraping both sites' ``/metrics`` every second, as Prometheus would (``job`` and ``instance``
labels added), then evaluates every panel's query exactly as the dashboard JSON writes it
(``foresync.testing.promql``: the PromQL subset the dashboard uses; anything else fails) and
draws the panels where the dashboard's grid puts them.

The day, marked on every time series:
1. the primary starts alone and fio writes 96 MiB (the secondary is down: out of sync);
2. the secondary starts: its initial sync (compare, then send) runs through the proxy;
3. fio: 4 KiB random writes at queue depth 4 over 128 MiB (twice the record), for 30 s;
4. in the middle of it the link is cut for 5 s, then restored: a resync follows;
5. an online verify.

Usage: ``python contrib/grafana/render.py [-o docs/img/dashboard.png] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from foresync.testing.chaos import Site
from foresync.testing.processes import free_port
from foresync.testing.promql import Store, compile_query
from foresync.units import format_size

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
SCRAPE_S = 1.0
STEP_S = 1.0
GRID_ROW_PX = 30  # Grafana's grid: 24 columns, rows of 30 px


class Scraper(threading.Thread):
    """GET /metrics of each site every SCRAPE_S seconds into a Store."""

    def __init__(self, sites: list[Site], store: Store) -> None:
        super().__init__(name="scraper", daemon=True)
        self.sites, self.store = sites, store
        self.stop = threading.Event()
        self.started_at = time.time()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            for site in self.sites:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{site.admin_port}/metrics",
                                                timeout=2) as answer:
                        text = answer.read().decode()
                except OSError:
                    continue  # a site that is down has no samples, as in Prometheus
                self.store.add_scrape(now, text, {"job": f"foresync-{site.name}",
                                                  "instance": f"127.0.0.1:{site.admin_port}"})
            self.stop.wait(max(0.0, SCRAPE_S - (time.time() - now)))


def _proxy(listen: int, target: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "foresync.testing.proxy", "--listen",
                             f"127.0.0.1:{listen}", "--target", f"127.0.0.1:{target}",
                             "--delay-ms", "2", "--rate", "40MB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fio(port: int, *args: str) -> None:
    subprocess.run(["fio", "--name=day", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/",
                    *args], check=True, capture_output=True, timeout=600)


def _wait(what: str, check: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_day(root: Path) -> tuple[Store, float, list[tuple[float, str]]]:
    """The scenario above; returns the scrapes, the start time and the marks."""
    ports = {s: {k: free_port() for k in ("nbd", "admin", "link")} for s in ("a", "b")}
    via = {s: free_port() for s in ("a", "b")}
    proxies = [_proxy(via[s], ports[s]["link"]) for s in ("a", "b")]
    a = Site(root, "a", ports["a"], via["b"], "lookahead", size="256MiB", extent_size="1MiB")
    b = Site(root, "b", ports["b"], via["a"], "lookahead", size="256MiB", extent_size="1MiB")
    store = Store()
    scraper = Scraper([a, b], store)
    marks: list[tuple[float, str]] = []

    def mark(text: str) -> None:
        marks.append((time.time(), text))
        print(f"{time.time() - scraper.started_at:6.1f} s  {text}", flush=True)

    try:
        a.cli("init", "--role", "primary")
        b.cli("init", "--role", "secondary")
        a.start()
        scraper.start()
        time.sleep(3)
        mark("fio: 96 MiB, secondary down")
        _fio(a.nbd_port, "--rw=write", "--bs=1M", "--size=96M", "--iodepth=4")
        time.sleep(2)
        mark("secondary starts: initial sync")
        b.start()
        _wait("the initial sync", lambda: (a.status() or {}).get("in_sync") is True)
        time.sleep(2)
        mark("fio: 4k random writes")
        writer = threading.Thread(target=_fio, args=(
            a.nbd_port, "--rw=randwrite", "--bs=4k", "--iodepth=4", "--size=128M",
            "--time_based", "--runtime=30", "--rate_iops=1500"))
        writer.start()
        time.sleep(10)
        mark("link cut")
        proxies[1].send_signal(signal.SIGUSR1)  # the secondary's listener, reached via b's proxy
        time.sleep(5)
        mark("link restored")
        proxies[1].send_signal(signal.SIGUSR2)
        writer.join()
        _wait("in sync after the cut", lambda: (a.status() or {}).get("in_sync") is True)
        time.sleep(2)
        mark("verify")
        a.cli("verify")
        _wait("the verify", lambda: not ((a.status() or {}).get("verify") or {}).get("active"))
        time.sleep(8)
    finally:
        scraper.stop.set()
        scraper.join(timeout=5)
        for site in (a, b):
            try:
                site.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                site.kill9()
        for proxy in proxies:
            proxy.terminate()
            proxy.wait(timeout=10)
    return store, scraper.started_at, marks


# -- drawing ----------------------------------------------------------------------------------------

def _legend(fmt: str, labels: dict[str, str]) -> str:
    text = fmt
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text.replace("{{", "").replace("}}", "").strip() or "value"


def _format(unit: str | None, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "bytes":
        return format_size(int(value))
    if unit == "s":
        return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.1f} s"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "bool":
        return "yes" if value else "no"
    if unit == "ops":
        return f"{value:,.0f}/s"
    return f"{value:g}"


def _series(expr: str, store: Store, times: list[float]) -> dict[tuple[tuple[str, str], ...],
                                                                  list[float]]:
    query = compile_query(expr)
    out: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for i, t in enumerate(times):
        value = query(store, t)
        assert isinstance(value, dict), expr
        for labels, v in value.items():
            out.setdefault(labels, [math.nan] * len(times))[i] = v
    return out


def draw(store: Store, start: float, marks: list[tuple[float, str]], output: Path) -> None:
    doc = json.loads(DASHBOARD.read_text())
    end = max(at for points in store.series.values() for at, _ in points)
    times = [start + i * STEP_S for i in range(int((end - start) / STEP_S) + 1)]
    xs = [t - start for t in times]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in doc["panels"])
    plt.style.use("dark_background")
    fig = plt.figure(figsize=(24, rows * GRID_ROW_PX / 60), dpi=60)
    grid = fig.add_gridspec(rows, 24, hspace=1.6, wspace=1.2, top=0.975, bottom=0.02)
    for panel in doc["panels"]:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_title(panel["title"], loc="left", fontsize=13)
        units = _units(panel)
        curves = [(target, labels, values) for target in panel.get("targets", [])
                  for labels, values in _series(target["expr"], store, times).items()]
        if panel["type"] == "stat":
            _draw_stat(ax, units, curves)
        else:
            _draw_series(ax, units, curves, xs, [(at - start, text) for at, text in marks])
    fig.suptitle(f"{doc.get('title', 'foresync')}: a real pair, scraped every {SCRAPE_S:g} s, each "
                 f"panel's query evaluated as {DASHBOARD.name} writes it (contrib/grafana/render.py)",
                 fontsize=16, y=0.995)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight")
    print(f"wrote {output}")


def _units(panel: dict[str, Any]) -> dict[str, tuple[str | None, bool]]:
    """refId -> (unit, on the right axis): the panel's default, then its byFrameRefID overrides."""
    config = panel.get("fieldConfig", {})
    default = config.get("defaults", {}).get("unit")
    units = {t["refId"]: (default, False) for t in panel.get("targets", [])}
    for override in config.get("overrides", []):
        if override.get("matcher", {}).get("id") != "byFrameRefID":
            continue
        ref = override["matcher"]["options"]
        unit, right = units.get(ref, (default, False))
        for prop in override.get("properties", []):
            if prop["id"] == "unit":
                unit = prop["value"]
            elif prop["id"] == "custom.axisPlacement":
                right = prop["value"] == "right"
        units[ref] = (unit, right)
    return units


def _draw_stat(ax: Any, units: dict[str, tuple[str | None, bool]], curves: list[Any]) -> None:
    ax.axis("off")
    lines = []
    for target, labels, values in curves:
        unit = units[target["refId"]][0]
        last = next((v for v in reversed(values) if not math.isnan(v)), math.nan)
        lines.append(f"{_legend(target.get('legendFormat', ''), dict(labels))}: {_format(unit, last)}")
    ax.text(0.02, 0.5, "\n".join(lines) or "no data", fontsize=13, va="center",
            transform=ax.transAxes, color="#73bf69")


def _draw_series(ax: Any, units: dict[str, tuple[str | None, bool]], curves: list[Any],
                 xs: list[float], marks: list[tuple[float, str]]) -> None:
    right_unit = next((unit for unit, right in units.values() if right), None)
    twin = ax.twinx() if any(right for _, right in units.values()) else None
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for target, labels, values in curves:
        side = twin if twin is not None and units[target["refId"]][1] else ax
        side.plot(xs, values, label=_legend(target.get("legendFormat", ""), dict(labels)),
                  linewidth=1.6, color=next(colours))
    if twin is not None:
        twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _format(right_unit, v)))
        twin.legend(fontsize=8, loc="upper right")
    unit = next((unit for unit, right in units.values() if not right), None)
    for at, text in marks:
        ax.axvline(at, color="#888888", linewidth=0.8, linestyle=":")
        ax.text(at, 1.0, text, rotation=90, fontsize=8, va="top", ha="right", color="#aaaaaa",
                transform=ax.get_xaxis_transform())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _format(unit, v)))
    ax.set_xlabel("seconds", fontsize=9)
    ax.grid(alpha=0.2)
    if curves:
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--keep", type=Path, help="run the sites in this directory and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="foresync-dashboard-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        store, start, marks = run_day(root)
        draw(store, start, marks, args.output)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
