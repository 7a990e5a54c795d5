"""`foresync status`: one site's /status, fetched and drawn for a person.

The first line keeps a fixed ``key=value`` form (scripts grep it); the rest is a compact view:
link and RTT, record fill and worst-case failback, lag in bytes, writes and seconds, hit ratio,
and a progress bar with rate and ETA for a resync or a verify.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from foresync.config import SiteConfig
from foresync.errors import ConfigError
from foresync.record.estimate import advice
from foresync.units import format_size

BAR_WIDTH = 30


def fetch_status(cfg: SiteConfig) -> dict[str, Any]:
    host, port = cfg.admin_listen
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"site {cfg.name} is not answering on {url} ({reason}); is "
                          f"`foresync run --config {cfg.path}` running?") from None


def _bar(done: float, total: float) -> str:
    fraction = 0.0 if total <= 0 else min(1.0, done / total)
    filled = round(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:6.1%}"


def _eta(remaining: float, rate: float) -> str:
    if rate <= 0:
        return "ETA unknown"
    seconds = int(remaining / rate)
    return f"ETA {seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def render(name: str, doc: dict[str, Any]) -> str:
    rec, cnt, lag = doc["record"], doc["counters"], doc.get("lag", {})
    extent = rec["extent_size_bytes"]
    lines = [f"{name}  role={doc['role']}  epoch={doc['epoch']}  mode={doc['mode']}  "
             f"link={doc['link']}  in_sync={'yes' if doc['in_sync'] else 'no'}"]
    link = f"  link     {doc['link']}"
    if doc.get("link_rtt_s"):
        link += f", rtt {doc['link_rtt_s'] * 1000:.2f} ms"
    if doc.get("split_brain"):
        link += "  SPLIT BRAIN: run `foresync resolve --discard-local` on the losing site"
    lines.append(link)
    bound = doc.get("failback_bound_bytes", doc.get("worst_case_divergence_bytes",
                                                    rec["extents"] * extent))
    fill = rec["extents"] / rec["capacity"] if rec["capacity"] else 0
    lines.append(f"  record   {rec['extents']}/{rec['capacity']} extents of {format_size(extent)} "
                 f"({fill:.0%} full); worst-case failback {format_size(bound)}")
    if doc["role"] == "primary":
        writes = cnt["writes"]
        ratio = f"{cnt['record_hits'] / writes:.1%}" if writes else "n/a"
        lines.append(f"  writes   {writes}  hits {cnt['record_hits']}  misses {cnt['record_misses']}  "
                     f"hit ratio {ratio}")
        if doc["mode"] != "async":
            estimates = {int(c): m for c, m in rec.get("miss_ratio_estimate", {}).items()}
            missed = cnt["record_misses"] / writes if writes else None
            lines.append("  " + advice(rec["capacity"], extent, missed, estimates))
        lines.append(f"  lag      {format_size(lag.get('bytes', 0))} in {lag.get('writes', 0)} writes, "
                     f"{lag.get('seconds', 0.0):.2f} s")
        if doc.get("out_of_sync_extents"):
            lines.append(f"  out-of-sync {doc['out_of_sync_extents']} extents (copied when the link returns)")
    else:
        consistent = "consistent" if doc.get("consistent", True) else "INCONSISTENT (sync not finished)"
        lines.append(f"  copy     {consistent}; applied through seq {doc.get('seq', {}).get('applied', 0)}")
        if doc["link"] != "connected" and doc.get("disconnected_since"):
            lines.append("  record may be incomplete: the primary can write outside it while cut off")
    resync = doc.get("resync") or {}
    if resync.get("total_bytes") and resync.get("remaining_bytes"):
        done, total, rate = resync["done_bytes"], resync["total_bytes"], resync["rate_bytes_per_s"]
        lines.append(f"  resync   {_bar(done, total)} {format_size(done)}/{format_size(total)} "
                     f"at {format_size(rate)}/s, {_eta(total - done, rate)}")
    verify = doc.get("verify") or {}
    if verify.get("active"):
        lines.append(f"  verify   {_bar(verify['done_extents'], verify['total_extents'])} "
                     f"{verify['mismatches']} mismatched so far")
    elif verify.get("mismatches"):
        lines.append(f"  verify   last run found {verify['mismatches']} mismatched extents")
    lines.append(f"  resync sent {format_size(cnt['resync_bytes'])} since start")
    security = doc.get("security")
    if security is not None:
        nbd = ("TLS + client certificates" if security.get("nbd_tls_verify_client")
               else "TLS" if security.get("nbd_tls") else "plaintext")
        link = " + ".join(name for name, on in (("TLS", security.get("link_tls")),
                                                ("shared secret", security.get("link_secret"))) if on)
        lines.append(f"  security NBD {nbd}; link {link or 'plaintext, unauthenticated'}; admin "
                     f"{'token required for changes' if security.get('admin_token') else 'no token'}")
    if doc.get("link_error"):
        lines.append(f"  last link error: {doc['link_error']}")
    if doc.get("secondary_error"):
        lines.append(f"  SECONDARY CANNOT WRITE: {doc['secondary_error']}; free room there, it "
                     "resumes by itself")
    if doc.get("storage_error"):
        lines.append(f"  CANNOT WRITE: this site {doc['storage_error']}; free room, it resumes by itself")
    if cnt.get("storage_errors"):
        lines.append(f"  storage errors {cnt['storage_errors']} since start (writes that failed here)")
    return "\n".join(lines)
