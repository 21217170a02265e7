"""Runs with ``signing = "required"``: signed deltas flow, unsigned and forged ones are
dead-lettered with their reason, and the rounds close on the genuine updates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from schemas.codec import dead_letter_decoder
from schemas.delta import encode_delta
from schemas.messages import Envelope
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat_raw, read_topic, settings
from worldlm.config.hierarchy import parse
from worldlm.security.keys import KeyFileError, generate_keys, load_keyring
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy


def signed_config(run_id: str) -> dict[str, object]:
    raw = flat_raw(run_id)
    raw["run"]["signing"] = "required"
    return raw


async def test_signed_run_dead_letters_unsigned_and_forged_updates_and_closes_its_rounds(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = parse(signed_config(run_id))
    keys = tmp_path / "keys"
    generate_keys(keys, [*h.federations, *h.clients])
    generate_keys(tmp_path / "mallory", ["de-0"])  # a key pair that is not de-0's
    forger = load_keyring(tmp_path / "mallory", "de-0").signer
    ep = Endpoints(servers.kafka, servers.redis, str(keys))
    topics, kafka = Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)

    def update(sender: str) -> Envelope:
        return Envelope(run=run_id, sender=sender, federation="root")

    unsigned = encode_delta(
        {"x": torch.zeros(3)}, envelope=update("en-0"), kind="update", base_version=0
    )
    forged = encode_delta(
        {"x": torch.zeros(3)},
        envelope=update("de-0"),
        kind="update",
        base_version=0,
        sample_count=10**6,  # would dominate the average if it were believed
        signer=forger,
    )
    async with Producer(kafka) as producer:
        for delta in (unsigned, forged):
            await publish_delta(producer, topics.up("root"), "root", delta)
    async with asyncio.timeout(90):
        result = await run_hierarchy(h, ep)

    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert sorted(letter.reason for letter in letters) == ["bad_signature", "unsigned"]
    assert all(letter.envelope.sender == "root" for letter in letters)
    root = {r.round: r.values for r in result.reports if r.node == "root"}
    assert sorted(root) == [0, 1]
    assert all(root[r]["arrived"] == 2 for r in root)  # the genuine en-0 and de-0
    assert root[0]["rejected"] == 2
    # Clients verified and trained on every broadcast, the final one included.
    assert set(result.final_ppl()) == {"en-0", "de-0"}


async def test_a_participant_of_a_signed_run_needs_its_key(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = parse(signed_config(run_id))
    with pytest.raises(KeyFileError, match="requires signed deltas"):
        ClientParticipant(h, Endpoints(servers.kafka, servers.redis), "en-0")
    generate_keys(tmp_path, ["de-0"])  # someone else's key only
    with pytest.raises(KeyFileError, match=r"en-0\.key is missing"):
        ClientParticipant(h, Endpoints(servers.kafka, servers.redis, str(tmp_path)), "en-0")
