"""Batches, local training and evaluation: exact deltas, no mutation, determinism, learning."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from worldlm.training.batches import num_windows, sample_batch, sequential_windows
from worldlm.training.corpus import client_split, partitions
from worldlm.training.evaluate import evaluate
from worldlm.training.model import ModelConfig, build_model
from worldlm.training.tokenizer import encode_documents, load_tokenizer
from worldlm.training.trainer import LocalTrainer, TrainConfig

FAST = TrainConfig(steps=3, batch_size=4, seq_len=16, lr=1e-2, seed=0)


def stream(n: int = 2_000, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def given_weights(config: ModelConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build_model(config, seed=seed).state_dict().items()}


# --- batches ----------------------------------------------------------------------------------


def test_sampled_windows_are_contiguous_slices_fixed_by_the_generator() -> None:
    tokens = torch.arange(1_000)
    batch = sample_batch(tokens, 8, 32, torch.Generator().manual_seed(5))
    again = sample_batch(tokens, 8, 32, torch.Generator().manual_seed(5))
    assert batch.shape == (8, 33) and torch.equal(batch, again)
    assert torch.equal(batch - batch[:, :1], torch.arange(33).expand(8, 33))
    assert int(batch.max()) <= 999


def test_evaluation_windows_predict_every_token_once_in_order() -> None:
    tokens = torch.arange(101)
    batches = list(sequential_windows(tokens, seq_len=10, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    targets = torch.cat([b[:, 1:] for b in batches]).flatten()
    assert torch.equal(targets, torch.arange(1, 101))
    assert num_windows(101, 10) == 10
    assert sum(b.shape[0] for b in sequential_windows(tokens, 10, 4, max_batches=1)) == 4


def test_a_stream_shorter_than_one_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="shorter than one window"):
        sample_batch(torch.arange(10), 2, 10, torch.Generator())
    with pytest.raises(ValueError, match="1-D"):
        list(sequential_windows(torch.zeros(4, 40, dtype=torch.long), 8, 2))


# --- trainer ----------------------------------------------------------------------------------


def test_delta_is_exactly_trained_minus_given_and_given_is_untouched(
    micro_config: ModelConfig,
) -> None:
    weights = given_weights(micro_config)
    snapshot = {k: v.clone() for k, v in weights.items()}
    trainer = LocalTrainer(build_model(micro_config, seed=0), FAST)
    result = trainer.train(weights, stream())

    trained = trainer.model.state_dict()
    assert set(result.delta) == set(weights)
    for name, delta in result.delta.items():
        assert delta.dtype == torch.float32 and delta.device.type == "cpu"
        assert torch.equal(delta, trained[name].float() - weights[name].float()), name
        assert torch.equal(weights[name], snapshot[name]), f"given {name} was mutated"
    assert any(d.abs().sum() > 0 for d in result.delta.values())
    assert (result.steps, result.num_samples) == (3, 3 * 4)
    assert math.isfinite(result.train_loss)


def test_training_starts_from_the_given_weights_not_the_models_own(
    micro_config: ModelConfig,
) -> None:
    weights = given_weights(micro_config)
    a = LocalTrainer(build_model(micro_config, seed=0), FAST).train(weights, stream())
    b = LocalTrainer(build_model(micro_config, seed=9), FAST).train(weights, stream())
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert a.train_loss == b.train_loss


def test_same_seed_same_delta_other_seed_other_delta(micro_config: ModelConfig) -> None:
    weights, tokens = given_weights(micro_config), stream()
    a = LocalTrainer(build_model(micro_config), FAST).train(weights, tokens)
    b = LocalTrainer(build_model(micro_config), FAST).train(weights, tokens)
    c = LocalTrainer(build_model(micro_config), replace(FAST, seed=1)).train(weights, tokens)
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert not all(torch.equal(a.delta[k], c.delta[k]) for k in a.delta)


def test_dropout_is_deterministic_given_the_seed(micro_config: ModelConfig) -> None:
    config = replace(micro_config, dropout=0.2)
    weights, tokens = given_weights(config), stream()
    a = LocalTrainer(build_model(config), FAST).train(weights, tokens)
    torch.rand(100)  # moving the global RNG must not change the result
    b = LocalTrainer(build_model(config), FAST).train(weights, tokens)
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)


def test_rounds_draw_new_batches_unless_reseeded(micro_config: ModelConfig) -> None:
    weights, tokens = given_weights(micro_config), stream()
    trainer = LocalTrainer(build_model(micro_config), FAST)
    first = trainer.train(weights, tokens)
    second = trainer.train(weights, tokens)
    replay = trainer.train(weights, tokens, seed=FAST.seed)
    assert not all(torch.equal(first.delta[k], second.delta[k]) for k in first.delta)
    assert all(torch.equal(first.delta[k], replay.delta[k]) for k in first.delta)


def test_optimizer_is_fresh_each_round_unless_persisted(micro_config: ModelConfig) -> None:
    weights, tokens = given_weights(micro_config), stream()
    for persist, same in ((False, True), (True, False)):
        trainer = LocalTrainer(build_model(micro_config), replace(FAST, persist_optimizer=persist))
        first = trainer.train(weights, tokens, seed=0)
        second = trainer.train(weights, tokens, seed=0)  # same weights, same batches
        equal = all(torch.equal(first.delta[k], second.delta[k]) for k in first.delta)
        assert equal is same, f"persist_optimizer={persist}"


def test_passing_the_models_own_state_dict_still_gives_a_true_delta(
    micro_config: ModelConfig,
) -> None:
    trainer = LocalTrainer(build_model(micro_config, seed=0), FAST)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(trainer.model.state_dict(), stream())
    after = trainer.model.state_dict()
    assert all(torch.equal(result.delta[k], after[k] - before[k]) for k in before)
    assert any(d.abs().sum() > 0 for d in result.delta.values())


def test_tied_alias_may_be_left_out_of_the_given_weights(micro_config: ModelConfig) -> None:
    weights = given_weights(micro_config)
    del weights["lm_head.weight"]
    result = LocalTrainer(build_model(micro_config), FAST).train(weights, stream())
    assert set(result.delta) == set(weights)


def test_weights_of_another_shape_are_rejected(micro_config: ModelConfig) -> None:
    weights = given_weights(micro_config)
    del weights["model.norm.weight"]
    with pytest.raises(KeyError, match=r"model\.norm\.weight"):
        LocalTrainer(build_model(micro_config), FAST).train(weights, stream())


def test_windows_longer_than_learned_positions_are_rejected(micro_config: ModelConfig) -> None:
    model = build_model(replace(micro_config, arch="gpt2", max_seq_len=8))
    with pytest.raises(ValueError, match="positions"):
        LocalTrainer(model, FAST)  # seq_len 16 > 8


# --- evaluation -------------------------------------------------------------------------------


def test_evaluate_reports_token_mean_loss_and_restores_the_mode(
    micro_config: ModelConfig,
) -> None:
    model = build_model(micro_config)
    model.train()
    tokens = stream(n=16 * 10 + 1)
    result = evaluate(model, tokens, seq_len=16, batch_size=3)
    assert model.training
    assert result.tokens == 160
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    # An untrained model is close to uniform over the vocabulary.
    assert 0.5 * 256 < result.perplexity < 2 * 256
    capped = evaluate(model, tokens, seq_len=16, batch_size=3, max_batches=2)
    assert capped.tokens == 6 * 16


# --- learning on real text --------------------------------------------------------------------


def test_fifty_local_steps_lower_validation_perplexity_on_a_real_partition() -> None:
    """The tiny preset, the shared tokenizer, client 0 of 4 on the built-in English partition."""
    assert "lang-en" in [p.name for p in partitions()]
    tokenizer = load_tokenizer()
    split = client_split("lang-en", 0, 4, val_fraction=0.1, seed=0)
    train = encode_documents(tokenizer, split.train)
    validation = encode_documents(tokenizer, split.validation)
    model = build_model(ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size), seed=0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = evaluate(model, validation, seq_len=64, batch_size=16)

    config = TrainConfig(steps=50, batch_size=8, seq_len=64, lr=1e-3, seed=0)
    result = LocalTrainer(model, config).train(weights, train)
    after = evaluate(model, validation, seq_len=64, batch_size=16)

    assert before.tokens == after.tokens > 1_000
    # Untrained: about uniform over 4096 ids. After 50 steps: measured ~750; demand < half.
    assert before.perplexity > 2_000
    assert after.perplexity < before.perplexity / 2
    assert result.train_loss < before.loss
