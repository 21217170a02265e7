"""The types every strategy speaks: updates, candidates, results, the protocol, the errors.

A strategy turns one round's updates into one aggregate. It is synchronous and deterministic
(randomness only through a seeded generator it owns), works on plain ``name -> Tensor``
mappings, and never mutates what it is given: every tensor in a result is a fresh tensor.

Conventions shared by all strategies in this package:

* An update's ``delta`` may cover a subset of the aggregator's tensors (a tensor it does not
  cover gets no contribution from it); a name the aggregator does not hold, a shape that
  differs, or a non-finite value is an error naming the sender and the tensor.
* A tensor of ``current`` that no update covers is left unchanged.
* Non-floating tensors (counters, integer buffers) are not learned: they are carried over
  unchanged, and their deltas are ignored.
* Arithmetic runs in at least float32 and results are cast back to the current dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

Tensors = Mapping[str, Tensor]
#: A model (or delta) owned by its holder: tensor name -> tensor. The one definition.
Weights = dict[str, Tensor]
"""A model, a slice of one, or a delta: tensor name to tensor."""

Info = dict[str, float]
"""Figures a strategy reports for one round; the aggregator publishes them as metrics."""


class StrategyError(ValueError):
    """A round's input cannot be aggregated. The message names the sender and tensor.

    ``retriable`` is False for every subclass: the same input fails the same way, so the
    aggregator records the failure (dead letter, counter) instead of retrying.
    """

    retriable = False


class EmptyUpdatesError(StrategyError):
    """No update to aggregate (or none with positive weight)."""


class TensorMismatchError(StrategyError):
    """A delta names a tensor the aggregator does not hold, or its shape differs."""


class NonFiniteError(StrategyError):
    """A delta holds NaN or Inf."""


class InvalidUpdateError(StrategyError):
    """An update's metadata is invalid (no samples, a negative weight, ...)."""


class StrategyConfigError(StrategyError):
    """A strategy was configured with invalid parameters, or given invalid state."""


@dataclass(frozen=True, eq=False)
class Update:
    """One child's contribution to a round.

    Attributes:
        sender: the child's id (used in error messages, rejections and attention metrics).
        delta: trained weights minus the weights the child trained from.
        num_samples: examples behind the update (FedAvg weight), at least ``MIN_SAMPLES``.
        staleness: model versions between the child's base and the aggregator's current.
        weight: multiplier set by wrappers (e.g. the staleness discount); 1 by default.
    """

    sender: str
    delta: Tensors
    num_samples: int
    staleness: int = 0
    weight: float = 1.0

    def with_weight(self, weight: float) -> Update:
        """A copy with ``weight`` replaced (the delta is shared, not copied)."""
        return dataclasses.replace(self, weight=weight)

    def with_delta(self, delta: Tensors) -> Update:
        """A copy with ``delta`` replaced (e.g. restricted to some names, or clipped)."""
        return dataclasses.replace(self, delta=delta)


@dataclass(frozen=True, eq=False)
class Candidate:
    """An attention candidate: full weights for (some of) the tensors, a logit bias, a label.

    Attention considers the candidate only for the tensors it holds.
    """

    weights: Tensors
    bias: float = 0.0
    source: str = ""


@dataclass(frozen=True, eq=False)
class ResidualEntry:
    """Another federation's cached key layers (its residual embedding).

    ``rounds_stale`` is how many rounds old the entry is; it sets the attention discount.
    ``round`` is the round its federation cached it in (None when not known): the round
    ledger names it, so a replay can feed the round the very entry the live round read.
    """

    federation: str
    weights: Tensors
    rounds_stale: int = 0
    round: int | None = None


@dataclass(frozen=True, eq=False)
class RoundContext:
    """Round-level inputs that are not per update.

    Attributes:
        residuals: other federations' key layers, extra attention candidates.
        sample_rate: fraction of the federation's members sampled this round (for the DP
            accountant); None means "use the configured rate".
        round: the aggregator's round number (informational).
    """

    residuals: Sequence[ResidualEntry] = ()
    sample_rate: float | None = None
    round: int = 0


@dataclass(frozen=True)
class Rejection:
    """An update declined, and why: ``reason`` is a stable snake_case name (the counter and
    dead-letter reason), ``detail`` says what exactly was wrong. The aggregator counts these."""

    sender: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """One round's outcome.

    Attributes:
        weights: the new weights, one fresh tensor per name of ``current``.
        info: figures for metrics (attention weights, noise std, epsilon, ...).
        accepted: senders whose updates contributed.
        rejected: updates declined, with a reason (never raised).
        aggregated: False when nothing was applied (local-only, or everything rejected).
    """

    weights: dict[str, Tensor]
    info: Info = field(default_factory=dict)
    accepted: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    aggregated: bool = True


@runtime_checkable
class Strategy(Protocol):
    """Turns the current weights and one round's updates into new weights.

    Implementations are synchronous, deterministic given their seed, and never mutate
    their inputs. Stateful ones (momentum, privacy accountant) return their state from
    ``state_dict`` (tensors and JSON-able values) and restore it in ``load_state_dict``;
    stateless ones return an empty dict.
    """

    def aggregate(
        self,
        current: Tensors,
        updates: Sequence[Update],
        context: RoundContext | None = None,
    ) -> AggregateResult:
        """Aggregate ``updates`` into ``current``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state, for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore state produced by ``state_dict``."""
        ...


def is_learned(tensor: Tensor) -> bool:
    """Whether a tensor takes part in aggregation (floating point) or is carried over."""
    return tensor.is_floating_point()


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype arithmetic on ``tensor`` runs in: at least float32, float64 kept."""
    return torch.promote_types(tensor.dtype, torch.float32)


def copy_weights(current: Tensors) -> dict[str, Tensor]:
    """Fresh copies of every tensor, so a result never aliases an input."""
    return {name: t.detach().clone() for name, t in current.items()}


#: The fewest examples an update may claim. One rule for every path (the federation core's
#: admission, a strategy's guard): an update of weight 0 would, alone in a round, average
#: nothing; refused as ``no_samples``.
MIN_SAMPLES = 1


def update_problem(current: Tensors, update: Update) -> Rejection | None:
    """Why ``update`` cannot be folded into ``current`` (a :class:`Rejection`), or None.

    The one validation path of the project: the federation core admits updates with it and
    dead-letters its rejections; strategies call it (through :func:`check_updates`) as a
    guard for direct callers. Reasons: ``no_samples``, ``bad_weight``, ``bad_staleness``,
    ``unknown_tensor``, ``bad_shape``, ``non_finite``.
    """
    sender = update.sender
    if update.num_samples < MIN_SAMPLES:
        return Rejection(sender, "no_samples", f"sample count {update.num_samples}")
    if not math.isfinite(update.weight) or update.weight < 0:
        return Rejection(sender, "bad_weight", f"weight {update.weight} is not finite and >= 0")
    if update.staleness < 0:
        return Rejection(sender, "bad_staleness", f"staleness {update.staleness} < 0")
    unknown = sorted(set(update.delta) - set(current))
    if unknown:
        return Rejection(sender, "unknown_tensor", f"tensors not in the model: {unknown[:5]}")
    for name, delta in update.delta.items():
        expected = current[name].shape
        if delta.shape != expected:
            return Rejection(
                sender,
                "bad_shape",
                f"tensor {name!r} has shape {tuple(delta.shape)}, expected {tuple(expected)}",
            )
        if delta.dtype != current[name].dtype and not (
            delta.is_floating_point() and current[name].is_floating_point()
        ):
            return Rejection(
                sender,
                "bad_dtype",
                f"tensor {name!r} is {delta.dtype}, model {current[name].dtype}",
            )
        if delta.is_floating_point() and not bool(torch.isfinite(delta).all()):
            return Rejection(sender, "non_finite", f"tensor {name!r} holds NaN or Inf")
    return None


_ERRORS: dict[str, type[StrategyError]] = {
    "no_samples": InvalidUpdateError,
    "bad_weight": InvalidUpdateError,
    "bad_staleness": InvalidUpdateError,
    "unknown_tensor": TensorMismatchError,
    "bad_shape": TensorMismatchError,
    "bad_dtype": TensorMismatchError,
    "non_finite": NonFiniteError,
}


def check_updates(current: Tensors, updates: Sequence[Update]) -> None:
    """Raise the ``StrategyError`` of the first problem :func:`update_problem` finds.

    A guard for direct callers of a strategy; the federation core never hands a strategy an
    update that fails it (it rejects such updates at admission, as data).
    """
    if not updates:
        raise EmptyUpdatesError("no updates to aggregate")
    for update in updates:
        problem = update_problem(current, update)
        if problem is not None:
            raise _ERRORS[problem.reason](
                f"update from {update.sender!r}: {problem.detail or problem.reason}"
            )


def merge_rejections(*groups: Sequence[Rejection]) -> tuple[Rejection, ...]:
    """Concatenate rejections, dropping exact duplicates (same sender and reason)."""
    seen: dict[tuple[str, str], Rejection] = {}
    for group in groups:
        for rejection in group:
            seen.setdefault((rejection.sender, rejection.reason), rejection)
    return tuple(seen.values())


def merge_senders(*groups: Sequence[str]) -> tuple[str, ...]:
    """Concatenate sender ids in order, without duplicates."""
    return tuple(dict.fromkeys(s for group in groups for s in group))
