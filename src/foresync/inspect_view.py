"""`foresync inspect`: a site's metadata, read offline, as a summary, a journal listing or JSON.

Read-only: safe while the site runs and on a journal a crash left torn (nothing is truncated).
``gather`` reads every file once into a plain document (what ``--json`` prints); ``render``
draws the summary a person reads: role, epoch, record size with its extents as ranges, journal
size, out-of-sync and undo state, preserved files. ``--entries`` adds one line per journal entry.
"""

from __future__ import annotations

import json
import os
from typing import Any

from foresync.daemon import metadata as site
from foresync.errors import ForesyncError, JournalCorruption
from foresync.journal import format as jfmt
from foresync.journal import undo
from foresync.journal.oos_format import runs_of
from foresync.units import format_size


def ranges_text(extents: set[int] | frozenset[int] | list[int]) -> str:
    """``0-3, 8, 10-11``: runs of consecutive extents."""
    return ", ".join(str(first) if count == 1 else f"{first}-{first + count - 1}"
                     for first, count in runs_of(set(extents))) or "none"


def _journal(meta_dir: str, entries: list[dict[str, Any]] | None) -> dict[str, Any]:
    path = os.path.join(meta_dir, site.JOURNAL_FILE)
    if not os.path.exists(path):
        return {"present": False}
    with open(path, "rb") as handle:
        data = handle.read()

    def show(pos: int, body: bytes, state: jfmt.RecordState) -> None:
        if entries is not None:
            entries.append({"position": pos, "kind": jfmt.EntryKind(body[0]).name,
                            "bytes": len(body), "record_extents": len(state.extents),
                            "ranges": len(state.ranges)})

    doc: dict[str, Any] = {"present": True, "bytes": len(data)}
    try:
        replayed = jfmt.replay(data, show)
    except JournalCorruption as exc:
        doc["damage"] = str(exc)
        return doc
    doc.update(volume_id=replayed.volume_id.hex(), entries=replayed.entries,
               valid_end=replayed.valid_end, torn_reason=replayed.torn_reason,
               damage=replayed.damage, record=sorted(replayed.state.extents),
               pending_ranges={str(seq): list(r) for seq, r in replayed.state.ranges.items()})
    return doc


def gather(meta_dir: str, extent_size: int | None = None, with_entries: bool = False) -> dict[str, Any]:
    """Everything ``inspect`` shows, as a JSON-able document. ConfigError if ``meta_dir`` holds
    no site.json."""
    doc_path = os.path.join(meta_dir, site.SITE_FILE)
    if not os.path.exists(doc_path):
        raise ForesyncError(f"no {site.SITE_FILE} in {meta_dir}: not a foresync metadata directory")
    with open(doc_path) as text:
        raw = json.load(text)
    history = raw.get("epoch_history") or []
    entries: list[dict[str, Any]] | None = [] if with_entries else None
    doc: dict[str, Any] = {
        "meta": meta_dir, "site": raw, "role": raw.get("role"),
        "epoch": len(history) if isinstance(history, list) else None,
        "consistent": bool(raw.get("consistent", True)) and not raw.get("new", False),
        "extent_size_bytes": extent_size, "journal": _journal(meta_dir, entries)}
    if entries is not None:
        doc["journal"]["entry_list"] = entries
    try:
        oos = site.load_oos(meta_dir, None)
    except ForesyncError as exc:
        doc["out_of_sync"] = {"present": True, "damage": str(exc)}
    else:
        doc["out_of_sync"] = ({"present": False} if oos is None else
                              {"present": True, "everything": oos.everything,
                               "extents": sorted(oos.extents)})
    undo_path = os.path.join(meta_dir, site.UNDO_FILE)
    if os.path.exists(undo_path):
        with open(undo_path, "rb") as handle:
            saved = undo.parse_for_inspect(handle.read())
        doc["undo"] = {"present": True, "extents": [e for e, _ in saved.entries],
                       "damage": saved.damage}
    else:
        doc["undo"] = {"present": False}
    doc["preserved"] = sorted(name for name in os.listdir(meta_dir)
                              if ".torn-" in name or ".damaged-" in name)
    return doc


def _size(count: int, extent_size: int | None) -> str:
    return f" ({format_size(count * extent_size)})" if extent_size else ""


def render(doc: dict[str, Any]) -> str:
    raw, journal, es = doc["site"], doc["journal"], doc["extent_size_bytes"]
    state = "consistent" if doc["consistent"] else (
        "NEW (needs a full sync)" if raw.get("new") else "INCONSISTENT (a resync did not finish)")
    identity = raw.get("volume_id") or "not yet adopted"
    lines = [f"{site.SITE_FILE}: role {doc['role']}, epoch {doc['epoch']}, {state}; volume identity "
             f"{identity}"]
    if raw.get("metadata_damage"):
        lines.append(f"  METADATA DAMAGE: {raw['metadata_damage']}")
    if raw.get("stale"):
        lines.append(f"  stale extents: {ranges_text(raw['stale'])}")
    if not journal["present"]:
        lines.append(f"{site.JOURNAL_FILE}: none")
    elif "volume_id" not in journal:
        lines.append(f"{site.JOURNAL_FILE}: {format_size(journal['bytes'])}")
        lines.append(f"  DAMAGED: {journal['damage']}; the next start treats every extent as "
                     "possibly different")
    else:
        lines.append(f"{site.JOURNAL_FILE}: {format_size(journal['bytes'])}, {journal['entries']} "
                     f"whole entries, valid to byte {journal['valid_end']}")
        for entry in journal.get("entry_list", []):
            lines.append(f"  @{entry['position']:<10} {entry['kind']:<11} {entry['bytes']:>7} bytes  "
                         f"record now {entry['record_extents']} extents, {entry['ranges']} ranges")
        if journal["torn_reason"]:
            lines.append(f"  TORN TAIL at byte {journal['valid_end']}: {journal['torn_reason']} "
                         f"({journal['bytes'] - journal['valid_end']} bytes; the next start "
                         "preserves them aside)")
        if journal["damage"]:
            lines.append(f"  DAMAGED at byte {journal['valid_end']}: {journal['damage']}; the next "
                         "start treats every extent as possibly different and keeps the file aside")
        record = journal["record"]
        lines.append(f"  record: {len(record)} extents{_size(len(record), es)}: {ranges_text(record)}")
        if journal["pending_ranges"]:
            lines.append(f"  pending ranges (seq: offset+length): {journal['pending_ranges']}")
    oos = doc["out_of_sync"]
    if "damage" in oos:
        lines.append(f"{site.OOS_FILE}: DAMAGED: {oos['damage']}")
    elif not oos["present"]:
        lines.append(f"{site.OOS_FILE}: none (a primary takes a missing one as every extent out of sync)")
    else:
        every = "EVERY extent (a full copy is pending), besides " if oos["everything"] else ""
        count = len(oos["extents"])
        if not count and not every:
            lines.append(f"{site.OOS_FILE}: no extent out of sync")
        else:
            lines.append(f"{site.OOS_FILE}: {every}{count} extents{_size(count, es)}: "
                         f"{ranges_text(oos['extents'])}")
    saved = doc["undo"]
    if saved["present"]:
        lines.append(f"{site.UNDO_FILE}: {len(saved['extents'])} saved extents: "
                     f"{ranges_text(saved['extents'])} (an unfinished resync: rolled back on the next "
                     "start or promote)")
        if saved["damage"]:
            lines.append(f"  DAMAGED: {saved['damage']}; the rollback cannot be trusted: the next "
                         "start keeps the copy inconsistent with every extent in doubt")
    else:
        lines.append(f"{site.UNDO_FILE}: none")
    for name in doc["preserved"]:
        kind = "torn tail" if ".torn-" in name else "damaged file"
        lines.append(f"preserved {kind}: {name}")
    return "\n".join(lines)
