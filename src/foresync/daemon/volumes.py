"""A daemon of many volumes (issue 16): one ``foresync run`` serving every volume of its config.

The daemon owns what is shared: the admin HTTP server (one port; actions name their volume with
the body key ``volume``, required when there is more than one), the metrics registry (every
series labelled by volume), and with ``[[volume]]`` tables one NBD listener (exports by name) and
one link listener (connections routed by volume name, daemon/link_router.py). Each volume is a
``VolumeUnit`` (daemon/unit.py) with its own role loop, metadata lock, record and link.

A one-volume ``[volume]`` config runs as one unit with listeners of its own, exactly as before.

Reload (SIGHUP, or POST /reload): the config is read again; volumes added start, volumes
removed stop cleanly (data and metadata stay on disk), and a volume whose settings changed is
left running as it was, with an error naming the key (a restart applies it). A config that
does not parse changes nothing. The other volumes are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from foresync import config as config_mod
from foresync.admin.events import EventFeed
from foresync.admin.group_metrics import GroupMembersCollector
from foresync.admin.http import AdminServer, Endpoint, Response, StreamEndpoint
from foresync.admin.metrics import SiteMetrics
from foresync.admin.object_metrics import ObjectCollector
from foresync.admin.status import status_document
from foresync.daemon import metadata as site
from foresync.daemon.group_unit import exports_of, open_image
from foresync.daemon.link_router import LinkRouter
from foresync.daemon.security import SiteSecurity, load_security, setup_frame_bytes
from foresync.daemon.site_lock import SiteLock
from foresync.daemon.unit import (
    RunnerFactory,
    Shared,
    VolumeUnit,
    json_answer,
    refusals_answered,
    site_name,
)
from foresync.errors import ConfigError, ForesyncError
from foresync.logctx import VolumeContext
from foresync.nbd.exports import ExportSpec
from foresync.nbd.server import NbdServer
from foresync.storage.backend import ImageBackend
from foresync.volumes_config import DaemonConfig

log = logging.getLogger(__name__)

Opener = Callable[[config_mod.SiteConfig, ImageBackend, SiteSecurity], Any]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Daemon:
    def __init__(self, dcfg: DaemonConfig, stop: asyncio.Event, make_runner: RunnerFactory,
                 open_runner: Opener, locked: bool,
                 check_data: Callable[[config_mod.SiteConfig], None] | None = None) -> None:
        self.dcfg = dcfg
        self.stop = stop
        self._make_runner = make_runner
        self._open_runner = open_runner  # (cfg, backend, security) -> the runner its metadata says
        self._locked = locked  # the one-volume caller holds the lock already
        self._check_data = check_data  # refuses a volume whose data file is not the recorded one
        self.units: dict[str, VolumeUnit] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, SiteLock] = {}
        self.metrics = SiteMetrics(None, None, site=site_name(dcfg.first))
        self.security = load_security(dcfg.first)
        self.shared: Shared | None = None
        self._unit_failed: asyncio.Future[BaseException] | None = None
        self._reloading: asyncio.Future[None] | None = None
        self._reload_lock = asyncio.Lock()  # SIGHUP and POST /reload, one at a time
        self._started = False  # until every volume has started, a SIGHUP waits (_on_sighup)
        self._hup_pending = False

    # -- units ----------------------------------------------------------------------------------

    def _open_unit(self, cfg: config_mod.SiteConfig,
                   open_backend: Callable[[], ImageBackend] | None = None,
                   exports: list[ExportSpec] | None = None) -> VolumeUnit:
        """Lock the unit's metadata, open its backend and its runner (nothing started yet). By
        default both come from the unit's config (daemon/group_unit.py): a volume's backend is its
        data file and its one export the whole of it; a consistency group's (``cfg.group``) is
        its members laid end to end, one export per member."""
        if not self._locked:
            site.check_meta_dir(cfg.meta)
            host, port = cfg.admin_listen
            self._locks[cfg.name] = SiteLock.acquire(cfg.meta, f"foresync run --config {cfg.path}",
                                                     f"{host}:{port}")
        try:
            # The daemon's secrets and certificates, read once; the link's first-message limit
            # is the volume's own (it lists up to every extent).
            security = dataclasses.replace(self.security, link=dataclasses.replace(
                self.security.link, setup_frame_bytes=setup_frame_bytes(cfg)))
            if self._check_data is not None:  # before the open, which creates a missing file
                self._check_data(cfg)
            # A group's unit opens its members as one (daemon/group_unit.py).
            backend = open_backend() if open_backend is not None else open_image(cfg)
            try:
                runner = self._open_runner(cfg, backend, security)
            except BaseException:
                backend.close()
                raise
        except BaseException:
            lock = self._locks.pop(cfg.name, None)
            if lock is not None:
                lock.release()
            raise
        unit: VolumeUnit

        def status() -> dict[str, Any]:
            return status_document(unit.runner.statistics())

        feed = EventFeed(status)
        unit = VolumeUnit(cfg, runner, backend, exports or exports_of(cfg), security,
                          self._make_runner, self.shared, feed)
        unit.write_latency = self.metrics.add_volume(cfg.name, lambda: unit.runner.statistics())
        if cfg.group is not None:  # issue 16 part 2: which members the unit holds
            self.metrics.add_member(cfg.name, GroupMembersCollector(
                cfg.name, site_name(cfg), [(m.name, spec.name, spec.offset, spec.size)
                                           for m, spec in zip(cfg.group.members, unit.exports, strict=True)]))
        if cfg.s3_listen is not None:
            self.metrics.add_member(cfg.name, ObjectCollector(
                cfg.name, site_name(cfg),
                lambda: unit.runner.objects.status() if unit.runner.objects is not None else None))
        return unit

    def _start_unit(self, unit: VolumeUnit) -> None:
        if self.shared is not None:
            self.shared.link.route(unit.name, None)  # known here, not serving yet
        self.units[unit.name] = unit
        task = asyncio.ensure_future(self._run_unit(unit))
        self._tasks[unit.name] = task

    async def _run_unit(self, unit: VolumeUnit) -> None:
        watcher = asyncio.ensure_future(unit.feed.watch())
        try:
            await unit.run(self.stop)
        except Exception as exc:
            if unit.stop.is_set() and not self.stop.is_set():
                # Removed by a reload: its failure to stop cleanly (a full metadata disk, say)
                # is its own; the other volumes keep running. Its next start treats this stop
                # as unclean (primary.py's clean-stop marker was not written).
                log.error("volume %s did not stop cleanly: %s", unit.name, exc)
                return
            if self._unit_failed is not None and not self._unit_failed.done():
                self._unit_failed.set_result(exc)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            unit.feed.close()
            unit.backend.close()
            lock = self._locks.pop(unit.name, None)
            if lock is not None:
                lock.release()
            log.info("volume %s stopped cleanly", unit.name)

    async def _stop_unit(self, name: str) -> None:
        unit = self.units.pop(name)
        unit.stop.set()
        task = self._tasks.pop(name)
        with contextlib.suppress(Exception):
            await task
        self.metrics.remove_volume(name)
        if self.shared is not None:
            self.shared.link.remove(name)

    # -- run ------------------------------------------------------------------------------------

    def _release(self, opened: list[VolumeUnit]) -> None:
        """Close what units opened but never ran, and every lock no running unit holds."""
        for unit in opened:
            unit.backend.close()
        for name in list(self._locks):
            if name not in self._tasks:
                self._locks.pop(name).release()

    async def run(self) -> None:
        first = self.dcfg.first
        # From the first moment: a SIGHUP while the volumes open is kept for later (its default
        # action would kill the daemon half-started, reloading or not).
        self._on_sighup(True)
        if self.dcfg.multi:
            log.info("starting %d volume(s) from %s; a SIGHUP reloads once they have started",
                     len(self.dcfg.volumes), first.path)
            link = dataclasses.replace(self.security.link, setup_frame_bytes=max(
                setup_frame_bytes(cfg) for cfg in self.dcfg.volumes))
            self.shared = Shared(
                NbdServer.shared(self.security.nbd_limits, tls=self.security.nbd_tls),
                LinkRouter(link, first.link_listen))
        opened: list[VolumeUnit] = []
        try:
            for cfg in self.dcfg.volumes:
                opened.append(self._open_unit(cfg))
        except BaseException:
            self._release(opened)
            raise
        admin = self._admin_server()
        try:
            await admin.start(*first.admin_listen)
        except OSError as exc:
            self._release(opened)
            raise config_mod.listen_error("[admin] listen", first.admin_listen, exc) from None
        self._unit_failed = asyncio.get_running_loop().create_future()
        try:
            if self.shared is not None:
                await self.shared.link.start()
                try:
                    await self.shared.nbd.start(*first.nbd_listen)
                except OSError as exc:
                    raise config_mod.listen_error("[nbd] listen", first.nbd_listen, exc) from None
            for unit in opened:
                self._start_unit(unit)
            opened = []
            self._started = True
            if self._hup_pending:
                log.info("reload: a SIGHUP arrived while the volumes started; reloading now")
                self._reload_soon()
            stopped: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
            failed: asyncio.Future[Any] = self._unit_failed
            await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            self.stop.set()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            if self._unit_failed.done():
                raise self._unit_failed.result()
        finally:
            self._on_sighup(False)
            self.stop.set()
            self._release(opened)  # never started (a shared listener could not bind)
            for task in self._tasks.values():
                if not task.done():
                    task.cancel()
            for unit in self.units.values():
                unit.feed.close()  # ends every /events stream, so closing admin need not wait
            await admin.aclose()
            if self.shared is not None:
                self.shared.link.close()
                await self.shared.nbd.aclose()

    # -- reload ---------------------------------------------------------------------------------

    def _on_sighup(self, install: bool) -> None:
        """SIGHUP reloads a config of [[volume]] tables (a one-volume config keeps the signal's
        default: it was never a reload there). Only where signals can be handled (the main
        thread of ``foresync run``)."""
        if not self.dcfg.multi:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            if install:
                loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
            else:
                loop.remove_signal_handler(signal.SIGHUP)

    def _reload_soon(self) -> None:
        if not self._started:
            self._hup_pending = True
            return
        if self._reloading is not None and not self._reloading.done():
            log.warning("reload: one is running already; send SIGHUP again once it finished")
            return
        self._reloading = asyncio.ensure_future(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            done = await self.reload()
        except ConfigError as exc:
            log.error("reload refused, nothing changed: %s", exc)
            return
        log.info("reload: started %s; stopped %s; refused %d change(s)",
                 ", ".join(done["started"]) or "none", ", ".join(done["stopped"]) or "none",
                 len(done["refused"]))

    async def reload(self) -> dict[str, Any]:
        """Read the config again: start added volumes, stop removed ones; a changed volume
        keeps running as it is (its changes need a restart). Returns what it did."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> dict[str, Any]:
        if not self.dcfg.multi:
            raise ConfigError("reload needs [[volume]] tables: a one-volume [volume] config is "
                              "changed by a restart")
        new = config_mod.load_daemon(self.dcfg.path)
        if not new.multi:
            raise ConfigError(f"{self.dcfg.path}: now a one-volume [volume] config; restart the "
                              "daemon to run it")
        refused = _daemon_level_changes(self.dcfg, new)
        wanted = {cfg.name: cfg for cfg in new.volumes}
        # An added volume runs with the daemon-level settings in force (a refused change of
        # [link] peer, secrets or [cluster] must not apply to it alone).
        running = {key: getattr(self.dcfg.first, key) for key in _DAEMON_KEYS}
        added = [dataclasses.replace(cfg, **running) for name, cfg in wanted.items()
                 if name not in self.units]
        removed = [name for name in self.units if name not in wanted]
        for name, cfg in wanted.items():
            if name in self.units:
                key = _changed_key(self.units[name].cfg, cfg)
                if key is not None:
                    refused.append(f"[[volume]] {name!r}: {key} changed; restart the daemon to apply it")
        for message in refused:
            log.error("reload: %s (the volume keeps running as it was)", message)
        for name in removed:
            log.info("reload: stopping volume %s (its data and metadata stay on disk)", name)
            await self._stop_unit(name)
        started = []
        errors = []
        for cfg in added:
            try:
                unit = self._open_unit(cfg)
            except (ForesyncError, OSError) as exc:
                errors.append(f"[[volume]] {cfg.name!r}: cannot start: {exc}")
                log.error("reload: %s", errors[-1])
                continue
            log.info("reload: starting volume %s", cfg.name)
            self._start_unit(unit)
            started.append(cfg.name)
        self.dcfg = dataclasses.replace(new, volumes=tuple(u.cfg for u in self.units.values()))
        return {"started": started, "stopped": removed, "refused": refused + errors}

    # -- admin ----------------------------------------------------------------------------------

    def _pick(self, body: dict[str, Any]) -> VolumeUnit:
        name = body.get("volume")
        if name is None:
            if len(self.units) == 1:
                return next(iter(self.units.values()))
            raise _BadRequest(400, f"this daemon serves {len(self.units)} volumes "
                                   f"({', '.join(self.units)}): name one with {{\"volume\": NAME}}")
        unit = self.units.get(name) or next(  # a group's member: the group acts as a whole
            (u for u in self.units.values() if u.cfg.group is not None
             and name in (m.name for m in u.cfg.group.members)), None)
        if unit is None:
            raise _BadRequest(404, f"no volume named {name!r} here (serving: {', '.join(self.units)})")
        return unit

    def _action(self, method: Callable[[VolumeUnit], Callable[[dict[str, Any]], Awaitable[Response]]]
                ) -> Callable[[dict[str, Any]], Awaitable[Response]]:
        async def endpoint(body: dict[str, Any]) -> Response:
            try:
                unit = self._pick(body)
            except _BadRequest as exc:
                return json_answer(exc.status, {"error": str(exc)})
            VolumeContext.current.set(unit.name)  # this request's log lines name the volume
            return await refusals_answered(method(unit))(body)

        return endpoint

    def status(self, _: dict[str, Any]) -> Response:
        volumes = {name: unit.status() for name, unit in self.units.items()}
        doc: dict[str, Any] = dict(next(iter(volumes.values()))) if len(volumes) == 1 else {}
        doc["volumes"] = volumes
        return json_answer(200, doc)

    def _admin_server(self) -> AdminServer:
        def metrics(_: dict[str, Any]) -> Response:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

        def events(query: dict[str, str]) -> AsyncGenerator[bytes, None]:
            name = query.get("volume")
            if name is not None and name not in self.units:  # never another volume's events
                raise LookupError(f"no volume named {name!r} here (serving: {', '.join(self.units)})")
            unit = self.units.get(name or "") or next(iter(self.units.values()), None)
            if unit is None:
                return _no_events()
            return unit.feed.stream(since_start=query.get("since-start", "0") not in ("", "0", "false"))

        def audited(method: str, path: str, body: dict[str, Any] | None, answer: int) -> None:
            name = (body or {}).get("volume")
            unit = self.units.get(name) if isinstance(name, str) else next(iter(self.units.values()), None)
            if unit is not None:
                unit.feed.publish({"type": "admin", "action": path.strip("/"), "method": method,
                                   "body": body, "status": answer})

        async def reload(_: dict[str, Any]) -> Response:
            if not self._started:  # the admin port opens before the volumes start
                return json_answer(503, {"error": "the daemon is still starting its volumes; "
                                                  "ask again once /status lists them"})
            try:
                return json_answer(200, await self.reload())
            except ConfigError as exc:
                return json_answer(400, {"error": str(exc)})

        volume = {"volume": str}
        return AdminServer(
            {("GET", "/status"): Endpoint(self.status), ("GET", "/metrics"): Endpoint(metrics),
             ("POST", "/promote"): Endpoint(self._action(lambda u: u.promote), {"force": bool, **volume}),
             ("POST", "/demote"): Endpoint(self._action(lambda u: u.demote), volume),
             ("POST", "/resolve"): Endpoint(self._action(lambda u: u.resolve),
                                            {"discard-local": bool, **volume}),
             ("POST", "/verify"): Endpoint(self._action(lambda u: u.verify), {"repair": bool, **volume}),
             ("POST", "/objects/verify"): Endpoint(self._action(lambda u: u.verify_objects), volume),
             ("POST", "/reload"): Endpoint(reload)},
            token=self.security.admin_token,
            streams={"/events": StreamEndpoint(events)}, on_audit=audited)


# Daemon-level settings a reload cannot change (the listeners are up, the token is loaded).
_DAEMON_KEYS = ("nbd_listen", "link_listen", "link_peer", "admin_listen", "admin_token_file",
                "nbd_tls_dir", "link_tls_dir", "link_secret_file", "cluster")


def _daemon_level_changes(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    return [f"daemon-level {key} changed; restart the daemon to apply it" for key in _DAEMON_KEYS
            if getattr(old.first, key) != getattr(new.first, key)]


def _changed_key(old: config_mod.SiteConfig, new: config_mod.SiteConfig) -> str | None:
    """The first setting of a running volume that differs in the new config, if any."""
    for field in dataclasses.fields(old):
        if field.name in _DAEMON_KEYS:
            continue
        if getattr(old, field.name) != getattr(new, field.name):
            return field.name
    return None


async def _no_events() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # an async generator that ends at once (a reload left no volume)
