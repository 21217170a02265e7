"""Sealed deltas: only the participants a delta is meant for can read its tensors.

Scheme :data:`SCHEME`. Per delta the sender draws a fresh 32-byte content key and a fresh
ephemeral X25519 key pair. For each recipient it derives a wrapping key with HKDF-SHA256
from the X25519 shared secret (the info binds the scheme, the ephemeral and the recipient's
public key) and wraps the content key with ChaCha20-Poly1305: an update has one recipient
(the aggregator that folds it), a broadcast one per member of the federation.

Each chunk is encrypted on its own with ChaCha20-Poly1305 under the content key, so each can
still be checked on arrival: the nonce is the chunk index (the key serves one delta only, so a
nonce never repeats), the associated data the BLAKE2b of the manifest without its chunk
digests and signature, so a chunk cannot move to another index, update or manifest. The
manifest carries the BLAKE2b-256 of every encrypted chunk; a signature over the manifest
therefore covers the ciphertext, and a member that knows a broadcast's content key still
cannot substitute a chunk others accept. The manifest's xxh3 content hash is left empty: it
would let anyone test a guess of the plaintext.

A residual-cache entry is sealed as one piece (:func:`seal_blob`): the same key wrapping,
one content key per entry, the payload encrypted under nonce 0 with its label (federation,
round, tensor specs) as associated data.

What stays readable by anyone who can read the topic: the manifest (sender, federation,
round, versions, sample count, tensor names and shapes, metrics), sizes and timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.errors import WireError
from schemas.messages import DeltaManifest, Seal
from schemas.tensors import Segments

#: The scheme named in sealed manifests.
SCHEME = "x25519-hkdf-sha256-chacha20poly1305"
#: Bytes an encrypted chunk is longer than its plaintext (the Poly1305 tag).
TAG_BYTES = 16


class SealError(WireError):
    """A sealed delta this reader cannot open, or a chunk that fails its check."""

    reason = "unsealable"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrapping_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    info = SCHEME.encode() + b"|" + ephemeral + recipient
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def associated_data(manifest: DeltaManifest) -> bytes:
    """What every chunk's tag binds: the manifest without chunk digests and signature."""
    assert manifest.seal is not None
    bare = msgspec.structs.replace(
        manifest,
        digest="",
        signature=b"",
        seal=msgspec.structs.replace(manifest.seal, chunks=()),
    )
    return _digest(msgspec.msgpack.encode(bare))


def _wrap(content: bytes, label: str, recipients: Mapping[str, X25519PublicKey]) -> Seal:
    """``content`` (a content key) wrapped to each recipient under a fresh ephemeral key; the
    wrapping binds ``label`` (what is sealed) and the recipient's id."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = _raw(ephemeral.public_key())
    wrapped = {}
    for rid, public in sorted(recipients.items()):
        key = _wrapping_key(ephemeral.exchange(public), ephemeral_raw, _raw(public))
        wrapped[rid] = ChaCha20Poly1305(key).encrypt(_nonce(0), content, f"{label}|{rid}".encode())
    return Seal(SCHEME, ephemeral_raw, wrapped)


def seal_delta(
    manifest: DeltaManifest, segments: Segments, recipients: Mapping[str, X25519PublicKey]
) -> tuple[DeltaManifest, list[bytes]]:
    """``manifest`` sealed to ``recipients`` (id -> X25519 public key), and its encrypted
    chunks in order (chunk ``i`` is ``manifest.chunk_size + TAG_BYTES`` bytes at most)."""
    if not recipients:
        raise ValueError(f"delta {manifest.update_id}: sealed to nobody")
    content = ChaCha20Poly1305.generate_key()
    seal = _wrap(content, manifest.update_id, recipients)
    sealed = msgspec.structs.replace(manifest, content_hash="", seal=seal)
    aead, aad, size = ChaCha20Poly1305(content), associated_data(sealed), manifest.chunk_size
    chunks = [
        aead.encrypt(_nonce(i), segments.read(i * size, (i + 1) * size), aad)
        for i in range(manifest.chunk_count)
    ]
    seal = msgspec.structs.replace(seal, chunks=tuple(_digest(c) for c in chunks))
    return msgspec.structs.replace(sealed, seal=seal), chunks


class Opener:
    """Opens the chunks of one sealed delta (its content key unwrapped)."""

    def __init__(self, manifest: DeltaManifest, content_key: bytes) -> None:
        assert manifest.seal is not None
        self._who = f"update {manifest.update_id} from {manifest.envelope.sender}"
        self._aead = ChaCha20Poly1305(content_key)
        self._aad = associated_data(manifest)
        self._digests = manifest.seal.chunks

    def open_into(self, index: int, data: bytes | memoryview, out: memoryview) -> None:
        """Decrypt chunk ``index`` into ``out`` (``len(data) - TAG_BYTES`` bytes);
        :class:`SealError` (``tampered_chunk``) if its bytes are not the ones the manifest
        names or do not decrypt. After a failure ``out`` holds garbage: the caller must not
        count those bytes as received."""
        if _digest(data) != self._digests[index]:
            raise SealError("tampered_chunk", f"chunk {index} of {self._who}: digest mismatch")
        try:
            self._aead.decrypt_into(_nonce(index), data, self._aad, out)
        except InvalidTag:
            raise SealError("tampered_chunk", f"chunk {index} of {self._who}: bad tag") from None


class Unsealer:
    """One participant's X25519 private key: opens what is sealed to it."""

    def __init__(self, owner: str, key: X25519PrivateKey) -> None:
        self.owner = owner
        self._key = key
        self._public = _raw(key.public_key())

    def opener(self, manifest: DeltaManifest) -> Opener:
        """The chunk opener of ``manifest``, or :class:`SealError` with the reason it cannot
        be opened here (``unsealed``, ``unknown_seal_scheme``, ``bad_seal``,
        ``not_a_recipient``, ``unseal_failed``)."""
        who = f"{manifest.kind} {manifest.update_id} from {manifest.envelope.sender}"
        seal = manifest.seal
        if seal is None:
            raise SealError("unsealed", f"{who}: not sealed, and this run requires it")
        if seal.scheme != SCHEME:
            raise SealError("unknown_seal_scheme", f"{who}: scheme {seal.scheme!r}")
        if len(seal.chunks) != manifest.chunk_count:
            raise SealError("bad_seal", f"{who}: {len(seal.chunks)} chunk digests")
        return Opener(manifest, self._content_key(seal, manifest.update_id, who))

    def _content_key(self, seal: Seal, label: str, who: str) -> bytes:
        if seal.scheme != SCHEME:
            raise SealError("unknown_seal_scheme", f"{who}: scheme {seal.scheme!r}")
        wrapped = seal.keys.get(self.owner)
        if wrapped is None:
            raise SealError("not_a_recipient", f"{who}: not sealed to {self.owner}")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(seal.ephemeral))
            key = _wrapping_key(shared, seal.ephemeral, self._public)
            return ChaCha20Poly1305(key).decrypt(
                _nonce(0), wrapped, f"{label}|{self.owner}".encode()
            )
        except (ValueError, InvalidTag):
            raise SealError("unseal_failed", f"{who}: content key does not unwrap") from None

    def open_blob(self, label: str, seal: Seal, data: bytes | bytearray | memoryview) -> bytes:
        """The plaintext of a blob :func:`seal_blob` sealed under ``label``, or
        :class:`SealError` (``unknown_seal_scheme``, ``not_a_recipient``, ``unseal_failed``,
        ``tampered_chunk`` when its bytes or label are not the sealed ones)."""
        content = self._content_key(seal, label, label)
        try:
            return ChaCha20Poly1305(content).decrypt(_nonce(0), data, label.encode())
        except InvalidTag:
            raise SealError("tampered_chunk", f"{label}: bad tag") from None


def seal_blob(
    label: str,
    payload: bytes | bytearray | memoryview,
    recipients: Mapping[str, X25519PublicKey],
) -> tuple[Seal, bytes]:
    """``payload`` sealed to ``recipients`` as one piece (a cache entry rather than a chunked
    delta): its :class:`Seal` (no chunk digests; the tag authenticates it) and ciphertext
    (``TAG_BYTES`` longer). ``label`` names what is sealed and is bound into both the key
    wrapping and the tag, so the entry opens only under the same label."""
    if not recipients:
        raise ValueError(f"{label}: sealed to nobody")
    content = ChaCha20Poly1305.generate_key()
    seal = _wrap(content, label, recipients)
    return seal, ChaCha20Poly1305(content).encrypt(_nonce(0), payload, label.encode())
