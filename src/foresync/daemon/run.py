"""Running one site: load config and metadata, open the volume, start the role and the admin HTTP.

The role comes from the site metadata written by ``foresync init``, never from the command line,
so a restarted site always comes back as what it last was.
"""

from __future__ import annotations

import asyncio
import logging
import os

from foresync import config as config_mod
from foresync.daemon import data_file
from foresync.daemon import metadata as site
from foresync.daemon.group_unit import check_images, open_image
from foresync.daemon.primary import PrimarySite
from foresync.daemon.secondary import SecondarySite
from foresync.daemon.security import SiteSecurity
from foresync.daemon.site_lock import SiteLock
from foresync.daemon.transitions import extent_count, open_record, widen
from foresync.daemon.volumes import Daemon
from foresync.errors import ConfigError
from foresync.journal import oos_format
from foresync.journal.durable import move_aside
from foresync.journal.journal import RecordJournal
from foresync.journal.oos_format import OutOfSync
from foresync.logctx import VolumeContext
from foresync.replication.epochs import new_epoch_id
from foresync.storage.backend import ImageBackend

log = logging.getLogger(__name__)

ROLE_START_TIMEOUT_S = 30.0  # how long a role change's answer waits for the new role to serve


def init_site(config_path: str, role: str, force: bool, volume: str | None = None) -> site.SiteMeta:
    """Create a site's metadata (and its sparse volume file if missing): of ``volume``, in a
    config with [[volume]] tables."""
    cfg = config_mod.load(config_path, volume)
    site.check_meta_dir(cfg.meta, create=True)  # before the volume file: nothing made in vain
    if site.exists(cfg.meta) and not force:
        raise ConfigError(f"site metadata already exists in {cfg.meta}; use --force to overwrite it "
                          "(the site forgets its identity, record and epoch history)")
    open_image(cfg).close()  # a group's: every member's file (daemon/group_unit.py)
    os.makedirs(cfg.meta, exist_ok=True)
    for stale in (site.JOURNAL_FILE, site.OOS_FILE):
        path = os.path.join(cfg.meta, stale)
        if os.path.exists(path):
            os.unlink(path)
    volume_id = site.mint_volume_id() if role == "primary" else None
    history = (new_epoch_id(),) if role == "primary" else ()
    # A new secondary holds no copy yet: it adopts identity and history from the primary on
    # first connect and takes a full sync (chunks whose checksums already match are skipped).
    meta = site.SiteMeta(role=role, volume_id=volume_id, epoch_history=history,
                         new=role == "secondary", consistent=role == "primary")
    meta = data_file.record(cfg, meta)  # the data file this metadata describes from now on
    if role == "primary":
        site.store_oos(cfg.meta, set())  # a primary always has one: a missing one means "lost"
    site.store(cfg.meta, meta)
    if volume_id is not None:
        RecordJournal.create(os.path.join(cfg.meta, site.JOURNAL_FILE), volume_id).close()
    return meta


def check_init(cfg: config_mod.SiteConfig, force: bool) -> None:
    """What ``init_site`` would refuse, checked without changing anything: ``foresync init``
    checks every volume of a config of [[volume]] tables before it initialises any."""
    if os.path.lexists(cfg.meta) and not os.path.isdir(cfg.meta):
        raise ConfigError(f"[volume] meta = {cfg.meta}: is not a directory")
    if os.path.isdir(cfg.meta) and site.exists(cfg.meta) and not force:
        raise ConfigError(f"site metadata already exists in {cfg.meta}; use --force to overwrite it "
                          "(the site forgets its identity, record and epoch history)")
    check_images(cfg)  # an existing file or device must have the size (not changed)


def _load_out_of_sync(cfg: config_mod.SiteConfig) -> tuple[OutOfSync, str]:
    """A primary's out-of-sync set, and why every extent is in doubt ("" if not). A missing
    store widens to every extent (stored at once); a damaged one is a ConfigError."""
    loaded = site.load_oos(cfg.meta, extent_count(cfg))
    oos = oos_format.restore(loaded)
    if loaded is not None:
        return oos, ("" if not oos.everything else "a full compare is still pending")
    doubt = f"out-of-sync file {site.oos_path(cfg.meta)} is missing"
    log.error("%s: this primary cannot tell which extents the secondary lacks. Every extent is "
              "treated as out of sync: the next connect copies the whole volume, and the pair "
              "reports in sync only after that", doubt)
    site.store_oos(cfg.meta, oos.extents, everything=oos.everything)
    return oos, doubt


def widen_everything(cfg: config_mod.SiteConfig, meta: site.SiteMeta) -> site.SiteMeta:
    """``foresync run --assume-all-out-of-sync``: the operator's way out of damaged metadata (or
    any doubt). A primary copies every extent on the next connect; a secondary is marked
    inconsistent with every extent in doubt (a full compare). Damaged files are kept aside."""
    reason = "the operator started it with --assume-all-out-of-sync"
    if meta.role == "secondary":
        if meta.volume_id is None:
            log.warning("--assume-all-out-of-sync: this secondary holds no copy yet (a full sync "
                        "follows its first connect anyway)")
            return meta
        return widen(cfg, meta, reason)
    kept: frozenset[int] = frozenset()
    try:
        loaded = site.load_oos(cfg.meta, extent_count(cfg))
        kept = loaded.extents if loaded is not None else frozenset()
    except ConfigError as exc:
        log.error("%s", exc)
        log.error("the damaged out-of-sync file is kept as %s",
                  move_aside(str(site.oos_path(cfg.meta)), "damaged"))
    site.store_oos(cfg.meta, kept, everything=True)
    log.warning("%s: every extent is out of sync; the next connect copies the whole volume", reason)
    return meta


def _make_runner(cfg: config_mod.SiteConfig, meta: site.SiteMeta, backend: ImageBackend,
                 security: SiteSecurity) -> PrimarySite | SecondarySite:
    if meta.role == "primary":
        oos, doubt = _load_out_of_sync(cfg)
        return PrimarySite(cfg, meta, backend, set(oos.extents), security,
                           everything=oos.everything, metadata_damage=doubt)
    # A missing or damaged record journal widens the site before it starts (issue 12).
    meta, journal = open_record(cfg, meta)
    return SecondarySite(cfg, meta, backend, journal, security)


async def run_site(config_path: str, stop: asyncio.Event, assume_all_out_of_sync: bool = False) -> None:
    """Run a site until ``stop``: every volume of its config, each switching role in place on
    promote, demote or failback (daemon/volumes.py, daemon/unit.py).

    A volume's metadata lock (``site_lock``) is held from its start until it stops, across every
    role switch: an offline command cannot change the metadata under a running daemon."""
    dcfg = config_mod.load_daemon(config_path)
    cfg = dcfg.first
    if not dcfg.multi:
        VolumeContext.volume = cfg.name  # the CLI owns logging; we only name the volume
    for volume in dcfg.volumes:  # before the locks or the volume files: nothing made in vain
        site.check_meta_dir(volume.meta)

    def open_runner(volume: config_mod.SiteConfig, backend: ImageBackend,
                    security: SiteSecurity) -> PrimarySite | SecondarySite:
        meta = site.load(volume.meta)
        if assume_all_out_of_sync:
            meta = widen_everything(volume, meta)
        meta = data_file.reconcile(volume, meta, assume_all_out_of_sync)
        return _make_runner(volume, meta, backend, security)

    def check_data(volume: config_mod.SiteConfig) -> None:  # before its data file is opened
        data_file.check(volume, assume_all_out_of_sync)

    if dcfg.multi:
        await Daemon(dcfg, stop, _make_runner, open_runner, locked=False,
                     check_data=check_data).run()
        return
    host, port = cfg.admin_listen
    lock = SiteLock.acquire(cfg.meta, f"foresync run --config {cfg.path}", f"{host}:{port}")
    try:
        await Daemon(dcfg, stop, _make_runner, open_runner, locked=True,
                     check_data=check_data).run()
    finally:
        lock.release()
    log.info("site %s stopped cleanly", cfg.name)


