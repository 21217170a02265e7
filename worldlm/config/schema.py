"""The config file's tables as typed structs: ``[run]``, a federation's policy (``[defaults]``
and ``[federations.<id>]``) and ``[clients.<id>]``. :mod:`worldlm.config.hierarchy` loads,
merges and validates them into a :class:`~worldlm.config.hierarchy.Hierarchy`."""

from __future__ import annotations

from typing import Literal

import msgspec

from worldlm.strategies import DPPolicy, StrategyPolicy
from worldlm.strategies.compression import CompressionConfig


class ConfigError(ValueError):
    """A config mistake, with the file and the place in it."""


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class LoraConfig(_Strict, frozen=True):
    """LoRA adapters (Hugging Face ``peft``) on a frozen base: ``rank`` and ``targets`` (module
    names, e.g. ``q_proj``) fix the adapters' shapes, so every federation must agree on them;
    ``alpha`` (the scale is alpha/rank) and ``dropout`` are each federation's own."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0


class RunConfig(_Strict, frozen=True):
    """Run-wide settings: the model, the data shapes, the number of root rounds."""

    id: str = "worldlm"
    seed: int = 0
    model: str = "tiny"
    arch: Literal["llama", "gpt2"] = "llama"
    #: A pretrained causal LM to start from instead of ``model``: a local Hugging Face
    #: directory (``worldlm pretrain`` makes one), or ``hub:<id>`` where a hub is reachable.
    init: str | None = None
    #: The adapter set's shape, taken by the loader from the federations' ``lora`` policies
    #: (never written under ``[run]``); None: full fine-tuning.
    lora: LoraConfig | None = None
    rounds: int = 4
    seq_len: int = 64
    batch_size: int = 16
    lr: float = 3e-3
    eval_batches: int = 8
    val_fraction: float = 0.1
    #: A held-out test split per client (0: none). Experiments choose learning rates on
    #: validation text and report test text; the demo reports validation.
    test_fraction: float = 0.0
    #: Clients evaluate the received model on validation text every ``eval_every``-th round
    #: they train (1: every round; 0: only the final model); the final model always.
    eval_every: int = 1
    #: Also read the held-out split at every validation evaluation (not only on the final
    #: model), so a study can report each client's test figure at its best validation round
    #: (early stopping). Needs ``test_fraction`` > 0.
    test_each_eval: bool = False
    heartbeat_s: float = 2.0
    chunk_kib: int = 768
    partitions: int = 4
    corpus: str | None = None
    #: "required": every delta is signed by its sender (Ed25519) and verified by its readers;
    #: participants then need a key directory (``--keys``; ``worldlm keys generate``).
    signing: Literal["off", "required"] = "off"
    #: "required": every update is sealed to the aggregator that folds it, every broadcast to
    #: its federation's members (X25519 + ChaCha20-Poly1305, ``schemas.sealing``); needs the
    #: same key directory (``<id>.xkey``/``<id>.xpub``).
    sealing: Literal["off", "required"] = "off"
    #: "acl": every participant authenticates to Redis as its own user (``<run>.<id>``), limited
    #: to its federation's keys; passwords come from the key directory, never from here
    #: (``worldlm acl`` prints the Redis and Kafka ACLs of a deployment).
    isolation: Literal["none", "acl"] = "none"
    #: How long the run's topics keep their records, in hours (the ``retention.ms`` of every
    #: topic the run creates; -1: for ever): the window in which the run can be audited and
    #: replayed from its log. Kafka's own default is 168 (a week).
    replay_window_h: float = 168.0

    @property
    def retention_ms(self) -> int:
        """The replay window as the ``retention.ms`` of the run's topics (-1: for ever)."""
        return -1 if self.replay_window_h == -1 else round(self.replay_window_h * 3_600_000)


class AttentionConfig(_Strict, frozen=True):
    eps: float = 1.0
    tau: float = 1.0
    sign: Literal[1, -1] = 1


class ResidualConfig(_Strict, frozen=True):
    """Residual embeddings: which federations' cached key layers to consider, and γ."""

    gamma: float = 0.9
    links: Literal["siblings", "none"] | list[str] = "siblings"
    #: Sign residual candidates are scored with (None: the attention sign). -1 = similarity.
    sign: Literal[1, -1] | None = None


class DPConfig(_Strict, frozen=True):
    """Member-level DP on the edge from a federation to its members (DP-FedAvg)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    #: Refuse the config when the noise in a round's average is predicted to exceed this many
    #: clipped updates: sigma*sqrt(d)/n above it (worldlm/config/feasibility.py).
    max_noise_ratio: float = 1.0
    #: Load a config the check refuses (a ``dp_forced`` warning says so): a study of the
    #: regime where DP drowns the update, or a test of DP's mechanics.
    force: bool = False


class RecordDPConfig(_Strict, frozen=True):
    """Record-level DP: DP-SGD in each client's local training (worldlm/training/private.py),
    (epsilon, delta) accounted over the client's own examples for its whole run."""

    epsilon: float = 8.0
    delta: float = 1e-5
    #: Per-example L2 clip of the gradient.
    clip_norm: float = 1.0
    #: None: the smallest one that meets the epsilon target over the client's run.
    noise_multiplier: float | None = None


class ScheduleConfig(_Strict, frozen=True):
    """``sync``: close at a quorum of the members or at the deadline. ``async``: fold updates
    as they come, ``buffer`` at a time, discounted by staleness, rejected past the bound.
    ``wait_for``: the members a sync quorum counts: ``declared`` (every declared member that
    has not left cleanly: a crashed one is waited for until the deadline) or ``live`` (those
    heartbeating now)."""

    mode: Literal["sync", "async"] = "sync"
    wait_for: Literal["declared", "live"] = "declared"
    quorum: float = 1.0
    min_quorum: int = 1
    deadline_s: float = 120.0
    buffer: int = 2
    staleness_bound: int = 2
    staleness_exponent: float = 0.5


class Policy(_Strict, frozen=True):
    """One federation's policy."""

    backbone: Literal["fedavg", "fedavgm", "nesterov", "local"] = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    key: Literal["attention", "mean", "fedavg", "local"] = "attention"
    key_layers: list[str] = []
    attention: AttentionConfig = AttentionConfig()
    residual: ResidualConfig | None = ResidualConfig()
    dp: DPConfig | None = None
    #: DP-SGD inside this federation's own clients (their local training).
    record_dp: RecordDPConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig()
    internal_rounds: int = 1
    #: After submitting to the parent: ``wait`` for its model (rounds pause), or ``overlap``:
    #: go on training, and put the parent's model, when it comes, under the progress made
    #: since (a one-step-delayed exchange; docs/worldwide.md).
    exchange: Literal["wait", "overlap"] = "wait"
    local_steps: int = 10
    lr: float | None = None
    #: The codec of the updates this federation's members send it
    #: (worldlm/strategies/compression.py).
    compression: CompressionConfig = CompressionConfig()
    #: Train LoRA adapters on a frozen base instead of every weight (docs/finetune.md).
    lora: LoraConfig | None = None

    def strategy_policy(self, seed: int = 0) -> StrategyPolicy:
        """The aggregation strategy this policy asks for."""
        dp = self.dp
        return StrategyPolicy(
            backbone=self.backbone,
            server_lr=self.server_lr,
            momentum=self.momentum,
            key=self.key,
            attention_eps=self.attention.eps,
            attention_tau=self.attention.tau,
            attention_sign=self.attention.sign,
            residual_gamma=self.residual.gamma if self.residual is not None else None,
            residual_sign=self.residual.sign if self.residual is not None else None,
            staleness_exponent=self.schedule.staleness_exponent,
            staleness_bound=self.schedule.staleness_bound,
            dp=(
                DPPolicy(dp.clip_norm, dp.noise_multiplier, dp.delta, seed=seed)
                if dp is not None
                else None
            ),
        )


class _FederationFile(msgspec.Struct, frozen=True):
    parent: str | None = None


class ClientConfig(_Strict, frozen=True):
    """A client: its federation and its data (a shard of a corpus partition)."""

    federation: str
    partition: str
    shard: int | None = None
    shards: int | None = None
    keep_key_layers: bool = False
    #: A cap on the client's training tokens (the start of its shard's shuffled stream).
    train_tokens: int | None = None
