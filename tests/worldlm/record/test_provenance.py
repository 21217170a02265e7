"""Only the run's own participants publish: a member of a federation to its aggregator, under
the federation's key and, in a signing run, under its own signature. Every other manifest is
foreign, with the first check it fails as the reason."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import DeltaManifest, Envelope
from schemas.signing import sign_manifest
from tests.worldlm.participants.helpers import hierarchy
from worldlm.record.provenance import REASONS, Provenance

TREE = hierarchy(
    "r",
    federations={"root": {}, "eu": {"parent": "root"}},
    clients={"en-0": ("root", "lang-en"), "de-0": ("eu", "lang-de")},
)


def manifest(
    sender: str, federation: str, *, run: str = "r", kind: str = "update"
) -> DeltaManifest:
    return DeltaManifest(
        envelope=Envelope(run=run, sender=sender, federation=federation),
        update_id=f"{sender}-1",
        kind=kind,  # type: ignore[arg-type]
        tensors=(),
        total_bytes=0,
        content_hash="",
        chunk_size=1,
        chunk_count=1,
        base_version=0,
    )


def test_members_publishing_to_their_own_parent_are_the_runs_and_others_are_foreign() -> None:
    p = Provenance.of(TREE)
    assert p.foreign("root", b"root", manifest("en-0", "root")) is None
    assert p.foreign("root", b"root", manifest("eu", "root")) is None  # a submission
    assert p.foreign("eu", b"eu", manifest("de-0", "eu")) is None
    assert p.foreign("root", b"root", manifest("de-0", "root")) == "not_a_member"
    assert p.foreign("root", b"nobody", manifest("en-0", "root")) == "unread_key"
    assert p.foreign("root", None, manifest("en-0", "root")) == "unread_key"
    assert p.foreign("root", b"root", manifest("en-0", "eu")) == "other_federation"
    assert p.foreign("root", b"root", manifest("en-0", "root", run="r2")) == "other_run"
    assert p.foreign("root", b"root", manifest("en-0", "root", kind="broadcast")) == (
        "not_an_update"
    )
    assert p.notes() == []


def test_without_a_config_any_sender_keyed_by_the_federation_counts() -> None:
    p = Provenance("r")
    assert p.foreign("root", b"root", manifest("anyone", "root")) is None
    assert p.foreign("root", b"other", manifest("anyone", "root")) == "unread_key"
    assert p.notes() == ["senders not checked against the run's participants (no --config)"]


def test_in_a_signing_run_only_a_signature_by_the_senders_key_counts() -> None:
    own, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    p = Provenance.of(TREE, {"en-0": own.public_key(), "eu": stranger.public_key()})
    signed = sign_manifest(manifest("en-0", "root"), own, [b""])
    assert p.foreign("root", b"root", signed) is None
    forged = sign_manifest(manifest("en-0", "root"), stranger, [b""])
    assert p.foreign("root", b"root", forged) == "bad_signature"
    assert p.foreign("root", b"root", manifest("en-0", "root")) == "unsigned"
    nobody = sign_manifest(manifest("eu", "root"), own, [b""])
    assert p.foreign("root", b"root", nobody) == "bad_signature"
    assert p.foreign("eu", b"eu", sign_manifest(manifest("de-0", "eu"), own, [b""])) == (
        "unknown_signer"
    )
    assert set(REASONS) >= {"unsigned", "unknown_signer", "bad_signature", "unread_key"}
