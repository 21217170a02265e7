"""Objects as files under one directory, with conditional writes: the embedded broker's disk.

Each object of a bucket is one file, ``ROOT/<bucket>/<key>.obj`` (the suffix lets a key be
both an object and a prefix of others, as S3 allows). A write goes to a temporary file in the
same directory and is renamed over the object, so a reader, or a crash at any point, sees the
old object or the new one, never a torn one. Within one process every decision (does the
object exist, does its ETag match) and the rename that follows it run without an ``await`` in
between, so a conditional write is atomic with respect to every other request.

ETags are ``"<epoch>-<n>"``: a random epoch per process and a counter per write, never reused,
so a stale ``If-Match`` can not match a newer object even when the bytes are the same (no ABA).
They are not persisted: after a restart every object gets a fresh one, and a client holding an
old ETag gets a precondition failure and reads the object again, which is what it would do
after any concurrent change.

With ``sync=True`` each write is fsynced (file, then directory) before it is acknowledged,
so it survives a power loss; without, it survives the death of any process (the kernel's page
cache outlives them) but not of the machine.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".obj"
_TMP_PREFIX = ".tmp-"


class PreconditionFailed(Exception):
    """A conditional write or read whose condition does not hold."""


class ObjectStoreError(Exception):
    """A key or bucket name the store refuses (not a safe relative path)."""


@dataclass(frozen=True)
class Meta:
    """What the store knows of an object without reading it."""

    key: str
    size: int
    etag: str
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class Listing:
    """One page of a listing: objects, common prefixes, and where the next page starts."""

    objects: list[Meta]
    prefixes: list[str]
    next_after: str | None  # None: this was the last page


def _check_name(name: str, what: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
        raise ObjectStoreError(f"unsafe {what} {name!r}")
    if "\0" in name:
        raise ObjectStoreError(f"unsafe {what} {name!r}")


class ObjectStore:
    """The objects under ``root``; the index of keys and their metadata is kept in memory.

    One store per directory at a time (an exclusive lock on ``root/.lock`` until
    :meth:`close`): two would each trust their own index and ETags. A store still shutting
    down is waited for, up to ``lock_timeout_s``.
    """

    def __init__(
        self, root: Path | str, *, sync: bool = False, lock_timeout_s: float = 10.0
    ) -> None:
        self.root = Path(root)
        self.sync = sync
        self._epoch = secrets.token_hex(4)
        self._writes = 0
        self._meta: dict[str, dict[str, Meta]] = {}  # bucket -> key -> meta
        self._keys: dict[str, list[str]] = {}  # bucket -> sorted keys
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = (self.root / ".lock").open("a")
        deadline = time.monotonic() + lock_timeout_s
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._lock.close()
                    raise ObjectStoreError(
                        f"{self.root} is in use by another object store"
                    ) from None
                time.sleep(0.1)
        self._load()

    def close(self) -> None:
        """Release the directory (idempotent)."""
        self._lock.close()

    # ---- reading the directory back ---------------------------------------------------------

    def _load(self) -> None:
        for bucket_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            bucket = bucket_dir.name
            metas = self._meta.setdefault(bucket, {})
            for dirpath, _, files in os.walk(bucket_dir):
                for name in files:
                    path = Path(dirpath) / name
                    if name.startswith(_TMP_PREFIX):  # a write that a crash interrupted
                        path.unlink(missing_ok=True)
                        continue
                    if not name.endswith(SUFFIX):
                        continue
                    key = path.relative_to(bucket_dir).as_posix()[: -len(SUFFIX)]
                    st = path.stat()
                    metas[key] = Meta(key, st.st_size, self._next_etag(), st.st_mtime)
            self._keys[bucket] = sorted(metas)

    @property
    def objects(self) -> int:
        """How many objects the store holds, in all buckets."""
        return sum(len(m) for m in self._meta.values())

    def _path(self, bucket: str, key: str) -> Path:
        _check_name(bucket, "bucket")
        if "/" in bucket:
            raise ObjectStoreError(f"unsafe bucket {bucket!r}")
        _check_name(key, "key")
        if any(part.endswith(SUFFIX) for part in key.split("/")[:-1]):
            # its directory could be the file of another key ("a" is "a.obj")
            raise ObjectStoreError(f"unsupported key {key!r}: a folder ends in {SUFFIX}")
        return self.root / bucket / (key + SUFFIX)

    def _next_etag(self) -> str:
        self._writes += 1
        return f'"{self._epoch}-{self._writes:x}"'

    # ---- objects ----------------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> Meta | None:
        """The object's metadata, or None if there is no such object."""
        return self._meta.get(bucket, {}).get(key)

    def get(self, bucket: str, key: str) -> tuple[Meta, bytes] | None:
        """The object and its bytes (consistent with each other), or None."""
        meta = self.head(bucket, key)
        if meta is None:
            return None
        # No await between the lookup and the read: no rename can come in between.
        return meta, self._path(bucket, key).read_bytes()

    def write_temporary(self, bucket: str, key: str, data: bytes) -> Path:
        """Stage ``data`` next to where the object will be (blocking: call off the loop when
        ``sync``); :meth:`commit` makes it the object."""
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        with tmp.open("wb") as f:
            f.write(data)
            if self.sync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def commit(
        self,
        bucket: str,
        key: str,
        staged: Path,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Meta:
        """Check the conditions and rename ``staged`` over the object, atomically.

        ``if_none_match="*"``: only if there is no such object; ``if_match``: only if the
        object's ETag is this one (or ``"*"``: if it exists). Raises :class:`PreconditionFailed`
        (the staged file is removed) when a condition does not hold.
        """
        current = self.head(bucket, key)
        try:
            _check(current, if_match=if_match, if_none_match=if_none_match)
        except PreconditionFailed:
            staged.unlink(missing_ok=True)
            raise
        path = self._path(bucket, key)
        os.replace(staged, path)
        meta = Meta(key, path.stat().st_size, self._next_etag(), time.time())
        metas = self._meta.setdefault(bucket, {})
        if key not in metas:
            bisect.insort(self._keys.setdefault(bucket, []), key)
        metas[key] = meta
        return meta

    def sync_directory(self, bucket: str, key: str) -> None:
        """Make a committed rename durable (blocking; only with ``sync``)."""
        if self.sync:
            fd = os.open(self._path(bucket, key).parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def put(self, bucket: str, key: str, data: bytes, **conditions: str | None) -> Meta:
        """Stage and commit in one call (blocking)."""
        meta = self.commit(bucket, key, self.write_temporary(bucket, key, data), **conditions)
        self.sync_directory(bucket, key)
        return meta

    def delete(self, bucket: str, key: str) -> bool:
        """Remove the object; whether it existed."""
        metas = self._meta.get(bucket, {})
        if metas.pop(key, None) is None:
            return False
        keys = self._keys[bucket]
        del keys[bisect.bisect_left(keys, key)]
        self._path(bucket, key).unlink(missing_ok=True)
        return True

    # ---- listing ----------------------------------------------------------------------------

    def list(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = None,
        after: str | None = None,
        max_keys: int = 1000,
    ) -> Listing:
        """Keys under ``prefix`` in byte order, after ``after``; with a ``delimiter``, the keys
        that have it past the prefix are rolled up into common prefixes (S3's ListObjectsV2)."""
        keys = self._keys.get(bucket, [])
        if after is not None and after >= prefix:
            i = bisect.bisect_right(keys, after)
            if delimiter and after.endswith(delimiter):  # the last page ended on a prefix
                i = bisect.bisect_left(keys, _successor(after), lo=i)
        else:
            i = bisect.bisect_left(keys, prefix)
        objects: list[Meta] = []
        prefixes: list[str] = []
        last: str | None = None
        while i < len(keys) and keys[i].startswith(prefix):
            if len(objects) + len(prefixes) >= max_keys:
                return Listing(objects, prefixes, last)
            key = keys[i]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if delimiter and cut >= 0:
                last = key[: cut + len(delimiter)]
                prefixes.append(last)
                i = bisect.bisect_left(keys, _successor(last), lo=i)  # past everything under it
            else:
                objects.append(self._meta[bucket][key])
                last = key
                i += 1
        return Listing(objects, prefixes, None)


def _successor(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _check(current: Meta | None, *, if_match: str | None, if_none_match: str | None) -> None:
    if if_none_match is not None:
        if current is not None and (if_none_match == "*" or _same(if_none_match, current.etag)):
            raise PreconditionFailed("the object exists")
    if if_match is not None:
        if current is None:
            raise PreconditionFailed("no such object")
        if if_match != "*" and not _same(if_match, current.etag):
            raise PreconditionFailed("the object changed")


def _same(condition: str, etag: str) -> bool:
    """Whether an If-Match/If-None-Match header names ``etag`` (a list, quoted or not)."""
    wanted = {c.strip().removeprefix("W/").strip('"') for c in condition.split(",")}
    return etag.strip('"') in wanted


def check_read(meta: Meta, *, if_match: str | None, if_none_match: str | None) -> bool:
    """Conditions of a read: False when ``If-None-Match`` matches (not modified); raises
    :class:`PreconditionFailed` when ``If-Match`` does not."""
    if if_match is not None and if_match != "*" and not _same(if_match, meta.etag):
        raise PreconditionFailed("the object changed")
    return not (
        if_none_match is not None and (if_none_match == "*" or _same(if_none_match, meta.etag))
    )
