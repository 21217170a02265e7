"""The simulator: a whole hierarchy in one process, no Kafka, no Redis, deterministic.

A second shell around the same parts the live system runs: each federation is a
:class:`~worldlm.core.federation.FederationCore` (admission, close rule, strategy,
parent exchange), each client a :class:`~worldlm.training.learner.Learner` (the same
workbench and trainer). Messages that the live system sends through Kafka (updates up,
broadcasts down) go through an in-memory FIFO queue instead, and the residual cache is a
dict; the participants cannot tell.

Determinism: every generator is seeded from the config, updates are folded in sender order
by the core, clients of one broadcast train in parallel threads but their updates are queued
in client order, and the clock is logical (a ``sync`` round closes at its quorum; deadlines
never fire, since nobody is slow). The same config therefore gives bit-identical weights and
metrics on every run, and the same weights as a live ``sync`` run with a full quorum
(``tests/test_simulator.py`` proves both). What the simulator cannot reproduce of a live run:
arrival-order effects (a ``sync`` quorum below 1, ``async`` buffers, deadlines) and residual
reads, which in a live run see whatever a linked federation last wrote.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from schemas.messages import Envelope, MetricsReport, RoundLedger
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.federation import Accepted, FederationCore, Offer, Refused
from worldlm.training.learner import Learner, LearnerRound
from worldlm.core.results import RunResult
from worldlm.core.steps import Broadcast, OpenRound, Step, Submit
from worldlm.training.workbench import Weights, federation_key, initial_weights


class SimulationStopped(Exception):
    """The simulation was asked to stop (``should_stop``) before the root's final round."""


@dataclass(frozen=True, eq=False)
class _Broadcast:
    federation: str
    weights: Weights
    version: int
    round: int
    final: bool


@dataclass(frozen=True, eq=False)
class _Update:
    federation: str
    offer: Offer


class Simulation:
    """Runs ``hierarchy`` to the root's final broadcast; :meth:`run` returns what it reported.

    Args:
        hierarchy: the validated config.
        on_report: called with every metrics report, in order (e.g. a progress display).
        workers: clients trained at once (threads; torch releases the GIL in its kernels).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        on_report: Callable[[MetricsReport], None] | None = None,
        workers: int = 2,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.should_stop = should_stop
        self.on_report = on_report
        self.workers = max(1, workers)
        ids = itertools.count()
        start = initial_weights(hierarchy.run)
        self.cores = {
            f.id: FederationCore(
                hierarchy,
                f.id,
                start,
                key=federation_key(hierarchy, f.id),
                new_id=lambda: f"sim-{next(ids)}",
            )
            for f in hierarchy.walk()
        }
        self.learners = {c: Learner(hierarchy, c) for c in sorted(hierarchy.clients)}
        self.reports: list[MetricsReport] = []
        self.residuals: dict[str, tuple[int, Weights]] = {}
        #: seconds spent in local training and evaluation (the rest is the simulator's own)
        self.train_s = 0.0
        self._queue: deque[_Broadcast | _Update] = deque()
        self._ids = itertools.count()

    def run(self) -> RunResult:
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sim-client") as pool:
            for fid, core in self.cores.items():
                core.open_round(0.0)
                self._broadcast(fid)
            while self._queue:
                if self.should_stop is not None and self.should_stop():
                    raise SimulationStopped("stopped on request")
                message = self._queue.popleft()
                if isinstance(message, _Broadcast):
                    self._deliver(message, pool)
                else:
                    self._offer(message)
        root = self.cores[self.hierarchy.root.id]
        if not root.meta.final:
            raise RuntimeError("the simulation stopped before the root's final round")
        return RunResult(self.reports, time.perf_counter() - started)

    def weights(self, federation: str) -> Weights:
        """A federation's current model."""
        return self.cores[federation].weights

    # -- messages ------------------------------------------------------------------------

    def _broadcast(self, fid: str) -> None:
        meta = self.cores[fid].meta
        self._queue.append(
            _Broadcast(fid, self.cores[fid].weights, meta.version, meta.round, meta.final)
        )

    def _deliver(self, b: _Broadcast, pool: ThreadPoolExecutor) -> None:
        fed = self.hierarchy.federations[b.federation]
        for child in fed.children:  # sub-federations take it only when waiting for it
            core = self.cores[child]
            if core.meta.awaiting_parent and b.version > core.meta.parent_version:
                self._carry(child, core.take_parent(b.weights, b.version, b.final))
        clients = sorted(fed.clients)
        started = time.perf_counter()
        rounds = list(pool.map(lambda c: self.learners[c].round(b.weights, final=b.final), clients))
        self.train_s += time.perf_counter() - started
        for cid, done in zip(clients, rounds, strict=True):
            self._client_report(cid, b, done)
            if done.result is not None:
                assert done.sent is not None
                offer = Offer(
                    cid,
                    f"{cid}-{next(self._ids)}",
                    done.sent.decoded,  # what a live aggregator decodes off the wire
                    done.result.num_samples,
                    b.version,
                )
                self._queue.append(_Update(b.federation, offer))

    def _offer(self, message: _Update) -> None:
        fid, core = message.federation, self.cores[message.federation]
        decision = core.offer(message.offer)
        if isinstance(decision, Refused):
            raise RuntimeError(f"{fid} refused {message.offer.sender}: {decision.detail}")
        if not isinstance(decision, Accepted):
            return
        members = core.expected(len(self.hierarchy.federations[fid].members))  # all alive
        reason = core.close_reason(0.0, members)
        if reason is None:
            return
        cached = {
            other: self.residuals[other]
            for other in self.hierarchy.residual_links(fid)
            if other in self.residuals
        }
        closed = core.close(reason, core.residual_entries(cached), members)
        if closed.residual is not None:
            self.residuals[fid] = (core.meta.round, closed.residual)
        self._report(
            fid, "aggregator", closed.round, closed.values, federation=fid, ledger=closed.ledger
        )
        self._carry(fid, closed.next)

    def _carry(self, fid: str, next_steps: tuple[Step, ...]) -> None:
        """Carry out what the core says happens next, on the in-memory queue."""
        for step in next_steps:
            match step:
                case Submit(submission=s) if s is not None:  # None: never here (no deadline)
                    parent = self.hierarchy.federations[fid].parent
                    assert parent is not None
                    offer = Offer(fid, s.update_id, s.delta, s.samples, s.base_version)
                    self._queue.append(_Update(parent, offer))
                case Broadcast():
                    self._broadcast(fid)
                case OpenRound():
                    self.cores[fid].open_round(0.0)
                case _:  # AwaitParent: the parent's broadcast is delivered from the queue; Done
                    pass

    # -- metrics -------------------------------------------------------------------------

    def _client_report(self, cid: str, b: _Broadcast, done: LearnerRound) -> None:
        values = done.values(b.version, b.final)
        if done.sent is not None:
            values["bytes_out"] = float(done.sent.nbytes)
        self._report(cid, "client", b.round, values, federation=b.federation)

    def _report(
        self,
        node: str,
        role: str,
        round: int,
        values: dict[str, float],
        *,
        federation: str,
        ledger: RoundLedger | None = None,
    ) -> None:
        report = MetricsReport(
            envelope=Envelope(
                run=self.hierarchy.run.id, sender=node, federation=federation, timestamp=0.0
            ),
            round=round,
            node=node,
            role=role,  # type: ignore[arg-type]
            values=values,
            ledger=ledger,
        )
        self.reports.append(report)
        if self.on_report is not None:
            self.on_report(report)


def simulate(
    hierarchy: Hierarchy,
    *,
    on_report: Callable[[MetricsReport], None] | None = None,
    workers: int = 2,
) -> tuple[RunResult, Simulation]:
    """Run ``hierarchy`` on the simulator; the result has the same form as a live run's."""
    simulation = Simulation(hierarchy, on_report=on_report, workers=workers)
    return simulation.run(), simulation
