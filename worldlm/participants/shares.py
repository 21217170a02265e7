"""Which participants of a hierarchy run where: the config cut into N disjoint, balanced shares.

Pure: no I/O, no clock. ``worldlm run --workers N`` runs share i/N in its i-th child process;
``worldlm run --share i/N`` runs one share on any host. Every process computes the same
partition from the same config, with no coordination, so N processes (or hosts, or
containers) running shares 1/N .. N/N run every participant of the config exactly once.

Balance is by an estimate of each participant's CPU per root round, in units of one local
training step (:func:`weights`): a client trains, evaluates and moves a model once per round
of its federation; an aggregator folds each member's update and closes, checkpoints and
broadcasts once per round. The shares are filled heaviest first, each participant going to
the lightest share so far (longest-processing-time first), so the heaviest and lightest share
differ by at most one participant's weight. Ties are broken by id, never by the order of the
config's tables, so reordering a file does not move anyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worldlm.config.hierarchy import Hierarchy

#: A forward pass over one evaluation batch, in training steps (forward, backward, update).
EVAL_BATCH_STEPS = 1 / 3
#: What a client does once per round besides training and evaluation (decode the broadcast,
#: encode, hash and publish its delta), in training steps of the model.
CLIENT_ROUND_STEPS = 1.0
#: An aggregator's work per member update it folds (reassemble, verify, decode, add).
FOLD_STEPS = 0.5
#: An aggregator's work per round besides folding (close, checkpoint, encode the broadcast).
CLOSE_STEPS = 2.0

_SHARE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True, order=True)
class Share:
    """Share ``index`` of ``count`` (1-based, as in ``--share 2/3``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"share {self.index}/{self.count}: need 1 <= i <= N")

    @classmethod
    def parse(cls, text: str) -> Share:
        """``"i/N"``, e.g. ``"2/3"``; a ValueError that says what is wrong otherwise."""
        match = _SHARE.fullmatch(text)
        if match is None:
            raise ValueError(f"share {text!r}: expected i/N, e.g. 1/3")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Assignment:
    """The participants one share runs: aggregators parents first, clients in config order."""

    share: Share
    aggregators: tuple[str, ...]
    clients: tuple[str, ...]
    weight: float

    @property
    def participants(self) -> tuple[str, ...]:
        return self.aggregators + self.clients

    def describe(self, most: int = 6) -> str:
        """``root, en-0`` or ``a, b, c, d, e, f and 4 more``: for one line of output."""
        ids = self.participants
        if not ids:
            return "no participants"
        if len(ids) <= most:
            return ", ".join(ids)
        return ", ".join(ids[:most]) + f" and {len(ids) - most} more"


def rounds_per_root_round(hierarchy: Hierarchy, federation: str) -> int:
    """How many rounds ``federation`` closes per round of the root: the product of the
    ``internal_rounds`` of it and its ancestors below the root."""
    rounds = 1
    fed = hierarchy.federations[federation]
    while fed.parent is not None:
        rounds *= fed.policy.internal_rounds
        fed = hierarchy.federations[fed.parent]
    return rounds


def weights(hierarchy: Hierarchy) -> dict[str, float]:
    """Each participant's estimated CPU per root round, in local training steps."""
    eval_steps = hierarchy.run.eval_batches * EVAL_BATCH_STEPS
    found: dict[str, float] = {}
    for fed in hierarchy.walk():
        rounds = rounds_per_root_round(hierarchy, fed.id)
        found[fed.id] = rounds * (len(fed.members) * FOLD_STEPS + CLOSE_STEPS)
        for client in fed.clients:
            found[client] = rounds * (fed.policy.local_steps + eval_steps + CLIENT_ROUND_STEPS)
    return found


def partition(hierarchy: Hierarchy, count: int) -> tuple[Assignment, ...]:
    """Every participant in exactly one of ``count`` shares, balanced by :func:`weights`.

    With more shares than participants the last shares are empty.
    """
    if count < 1:
        raise ValueError(f"{count} shares: need at least 1")
    weight = weights(hierarchy)
    loads = [0.0] * count
    members: list[set[str]] = [set() for _ in range(count)]
    for node in sorted(weight, key=lambda n: (-weight[n], n)):
        lightest = min(range(count), key=lambda i: (loads[i], len(members[i]), i))
        loads[lightest] += weight[node]
        members[lightest].add(node)
    tree_order = [f.id for f in hierarchy.walk()]
    return tuple(
        Assignment(
            share=Share(i + 1, count),
            aggregators=tuple(f for f in tree_order if f in members[i]),
            clients=tuple(c for c in hierarchy.clients if c in members[i]),
            weight=loads[i],
        )
        for i in range(count)
    )


def assignment(hierarchy: Hierarchy, share: Share) -> Assignment:
    """The participants of ``share``: what ``worldlm run --share i/N`` runs."""
    return partition(hierarchy, share.count)[share.index - 1]
