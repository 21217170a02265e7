"""Aggregator checkpoints on disk: a SIGKILL while one is written leaves the previous one
whole, never a new model beside the old round (a restart would fold that round's updates
into the model a second time); a core restored from one broadcasts the same bytes."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.worldlm.participants.helpers import flat
from worldlm.participants.checkpoint import Checkpoint, Meta
from worldlm.core.federation import FederationCore
from worldlm.core.rounds import Snapshot
from worldlm.record.replay import model_hash
from worldlm.training.workbench import federation_key, initial_weights


def snapshot(round_: int, value: float) -> Snapshot:
    def weights() -> dict[str, torch.Tensor]:
        return {"w": torch.full((4,), value)}

    return Snapshot(Meta(version=round_, round=round_), weights(), weights(), {})


def test_a_kill_between_the_model_and_its_round_leaves_the_previous_pair(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save_snapshot(snapshot(1, 1.0))
    # Round 2 closes: its model is written, and the process dies before the JSON part.
    checkpoint.save_model({"w": torch.full((4,), 2.0)}, {"w": torch.full((4,), 2.0)}, {})

    restored = Checkpoint(tmp_path).load_snapshot()
    assert restored is not None
    assert restored.meta.round == 1 and torch.equal(restored.weights["w"], torch.full((4,), 1.0))


def test_a_whole_save_keeps_one_model_file_and_a_restart_goes_on_numbering(
    tmp_path: Path,
) -> None:
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save_snapshot(snapshot(1, 1.0))
    checkpoint.save_snapshot(snapshot(2, 2.0), model=True)
    checkpoint.save_snapshot(snapshot(3, 2.0), model=False)  # the JSON part alone
    assert [p.name for p in tmp_path.glob("model*.safetensors")] == ["model-2.safetensors"]

    again = Checkpoint(tmp_path)
    restored = again.load_snapshot()
    assert restored is not None and restored.meta.round == 3
    assert torch.equal(restored.weights["w"], torch.full((4,), 2.0))
    again.save_snapshot(snapshot(4, 4.0))
    assert [p.name for p in tmp_path.glob("model*.safetensors")] == ["model-3.safetensors"]
    meta, weights, _, _ = Checkpoint(tmp_path).load()
    assert meta.round == 4 and torch.equal(weights["w"], torch.full((4,), 4.0))


def test_a_core_restored_from_its_checkpoint_broadcasts_the_same_bytes(tmp_path: Path) -> None:
    """The file lists tensors by name; the restored core keeps the model's order, so the same
    model is the same broadcast (content hash) after a restart, and a replay matches it."""
    h = flat("ckpt")
    core = FederationCore(
        h, "root", initial_weights(h.run), key=federation_key(h, "root"), new_id=lambda: "sub"
    )
    checkpoint = Checkpoint(tmp_path)
    checkpoint.save_snapshot(core.snapshot())
    restored = FederationCore(
        h, "root", initial_weights(h.run), key=federation_key(h, "root"), new_id=lambda: "sub"
    )
    snapshot = Checkpoint(tmp_path).load_snapshot()
    assert snapshot is not None and list(snapshot.weights) != list(core.weights)  # by name
    restored.restore(snapshot)
    assert list(restored.weights) == list(core.weights)
    assert model_hash(restored.weights) == model_hash(core.weights)


def test_the_strategy_state_survives_a_checkpoint_of_the_json_part_alone(tmp_path: Path) -> None:
    """A stateful strategy (server momentum, a DP accountant) is saved with the model; the
    saves between two models (an update admitted) must keep naming it."""
    checkpoint = Checkpoint(tmp_path)
    first = snapshot(1, 1.0)
    first.strategy = {"momentum": {"w": torch.full((4,), 0.5)}, "steps": 3}
    checkpoint.save_snapshot(first)
    admitted = snapshot(1, 1.0)  # the core's snapshot: its meta has no strategy part
    admitted.meta.pending = []
    checkpoint.save_snapshot(admitted, model=False)

    restored = Checkpoint(tmp_path).load_snapshot()
    assert restored is not None and restored.strategy["steps"] == 3
    momentum = restored.strategy["momentum"]
    assert isinstance(momentum, dict) and torch.equal(momentum["w"], torch.full((4,), 0.5))
