"""Running one site: load config and metadata, open the volume, start the role and the admin HTTP.

The role comes from the site metadata written by ``foresync init``, never from the command line,
so a restarted site always comes back as what it last was.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from foresync import config as config_mod
from foresync.admin.events import EventFeed
from foresync.admin.http import AdminServer, Endpoint, Response, StreamEndpoint
from foresync.admin.metrics import SiteMetrics
from foresync.admin.object_metrics import ObjectCollector
from foresync.admin.status import status_document
from foresync.daemon import metadata as site
from foresync.daemon.cluster import ClusterAgent, FencedTarget
from foresync.daemon.primary import PrimarySite
from foresync.daemon.results import Result, answer_of
from foresync.daemon.secondary import SecondarySite
from foresync.daemon.security import SiteSecurity, load_security
from foresync.daemon.site_lock import SiteLock
from foresync.daemon.transitions import extent_count, open_record, widen
from foresync.errors import ConfigError, RequestRefused, TryAgainLater
from foresync.journal import oos_format
from foresync.journal.durable import move_aside
from foresync.journal.journal import RecordJournal
from foresync.journal.oos_format import OutOfSync
from foresync.logctx import VolumeContext
from foresync.replication.epochs import new_epoch_id
from foresync.storage.file_backend import FileBackend

log = logging.getLogger(__name__)

ROLE_START_TIMEOUT_S = 30.0  # how long a role change's answer waits for the new role to serve


def init_site(config_path: str, role: str, force: bool) -> site.SiteMeta:
    """Create a site's metadata (and its sparse volume file if missing)."""
    cfg = config_mod.load(config_path)
    site.check_meta_dir(cfg.meta, create=True)  # before the volume file: nothing made in vain
    if site.exists(cfg.meta) and not force:
        raise ConfigError(f"site metadata already exists in {cfg.meta}; use --force to overwrite it "
                          "(the site forgets its identity, record and epoch history)")
    backend = FileBackend(cfg.data, cfg.size)
    backend.close()
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
    if role == "primary":
        site.store_oos(cfg.meta, set())  # a primary always has one: a missing one means "lost"
    site.store(cfg.meta, meta)
    if volume_id is not None:
        RecordJournal.create(os.path.join(cfg.meta, site.JOURNAL_FILE), volume_id).close()
    return meta


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


def _make_runner(cfg: config_mod.SiteConfig, meta: site.SiteMeta, backend: FileBackend,
                 security: SiteSecurity) -> PrimarySite | SecondarySite:
    if meta.role == "primary":
        oos, doubt = _load_out_of_sync(cfg)
        return PrimarySite(cfg, meta, backend, set(oos.extents), security,
                           everything=oos.everything, metadata_damage=doubt)
    # A missing or damaged record journal widens the site before it starts (issue 12).
    meta, journal = open_record(cfg, meta)
    return SecondarySite(cfg, meta, backend, journal, security)


def _json(status: int, doc: dict[str, Any]) -> Response:
    return status, "application/json", json.dumps(doc).encode()


def _refusals_answered(
        endpoint: Callable[[dict[str, Any]], Awaitable[Response]]) -> Callable[[dict[str, Any]], Awaitable[Response]]:
    """The one place a site's refusal becomes an HTTP answer: 503 when it may succeed if
    repeated (``TryAgainLater``), 409 for any other ``RequestRefused``; either way nothing changed."""
    @functools.wraps(endpoint)
    async def answered(body: dict[str, Any]) -> Response:
        try:
            return await endpoint(body)
        except TryAgainLater as exc:
            return _json(503, {"error": str(exc)})
        except RequestRefused as exc:
            return _json(409, {"error": str(exc)})

    return answered


async def run_site(config_path: str, stop: asyncio.Event, assume_all_out_of_sync: bool = False) -> None:
    """Run a site until ``stop``, switching role in place on promote, demote or failback.

    The site's metadata lock (``site_lock``) is held from here until the process exits, across
    every role switch: an offline command cannot change the metadata under a running daemon."""
    cfg = config_mod.load(config_path)
    VolumeContext.volume = cfg.name  # the CLI owns logging; we only name the volume
    site.check_meta_dir(cfg.meta)  # before the lock or the volume file: nothing made in vain
    host, port = cfg.admin_listen
    lock = SiteLock.acquire(cfg.meta, f"foresync run --config {cfg.path}", f"{host}:{port}")
    try:
        await _run_locked(cfg, stop, assume_all_out_of_sync)
    finally:
        lock.release()


async def _run_locked(cfg: config_mod.SiteConfig, stop: asyncio.Event,
                      assume_all_out_of_sync: bool) -> None:
    security = load_security(cfg)  # certificates, secrets: a bad file stops us here, clearly
    backend = FileBackend(cfg.data, cfg.size)
    try:
        meta = site.load(cfg.meta)
        if assume_all_out_of_sync:
            meta = widen_everything(cfg, meta)
        runner = _make_runner(cfg, meta, backend, security)
    except BaseException:
        backend.close()
        raise
    # Answers to a role change wait here until the new role serves (or fails to start).
    switch_waiters: list[asyncio.Future[None]] = []

    def serving() -> None:
        for waiter in switch_waiters:
            if not waiter.done():
                waiter.set_result(None)
        switch_waiters.clear()

    def failed(exc: BaseException) -> None:
        for waiter in switch_waiters:
            if not waiter.done():
                waiter.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
        switch_waiters.clear()

    async def after_switch(old: PrimarySite | SecondarySite, result: Result) -> Response:
        """A successful role change is answered only once the new role is serving: a promote
        must not report success for a site that then cannot serve (it exits instead)."""
        if not old.role_changed.is_set():
            return _json(*answer_of(result))
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        switch_waiters.append(started)
        role = site.load(cfg.meta).role
        try:
            await asyncio.wait_for(asyncio.shield(started), ROLE_START_TIMEOUT_S)
        except TimeoutError:
            return _json(500, {"error": f"the switch to {role} is on disk, but the site did not "
                                        f"start serving as {role} within {ROLE_START_TIMEOUT_S:g} s: "
                                        "see the site log"})
        except Exception as exc:
            return _json(500, {"error": f"the switch to {role} is on disk, but the site could not "
                                        f"start as {role}: {_describe(exc)}; the daemon exits: fix "
                                        f"that and start it again (it starts as the {role})"})
        return _json(*answer_of(result))

    agent: ClusterAgent | None = None

    def status(_: dict[str, Any]) -> Response:
        doc = status_document(runner.statistics())
        if runner.objects is not None:
            doc["objects"] = runner.objects.status()  # issue 18: the S3 front end's mirror
        if agent is not None:
            doc["cluster"] = agent.status()
        return _json(200, doc)

    site_metrics = SiteMetrics(cfg.name, lambda: runner.statistics(), site=os.path.splitext(os.path.basename(cfg.path))[0])

    site_metrics.registry.register(ObjectCollector(
        cfg.name, os.path.splitext(os.path.basename(cfg.path))[0],
        lambda: runner.objects.status() if runner.objects is not None else None))

    def metrics(_: dict[str, Any]) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", site_metrics.render()

    @_refusals_answered
    async def promote(body: dict[str, Any]) -> Response:
        old = runner
        if not isinstance(old, SecondarySite):
            raise RequestRefused("this site is already the primary")
        return await after_switch(old, await old.promote(body.get("force", False)))

    @_refusals_answered
    async def demote(_: dict[str, Any]) -> Response:
        old = runner
        if not isinstance(old, PrimarySite):
            raise RequestRefused("this site is not the primary")
        return await after_switch(old, await old.demote())

    @_refusals_answered
    async def verify(body: dict[str, Any]) -> Response:
        if not isinstance(runner, PrimarySite):
            raise RequestRefused("verify runs on the primary")
        return _json(*answer_of(runner.verify(body.get("repair", False))))

    @_refusals_answered
    async def resolve(body: dict[str, Any]) -> Response:
        if body.get("discard-local") is not True:
            return _json(400, {"error": 'resolve needs {"discard-local": true} (the only '
                                        "resolution there is)"})
        old = runner
        return await after_switch(old, await old.discard_local())

    @_refusals_answered
    async def verify_objects(_: dict[str, Any]) -> Response:
        if not isinstance(runner, PrimarySite) or runner.objects is None:
            raise RequestRefused("objects verify runs on a primary with [s3]")
        if not runner.objects.verify():
            raise TryAgainLater("the secondary is not connected")
        return _json(200, {"started": True})

    feed = EventFeed(lambda: status_document(runner.statistics()))

    def events(query: dict[str, str]) -> AsyncGenerator[bytes, None]:
        return feed.stream(since_start=query.get("since-start", "0") not in ("", "0", "false"))

    def audited(method: str, path: str, body: dict[str, Any] | None, answer: int) -> None:
        feed.publish({"type": "admin", "action": path.strip("/"), "method": method,
                      "body": body, "status": answer})

    admin = AdminServer({("GET", "/status"): Endpoint(status), ("GET", "/metrics"): Endpoint(metrics),
                         ("POST", "/promote"): Endpoint(promote, {"force": bool}),
                         ("POST", "/demote"): Endpoint(demote),
                         ("POST", "/resolve"): Endpoint(resolve, {"discard-local": bool}),
                         ("POST", "/verify"): Endpoint(verify, {"repair": bool}),
                         ("POST", "/objects/verify"): Endpoint(verify_objects)},
                        token=security.admin_token,
                        streams={"/events": StreamEndpoint(events)}, on_audit=audited)
    try:
        await admin.start(*cfg.admin_listen)
    except OSError as exc:
        backend.close()
        raise config_mod.listen_error("[admin] listen", cfg.admin_listen, exc) from None
    watcher = asyncio.ensure_future(feed.watch())  # cancelled and awaited in the finally below
    if cfg.cluster is not None:  # [cluster]: the lease, the fence and automatic failover
        agent = ClusterAgent(cfg, lambda: runner, feed.publish, stopping=stop.is_set)
    member = asyncio.ensure_future(agent.run() if agent is not None else asyncio.sleep(0))
    try:
        while True:
            log.info("site %s running as %s (epoch %d, mode %s)", cfg.name, runner.meta.role,
                     runner.meta.epoch, cfg.mode.value)
            if isinstance(runner, PrimarySite):
                runner.write_latency = site_metrics.write_latency
                if agent is not None:
                    runner.fence = functools.partial(FencedTarget, may_ack=agent.may_ack)
            runner.on_serving = serving
            runner.on_state_change = feed.sample  # link edges, as they happen
            feed.sample()  # a role change, as it happens
            outcome = await runner.run(stop)
            if outcome == "stop" or stop.is_set():
                break
            nbd_sockets = runner.nbd_sockets if isinstance(runner, SecondarySite) else None
            runner = _make_runner(cfg, site.load(cfg.meta), backend, security)
            if isinstance(runner, PrimarySite):
                runner.nbd_sockets = nbd_sockets  # bound by the promote, before it changed anything
            else:
                for sock in nbd_sockets or ():
                    sock.close()
    except BaseException as exc:
        failed(exc)
        raise
    finally:
        failed(RuntimeError("the site stopped"))
        for task in (watcher, member):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        feed.close()  # ends every /events stream, so closing the admin server need not wait
        await admin.aclose()
        backend.close()
    log.info("site %s stopped cleanly", cfg.name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
