"""Compressed updates on the real embedded servers: an update whose codec map disagrees with
its tensors is dead-lettered as ``bad_codec`` and counted, and the round goes on without it
(sim == live with every codec: tests/worldlm/lab/test_simulator.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import torch

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from schemas.codec import dead_letter_decoder
from schemas.compression import INDEX, SCALE, compress
from schemas.delta import encode_delta
from schemas.messages import Envelope, TensorCodec
from schemas.topics import Topics
from tests.worldlm.participants.helpers import endpoints, flat, read_topic, settings
from worldlm.participants.node import prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.training.workbench import initial_weights

Wire = dict[str, torch.Tensor]
Codecs = dict[str, TensorCodec]


def _index_out_of_range(wire: Wire, codecs: Codecs) -> None:
    wire["w" + INDEX] = wire["w" + INDEX] + 10**6


def _unknown_codec(wire: Wire, codecs: Codecs) -> None:
    codecs["w"] = TensorCodec("zstd", codecs["w"].shape)


def _missing_scale(wire: Wire, codecs: Codecs) -> None:
    wire.pop("w" + SCALE)


@pytest.mark.parametrize(
    ("codec", "breakage", "detail"),
    [
        ("topk", _index_out_of_range, "topk index outside"),
        ("int8", _unknown_codec, "unknown codec 'zstd'"),
        ("int8", _missing_scale, "not sent"),
    ],
)
async def test_a_malformed_codec_map_is_dead_lettered_and_counted_and_the_round_goes_on(
    servers: Servers,
    run_id: str,
    codec: str,
    breakage: Callable[[Wire, Codecs], None],
    detail: str,
) -> None:
    h = flat(run_id, rounds=1, compression={"codec": "int8"})
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    name, like = next((n, t) for n, t in initial_weights(h.run).items() if t.numel() > 64)
    wire, codecs = compress({"w": torch.ones(like.numel())}, codec, fraction=0.5)
    breakage(wire, codecs)
    bad = encode_delta(
        {k.replace("w", name, 1): t for k, t in wire.items()},
        envelope=Envelope(run=run_id, sender="de-0", federation="root"),
        kind="update",
        base_version=0,
        sample_count=10,
        codecs={name: codecs["w"]},
    )
    async with Producer(kafka) as producer:
        await publish_delta(producer, topics.up("root"), "root", bad)
    async with asyncio.timeout(60):
        result = await run_hierarchy(h, ep)

    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert [x.reason for x in letters] == ["bad_codec"]
    assert detail in letters[0].detail
    root = {r.round: r.values for r in result.reports if r.node == "root"}
    assert root[0]["arrived"] == 2 and root[0]["unreadable"] == 1  # counted; both folded
    assert root[0]["rejected"] == 0  # it never reached the core
    assert set(result.final_ppl()) == {"en-0", "de-0"}
