"""Signed deltas: a signature authenticates every manifest field and, through the BLAKE2b
digest, every payload byte; unsigned, unknown-key, forged and altered deltas are refused."""

from __future__ import annotations

import msgspec
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.codec import delta_decoder, encode
from schemas.delta import CompletedDelta, Reassembler, encode_delta
from schemas.messages import DeltaManifest, Envelope
from schemas.signing import SignatureError, payload_digest, verify_manifest


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"w": torch.randn(40, 30, generator=g), "b": torch.randn(7, generator=g).half()}


def signed(sender: str, key: Ed25519PrivateKey | None) -> CompletedDelta:
    """Encode (signed by ``key``), send through the codec, reassemble."""
    delta = encode_delta(
        state(),
        envelope=Envelope(run="r", sender=sender, federation="eu"),
        kind="update",
        base_version=4,
        sample_count=128,
        metrics={"train_loss": 2.5},
        chunk_size=1000,
        signer=key,
    )
    reassembler = Reassembler()
    done = None
    for message in delta.messages():
        done = reassembler.add(delta_decoder.decode(encode(message))) or done
    assert done is not None
    return done


def refusal(
    manifest: DeltaManifest, keys: dict[str, object], payload: memoryview | None = None
) -> str:
    with pytest.raises(SignatureError) as info:
        verify_manifest(manifest, keys, payload)  # type: ignore[arg-type]
    return info.value.reason


def test_a_signed_delta_verifies_after_the_wire_and_reassembly() -> None:
    key = Ed25519PrivateKey.generate()
    done = signed("alice", key)
    assert done.manifest.digest == payload_digest([done.payload.data])
    assert done.manifest.digest.startswith("blake2b-256:") and len(done.manifest.signature) == 64
    verify_manifest(done.manifest, {"alice": key.public_key()}, done.payload.data)
    assert torch.equal(done.tensors()["w"], state()["w"])


def test_unsigned_and_unknown_signer_are_refused_with_their_reasons() -> None:
    key = Ed25519PrivateKey.generate()
    assert refusal(signed("alice", None).manifest, {"alice": key.public_key()}) == "unsigned"
    assert refusal(signed("alice", key).manifest, {"bob": key.public_key()}) == "unknown_signer"


def test_a_sender_signing_in_anothers_name_is_refused() -> None:
    alice, mallory = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = signed("alice", mallory)  # claims to be alice, signed with mallory's key
    keys = {"alice": alice.public_key(), "mallory": mallory.public_key()}
    assert refusal(forged.manifest, keys) == "bad_signature"


@pytest.mark.parametrize(
    "change",
    [
        {"sample_count": 10_000},  # inflate one's weight in the average
        {"base_version": 5},
        {"round": 9},
        {"metrics": {"train_loss": 0.1}},
        {"envelope": Envelope(run="r", sender="alice", federation="us")},
    ],
    ids=["sample_count", "base_version", "round", "metrics", "federation"],
)
def test_any_changed_manifest_field_breaks_the_signature(change: dict[str, object]) -> None:
    key = Ed25519PrivateKey.generate()
    manifest = signed("alice", key).manifest
    changed = msgspec.structs.replace(manifest, **change)
    assert refusal(changed, {"alice": key.public_key()}) == "bad_signature"


def test_a_changed_payload_byte_is_caught_by_the_signed_digest() -> None:
    key = Ed25519PrivateKey.generate()
    done = signed("alice", key)
    payload = bytearray(done.payload.tobytes())
    payload[17] ^= 0x01
    keys = {"alice": key.public_key()}
    assert refusal(done.manifest, keys, memoryview(payload)) == "digest_mismatch"
