"""A live run with ``exchange = "overlap"``: the aggregator carries the core's steps (submit,
await the answer alongside the next rounds, merge it) and every round closes once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from brokers.embedded import Servers
from tests.worldlm.participants.helpers import endpoints, hierarchy
from worldlm.participants.runner import run_hierarchy


async def test_a_live_run_with_overlapped_exchanges_closes_every_round_once(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """The live aggregator carries the same steps: submit, await alongside, go on."""
    h = hierarchy(
        run_id,
        federations={"root": {}, "latin": {"parent": "root", "exchange": "overlap"}},
        clients={"fr-0": ("latin", "lang-fr"), "es-0": ("latin", "lang-es")},
        rounds=2,
        defaults={"residual": {"links": "none"}, "schedule": {"deadline_s": 60.0}},
    )
    async with asyncio.timeout(240):
        live = await run_hierarchy(h, endpoints(servers), checkpoint_dir=tmp_path)
    closes = [
        (r.node, r.round) for r in live.reports if r.role == "aggregator" and "version" in r.values
    ]
    assert len(closes) == len(set(closes))  # no round reported twice
    assert [rnd for node, rnd in closes if node == "root"] == [0, 1]
    assert set(live.final_ppl()) == {"fr-0", "es-0"}
