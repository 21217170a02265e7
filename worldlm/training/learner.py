"""A client's side of a round, synchronous and transport-free: what every shell's client runs.

On each model its federation broadcasts, a client evaluates it on its fixed validation split
(every ``run.eval_every``-th round it trains, and always the final model) and, unless the
broadcast is final, trains H local steps from it and returns the delta as
its federation's codec sends it (with error feedback: ``worldlm/strategies/compression.py``).
A client with ``keep_key_layers`` (FedPer) trains on its own key layers, never the
federation's. The live client (``client.py``) and the simulator drive this same object, so
they train identically. Training and evaluation are two halves (:meth:`Learner.train`,
:meth:`Learner.evaluate`) so a shell may publish the update before it evaluates: the live
client does, which takes evaluation off the round's critical path; :meth:`Learner.round` runs
both, and either order gives the same numbers (training never changes the received weights,
and evaluation reads no state that training writes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.strategies.compression import Compressed, Compressor
from worldlm.training.evaluate import EvalResult
from worldlm.training.trainer import LocalResult
from worldlm.training.workbench import Workbench, key_names


@dataclass(frozen=True)
class LearnerRound:
    """One round of a client: the evaluation of the received model (None in a round that
    ``run.eval_every`` skips), and training (None when the broadcast was final)."""

    evaluation: EvalResult | None
    result: LocalResult | None
    train_s: float = 0.0
    test: EvalResult | None = None
    #: The update as sent (compressed under the federation's codec); None when final.
    sent: Compressed | None = None
    #: CPU seconds of this thread spent evaluating and training (torch runs one intra-op
    #: thread per process here, so this is the work itself, not time spent waiting for a
    #: core): what benchmarks/scale.py separates from the round's overhead.
    eval_cpu_s: float = 0.0
    train_cpu_s: float = 0.0

    def values(self, version: int, final: bool) -> dict[str, float]:
        """The client's metrics for this round (the fields dashboards and reports read)."""
        values = {"version": float(version), "final": float(final), "eval_cpu_s": self.eval_cpu_s}
        if self.evaluation is not None:
            values |= {"val_loss": self.evaluation.loss, "val_ppl": self.evaluation.perplexity}
        if self.test is not None:
            values |= {"test_loss": self.test.loss, "test_ppl": self.test.perplexity}
        if self.result is not None:
            values |= {
                "train_loss": self.result.train_loss,
                "train_s": self.train_s,
                "train_cpu_s": self.train_cpu_s,
                "samples": float(self.result.num_samples),
            }
        if self.result is not None and self.result.privacy is not None:
            # Record-level DP: what this client has spent so far, at the policy's delta.
            spent = self.result.privacy
            values |= {"record_epsilon": spent.epsilon, "record_sigma": spent.sigma}
        return values


@dataclass(frozen=True)
class Trained:
    """The first half of a round: the weights the client received (what evaluation scores),
    whether this round evaluates, and the training (None when the broadcast was final)."""

    weights: dict[str, torch.Tensor]
    evaluates: bool
    final: bool
    result: LocalResult | None = None
    sent: Compressed | None = None
    train_s: float = 0.0
    train_cpu_s: float = 0.0


class Learner:
    """One client's model, data and trainer, and its own key layers under FedPer."""

    def __init__(self, hierarchy: Hierarchy, client_id: str) -> None:
        if client_id not in hierarchy.clients:
            raise KeyError(f"unknown client {client_id!r}; known: {sorted(hierarchy.clients)}")
        self.client = hierarchy.clients[client_id]
        policy = hierarchy.client_policy(client_id)
        rounds = hierarchy.client_rounds(client_id)
        self.bench = Workbench(hierarchy.run, self.client, policy, rounds=rounds)
        self._key = key_names(hierarchy.run, policy)
        self._own_key: dict[str, torch.Tensor] = {}
        self.compressor = Compressor(policy.compression)
        self._every = hierarchy.run.eval_every
        self._test_each = hierarchy.run.test_each_eval
        self._trained = 0  # rounds trained so far

    def evaluates(self, final: bool) -> bool:
        """Whether this round evaluates on validation text (``run.eval_every``)."""
        return final or (self._every > 0 and self._trained % self._every == 0)

    def model(self, received: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights this client uses: the received model (with its own K under FedPer)."""
        weights = dict(received)
        if self.client.keep_key_layers and self._own_key:
            weights.update(self._own_key)
        return weights

    def round(self, received: Mapping[str, torch.Tensor], *, final: bool) -> LearnerRound:
        """Train from the received model (unless ``final``) and evaluate it."""
        return self.evaluate(self.train(received, final=final))

    def train(self, received: Mapping[str, torch.Tensor], *, final: bool) -> Trained:
        """Train H local steps from the received model, unless ``final``."""
        weights = self.model(received)
        evaluates = self.evaluates(final)
        if final:
            return Trained(weights, evaluates, final)
        cpu, started = time.thread_time(), time.perf_counter()
        result = self.bench.train(weights)
        self._trained += 1
        if self.client.keep_key_layers:
            self._own_key = {n: weights[n] + result.delta[n] for n in self._key}
        sent = self.compressor.send(result.delta)
        train_s, train_cpu_s = time.perf_counter() - started, time.thread_time() - cpu
        return Trained(weights, evaluates, final, result, sent, train_s, train_cpu_s)

    def evaluate(self, trained: Trained) -> LearnerRound:
        """Score the received model (in the rounds ``run.eval_every`` picks); the round."""
        cpu = time.thread_time()
        weights, final = trained.weights, trained.final
        evaluation = self.bench.evaluate(weights) if trained.evaluates else None
        # The held-out split is read on the final model (or with every validation evaluation
        # under ``run.test_each_eval``): it reports, it never steers.
        has_test = self.bench.data.test is not None and (
            final or (evaluation is not None and self._test_each)
        )
        test = self.bench.evaluate(weights, test=True) if has_test else None
        eval_cpu_s = time.thread_time() - cpu
        return LearnerRound(
            evaluation,
            trained.result,
            trained.train_s,
            test,
            trained.sent,
            eval_cpu_s,
            trained.train_cpu_s,
        )
