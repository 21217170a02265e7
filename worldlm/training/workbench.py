"""A participant's model and data in one place: the run's model, a client's tokens, and the
B/K split — built from the hierarchy config, synchronous, no transport.

Weights travel as *canonical* state dicts: tied aliases (``lm_head.weight`` when it is the
embedding) are left out, so a tied tensor crosses the wire once.
"""

from __future__ import annotations

import functools
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from worldlm.config.hierarchy import Client, Hierarchy, LoraConfig, Policy, RunConfig
from worldlm.strategies.base import Weights
from worldlm.training.adapters import attach_lora, frozen_names
from worldlm.training.corpus import client_split
from worldlm.training.evaluate import EvalResult, evaluate
from worldlm.training.layers import default_key_patterns, split_parameters, tied_aliases
from worldlm.training.model import ModelConfig, build_model, load_pretrained
from worldlm.training.private import RecordPrivacy
from worldlm.training.tokenizer import encode_documents, load_tokenizer
from worldlm.training.trainer import LocalResult, LocalTrainer, TrainConfig


def make_model(run: RunConfig, lora: LoraConfig | None = None) -> torch.nn.Module:
    """The run's model, initialised from ``run.seed`` (or loaded from ``run.init``), with
    LoRA adapters on a frozen base when the run has them (``lora``: a federation's own
    alpha and dropout for the run's adapter shape)."""
    with _BUILDING:
        if run.init:
            model = load_pretrained(run.init)
        else:
            config = ModelConfig.from_preset(
                run.model, vocab_size=load_tokenizer().vocab_size, arch=run.arch
            )
            model = build_model(config, seed=run.seed)
        if run.lora is None:
            return model
        return attach_lora(model, lora or run.lora, seed=run.seed)


# One model is built at a time in a process: transformers' loading patches process-wide
# state (torch.nn.init turned into no-ops) that a model built in another thread would see.
_BUILDING = threading.Lock()


def canonical(model: torch.nn.Module) -> Weights:
    """The model's trainable state dict (every weight, or the adapters on a frozen base)
    without tied aliases, as fresh CPU copies: what travels and is checkpointed."""
    skip = tied_aliases(model).keys() | frozen_names(model)
    return {n: t.detach().clone().cpu() for n, t in model.state_dict().items() if n not in skip}


@functools.lru_cache(maxsize=4)
def _initial(run: RunConfig) -> tuple[tuple[str, torch.Tensor], ...]:
    return tuple(canonical(make_model(run)).items())


def initial_weights(run: RunConfig) -> Weights:
    """Every participant starts from these same weights (same seed, same config)."""
    return {n: t.clone() for n, t in _initial(run)}


@functools.lru_cache(maxsize=16)
def _key_names(run: RunConfig, patterns: tuple[str, ...]) -> frozenset[str]:
    model = make_model(run)
    split = split_parameters(model, patterns or default_key_patterns(model))
    skip = tied_aliases(model).keys() | frozen_names(model)  # under LoRA: K is adapters
    return frozenset(n for n in split.key if n not in skip)


def key_names(run: RunConfig, policy: Policy) -> frozenset[str]:
    """Names of the key layers K under ``policy`` (its patterns, or the default split)."""
    return _key_names(run, tuple(policy.key_layers))


def federation_key(hierarchy: Hierarchy, federation: str) -> frozenset[str]:
    """The key layers K a federation keeps to itself (none under a ``fedavg`` key policy):
    what its round core is built with."""
    policy = hierarchy.federations[federation].policy
    return key_names(hierarchy.run, policy) if policy.key != "fedavg" else frozenset()


def client_seed(run: RunConfig, client_id: str) -> int:
    """A stable per-client seed (batch order), independent of Python's hash salt."""
    return run.seed * 1_000_003 + zlib.crc32(client_id.encode())


@dataclass(frozen=True)
class ClientData:
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor | None = None


def client_data(run: RunConfig, client: Client) -> ClientData:
    """The client's token streams; its validation split is fixed by (partition, shard, seed),
    its training stream capped at ``client.train_tokens``.

    Cached by what the split depends on (the streams are never written to), so the many runs
    of an experiment tokenize each client's text once per seed.
    """
    return _client_data(
        client.partition,
        client.shard,
        client.shards,
        run.val_fraction,
        run.test_fraction,
        run.seed,
        run.corpus,
        client.train_tokens,
    )


@functools.lru_cache(maxsize=64)
def _client_data(
    partition: str,
    shard: int,
    shards: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    corpus: str | None,
    train_tokens: int | None = None,
) -> ClientData:
    split = client_split(
        partition,
        shard,
        shards,
        val_fraction=val_fraction,
        seed=seed,
        root=Path(corpus) if corpus else None,
        test_fraction=test_fraction,
    )
    tokenizer = load_tokenizer()
    train = encode_documents(tokenizer, split.train)
    if train_tokens is not None and train.numel() > train_tokens:
        # The start of the stream: its documents were shuffled by the seed, so a smaller cap
        # holds a prefix of a larger one's text (the data axis of a study is nested).
        train = train[:train_tokens].clone()
    return ClientData(
        train,
        encode_documents(tokenizer, split.validation),
        encode_documents(tokenizer, split.test) if split.test else None,
    )


def record_privacy(policy: Policy, rounds: int | None) -> RecordPrivacy | None:
    """The trainer's record-level DP setting under ``policy`` (None: no record-level DP),
    for a client that trains ``rounds`` local rounds over the whole run."""
    r = policy.record_dp
    if r is None:
        return None
    steps = rounds * policy.local_steps if rounds is not None else None
    return RecordPrivacy(r.epsilon, r.delta, r.clip_norm, r.noise_multiplier, steps)


class Workbench:
    """One client's model, data and trainer.

    ``rounds`` is the client's number of local rounds over the whole run
    (``Hierarchy.client_rounds``): record-level DP derives its noise for that many; without
    it, a policy with ``record_dp`` and no ``noise_multiplier`` cannot train.
    """

    def __init__(
        self, run: RunConfig, client: Client, policy: Policy, *, rounds: int | None = None
    ) -> None:
        self.run = run
        self.data = client_data(run, client)
        self.model = make_model(run, policy.lora)
        self.trainer = LocalTrainer(
            self.model,
            TrainConfig(
                steps=policy.local_steps,
                lr=policy.lr or run.lr,
                batch_size=run.batch_size,
                seq_len=run.seq_len,
                seed=client_seed(run, client.id),
                privacy=record_privacy(policy, rounds),
            ),
        )

    def load(self, weights: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(dict(weights), strict=False)
        skip = tied_aliases(self.model).keys() | frozen_names(self.model)
        missing = [n for n in missing if n not in skip]
        if missing or unexpected:
            raise KeyError(
                f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )

    def evaluate(self, weights: Mapping[str, torch.Tensor], *, test: bool = False) -> EvalResult:
        """Loss and perplexity of ``weights`` on this client's fixed validation split (or its
        held-out test split, when the run has one)."""
        tokens = self.data.test if test else self.data.validation
        if tokens is None:
            raise ValueError("this run has no test split (run.test_fraction = 0)")
        self.load(weights)
        return evaluate(
            self.model,
            tokens,
            seq_len=self.run.seq_len,
            batch_size=self.run.batch_size,
            max_batches=self.run.eval_batches,
        )

    def train(self, weights: Mapping[str, torch.Tensor]) -> LocalResult:
        """H local steps from ``weights``; the delta covers the canonical names."""
        return self.trainer.train(weights, self.data.train)
