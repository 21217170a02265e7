"""The uninterrupted run a killed one must equal: the simulator's weights.

A live ``sync`` run ends at exactly the simulator's weights (``tests/worldlm/
test_simulator.py``), so a run whose aggregators were killed and restarted must too, where
nothing but timing could tell the two apart. That holds when every round waits for every
declared member (sync, quorum 1.0, ``wait_for = "declared"``) and no close reads a sibling's
residual entry (which one it finds depends on timing; a replay follows the recorded one).
"""

from __future__ import annotations

from pathlib import Path

import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.checkpoint import Checkpoint
from worldlm.lab.simulator import simulate


def not_comparable(h: Hierarchy) -> str | None:
    """Why the run's weights depend on timing (None: they do not)."""
    for fed in h.federations.values():
        schedule = fed.policy.schedule
        if schedule.mode != "sync":
            return f"{fed.id} is async"
        if schedule.quorum < 1.0 or schedule.wait_for != "declared":
            return f"{fed.id} does not wait for every declared member"
        if fed.policy.key != "fedavg" and h.residual_links(fed.id):
            return f"{fed.id} reads its siblings' residual entries"
    return None


def differing(h: Hierarchy, checkpoints: Path) -> list[str]:
    """The federations whose final checkpointed model is not, bit for bit, the simulator's
    (a federation with no checkpoint differs)."""
    _, simulation = simulate(h)
    out = []
    for fid in sorted(h.federations):
        expected = simulation.weights(fid)
        try:
            _, weights, _, _ = Checkpoint(checkpoints / h.run.id / fid).load()
        except (OSError, ValueError):
            out.append(fid)
            continue
        same = weights.keys() == expected.keys() and all(
            torch.equal(weights[n], expected[n]) for n in expected
        )
        if not same:
            out.append(fid)
    return out
