"""The S3-compatible HTTP front end (aiohttp): authenticate, route, and carry out on the store.

One catch-all handler per request: check AWS Signature V4 (``sigv4.verify``, every request),
split the path-style URL into bucket and key, pick the operation from the method, the query's
sub-resources and the copy-source header, and call the store. Every refusal is an ``S3Error``
turned into S3's XML error document here and nowhere else; anything unexpected is logged and
answered ``InternalError``. Bodies are read as a stream (aws-chunked decoded and its chunk
signatures checked on the way, a declared SHA-256 checked at the end) straight into the store's
temporary file, so a 5 GiB PUT never sits in memory. Slow store calls (fsync, multipart assembly,
copies) run in a worker thread so the event loop keeps serving.

Only path-style addressing (``http://host:port/bucket/key``) is served: it is what boto3, the aws
CLI, s3cmd and rclone use against a custom endpoint given as an address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from foresync.errors import ConfigError, StorageError
from foresync.objects import listing, sigv4, xmldoc
from foresync.objects.checksums import BodyChecksums
from foresync.objects.chunked import ChunkDecoder
from foresync.objects.names import check_bucket, check_key
from foresync.objects.object_file import ObjectInfo, OpenObject, PendingObject
from foresync.objects.ranges import content_range, parse_range
from foresync.objects.s3errors import S3Error
from foresync.objects.store import Store

log = logging.getLogger(__name__)

PUT_MAX_BYTES = 5 * 1024 ** 3
XML_BODY_MAX_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
OWNER = "foresync"
_SUBRESOURCES_IGNORED = {"encoding-type", "prefix", "delimiter", "max-keys", "marker",
                         "list-type", "continuation-token", "start-after", "fetch-owner",
                         "x-id", "max-parts", "part-number-marker"}


def load_credentials(path: str) -> dict[str, str]:
    """``[s3] credentials_file``: lines ``ACCESS_KEY_ID SECRET`` (see sigv4.parse_credentials)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the S3 credentials file {path}: {exc.strerror}") from None
    try:
        return sigv4.parse_credentials(text, path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class S3Frontend:
    def __init__(self, store: Store, credentials: dict[str, str],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.credentials = credentials
        self.clock = clock

    def application(self) -> web.Application:
        app = web.Application(client_max_size=XML_BODY_MAX_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        raw_path, _, raw_query = request.raw_path.partition("?")
        resource = unquote(raw_path)
        try:
            headers = {name.lower(): ",".join(request.headers.getall(name))
                       for name in set(request.headers.keys())}
            verified = sigv4.verify(request.method, raw_path, raw_query, headers,
                                    self.credentials, self.clock())
            log.debug("S3 %s %s?%s payload %s", request.method, resource, raw_query,
                      verified.payload_hash[:20])
            response = await self._route(request, verified, resource, raw_query)
        except S3Error as exc:
            if exc.status >= 500:
                log.warning("S3 %s %s: %s", request.method, resource, exc)
            response = self._error(request, exc.status, exc.code, exc.message,
                                   exc.resource or resource, request_id)
        except (StorageError, OSError) as exc:
            log.error("S3 %s %s failed: %s", request.method, resource, exc)
            response = self._error(request, 500, "InternalError", "the server could not store or "
                                   "read the object", resource, request_id)
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: nothing to answer
        except Exception:  # a bug: logged with its traceback, answered as S3 does
            log.exception("S3 %s %s: unexpected error", request.method, resource)
            response = self._error(request, 500, "InternalError", "internal error", resource,
                                   request_id)
        response.headers["x-amz-request-id"] = request_id
        response.headers["Server"] = "foresync"
        return response

    @staticmethod
    def _error(request: web.Request, status: int, code: str, message: str, resource: str,
               request_id: str) -> web.Response:
        if request.method == "HEAD":
            return web.Response(status=status)
        return web.Response(status=status, content_type="application/xml",
                            body=xmldoc.error(code, message, resource, request_id))

    async def _route(self, request: web.Request, verified: sigv4.Verified, path: str,
                     raw_query: str) -> web.StreamResponse:
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        bucket, _, key = path.lstrip("/").partition("/")
        method = request.method
        if not bucket:
            if method != "GET":
                raise S3Error("MethodNotAllowed", f"{method} / is not allowed")
            return _xml(xmldoc.list_buckets(OWNER, self.store.buckets()))
        check_bucket(bucket)
        if not key:
            return await self._bucket_op(request, verified, bucket, query)
        check_key(key)
        if method == "PUT":
            if "uploadId" in query:
                return await self._upload_part(request, verified, bucket, key, query)
            if "x-amz-copy-source" in request.headers:
                return await self._copy(request, bucket, key)
            return await self._put(request, verified, bucket, key)
        if method in ("GET", "HEAD"):
            if "uploadId" in query and method == "GET":
                return self._list_parts(bucket, key, query)
            return await self._get(request, bucket, key)
        if method == "DELETE":
            if "uploadId" in query:
                await asyncio.to_thread(self.store.abort_upload, query["uploadId"], bucket, key)
            else:
                await asyncio.to_thread(self.store.delete_object, bucket, key)
            return web.Response(status=204)
        if method == "POST" and "uploads" in query:
            upload_id = await asyncio.to_thread(self.store.create_upload, bucket, key,
                                                *_content_meta(request))
            return _xml(xmldoc.initiate_multipart(bucket, key, upload_id))
        if method == "POST" and "uploadId" in query:
            return await self._complete(request, verified, bucket, key, query["uploadId"])
        raise S3Error("NotImplemented", f"{method} on an object with {sorted(query)} is not implemented")

    # -- buckets ------------------------------------------------------------------------------
    async def _bucket_op(self, request: web.Request, verified: sigv4.Verified, bucket: str,
                         query: dict[str, str]) -> web.StreamResponse:
        method = request.method
        if method == "PUT" and not query:
            xmldoc.check_create_bucket(await self._small_body(request, verified))
            await asyncio.to_thread(self.store.create_bucket, bucket)
            return web.Response(status=200, headers={"Location": f"/{bucket}"})
        if method == "DELETE" and not query:
            await asyncio.to_thread(self.store.delete_bucket, bucket)
            return web.Response(status=204)
        if method == "HEAD":
            if not self.store.has_bucket(bucket):
                raise S3Error("NoSuchBucket", "the specified bucket does not exist", bucket)
            return web.Response(status=200)
        if method == "POST" and "delete" in query:
            return await self._delete_many(request, verified, bucket)
        if method != "GET":
            raise S3Error("NotImplemented", f"{method} on a bucket with {sorted(query)} is not implemented")
        if "versioning" in query:  # never versioned: an empty configuration says so
            self.store.sorted_keys(bucket)  # NoSuchBucket
            return _xml(xmldoc.versioning())
        if "location" in query:
            self.store.sorted_keys(bucket)  # NoSuchBucket
            return _xml(xmldoc.location())
        unknown = set(query) - _SUBRESOURCES_IGNORED
        if unknown:
            raise S3Error("NotImplemented", f"bucket sub-resource {sorted(unknown)} is not implemented")
        return self._list(bucket, query)

    def _list(self, bucket: str, query: dict[str, str]) -> web.Response:
        keys = self.store.sorted_keys(bucket)
        v2 = query.get("list-type") == "2"
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        max_keys = listing.max_keys_of(query.get("max-keys"))
        token = query.get("continuation-token", "")
        start_after = query.get("start-after", "")
        if v2:
            marker = listing.decode_token(token) if token else start_after
        else:
            marker = query.get("marker", "")
        page = listing.list_page(keys, prefix, delimiter, marker, max_keys)
        entries = []
        for key in page.keys:
            info = self.store.info(bucket, key)
            if info is not None:  # deleted since the snapshot: leave it out
                entries.append(xmldoc.Entry(key, info.mtime, f'"{info.etag}"', info.size))
        following = page.next_marker
        if v2 and following is not None:
            following = listing.encode_token(following)
        doc = xmldoc.ListingDoc(bucket, prefix, delimiter, max_keys,
                                query.get("encoding-type") == "url", v2,
                                token if v2 else marker, start_after if v2 else "")
        return _xml(xmldoc.list_objects(doc, entries, page.common_prefixes, page.is_truncated,
                                        following))

    async def _delete_many(self, request: web.Request, verified: sigv4.Verified,
                           bucket: str) -> web.Response:
        keys, quiet = xmldoc.parse_delete(await self._small_body(request, verified))
        self.store.sorted_keys(bucket)  # NoSuchBucket
        deleted, errors = [], []
        for key in keys:
            try:
                check_key(key)
                await asyncio.to_thread(self.store.delete_object, bucket, key)
                deleted.append(key)
            except S3Error as exc:
                errors.append((key, exc.code, exc.message))
        return _xml(xmldoc.delete_result([] if quiet else deleted, errors))

    # -- objects ------------------------------------------------------------------------------
    async def _receive(self, request: web.Request, verified: sigv4.Verified,
                       too_large: str) -> PendingObject:
        """The request body into a new pending file, at most PUT_MAX_BYTES (``too_large`` says
        so) and checked against Content-MD5; on any failure the pending file is dropped."""
        pending = self.store.begin()
        try:
            async for data in _body(request, verified):
                pending.write(data)
                if pending.size > PUT_MAX_BYTES:
                    raise S3Error("EntityTooLarge", too_large)
            _check_content_md5(request, pending.md5.digest())
        except BaseException:
            pending.abort()
            raise
        return pending

    async def _put(self, request: web.Request, verified: sigv4.Verified, bucket: str,
                   key: str) -> web.Response:
        self.store.sorted_keys(bucket)  # NoSuchBucket before reading the body
        pending = await self._receive(request, verified, "a single PUT is at most 5 GiB; use multipart")
        info = await asyncio.to_thread(self.store.commit_object, pending, bucket, key,
                                       *_content_meta(request))
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"'})

    async def _get(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        opened = self.store.open_object(bucket, key)
        try:
            info = opened.info
            span = parse_range(request.headers.get("Range"), info.size)
            headers = _object_headers(info)
            if span is None:
                first, last, status = 0, info.size - 1, 200
            else:
                (first, last), status = span, 206
                headers["Content-Range"] = content_range(span, info.size)
            headers["Content-Length"] = str(last - first + 1)
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            if request.method == "GET":
                await _send(response, opened, first, last + 1)
            await response.write_eof()
            return response
        finally:
            opened.close()

    async def _copy(self, request: web.Request, bucket: str, key: str) -> web.Response:
        source = unquote(request.headers["x-amz-copy-source"].partition("?")[0]).lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        check_bucket(src_bucket)
        check_key(src_key)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", f"x-amz-metadata-directive {directive!r}")
        replace = _content_meta(request) if directive == "REPLACE" else None
        info = await asyncio.to_thread(self.store.copy_object, src_bucket, src_key, bucket, key,
                                       replace)
        return _xml(xmldoc.copy_result(f'"{info.etag}"', info.mtime))

    # -- multipart ----------------------------------------------------------------------------
    async def _upload_part(self, request: web.Request, verified: sigv4.Verified, bucket: str,
                           key: str, query: dict[str, str]) -> web.Response:
        if "x-amz-copy-source" in request.headers:
            raise S3Error("NotImplemented", "UploadPartCopy is not implemented")
        number = _int_param(query, "partNumber", 0)
        upload_id = query["uploadId"]
        self.store.upload(upload_id, bucket, key)  # NoSuchUpload before reading the body
        pending = await self._receive(request, verified, "a part is at most 5 GiB")
        info = await asyncio.to_thread(self.store.commit_part, pending, upload_id, bucket, key, number)
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"'})

    def _list_parts(self, bucket: str, key: str, query: dict[str, str]) -> web.Response:
        parts = self.store.parts(query["uploadId"], bucket, key)
        marker = _int_param(query, "part-number-marker", 0)
        max_parts = min(_int_param(query, "max-parts", 1000), 1000)
        after = [(n, p.mtime, f'"{p.etag}"', p.size) for n, p in parts if n > marker]
        return _xml(xmldoc.list_parts(bucket, key, query["uploadId"], after[:max_parts], marker,
                                      max_parts, len(after) > max_parts))

    async def _complete(self, request: web.Request, verified: sigv4.Verified, bucket: str,
                        key: str, upload_id: str) -> web.Response:
        chosen = xmldoc.parse_complete_multipart(await self._small_body(request, verified))
        info = await asyncio.to_thread(self.store.complete_upload, upload_id, bucket, key, chosen)
        return _xml(xmldoc.complete_multipart(f"/{bucket}/{key}", bucket, key, f'"{info.etag}"'))

    async def _small_body(self, request: web.Request, verified: sigv4.Verified) -> bytes:
        body = bytearray()
        async for data in _body(request, verified):
            body += data
            if len(body) > XML_BODY_MAX_BYTES:
                raise S3Error("MalformedXML", "the request body is too large")
        return bytes(body)


async def _body(request: web.Request, verified: sigv4.Verified) -> AsyncIterator[bytes]:
    """The request body, decoded from aws-chunked when it is, and checked against its declared
    length, SHA-256, chunk signatures and x-amz-checksum-* values; an error at the end (a body cut
    short included) comes before anything is committed."""
    payload = verified.payload_hash
    headers = {name.lower(): value for name, value in request.headers.items()}
    decoder = None
    if payload in sigv4.STREAMING:
        decoder = ChunkDecoder(payload, verified.amz_date, verified.scope, verified.signing_key,
                               verified.signature)
    digest = hashlib.sha256() if payload not in sigv4.STREAMING and payload != sigv4.UNSIGNED_PAYLOAD \
        else None
    checksums = BodyChecksums(headers)
    raw = decoded = 0
    while True:
        data = await request.content.read(READ_CHUNK_BYTES)
        if not data:
            break
        raw += len(data)
        if decoder is not None:
            data = decoder.feed(data)
        if digest is not None:
            digest.update(data)
        checksums.update(data)
        decoded += len(data)
        if data:
            yield data
    _check_length(headers, "content-length", raw)
    if decoder is not None:
        decoder.close()
        _check_length(headers, "x-amz-decoded-content-length", decoded)
    if digest is not None and digest.hexdigest() != payload:
        raise S3Error("XAmzContentSHA256Mismatch", "the body does not match x-amz-content-sha256")
    checksums.check(headers, decoder.trailers if decoder is not None else {})


def _check_length(headers: dict[str, str], name: str, received: int) -> None:
    declared = headers.get(name)
    if declared is not None and declared.strip().isdigit() and int(declared) != received:
        raise S3Error("IncompleteBody", f"{name} is {declared} but {received} bytes came")


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name) or str(default)
    if not text.isdigit():
        raise S3Error("InvalidArgument", f"{name} = {text!r}: expected a whole number")
    return int(text)


def _check_content_md5(request: web.Request, md5: bytes) -> None:
    declared = request.headers.get("Content-MD5")
    if declared is None:
        return
    try:
        wanted = base64.b64decode(declared, validate=True)
    except ValueError:
        raise S3Error("InvalidDigest", "Content-MD5 is not base64") from None
    if wanted != md5:
        raise S3Error("BadDigest", "the body does not match Content-MD5")


def _content_meta(request: web.Request) -> tuple[str, dict[str, str]]:
    content_type = request.headers.get("Content-Type", "binary/octet-stream")
    metadata = {name.lower()[len("x-amz-meta-"):]: value for name, value in request.headers.items()
                if name.lower().startswith("x-amz-meta-")}
    return content_type, metadata


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {"ETag": f'"{info.etag}"', "Content-Type": info.content_type,
               "Last-Modified": xmldoc.http_date(info.mtime), "Accept-Ranges": "bytes"}
    for name, value in info.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    return headers


async def _send(response: web.StreamResponse, opened: OpenObject, start: int, stop: int) -> None:
    offset = start
    while offset < stop:
        data = opened.read(offset, min(READ_CHUNK_BYTES, stop - offset))
        if not data:
            raise StorageError("the object file ended early")
        await response.write(data)
        offset += len(data)


def _xml(body: bytes) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/xml")


async def start_server(frontend: S3Frontend, host: str, port: int,
                       tls: ssl.SSLContext | None) -> tuple[web.AppRunner, tuple[str, int]]:
    """Listen; return the runner (``await runner.cleanup()`` to stop) and the bound address."""
    runner = web.AppRunner(frontend.application(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True)
    await site.start()
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))
