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

from foresync.admin.events import RECORD_JUDGED_AFTER_WRITES
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


def _phase(label: str, done: int, total: int, rate: int) -> str:
    return (f"  {label:<8} {_bar(done, total)} {format_size(done)}/{format_size(total)} "
            f"at {format_size(rate)}/s, {_eta(max(0, total - done), rate)}")


def _resync_lines(resync: dict[str, Any]) -> list[str]:
    """A running resync: comparing and sending apart when the site reports them (a match
    sends nothing, so one send rate over every byte left overstated the ETA), else one bar."""
    if not (resync.get("total_bytes") and resync.get("remaining_bytes")):
        if resync.get("active") and "received_bytes" in resync:  # a secondary's own view
            return [f"  resync   receiving: {format_size(resync['received_bytes'])} so far at "
                    f"{format_size(resync.get('rate_bytes_per_s', 0))}/s"]
        return []
    if "compare_total_bytes" not in resync:
        return [_phase("resync", resync["done_bytes"], resync["total_bytes"],
                       resync["rate_bytes_per_s"])]
    lines = []
    if resync["compare_total_bytes"]:
        lines.append(_phase("compare", resync["compare_done_bytes"], resync["compare_total_bytes"],
                            resync["compare_rate_bytes_per_s"]))
    if resync["send_total_bytes"] or not resync["compare_total_bytes"]:
        send = _phase("send", resync["send_done_bytes"], resync["send_total_bytes"],
                      resync["send_rate_bytes_per_s"])
        still = resync["compare_total_bytes"] - resync["compare_done_bytes"]
        lines.append(send + (" (grows while comparing finds differences)" if still > 0 else ""))
    return lines


def verify_line(verify: dict[str, Any]) -> str:
    """``verify: 672/1024 extents, 672.0 MiB/1.0 GiB at 80.0 MiB/s, ETA 0:00:04, 0 mismatched``"""
    line = f"verify: {verify['done_extents']}/{verify['total_extents']} extents"
    if "total_bytes" in verify:
        done, total, rate = verify["done_bytes"], verify["total_bytes"], verify["rate_bytes_per_s"]
        line += f", {format_size(done)}/{format_size(total)} at {format_size(rate)}/s"
        if verify.get("active"):
            line += f", {_eta(total - done, rate)}"
    return f"{line}, {verify['mismatches']} mismatched"


def mismatch_list(verify: dict[str, Any]) -> str:
    """Mismatched extents with their byte offsets: ``3 (offset 3145728 = 3.0 MiB), ...``"""
    offsets = verify.get("mismatched_offsets") or [None] * len(verify["mismatched_extents"])
    shown = ", ".join(str(extent) if offset is None else
                      f"{extent} (offset {offset} = {format_size(offset)})"
                      for extent, offset in zip(verify["mismatched_extents"], offsets, strict=True))
    more = verify["mismatches"] - len(verify["mismatched_extents"])
    return shown + (f" and {more} more" if more > 0 else "")


def summary_line(name: str, doc: dict[str, Any]) -> str:
    """One volume in one line (``foresync status`` of a daemon with several volumes)."""
    group = doc.get("group")  # a consistency group's unit: name its members (issue 16 part 2)
    members = f"  members={','.join(m['volume'] for m in group['members'])}" if group else ""
    return (f"{name}  role={doc['role']}  epoch={doc['epoch']}  mode={doc['mode']}  "
            f"link={doc['link']}  in_sync={'yes' if doc['in_sync'] else 'no'}{members}")


def volume_doc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """One volume's part of a daemon's /status (``volumes``); a site of one volume without
    that key (an older daemon) is its own."""
    volumes = doc.get("volumes")
    if volumes is None:
        return doc
    if name not in volumes:
        raise ConfigError(f"the daemon serves no volume named {name!r} (it serves "
                          f"{', '.join(volumes) or 'none'}); has the config changed since it started?")
    part: dict[str, Any] = volumes[name]
    return part


def render_daemon(doc: dict[str, Any], details: bool) -> str:
    """``foresync status`` of a daemon: today's view for one volume; one line per volume for
    several (every volume's full view with ``details``)."""
    volumes = doc.get("volumes") or {}
    if len(volumes) == 1 or not volumes:
        name = next(iter(volumes), "")
        return render(name, volumes[name] if volumes else doc)
    if details:
        return "\n\n".join(render(name, part) for name, part in volumes.items())
    return "\n".join(summary_line(name, part) for name, part in volumes.items())


def _miss_trip_line(cnt: dict[str, Any], rtt_s: float | None) -> list[str]:
    """The primary's misses: what a MISS took to its ADDED, against the link's round trip. A
    trip far above the RTT waited somewhere: the secondary's `foresync status` says its share;
    the rest was the link (docs/operations.md, counters.miss_added_s)."""
    answered = cnt.get("record_misses_answered", 0)
    if not answered:
        return []
    trip = cnt.get("record_miss_round_trip_s", 0.0) / answered * 1000
    line = f"  misses   {answered} answered, {trip:.2f} ms each from MISS to ADDED"
    if rtt_s:
        line += f" ({trip - rtt_s * 1000:+.2f} ms beyond the link's rtt)"
    return [line]


def render(name: str, doc: dict[str, Any]) -> str:
    rec, cnt, lag = doc["record"], doc["counters"], doc.get("lag", {})
    extent = rec["extent_size_bytes"]
    lines = [summary_line(name, doc)]
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
        classified = cnt["record_hits"] + cnt["record_misses"]  # async mode: neither
        ratio = f"{cnt['record_hits'] / classified:.1%}" if classified else "n/a"
        lines.append(f"  writes   {writes}  hits {cnt['record_hits']}  misses {cnt['record_misses']}  "
                     f"hit ratio {ratio}")
        if doc["mode"] != "async":
            estimates = {int(c): m for c, m in rec.get("miss_ratio_estimate", {}).items()}
            missed = cnt["record_misses"] / writes if writes else None
            if missed is not None and not estimates and writes < RECORD_JUDGED_AFTER_WRITES:
                # A cold record misses every first write: one write is no verdict (as /events).
                lines.append(f"  record: {missed:.1%} of {writes} writes missed so far: too few "
                             f"to judge its size ({RECORD_JUDGED_AFTER_WRITES} needed)")
            else:
                lines.append("  " + advice(rec["capacity"], extent, missed, estimates))
            lines.extend(_miss_trip_line(cnt, doc.get("link_rtt_s")))
        lines.append(f"  lag      {format_size(lag.get('bytes', 0))} in {lag.get('writes', 0)} writes, "
                     f"{lag.get('seconds', 0.0):.2f} s")
        if doc.get("out_of_sync_extents"):
            oos = doc["out_of_sync_extents"]
            when = ("being copied" if doc["link"] == "connected"
                    else "copied when the link returns")
            lines.append(f"  out-of-sync {oos} extents, {format_size(oos * extent)} ({when})")
    else:
        consistent = "consistent" if doc.get("consistent", True) else "INCONSISTENT (sync not finished)"
        lines.append(f"  copy     {consistent}; applied through seq {doc.get('seq', {}).get('applied', 0)}")
        if cnt.get("misses_added"):
            answered, seconds = cnt["misses_added"], cnt.get("miss_added_s", 0.0)
            lines.append(f"  misses   {answered} answered here, {seconds / answered * 1000:.2f} ms each "
                         "from reading the MISS to sending its ADDED (this site's share of the trip)")
        if doc["link"] != "connected" and doc.get("disconnected_since"):
            lines.append("  record may be incomplete: the primary can write outside it while cut off")
    lines.extend(_resync_lines(doc.get("resync") or {}))
    verify = doc.get("verify") or {}
    if verify.get("active"):
        line = (f"  verify   {_bar(verify['done_extents'], verify['total_extents'])} "
                f"{verify['done_extents']}/{verify['total_extents']} extents")
        if "total_bytes" in verify:
            done, total = verify["done_bytes"], verify["total_bytes"]
            rate = verify.get("rate_bytes_per_s", 0)
            line += (f", {format_size(done)}/{format_size(total)} at {format_size(rate)}/s, "
                     f"{_eta(total - done, rate)}")
        lines.append(f"{line}; {verify['mismatches']} mismatched so far")
    elif verify.get("mismatches"):
        lines.append(f"  verify   last run found {verify['mismatches']} mismatched extents")
    if doc["role"] == "primary":  # a secondary sends no resync data
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
    lines.extend(_cluster_lines(doc.get("cluster")))
    return "\n".join(lines)


def _cluster_lines(cluster: dict[str, Any] | None) -> list[str]:
    """[cluster]: why this site is fenced or does not promote itself, and etcd's outdated mark."""
    if cluster is None:
        return []
    lines = []
    if cluster.get("reason"):
        lines.append(f"  cluster  {cluster['reason']}")
    mark = cluster.get("outdated")
    if mark:
        lines.append(f"  cluster  etcd marks the secondary outdated: site {mark['site']} (epoch "
                     f"{mark['epoch']}) answered writes without it (data generation "
                     f"{mark['generation']})")
    return lines
