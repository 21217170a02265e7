"""The wire contract's error taxonomy.

Every error carries policy in ``retriable``: a participant that meets a non-retriable error
dead-letters the input and goes on; a retriable one may be tried again later (for example a
chunk that arrived before its manifest made room for it).
"""

from __future__ import annotations


class WireError(Exception):
    """Base of every error raised by :mod:`schemas`."""

    retriable: bool = False
    #: snake_case reason, used as the counter name and the dead-letter reason.
    reason: str = "wire_error"


class DecodeError(WireError):
    """Bytes that are not a valid message of the expected type."""

    reason = "malformed"


class SchemaVersionError(DecodeError):
    """A well-formed message whose envelope names a schema version this code does not speak."""

    reason = "unknown_schema_version"

    def __init__(self, version: object, supported: tuple[int, ...]) -> None:
        super().__init__(f"unknown schema version {version!r}; this build speaks {supported}")
        self.version = version
        self.supported = supported


class ChunkError(WireError):
    """A chunk that cannot be part of its update: corrupt, truncated or out of range."""

    reason = "bad_chunk"


class ChunkCorrupt(ChunkError):
    """A chunk whose bytes do not match its hash."""

    reason = "chunk_corrupt"


class ChunkTruncated(ChunkError):
    """A chunk whose length disagrees with the manifest's chunk layout."""

    reason = "chunk_truncated"


class ManifestError(WireError):
    """A manifest that is inconsistent, oversized or conflicts with one already seen."""

    reason = "bad_manifest"


class ContentHashMismatch(WireError):
    """A fully reassembled update whose content hash disagrees with its manifest."""

    reason = "content_hash_mismatch"


class TensorFormatError(WireError):
    """A tensor of a dtype or layout the wire format does not carry."""

    reason = "bad_tensor"


class CodecError(WireError):
    """A compressed delta whose codec map and tensors disagree (unknown codec, a missing or
    misshapen companion tensor, a topk index out of range)."""

    reason = "bad_codec"
