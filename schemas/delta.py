"""Chunked model deltas: encode a state dict into a manifest and bounded chunks.

The sender lays tensors out in one payload, hashes each chunk (xxh3-64) in one pass over the
tensors' memory, derives the content hash from those chunk hashes, and slices chunks with
``memoryview`` (no copies). Receiving is
:mod:`schemas.reassembly`; its names are re-exported here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import xxhash

from schemas.messages import (
    DeltaChunk,
    DeltaKind,
    DeltaManifest,
    DeltaMessage,
    Envelope,
    TensorCodec,
)
from schemas.reassembly import (
    DEFAULT_MAX_UPDATE_BYTES,
    CompletedDelta,
    Reassembler,
    ReassemblyCounters,
    chunk_hash,
    content_hash,
    derived_hash,
    payload_hash,
)
from schemas.sealing import seal_delta
from schemas.signing import sign_manifest
from schemas.tensors import Segments, layout

if TYPE_CHECKING:
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_UPDATE_BYTES",
    "CompletedDelta",
    "EncodedDelta",
    "Reassembler",
    "ReassemblyCounters",
    "chunk_hash",
    "content_hash",
    "derived_hash",
    "encode_delta",
    "new_update_id",
    "payload_hash",
]

#: Default chunk payload: well under Kafka's default 1 MiB record limit, envelope included.
DEFAULT_CHUNK_SIZE = 768 * 1024


def new_update_id() -> str:
    """A fresh, globally unique update id."""
    return uuid.uuid4().hex


class EncodedDelta:
    """A delta ready to publish: its manifest, then its chunks, built on demand."""

    def __init__(
        self,
        manifest: DeltaManifest,
        segments: Segments,
        sealed: list[bytes] | None = None,
        chunk_hashes: list[int] | None = None,
    ) -> None:
        self.manifest = manifest
        self.segments = segments
        self.sealed = sealed  # encrypted chunks of a sealed delta (schemas.sealing)
        self.chunk_hashes = chunk_hashes  # of the plaintext chunks, when known

    def chunk(self, index: int) -> DeltaChunk:
        """Chunk ``index``: a view into the tensors' memory where it lies inside one tensor
        (or its ciphertext, when sealed)."""
        m = self.manifest
        if not 0 <= index < m.chunk_count:
            raise IndexError(f"chunk {index} of {m.chunk_count}")
        known = None
        if self.sealed is not None:
            data: memoryview | bytes = self.sealed[index]
        else:
            data = self.segments.read(index * m.chunk_size, (index + 1) * m.chunk_size)
            known = self.chunk_hashes[index] if self.chunk_hashes is not None else None
        view = data if isinstance(data, memoryview) else memoryview(data)
        return DeltaChunk(
            envelope=m.envelope,
            update_id=m.update_id,
            index=index,
            count=m.chunk_count,
            hash=chunk_hash(view) if known is None else known,
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
    chunk_count = max(1, -(-len(segments) // chunk_size))
    # A sealed delta carries no plaintext hash (its chunks are authenticated one by one).
    whole, hashes = "", None
    if seal_to is None:
        whole, hashes = _hashes(segments, chunk_size, chunk_count)
    manifest = DeltaManifest(
        envelope=envelope,
        update_id=update_id or new_update_id(),
        kind=kind,
        tensors=specs,
        total_bytes=len(segments),
        content_hash=whole,
        chunk_size=chunk_size,
        chunk_count=chunk_count,
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
    return EncodedDelta(manifest, segments, sealed, hashes)


def _hashes(segments: Segments, chunk_size: int, chunk_count: int) -> tuple[str, list[int]]:
    """Every chunk's hash, in one pass over the tensors' memory, and the content hash
    derived from them (publishing does not read the payload again to hash it)."""
    hashes = []
    for index in range(chunk_count):
        part = xxhash.xxh3_64()
        for piece in segments.pieces(index * chunk_size, (index + 1) * chunk_size):
            part.update(piece)
        hashes.append(part.intdigest())
    return derived_hash(hashes, len(segments), chunk_size), hashes
