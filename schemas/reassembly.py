"""Reassembly of chunked deltas: manifests and chunks in, verified tensors out.

The :class:`Reassembler` keys partial updates by (sender, update id), so duplicates,
re-ordering and interleaved senders are harmless; it verifies every chunk's hash as it arrives
(the one pass over a chunk's bytes besides placing it) and, when the update is whole, the
manifest's content hash, derived from those verified chunk hashes (no second pass over the
payload); it opens sealed chunks straight into its buffer, expires incomplete updates, and
hands back tensors that are views into the one buffer it assembled into. The hashes are
defined here; :mod:`schemas.delta` computes them on the sending side.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from schemas.errors import (
    ChunkCorrupt,
    ChunkError,
    ChunkTruncated,
    ContentHashMismatch,
    ManifestError,
    TensorFormatError,
)
from schemas.messages import DeltaChunk, DeltaManifest, DeltaMessage
from schemas.sealing import TAG_BYTES, Opener, SealError, Unsealer
from schemas.tensors import check_specs, unpack

if TYPE_CHECKING:
    import torch

#: Updates larger than this are refused by default (a 420M-parameter fp32 model is ~1.7 GB).
DEFAULT_MAX_UPDATE_BYTES = 4 * 1024**3


def chunk_hash(data: bytes | bytearray | memoryview) -> int:
    """The 64-bit hash every chunk carries."""
    return xxhash.xxh3_64_intdigest(data)


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """The xxh3-128 of some bytes (a schema-version-1 manifest's content hash was this of
    the whole payload; residual cache entries still use it)."""
    return xxhash.xxh3_128_hexdigest(data)


def derived_hash(chunk_hashes: Sequence[int], total_bytes: int, chunk_size: int) -> str:
    """A manifest's content hash (schema version 2): the xxh3-128 of the payload's size, the
    chunk size and every chunk's xxh3-64 in order, each as 8 little-endian bytes.

    A chunk whose bytes do not give its hash is refused on arrival; one that does but comes
    from another payload (or sits at another index) changes this hash. Computing it reads
    8 bytes per chunk, not the payload.
    """
    head = struct.pack("<QQ", total_bytes, chunk_size)
    return xxhash.xxh3_128_hexdigest(head + struct.pack(f"<{len(chunk_hashes)}Q", *chunk_hashes))


def payload_hash(pieces: Iterable[bytes | bytearray | memoryview], chunk_size: int) -> str:
    """The content hash (schema version 2) of a payload given as consecutive pieces (tensor
    memory and padding, e.g. ``Segments.iter_parts()``), cut into ``chunk_size`` chunks."""
    hashes: list[int] = []
    part, filled, total = xxhash.xxh3_64(), 0, 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while len(view):
            take = min(chunk_size - filled, len(view))
            part.update(view[:take])
            view, filled, total = view[take:], filled + take, total + take
            if filled == chunk_size:
                hashes.append(part.intdigest())
                part, filled = xxhash.xxh3_64(), 0
    if filled or not hashes:
        hashes.append(part.intdigest())
    return derived_hash(hashes, total, chunk_size)


@dataclass(frozen=True)
class CompletedDelta:
    """A fully reassembled, verified delta."""

    manifest: DeltaManifest
    payload: np.ndarray[Any, np.dtype[np.uint8]]

    @property
    def sender(self) -> str:
        return self.manifest.envelope.sender

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors, as views into :attr:`payload` (no copy)."""
        return unpack(self.manifest.tensors, self.payload)


@dataclass
class ReassemblyCounters:
    """What the reassembler has seen: tests assert them, dashboards read them."""

    manifests: int = 0
    chunks_accepted: int = 0
    chunks_duplicate: int = 0
    chunks_rejected: int = 0
    updates_completed: int = 0
    updates_expired: int = 0
    updates_rejected: int = 0
    bytes_reassembled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Partial:
    first_seen: float
    manifest: DeltaManifest | None = None
    buffer: np.ndarray[Any, np.dtype[np.uint8]] | None = None
    received: set[int] = field(default_factory=set)
    early: dict[int, DeltaChunk] = field(default_factory=dict)
    early_bytes: int = 0
    opener: Opener | None = None
    # Schema version 2: each placed chunk's verified hash, for the derived content hash.
    hashes: list[int] | None = None
    # Schema version 1 only: the whole payload's hash of chunks [0, hashed), folded in order.
    hasher: xxhash.xxh3_128 | None = None
    hashed: int = 0


Key = tuple[str, str]


class Reassembler:
    """Reassemble chunked deltas from any number of interleaved senders.

    ``add`` takes manifests and chunks in any order, ignores duplicates, raises a
    :class:`~schemas.errors.WireError` (and counts it) for a bad chunk or manifest without
    disturbing other updates, and returns a :class:`CompletedDelta` when an update is whole.

    With an ``unsealer`` it reads only deltas sealed to its owner, opening each chunk on
    arrival (a tampered one is refused alone); without one it refuses sealed deltas.
    """

    def __init__(
        self,
        *,
        unsealer: Unsealer | None = None,
        ttl_s: float = 600.0,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        remember_completed: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unsealer = unsealer
        self.ttl_s = ttl_s
        self.max_update_bytes = max_update_bytes
        self.counters = ReassemblyCounters()
        self._clock = clock
        self._partials: dict[Key, _Partial] = {}
        self._completed: OrderedDict[Key, None] = OrderedDict()
        self._remember = remember_completed

    @property
    def pending(self) -> int:
        """How many updates are incomplete."""
        return len(self._partials)

    def pending_keys(self) -> set[Key]:
        """(sender, update id) of every incomplete update."""
        return set(self._partials)

    def add(self, message: DeltaMessage) -> CompletedDelta | None:
        """Fold in one manifest or chunk; return the delta once it is complete."""
        key = (message.envelope.sender, message.update_id)
        if key in self._completed:
            if isinstance(message, DeltaChunk):
                self.counters.chunks_duplicate += 1
            return None
        partial = self._partials.get(key)
        if partial is None:
            partial = self._partials[key] = _Partial(first_seen=self._clock())
        if isinstance(message, DeltaManifest):
            self._add_manifest(key, partial, message)
        else:
            self._add_chunk(key, partial, message)
        return self._complete(key, partial)

    def discard(self, sender: str, update_id: str) -> bool:
        """Forget an incomplete update (for example when its sender left)."""
        return self._partials.pop((sender, update_id), None) is not None

    def expire(self, now: float | None = None) -> list[Key]:
        """Drop incomplete updates older than ``ttl_s``; return their keys."""
        now = self._clock() if now is None else now
        expired = [k for k, p in self._partials.items() if now - p.first_seen > self.ttl_s]
        for key in expired:
            del self._partials[key]
        self.counters.updates_expired += len(expired)
        return expired

    # -- internals -----------------------------------------------------------------------

    def _reject_chunk(self, error: ChunkError) -> ChunkError:
        self.counters.chunks_rejected += 1
        return error

    def _add_manifest(self, key: Key, partial: _Partial, manifest: DeltaManifest) -> None:
        if partial.manifest is not None:
            first = partial.manifest
            if first.content_hash != manifest.content_hash or first.seal != manifest.seal:
                self.counters.updates_rejected += 1
                raise ManifestError(
                    f"update {key[1]} from {key[0]}: a second manifest with another content hash"
                )
            return
        try:
            self._check_manifest(manifest)
            partial.opener = self._opener(manifest)
        except (ManifestError, TensorFormatError, SealError):
            self.counters.updates_rejected += 1
            if not partial.early:
                del self._partials[key]
            raise
        self.counters.manifests += 1
        partial.manifest = manifest
        # Not zero-filled: the chunks cover every byte, padding included.
        partial.buffer = np.empty(manifest.total_bytes, dtype=np.uint8)
        if manifest.seal is None and manifest.envelope.schema_version == 1:
            partial.hasher = xxhash.xxh3_128()
        elif manifest.seal is None:
            partial.hashes = [0] * manifest.chunk_count
        early, partial.early, partial.early_bytes = partial.early, {}, 0
        for chunk in early.values():
            try:
                self._place(partial, chunk)
            except (ChunkError, SealError):
                pass  # counted in _place; other chunks still count

    def _opener(self, m: DeltaManifest) -> Opener | None:
        if self.unsealer is not None:
            return self.unsealer.opener(m)
        if m.seal is not None:
            who = f"{m.kind} {m.update_id} from {m.envelope.sender}"
            raise SealError("sealed", f"{who}: sealed, and this reader has no key")
        return None

    def _check_manifest(self, m: DeltaManifest) -> None:
        who = f"update {m.update_id} from {m.envelope.sender}"
        if m.total_bytes < 0 or m.total_bytes > self.max_update_bytes:
            raise ManifestError(f"{who}: {m.total_bytes} bytes exceeds {self.max_update_bytes}")
        if m.chunk_size <= 0 or m.chunk_count != max(1, -(-m.total_bytes // m.chunk_size)):
            raise ManifestError(
                f"{who}: {m.chunk_count} chunks of {m.chunk_size} bytes cannot hold {m.total_bytes}"
            )
        try:
            check_specs(m.tensors, m.total_bytes)
        except TensorFormatError as exc:
            raise TensorFormatError(f"{who}: {exc}") from exc

    def _add_chunk(self, key: Key, partial: _Partial, chunk: DeltaChunk) -> None:
        if chunk_hash(chunk.data) != chunk.hash:
            raise self._reject_chunk(
                ChunkCorrupt(f"chunk {chunk.index} of update {key[1]} from {key[0]}: bad hash")
            )
        if partial.manifest is None:
            if chunk.index in partial.early:
                self.counters.chunks_duplicate += 1
                return
            if partial.early_bytes + len(chunk.data) > self.max_update_bytes:
                raise self._reject_chunk(
                    ChunkError(f"update {key[1]} from {key[0]}: too many bytes before its manifest")
                )
            # Hold the record's memory until the manifest says where the chunk goes.
            partial.early[chunk.index] = chunk
            partial.early_bytes += len(chunk.data)
            return
        self._place(partial, chunk)

    def _place(self, partial: _Partial, chunk: DeltaChunk) -> None:
        manifest, buffer = partial.manifest, partial.buffer
        assert manifest is not None and buffer is not None
        who = f"chunk {chunk.index} of update {chunk.update_id} from {manifest.envelope.sender}"
        if chunk.count != manifest.chunk_count or not 0 <= chunk.index < manifest.chunk_count:
            raise self._reject_chunk(
                ChunkError(f"{who}: index/count outside the manifest's {manifest.chunk_count}")
            )
        start = chunk.index * manifest.chunk_size
        expected = min(manifest.chunk_size, manifest.total_bytes - start)
        sent = expected + (TAG_BYTES if partial.opener is not None else 0)
        if len(chunk.data) != sent:
            raise self._reject_chunk(
                ChunkTruncated(f"{who}: {len(chunk.data)} bytes where {sent} belong")
            )
        if chunk.index in partial.received:
            self.counters.chunks_duplicate += 1
            return
        target = buffer.data[start : start + expected]
        if partial.opener is not None:
            try:
                partial.opener.open_into(chunk.index, chunk.data, target)
            except SealError:
                self.counters.chunks_rejected += 1
                raise
        else:
            target[:] = chunk.data
        partial.received.add(chunk.index)
        self.counters.chunks_accepted += 1
        if partial.hashes is not None:
            partial.hashes[chunk.index] = chunk.hash  # verified in _add_chunk
        elif partial.hasher is not None and chunk.index == partial.hashed:
            # Hash while the chunk is in cache, and every chunk that arrived before its turn;
            # completion then hashes nothing (in order) or only what never got its turn.
            partial.hasher.update(chunk.data)
            partial.hashed += 1
            while partial.hashed in partial.received:
                at = partial.hashed * manifest.chunk_size
                partial.hasher.update(buffer.data[at : at + manifest.chunk_size])
                partial.hashed += 1

    def _complete(self, key: Key, partial: _Partial) -> CompletedDelta | None:
        manifest, buffer = partial.manifest, partial.buffer
        if manifest is None or buffer is None or len(partial.received) != manifest.chunk_count:
            return None
        del self._partials[key]
        # A sealed delta's chunks were each authenticated when opened (and carry no hash).
        if partial.hashes is not None:
            whole: str | None = derived_hash(
                partial.hashes, manifest.total_bytes, manifest.chunk_size
            )
        else:
            whole = partial.hasher.hexdigest() if partial.hasher is not None else None
        if whole is not None and whole != manifest.content_hash:
            self.counters.updates_rejected += 1
            raise ContentHashMismatch(f"update {key[1]} from {key[0]}: content hash mismatch")
        self._completed[key] = None
        if len(self._completed) > self._remember:
            self._completed.popitem(last=False)
        self.counters.updates_completed += 1
        self.counters.bytes_reassembled += manifest.total_bytes
        return CompletedDelta(manifest, buffer)
