"""Differential privacy at a population where it can work: config transforms and rules.

Used by ``worldlm experiment`` (``Experiment.dp``): every client of a data setting is split
into several clients (a population with many members per federation), DP is put on the
client -> federation edges only, the clip norm comes from a rule fixed before any DP run, and
the noise multiplier from the (epsilon, delta) target, the same for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worldlm.config.hierarchy import parse
from worldlm.training.corpus import partitions


@dataclass(frozen=True)
class DPStudy:
    """DP on the client -> federation edges, the same (epsilon, delta) target for every method.

    The population: every client of the setting split into ``shards`` clients (disjoint
    shards of its partition, same federation). Clip norm C: the median L2 norm of the
    clients' first-round updates from the initial model (seed 0, without noise), a rule
    fixed before any DP run. Noise multiplier: the smallest sigma whose RDP epsilon after the
    client budget's rounds (sample rate 1) is at most ``epsilon`` (opacus).

    ``seeds``: a DP cell trains ``shards`` times as many clients as a standard one, so the
    study runs fewer seeds than the grid (never more); the with/without-DP pairs share them.
    """

    shards: int = 6
    seeds: int = 3
    epsilon: float = 8.0
    delta: float = 1e-5
    methods: tuple[str, ...] = ("worldlm", "fedavg")


def population(raw: dict[str, Any], shards: int) -> dict[str, Any]:
    """Every client split into ``shards`` clients of the same federation and partition."""
    out = dict(raw)
    out["clients"] = {}
    for cid, table in raw["clients"].items():
        for i in range(shards):
            out["clients"][f"{cid}-{i}"] = {**table, "shard": i, "shards": shards}
    out["run"] = {**raw["run"], "id": f"{raw['run'].get('id', 'run')}-pop{shards}"}
    return out


def with_client_dp(raw: dict[str, Any], clip: float, sigma: float, delta: float) -> dict[str, Any]:
    """DP on the edge of every federation that has clients (not on federation -> parent).

    Forced: the study measures what DP does at a population the load-time check
    (worldlm/config/feasibility.py) predicts too small, divergence included.
    """
    out = {**raw, "federations": {f: dict(t) for f, t in raw["federations"].items()}}
    leaves = {t["federation"] for t in raw["clients"].values()}
    for fid in leaves:
        out["federations"][fid]["dp"] = {
            "clip_norm": clip,
            "noise_multiplier": sigma,
            "delta": delta,
            "force": True,
        }
    return out


def clip_rule(raw: dict[str, Any]) -> float:
    """The median L2 norm of the clients' first updates from the initial model."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from worldlm.lab.grid import default_processes
    from worldlm.training.learner import Learner
    from worldlm.strategies.dp import delta_norm
    from worldlm.training.workbench import initial_weights

    h = parse(raw, known_partitions={p.name for p in partitions()})
    start = initial_weights(h.run)

    def first_update_norm(cid: str) -> float:
        done = Learner(h, cid).round(start, final=False)
        assert done.result is not None
        return delta_norm(done.result.delta)

    # One client per core (torch releases the GIL in its kernels): the population is large.
    with ThreadPoolExecutor(default_processes()) as pool:
        norms = list(pool.map(first_update_norm, sorted(h.clients)))
    return statistics.median(norms)


def noise_for(epsilon: float, delta: float, rounds: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=1.0,
            steps=rounds,
            accountant="rdp",
        )
    )
