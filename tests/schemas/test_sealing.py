"""Sealed deltas: only a recipient can read the tensors; each chunk is checked on arrival, a
tampered one is refused alone; a signature covers the ciphertext; a key can be revoked."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas.codec import delta_decoder, encode
from schemas.delta import EncodedDelta, Reassembler, chunk_hash, encode_delta
from schemas.errors import WireError
from schemas.messages import DeltaChunk, DeltaManifest, Envelope
from schemas.sealing import SealError, Unsealer
from schemas.signing import SignatureError, fingerprint, verify_manifest


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"w": torch.randn(40, 30, generator=g), "b": torch.randn(7, generator=g)}


def sealed(
    recipients: dict[str, X25519PrivateKey], signer: Ed25519PrivateKey | None = None
) -> EncodedDelta:
    return encode_delta(
        state(),
        envelope=Envelope(run="r", sender="en-0", federation="eu"),
        kind="update",
        base_version=2,
        sample_count=64,
        chunk_size=1000,
        signer=signer,
        seal_to={rid: key.public_key() for rid, key in recipients.items()},
    )


def wire(delta: EncodedDelta) -> list[bytes]:
    return [encode(m) for m in delta.messages()]


def reassemble(records: list[bytes], reader: Reassembler) -> dict[str, torch.Tensor]:
    done = None
    for record in records:
        done = reader.add(delta_decoder.decode(record)) or done
    assert done is not None
    return done.tensors()


def refusal(records: list[bytes], reader: Reassembler) -> str:
    with pytest.raises(WireError) as info:
        for record in records:
            reader.add(delta_decoder.decode(record))
    return info.value.reason


def tampered(chunk: DeltaChunk, at: int = 10) -> bytes:
    """``chunk`` with one ciphertext byte flipped and its xxh3 hash recomputed."""
    data = bytearray(chunk.data)
    data[at] ^= 0x01
    return encode(msgspec.structs.replace(chunk, data=memoryview(data), hash=chunk_hash(data)))


def test_every_recipient_reads_the_tensors_and_no_plaintext_is_on_the_wire() -> None:
    members = {"en-0": X25519PrivateKey.generate(), "de-0": X25519PrivateKey.generate()}
    records = wire(sealed(members))
    for member, key in members.items():
        tensors = reassemble(records, Reassembler(unsealer=Unsealer(member, key)))
        assert all(torch.equal(tensors[n], t) for n, t in state().items())
    on_wire = b"".join(records)
    for tensor in state().values():
        assert tensor.numpy().tobytes()[:32] not in on_wire
    manifest = delta_decoder.decode(records[0])
    assert isinstance(manifest, DeltaManifest) and manifest.content_hash == ""


def test_a_reader_without_the_key_cannot_open_a_sealed_delta() -> None:
    records = wire(sealed({"root": X25519PrivateKey.generate()}))
    assert refusal(records, Reassembler()) == "sealed"
    outsider = Unsealer("root", X25519PrivateKey.generate())  # root's name, not its key
    assert refusal(records, Reassembler(unsealer=outsider)) == "unseal_failed"
    stranger = Unsealer("mallory", X25519PrivateKey.generate())
    assert refusal(records, Reassembler(unsealer=stranger)) == "not_a_recipient"


def test_a_sealing_reader_refuses_an_unsealed_delta() -> None:
    plain = encode_delta(
        state(), envelope=Envelope(run="r", sender="x", federation="eu"), kind="update",
        base_version=0,
    )  # fmt: skip
    reader = Reassembler(unsealer=Unsealer("root", X25519PrivateKey.generate()))
    assert refusal(wire(plain), reader) == "unsealed"


def test_a_tampered_chunk_is_refused_alone_and_the_genuine_one_still_completes() -> None:
    key = X25519PrivateKey.generate()
    delta = sealed({"root": key})
    reader = Reassembler(unsealer=Unsealer("root", key))
    reader.add(delta_decoder.decode(encode(delta.manifest)))
    with pytest.raises(SealError) as info:
        reader.add(delta_decoder.decode(tampered(delta.chunk(1))))
    assert info.value.reason == "tampered_chunk" and "digest mismatch" in str(info.value)
    assert reader.counters.chunks_rejected == 1
    tensors = reassemble(wire(delta)[1:], reader)
    assert torch.equal(tensors["w"], state()["w"])


def test_rewriting_the_chunk_digests_does_not_get_a_tampered_chunk_past_its_tag() -> None:
    # Without signing anyone may rewrite the manifest; the digests are outside the
    # associated data, but the content key is not theirs, so the tag still fails.
    key = X25519PrivateKey.generate()
    delta = sealed({"root": key})
    bad = delta_decoder.decode(tampered(delta.chunk(0)))
    assert isinstance(bad, DeltaChunk) and delta.manifest.seal is not None
    digests = list(delta.manifest.seal.chunks)
    digests[0] = hashlib.blake2b(bad.data, digest_size=32).digest()
    seal = msgspec.structs.replace(delta.manifest.seal, chunks=tuple(digests))
    reader = Reassembler(unsealer=Unsealer("root", key))
    reader.add(msgspec.structs.replace(delta.manifest, seal=seal))
    with pytest.raises(SealError, match="bad tag"):
        reader.add(bad)


def test_the_signature_covers_the_ciphertext_and_a_revoked_key_is_refused() -> None:
    key, signer = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    delta = sealed({"root": key}, signer)
    public = {"en-0": signer.public_key()}
    verify_manifest(delta.manifest, public)
    assert delta.manifest.seal is not None
    other = msgspec.structs.replace(
        delta.manifest.seal, chunks=(bytes(32), *delta.manifest.seal.chunks[1:])
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(msgspec.structs.replace(delta.manifest, seal=other), public)
    with pytest.raises(SignatureError) as info:
        verify_manifest(delta.manifest, public, revoked={fingerprint(signer.public_key())})
    assert info.value.reason == "revoked"
    verify_manifest(delta.manifest, public, revoked={"0" * 64})  # another key's revocation
