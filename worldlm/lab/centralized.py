"""The centralized baseline: one model trained on the union of the clients' training text.

What federated training is measured against from above: no privacy boundary at all. The
union of every client's training stream is one stream; the model trains on it for the same
token budget in total as the federation (its clients' rounds x local steps x batch, summed
over clients), with the same trainer, and is evaluated on every client's own validation (and
test) text after each "round" — the training of one round of every client — so its curves
line up with a federated method's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.lab.methods import uniform_budget
from worldlm.training.learner import Learner
from worldlm.training.workbench import ClientData, Workbench, initial_weights

Curves = dict[str, list[tuple[int, float]]]


def train_centralized(
    h: Hierarchy, should_stop: Callable[[], bool] | None = None
) -> tuple[Curves, Curves, float]:
    """(validation curves, test curves, seconds of training and evaluation) per client."""
    rounds = uniform_budget(h)
    clients = sorted(h.clients)
    learners = {c: Learner(h, c) for c in clients}
    central = Workbench(h.run, h.clients[clients[0]], h.client_policy(clients[0]))
    data = [learners[c].bench.data for c in clients]
    central.data = ClientData(
        train=torch.cat([d.train for d in data]), validation=data[0].validation
    )
    weights = initial_weights(h.run)
    val: Curves = {c: [] for c in clients}
    test: Curves = {c: [] for c in clients}
    started = time.perf_counter()
    for rnd in range(rounds + 1):
        for c in clients:
            bench = learners[c].bench
            val[c].append((rnd, bench.evaluate(weights).perplexity))
            # Held out: the final model only, unless the run asks for it at every evaluation.
            if (rnd == rounds or h.run.test_each_eval) and bench.data.test is not None:
                test[c].append((rnd, bench.evaluate(weights, test=True).perplexity))
        if rnd == rounds:
            break
        for _ in clients:  # as many local rounds as the federation's clients ran together
            if should_stop is not None and should_stop():
                from worldlm.lab.simulator import SimulationStopped

                raise SimulationStopped("stopped on request")
            delta = central.train(weights).delta
            weights = {n: w + delta[n] if w.is_floating_point() else w for n, w in weights.items()}
    return val, test, time.perf_counter() - started
