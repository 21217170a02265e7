"""Replay re-aggregates a finished run's recorded updates through the round core: with the
run's own config every broadcast is the recorded model bit for bit (and the final models are
the live checkpoints); with another strategy the same updates give other models, scored on
the clients' validation text next to the recorded ones."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
import torch

from brokers.embedded import Servers
from schemas.messages import RoundLedger
from tests.worldlm.participants.helpers import WORLDLM, endpoints, raw_config
from worldlm.config.hierarchy import Hierarchy, load, parse
from worldlm.lab.simulator import Simulation, _Update
from worldlm.participants.checkpoint import Checkpoint
from worldlm.participants.runner import run_hierarchy
from worldlm.record.recording import recorded_run, unsealers
from worldlm.record.replay import (
    RecordedRound,
    RecordedUpdate,
    Replay,
    ReplayError,
    check_replayable,
    model_hash,
    what_if,
)
from worldlm.record.replay_report import replay_run, write_report
from worldlm.training.workbench import Weights, initial_weights


def two_levels_raw(run_id: str) -> dict[str, Any]:
    """root -> latin (internal rounds 2) -> two clients, plus a root client."""
    return raw_config(
        run_id,
        federations={"root": {}, "latin": {"parent": "root", "internal_rounds": 2}},
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "en-0": ("root", "lang-en"),
        },
        rounds=2,
        defaults={"schedule": {"deadline_s": 60.0}, "residual": {"links": "none"}},
    )


def test_another_tree_cannot_replay_a_run(run_id: str) -> None:
    h = parse(two_levels_raw(run_id))
    check_replayable(h, what_if(h, backbone="fedavgm", staleness_bound=0))
    raw = two_levels_raw(run_id)
    raw["federations"]["latin"]["internal_rounds"] = 1
    with pytest.raises(ReplayError, match="internal rounds"):
        check_replayable(h, parse(raw))


class RecordingSimulation(Simulation):
    """The simulator, keeping every update it offers as a replay would read it off Kafka."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__(hierarchy)
        self.recorded: dict[str, RecordedUpdate] = {}

    def _offer(self, message: _Update, now: float) -> None:
        o = message.offer
        # A submission's round is its federation's (what the live manifest carries).
        sub = self.cores.get(o.sender)
        round_ = sub.round if sub is not None else 0
        self.recorded[o.update_id] = RecordedUpdate(
            message.federation,
            o.update_id,
            o.sender,
            o.samples,
            o.base_version,
            round_,
            len(self.recorded),
            o.delta,
        )
        super()._offer(message, now)


def simulated_recording(h: Hierarchy) -> tuple[RecordingSimulation, list[RecordedRound]]:
    sim = RecordingSimulation(h)
    result = sim.run()
    rounds = [
        RecordedRound(r.envelope.federation, r.round, r.ledger, int(r.values["members"]), r.values)
        for r in result.reports
        if r.role == "aggregator" and r.ledger is not None
    ]
    return sim, rounds


def test_replaying_the_simulators_updates_gives_its_weights_bit_for_bit(run_id: str) -> None:
    """No servers: the simulator's rounds and updates, replayed through fresh cores, end at
    the simulator's weights, and a what-if backbone changes them."""
    h = parse(two_levels_raw(run_id))
    sim, rounds = simulated_recording(h)
    assert {r.federation for r in rounds} == {"root", "latin"}
    hashes: dict[tuple[str, int], str] = {}

    def on_broadcast(fid: str, version: int, round_: int, weights: Weights) -> None:
        hashes[(fid, version)] = model_hash(weights)

    replay = Replay(h, rounds, sim.recorded, on_broadcast=on_broadcast)
    replayed = replay.run()
    assert not replay.stalled and len(replayed) == len(rounds)
    for fid in h.federations:
        expected, got = sim.weights(fid), replay.cores[fid].weights
        assert all(torch.equal(got[n], expected[n]) for n in expected), fid
    assert all(r.folded == r.recorded and not r.skipped for r in replayed)

    other = Replay(what_if(h, backbone="fedavgm"), rounds, sim.recorded)
    other.run()
    root, sim_root = other.cores["root"].weights, sim.weights("root")
    assert any(not torch.equal(root[n], sim_root[n]) for n in root)


def test_a_round_missing_from_the_recording_stalls_the_replay_and_says_where(
    run_id: str,
) -> None:
    """latin's last ledger lost (e.g. an aggregator killed between its checkpoint and its
    metrics): its submission never comes, and the root's last round waits for it."""
    h = parse(two_levels_raw(run_id))
    sim, rounds = simulated_recording(h)
    last = max(r.round for r in rounds if r.federation == "latin")
    kept = [r for r in rounds if not (r.federation == "latin" and r.round == last)]
    replay = Replay(h, kept, sim.recorded)
    replayed = replay.run()
    assert len(replayed) == len(rounds) - 2  # latin's last round and the root's last
    [(fid, round_, why)] = replay.stalled
    assert (fid, round_) == ("root", 1) and why.startswith("waits for")


def test_a_round_that_closed_empty_live_closes_empty_in_the_replay(run_id: str) -> None:
    """A live round whose deadline passed with nothing to fold advanced the version; its
    replay does too (a skipped round would leave every later version one short)."""
    h = parse(raw_config(run_id, federations={"root": {}}, clients={"en-0": ("root", "lang-en")}))
    empty = RecordedRound("root", 0, RoundLedger(), live=1, values={"arrived": 0.0})
    replay = Replay(h, [empty], {})
    [round_] = replay.run()
    assert (round_.round, round_.version, round_.folded, round_.skipped) == (0, 1, (), False)
    assert replay.cores["root"].counters["rounds_empty"] == 1 and not replay.stalled


def siblings_raw(run_id: str) -> dict[str, Any]:
    """root -> latin, slavic (sibling residual links, the default) -> two clients each."""
    return raw_config(
        run_id,
        federations={"root": {}, "latin": {"parent": "root"}, "slavic": {"parent": "root"}},
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "pl-0": ("slavic", "lang-pl"),
            "ru-0": ("slavic", "lang-ru"),
        },
        rounds=3,
        defaults={"schedule": {"deadline_s": 60.0}},
    )


def test_replay_feeds_a_round_the_residual_entries_its_ledger_names(run_id: str) -> None:
    """Which sibling residual a live close reads depends on timing; the ledger names it
    (federation -> the round it was cached in) and the replay feeds that one, or waits."""
    h = parse(siblings_raw(run_id))
    sim, rounds = simulated_recording(h)
    named = [r.ledger.residuals for r in rounds if r.federation != "root"]
    assert all(n is not None for n in named) and any(named)  # residuals were read
    replay = Replay(h, rounds, sim.recorded)
    replay.run()
    assert not replay.stalled
    for fid in h.federations:
        expected, got = sim.weights(fid), replay.cores[fid].weights
        assert all(torch.equal(got[n], expected[n]) for n in expected), fid

    # A ledger naming an entry the replay never makes: that round waits, and says for what.
    first = next(r for r in rounds if r.ledger.residuals)
    other = next(iter(first.ledger.residuals))
    bent = msgspec.structs.replace(first.ledger, residuals={other: 99})
    kept = [dataclasses.replace(r, ledger=bent) if r is first else r for r in rounds]
    stalled = Replay(h, kept, sim.recorded)
    stalled.run()
    assert (first.federation, first.round) in {(f, r) for f, r, _ in stalled.stalled}
    assert any(f"{other}'s residual of round 99" in why for _, _, why in stalled.stalled)


def test_a_sub_federation_takes_the_parent_broadcast_its_ledger_names(run_id: str) -> None:
    """Live, a federation that has submitted takes the newest parent broadcast it finds; the
    next round's ledger names it (parent_version), and the replay takes that one or waits."""
    h = parse(two_levels_raw(run_id))
    sim, rounds = simulated_recording(h)
    latin = sorted((r for r in rounds if r.federation == "latin"), key=lambda r: r.round)
    assert [r.ledger.parent_version for r in latin] == [0, 0, 1, 1]  # took root v1 after round 1
    assert all(r.ledger.parent_version is None for r in rounds if r.federation == "root")

    after = latin[2]  # the first round after the exchange
    bent = msgspec.structs.replace(after.ledger, parent_version=99)
    kept = [dataclasses.replace(r, ledger=bent) if r is after else r for r in rounds]
    replay = Replay(h, kept, sim.recorded)
    replay.run()
    assert ("latin", after.round, "waits for its parent's broadcast v99") in replay.stalled

    # The broadcast manifests name it too (a federation's last take has no round after it):
    # latin's v3 is the model it made from the parent broadcast it took after round 1.
    named = Replay(h, rounds, sim.recorded, takes={"latin": {3: 98}})
    named.run()
    assert ("latin", after.round, "waits for its parent's broadcast v98") in named.stalled


def test_a_sealed_run_without_the_aggregators_keys_is_refused(run_id: str) -> None:
    raw = two_levels_raw(run_id)
    raw["run"]["sealing"] = "required"
    with pytest.raises(ReplayError, match="--key-dir"):
        unsealers(parse(raw), None)


async def test_replay_reproduces_a_live_run_whose_siblings_read_each_others_residuals(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """Live, a close reads whatever sibling residual the cache holds at that moment; the
    ledgers name it, so the replay still reproduces every broadcast bit for bit."""
    h = parse(siblings_raw(run_id))
    async with asyncio.timeout(300):
        await run_hierarchy(h, endpoints(servers))
    recorded = await recorded_run(servers.kafka, h, None)
    assert any(r.ledger.residuals for r in recorded.rounds)
    own = await asyncio.to_thread(replay_run, h, h, recorded, setting="own", evaluate=False)
    assert own.reproduced and not own.stalled
    assert len(own.broadcasts) == len(recorded.broadcasts)


async def test_replay_reproduces_a_live_run_and_a_what_if_differs(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    config = tmp_path / "worldlm.toml"
    config.write_text(tomli_w.dumps(two_levels_raw(run_id)))
    h: Hierarchy = load(config)
    async with asyncio.timeout(300):
        await run_hierarchy(h, endpoints(servers), checkpoint_dir=tmp_path / "ckpt")
    recorded = await recorded_run(servers.kafka, h, None)

    own = await asyncio.to_thread(replay_run, h, h, recorded, setting="own")
    assert own.reproduced and not own.stalled
    assert len(own.broadcasts) == len(recorded.broadcasts)  # every broadcast checked
    assert [(r.federation, r.folded) for r in own.rounds] == [
        (r.federation, r.recorded) for r in own.rounds
    ]
    # The last broadcast of each federation is its live checkpoint, bit for bit.
    for fid in h.federations:
        _, saved, _, _ = Checkpoint(tmp_path / "ckpt" / run_id / fid).load()
        # safetensors files list tensors by name; a broadcast lays them out in model order
        weights = {n: saved[n] for n in initial_weights(h.run)}
        last = max((b for b in own.broadcasts if b.federation == fid), key=lambda b: b.version)
        assert last.replay_hash == model_hash(weights), fid
    # Evaluation is deterministic: every recorded perplexity is the replayed one.
    scored = [c for c in own.clients if c.replay_val_ppl is not None]
    assert len(scored) == len(own.clients) > 0
    assert all(c.replay_val_ppl == c.recorded_val_ppl for c in scored)

    other = what_if(h, backbone="fedavgm")
    whatif = await asyncio.to_thread(replay_run, h, other, recorded, setting="fedavgm")
    assert not whatif.reproduced and not whatif.stalled
    assert [r.folded for r in whatif.rounds] == [r.folded for r in own.rounds]
    assert any(c.replay_val_ppl != c.recorded_val_ppl for c in whatif.clients)
    assert all(c.replay_val_ppl is not None for c in whatif.clients)
    data = write_report(tmp_path / "whatif", whatif, "test")
    assert data["reproduced"] is False and "not what a whole run" in data["limit"]
    assert (tmp_path / "whatif" / "replay.png").stat().st_size > 0

    # The command: the run's own config reproduces it (exit 0) and writes the report.
    out = tmp_path / "replay"
    proc = await asyncio.create_subprocess_exec(
        WORLDLM,
        "replay",
        str(config),
        "--kafka",
        servers.kafka,
        "--out",
        str(out),
        "--no-evaluate",
    )
    assert await proc.wait() == 0
    report = json.loads((out / "report.json").read_text())
    assert report["reproduced"] is True
    assert "bit for bit" in (out / "report.md").read_text()
