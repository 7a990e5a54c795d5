"""Role changes a site makes on disk: promote, step down, discard local changes.

Each writes the site metadata atomically (and the out-of-sync set or a fresh record journal
first, where one is needed), so a crash in the middle leaves the site either as it was or as it
becomes, never in between: the metadata file is the last thing replaced.
"""

from __future__ import annotations

import logging
import os

from foresync.config import SiteConfig
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.record import runs as extent_runs
from foresync.record.predict import extents_of
from foresync.replication.roles import new_epoch_id
from foresync.site import JOURNAL_FILE, SiteMeta, load_oos, store, store_oos

log = logging.getLogger(__name__)


def journal_path(cfg: SiteConfig) -> str:
    return os.path.join(cfg.meta, JOURNAL_FILE)


def failback_set(cfg: SiteConfig, meta: SiteMeta, state: RecordState) -> set[int]:
    """Every extent where this secondary may differ from the primary it follows (claim 8):
    the durable record, pending large ranges, extents already known stale, and the set of a
    resync pass that did not finish (issue 19)."""
    extents = set(state.extents) | set(meta.stale) | set(extent_runs.expand(state.resync))
    for offset, length in state.ranges.values():
        extents.update(extents_of(offset, length, cfg.extent_size))
    return extents


def promote(cfg: SiteConfig, meta: SiteMeta, state: RecordState) -> tuple[SiteMeta, set[int]]:
    """Make this secondary the primary of a new epoch. Its record becomes the failback set,
    stored as its out-of-sync set, which its own new writes then join (claims 7-8)."""
    failback = failback_set(cfg, meta, state)
    store_oos(cfg.meta, failback)
    promoted = meta.update(role="primary", epoch_history=(*meta.epoch_history, new_epoch_id()),
                           consistent=True, new=False, discard_local=False, stale=())
    store(cfg.meta, promoted)
    log.warning("promoted to primary, epoch %d; failback set %d extents", promoted.epoch, len(failback))
    return promoted, failback


def step_down(cfg: SiteConfig, meta: SiteMeta, history: tuple[int, ...] | None = None,
              stale: set[int] | None = None, discard_local: bool = False) -> SiteMeta:
    """Become a secondary: with ``history`` (a newer primary's, adopted at once) or keeping ours.

    The record journal starts empty: what this site wrote as primary is either known to the new
    primary already (our out-of-sync set went with our HELLO) or listed in ``stale``."""
    RecordJournal.create(journal_path(cfg), meta.volume_id or bytes(16)).close()
    store_oos(cfg.meta, set())
    demoted = meta.update(role="secondary", epoch_history=history or meta.epoch_history,
                          discard_local=discard_local,
                          stale=tuple(sorted(stale or ())) or meta.stale)
    store(cfg.meta, demoted)
    return demoted


def discard_local(cfg: SiteConfig, meta: SiteMeta, extra: set[int] | None = None) -> SiteMeta:
    """``resolve --discard-local``: after a split brain this site gives up its changes. Every
    extent it changed since the histories diverged (its out-of-sync set, which holds its failback
    set and its writes since) becomes stale, to be copied from the winner, whose history it
    adopts on the next connect."""
    changed = load_oos(cfg.meta) | set(meta.stale) | (extra or set())
    return step_down(cfg, meta, stale=changed, discard_local=True)
