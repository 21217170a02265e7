"""Record-level DP (DP-SGD in a client): per-example clipping bounds each example, Poisson
sampling at q, honest accounting over a client's whole run, determinism, and the config."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from worldlm.config.hierarchy import ConfigError, parse
from worldlm.training.learner import Learner
from worldlm.training.model import ModelConfig, build_model
from worldlm.training.private import (
    RecordDP,
    RecordPrivacy,
    clip_and_sum,
    examples,
    per_example_gradients,
)
from worldlm.training.trainer import LocalTrainer, TrainConfig
from worldlm.training.workbench import initial_weights

SEQ = 16
FAST = TrainConfig(
    steps=3, batch_size=4, seq_len=SEQ, lr=1e-2, privacy=RecordPrivacy(noise_multiplier=1.0)
)


def stream(n: int = 2_000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def flat_norm(grads: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))


def no_noise(clip: float, n: int, batch: int) -> RecordDP:
    return RecordDP(RecordPrivacy(clip_norm=clip, noise_multiplier=0.0), n, batch)


# --- mechanics --------------------------------------------------------------------------------


def test_examples_are_the_non_overlapping_windows_of_the_stream() -> None:
    windows = examples(torch.arange(100), seq_len=9)
    assert windows.shape == (10, 10)
    assert torch.equal(windows.flatten(), torch.arange(100))  # each token in exactly one
    assert examples(torch.arange(105), seq_len=9).shape == (10, 10)  # partial tail dropped


def test_per_example_gradients_sum_to_the_batch_gradient_tied_embedding_included(
    micro_config: ModelConfig,
) -> None:
    model = build_model(micro_config, seed=0)
    batch = examples(stream(), SEQ)[:5]
    grads, losses = per_example_gradients(model, batch)
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
    assert losses.shape == (5,)
    assert "lm_head.weight" not in grads  # tied to the embedding: one gradient covers both
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(grads[name].mean(0), p.grad, atol=1e-6, rtol=1e-4)


def test_one_example_moves_the_clipped_sum_by_at_most_the_clip_norm(
    micro_config: ModelConfig,
) -> None:
    model = build_model(micro_config, seed=0)
    windows = examples(stream(), SEQ)
    grads, _ = per_example_gradients(model, windows[:6])
    raw, norms = clip_and_sum(grads, math.inf)
    clip = float(norms.min()) / 20  # every example, the outlier included, is far above it
    # An outlier: a window of one repeated token, unlike the random stream around it.
    outlier = torch.full((1, SEQ + 1), 7)
    _, outlier_norm = clip_and_sum(per_example_gradients(model, outlier)[0], clip)
    assert float(outlier_norm) > 2 * float(norms.max())  # measured: ~7.2 vs ~2.3-2.7

    record = no_noise(clip, windows.shape[0], batch=6)
    noise = torch.Generator().manual_seed(0)
    without, _ = record.noisy_gradient(model, windows[:6], noise)
    with_it, _ = record.noisy_gradient(model, torch.cat([windows[:6], outlier]), noise)
    # noisy_gradient divides by q·N; scale back to the sums the sensitivity is about.
    scale = record.expected_batch
    change = {n: (with_it[n] - without[n]) * scale for n in with_it}
    assert 0.99 * clip <= flat_norm(change) <= clip * (1 + 1e-4)  # at the bound, not past
    assert flat_norm({n: g * scale for n, g in without.items()}) <= 6 * clip * (1 + 1e-4)
    assert flat_norm(raw) > 6 * clip  # unclipped, the same batch would have moved further
    chunked, _ = record.noisy_gradient(model, torch.cat([windows[:6], outlier]), noise, chunk=2)
    for name, g in chunked.items():  # chunks bound memory, not the result
        torch.testing.assert_close(g, with_it[name], atol=1e-7, rtol=1e-5)


def test_poisson_sampling_includes_each_example_at_rate_q() -> None:
    record = no_noise(1.0, n=500, batch=20)
    assert record.sample_rate == pytest.approx(0.04)
    generator = torch.Generator().manual_seed(0)
    draws = [record.sample(generator) for _ in range(2_000)]
    sizes = torch.tensor([len(d) for d in draws], dtype=torch.float64)
    # Binomial(500, 0.04): mean 20, std of the mean over 2000 draws ≈ 0.1.
    assert abs(float(sizes.mean()) - 20) < 0.5
    assert float(sizes.var()) == pytest.approx(500 * 0.04 * 0.96, rel=0.15)  # not fixed
    hits = torch.bincount(torch.cat(draws), minlength=500).double() / 2_000
    assert abs(float(hits.mean()) - 0.04) < 0.002 and float(hits.min()) > 0
    assert all(torch.equal(d.unique(), d) for d in draws[:50])  # no example twice in a step
    assert no_noise(1.0, n=3, batch=8).sample_rate == 1.0


def test_an_empty_sample_applies_noise_only(micro_config: ModelConfig) -> None:
    model = build_model(micro_config, seed=0)
    record = RecordDP(RecordPrivacy(clip_norm=0.5, noise_multiplier=2.0), 1_000, 10)
    grads, loss = record.noisy_gradient(
        model, torch.zeros(0, SEQ + 1, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    values = torch.cat([g.flatten() for g in grads.values()])
    assert float(loss) == 0.0
    # Pure noise: std σ·C / (q·N) = 2 · 0.5 / 10.
    assert float(values.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(values.std()) == pytest.approx(0.1, rel=0.05)


def test_a_larger_noise_multiplier_spends_less_epsilon() -> None:
    derived = RecordDP(RecordPrivacy(epsilon=4.0, total_steps=50), 1_000, 16)
    noisier = RecordDP(
        replace(derived.privacy, noise_multiplier=2 * derived.noise_multiplier), 1_000, 16
    )
    for record in (derived, noisier):
        for _ in range(50):
            record.accountant.step(
                noise_multiplier=record.noise_multiplier, sample_rate=record.sample_rate
            )
            record.steps += 1
    assert 0.9 * 4.0 <= derived.spent().epsilon <= 4.0
    assert noisier.spent().epsilon < 0.5 * derived.spent().epsilon


def test_deriving_sigma_needs_the_clients_total_steps() -> None:
    with pytest.raises(ValueError, match="total steps"):
        RecordDP(RecordPrivacy(), 100, 4)
    with pytest.raises(ValueError, match="no noise multiplier"):
        RecordDP(RecordPrivacy(epsilon=1e-9, delta=1e-12, total_steps=10_000), 10, 10)


# --- the trainer ------------------------------------------------------------------------------


def test_same_seed_same_private_delta_bit_for_bit_other_seed_other_delta(
    micro_config: ModelConfig,
) -> None:
    weights = build_model(micro_config, seed=1).state_dict()
    tokens = stream()

    def train(config: TrainConfig) -> dict[str, torch.Tensor]:
        return LocalTrainer(build_model(micro_config), config).train(weights, tokens).delta

    a, b, c = train(FAST), train(FAST), train(replace(FAST, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)  # other sample, other noise everywhere


def test_the_private_path_reports_expected_samples_and_spent_epsilon(
    micro_config: ModelConfig,
) -> None:
    trainer = LocalTrainer(build_model(micro_config), FAST)
    weights = build_model(micro_config, seed=1).state_dict()
    first = trainer.train(weights, stream())
    second = trainer.train(weights, stream())
    assert first.privacy is not None and second.privacy is not None
    assert (first.privacy.steps, second.privacy.steps) == (3, 6)  # the accountant carries on
    assert 0 < first.privacy.epsilon < second.privacy.epsilon
    assert first.num_samples == 3 * 4 and math.isfinite(first.train_loss)
    with pytest.raises(ValueError, match="one stream"):
        trainer.train(weights, stream(n=5_000))


# --- the config and a client end to end -------------------------------------------------------


def raw_config(record_dp: dict[str, Any] | None) -> dict[str, Any]:
    """A root with one federation (2 rounds per root round) holding one client."""
    leaf: dict[str, Any] = {"parent": "root", "internal_rounds": 2}
    if record_dp is not None:
        leaf["record_dp"] = record_dp
    return {
        "run": {"id": "rdp", "rounds": 1, "seq_len": 24, "batch_size": 4, "eval_batches": 1},
        "defaults": {"local_steps": 2},
        "federations": {"root": {}, "eu": leaf},
        "clients": {"en-0": {"federation": "eu", "partition": "lang-en"}},
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clip_norm", 0.0, "must be positive"),
        ("epsilon", -1.0, "must be positive"),
        ("delta", 1.0, r"must be in \(0, 1\)"),
        ("noise_multiplier", 0.0, "must be positive, or left out"),
    ],
)
def test_a_bad_record_dp_setting_is_refused_at_load_with_its_place(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^x.toml: federations\.eu\.record_dp\.{field}: "):
        parse(raw_config({field: value}), source="x.toml")
    with pytest.raises(ConfigError, match=message):
        parse(raw_config({field: value}), source="x.toml")


def test_record_dp_is_the_policy_of_a_federations_own_clients() -> None:
    h = parse(raw_config({"epsilon": 3.0, "clip_norm": 0.5}))
    record = h.client_policy("en-0").record_dp
    assert record is not None and (record.epsilon, record.clip_norm) == (3.0, 0.5)
    assert (record.delta, record.noise_multiplier) == (1e-5, None)  # the defaults
    assert h.federations["root"].policy.record_dp is None
    assert h.client_rounds("en-0") == 2  # 1 root round x 2 rounds of eu
    assert parse(raw_config(None)).client_policy("en-0").record_dp is None


def test_a_client_spends_at_most_its_epsilon_over_its_whole_budget() -> None:
    h = parse(raw_config({"epsilon": 2.0}))
    learner = Learner(h, "en-0")
    weights = initial_weights(h.run)
    reports: list[dict[str, float]] = []
    for _ in range(h.client_rounds("en-0")):
        done = learner.round(weights, final=False)
        assert done.result is not None
        weights = {n: w + done.result.delta[n] for n, w in weights.items()}
        reports.append(done.values(version=len(reports), final=False))
    spent = [r["record_epsilon"] for r in reports]
    assert 0 < spent[0] < spent[-1]
    assert 0.9 * 2.0 <= spent[-1] <= 2.0  # the derived sigma spends the budget, no more
    assert reports[0]["record_sigma"] == reports[-1]["record_sigma"] > 0
    assert all(math.isfinite(r["train_loss"]) for r in reports)
    # Given, a larger sigma spends less over the same budget.
    noisier = {"epsilon": 2.0, "noise_multiplier": 2 * reports[0]["record_sigma"]}
    loud = Learner(parse(raw_config(noisier)), "en-0")
    for _ in range(2):
        last = loud.round(initial_weights(h.run), final=False).values(0, False)
    assert last["record_epsilon"] < 0.5 * spent[-1]
