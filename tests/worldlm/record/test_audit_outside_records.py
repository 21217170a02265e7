"""``worldlm audit`` is not fooled by records the run's participants did not publish (issue
19, item 4: the three cases an outside probe found on a fresh clone), on the real servers.

Root's aggregator runs alone for two rounds and the test plays its clients en-0 and de-0
(real updates: each round waits for both, min_quorum 2). What an outsider writes to the up
topic goes first, before the aggregator starts:

- a forged manifest under a key nobody reads was reported as a LOST update (exit 1): it is
  foreign, and the run is ok;
- a manifest whose chunks never come (and chunks that never had one) pin the aggregator's
  committed offset, so its ledgers' offsets stop there and every round showed "published 0,
  folded 2": the updates are incomplete, and each round accounts "published 2, folded 2";
- a recording in which no published update matches a fold printed ok: it is not.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tomli_w
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer, partition_for
from brokers.state import RedisState
from schemas.codec import encode
from schemas.delta import DEFAULT_CHUNK_SIZE, EncodedDelta, encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope, MetricsReport, RoundLedger
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat_raw, poll, settings
from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.security.keys import generate_keys, load_keyring
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.record.recording import audit_run
from worldlm.training.workbench import initial_weights

runner = CliRunner()
Outside = Callable[[Producer], Awaitable[None]]


def update(
    h: Hierarchy,
    sender: str,
    base: int,
    *,
    signer: Ed25519PrivateKey | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EncodedDelta:
    """An update of ``sender`` to the root: all-zero weights unless ``tensors`` are given."""
    zero = {n: torch.zeros_like(w) for n, w in initial_weights(h.run).items()}
    return encode_delta(
        zero if tensors is None else tensors,
        envelope=Envelope(run=h.run.id, sender=sender, federation="root"),
        kind="update",
        base_version=base,
        sample_count=8,
        signer=signer,
        chunk_size=chunk_size,
    )


def records(delta: EncodedDelta) -> list[bytes]:
    """The manifest's record, then each chunk's."""
    return [encode(message) for message in delta.messages()]


def flat_config(run_id: str, tmp_path: Path, *, signing: bool) -> tuple[Hierarchy, Path]:
    """A flat two-round run whose rounds wait for both clients, and its config file."""
    raw: dict[str, Any] = flat_raw(run_id, rounds=2, schedule={"min_quorum": 2})
    if signing:
        raw["run"]["signing"] = "required"
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(raw))
    return parse(raw), path


async def aggregated(
    servers: Servers, h: Hierarchy, ep: Endpoints, tmp_path: Path, outside: Outside
) -> None:
    """What ``outside`` publishes, then root's aggregator through every round, the test
    sending en-0's and de-0's update of each round once its model version is out."""
    keys = Path(ep.key_dir) if ep.key_dir else None
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path / "ckpt")
    async with (
        asyncio.timeout(240),
        RedisState(servers.redis, Keyspace(h.run.id)) as state,
        Producer(settings(servers, h)) as producer,
    ):
        await outside(producer)
        run = asyncio.create_task(aggregator.run())

        async def version(v: int) -> bool:
            pointer = await state.model_version("root")
            return pointer is not None and pointer.version >= v

        for v in range(h.run.rounds):
            await poll(functools.partial(version, v))
            for sender in ("en-0", "de-0"):
                signer = load_keyring(keys, sender).signer if keys else None
                up = Topics(h.run.id).up("root")
                await publish_delta(producer, up, "root", update(h, sender, v, signer=signer))
        await run


async def audit_cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(runner.invoke, app, ["audit", *args])
    return result.exit_code, result.output


async def test_a_forged_manifest_under_a_key_nobody_reads_is_foreign_not_lost(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """A signing run. The forgery is en-0's in every field but its signature (a stranger's
    key), published twice: under a key nobody reads but on root's partition, and under
    root's key (the aggregator refuses it: bad_signature)."""
    h, config = flat_config(run_id, tmp_path, signing=True)
    keys = tmp_path / "keys"
    generate_keys(keys, [*h.federations, *h.clients])
    ep = Endpoints(servers.kafka, servers.redis, str(keys))
    await prepare_run(h, ep)
    up, stranger = Topics(run_id).up("root"), Ed25519PrivateKey.generate()
    forged = [update(h, "en-0", 0, signer=stranger) for _ in range(2)]

    async def forge(producer: Producer) -> None:
        root = partition_for("root", h.run.partitions)
        await producer.send_many(up, records(forged[0]), key="nobody", partition=root)
        await publish_delta(producer, up, "root", forged[1])

    await aggregated(servers, h, ep, tmp_path, forge)

    # Without the config and keys: the key nobody reads is enough to tell.
    table = await audit_run(servers.kafka, run_id, federations=["root"])
    assert not table.lost, table.render()
    assert table.ok, table.render()
    # With them: the one the aggregator refused is no participant's either.
    out = tmp_path / "audit.json"
    code, text = await audit_cli(
        run_id, "--kafka", servers.kafka, "--config", str(config), "--keys", str(keys),
        "--json", str(out),
    )  # fmt: skip
    assert code == 0, text
    found = json.loads(out.read_text())
    rows = [(r["round"], r["published"], r["folded"], r["foreign"]) for r in found["rows"]]
    assert rows == [(0, 2, 2, 2), (1, 2, 2, 0)]
    assert [(f["sender"], f["update_id"], f["reason"]) for f in found["foreign"]] == [
        ("en-0", forged[0].manifest.update_id, "unread_key"),
        ("en-0", forged[1].manifest.update_id, "bad_signature"),
    ]
    assert found["ok"] and not found["problems"] and not found["lost"]
    assert f"foreign root {forged[0].manifest.update_id} from en-0" in text
    # A signing run is not audited without its keys.
    code, text = await audit_cli(run_id, "--kafka", servers.kafka, "--config", str(config))
    assert code == 2 and "--keys" in text


async def test_updates_whose_chunks_never_arrive_are_incomplete_and_hold_back_no_round(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h, config = flat_config(run_id, tmp_path, signing=False)
    ep = Endpoints(servers.kafka, servers.redis)
    await prepare_run(h, ep)
    up = Topics(run_id).up("root")
    small = {"w": torch.zeros(64)}  # 256 bytes: four chunks of 64
    half = update(h, "en-0", 0, tensors=small, chunk_size=64)
    headless = update(h, "de-0", 0, tensors=small, chunk_size=64)

    async def half_send(producer: Producer) -> None:
        await producer.send_many(up, records(half)[:2], key="root")  # the manifest, 1 chunk
        await producer.send_many(up, records(headless)[1:], key="root")  # 4 chunks, no manifest

    await aggregated(servers, h, ep, tmp_path, half_send)

    table = await audit_run(servers.kafka, run_id, federations=["root"])
    rows = [(r.round, r.published, r.folded) for r in table.rows]
    assert rows == [(0, 2, 2), (1, 2, 2)], table.render()
    assert [(f.sender, f.update_id, f.reason) for f in table.incomplete] == [
        ("en-0", half.manifest.update_id, "1 of 4 chunks"),
        ("de-0", headless.manifest.update_id, "4 chunk(s), no manifest"),
    ]
    assert table.rows[0].incomplete == 2
    assert table.ok and not table.lost and not table.unread, table.render()
    code, text = await audit_cli(run_id, "--kafka", servers.kafka, "--config", str(config))
    assert code == 0, text
    assert f"incomplete root {half.manifest.update_id} from en-0" in text


async def test_a_recording_where_no_published_update_matches_a_fold_is_not_ok(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """Both clients' updates are on the up topic; the only ledger folds two other ids and
    covers none of its offsets (as a ledger stuck at its first offset would)."""
    h, config = flat_config(run_id, tmp_path, signing=False)
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    topics = Topics(run_id)
    root = f"{topics.up('root')}:{partition_for('root', h.run.partitions)}"
    ledger = RoundLedger(folded=("x-en-0", "x-de-0"), offsets={root: (0, 0)})
    report = MetricsReport(
        Envelope(run_id, "root", "root"), round=0, node="root", role="aggregator", ledger=ledger
    )
    async with Producer(settings(servers, h)) as producer:
        for sender in ("en-0", "de-0"):
            await publish_delta(producer, topics.up("root"), "root", update(h, sender, 0))
        await producer.send(topics.metrics, encode(report), key="root")

    code, text = await audit_cli(run_id, "--kafka", servers.kafka, "--config", str(config))
    assert code == 1, text
    problems = text.splitlines()[-4:]
    assert problems == [
        "FOLDED UNPUBLISHED root x-de-0: no update with this id on the up topic",
        "FOLDED UNPUBLISHED root x-en-0: no update with this id on the up topic",
        "NOTHING MATCHED root: 2 updates published, none matched to a fold or a named refusal",
        "NOT OK: 3 problem(s)",
    ]
