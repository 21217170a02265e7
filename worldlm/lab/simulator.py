"""The simulator: a whole hierarchy in one process, no Kafka, no Redis, deterministic.

A second shell around the same parts the live system runs: each federation is a
:class:`~worldlm.core.federation.FederationCore` (admission, close rule, strategy,
parent exchange), each client a :class:`~worldlm.training.learner.Learner` (the same
workbench and trainer). Messages that the live system sends through Kafka (updates up,
broadcasts down) go through an in-memory FIFO queue instead, and the residual cache is a
dict; the participants cannot tell.

Determinism: every generator is seeded from the config, updates are folded in sender order
by the core, clients of one broadcast train in parallel threads but their updates are queued
in client order, and the clock is simulated (:mod:`worldlm.lab.clock`): every message is
handled at the simulated time it arrives, from the config's links and declared compute times,
never this machine's (a ``sync`` round closes at its quorum; deadlines never fire). Without
``[links]`` and ``[clock]`` every time is 0 and messages are handled first in, first out.
Reports carry the simulated time as ``sim_s``: when a client received the model it evaluated,
when a federation closed its round. The same config therefore gives bit-identical weights and
metrics on every run, and the same weights as a live ``sync`` run with a full quorum
(``tests/test_simulator.py`` proves both). What the simulator cannot reproduce of a live run:
arrival-order effects (a ``sync`` quorum below 1, ``async`` buffers, deadlines) and residual
reads, which in a live run see whatever a linked federation last wrote.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from schemas.messages import Envelope, MetricsReport, RoundLedger
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.federation import Accepted, FederationCore, Offer, Refused
from worldlm.core.results import RunResult
from worldlm.core.steps import Broadcast, OpenRound, Step, Submit
from worldlm.core.stopping import check
from worldlm.lab.clock import Agenda, Clock
from worldlm.strategies.compression import encoded_bytes
from worldlm.training.learner import Learner, LearnerRound
from worldlm.training.workbench import Weights, federation_key, initial_weights


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


@dataclass(frozen=True, eq=False)
class _ParentModel:
    """A parent's broadcast reaching one of its sub-federations."""

    federation: str
    broadcast: _Broadcast


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
        self.cores = federation_cores(hierarchy, "sim")
        self.learners = {c: Learner(hierarchy, c) for c in sorted(hierarchy.clients)}
        self.reports: list[MetricsReport] = []
        self.residuals: dict[str, tuple[int, Weights]] = {}
        #: seconds spent in local training and evaluation (the rest is the simulator's own)
        self.train_s = 0.0
        #: updates refused as too stale (an ``async`` parent that moved on): dropped, as a
        #: live aggregator dead-letters them
        self.stale: list[str] = []
        #: seconds each close took on this machine (reported beside the declared time)
        self.close_s: list[float] = []
        self.clock = Clock(hierarchy.links, hierarchy.run.chunk_kib * 1024)
        self._agenda: Agenda[_Broadcast | _Update | _ParentModel] = Agenda()
        self._busy: dict[str, float] = {}  # client -> simulated time it is free again
        #: (node, "broadcast" | "update" | "submission") -> bytes of one such message
        self.message_bytes: dict[tuple[str, str], int] = {}
        self._ids = itertools.count()

    def run(self) -> RunResult:
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sim-client") as pool:
            for fid, core in self.cores.items():
                core.open_round(0.0)
                self._broadcast(fid, 0.0)
            while self._agenda:
                check(self.should_stop, "simulation")
                message = self._agenda.pop()
                now = self._agenda.now
                if isinstance(message, _Broadcast):
                    self._deliver(message, pool, now)
                elif isinstance(message, _ParentModel):
                    self._take_parent(message.federation, message.broadcast, now)
                else:
                    self._offer(message, now)
        root = self.cores[self.hierarchy.root.id]
        if not root.final:
            raise RuntimeError("the simulation stopped before the root's final round")
        return RunResult(self.reports, time.perf_counter() - started)

    def weights(self, federation: str) -> Weights:
        """A federation's current model."""
        return self.cores[federation].weights

    # -- messages ------------------------------------------------------------------------

    def _broadcast(self, fid: str, at: float) -> None:
        core = self.cores[fid]
        b = _Broadcast(fid, core.weights, core.version, core.round, core.final)
        self._agenda.add(at, b)

    def _size(self, node: str, kind: str, wire: Weights, codecs: dict | None = None) -> int:
        """Bytes of one message of ``kind`` from ``node`` (they depend on names, shapes and
        codecs only, so the first one's count holds for all)."""
        if (node, kind) not in self.message_bytes:
            chunk = self.clock.chunk_bytes
            self.message_bytes[node, kind] = encoded_bytes(wire, codecs, chunk_size=chunk)
        return self.message_bytes[node, kind]

    def _deliver(self, b: _Broadcast, pool: ThreadPoolExecutor, now: float) -> None:
        fed = self.hierarchy.federations[b.federation]
        size = self._size(b.federation, "broadcast", b.weights)
        for child in fed.children:  # sub-federations take it only when waiting for it
            at = now + self.clock.down_s(child, size)
            if at == now:
                self._take_parent(child, b, now)
            else:
                self._agenda.add(at, _ParentModel(child, b))
        clients = sorted(fed.clients)
        started = time.perf_counter()
        rounds = list(pool.map(lambda c: self.learners[c].round(b.weights, final=b.final), clients))
        self.train_s += time.perf_counter() - started
        steps = fed.policy.local_steps
        for cid, done in zip(clients, rounds, strict=True):
            start = max(now + self.clock.down_s(cid, size), self._busy.get(cid, 0.0))
            trained = done.result is not None
            evaluated = done.evaluation is not None
            sent_at = start + self.clock.work_s(
                cid, steps=steps if trained else 0, evaluated=evaluated
            )
            self._busy[cid] = sent_at
            self._client_report(cid, b, done, start)
            if done.result is not None:
                assert done.sent is not None
                offer = Offer(
                    cid,
                    f"{cid}-{next(self._ids)}",
                    done.sent.decoded,  # what a live aggregator decodes off the wire
                    done.result.num_samples,
                    b.version,
                )
                wire = self._size(cid, "update", done.sent.wire, done.sent.codecs)
                self._agenda.add(sent_at + self.clock.up_s(cid, wire), _Update(b.federation, offer))

    def _take_parent(self, fid: str, b: _Broadcast, now: float) -> None:
        core = self.cores[fid]
        if core.wants_parent(b.version):
            self._carry(fid, core.take_parent(b.weights, b.version, b.final), now)

    def _offer(self, message: _Update, now: float) -> None:
        fid, core = message.federation, self.cores[message.federation]
        decision = core.offer(message.offer)
        if isinstance(decision, Refused) and decision.reason == "stale":
            self.stale.append(message.offer.update_id)
            return
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
        started = time.perf_counter()
        closed = core.close(reason, core.residual_entries(cached), members)
        self.close_s.append(time.perf_counter() - started)  # measured, never the clock's
        if closed.residual is not None:
            self.residuals[fid] = (core.round, closed.residual)
        at = now + self.clock.aggregate_s(fid)
        values = {**closed.values, "sim_s": at}
        self._report(fid, "aggregator", closed.round, values, federation=fid, ledger=closed.ledger)
        self._carry(fid, closed.next, at)

    def _carry(self, fid: str, next_steps: tuple[Step, ...], now: float) -> None:
        """Carry out what the core says happens next, on the agenda, from time ``now``."""
        for step in next_steps:
            match step:
                case Submit(submission=s) if s is not None:  # None: never here (no deadline)
                    parent = self.hierarchy.federations[fid].parent
                    assert parent is not None
                    offer = Offer(fid, s.update_id, s.delta, s.samples, s.base_version)
                    size = self._size(fid, "submission", s.wire or s.delta, s.codecs)
                    self._agenda.add(now + self.clock.up_s(fid, size), _Update(parent, offer))
                case Broadcast():
                    self._broadcast(fid, now)
                case OpenRound():
                    self.cores[fid].open_round(0.0)
                case _:  # AwaitParent: the parent's broadcast is delivered from the queue; Done
                    pass

    # -- metrics -------------------------------------------------------------------------

    def _client_report(self, cid: str, b: _Broadcast, done: LearnerRound, at: float) -> None:
        values = {**done.values(b.version, b.final), "sim_s": at}
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


def federation_cores(hierarchy: Hierarchy, prefix: str) -> dict[str, FederationCore]:
    """A round core for every federation of ``hierarchy``, all from the run's initial weights;
    submission ids ``<prefix>-0``, ``<prefix>-1``, ... in the order they are made (ids never
    influence weights)."""
    ids = itertools.count()
    start = initial_weights(hierarchy.run)
    return {
        f.id: FederationCore(
            hierarchy,
            f.id,
            start,
            key=federation_key(hierarchy, f.id),
            new_id=lambda: f"{prefix}-{next(ids)}",
        )
        for f in hierarchy.walk()
    }
