"""The config's field-by-field checks: each mistake one :class:`ConfigError` naming the file
and the place (``demo.toml: federations.latin.local_steps: must be at least 1``)."""

from __future__ import annotations

import math

import msgspec

from schemas.topics import check_name
from worldlm.config.schema import ConfigError, LoraConfig, Policy, RecordDPConfig, RunConfig
from worldlm.strategies.compression import check_compression


def check(ok: bool, source: str, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {where}: {message}")


def check_id(value: str, source: str, where: str) -> None:
    try:
        check_name("id", value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


def check_run(run: RunConfig, source: str) -> None:
    check(run.heartbeat_s > 0, source, "run.heartbeat_s", "must be positive")
    check(run.partitions >= 1, source, "run.partitions", "must be at least 1")
    check(run.chunk_kib >= 1, source, "run.chunk_kib", "must be at least 1")
    window = run.replay_window_h
    check(window > 0 or window == -1, source, "run.replay_window_h", "must be positive or -1")
    check(run.eval_batches >= 1, source, "run.eval_batches", "must be at least 1")
    check(run.eval_every >= 0, source, "run.eval_every", "must be 0 (final only) or more")
    # Every client evaluates on its validation split, so it cannot be empty.
    check(0 < run.val_fraction < 1, source, "run.val_fraction", "must be in (0, 1)")
    check(
        0 <= run.test_fraction < 1 - run.val_fraction,
        source,
        "run.test_fraction",
        "must be in [0, 1 - val_fraction)",
    )
    check(
        run.test_fraction > 0 or not run.test_each_eval,
        source,
        "run.test_each_eval",
        "needs a held-out split (run.test_fraction > 0)",
    )
    check(math.isfinite(run.lr) and run.lr > 0, source, "run.lr", "must be positive")


def check_record_dp(r: RecordDPConfig, source: str, where: str) -> None:
    for name, value in (("clip_norm", r.clip_norm), ("epsilon", r.epsilon)):
        check(math.isfinite(value) and value > 0, source, f"{where}.{name}", "must be positive")
    check(0 < r.delta < 1, source, f"{where}.delta", "must be in (0, 1)")
    sigma, no_sigma = r.noise_multiplier, "must be positive, or left out to derive it from epsilon"
    check(sigma is None or 0 < sigma < math.inf, source, f"{where}.noise_multiplier", no_sigma)


def check_policy(p: Policy, source: str, where: str) -> None:
    s = p.schedule
    check(0 < s.quorum <= 1, source, f"{where}.schedule.quorum", "must be in (0, 1]")
    check(s.min_quorum >= 1, source, f"{where}.schedule.min_quorum", "must be at least 1")
    check(s.deadline_s > 0, source, f"{where}.schedule.deadline_s", "must be positive")
    check(s.buffer >= 1, source, f"{where}.schedule.buffer", "must be at least 1")
    check(s.staleness_bound >= 0, source, f"{where}.schedule.staleness_bound", "must be >= 0")
    check(p.internal_rounds >= 1, source, f"{where}.internal_rounds", "must be at least 1")
    check(p.local_steps >= 1, source, f"{where}.local_steps", "must be at least 1")
    check(p.attention.tau > 0, source, f"{where}.attention.tau", "must be positive")
    check(0 <= p.attention.eps <= 1, source, f"{where}.attention.eps", "must be in [0, 1]")
    if p.residual is not None:
        check(0 < p.residual.gamma <= 1, source, f"{where}.residual.gamma", "must be in (0, 1]")
    if (problem := check_compression(p.compression)) is not None:
        check(False, source, f"{where}.compression.{problem[0]}", problem[1])
    if p.dp is not None:
        check(p.dp.clip_norm > 0, source, f"{where}.dp.clip_norm", "must be positive")
        check(p.dp.noise_multiplier >= 0, source, f"{where}.dp.noise_multiplier", "must be >= 0")
        check(0 < p.dp.delta < 1, source, f"{where}.dp.delta", "must be in (0, 1)")
        ratio = p.dp.max_noise_ratio
        check(ratio > 0, source, f"{where}.dp.max_noise_ratio", "must be positive")
    if p.record_dp is not None:
        check_record_dp(p.record_dp, source, f"{where}.record_dp")
    if p.lora is not None:
        check_lora(p.lora, source, f"{where}.lora")
    check(
        math.isfinite(p.server_lr) and p.server_lr > 0,
        source,
        f"{where}.server_lr",
        "must be positive",
    )


def check_lora(lora: LoraConfig, source: str, where: str) -> None:
    check(lora.rank >= 1, source, f"{where}.rank", "must be at least 1")
    check(lora.alpha > 0, source, f"{where}.alpha", "must be positive")
    check(bool(lora.targets), source, f"{where}.targets", "name at least one module")
    check(0 <= lora.dropout < 1, source, f"{where}.dropout", "must be in [0, 1)")


def with_adapters(run: RunConfig, policies: dict[str, Policy], source: str) -> RunConfig:
    """``run`` with the adapter set's shape every federation's ``lora`` policy agrees on.

    The shared adapters are averaged up to the root and residual adapters cross federations,
    so rank and targets must be the same everywhere (alpha and dropout may differ).
    """
    check(run.lora is None, source, "run.lora", "LoRA is a federation policy: [defaults.lora]")
    loras = {fid: p.lora for fid, p in policies.items()}
    shapes = {(x.rank, x.targets) if x is not None else None for x in loras.values()}
    if len(shapes) > 1:
        raise ConfigError(
            f"{source}: federations.*.lora: every federation trains the same adapter set "
            f"(rank, targets), or none does; got {sorted(map(str, shapes))}"
        )
    first = next(iter(loras.values()), None)
    return msgspec.structs.replace(run, lora=first) if first is not None else run
