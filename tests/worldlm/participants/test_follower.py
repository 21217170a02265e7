"""Followers that share one decoded broadcast still judge it each by their own policy: a
follower that holds the signer's key accepts it, one that has the key revoked or does not
know it refuses it, whatever the other decided."""

from __future__ import annotations

from typing import Any, cast

import torch
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from brokers.deltas import Received, SharedReceiver
from brokers.kafka import KafkaSettings
from schemas.codec import encode
from schemas.delta import encode_delta
from schemas.messages import Envelope
from schemas.signing import fingerprint
from worldlm.participants.follower import BroadcastFollower


def signed_broadcast(key: Ed25519PrivateKey) -> list[ConsumerRecord]:
    delta = encode_delta(
        {"w": torch.arange(600, dtype=torch.float32)},
        envelope=Envelope(run="r", sender="fed", federation="fed"),
        kind="broadcast",
        base_version=0,
        version=3,
        chunk_size=1024,
        signer=key,
    )
    values = [encode(m) for m in delta.messages()]
    return [
        ConsumerRecord("t", 0, i, 0, 0, b"fed", v, None, 3, len(v), ())
        for i, v in enumerate(values)
    ]


def follower(keys: dict[str, Any]) -> BroadcastFollower:
    return BroadcastFollower(
        KafkaSettings(bootstrap="localhost:1"), cast(Any, None), "fed", topic="t", keys=keys
    )


def test_a_shared_broadcast_is_accepted_or_refused_by_each_followers_own_keys() -> None:
    key = Ed25519PrivateKey.generate()
    shared = SharedReceiver()
    outcomes = [shared.feed(r) for r in signed_broadcast(key)]
    received = outcomes[-1]
    assert isinstance(received, Received)
    trusting = follower({"fed": key.public_key()})
    revoking = follower({"fed": key.public_key()})
    stranger = follower({})
    got = trusting._broadcast(received, revoked=set())
    assert got is not None and torch.equal(got.tensors["w"], torch.arange(600.0))
    assert revoking._broadcast(received, revoked={fingerprint(key.public_key())}) is None
    assert stranger._broadcast(received, revoked=set()) is None
    assert revoking.rejected["revoked"] == 1 and stranger.rejected["unknown_signer"] == 1
    assert trusting.rejected == {}
