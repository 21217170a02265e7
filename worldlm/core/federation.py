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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from worldlm.config.hierarchy import Hierarchy
from worldlm.core.admission_rules import judge
from worldlm.core.closing import CloseRules
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
    Weights,
    figures,
)
from worldlm.core.steps import Meta, Submission
from worldlm.strategies import (
    AggregateResult,
    ResidualEntry,
    RoundContext,
    Strategy,
    Update,
    make_strategy,
)
from worldlm.strategies.compression import Compressed, CompressionConfig, Compressor

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


class FederationCore(ParentExchange, CloseRules):
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

    # -- what the shells read and record ---------------------------------------------------

    @property
    def round(self) -> int:
        """The open (or next) round."""
        return self.meta.round

    @property
    def version(self) -> int:
        """The model's version: one more per close."""
        return self.meta.version

    @property
    def final(self) -> bool:
        """The run's final model is out (the root's last round closed, or its broadcast taken)."""
        return self.meta.final

    @property
    def parent_version(self) -> int:
        """The parent's model this federation last took (0: none yet)."""
        return self.meta.parent_version

    @property
    def arrived(self) -> tuple[str, ...]:
        """The senders of the updates pending in the open round, in arrival order."""
        return tuple(p.sender for p in self.pending)

    def wants_parent(self, version: int) -> bool:
        """Whether the parent's model at ``version`` is one this federation waits for."""
        waiting = self.meta.awaiting_parent or self.meta.in_flight
        return waiting and version > self.meta.parent_version

    def offset(self, source: str) -> int:
        """The next offset to read of ``source`` (a shell's "topic:partition")."""
        return self.meta.offsets.get(source, 0)

    def read_to(self, source: str, offset: int) -> None:
        """What the shell has read of ``source`` (saved with the next snapshot)."""
        self.meta.offsets[source] = offset

    def hold_notice(self, notice: Mapping[str, Any]) -> None:
        """A closed round's announcement, saved with the round until the shell has made it
        (``{}`` once made): a restart in between reads it back instead of announcing twice."""
        self.meta.unreported = dict(notice)

    def keep_revocations(self, chain: Mapping[str, Any]) -> None:
        """The revocation chain the shell verified, saved with the core: a restart never
        un-revokes."""
        self.meta.revocations = dict(chain)

    @property
    def unreported(self) -> dict[str, Any]:
        """A closed round saved but not announced before a restart ({} when none)."""
        return dict(self.meta.unreported)

    # -- closing -------------------------------------------------------------------------

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
            next=self.after_close(),
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
