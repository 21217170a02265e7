"""What a federation's round core takes and gives: offers, decisions, a closed round, the
submission to the parent, and the snapshot a checkpoint stores. Plain values, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from schemas.messages import RoundLedger, TensorCodec
from worldlm.strategies import AggregateResult, Rejection, Update
from worldlm.strategies.base import Weights

if TYPE_CHECKING:
    from worldlm.core.steps import Meta, Step


@dataclass(frozen=True, eq=False)
class Offer:
    """An update a child offers to its federation, as the shell decoded it.

    ``unverified`` is why the sender's signature did not verify, as the shell found it
    (reason, detail); None when it did, or the run does not sign. ``kind`` is the manifest's
    kind (only ``update`` is admitted); ``run`` and ``federation`` are what its envelope names
    (None: not known, e.g. a replayed update).
    """

    sender: str
    update_id: str
    delta: Mapping[str, torch.Tensor]
    samples: int
    base_version: int
    kind: str = "update"
    unverified: tuple[str, str] | None = None
    run: str | None = None
    federation: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The update was admitted into the open round (the shell persists it, then commits)."""

    sender: str
    update_id: str
    staleness: int


@dataclass(frozen=True)
class Duplicate:
    """An update id folded or pending already (at-least-once delivery): counted, dropped."""

    update_id: str


@dataclass(frozen=True)
class Refused:
    """The update cannot be folded: the shell dead-letters it with ``reason``."""

    reason: str
    detail: str


Decision = Accepted | Duplicate | Refused


@dataclass
class Pending:
    """An admitted update waiting for its round to close."""

    update_id: str
    sender: str
    samples: int
    base_version: int
    delta: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Closed:
    """What closing a round produced; the shell publishes it.

    ``residual`` is this federation's key layers for the residual cache (None without K);
    ``exchange`` says the federation must now submit to its parent and wait for its
    broadcast before broadcasting itself; ``final`` ends the run (root only).
    """

    round: int
    reason: str
    version: int
    folded: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    residual: dict[str, torch.Tensor] | None
    exchange: bool
    final: bool
    values: dict[str, float]
    ledger: RoundLedger = field(default_factory=RoundLedger)
    #: what the shell does next, in order (``steps.py``)
    next: tuple[Step, ...] = ()


@dataclass
class Ledger:
    """What the open round decided so far, by update id (the core's part of a
    :class:`~schemas.messages.RoundLedger`; pending updates are folded at the close)."""

    duplicates: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def seal(
        self,
        folded: tuple[str, ...],
        declined: tuple[str, ...],
        residuals: dict[str, int],
        parent_version: int | None,
    ) -> RoundLedger:
        return RoundLedger(
            folded=folded,
            declined=declined,
            duplicates=tuple(self.duplicates),
            superseded=tuple(self.superseded),
            refused=dict(self.refused),
            dead_lettered=len(self.refused),
            residuals=dict(residuals),
            parent_version=parent_version,
        )


@dataclass(frozen=True, eq=False)
class Submission:
    """This federation's update to its parent: the backbone delta since the parent's model.

    ``delta`` is what the parent folds (decoded, when the parent's edge compresses); ``wire``
    and ``codecs`` are what is published (``wire`` is ``delta`` itself without a codec).
    """

    update_id: str
    delta: dict[str, torch.Tensor]
    samples: int
    base_version: int
    round: int
    wire: dict[str, torch.Tensor] = field(default_factory=dict)
    codecs: dict[str, TensorCodec] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Everything a restart needs: the JSON part, the tensors, and the pending deltas;
    ``feedback`` is the residual the compression of the next submission carries."""

    meta: Meta
    weights: Weights
    base: Weights
    strategy: dict[str, object]
    pending: list[Pending] = field(default_factory=list)
    feedback: Weights = field(default_factory=dict)


def figures(
    live: int,
    updates: Sequence[Update],
    result: AggregateResult,
    counters: Counter[str],
    residuals: int,
    version: int,
    ledger: RoundLedger,
) -> dict[str, float]:
    """A closed round's metrics: this round's, the run's totals so far, the strategy's."""
    stale = [u.staleness for u in updates]
    values = {
        "members": float(live),
        "arrived": float(len(updates)),
        "accepted": float(len(result.accepted)),
        # updates refused at admission or declined by the strategy, a run total (records
        # that never reached the core are the aggregator shell's "unreadable")
        "rejected": float(counters["rejected"]),
        "duplicates": float(counters["updates_duplicate"]),
        "staleness_mean": sum(stale) / len(stale) if stale else 0.0,
        "staleness_max": float(max(stale, default=0)),
        "residuals": float(residuals),
        "version": float(version),
        # this round's own accounting (the ledger names the ids)
        "round_accepted": float(len(ledger.folded) - len(ledger.declined)),
        "round_duplicates": float(len(ledger.duplicates)),
        "round_dead_lettered": float(ledger.dead_lettered),
        # run totals: rounds closed with nothing to fold, exchanges with nothing to send
        "rounds_empty": float(counters["rounds_empty"]),
        "submissions_skipped": float(counters["submissions_skipped"]),
    }
    return values | {
        k: float(v)
        for k, v in result.info.items()
        if isinstance(v, float | int) and math.isfinite(v)
    }
