"""One replicated unit of a daemon: today's role-switching loop for one volume (issue 16).

A unit owns its volume's metadata directory (and its site lock), record, window, epoch, link
connection and, with [cluster], its lease (``ClusterAgent``). It is given a backend and the
list of NBD exports it serves from it (``ExportSpec``: name, offset, size): a volume serves one,
the whole backend; a consistency group (issue 16 part 2) may serve several over one
concatenated backend. It runs as the primary or the secondary its metadata says, and switches
role in place on promote, demote or failback, independently of the daemon's other units.

``Shared`` holds what a daemon of ``[[volume]]`` tables shares among its units: one NBD server
(the primary's exports are published on it while it is the primary here) and one link listener
(daemon/link_router.py). A one-volume ``[volume]`` config has none: its runner listens itself,
exactly as before (a promote binds [nbd] listen before it changes anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from foresync import config as config_mod
from foresync.admin.events import EventFeed
from foresync.admin.http import Response
from foresync.admin.status import status_document
from foresync.daemon import metadata as site
from foresync.daemon.cluster import ClusterAgent, FencedTarget
from foresync.daemon.group_unit import group_status
from foresync.daemon.link_router import LinkRouter, Route
from foresync.daemon.primary import PrimarySite
from foresync.daemon.results import Result, answer_of
from foresync.daemon.secondary import SecondarySite
from foresync.daemon.security import SiteSecurity
from foresync.errors import RequestRefused, TryAgainLater
from foresync.logctx import VolumeContext
from foresync.nbd.exports import ExportSpec
from foresync.nbd.server import NbdServer
from foresync.storage.backend import ImageBackend

log = logging.getLogger(__name__)

ROLE_START_TIMEOUT_S = 30.0  # how long a role change's answer waits for the new role to serve

Runner = PrimarySite | SecondarySite
RunnerFactory = Callable[[config_mod.SiteConfig, site.SiteMeta, ImageBackend, SiteSecurity], Runner]


@dataclass(frozen=True, slots=True)
class Shared:
    """The listeners a daemon of many volumes shares among its units."""

    nbd: NbdServer
    link: LinkRouter


def json_answer(status: int, doc: dict[str, Any]) -> Response:
    return status, "application/json", json.dumps(doc).encode()


def refusals_answered(
        endpoint: Callable[[dict[str, Any]], Awaitable[Response]]) -> Callable[[dict[str, Any]], Awaitable[Response]]:
    """The one place a site's refusal becomes an HTTP answer: 503 when it may succeed if
    repeated (``TryAgainLater``), 409 for any other ``RequestRefused``; either way nothing changed."""
    @functools.wraps(endpoint)
    async def answered(body: dict[str, Any]) -> Response:
        try:
            return await endpoint(body)
        except TryAgainLater as exc:
            return json_answer(503, {"error": str(exc)})
        except RequestRefused as exc:
            return json_answer(409, {"error": str(exc)})

    return answered


class VolumeUnit:
    def __init__(self, cfg: config_mod.SiteConfig, runner: Runner, backend: ImageBackend,
                 exports: list[ExportSpec], security: SiteSecurity, make_runner: RunnerFactory,
                 shared: Shared | None, feed: EventFeed) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.runner = runner
        self.backend = backend
        self.exports = exports
        self.security = security
        self._make_runner = make_runner
        self.shared = shared
        self.feed = feed
        self.stop = asyncio.Event()  # this unit's own: the daemon stopping, or a reload removing it
        self.write_latency: Any = None  # the unit's histogram in the daemon's metrics
        self.agent: ClusterAgent | None = None
        # Answers to a role change wait here until the new role serves (or fails to start).
        self._switch_waiters: list[asyncio.Future[None]] = []

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        doc = status_document(self.runner.statistics())
        if self.runner.objects is not None:
            doc["objects"] = self.runner.objects.status()  # issue 18: the S3 front end's mirror
        if self.agent is not None:
            doc["cluster"] = self.agent.status()
        if self.cfg.group is not None:  # issue 16 part 2: daemon/group_unit.py
            doc["group"] = group_status(self.cfg, self.exports)
        return doc

    # -- admin actions --------------------------------------------------------------------------

    async def promote(self, body: dict[str, Any]) -> Response:
        old = self.runner
        if not isinstance(old, SecondarySite):
            raise RequestRefused("this site is already the primary")
        return await self._after_switch(old, await old.promote(body.get("force", False)))

    async def demote(self, _: dict[str, Any]) -> Response:
        old = self.runner
        if not isinstance(old, PrimarySite):
            raise RequestRefused("this site is not the primary")
        return await self._after_switch(old, await old.demote())

    async def verify(self, body: dict[str, Any]) -> Response:
        if not isinstance(self.runner, PrimarySite):
            raise RequestRefused("verify runs on the primary")
        return json_answer(*answer_of(self.runner.verify(body.get("repair", False))))

    async def resolve(self, body: dict[str, Any]) -> Response:
        if body.get("discard-local") is not True:
            return json_answer(400, {"error": 'resolve needs {"discard-local": true} (the only '
                                              "resolution there is)"})
        old = self.runner
        return await self._after_switch(old, await old.discard_local())

    async def verify_objects(self, _: dict[str, Any]) -> Response:
        runner = self.runner
        if not isinstance(runner, PrimarySite) or runner.objects is None:
            raise RequestRefused("objects verify runs on a primary with [s3]")
        if not runner.objects.verify():
            raise TryAgainLater("the secondary is not connected")
        return json_answer(200, {"started": True})

    async def _after_switch(self, old: Runner, result: Result) -> Response:
        """A successful role change is answered only once the new role is serving: a promote
        must not report success for a site that then cannot serve (it exits instead)."""
        if not old.role_changed.is_set():
            return json_answer(*answer_of(result))
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._switch_waiters.append(started)
        role = site.load(self.cfg.meta).role
        try:
            await asyncio.wait_for(asyncio.shield(started), ROLE_START_TIMEOUT_S)
        except TimeoutError:
            return json_answer(500, {"error": f"the switch to {role} is on disk, but the site did "
                                              f"not start serving as {role} within "
                                              f"{ROLE_START_TIMEOUT_S:g} s: see the site log"})
        except Exception as exc:
            return json_answer(500, {"error": f"the switch to {role} is on disk, but the site could "
                                              f"not start as {role}: {describe(exc)}; the daemon "
                                              f"exits: fix that and start it again (it starts as "
                                              f"the {role})"})
        return json_answer(*answer_of(result))

    def _serving(self) -> None:
        if self.shared is not None:
            runner = self.runner
            self.shared.link.route(self.name, Route(runner.adopt_link, runner.link_refused))
        for waiter in self._switch_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._switch_waiters.clear()

    def _failed(self, exc: BaseException) -> None:
        for waiter in self._switch_waiters:
            if not waiter.done():
                waiter.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
        self._switch_waiters.clear()

    # -- the role loop --------------------------------------------------------------------------

    def _prepare(self, runner: Runner) -> None:
        if isinstance(runner, PrimarySite):
            runner.write_latency = self.write_latency
            runner.exports = list(self.exports)
            if self.agent is not None:
                runner.fence = functools.partial(FencedTarget, may_ack=self.agent.may_ack)
                runner.outdate = self.agent.outdate
            if self.shared is not None:
                runner.nbd_hub = self.shared.nbd
        elif self.shared is not None:
            runner.nbd_shared = True
        runner.shared_link_listener = self.shared is not None
        runner.on_serving = self._serving
        runner.on_state_change = self.feed.sample  # link edges, as they happen

    async def run(self, daemon_stop: asyncio.Event) -> None:
        """Serve until the daemon stops or this unit is removed, switching role in place."""
        VolumeContext.current.set(self.name)  # this task's log lines (and its children's)
        if self.cfg.cluster is not None:  # [cluster]: the lease, the fence and automatic failover
            self.agent = ClusterAgent(self.cfg, lambda: self.runner, self.feed.publish,
                                      stopping=lambda: daemon_stop.is_set() or self.stop.is_set())
        member = asyncio.ensure_future(self.agent.run() if self.agent is not None else asyncio.sleep(0))
        forward = asyncio.ensure_future(_forward(daemon_stop, self.stop))
        try:
            await self._loop()
        except BaseException as exc:
            self._failed(exc)
            raise
        finally:
            self._failed(RuntimeError("the site stopped"))
            if self.shared is not None:
                self.shared.link.route(self.name, None)
            for task in (member, forward):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        cfg = self.cfg
        while True:
            runner = self.runner
            log.info("site %s running as %s (epoch %d, mode %s)", cfg.name, runner.meta.role,
                     runner.meta.epoch, cfg.mode.value)
            self._prepare(runner)
            self.feed.sample()  # a role change, as it happens
            outcome = await runner.run(self.stop)
            if self.shared is not None:
                self.shared.link.route(self.name, None)  # switching: the dialler retries
            if outcome == "stop" or self.stop.is_set():
                break
            nbd_sockets = runner.nbd_sockets if isinstance(runner, SecondarySite) else None
            self.runner = self._make_runner(cfg, site.load(cfg.meta), self.backend, self.security)
            if isinstance(self.runner, PrimarySite):
                self.runner.nbd_sockets = nbd_sockets  # bound by the promote, before it changed anything
            else:
                for sock in nbd_sockets or ():
                    sock.close()


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def site_name(cfg: config_mod.SiteConfig) -> str:
    """The ``site`` label: the config file's name without .toml."""
    return os.path.splitext(os.path.basename(cfg.path))[0]
