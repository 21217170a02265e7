"""Whether member-level DP on a federation's edge leaves anything to learn, checked at load.

A federation with DP (:mod:`worldlm.strategies.dp`) clips each member's update to L2 norm C,
adds Gaussian noise N(0, (σ·C)²) to every coordinate of the sum of the n updates of a round
and divides by n. Over d private coordinates the noise in that average has expected norm
σ·C·√d / n, against a clipped update of norm at most C; their ratio

    r = σ·√d / n        (C cancels)

is the noise-to-update ratio of :func:`noise_ratio`. Above ~1 the noise dominates every
round's step and training diverges: at σ = 1.56 with 12 members on the 1.18M-parameter tiny
model r = 141 and every method did (docs/experiment/languages-dp/report.md). The population
that brings r down to a threshold ρ is n ≥ σ·√d / ρ (:func:`members_needed`).

What d and n are, per federation (:func:`predict`):

* d, the private coordinates on the edge: DP noises every coordinate of the sum, so d is the
  union of what the members send. A client sends every floating tensor of the canonical
  state dict (tied aliases counted once, as ``workbench.canonical``); a sub-federation sends
  its backbone only, its key layers K stay below (``FederationCore.submission``). Counted on
  the model built on the ``meta`` device: no weights are allocated.
* n, the updates averaged in a round, assuming every member is live: ``sync`` closes at
  max(min_quorum, ⌈quorum·members⌉) updates (``FederationCore.quorum``; more may arrive
  before the close, a round closed by its deadline may have fewer), at most the members;
  ``async`` folds ``buffer`` updates at a time.

:func:`check` runs in :func:`worldlm.config.hierarchy.parse`: a federation whose ratio exceeds its
``dp.max_noise_ratio`` is a :class:`ConfigError` naming the population it would need, unless
``dp.force`` is set; then the config loads and a ``dp_forced`` warning says why.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from worldlm.config.schema import ConfigError, LoraConfig, RunConfig, ScheduleConfig

if TYPE_CHECKING:
    import torch

    from worldlm.config.hierarchy import Hierarchy

log = structlog.get_logger("worldlm.config.hierarchy")


def noise_ratio(noise_multiplier: float, coordinates: int, members: int) -> float:
    """σ·√d / n: the expected norm of the noise in the average of ``members`` clipped updates
    (σ·C·√d / n over ``coordinates`` noised coordinates) over the clip norm C."""
    if coordinates < 0 or members < 1:
        raise ValueError(f"need coordinates >= 0 and members >= 1, got {coordinates}, {members}")
    return noise_multiplier * math.sqrt(coordinates) / members


def members_needed(noise_multiplier: float, coordinates: int, max_ratio: float = 1.0) -> int:
    """The fewest members a round whose :func:`noise_ratio` is at most ``max_ratio``."""
    if not max_ratio > 0:
        raise ValueError(f"max_ratio must be positive, got {max_ratio}")
    n = max(1, math.ceil(noise_multiplier * math.sqrt(coordinates) / max_ratio))
    # ceil of a rounded quotient can land one off either side of the exact bound
    while n > 1 and noise_ratio(noise_multiplier, coordinates, n - 1) <= max_ratio:
        n -= 1
    while noise_ratio(noise_multiplier, coordinates, n) > max_ratio:
        n += 1
    return n


def members_per_round(schedule: ScheduleConfig, members: int) -> int:
    """Updates a round of this schedule averages when all ``members`` are live (see the
    module docstring for what this assumes)."""
    if schedule.mode == "async":
        return schedule.buffer
    quorum = max(schedule.min_quorum, math.ceil(members * schedule.quorum - 1e-9))
    return max(1, min(members, quorum))


@dataclass(frozen=True)
class Prediction:
    """What DP on one federation's edge does to its average."""

    federation: str
    noise_multiplier: float
    coordinates: int  # d: private coordinates on the edge
    members: int  # n: updates averaged a round
    ratio: float  # σ·√d / n
    max_ratio: float  # the federation's dp.max_noise_ratio
    needed: int  # the fewest members a round with ratio <= max_ratio

    @property
    def feasible(self) -> bool:
        return self.ratio <= self.max_ratio

    def describe(self) -> str:
        """One line: the ratio, its inputs, and the population it would need."""
        bound = "" if self.max_ratio == 1.0 else f" for noise at most {self.max_ratio:g}x"
        return (
            f"noise {_times(self.ratio)}x a clipped update in the average "
            f"(sigma {self.noise_multiplier:.3g}, {self.coordinates:,} private coordinates, "
            f"{self.members:,} members a round): this federation needs at least "
            f"{self.needed:,} members a round{bound}, fewer private coordinates or a smaller "
            "noise_multiplier"
        )


def predict(hierarchy: Hierarchy, federation: str) -> Prediction | None:
    """The prediction for ``federation``'s DP, or None when it has none."""
    fed = hierarchy.federations[federation]
    dp = fed.policy.dp
    if dp is None:
        return None
    d = private_coordinates(hierarchy, federation)
    n = members_per_round(fed.policy.schedule, len(fed.members))
    return Prediction(
        federation,
        dp.noise_multiplier,
        d,
        n,
        noise_ratio(dp.noise_multiplier, d, n),
        dp.max_noise_ratio,
        members_needed(dp.noise_multiplier, d, dp.max_noise_ratio),
    )


def check(hierarchy: Hierarchy) -> None:
    """Refuse a federation whose DP predicts divergence, unless forced (then log `dp_forced`)."""
    for fed in hierarchy.walk():
        dp = fed.policy.dp
        if dp is None or dp.noise_multiplier == 0:
            continue  # no noise: nothing to drown (and no model to build)
        prediction = predict(hierarchy, fed.id)
        assert prediction is not None
        if prediction.feasible:
            continue
        where = f"{hierarchy.source}: federations.{fed.id}.dp"
        if not dp.force:
            raise ConfigError(
                f"{where}: {prediction.describe()}; set dp.force = true to run anyway"
            )
        log.warning(
            "dp_forced",
            source=hierarchy.source,
            federation=fed.id,
            noise_ratio=round(prediction.ratio, 1),
            max_noise_ratio=prediction.max_ratio,
            coordinates=prediction.coordinates,
            members_per_round=prediction.members,
            members_needed=prediction.needed,
        )


def private_coordinates(hierarchy: Hierarchy, federation: str) -> int:
    """d on ``federation``'s edge: the floating coordinates its members send, as a union (a
    client sends them all, a sub-federation its backbone)."""
    fed = hierarchy.federations[federation]
    run = hierarchy.run
    total, sizes = _layout(hierarchy.source, run)
    if fed.clients:
        return total
    # A coordinate stays private only when it is K in every child: the sum noises the rest.
    kept: frozenset[str] | None = None
    for child in fed.children:
        policy = hierarchy.federations[child].policy
        key = (
            _key(hierarchy.source, f"federations.{child}.key_layers", run, policy.key_layers)
            if policy.key != "fedavg"  # FederationCore: key "fedavg" means no K
            else frozenset()
        )
        kept = key if kept is None else kept & key
    return total - sum(sizes[n] for n in kept or ())


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2f}"


def _layout(source: str, run: RunConfig) -> tuple[int, dict[str, int]]:
    try:
        return _floating_sizes(run.model, run.arch, run.init, run.lora)
    except (OSError, ValueError) as exc:
        where = "run.init" if run.init else "run.model"
        raise ConfigError(f"{source}: {where}: {_one_line(exc)}") from None


def _key(source: str, where: str, run: RunConfig, patterns: list[str]) -> frozenset[str]:
    try:
        return _key_names(run.model, run.arch, run.init, run.lora, tuple(patterns))
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


@functools.lru_cache(maxsize=8)
def _floating_sizes(
    model: str, arch: str, pretrained: str | None, lora: LoraConfig | None
) -> tuple[int, dict[str, int]]:
    """Total floating coordinates of what travels (the canonical state dict; under LoRA its
    adapters only), and each name's size."""
    from worldlm.training.layers import tied_aliases

    meta = _meta_model(model, arch, pretrained, lora)
    skip = tied_aliases(meta).keys() | _frozen(meta)
    sizes = {
        n: t.numel()
        for n, t in meta.state_dict().items()
        if n not in skip and t.is_floating_point()
    }
    return sum(sizes.values()), sizes


@functools.lru_cache(maxsize=32)
def _key_names(
    model: str,
    arch: str,
    pretrained: str | None,
    lora: LoraConfig | None,
    patterns: tuple[str, ...],
) -> frozenset[str]:
    """K under ``patterns`` (or the default split), as ``workbench.key_names`` selects it."""
    from worldlm.training.layers import default_key_patterns, split_parameters, tied_aliases

    meta = _meta_model(model, arch, pretrained, lora)
    split = split_parameters(meta, patterns or default_key_patterns(meta))
    skip = tied_aliases(meta).keys() | _frozen(meta)
    return frozenset(n for n in split.key if n not in skip)


def _frozen(meta: torch.nn.Module) -> frozenset[str]:
    from worldlm.training.adapters import frozen_names

    return frozen_names(meta)


@functools.lru_cache(maxsize=4)
def _meta_model(
    model: str, arch: str, pretrained: str | None, lora: LoraConfig | None = None
) -> torch.nn.Module:
    """The run's model on the ``meta`` device: names, shapes and ties, no weights; under
    LoRA with its adapters injected and its base frozen (only the adapters travel)."""
    built = _meta_base(model, arch, pretrained)
    if lora is not None:
        from peft import inject_adapter_in_model

        from worldlm.training.adapters import ADAPTER, peft_config

        built = inject_adapter_in_model(peft_config(lora), built, adapter_name=ADAPTER)
        for name, parameter in built.named_parameters():
            parameter.requires_grad_(".lora_" in name)
    return built


def _meta_base(model: str, arch: str, pretrained: str | None) -> torch.nn.Module:
    # Imported here: transformers costs seconds to import, and only DP configs need it.
    import torch

    if pretrained:
        from pathlib import Path

        from transformers import AutoConfig, AutoModelForCausalLM

        if not Path(pretrained).is_dir():
            raise FileNotFoundError(f"no pretrained model directory at {pretrained}")
        config = AutoConfig.from_pretrained(pretrained, local_files_only=True)
        with torch.device("meta"):
            built: torch.nn.Module = AutoModelForCausalLM.from_config(config)
        return built
    from worldlm.training.model import ModelConfig, build_model
    from worldlm.training.tokenizer import load_tokenizer

    shape = ModelConfig.from_preset(model, vocab_size=load_tokenizer().vocab_size, arch=arch)
    return build_model(shape, device="meta")
