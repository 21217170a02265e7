"""What a federation's round core keeps between rounds (:class:`Meta`, the JSON part of a
checkpoint) and what it says happens next (the steps a shell carries out, in order).

The core decides the sequence of a round; the shells (the live aggregator, the simulator,
the replay) only carry each step out in their own medium:

- after a close: ``Broadcast`` then ``OpenRound`` (or ``Done`` at the run's end), or, when
  the close ends an exchange with the parent, ``Submit`` then ``AwaitParent``;
- after the parent's model: ``Broadcast`` then ``OpenRound`` (or ``Done``);
- on resuming from a checkpoint: what the kill interrupted, from the same state.

Plain values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from schemas.messages import TensorCodec


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
class Meta:
    """The JSON part of a checkpoint."""

    version: int = 0
    round: int = 0
    parent_version: int = 0
    rounds_since_submit: int = 0
    round_opened: float = 0.0
    clock_round: int = -1  # the round ``round_opened`` is the clock of
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    pending: list[dict[str, Any]] = field(default_factory=list)  # id, sender, samples, base
    seen: list[str] = field(default_factory=list)  # update ids folded recently
    strategy: Any = None
    counters: dict[str, int] = field(default_factory=dict)
    final: bool = False
    awaiting_parent: bool = False
    #: ``exchange = "overlap"``: a submission is out and rounds go on until its answer
    in_flight: bool = False
    submit_id: str = ""
    samples: int = 0
    #: the revocation chain the shell verified (``schemas.revocation.ChainMemory``)
    revocations: dict[str, Any] = field(default_factory=dict)
    #: a closed round saved but not yet announced (``announcer.Notice``; {} once it is)
    unreported: dict[str, Any] = field(default_factory=dict)
    #: the model file this JSON part goes with
    model_file: str = "model.safetensors"


@dataclass(frozen=True)
class Submit:
    """Send ``submission`` to the parent (None: the rounds since the parent's last model
    were all empty, nothing to send; only wait for its next model)."""

    submission: Submission | None


@dataclass(frozen=True)
class AwaitParent:
    """Wait for a parent model newer than version ``after``, then hand it to the core."""

    after: int


@dataclass(frozen=True)
class Broadcast:
    """Publish the federation's model, version ``version`` (``final`` ends the run;
    ``parent_version``: the parent's model it was built on)."""

    version: int
    round: int
    final: bool
    parent_version: int = 0


@dataclass(frozen=True)
class OpenRound:
    """Open round ``round`` (start its clock and say so)."""

    round: int


@dataclass(frozen=True)
class Done:
    """The run is over for this federation."""


Step = Submit | AwaitParent | Broadcast | OpenRound | Done
