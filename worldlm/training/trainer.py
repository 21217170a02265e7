"""Local training: H AdamW steps on one client's token stream, returning a delta.

A client receives weights (a full state dict: the parent's backbone B and its federation's key
layers K), trains H steps on its own tokens and sends back the delta ``trained − given``.
`LocalTrainer` owns one model and reuses it across rounds: each call copies the given weights
in once (`load_state_dict`), runs a plain training loop, and computes the delta once at the end.
Nothing in the loop copies weights, syncs with the device (`.item()`) or allocates beyond what
the forward and backward passes need, so it runs at the speed of a hand-written PyTorch loop
(`benchmarks/training.py` measures the ratio).

Optimizer state: by default every call starts a fresh AdamW, the usual choice in federated
learning — the received weights are a new starting point, and moments accumulated on the old
weights would push them back towards this client's previous optimum. Set
``TrainConfig.persist_optimizer=True`` to keep AdamW's moments and step count across calls
(a per-client stateful optimizer, e.g. for local-only baselines).

The learning rate is constant within a call; schedules across rounds belong to the caller,
which can pass a new `TrainConfig` (``dataclasses.replace(config, lr=...)``).

Record-level DP: with ``TrainConfig.privacy`` set, each step is a DP-SGD step instead
(`worldlm.training.private`: Poisson-sampled examples, per-example clipping, Gaussian noise,
no global gradient clip), and each result carries the ε spent so far. Without it, the loop
above runs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldlm.training.adapters import frozen_names
from worldlm.training.batches import check_stream, sample_starts
from worldlm.training.layers import tied_aliases
from worldlm.training.private import PrivacySpent, RecordDP, RecordPrivacy, examples


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one client's local training (one call of `LocalTrainer.train`).

    `steps` is H, the number of local optimizer steps per round. `grad_clip` clips the global
    gradient norm (None or 0 disables it). Weight decay applies to matrices and embeddings
    only, not to norms and biases (the nanoGPT convention). `seed` seeds batch sampling (and
    dropout, if the model has any): two trainers with the same seed and inputs return the same
    delta. `privacy` switches local training to DP-SGD (see the module docstring).
    """

    steps: int = 50
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 128
    grad_clip: float | None = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    persist_optimizer: bool = False
    privacy: RecordPrivacy | None = None

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "seq_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training produced.

    `delta` maps every name of the given weights to ``trained − given`` in float32, on the CPU.
    `num_samples` is the number of sequences seen (steps × batch_size), the FedAvg weight.
    `train_loss` is the mean training loss over the steps. Under record-level DP,
    `num_samples` is the expected count (steps × q·N: the realised one depends on the data),
    `train_loss` the mean over the examples sampled (NaN if none was), and `privacy` what the
    client has spent so far.
    """

    delta: dict[str, torch.Tensor]
    num_samples: int
    train_loss: float
    steps: int
    privacy: PrivacySpent | None = None


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on tensors of rank ≥ 2 (matrices, embeddings) only.

    Uses the fused kernel where torch has one (float parameters on CPU or CUDA): on a CPU it
    takes ~1 ms per step for the tiny model where the default per-tensor loop takes ~6 ms.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None
    )


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a (B, T + 1) batch of windows."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    # use_cache=False: a training forward needs no KV cache, and building one costs time.
    logits = model(input_ids=inputs, use_cache=False).logits
    assert logits.shape[:2] == inputs.shape, (logits.shape, inputs.shape)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class LocalTrainer:
    """Runs local rounds on a model it owns; see the module docstring for the semantics.

    The model stays on whatever device it is on; token streams may live on the CPU.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig) -> None:
        self.model = model
        self.config = config
        self.device = next(model.parameters()).device
        # Learned position embeddings (gpt2) end at n_positions; RoPE (llama) has no hard end.
        n_positions = getattr(getattr(model, "config", None), "n_positions", None)
        if isinstance(n_positions, int) and config.seq_len > n_positions:
            raise ValueError(
                f"seq_len {config.seq_len} exceeds the model's {n_positions} positions"
            )
        # Names a caller may leave out: tied aliases, and a frozen base (LoRA) never moves.
        self._aliases = tied_aliases(model).keys() | frozen_names(model)
        self._generator = torch.Generator().manual_seed(config.seed)
        self._optimizer: torch.optim.AdamW | None = None
        self._record: RecordDP | None = None  # built on the first private round (needs N)

    def train(
        self, weights: Mapping[str, torch.Tensor], tokens: torch.Tensor, *, seed: int | None = None
    ) -> LocalResult:
        """Load `weights`, run `config.steps` AdamW steps on `tokens`, return the delta.

        `weights` is a full state dict (tied aliases may be left out); it is never modified.
        Batches come from the trainer's generator, which carries on across calls so that each
        round sees new batches; `seed` resets it first (e.g. to the round number, for runs
        that must replay exactly after a restart).
        """
        cfg, model = self.config, self.model
        check_stream(tokens, cfg.seq_len)
        if seed is not None:
            self._generator.manual_seed(seed)
        given = self._detach_from_model(weights)
        self._load(given)

        optimizer = self._optimizer if cfg.persist_optimizer else None
        if optimizer is None:
            optimizer = make_optimizer(model, cfg)
            if cfg.persist_optimizer:
                self._optimizer = optimizer
        if cfg.privacy is not None:
            return self._train_private(given, tokens, optimizer, cfg.privacy)
        params = [p for group in optimizer.param_groups for p in group["params"]]

        # All of this round's window offsets in one draw; the loop only indexes.
        starts = sample_starts(
            tokens.numel(), cfg.seq_len, (cfg.steps, cfg.batch_size), self._generator
        )
        starts = starts.to(self.device)
        offsets = torch.arange(cfg.seq_len + 1, device=self.device)
        stream = tokens.to(self.device, torch.long)
        dropout_seed = int(torch.randint(2**62, (1,), generator=self._generator))
        loss_sum = torch.zeros((), device=self.device)

        rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(dropout_seed)  # only dropout draws from the global RNG
            model.train()
            for step in range(cfg.steps):
                batch = stream[starts[step].unsqueeze(1) + offsets]
                loss = lm_loss(model, batch)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()  # stays on the device: no sync per step

        return LocalResult(
            delta=self._delta(given),
            num_samples=cfg.steps * cfg.batch_size,
            train_loss=float(loss_sum) / cfg.steps,
            steps=cfg.steps,
        )

    def _train_private(
        self,
        given: Mapping[str, torch.Tensor],
        tokens: torch.Tensor,
        optimizer: torch.optim.AdamW,
        privacy: RecordPrivacy,
    ) -> LocalResult:
        """`config.steps` DP-SGD steps (`worldlm.training.private`) from the loaded weights."""
        cfg, model = self.config, self.model
        windows = examples(tokens.to(self.device, torch.long), cfg.seq_len)
        if self._record is None:
            self._record = RecordDP(privacy, windows.shape[0], cfg.batch_size)
        record = self._record
        if record.num_examples != windows.shape[0]:
            raise ValueError(
                f"record-level DP accounts over one stream of {record.num_examples} examples; "
                f"got {windows.shape[0]}"
            )
        # Sampling draws from the trainer's generator; noise from a device generator seeded
        # by it (a seed fixes both, and GPU noise needs no host-to-device copy).
        noise = torch.Generator(self.device)
        noise.manual_seed(int(torch.randint(2**62, (1,), generator=self._generator)))
        dropout_seed = int(torch.randint(2**62, (1,), generator=self._generator))
        loss_sum = torch.zeros((), device=self.device)
        sampled = 0
        rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(dropout_seed)
            model.train()
            for _ in range(cfg.steps):
                step_loss, size = record.step(model, windows, self._generator, noise)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += step_loss
                sampled += size
        return LocalResult(
            delta=self._delta(given),
            num_samples=round(cfg.steps * record.expected_batch),
            train_loss=float(loss_sum) / sampled if sampled else math.nan,
            steps=cfg.steps,
            privacy=record.spent(),
        )

    def _detach_from_model(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`weights`, with a clone of any tensor that shares memory with the model.

        A caller passing `model.state_dict()` itself would otherwise see its "given" weights
        trained in place, and a delta of zero.
        """
        own = {t.data_ptr() for t in self.model.state_dict().values() if t.device.type != "meta"}
        return {
            name: t.detach().clone() if t.data_ptr() in own else t for name, t in weights.items()
        }

    def _load(self, weights: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        missing = [name for name in missing if name not in self._aliases]
        if missing or unexpected:
            raise KeyError(
                f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )

    @torch.no_grad()
    def _delta(self, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trained = self.model.state_dict()
        delta = {}
        for name, before in given.items():
            after = trained[name].float()
            delta[name] = (after - before.to(after.device, torch.float32)).cpu()
        return delta
