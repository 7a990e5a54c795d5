"""The ``foresync`` command line. The only place that configures logging handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from foresync import __version__
from foresync.errors import ConfigError, ForesyncError, RequestRefused
from foresync.logctx import VolumeContext
from foresync.units import format_size, parse_hostport, parse_size

if TYPE_CHECKING:
    from foresync.config import SiteConfig
    from foresync.daemon.results import Result

log = logging.getLogger("foresync")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(VolumeContext())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s vol=%(volume)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def _use_log_format(log_format: str) -> None:
    """``[log] format``: switch the one handler to JSON lines (the default stays text)."""
    if log_format == "json":
        from foresync.logctx import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def run_async(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop when available; SIGINT/SIGTERM set ``stop``."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:  # the default loop is a correct, slower fallback
        asyncio.run(wrapper())
    else:
        uvloop.run(wrapper())


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file it concerns, if known, and why."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


class ForesyncGroup(click.Group):
    """The last line of defence for "no tracebacks to the user": a ForesyncError or OSError
    that a command did not turn into a clearer message itself becomes one ``Error:`` line and
    exit status 1. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ForesyncError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from None


@click.group(cls=ForesyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="foresync")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="How much to log on stderr.")
def main(log_level: str) -> None:
    """foresync: look-ahead block-volume mirroring between two sites, served over NBD."""
    _setup_logging(log_level)


@main.command()
@click.option("--data", "data_path", required=True, metavar="PATH",
              help="Volume file or block device. A missing file is created sparse with --size.")
@click.option("--size", required=True, metavar="SIZE",
              help="Volume size in bytes, or with a unit: 256MiB, 1GiB, 4096. Must match an existing file.")
@click.option("--listen", default="127.0.0.1:10809", show_default=True, metavar="HOST:PORT",
              help="Address to serve NBD on (port 0 picks a free port).")
@click.option("--export", "export_name", default="foresync", show_default=True, metavar="NAME",
              help="Export name. The default (empty) name reaches it too.")
@click.option("--read-only", is_flag=True, help="Refuse writes with EPERM.")
@click.option("--max-connections", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Most NBD client connections at once. A new client beyond it takes the place "
                   "of the oldest one that has sent no request (or has been idle for "
                   "--idle-timeout); if every one is busy it is closed at once (logged once).")
@click.option("--max-in-flight", default=256, show_default=True, type=click.IntRange(1, 65536),
              help="Most requests per connection being served at once; beyond it the server stops "
                   "reading from that client (TCP backpressure).")
@click.option("--max-in-flight-size", default="64MiB", show_default=True, metavar="SIZE",
              help="Most WRITE payload bytes per connection being served at once.")
@click.option("--max-option-size", default="64KiB", show_default=True, metavar="SIZE",
              help="Largest handshake option payload; larger ones are skipped unread and refused.")
@click.option("--handshake-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1),
              metavar="SECONDS", help="Close a client that has not finished negotiating (TLS included).")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(0.1),
              metavar="SECONDS", help="Close a client that negotiated but sent no request within "
                                      "this; clients idle after requests are kept.")
@click.option("--tls-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Require TLS (FORCEDTLS): DIR holds ca-cert.pem, server-cert.pem, server-key.pem "
                   "(the layout qemu and libnbd use). Plain nbd:// clients are refused.")
@click.option("--tls-verify-client", is_flag=True,
              help="With --tls-dir: also demand a client certificate signed by ca-cert.pem.")
@click.option("--trace", "trace_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Record every request (time, op, offset, length, flags; no data) to FILE, "
                   "for foresync tune. Format: foresync/nbd/trace.py.")
def serve(data_path: str, size: str, listen: str, export_name: str, read_only: bool,
          max_connections: int, max_in_flight: int, max_in_flight_size: str, max_option_size: str,
          handshake_timeout: float, idle_timeout: float, tls_dir: str | None,
          tls_verify_client: bool, trace_path: str | None) -> None:
    """Serve a file or block device over NBD, without replication."""
    from foresync import tls
    from foresync.daemon.local_target import LocalTarget
    from foresync.nbd.handshake import ExportInfo
    from foresync.nbd.server import NbdServer, ServerLimits
    from foresync.nbd.target import NbdTarget
    from foresync.nbd.tracing import TraceWriter, TracingTarget
    from foresync.storage.file_backend import FileBackend

    try:
        size_bytes = parse_size(size, "--size")
        if size_bytes <= 0:
            raise ConfigError("--size: must be greater than zero")
        host, port = parse_hostport(listen, "--listen")
        if tls_verify_client and not tls_dir:
            raise ConfigError("--tls-verify-client needs --tls-dir")
        tls_ctx = tls.server_context(tls_dir, tls_verify_client) if tls_dir else None
        limits = ServerLimits(
            max_connections=max_connections, max_in_flight=max_in_flight,
            max_in_flight_bytes=parse_size(max_in_flight_size, "--max-in-flight-size"),
            max_option_bytes=parse_size(max_option_size, "--max-option-size"),
            handshake_timeout_s=handshake_timeout, idle_timeout_s=idle_timeout)
        backend = FileBackend(data_path, size_bytes, read_only=read_only)
        writer = TraceWriter(trace_path, size_bytes) if trace_path else None
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None

    async def serve_until_stopped(stop: asyncio.Event) -> None:
        target = LocalTarget(backend)
        export = ExportInfo(name=export_name, size=size_bytes, read_only=read_only,
                            description=f"foresync volume {data_path}")
        served: NbdTarget = target
        if writer is not None:
            served = TracingTarget(target, writer)
        server = NbdServer(served, export, limits, tls=tls_ctx)
        bound_host, bound_port = await server.start(host, port)
        scheme = "nbds" if tls_ctx else "nbd"
        click.echo(f"serving {data_path} as {scheme}://{bound_host}:{bound_port}/{export_name}", err=True)
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        await server.aclose()
        await target.flusher.wait_idle()
        backend.flush()
        backend.close()

    try:
        run_async(serve_until_stopped)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {listen}: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close()


@main.group("objects")
def objects_group() -> None:
    """An S3-compatible object store (issue 18): served standalone, or mirrored by `run`."""


@objects_group.command("verify")
@click.option("--config", "config_path", required=True, metavar="SITE.toml",
              type=click.Path(dir_okay=False), help="The primary's site config.")
def objects_verify(config_path: str) -> None:
    """Compare every object name and ETag with the secondary (run on the primary); the names
    that differ are copied again. Exit status 1 when some differed."""
    import time

    from foresync.config import load_daemon
    from foresync.status_view import fetch_status, volume_doc

    try:  # the volume whose link carries [s3] (the first, unless one says s3 = true)
        dcfg = load_daemon(config_path)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = next((v for v in dcfg.volumes if v.s3_listen is not None), dcfg.first)
    _call(config_path, "/objects/verify", {}, what="objects verify",
          volume=cfg.name if dcfg.multi else None)
    deadline = time.monotonic() + 600
    while True:
        found = volume_doc(fetch_status(cfg), cfg.name).get("objects", {}).get("verify_mismatches")
        if found is not None:
            break
        if time.monotonic() > deadline:
            raise click.ClickException("the objects verify did not finish within 600 s")
        time.sleep(0.2)
    if found:
        click.echo(f"{len(found)} objects differed (being copied again): {', '.join(found[:20])}")
        sys.exit(1)
    click.echo("both sites hold the same objects with the same ETags")


@objects_group.command("serve")
@click.option("--dir", "directory", required=True, metavar="DIR", type=click.Path(file_okay=False),
              help="The object store's directory (created if missing; layout in docs/design.md).")
@click.option("--listen", default="127.0.0.1:9000", show_default=True, metavar="HOST:PORT",
              help="Address to serve S3 on (port 0 picks a free port).")
@click.option("--credentials-file", required=True, metavar="FILE", type=click.Path(dir_okay=False),
              help="Lines 'ACCESS_KEY_ID SECRET'; every request must be signed (SigV4) by one.")
@click.option("--tls-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Serve HTTPS: DIR holds server-cert.pem and server-key.pem (as for NBD).")
def objects_serve(directory: str, listen: str, credentials_file: str, tls_dir: str | None) -> None:
    """Serve a directory of buckets over S3 (SigV4), without replication."""
    from foresync import tls
    from foresync.objects.s3 import S3Frontend, load_credentials, start_server
    from foresync.objects.store import Store

    try:
        host, port = parse_hostport(listen, "--listen")
        credentials = load_credentials(credentials_file)
        tls_ctx = tls.server_context(tls_dir) if tls_dir else None
        store = Store(directory)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None

    async def serve_until_stopped(stop: asyncio.Event) -> None:
        runner, (bound_host, bound_port) = await start_server(
            S3Frontend(store, credentials), host, port, tls_ctx)
        scheme = "https" if tls_ctx else "http"
        click.echo(f"serving objects in {directory} as {scheme}://{bound_host}:{bound_port}", err=True)
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        await runner.cleanup()

    try:
        run_async(serve_until_stopped)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {listen}: {exc.strerror or exc}") from None
    finally:
        store.close()


CONFIG_OPTION = click.option("--config", "config_path", required=True, metavar="SITE.toml",
                             type=click.Path(dir_okay=False),
                             help="The site's TOML config (see docs/operations.md).")


VOLUME_OPTION = click.option(
    "--volume", "volume", default=None, metavar="NAME",
    help="The volume to act on, by its [[volume]] name (needed when the config has several).")


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
@click.option("--role", required=True, type=click.Choice(["primary", "secondary"]),
              help="What this site starts as. The primary mints the volume identity; a new "
                   "secondary adopts it on first connect.")
@click.option("--force", is_flag=True, help="Overwrite existing site metadata (forgets identity and record).")
def init(config_path: str, volume: str | None, role: str, force: bool) -> None:
    """Create a site's metadata: identity, role, epoch 1 and an empty record (for every volume
    of a config with [[volume]] tables, or the one named by --volume)."""

    from foresync.config import load_daemon
    from foresync.daemon.metadata import check_meta_dir
    from foresync.daemon.run import check_init, init_site
    from foresync.daemon.site_lock import SiteLock
    from foresync.errors import SiteInUse

    try:
        dcfg = load_daemon(config_path)
        volumes = [dcfg.volume(volume)] if volume is not None else list(dcfg.volumes)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    prefix = {cfg.name: f"{cfg.name}: " if dcfg.multi else "" for cfg in volumes}
    for cfg in volumes:  # every volume checked before any is made: no half-initialised config
        try:
            check_init(cfg, force)
        except (ForesyncError, OSError) as exc:
            done = "; no volume initialised" if len(volumes) > 1 else ""
            raise click.ClickException(f"{prefix[cfg.name]}{exc}{done}") from None
    for cfg in volumes:
        try:
            check_meta_dir(cfg.meta, create=True)  # before the lock file: nothing made in vain
            # A daemon may be running on it: never pull the metadata from under one.
            with SiteLock.acquire(cfg.meta, "foresync init"):
                meta = init_site(config_path, role, force, volume=cfg.name if dcfg.multi else None)
        except SiteInUse as exc:
            raise click.ClickException(f"{exc}: stop it before `foresync init`; nothing changed") from None
        except ForesyncError as exc:
            raise click.ClickException(f"{prefix[cfg.name]}{exc}") from None
        identity = meta.volume_id.hex() if meta.volume_id else "adopted from the primary on first connect"
        click.echo(f"{prefix[cfg.name]}initialised {role} site (epoch {meta.epoch}, volume identity {identity})")


@main.command()
@CONFIG_OPTION
@click.option("--assume-all-out-of-sync", "assume_all", is_flag=True,
              help="Treat every extent as possibly different (damaged metadata, or any doubt): a "
                   "primary copies the whole volume on the next connect, a secondary is marked "
                   "inconsistent and compares every extent. Damaged files are kept aside. Use once.")
def run(config_path: str, assume_all: bool) -> None:
    """Run a site until SIGTERM or SIGINT. The role comes from the site metadata."""
    from foresync.config import load
    from foresync.daemon.run import run_site
    from foresync.errors import SiteInUse

    with contextlib.suppress(ForesyncError):  # run_site loads it again and reports the error
        cfg = load(config_path)
        _use_log_format(cfg.log_format)

    try:
        run_async(lambda stop: run_site(config_path, stop, assume_all_out_of_sync=assume_all))
    except SiteInUse as exc:
        raise click.ClickException(f"cannot run: {exc}; stop it first, or give this site its own "
                                   "[volume] meta") from None
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw /status JSON (the machine view).")
@click.option("--watch", "watch_s", type=float, default=None, metavar="SECONDS", is_flag=False,
              flag_value=1.0, help="Refresh every SECONDS (1 if no value) until Ctrl-C.")
@click.option("--volume", "volume", default=None, metavar="NAME",
              help="Show this volume in detail (a daemon of several volumes shows one line each).")
@click.option("--details", is_flag=True, help="Show every volume in detail.")
def status(config_path: str, as_json: bool, watch_s: float | None, volume: str | None,
           details: bool) -> None:
    """Show a running site's replication state at a glance (from its admin HTTP /status)."""
    import json
    import time

    from foresync.config import load
    from foresync.status_view import fetch_status, render, render_daemon, volume_doc

    try:
        cfg = load(config_path)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    while True:
        try:
            doc = fetch_status(cfg)
            if volume is not None:
                doc = volume_doc(doc, volume)
        except ForesyncError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            click.echo(json.dumps(doc, indent=2))
        else:
            if watch_s:
                click.clear()
            if volume is not None:
                click.echo(render(volume, doc))
            elif len(doc.get("volumes") or {}) > 1:
                click.echo(render_daemon(doc, details))
            else:
                click.echo(render(cfg.name, doc))
        if not watch_s:
            return
        try:
            time.sleep(watch_s)
        except KeyboardInterrupt:
            return


@main.group("cluster")
def cluster_group() -> None:
    """Automatic failover with fencing on etcd ([cluster], docs/operations.md)."""


@cluster_group.command("status")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON: etcd's volumes and this site.")
def cluster_status(config_path: str, as_json: bool) -> None:
    """Every volume in etcd with its epoch, lease holder and the lease's remaining time, and this
    site's own role, epoch and fence (from its /status)."""
    import json

    from foresync.cluster_view import cluster_status as gather
    from foresync.cluster_view import render_cluster

    try:
        cfg = _load(config_path)
        volumes, here = gather(cfg)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        # "site": the first (a one-volume site's only) volume here, as before; "sites": each one
        first = here[0] if here else None
        click.echo(json.dumps({"volumes": volumes, "site": first, "sites": here or []}, indent=2))
    else:
        click.echo(render_cluster(volumes, here))


ANSWER_TIMEOUT_S = 120.0  # the admin server answers 504 after 100 s; demote may take 60 s
Answer = tuple[int, dict[str, object]]


def _load(config_path: str, volume: str | None = None) -> SiteConfig:
    from foresync.config import load

    try:
        return load(config_path, volume)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None


def _decode(status: int, reason: str, raw: bytes) -> Answer:
    """The site's answer as (status, JSON object); any other body is a one-line error."""
    import json

    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = " ".join(raw.decode("utf-8", "replace").split())[:200] or "(empty)"
        raise click.ClickException(f"the site answered HTTP {status} {reason} with a body that is "
                                   f"not a JSON object: {text}")
    return status, doc


def _post(cfg: SiteConfig, path: str, body: dict[str, object]) -> Answer | None:
    """POST to the site's admin API; None when nothing listens on its address (the daemon is
    not running, or runs with another [admin] listen: the offline path's lock tells which)."""
    import http.client
    import json
    import urllib.error
    import urllib.request

    host, port = cfg.admin_listen
    url = f"http://{host}:{port}{path}"
    headers = {"Content-Type": "application/json"}
    if cfg.admin_token_file:
        from foresync.daemon.security import read_secret

        try:
            token = read_secret(cfg.admin_token_file, "[admin] token_file")
        except ForesyncError as exc:
            raise click.ClickException(str(exc)) from None
        headers["Authorization"] = "Bearer " + token.decode("latin-1")
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as response:
            return _decode(response.status, response.reason, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return _decode(exc.code, exc.reason, exc.read())
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        raise click.ClickException(f"cannot reach the site's admin API at {url}: {exc.reason}") from None
    except TimeoutError:
        raise click.ClickException(f"no answer from the site's admin API at {url} within "
                                   f"{ANSWER_TIMEOUT_S:g} s; it may still be working on it: check "
                                   f"`foresync status --config {cfg.path}`") from None
    except (OSError, http.client.HTTPException) as exc:
        raise click.ClickException(f"the site's admin API at {url} failed to answer: "
                                   f"{exc or type(exc).__name__}") from None


def _offline(cfg: SiteConfig, command: str, change: Callable[[], Result]) -> Result:
    """Change the metadata without the daemon, holding the metadata lock: a daemon that holds
    it is running, though its admin API did not answer at the address in this config."""
    import os

    from foresync.daemon.site_lock import SiteLock
    from foresync.errors import SiteInUse

    host, port = cfg.admin_listen
    try:
        with SiteLock.acquire(cfg.meta, f"foresync {command} (offline)"):
            return change()
    except SiteInUse as exc:
        raise click.ClickException(
            f"{exc}; nothing answered at {host}:{port}, the admin API address of "
            f"{os.path.basename(cfg.path)}: check [admin] listen; nothing changed") from None


def _call(config_path: str, path: str, body: dict[str, object], expect: int = 200,
          offline: Callable[[SiteConfig], Result] | None = None, what: str = "",
          volume: str | None = None) -> dict[str, object]:
    """POST to the running site (or do ``offline`` under the metadata lock when nothing
    answers); any refusal or error becomes a clear message and a non-zero exit. ``volume``
    names the volume of a daemon of several (the body key ``volume``)."""
    cfg = _load(config_path, volume)
    if volume is not None:
        body = {**body, "volume": volume}
    answer = _post(cfg, path, body)
    if answer is None:
        host, port = cfg.admin_listen
        if offline is None:
            raise click.ClickException(f"the site is not running (nothing answers on its admin API "
                                       f"at {host}:{port}); {what or path} needs it")
        from foresync.daemon.results import answer_of

        try:  # a refusal (errors.RequestRefused) is a ForesyncError: a message, nothing changed
            answer = answer_of(_offline(cfg, path.strip("/"), lambda: offline(cfg)))
        except ForesyncError as exc:
            raise click.ClickException(str(exc)) from None
    status, doc = answer
    if status != expect:
        raise click.ClickException(str(doc.get("error", doc)))
    return doc


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
@click.option("--force", is_flag=True,
              help="Promote even if the primary still seems connected, or this copy is inconsistent.")
def promote(config_path: str, volume: str | None, force: bool) -> None:
    """Failover: make this secondary the primary of a new epoch and serve NBD.

    Its record becomes the failback set: when the old primary returns it becomes secondary by
    itself and receives only those extents plus what was written here since."""
    doc = _call(config_path, "/promote", {"force": force},
                offline=lambda cfg: _promote_offline(cfg, force), volume=volume)
    failback = doc.get("failback_bytes")
    click.echo(f"promoted: now primary at epoch {doc.get('epoch')}; failback set "
               f"{doc.get('failback_extents')} extents "
               f"({format_size(failback) if isinstance(failback, int) else '? bytes'})")


def _promote_offline(cfg: SiteConfig, force: bool) -> Result:
    import os

    from foresync.daemon import metadata as site
    from foresync.daemon.group_unit import open_image
    from foresync.daemon.transitions import open_record, roll_back_then_promote
    from foresync.journal.undo import UndoLog
    from foresync.storage.backend import ImageBackend

    meta = site.load(cfg.meta)
    if meta.role != "secondary":
        raise RequestRefused("this site is already the primary")
    if meta.volume_id is None:
        raise RequestRefused("this site has never connected to a primary: it holds no copy of "
                             "the volume to promote")
    # Same as the running daemon at start: a missing or damaged journal widens first (issue 12).
    meta, journal = open_record(cfg, meta)
    assert journal is not None
    journal.close()
    opened: list[ImageBackend] = []

    def image() -> ImageBackend:
        opened.append(open_image(cfg))  # a group's: every member (daemon/group_unit.py)
        return opened[-1]

    try:
        done = roll_back_then_promote(cfg, meta, journal.replayed.state, image,
                                      UndoLog(os.path.join(cfg.meta, site.UNDO_FILE)), force)
    finally:
        for backend in opened:
            backend.close()
    if done.restored is not None:
        click.echo(f"rolled back an unfinished resync: {done.restored} extents restored", err=True)
    return done.result(cfg)


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
def demote(config_path: str, volume: str | None) -> None:
    """Planned switchover: stop serving, wait until the secondary has every write, step down.

    Then `foresync promote` on the other site loses nothing."""
    doc = _call(config_path, "/demote", {}, what="demote (of the running primary)", volume=volume)
    click.echo(f"demoted: now secondary at epoch {doc.get('epoch')}")


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
@click.option("--discard-local", is_flag=True, required=True,
              help="Throw away this site's changes since the histories diverged.")
def resolve(config_path: str, volume: str | None, discard_local: bool) -> None:
    """After a split brain: make this site the loser. It becomes secondary of the other site,
    which copies back every extent either side changed."""
    def offline(cfg: SiteConfig) -> Result:
        from foresync.daemon import metadata as site
        from foresync.daemon.results import Discarded
        from foresync.daemon.transitions import discard_local as discard

        meta = discard(cfg, site.load(cfg.meta))
        return Discarded(len(meta.stale))

    doc = _call(config_path, "/resolve", {"discard-local": discard_local}, offline=offline,
                volume=volume)
    click.echo(f"local changes discarded: {doc.get('stale_extents')} extents will be copied from the "
               "other site when it connects")


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
@click.option("--repair", is_flag=True, help="Copy mismatched extents from the primary again.")
@click.option("--no-wait", is_flag=True, help="Start the verify and return at once.")
def verify(config_path: str, volume: str | None, repair: bool, no_wait: bool) -> None:
    """Online verify: compare every extent's xxh3 checksum across the link (run on the primary).

    Extents being written while they are compared are compared again afterwards. Exit status 1
    when mismatches were found (and not repaired)."""
    import time

    from foresync.status_view import fetch_status, mismatch_list, verify_line, volume_doc

    doc = _call(config_path, "/verify", {"repair": repair}, expect=202, what="verify", volume=volume)
    cfg = _load(config_path, volume)
    if no_wait:
        click.echo(f"verify started over {doc.get('total_extents')} extents")
        return
    tty = sys.stdout.isatty()  # a script or a log gets one line per step, not \r redraws
    while True:
        try:
            progress = volume_doc(fetch_status(cfg), cfg.name)["verify"]
        except (ForesyncError, KeyError, TypeError) as exc:
            raise click.ClickException(f"lost track of the verify: {exc}") from None
        click.echo(f"\r{verify_line(progress)}" if tty else verify_line(progress), nl=not tty)
        if not progress["active"]:
            break
        time.sleep(0.5)
    if tty:
        click.echo()
    if progress["mismatches"]:
        action = ("being repaired" if repair else
                  "marked out of sync: copied at the next connect, or now with --repair")
        click.echo(f"mismatched extents ({action}): {mismatch_list(progress)}")
        if not repair:
            sys.exit(1)
    else:
        click.echo("both sites hold identical data")


@main.command()
@click.option("--config", "config_path", metavar="SITE.toml", type=click.Path(dir_okay=False),
              help="The site's TOML config: inspect its [volume] meta (sizes in bytes too).")
@click.option("--meta", "meta_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="The site's metadata directory ([volume] meta in its config), without a config.")
@click.option("--entries/--no-entries", default=False, show_default=True,
              help="Also list every journal entry.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON document.")
@VOLUME_OPTION
def inspect(config_path: str | None, meta_dir: str | None, entries: bool, as_json: bool,
            volume: str | None) -> None:
    """Show a site's metadata offline: role, epoch, the record (extents as ranges), the journal,
    the out-of-sync set and any undo log. Read-only: safe while the site runs, and on a journal a
    crash left torn (nothing is truncated)."""
    import json

    from foresync import inspect_view

    if (config_path is None) == (meta_dir is None):
        raise click.UsageError("give --config SITE.toml or --meta DIR")
    extent_size = None
    if config_path is not None:
        cfg = _load(config_path, volume)
        meta_dir, extent_size = cfg.meta, cfg.extent_size
    assert meta_dir is not None
    try:
        doc = inspect_view.gather(meta_dir, extent_size, entries)
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(doc, indent=2) if as_json else inspect_view.render(doc))


@main.command()
@CONFIG_OPTION
@VOLUME_OPTION
@click.option("--since-start", is_flag=True,
              help="First replay the current state (role, link, consistency, any resync or verify).")
def events(config_path: str, volume: str | None, since_start: bool) -> None:
    """Follow a running site's state changes: one JSON object a line, with a timestamp (role and
    epoch, link up and down with the reason, resync, consistency, split brain, verify, admin
    actions), until the site stops or Ctrl-C."""
    import http.client
    from urllib.parse import urlencode

    cfg = _load(config_path, volume)
    host, port = cfg.admin_listen
    query = {**({"since-start": "1"} if since_start else {}), **({"volume": volume} if volume else {})}
    path = "/events" + (f"?{urlencode(query)}" if query else "")
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        sock = connection.sock  # getresponse hands it to the response (Connection: close)
        response = connection.getresponse()
        if response.status != 200:
            said = response.read().decode(errors="replace").strip()
            raise click.ClickException(f"GET {path} answered {response.status} {response.reason}"
                                       + (f": {said}" if said else ""))
        if sock is not None:
            sock.settimeout(None)  # a quiet site sends nothing for hours
        for line in response:
            click.echo(line.decode().rstrip("\n"))
    except KeyboardInterrupt:
        return
    except (OSError, http.client.HTTPException) as exc:
        raise click.ClickException(f"site {cfg.name} is not answering on http://{host}:{port}"
                                   f"{path} ({describe_os_error(exc) if isinstance(exc, OSError) else exc}); "
                                   f"is `foresync run --config {cfg.path}` running?") from None
    finally:
        connection.close()


@main.group("config")
def config_group() -> None:
    """Site config files."""


@config_group.command("example")
@click.option("--role", required=True, type=click.Choice(["primary", "secondary"]),
              help="The role the site starts as; sets its file names and example ports.")
@click.option("--peer", metavar="HOST:PORT",
              help="The other site's [link] listen (default: the other role's example address, "
                   "for two sites on one machine).")
@click.option("--listen", "link_listen", metavar="HOST:PORT",
              help="This site's [link] listen (default: the role's example address).")
@click.option("--name", default="vol0", show_default=True, help="[volume] name.")
@click.option("--size", default="256MiB", show_default=True, metavar="SIZE", help="[volume] size.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the config to this file (never overwritten) instead of stdout.")
def config_example(role: str, peer: str | None, link_listen: str | None, name: str, size: str,
                   output: str | None) -> None:
    """Print a commented site config that `init` and `run` accept as it is."""
    from foresync.config_example import example

    parse_size(size, "--size")
    text = example(role, peer, name=name, size=size, link_listen=link_listen)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "x") as handle:
            handle.write(text)
    except FileExistsError:
        raise click.ClickException(f"{output} exists; not overwritten") from None
    click.echo(f"wrote {output}: edit it, then `foresync init --config {output} --role {role}`")


@main.command()
@click.option("--keep", is_flag=True, help="Leave the sites running and print how to explore them.")
@click.option("--delay-ms", default=5, show_default=True, type=click.IntRange(0, 1000),
              help="One-way delay the emulated WAN link adds, in milliseconds.")
@click.option("--standalone", is_flag=True,
              help="Instead: the standalone NBD server (foresync serve) with real clients.")
def demo(keep: bool, delay_ms: int, standalone: bool) -> None:
    """Two sites on loopback: writes, a primary crash, failover, failback, identical copies."""
    if standalone:
        from foresync.demo_standalone import run_standalone_demo

        sys.exit(run_standalone_demo(keep=keep))
    from foresync.demo import run_demo

    sys.exit(run_demo(keep=keep, delay_ms=delay_ms))


FDATASYNC_S = 0.005  # what tune adds to the round trip before a write is clean (record/replay.py)


def _duration_s(text: str, what: str) -> float:
    """``10ms``, ``0.5s`` or a bare number of milliseconds."""
    try:
        if text.endswith("ms"):
            value = float(text[:-2]) / 1e3
        elif text.endswith("us"):
            value = float(text[:-2]) / 1e6
        elif text.endswith("s"):
            value = float(text[:-1])
        else:
            value = float(text) / 1e3
    except ValueError:
        raise click.BadParameter(f"expected a duration such as 10ms, got {text!r}", param_hint=what) from None
    if value <= 0:
        raise click.BadParameter(f"must be positive, got {text!r}", param_hint=what)
    return value


@main.command()
@click.option("--trace", "trace_path", required=True, metavar="FILE",
              help="A trace from foresync serve --trace or [nbd] trace (raw, .xz or .gz).")
@click.option("--bound", default=None, metavar="SIZE",
              help="Failback bound to fit: capacity x extent size (default: 1/16 of the volume).")
@click.option("--rtt", default="10ms", show_default=True, metavar="DURATION",
              help="Round trip to the secondary: what a miss costs.")
@click.option("--qd", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Writes the host keeps in flight, for the IOPS ceiling.")
@click.option("--png", "png_path", metavar="FILE", help="Draw the miss-ratio curve here (needs matplotlib).")
@click.option("--all", "show_all", is_flag=True, help="List every configuration tried, not the best 12.")
def tune(trace_path: str, bound: str | None, rtt: str, qd: int, png_path: str | None, show_all: bool) -> None:
    """Replay a trace through the record code and recommend a [record] configuration."""
    from foresync import tune as tuning

    rtt_s = _duration_s(rtt, "--rtt")
    try:
        volume_size, writes = tuning.load_trace(trace_path)
        bound_bytes = parse_size(bound, "--bound") if bound else volume_size // 16
        report = tuning.sweep(volume_size, writes, bound_bytes, clean_lag_s=rtt_s + FDATASYNC_S,
                              progress=lambda line: log.debug("replayed: %s", line))
    except ForesyncError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{trace_path}: {len(writes)} writes on a {format_size(volume_size)} volume; "
               f"bound {format_size(bound_bytes)} ({bound_bytes / volume_size:.1%} of the volume), "
               f"RTT {rtt_s * 1e3:g} ms, QD {qd}")
    for line in tuning.render_table(report, rtt_s, qd, limit=len(report.results) if show_all else 12):
        click.echo(line)
    click.echo("")
    for line in tuning.render_claims(report):
        click.echo(line)
    click.echo("")
    for line in tuning.render_curve(report):
        click.echo(line)
    if png_path:
        try:
            tuning.draw_png(report, trace_path.rsplit("/", 1)[-1], png_path)
        except ImportError:
            raise click.ClickException("--png needs matplotlib: pip install 'foresync[tune]'") from None
        click.echo(f"curve drawn in {png_path}")
    click.echo("\nrecommended (both sites):")
    for line in tuning.recommend(report):
        click.echo("  " + line)


if __name__ == "__main__":
    main()
