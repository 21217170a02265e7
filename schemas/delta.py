"""Chunked model deltas: encode a state dict into a manifest and bounded chunks, and reassemble.

The sender lays tensors out in one payload, hashes it (xxh3-128) and each chunk (xxh3-64),
and slices chunks with ``memoryview`` (no copies). The receiver's :class:`Reassembler` keys
partial updates by (sender, update id), so duplicates, re-ordering and interleaved senders are
harmless; it verifies every chunk and the whole payload, expires incomplete updates, and hands
back tensors that are views into the one buffer it assembled into.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
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
from schemas.messages import (
    DeltaChunk,
    DeltaKind,
    DeltaManifest,
    DeltaMessage,
    Envelope,
    TensorCodec,
)
from schemas.sealing import TAG_BYTES, Opener, SealError, Unsealer, seal_delta
from schemas.signing import sign_manifest
from schemas.tensors import Segments, check_specs, layout, unpack

if TYPE_CHECKING:
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

#: Default chunk payload: well under Kafka's default 1 MiB record limit, envelope included.
DEFAULT_CHUNK_SIZE = 768 * 1024
#: Updates larger than this are refused by default (a 420M-parameter fp32 model is ~1.7 GB).
DEFAULT_MAX_UPDATE_BYTES = 4 * 1024**3


def chunk_hash(data: bytes | bytearray | memoryview) -> int:
    """The 64-bit hash every chunk carries."""
    return xxhash.xxh3_64_intdigest(data)


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """The 128-bit hash of a whole payload, as carried by the manifest."""
    return xxhash.xxh3_128_hexdigest(data)


def new_update_id() -> str:
    """A fresh, globally unique update id."""
    return uuid.uuid4().hex


class EncodedDelta:
    """A delta ready to publish: its manifest, then its chunks, built on demand."""

    def __init__(
        self, manifest: DeltaManifest, segments: Segments, sealed: list[bytes] | None = None
    ) -> None:
        self.manifest = manifest
        self.segments = segments
        self.sealed = sealed  # encrypted chunks of a sealed delta (schemas.sealing)

    def chunk(self, index: int) -> DeltaChunk:
        """Chunk ``index``: a view into the tensors' memory where it lies inside one tensor
        (or its ciphertext, when sealed)."""
        m = self.manifest
        if not 0 <= index < m.chunk_count:
            raise IndexError(f"chunk {index} of {m.chunk_count}")
        if self.sealed is not None:
            data: memoryview | bytes = self.sealed[index]
        else:
            data = self.segments.read(index * m.chunk_size, (index + 1) * m.chunk_size)
        view = data if isinstance(data, memoryview) else memoryview(data)
        return DeltaChunk(
            envelope=m.envelope,
            update_id=m.update_id,
            index=index,
            count=m.chunk_count,
            hash=chunk_hash(view),
            data=view,
        )

    @property
    def chunks(self) -> tuple[DeltaChunk, ...]:
        """Every chunk, materialised (tests and tools; publishing uses :meth:`messages`)."""
        return tuple(self.chunk(i) for i in range(self.manifest.chunk_count))

    def messages(self) -> Iterator[DeltaMessage]:
        """Manifest first, then chunks in order, lazily (receivers tolerate any order)."""
        yield self.manifest
        for i in range(self.manifest.chunk_count):
            yield self.chunk(i)


def encode_delta(
    tensors: Mapping[str, torch.Tensor],
    *,
    envelope: Envelope,
    kind: DeltaKind,
    base_version: int,
    sample_count: int = 0,
    version: int = 0,
    round: int = 0,
    metrics: Mapping[str, float] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    update_id: str | None = None,
    signer: Ed25519PrivateKey | None = None,
    codecs: Mapping[str, TensorCodec] | None = None,
    seal_to: Mapping[str, X25519PublicKey] | None = None,
) -> EncodedDelta:
    """Lay out and hash ``tensors``; chunks are cut from their memory as they are published.

    With a ``signer`` the manifest also carries the payload's BLAKE2b digest and the signer's
    Ed25519 signature (:mod:`schemas.signing`). ``codecs`` says which tensors are compressed
    and how (:mod:`schemas.compression`). With ``seal_to`` (recipient id -> X25519 public
    key) the chunks are encrypted so only those recipients can read them
    (:mod:`schemas.sealing`), and a signature covers the ciphertext. The tensors must not
    change until the delta has been published.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    specs, segments = layout(tensors)
    hasher = xxhash.xxh3_128()
    for part in segments.iter_parts():
        hasher.update(part)
    manifest = DeltaManifest(
        envelope=envelope,
        update_id=update_id or new_update_id(),
        kind=kind,
        tensors=specs,
        total_bytes=len(segments),
        content_hash=hasher.hexdigest(),
        chunk_size=chunk_size,
        chunk_count=max(1, -(-len(segments) // chunk_size)),
        base_version=base_version,
        sample_count=sample_count,
        version=version,
        round=round,
        metrics=dict(metrics or {}),
        codecs=dict(codecs or {}),
    )
    sealed = None
    if seal_to is not None:
        manifest, sealed = seal_delta(manifest, segments, seal_to)
    if signer is not None:
        manifest = sign_manifest(manifest, signer, sealed or segments.iter_parts())
    return EncodedDelta(manifest, segments, sealed)


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
        data: bytes | memoryview = chunk.data
        if partial.opener is not None:
            try:
                data = partial.opener.open(chunk.index, data)
            except SealError:
                self.counters.chunks_rejected += 1
                raise
        buffer.data[start : start + expected] = data
        partial.received.add(chunk.index)
        self.counters.chunks_accepted += 1

    def _complete(self, key: Key, partial: _Partial) -> CompletedDelta | None:
        manifest, buffer = partial.manifest, partial.buffer
        if manifest is None or buffer is None or len(partial.received) != manifest.chunk_count:
            return None
        del self._partials[key]
        # A sealed delta's chunks were each authenticated when opened (and carry no hash).
        if manifest.seal is None and content_hash(buffer.data) != manifest.content_hash:
            self.counters.updates_rejected += 1
            raise ContentHashMismatch(f"update {key[1]} from {key[0]}: content hash mismatch")
        self._completed[key] = None
        if len(self._completed) > self._remember:
            self._completed.popitem(last=False)
        self.counters.updates_completed += 1
        self.counters.bytes_reassembled += manifest.total_bytes
        return CompletedDelta(manifest, buffer)
