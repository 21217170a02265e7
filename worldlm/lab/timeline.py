"""What a simulated run's clock says: each federation's round times, and when each part of
the tree reached a target perplexity. Pure functions of the run's reports (their ``sim_s``,
stamped by the simulator from :mod:`worldlm.lab.clock`), so the same reports give the same
figures.

A part of the tree (a federation's subtree; the root's is the whole tree) has, at any
simulated time, the mean validation perplexity of its clients' latest evaluations (each the
model a client received, at the time it received it); it reaches a target the first time that
mean is at most the target, counted once every client has reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from schemas.messages import MetricsReport
from worldlm.config.hierarchy import Hierarchy


@dataclass(frozen=True)
class Timeline:
    """Per federation (by id): its rounds' close times, their durations, its subtree's
    perplexity over time, when that first reached ``target`` (None: never, or no target) and
    its final figure; ``end_s``: the last simulated time of the run."""

    closes: dict[str, list[float]]
    round_s: dict[str, list[float]]
    curve: dict[str, list[tuple[float, float]]]
    reached_s: dict[str, float | None]
    final_ppl: dict[str, float]
    end_s: float
    target: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "target_ppl": self.target,
            "end_s": self.end_s,
            "round_s": self.round_s,
            "reached_s": self.reached_s,
            "final_ppl": self.final_ppl,
        }


def subtree_clients(h: Hierarchy, federation: str) -> tuple[str, ...]:
    """The clients under ``federation``, at any depth."""
    fed = h.federations[federation]
    below = [c for child in fed.children for c in subtree_clients(h, child)]
    return tuple(sorted((*fed.clients, *below)))


def mean_curve(
    reports: Iterable[MetricsReport], clients: Sequence[str], metric: str = "val_ppl"
) -> list[tuple[float, float]]:
    """(time, mean of ``clients``' latest ``metric``) at every evaluation, from the time all
    of them have one; equal times collapse to the last."""
    points: dict[str, list[tuple[float, float]]] = {}
    for r in reports:
        if r.role == "client" and metric in r.values and "sim_s" in r.values:
            points.setdefault(r.node, []).append((r.values["sim_s"], r.values[metric]))
    return points_curve(points, clients)


def points_curve(
    points: Mapping[str, Sequence[tuple[float, float]]], clients: Sequence[str]
) -> list[tuple[float, float]]:
    """:func:`mean_curve` from each client's (time, figure) points."""
    wanted = set(clients)
    events = sorted((at, node, value) for node in wanted for at, value in points.get(node, ()))
    latest: dict[str, float] = {}
    curve: list[tuple[float, float]] = []
    for at, node, value in events:
        latest[node] = value
        if len(latest) == len(wanted):
            point = (at, sum(latest.values()) / len(latest))
            if curve and curve[-1][0] == at:
                curve[-1] = point
            else:
                curve.append(point)
    return curve


def first_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first time the curve is at most ``target``."""
    return next((at for at, value in curve if value <= target), None)


def timeline(
    h: Hierarchy, reports: Sequence[MetricsReport], target: float | None = None
) -> Timeline:
    """The clock's figures of one simulated run of ``h``."""
    closes: dict[str, list[float]] = {f: [] for f in h.federations}
    for r in reports:
        if r.role == "aggregator" and "sim_s" in r.values:
            closes[r.node].append(r.values["sim_s"])
    round_s = {
        f: [b - a for a, b in zip([0.0, *times], times, strict=False)]
        for f, times in closes.items()
    }
    curve = {f: mean_curve(reports, subtree_clients(h, f)) for f in h.federations}
    reached = {f: first_reach(c, target) if target is not None else None for f, c in curve.items()}
    final = {f: c[-1][1] for f, c in curve.items() if c}
    end = max((r.values.get("sim_s", 0.0) for r in reports), default=0.0)
    return Timeline(closes, round_s, curve, reached, final, end, target)
