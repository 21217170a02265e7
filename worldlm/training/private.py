"""Record-level differential privacy: DP-SGD inside one client's local training.

What is protected is one *example* of one client: a window of ``seq_len + 1`` tokens of its
training stream. The stream is cut into its N non-overlapping windows (`examples`), so each
token belongs to exactly one example. One DP step (Abadi et al., 2016, "Deep learning with
differential privacy"):

1. Poisson sampling: every example joins the step's batch independently with probability
   q = min(1, batch_size / N), so the batch size varies and may be zero (the step then
   applies noise only). This is the sampling the RDP accountant's amplification assumes;
   uniform offsets drawn with replacement (the non-private path) would not be.
2. Per-example gradients of the example's mean next-token loss, with ``torch.func``
   (``functional_call`` + ``vmap(grad_and_value(...))``) over every trainable parameter.
3. Each example's gradient, all parameters flattened together, is scaled to L2 norm at most
   C (``clip_norm``); the clipped gradients are summed, so one example moves the sum by ≤ C.
4. Gaussian noise N(0, (σ·C)²) is added to every coordinate, and the result divided by the
   *expected* batch size q·N (never the realised one, which depends on the data).

The optimizer step that follows is post-processing. The spent ε is an opacus `RDPAccountant`
fed every step actually taken. σ is given, or derived once (`noise_multiplier_for`): the
smallest σ whose ε after the client's whole run (``total_steps`` at rate q) meets the target.

Sampling and noise come from generators the caller passes (the trainer's, seeded from its
config), so a seed fixes every bit of a run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

Grads = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RecordPrivacy:
    """The record-level DP setting of one client's training (``TrainConfig.privacy``).

    `epsilon` and `delta` are the target for the client's whole run; `clip_norm` is C, the
    per-example L2 bound; `noise_multiplier` is σ, or None to derive it from the target over
    `total_steps` (the client's local steps over the whole run: rounds × local_steps).
    """

    epsilon: float = 8.0
    delta: float = 1e-5
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be positive, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.total_steps is not None and self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")


@dataclass(frozen=True)
class PrivacySpent:
    """What a client's training has spent so far: ε at `delta` after `steps` DP steps of
    noise multiplier `sigma` at sampling rate `sample_rate`."""

    epsilon: float
    delta: float
    sigma: float
    sample_rate: float
    steps: int


def examples(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The stream's N non-overlapping windows of ``seq_len + 1`` tokens, (N, seq_len + 1).

    A strided view, no copy; a trailing partial window is dropped.
    """
    windows = tokens.unfold(0, seq_len + 1, seq_len + 1)
    assert windows.shape[1] == seq_len + 1
    return windows


def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest σ (within opacus's tolerance of 0.01 in ε) whose RDP ε at `delta` after
    `steps` Poisson-sampled steps at `sample_rate` is at most `epsilon`."""
    # Imported here: opacus's package import costs seconds, and only DP runs need it.
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # The search tries small σ whose ε is huge and bounded at the largest RDP order;
            # opacus warns about each such bound, none of which is the answer.
            warnings.filterwarnings("ignore", "Optimal order is the largest alpha", UserWarning)
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
            )
    except ValueError as exc:
        raise ValueError(
            f"no noise multiplier reaches epsilon {epsilon} at delta {delta} over {steps} "
            f"steps at sampling rate {sample_rate:.4g}"
        ) from exc
    return float(sigma)


def per_example_gradients(
    model: torch.nn.Module, batch: torch.Tensor
) -> tuple[Grads, torch.Tensor]:
    """Per-example gradients of every trainable parameter, (B, *shape) each, and the B losses
    (each the mean next-token loss of one window of `batch`, (B, T + 1)).

    Tied parameters appear once (by their first name), their gradient covering every use.
    Dropout, if any, draws from the global RNG ("different" per example).
    """

    def loss(params: Grads, frozen: Grads, example: torch.Tensor) -> torch.Tensor:
        window = example.unsqueeze(0)
        inputs = window[:, :-1]
        out = functional_call(model, (params, frozen), (inputs,), {"use_cache": False})
        assert out.logits.shape[:2] == inputs.shape, (out.logits.shape, inputs.shape)
        return F.cross_entropy(out.logits[0].float(), window[0, 1:])

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen |= dict(model.named_buffers())
    compute = vmap(grad_and_value(loss), in_dims=(None, None, 0), randomness="different")
    _ignore_attention_fallback()
    grads, losses = compute(params, frozen, batch)
    return grads, losses


#: What torch says at every vmap over scaled-dot-product attention on the CPU, which has no
#: batching rule there: it loops over the examples instead. Measured no slower than eager
#: attention on the tiny model (docs/privacy.md), so the model keeps its attention.
_ATTENTION_FALLBACK = (
    "There is a performance drop because we have not yet implemented the batching rule for "
    "aten::_scaled_dot_product"
)


def _ignore_attention_fallback() -> None:
    """Ignore that one warning, process-wide, (re)installing the filter if it is missing.

    Not `warnings.catch_warnings`: it swaps the process's filter list and is not
    thread-safe, and live clients train in worker threads.
    """
    for action, message, *_ in warnings.filters:
        if action == "ignore" and message is not None and message.pattern == _ATTENTION_FALLBACK:
            return
    warnings.filterwarnings("ignore", _ATTENTION_FALLBACK, UserWarning)


def clip_and_sum(grads: Grads, clip_norm: float) -> tuple[Grads, torch.Tensor]:
    """The sum over examples of each example's gradient scaled to L2 norm ≤ `clip_norm`
    (the norm over all its tensors together), in float32; also the B unclipped norms."""
    flat = [g.flatten(1).float() for g in grads.values()]
    norms = torch.linalg.vector_norm(torch.stack([g.norm(dim=1) for g in flat]), dim=0)
    scale = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    summed = {n: torch.tensordot(scale, g.float(), dims=1) for n, g in grads.items()}
    return summed, norms


class RecordDP:
    """The DP-SGD mechanism of one client: its sampling rate, σ, and accountant.

    Built once per client (N is its number of examples, fixed for the run); `step` is one
    private step. The accountant lives as long as this object: it counts the steps taken
    through it, across rounds.
    """

    def __init__(self, privacy: RecordPrivacy, num_examples: int, batch_size: int) -> None:
        if num_examples <= 0 or batch_size <= 0:
            raise ValueError(f"need examples and a batch, got {num_examples}, {batch_size}")
        from opacus.accountants import RDPAccountant

        self.privacy = privacy
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.sample_rate = min(1.0, batch_size / num_examples)
        sigma = privacy.noise_multiplier
        if sigma is None:
            if privacy.total_steps is None:
                raise ValueError(
                    "deriving the noise multiplier from epsilon needs the client's total steps"
                )
            sigma = noise_multiplier_for(
                privacy.epsilon, privacy.delta, self.sample_rate, privacy.total_steps
            )
        self.noise_multiplier = sigma
        self.accountant: RDPAccountant = RDPAccountant()
        self.steps = 0

    @property
    def expected_batch(self) -> float:
        """q·N, the divisor of the noisy sum (min(batch_size, N))."""
        return self.sample_rate * self.num_examples

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of one Poisson sample: each example in with probability q."""
        keep = torch.rand(self.num_examples, generator=generator) < self.sample_rate
        return keep.nonzero().flatten()

    def noisy_gradient(
        self,
        model: torch.nn.Module,
        batch: torch.Tensor,
        noise: torch.Generator,
        chunk: int | None = None,
    ) -> tuple[Grads, torch.Tensor]:
        """(Σ clipped per-example gradients + N(0, (σC)²)) / q·N for the (B, T + 1) `batch`
        (B may be 0), per trainable parameter in float32; also the sum of the B losses.

        Examples go through the model `chunk` at a time (default: the batch size), which
        bounds the memory of per-example gradients and does not change the result's meaning.
        """
        device = next(model.parameters()).device
        total = {
            n: torch.zeros(p.shape, device=device)
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        loss_sum = torch.zeros((), device=device)
        size = chunk or self.batch_size
        for first in range(0, batch.shape[0], size):
            grads, losses = per_example_gradients(model, batch[first : first + size])
            clipped, _ = clip_and_sum(grads, self.privacy.clip_norm)
            for name, g in clipped.items():
                total[name] += g
            loss_sum += losses.detach().sum()
        std = self.noise_multiplier * self.privacy.clip_norm
        for g in total.values():  # in parameter order: a seed fixes which noise goes where
            if std > 0:
                g += std * torch.randn(g.shape, generator=noise, device=device)
            g /= self.expected_batch
        return total, loss_sum

    def step(
        self,
        model: torch.nn.Module,
        windows: torch.Tensor,
        sampler: torch.Generator,
        noise: torch.Generator,
    ) -> tuple[torch.Tensor, int]:
        """Sample from `windows` (all N examples), set every trainable parameter's ``.grad``
        to the noisy gradient, and account the step; returns (sum of losses, batch size).

        The caller then runs its optimizer step.
        """
        assert windows.shape[0] == self.num_examples, (windows.shape, self.num_examples)
        batch = windows[self.sample(sampler).to(windows.device)]
        grads, loss_sum = self.noisy_gradient(model, batch, noise)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.grad = grads[name].to(p.dtype)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        return loss_sum, batch.shape[0]

    def spent(self) -> PrivacySpent:
        """ε at the target δ after every step taken so far (0 before the first)."""
        delta = self.privacy.delta
        epsilon = self.accountant.get_epsilon(delta) if self.steps else 0.0
        return PrivacySpent(
            float(epsilon), delta, self.noise_multiplier, self.sample_rate, self.steps
        )
