"""One federation's round logic: a pure, synchronous core that every shell drives.

Everything a federation decides lives here and nowhere else: whether an update is admitted
(:meth:`FederationCore.offer`), when a round closes (:meth:`FederationCore.close_reason`),
what closing it produces (:meth:`FederationCore.close`: the strategy, the residual
candidates, the figures), what goes up to the parent (:meth:`FederationCore.submission`:
the backbone only) and what comes back (:meth:`FederationCore.take_parent`), and the
snapshot a checkpoint stores (:meth:`FederationCore.snapshot` / :meth:`restore`).

No ``await``, no Kafka, no Redis, no clock: time arrives as an argument. The live aggregator
(``aggregator.py``) is an I/O shell around it; the simulator (``worldlm/lab/simulator.py``) is
another; a test proves they end at the same weights.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence

import torch

from worldlm.strategies.compression import Compressed, CompressionConfig, Compressor
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.admission_rules import judge
from worldlm.core.exchange import ParentExchange, take_parent
from worldlm.core.rounds import (
    Accepted,
    Closed,
    Decision,
    Duplicate,
    Ledger,
    Offer,
    Pending,
    Refused,
    Snapshot,
    Submission,
    Weights,
    figures,
)
from worldlm.core.steps import (
    Meta,
)
from worldlm.strategies import (
    AggregateResult,
    ResidualEntry,
    RoundContext,
    Strategy,
    Update,
    make_strategy,
)

__all__ = [
    "Accepted",
    "Closed",
    "Decision",
    "Duplicate",
    "FederationCore",
    "Offer",
    "Pending",
    "Refused",
    "Snapshot",
    "Submission",
    "take_parent",
]

#: How many folded update ids the core remembers for deduplication.
SEEN_MEMORY = 10_000


class FederationCore(ParentExchange):
    """One federation's rounds, decided on plain tensors.

    Args:
        hierarchy: the validated config (the federation's policy, members, parent).
        federation: this federation's id.
        weights: the starting model (every participant starts from the same weights).
        key: the names of the key layers K under this federation's policy (the shell knows
            the model; ``worldlm.training.workbench.federation_key``).
        new_id: makes the id of this federation's submissions (the shells pass a uuid maker;
            the ids never influence weights).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        federation: str,
        weights: Mapping[str, torch.Tensor],
        *,
        key: frozenset[str],
        new_id: Callable[[], str],
    ) -> None:
        if federation not in hierarchy.federations:
            raise KeyError(
                f"unknown federation {federation!r}; known: {sorted(hierarchy.federations)}"
            )
        self.hierarchy = hierarchy
        self.fed = hierarchy.federations[federation]
        self.id = federation
        self.policy = self.fed.policy
        self.schedule = self.policy.schedule
        uses_key = self.policy.key != "fedavg"
        #: K: never leaves the federation, never overwritten by the parent.
        self.key: frozenset[str] = key if uses_key else frozenset()
        self.strategy: Strategy = make_strategy(
            self.policy.strategy_policy(seed=hierarchy.run.seed),
            set(self.key) if uses_key else None,
        )
        self.meta = Meta()
        self.weights: Weights = {n: t.clone() for n, t in weights.items()}
        self.base: Weights = {n: t.clone() for n, t in weights.items()}
        self.pending: list[Pending] = []
        self.counters: Counter[str] = Counter()
        #: the open round's decisions by update id, published with its metrics
        self.ledger = Ledger()
        self._seen: set[str] = set()
        self._new_id = new_id
        self._members = frozenset(self.fed.members)
        parent = self.fed.parent
        #: Our side of the edge to the parent: the parent's codec, with error feedback.
        self.compressor = Compressor(
            hierarchy.federations[parent].policy.compression if parent else CompressionConfig()
        )
        self._outgoing: tuple[str, Compressed] | None = None

    # -- admission -----------------------------------------------------------------------

    def offer(self, offer: Offer) -> Decision:
        """Admit ``offer`` into the open round, or say why not (never raises)."""
        decision = self._admit(offer)
        match decision:
            case Duplicate():
                self.counters["updates_duplicate"] += 1
                self.ledger.duplicates.append(offer.update_id)
            case Refused(reason=reason):
                self.counters["rejected"] += 1
                self.counters[f"rejected_{reason}"] += 1
                self.ledger.refused[offer.update_id] = reason
            case Accepted():
                self.counters["updates_accepted"] += 1
                # One update per member per round: a newer one from the same member replaces it.
                replaced = [p.update_id for p in self.pending if p.sender == offer.sender]
                self.ledger.superseded.extend(replaced)
                self.pending = [p for p in self.pending if p.sender != offer.sender]
                self.pending.append(
                    Pending(
                        offer.update_id,
                        offer.sender,
                        offer.samples,
                        offer.base_version,
                        offer.delta,
                    )
                )
                self._seen.add(offer.update_id)
        return decision

    def repeated(self, update_id: str) -> Duplicate:
        """An update the shell's reassembler recognised as delivered before (a republished
        manifest): counted and recorded like a duplicate the core caught itself."""
        self.counters["updates_duplicate"] += 1
        self.ledger.duplicates.append(update_id)
        return Duplicate(update_id)

    def _admit(self, offer: Offer) -> Decision:
        return judge(
            offer,
            run=self.hierarchy.run.id,
            federation=self.id,
            members=self._members,
            version=self.meta.version,
            bound=self.schedule.staleness_bound,
            weights=self.weights,
            seen=self._seen,
        )

    # -- closing -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether a round is open (not waiting for the parent, not finished)."""
        return not (self.meta.awaiting_parent or self.meta.final)

    def open_round(self, now: float) -> None:
        """Start the round's clock; a round opened again (after a restart) keeps its own,
        and a new round gets a new one even when updates are already pending (sent while
        the federation waited for its parent)."""
        if self.meta.clock_round != self.meta.round or self.meta.round_opened == 0:
            self.meta.round_opened = now
            self.meta.clock_round = self.meta.round

    def expected(self, live: int, departed: Collection[str] = ()) -> int:
        """The members a round counts on (its quorum is a fraction of them).

        ``wait_for = "declared"`` (the default): every declared member that has not left
        cleanly (``departed``), heartbeating or not: a member whose process died, or whose
        aggregator is being replaced, is waited for until the deadline, so a kill does not
        change who a round folds. ``"live"``: only the ``live`` members heartbeating now (a
        dead member stops counting once its heartbeat expires).
        """
        if self.schedule.wait_for == "live":
            return live
        return len(self._members - set(departed))

    def quorum(self, members: int) -> int:
        """Updates a ``sync`` round needs: a fraction of the members it counts on
        (:meth:`expected`), at least the minimum."""
        return max(self.schedule.min_quorum, math.ceil(members * self.schedule.quorum - 1e-9))

    def needed(self, members: int) -> int:
        """Updates the open round closes at: the ``async`` buffer, or the ``sync`` quorum."""
        return self.schedule.buffer if self.schedule.mode == "async" else self.quorum(members)

    def close_reason(self, now: float, members: int) -> str | None:
        """Why the open round closes now: ``quorum`` (sync) or ``buffer`` (async) once enough
        arrived; else past ``deadline_s``, whether or not anything arrived, ``deadline`` with
        what is pending or ``empty`` with nothing (silent members must not hang a parent)."""
        if not self.open:
            return None
        if self.pending and self.schedule.mode == "async":
            if len(self.pending) >= self.schedule.buffer:
                return "buffer"
        elif self.pending and len({p.sender for p in self.pending}) >= self.quorum(members):
            return "quorum"
        if now - self.meta.round_opened > self.schedule.deadline_s:
            return "deadline" if self.pending else "empty"
        return None

    def close(self, reason: str, residuals: Sequence[ResidualEntry], members: int) -> Closed:
        """Aggregate the pending updates into a new model version. With nothing pending the
        model stays (no strategy call, residual read or write: momentum and the privacy
        accountant do not move), but the version and round advance as after any close."""
        meta = self.meta
        # Sorted by sender: the fold order, and so the result, does not depend on arrival.
        ordered = sorted(self.pending, key=lambda p: p.sender)
        updates = [
            Update(p.sender, p.delta, p.samples, staleness=meta.version - p.base_version)
            for p in ordered
        ]
        residuals = list(residuals) if self.key and updates else []
        context = RoundContext(
            residuals, sample_rate=min(1.0, len(updates) / max(members, 1)), round=meta.round
        )
        if updates:
            result = self.strategy.aggregate(self.weights, updates, context)
        else:
            result = AggregateResult(self.weights, aggregated=False)
            self.counters["rounds_empty"] += 1
        for rejection in result.rejected:
            self.counters["rejected"] += 1
            self.counters[f"rejected_{rejection.reason}"] += 1
        self.weights = result.weights
        closed_round = meta.round
        meta.version += 1
        meta.round += 1
        meta.rounds_since_submit += 1
        meta.samples += sum(p.samples for p in ordered)
        meta.seen = (meta.seen + [p.update_id for p in ordered])[-SEEN_MEMORY:]
        self._seen = set(meta.seen)
        self.pending = []
        self.counters["rounds_closed"] += 1
        exchange = (
            self.fed.parent is not None and meta.rounds_since_submit >= self.policy.internal_rounds
        )
        meta.awaiting_parent = exchange
        if exchange and not meta.samples:  # nothing folded since the parent's broadcast
            self.counters["submissions_skipped"] += 1
        meta.final = self.fed.parent is None and meta.round >= self.hierarchy.run.rounds
        folded = tuple(p.update_id for p in ordered)
        by_sender = {p.sender: p.update_id for p in ordered}
        declined = tuple(by_sender[r.sender] for r in result.rejected if r.sender in by_sender)
        read = {e.federation: e.round for e in residuals if e.round is not None}
        took = meta.parent_version if self.fed.parent is not None else None
        ledger, self.ledger = self.ledger.seal(folded, declined, read, took), Ledger()
        values = figures(
            members, updates, result, self.counters, len(residuals), meta.version, ledger
        )
        new_key = bool(self.key and updates)  # an empty round has nothing new for the cache
        return Closed(
            round=closed_round,
            reason=reason,
            version=meta.version,
            folded=folded,
            rejected=result.rejected,
            residual={n: self.weights[n] for n in sorted(self.key)} if new_key else None,
            exchange=exchange,
            final=meta.final,
            values=values,
            ledger=ledger,
            next=self.next_steps(),
        )

    def residual_entries(
        self, cached: Mapping[str, tuple[int, Mapping[str, torch.Tensor]]]
    ) -> list[ResidualEntry]:
        """Attention candidates from what the residual cache holds (federation -> round, K)."""
        if not self.key:
            return []
        return [
            ResidualEntry(
                other,
                {n: t for n, t in tensors.items() if n in self.key},
                rounds_stale=max(0, self.meta.round - round_),
                round=round_,
            )
            for other, (round_, tensors) in sorted(cached.items())
        ]

    # -- checkpoints ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A copy of the core's state (the shell writes it to its checkpoint); later rounds
        do not change it."""
        self.meta.pending = [
            {"id": p.update_id, "sender": p.sender, "samples": p.samples, "base": p.base_version}
            for p in self.pending
        ]
        self.meta.counters = dict(self.counters)
        return Snapshot(
            copy.deepcopy(self.meta),
            dict(self.weights),  # tensors are replaced by rounds, never written in place
            dict(self.base),
            copy.deepcopy(self.strategy.state_dict()),
            list(self.pending),
            dict(self.compressor.residual),
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Resume from a snapshot (the inverse of :meth:`snapshot`). Tensors keep the model's
        order, not the file's (by name): a broadcast's bytes, and so its hash, follow it."""
        self.meta = copy.deepcopy(snapshot.meta)
        self.weights = {n: snapshot.weights[n] for n in self.weights}
        self.base = {n: snapshot.base[n] for n in self.weights}
        if snapshot.strategy:
            self.strategy.load_state_dict(snapshot.strategy)
        self.pending = list(snapshot.pending)
        self.compressor.residual = dict(snapshot.feedback)
        self._outgoing = None
        self.counters = Counter(snapshot.meta.counters)
        self.ledger = Ledger()  # decisions since the last checkpoint are re-made on re-reading
        self._seen = set(snapshot.meta.seen) | {p.update_id for p in self.pending}
