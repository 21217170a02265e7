"""Signed deltas: who sent an update, and that nobody changed it on the way.

The xxh3 hashes of manifests and chunks catch corruption; they do not stop forgery (xxh3 is
not collision resistant). A signed delta's manifest therefore also carries ``digest``, the
BLAKE2b-256 of the whole payload, and ``signature``, an Ed25519 signature by the sender over
the manifest's canonical MessagePack bytes with an empty signature field. Verifying the
signature authenticates every manifest field (sender, federation, round, base version,
sample count, tensor layout, digest); recomputing the digest over the reassembled payload
authenticates the tensors. A sealed delta's digest is over its ciphertext, and its manifest
names the BLAKE2b of every encrypted chunk (:mod:`schemas.sealing`), which readers check as
chunks arrive: the signature covers the ciphertext. A key can be revoked: ``revoked`` holds
the :func:`fingerprint` of every revoked key. Keys are objects here; files are the
participants' business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import WireError
from schemas.messages import DeltaManifest

#: The digest algorithm named in signed manifests.
DIGEST = "blake2b-256"


class SignatureError(WireError):
    """A delta that is unsigned, signed by an unknown key, badly signed, or changed since."""

    reason = "bad_signature"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fingerprint(key: Ed25519PublicKey) -> str:
    """A public key's name in revocation lists: SHA-256 of its raw bytes, hex."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def payload_digest(parts: Iterable[bytes | bytearray | memoryview]) -> str:
    """``DIGEST`` of the concatenated ``parts``, prefixed with the algorithm's name."""
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(part)
    return f"{DIGEST}:{h.hexdigest()}"


def signing_bytes(manifest: DeltaManifest) -> bytes:
    """The bytes a signature covers: the manifest, MessagePack-encoded, signature emptied."""
    return msgspec.msgpack.encode(msgspec.structs.replace(manifest, signature=b""))


def sign_manifest(
    manifest: DeltaManifest,
    key: Ed25519PrivateKey,
    parts: Iterable[bytes | bytearray | memoryview],
) -> DeltaManifest:
    """``manifest`` with the digest of its payload ``parts`` and a signature by ``key``."""
    digested = msgspec.structs.replace(manifest, digest=payload_digest(parts), signature=b"")
    return msgspec.structs.replace(digested, signature=key.sign(signing_bytes(digested)))


def verify_manifest(
    manifest: DeltaManifest,
    keys: Mapping[str, Ed25519PublicKey],
    payload: bytes | bytearray | memoryview | None = None,
    revoked: Collection[str] = (),
) -> None:
    """Raise :class:`SignatureError` unless the sender's key in ``keys`` signed ``manifest``,
    that key's fingerprint is not in ``revoked`` and, given the reassembled ``payload`` of an
    unsealed delta, unless the payload matches the signed digest."""
    sender = manifest.envelope.sender
    who = f"{manifest.kind} {manifest.update_id} from {sender}"
    if not manifest.signature:
        raise SignatureError("unsigned", f"{who}: not signed, and this run requires it")
    key = keys.get(sender)
    if key is None:
        raise SignatureError("unknown_signer", f"{who}: no public key for {sender!r}")
    try:
        key.verify(manifest.signature, signing_bytes(manifest))
    except InvalidSignature:
        raise SignatureError("bad_signature", f"{who}: signature does not verify") from None
    if revoked and fingerprint(key) in revoked:
        raise SignatureError("revoked", f"{who}: signed with a revoked key")
    if manifest.seal is not None:
        return  # each chunk was checked against the signed chunk digests on arrival
    if payload is not None and payload_digest([payload]) != manifest.digest:
        raise SignatureError("digest_mismatch", f"{who}: payload does not match its digest")
