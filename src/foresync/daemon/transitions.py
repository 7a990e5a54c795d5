"""Role changes a site makes on disk: promote, step down, discard local changes; and what a
secondary does when its own metadata cannot be trusted.

Each role change writes the site metadata atomically (and the out-of-sync set or a fresh record
journal first, where one is needed), so a crash in the middle leaves the site either as it was
or as it becomes, never in between: the metadata file is the last thing replaced.

Damaged or missing metadata (issue 12) widens, never shrinks, what may differ: ``widen`` marks
the secondary inconsistent with a ``metadata_damage`` reason, durably, before the damaged file is
moved aside (``<file>.damaged-<n>``, kept for a post-mortem) and replaced. So a crash in between
finds the damage again, or the widened metadata: never a clean-looking empty record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from foresync.config import SiteConfig
from foresync.daemon.metadata import JOURNAL_FILE, SiteMeta, load_oos, store, store_oos
from foresync.daemon.results import Promoted
from foresync.errors import ForesyncError, RequestRefused
from foresync.journal import format as jfmt
from foresync.journal.durable import move_aside
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog, roll_back
from foresync.replication.epochs import Lineage, new_epoch_id
from foresync.replication.failback import failback_set as record_failback_set
from foresync.storage.backend import ImageBackend

log = logging.getLogger(__name__)


def journal_path(cfg: SiteConfig) -> str:
    return os.path.join(cfg.meta, JOURNAL_FILE)


def extent_count(cfg: SiteConfig) -> int:
    return -(-cfg.size // cfg.extent_size)


def failback_set(cfg: SiteConfig, meta: SiteMeta, state: RecordState) -> set[int]:
    """Every extent where this secondary may differ from the primary it follows (claim 8; see
    replication/failback.py): its durable record and the extents already known stale. With
    ``meta.metadata_damage`` that is every extent (``promote`` stores it as "everything")."""
    return record_failback_set(state, cfg.extent_size, meta.stale)


def promote(cfg: SiteConfig, meta: SiteMeta, state: RecordState,
            epoch_id: int | None = None) -> tuple[SiteMeta, int]:
    """Make this secondary the primary of a new epoch (``epoch_id``: the one etcd registered for
    us, [cluster]; else a fresh one). Its record becomes the failback set,
    stored as its out-of-sync set, which its own new writes then join (claims 7-8). Returns the
    new metadata and the failback set's size in extents (the whole volume if it was damaged)."""
    failback = failback_set(cfg, meta, state)
    everything = bool(meta.metadata_damage)
    store_oos(cfg.meta, failback, everything=everything)
    promoted = meta.with_lineage(meta.lineage.promoted(epoch_id or new_epoch_id())).update(
        role="primary", consistent=True, new=False, discard_local=False, stale=(),
        metadata_damage="")
    store(cfg.meta, promoted)
    count = extent_count(cfg) if everything else len(failback)
    if everything:
        log.error("promoted to primary, epoch %d, from a copy whose metadata was damaged (%s): "
                  "the failback set is the whole volume (%d extents)", promoted.epoch,
                  meta.metadata_damage, count)
    else:
        log.warning("promoted to primary, epoch %d; failback set %d extents", promoted.epoch, count)
    return promoted, count


INCONSISTENT_PROMOTE_ERROR = (
    "this copy is inconsistent (a full sync or resync into it has not finished), so it may hold a "
    "mix of old and new data; use --force to promote it anyway")


def can_roll_back(meta: SiteMeta, undo: UndoLog) -> bool:
    """An unfinished resync into this (once consistent) copy left an undo log to undo it with."""
    return not meta.consistent and not meta.new and os.path.exists(undo.path)


def promote_refusal(meta: SiteMeta, force: bool, rollback_pending: bool = False) -> str:
    """Why this copy may not be promoted without ``--force`` ("" if it may): its metadata is
    damaged, or it is inconsistent with no rollback (``rollback_pending``) to a consistent one."""
    if force:
        return ""
    if meta.metadata_damage:
        return damaged_promote_error(meta)
    if (meta.new or not meta.consistent) and not rollback_pending:
        return INCONSISTENT_PROMOTE_ERROR
    return ""


@dataclass(frozen=True, slots=True)
class Promotion:
    """What ``roll_back_then_promote`` did: the site's metadata now, and either the failback
    set's size or why the site is still secondary."""

    meta: SiteMeta
    failback_extents: int = 0
    restored: int | None = None  # extents an unfinished resync's rollback restored (None: none ran)
    refusal: str = ""

    def result(self, cfg: SiteConfig) -> Promoted:
        """The answer to a promote request: ``Promoted``, or ``RequestRefused`` with the reason."""
        if self.refusal:
            raise RequestRefused(self.refusal)
        return Promoted(self.meta.epoch, self.failback_extents,
                        self.failback_extents * cfg.extent_size)


def roll_back_then_promote(cfg: SiteConfig, meta: SiteMeta, state: RecordState,
                           image: Callable[[], ImageBackend], undo: UndoLog, force: bool,
                           epoch_id: int | None = None) -> Promotion:
    """Failover (claim 7) for a secondary whose writers have stopped (the daemon drained them;
    offline, none run). An unfinished resync is rolled back first, so the copy promoted is a
    consistent, older one rather than a mix, and what was restored is copied again at failback;
    then the refusals are checked again (a damaged undo log leaves the copy inconsistent, every
    extent in doubt), and only then is the new role written. ``image()`` gives the image, called
    only for a rollback."""
    restored = None
    if can_roll_back(meta, undo):
        try:
            meta, restored = roll_back_unfinished_resync(cfg, meta, image(), undo)
        except ForesyncError as exc:
            return Promotion(meta, refusal=f"cannot roll back the unfinished resync: {exc}; "
                                           "still secondary")
    refusal = promote_refusal(meta, force)
    if refusal:
        return Promotion(meta, restored=restored, refusal=refusal)
    promoted, failback = promote(cfg, meta, state, epoch_id)
    return Promotion(promoted, failback, restored)


def step_down(cfg: SiteConfig, meta: SiteMeta, lineage: Lineage | None = None,
              stale: set[int] | None = None, discard_local: bool = False) -> SiteMeta:
    """Become a secondary: with ``lineage`` (a newer primary's: its epochs now, its data
    generations once the failback completes) or keeping ours.

    The record journal starts empty: what this site wrote as primary is either known to the new
    primary already (our out-of-sync set went with our HELLO) or listed in ``stale``."""
    RecordJournal.create(journal_path(cfg), meta.volume_id or bytes(16)).close()
    store_oos(cfg.meta, set())
    # The epochs at once; the data generations only once the failback has brought the newer
    # primary's data here (ResyncFinished): a promotion before that must not claim them.
    epochs = lineage.epochs if lineage is not None else meta.epoch_history
    demoted = meta.update(epoch_history=epochs, generations=meta.lineage.data,
                          role="secondary", discard_local=discard_local,
                          stale=tuple(sorted(stale or ())) or meta.stale)
    store(cfg.meta, demoted)
    return demoted


def discard_local(cfg: SiteConfig, meta: SiteMeta, extra: set[int] | None = None) -> SiteMeta:
    """``resolve --discard-local``: after a split brain this site gives up its changes. Every
    extent it changed since the histories diverged (its out-of-sync set, which holds its failback
    set and its writes since) becomes stale, to be copied from the winner, whose history it
    adopts on the next connect."""
    stored = load_oos(cfg.meta, extent_count(cfg))
    changed = set(stored.extents if stored is not None else ()) | set(meta.stale) | (extra or set())
    demoted = step_down(cfg, meta, stale=changed, discard_local=True)
    if stored is not None and stored.everything:
        demoted = widen(cfg, demoted, "its local changes were discarded while every extent was out "
                                      "of sync")
    return demoted


# -- damaged or missing metadata (issue 12) -----------------------------------------------------------


def damaged_promote_error(meta: SiteMeta) -> str:
    return (f"{meta.metadata_damage}: this copy cannot tell where it differs from the old "
            "primary's, so its failback set would be the whole volume; use --force to promote "
            "it anyway")


def widen(cfg: SiteConfig, meta: SiteMeta, reason: str) -> SiteMeta:
    """This secondary can no longer bound where its copy differs from the primary's: every
    extent may. Durably inconsistent (the next connect compares every extent, promote needs
    ``--force``) with the reason kept for /status and the refusal, until a full resync ends."""
    log.error("%s: every extent of this copy may now differ from the primary's. It is marked "
              "inconsistent until a full compare finishes: the next connect compares every extent, "
              "and promote refuses without --force (with it, the failback set is the whole volume)",
              reason)
    widened = meta.update(consistent=False, metadata_damage=meta.metadata_damage or reason)
    store(cfg.meta, widened)
    return widened


def open_record(cfg: SiteConfig, meta: SiteMeta) -> tuple[SiteMeta, RecordJournal | None]:
    """Open a secondary's record journal (a torn tail is cut and kept aside). A site with a
    volume identity always has one: if it is missing, damaged or another volume's, widen first,
    then move the bad file aside and start an empty one."""
    path = journal_path(cfg)
    if meta.volume_id is None:
        return meta, None  # no copy yet: the journal is created when it adopts an identity
    try:
        with open(path, "rb") as handle:
            data: bytes | None = handle.read()
    except FileNotFoundError:
        data = None
    assessed = jfmt.assess(data, meta.volume_id)
    if assessed.doubt is None:
        return meta, RecordJournal.open(path)
    volume_id = meta.volume_id
    meta = widen(cfg, meta, f"record journal {path} {assessed.doubt}")
    if data is not None:
        log.error("the damaged record journal is kept as %s", move_aside(path, "damaged"))
    return meta, RecordJournal.create(path, volume_id)


def roll_back_unfinished_resync(cfg: SiteConfig, meta: SiteMeta, backend: ImageBackend,
                                undo: UndoLog) -> tuple[SiteMeta, int]:
    """A resync into this secondary did not finish: restore the image from before it from the
    undo log, and mark what was restored stale (claim 8's failback must start from a consistent
    copy). A damaged undo log cannot be trusted to restore all of it: the site stays
    inconsistent, every extent in doubt, and the log is moved aside. Returns the new metadata and
    how many extents were restored."""
    path = undo.path
    result = roll_back(path, backend.write, backend.flush, cfg.extent_size, cfg.size, undo.files)
    if result.damage is not None:
        undo.close()
        meta = widen(cfg, meta, f"undo log {path} is damaged ({result.damage}), so the unfinished "
                                "resync's rollback cannot be trusted")
        log.error("undo log: %d extents before the damage were restored; the log is kept as %s",
                  len(result.restored), move_aside(path, "damaged", undo.files))
        undo.saved = 0
        return meta, len(result.restored)
    meta = meta.update(consistent=not meta.metadata_damage,
                       stale=tuple(sorted(set(meta.stale) | result.restored)))
    store(cfg.meta, meta)
    undo.discard()
    log.warning("an unfinished resync was rolled back: %d extents restored from the undo log; "
                "this copy is consistent again (older) and they will be copied again",
                len(result.restored))
    return meta, len(result.restored)
