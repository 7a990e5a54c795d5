"""Every etcd call foresync makes, behind one small adapter (issue 16, part 3).

The decisions (when to renew, fence, acquire or promote) are made by the pure core in
replication/lease.py; this module only reads and writes the keys it describes, with a lease,
through the ``aetcd`` client (gRPC). Every call has a deadline (``rpc_timeout_s``); a failure of
any kind (etcd down, unreachable, no leader, a timeout) raises ``EtcdUnavailable``, and the next
call tries the next endpoint. Reads are linearizable: a read served by a member cut off from its
cluster's leader fails rather than answering stale.

The gRPC client runs on its own thread and event loop, never on the daemon's (uvloop). There, a
cancelled grpc.aio call whose connection had been cut never finished cancelling: the daemon's
SIGTERM waited on it for ever (a task dump showed ``UnaryUnaryCall._invoke`` pending under a
cancelling ``wait_for``). From the daemon's loop each call is now a future that a deadline or a
stop abandons at once, whatever the client does on its own thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aetcd
from aetcd import rpc

from foresync.cluster_config import ClusterConfig
from foresync.errors import ForesyncError
from foresync.replication.lease import Outdated, Record, Seen

log = logging.getLogger(__name__)
T = TypeVar("T")


class EtcdUnavailable(ForesyncError):
    """etcd did not answer in time, or refused: the caller tries again later."""


@dataclass(frozen=True, slots=True)
class Versions:
    """The ``mod_revision`` of each key at the last read (0: absent): what a CAS compares."""

    epoch: int = 0
    primary: int = 0
    outdated: int = 0


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with TLS: aetcd itself only opens plain-text channels."""

    def __init__(self, host: str, port: int, credentials: Any, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._credentials is None or self._connected.is_set():
            await super().connect()
            return
        insecure = rpc.insecure_channel
        credentials = self._credentials
        rpc.insecure_channel = lambda target, options: rpc.secure_channel(target, credentials, options)
        try:
            await super().connect()
        finally:
            rpc.insecure_channel = insecure


class EtcdValueDamaged(ForesyncError):
    """A foresync key in etcd holds a value that is not what foresync writes there (edited by
    hand, or another tool's): named with its key. A site that meets one takes and promotes
    nothing (it cannot know the lease's state) until it is fixed or deleted."""


def _parsed(key: bytes | str, value: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    name = key.decode(errors="replace") if isinstance(key, bytes) else key
    try:
        doc = json.loads(value)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        missing = [field for field in fields if field not in doc]
        if missing:
            raise KeyError(", ".join(missing))
        for field in fields[1:]:
            int(doc[field])  # every field but the site is an integer
    except (ValueError, TypeError, KeyError) as exc:
        why = f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
        raise EtcdValueDamaged(
            f"etcd key {name} holds {bytes(value[:80])!r}, not foresync's record "
            f"({{{', '.join(repr(f) for f in fields)}}}): {why}; delete it with `etcdctl del "
            f"{name}` or restore it (docs/operations.md section 11)") from None
    return doc


def _record(value: bytes, key: bytes | str = "") -> Record:
    doc = _parsed(key, value, ("site", "epoch", "epoch_id"))
    return Record(str(doc["site"]), int(doc["epoch"]), int(doc["epoch_id"]))


def _value(record: Record) -> bytes:
    return json.dumps({"site": record.site, "epoch": record.epoch,
                       "epoch_id": record.epoch_id}).encode()


def _outdated(value: bytes, key: bytes | str = "") -> Outdated:
    doc = _parsed(key, value, ("site", "epoch", "epoch_id", "generation"))
    return Outdated(str(doc["site"]), int(doc["epoch"]), int(doc["epoch_id"]), int(doc["generation"]))


def _outdated_value(mark: Outdated) -> bytes:
    return json.dumps({"site": mark.site, "epoch": mark.epoch, "epoch_id": mark.epoch_id,
                       "generation": mark.generation}).encode()


class _ClientThread:
    """A daemon thread running an asyncio loop for the gRPC client (see the module notes)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="etcd", daemon=True)
        self.thread.start()

    def submit(self, call: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class Etcd:
    def __init__(self, cfg: ClusterConfig, volume: str, rpc_timeout_s: float = 1.5) -> None:
        self.cfg = cfg
        prefix = cfg.prefix(volume)
        self.epoch_key = f"{prefix}epoch".encode()
        self.primary_key = f"{prefix}primary".encode()
        self.outdated_key = f"{prefix}outdated".encode()
        self.rpc_timeout_s = rpc_timeout_s
        self._endpoint = 0
        self._client: _Client | None = None
        self._thread = _ClientThread()
        self.versions = Versions()

    # -- connection -----------------------------------------------------------------------------

    def _credentials(self) -> Any:
        if not self.cfg.tls:
            return None
        import grpc

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.cfg.ca_file), read(self.cfg.key_file),
                                            read(self.cfg.cert_file))

    def _connect(self) -> _Client:
        if self._client is None:
            host, port = self.cfg.endpoints[self._endpoint % len(self.cfg.endpoints)]
            password = None
            if self.cfg.password_file is not None:
                password = Path(self.cfg.password_file).read_text().strip()
            self._client = _Client(host, port, self._credentials(), username=self.cfg.user,
                                   password=password, timeout=self.rpc_timeout_s,
                                   options={"grpc.enable_retries": 0})
        return self._client

    async def _call(self, what: str, call: Coroutine[Any, Any, T]) -> T:
        try:
            return await self._abandonable(self._thread.submit(call), self.rpc_timeout_s)
        except (TimeoutError, aetcd.exceptions.ClientError, rpc.AioRpcError, OSError) as exc:
            await self._drop()
            host, port = self.cfg.endpoints[(self._endpoint - 1) % len(self.cfg.endpoints)]
            raise EtcdUnavailable(f"etcd {host}:{port}: {what}: "
                                  f"{type(exc).__name__} {exc}".strip()) from None

    @staticmethod
    async def _abandonable(future: asyncio.Future[T], timeout_s: float) -> T:
        """The result within ``timeout_s``, else TimeoutError. Never waits for the call to
        finish cancelling (``asyncio.wait_for`` does, and a SIGTERM hung there): a deadline or
        our own cancellation abandons it at once."""
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not done:
            future.cancel()
            raise TimeoutError
        return future.result()

    async def _drop(self) -> None:
        """Forget the connection (the next call dials the next endpoint)."""
        client, self._client = self._client, None
        self._endpoint += 1
        if client is not None:
            try:
                await self._abandonable(self._thread.submit(client.close()), 1.0)
            except Exception as exc:  # closing a broken channel: nothing more to learn
                log.debug("closing the etcd client: %s", exc)

    async def aclose(self) -> None:
        """Close the client (bounded: 2 s), then stop its thread."""
        client, self._client = self._client, None
        try:
            if client is not None:
                await self._abandonable(self._thread.submit(client.close()), 2.0)
        finally:
            self._thread.stop()

    # -- the keys -------------------------------------------------------------------------------

    async def read(self) -> Seen:
        """The three keys at one revision, and the holder's remaining lease."""
        client = self._connect()

        async def both() -> tuple[Seen, Versions]:
            await client.connect()
            t = client.transactions
            _, (epoch, primary, outdated) = await client.transaction(
                compare=[], success=[t.get(self.epoch_key), t.get(self.primary_key),
                                     t.get(self.outdated_key)], failure=[])
            ttl = 0.0
            if primary:
                info = await client.get_lease_info(primary[0][1].lease, keys=False)
                ttl = float(max(0, info.TTL))
            seen = Seen(_record(epoch[0][0], self.epoch_key) if epoch else None,
                        _record(primary[0][0], self.primary_key) if primary else None, ttl,
                        _outdated(outdated[0][0], self.outdated_key) if outdated else None)
            return seen, Versions(epoch[0][1].mod_revision if epoch else 0,
                                  primary[0][1].mod_revision if primary else 0,
                                  outdated[0][1].mod_revision if outdated else 0)

        seen, self.versions = await self._call("read", both())
        return seen

    async def grant(self, ttl_s: float) -> tuple[int, float]:
        """A new lease: its id and the TTL etcd granted."""
        client = self._connect()
        lease = await self._call("grant a lease", client.lease(int(ttl_s)))
        return int(lease.id), float(lease.ttl)

    async def keepalive(self, lease_id: int) -> float:
        """Renew: the TTL etcd now counts down from (0: the lease is gone)."""
        client = self._connect()
        reply = await self._call("renew the lease", client.refresh_lease(lease_id))
        return float(reply.TTL) if reply is not None else 0.0

    async def revoke(self, lease_id: int) -> None:
        client = self._connect()
        await self._call("revoke the lease", client.revoke_lease(lease_id))

    async def acquire(self, lease_id: int, mine: Record, versions: Versions) -> bool:
        """A primary takes the lease for its own epoch: the epoch record unchanged since the
        read (or absent: the cluster's first start registers ours), the primary key absent or
        unchanged since the read (our previous run's, still on its lease)."""
        client = self._connect()
        t = client.transactions
        ops = [t.put(self.primary_key, _value(mine), lease=lease_id)]
        if versions.epoch == 0:
            ops.append(t.put(self.epoch_key, _value(mine)))
        compare = [t.mod(self.epoch_key) == versions.epoch,
                   t.mod(self.primary_key) == versions.primary]
        return await self._txn("take the lease", compare, ops)

    async def promote(self, lease_id: int, new: Record, versions: Versions) -> bool:
        """A secondary takes the lease for a new epoch: a CAS on the epoch record and the
        ``outdated`` mark it read (no mark written since), and the primary key still absent (the
        old primary's lease expired). A mark it read named the old epoch: it goes."""
        client = self._connect()
        t = client.transactions
        compare = [t.mod(self.epoch_key) == versions.epoch, t.create(self.primary_key) == 0,
                   t.mod(self.outdated_key) == versions.outdated]
        ops = [t.put(self.epoch_key, _value(new)),
               t.put(self.primary_key, _value(new), lease=lease_id), t.delete(self.outdated_key)]
        return await self._txn("register a new epoch", compare, ops)

    async def outdate(self, mark: Outdated, versions: Versions) -> bool:
        """A primary marks its secondary's copy outdated (lease.py), only while etcd's epoch
        record is unchanged since the read that found it ours: False if it changed."""
        client = self._connect()
        t = client.transactions
        return await self._txn("mark the secondary outdated",
                               [t.mod(self.epoch_key) == versions.epoch],
                               [t.put(self.outdated_key, _outdated_value(mark))])

    async def clear_outdated(self, versions: Versions) -> bool:
        """The secondary holds our data again: the mark goes, if unchanged since the read."""
        client = self._connect()
        t = client.transactions
        return await self._txn("clear the outdated mark",
                               [t.mod(self.outdated_key) == versions.outdated],
                               [t.delete(self.outdated_key)])

    async def restore(self, old: Record, ours: Record) -> bool:
        """Undo our ``promote`` that the site could not carry out: put the previous epoch record
        back, if it is still ours, so the old primary may take its lease again."""
        client = self._connect()
        t = client.transactions
        return await self._txn("restore the epoch record", [t.value(self.epoch_key) == _value(ours)],
                               [t.put(self.epoch_key, _value(old)), t.delete(self.primary_key)])

    async def _txn(self, what: str, compare: list[Any], ops: list[Any]) -> bool:
        client = self._connect()

        async def txn() -> bool:
            await client.connect()
            succeeded, _ = await client.transaction(compare=compare, success=ops, failure=[])
            return bool(succeeded)

        return await self._call(what, txn())


async def overview(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """Every volume of the cluster as etcd has it: its latest epoch, the lease holder with the
    lease's remaining seconds, and the ``outdated`` mark if one stands (``foresync cluster
    status``)."""
    etcd = Etcd(cfg, "")
    client = etcd._connect()
    prefix = f"/foresync/{cfg.name}/volumes/".encode()

    async def scan() -> list[dict[str, Any]]:
        await client.connect()
        rows: dict[str, dict[str, Any]] = {}
        for kv in await client.get_prefix(prefix):
            volume, _, name = kv.key[len(prefix):].decode().rpartition("/")
            row = rows.setdefault(volume, {"volume": volume, "epoch": None, "epoch_site": None,
                                           "holder": None, "holder_epoch": None,
                                           "remaining_s": None, "outdated": None})
            if name == "outdated":
                mark = _outdated(kv.value, kv.key)
                row["outdated"] = {"site": mark.site, "epoch": mark.epoch,
                                   "generation": f"{mark.generation:#x}"}
                continue
            record = _record(kv.value, kv.key)
            if name == "epoch":
                row["epoch"], row["epoch_site"] = record.epoch, record.site
            elif name == "primary":
                info = await client.get_lease_info(kv.lease, keys=False)
                row["holder"], row["holder_epoch"] = record.site, record.epoch
                row["remaining_s"] = max(0, int(info.TTL))
        return [rows[volume] for volume in sorted(rows)]

    try:
        return await etcd._call("list the volumes", scan())
    finally:
        await etcd.aclose()
