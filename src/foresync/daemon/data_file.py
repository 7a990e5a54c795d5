"""The data file's identity at a start: found with ``os.stat``, checked against site.json.

The comparison is pure (replication/data_identity.py, which says what is recorded and why).
Here: ``found`` stats the file; ``check`` runs before the data file is opened (or created, for a
typo in ``data``) and refuses a volume whose data is not the recorded file; ``reconcile`` runs
once it is open and gives the identity to record: the first start of metadata from before
identities (logged, not refused), or a start with ``--assume-all-out-of-sync`` after a change.
"""

from __future__ import annotations

import logging
import os
import stat

from foresync import config as config_mod
from foresync.daemon import metadata as site
from foresync.errors import ConfigError
from foresync.replication.data_identity import DataIdentity, mismatch

log = logging.getLogger(__name__)


def found(path: str) -> DataIdentity | None:
    """The identity of the data file at ``path`` now; None if there is none."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot stat volume {path}: {exc.strerror or exc}") from None
    if not stat.S_ISBLK(st.st_mode):
        return DataIdentity(real, st.st_dev, st.st_ino, 0, st.st_size)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open volume {path}: {exc.strerror or exc}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    return DataIdentity(real, st.st_dev, st.st_ino, st.st_rdev, size)


def refusal(cfg: config_mod.SiteConfig, recorded: DataIdentity, now: DataIdentity | None,
            why: str) -> ConfigError:
    seen = now.describe() if now is not None else f"nothing at {os.path.realpath(cfg.data)}"
    return ConfigError(
        f"volume {cfg.name}: key `data` = {cfg.data} in {cfg.path} is not the data file this "
        f"site's metadata in {cfg.meta} describes ({why}): recorded {recorded.describe()}, found "
        f"{seen}. Its record and out-of-sync set cannot bound where this data differs from the "
        "peer's. Either put the right file back at that path (or correct `data`), or start once "
        "with `foresync run --assume-all-out-of-sync`: every extent is then in doubt (a full "
        "compare) and the new data file's identity is recorded")


def check(cfg: config_mod.SiteConfig, assume_all: bool) -> None:
    """Refuse the volume before its data file is opened if it is not the recorded one."""
    recorded = site.load(cfg.meta).data_identity
    if recorded is None:
        return
    now = found(cfg.data)
    why = mismatch(recorded, now)
    if not why:
        return
    if not assume_all:
        raise refusal(cfg, recorded, now, why)
    log.warning("volume %s: `data` = %s is not the recorded data file (%s); started with "
                "--assume-all-out-of-sync: every extent is in doubt, the new identity is recorded",
                cfg.name, cfg.data, why)


def reconcile(cfg: config_mod.SiteConfig, meta: site.SiteMeta, assume_all: bool) -> site.SiteMeta:
    """Once the data file is open: record its identity if none is (metadata from before data
    identities: logged, not refused) or if it changed (``check`` let that through only with
    --assume-all-out-of-sync, which widened the site). Returns the metadata as stored."""
    now = found(cfg.data)
    if now is None:
        raise ConfigError(f"volume {cfg.name}: `data` = {cfg.data} vanished while starting")
    recorded = meta.data_identity
    why = mismatch(recorded, now) if recorded is not None else ""
    if recorded is not None and not why:
        return meta
    if recorded is not None and not assume_all:  # replaced between ``check`` and the open
        raise refusal(cfg, recorded, now, why)
    if recorded is None:
        log.warning("volume %s: site metadata in %s records no data file: recording %s (from "
                    "now on another data file is refused)", cfg.name, cfg.meta, now.describe())
    else:
        log.warning("volume %s: recording the new data file %s (was %s)", cfg.name,
                    now.describe(), recorded.describe())
    meta = meta.update(data_identity=now)
    site.store(cfg.meta, meta)
    return meta


def record(cfg: config_mod.SiteConfig, meta: site.SiteMeta) -> site.SiteMeta:
    """``foresync init``: the identity of the data file it created or adopted."""
    now = found(cfg.data)
    if now is None:
        raise ConfigError(f"volume {cfg.name}: `data` = {cfg.data} does not exist")
    return meta.update(data_identity=now)
