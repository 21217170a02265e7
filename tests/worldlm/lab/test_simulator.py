"""The simulator is the system, not a second implementation: it is deterministic, and a live
``sync`` run on the real embedded Kafka and Redis ends at exactly its weights."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import torch

from brokers.embedded import Servers
from tests.worldlm.participants.helpers import endpoints, hierarchy
from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.checkpoint import Checkpoint
from worldlm.participants.runner import run_hierarchy
from worldlm.lab.simulator import simulate


def three_levels(
    run_id: str, *, tables: Mapping[str, Mapping[str, object]] | None = None, **defaults: object
) -> Hierarchy:
    """root -> two federations (one with internal rounds 2) -> clients, plus a root client
    (``tables``: more fields for some federations)."""
    more = tables or {}
    return hierarchy(
        run_id,
        federations={
            "root": {**more.get("root", {})},
            "latin": {"parent": "root", "internal_rounds": 2, **more.get("latin", {})},
            "slavic": {
                "parent": "root",
                "backbone": "fedavgm",
                "momentum": 0.5,
                **more.get("slavic", {}),
            },
        },
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "ru-0": ("slavic", "lang-ru"),
            "pl-0": ("slavic", "lang-pl"),
            "en-0": ("root", "lang-en"),
        },
        rounds=2,
        defaults={
            "internal_rounds": 1,
            "schedule": {"deadline_s": 60.0},
            "residual": {"links": "none"},
            **defaults,
        },
    )


def test_the_same_config_and_seed_give_bit_identical_weights_and_metrics(run_id: str) -> None:
    h = three_levels(run_id, residual={"links": "siblings", "sign": -1})
    first, sim1 = simulate(h)
    second, sim2 = simulate(h)
    for fid in h.federations:
        a, b = sim1.weights(fid), sim2.weights(fid)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (fid, name)
    # Every figure but wall times (train_s) is identical.
    assert [(r.node, r.round, _figures(r.values)) for r in first.reports] == [
        (r.node, r.round, _figures(r.values)) for r in second.reports
    ]
    # Residuals were used (the siblings' key layers were candidates after round 0).
    assert any(r.values.get("residuals", 0) > 0 for r in first.reports if r.role == "aggregator")


def _figures(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if not k.endswith("_s")}


def test_another_seed_gives_other_weights(run_id: str) -> None:
    h = three_levels(run_id)
    _, sim0 = simulate(h)
    other = Hierarchy(h.run.__class__(**{**_fields(h.run), "seed": 1}), h.federations, h.clients)
    _, sim1 = simulate(other)
    w0, w1 = sim0.weights("root"), sim1.weights("root")
    assert any(not torch.equal(w0[n], w1[n]) for n in w0)


def _fields(run: object) -> dict[str, object]:
    return {f: getattr(run, f) for f in run.__struct_fields__}  # type: ignore[attr-defined]


def test_clients_train_the_rounds_their_path_to_the_root_gives_them(run_id: str) -> None:
    result, _ = simulate(three_levels(run_id))
    trained: dict[str, int] = {}
    for r in result.client_reports():
        if not r.values["final"]:
            trained[r.node] = trained.get(r.node, 0) + 1
    # 2 root rounds x internal rounds of the client's federation (root clients: 1 per round)
    assert trained == {"fr-0": 4, "es-0": 4, "ru-0": 2, "pl-0": 2, "en-0": 2}


def test_the_held_out_test_split_is_read_once_on_the_final_model(run_id: str) -> None:
    h = three_levels(run_id)
    h = Hierarchy(h.run.__class__(**{**_fields(h.run), "test_fraction": 0.1}), *_tree(h))
    result, _ = simulate(h)
    clients = result.client_reports()
    assert clients and all("val_ppl" in r.values for r in clients)  # validation every round
    with_test = [r for r in clients if "test_ppl" in r.values]
    assert with_test and all(r.values["final"] for r in with_test)
    assert {r.node for r in with_test} == set(h.clients)  # each client, once
    assert len(with_test) == len(h.clients)


def test_eval_every_skips_validation_between_its_rounds_and_always_evaluates_the_final(
    run_id: str,
) -> None:
    from worldlm.lab.report import curves_from_reports

    base = three_levels(run_id)  # fr-0 and es-0 train 4 rounds, the others 2
    for every, evaluated in ((2, {"fr-0": [0, 2, 4], "ru-0": [0, 2]}), (0, {"fr-0": [4]})):
        h = Hierarchy(
            base.run.__class__(**{**_fields(base.run), "eval_every": every}), *_tree(base)
        )
        result, _ = simulate(h)
        curves = curves_from_reports(result.reports)
        for client, rounds in evaluated.items():
            assert [r for r, _ in curves[client]] == rounds, (every, client)
        finals = [r for r in result.client_reports() if r.values["final"]]
        assert len(finals) == len(h.clients) and all("val_ppl" in r.values for r in finals)
    # Skipping evaluations changes no weight: the same training either way.
    _, every_round = simulate(base)
    _, final_only = simulate(h)
    for name, tensor in every_round.weights("root").items():
        assert torch.equal(tensor, final_only.weights("root")[name])


def _tree(h: Hierarchy) -> tuple[object, object]:
    return h.federations, h.clients


async def test_a_live_sync_run_ends_at_the_simulators_weights_bit_for_bit(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = three_levels(run_id)
    async with asyncio.timeout(180):
        live = await run_hierarchy(h, endpoints(servers), checkpoint_dir=tmp_path)
    simulated, sim = await asyncio.to_thread(simulate, h)

    for fid in h.federations:
        _, weights, _, _ = Checkpoint(tmp_path / run_id / fid).load()
        expected = sim.weights(fid)
        assert weights.keys() == expected.keys()
        for name in expected:
            assert torch.equal(weights[name], expected[name]), (fid, name)
    assert live.final_ppl() == simulated.final_ppl()

    # Only the backbone left each federation: the root's update topic holds no key layer.
    from aiokafka import TopicPartition

    from brokers.kafka import KafkaSettings, PartitionReader
    from schemas.codec import delta_decoder
    from schemas.errors import WireError
    from schemas.messages import DeltaManifest
    from schemas.topics import Topics

    topic = Topics(run_id).up(h.root.id)
    kafka = KafkaSettings(bootstrap=servers.kafka, partitions=h.run.partitions)
    names: dict[str, set[str]] = {}
    start = {TopicPartition(topic, p): 0 for p in range(h.run.partitions)}
    async with PartitionReader(kafka, start) as reader:
        for _ in range(20):
            for record in await reader.fetch(timeout_ms=200):
                try:
                    message = delta_decoder.decode(record.value or b"")
                except WireError:
                    continue
                if isinstance(message, DeltaManifest):
                    sender = message.envelope.sender
                    names.setdefault(sender, set()).update(t.name for t in message.tensors)
    key = sim.cores["latin"].key
    assert key and names["latin"] and names["slavic"]
    assert not (names["latin"] | names["slavic"]) & key
    assert names["en-0"] >= key  # a client's update carries every tensor


#: Every codec on some edge: latin's clients send int8, slavic's topk, the root's bf16 (the
#: root client's updates and both federations' submissions).
COMPRESSED: dict[str, dict[str, object]] = {
    "latin": {"compression": {"codec": "int8", "block": 128}},
    "slavic": {"compression": {"codec": "topk", "fraction": 0.2}},
    "root": {"compression": {"codec": "bf16"}},
}


def test_compression_changes_the_weights_and_stays_deterministic(run_id: str) -> None:
    h = three_levels(run_id, tables=COMPRESSED)
    _, sim1 = simulate(h)
    _, sim2 = simulate(h)
    _, plain = simulate(three_levels(run_id))
    root1, root2, root0 = sim1.weights("root"), sim2.weights("root"), plain.weights("root")
    assert all(torch.equal(root1[n], root2[n]) for n in root1)
    assert any(not torch.equal(root1[n], root0[n]) for n in root1)


async def test_a_compressed_live_run_ends_at_the_simulators_weights_bit_for_bit(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """The receiver folds exactly what the sender decoded, and both shells carry the same
    error feedback, so compression does not break sim == live."""
    from schemas.codec import delta_decoder
    from schemas.messages import DeltaManifest
    from schemas.topics import Topics
    from tests.worldlm.participants.helpers import read_topic, settings

    h = three_levels(run_id, tables=COMPRESSED)
    async with asyncio.timeout(180):
        live = await run_hierarchy(h, endpoints(servers), checkpoint_dir=tmp_path)
    simulated, sim = await asyncio.to_thread(simulate, h)
    for fid in h.federations:
        _, weights, _, _ = Checkpoint(tmp_path / run_id / fid).load()
        expected = sim.weights(fid)
        for name in expected:
            assert torch.equal(weights[name], expected[name]), (fid, name)
    assert live.final_ppl() == simulated.final_ppl()

    # What travelled was compressed, each edge in its receiver's codec.
    codecs: dict[str, set[str]] = {}
    for fid in h.federations:
        for message in await read_topic(
            settings(servers, h),
            Topics(run_id).up(fid),
            delta_decoder.decode,
            partitions=h.run.partitions,
        ):
            if isinstance(message, DeltaManifest):
                used = {c.codec for c in message.codecs.values()}
                codecs.setdefault(message.envelope.sender, set()).update(used)
    assert codecs == {
        "fr-0": {"int8"},
        "es-0": {"int8"},
        "ru-0": {"topk"},
        "pl-0": {"topk"},
        "en-0": {"bf16"},
        "latin": {"bf16"},
        "slavic": {"bf16"},
    }
