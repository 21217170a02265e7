"""What-if replay: a finished run's recorded updates re-aggregated through the round core.

A third shell around :class:`~worldlm.core.federation.FederationCore` (after the live
aggregator and the simulator), with no training and no I/O: each federation's rounds are
replayed in the order its aggregator closed them, from the round ledgers its metrics
recorded (``worldlm audit``). A round is offered exactly the updates its ledger names
(folded, superseded, refused, in the order they lay on the topic) and then closed with the
recorded number of live members; a sub-federation's submission is the one its replayed core
makes, and a parent's broadcast is taken by the replayed children, as in the simulator.

With the run's own config every decision is the same, so the replayed models are the
recorded ones bit for bit (:attr:`ReplayedRound.model_hash` is the content hash a broadcast
manifest carries). With another aggregation setting (strategy, staleness bound, DP) the same
updates give other models. The limit: the clients' later updates were trained from the
*recorded* broadcasts, so a replay answers "what would this round's aggregate have been from
the same updates", not what a whole run under the other setting would have done. An update
refused here but folded live can leave a round with nothing to fold: it is skipped (the
model stays; a round that was empty live closes empty here too), and a federation waiting
for a submission that never comes stalls the replay there (:attr:`Replay.stalled`). A close
is fed the residual-cache entries its ledger names (which one a live close read depends on
timing), so runs with residual links replay too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import msgspec
import torch

from schemas.delta import DEFAULT_CHUNK_SIZE, payload_hash
from schemas.messages import RoundLedger
from schemas.tensors import layout
from worldlm.config.hierarchy import DPConfig, Hierarchy
from worldlm.core.federation import Offer
from worldlm.core.steps import AwaitParent, Broadcast, Step, Submit
from worldlm.lab.simulator import federation_cores
from worldlm.training.workbench import Weights


class ReplayError(ValueError):
    """The recording or the other config cannot be replayed (the message says why)."""


@dataclass(frozen=True, eq=False)
class RecordedUpdate:
    """One update as its manifest and payload recorded it (decoded, opened when sealed)."""

    federation: str
    update_id: str
    sender: str
    samples: int
    base_version: int
    round: int
    offset: int  # of its first record on the up topic
    delta: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RecordedRound:
    """One round as its aggregator reported it: the ledger and the live members it saw."""

    federation: str
    round: int
    ledger: RoundLedger
    live: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class ReplayedRound:
    """One replayed round: who was folded, and the model it produced (by content hash)."""

    federation: str
    round: int
    version: int
    folded: tuple[str, ...]  # senders, in fold order
    recorded: tuple[str, ...]  # senders the live round folded
    skipped: bool
    model_hash: str
    values: Mapping[str, float]


#: Called with (federation, version, round, model) for every model a federation broadcasts.
OnBroadcast = Callable[[str, int, int, Weights], None]


def model_hash(weights: Mapping[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """The content hash a broadcast manifest of these weights carries when cut into
    ``chunk_size`` chunks (``[run] chunk_kib``): derived from the chunks' xxh3-64 hashes
    (schema version 2, ``schemas.reassembly.derived_hash``)."""
    _, segments = layout(weights)
    return payload_hash(segments.iter_parts(), chunk_size)


def what_if(
    hierarchy: Hierarchy,
    *,
    backbone: str | None = None,
    staleness_bound: int | None = None,
    dp: DPConfig | bool | None = False,
) -> Hierarchy:
    """``hierarchy`` with every federation's backbone, staleness bound or DP replaced
    (``dp=False`` keeps it, ``None`` removes it)."""
    feds = {}
    for fid, fed in hierarchy.federations.items():
        p = fed.policy
        if backbone is not None:
            p = msgspec.structs.replace(p, backbone=backbone)
        if staleness_bound is not None:
            schedule = msgspec.structs.replace(p.schedule, staleness_bound=staleness_bound)
            p = msgspec.structs.replace(p, schedule=schedule)
        if dp is not False:
            p = msgspec.structs.replace(p, dp=dp if isinstance(dp, DPConfig) else None)
        feds[fid] = replace(fed, policy=p)
    return replace(hierarchy, federations=feds)


def check_replayable(recorded: Hierarchy, other: Hierarchy) -> None:
    """Refuse ``other`` unless it has the recorded tree, clients, rounds and model: only how
    updates are admitted and aggregated may differ."""
    problems = []
    if msgspec.structs.replace(other.run, id=recorded.run.id) != recorded.run:
        problems.append("the [run] table differs (model, seed, rounds...)")
    if set(other.federations) != set(recorded.federations):
        problems.append("other federations")
    else:
        for fid, fed in recorded.federations.items():
            o = other.federations[fid]
            same = (o.parent, o.children, o.clients) == (fed.parent, fed.children, fed.clients)
            if not same or o.policy.internal_rounds != fed.policy.internal_rounds:
                problems.append(f"federation {fid!r}: other members or internal rounds")
    if {c: (x.federation, x.partition) for c, x in other.clients.items()} != {
        c: (x.federation, x.partition) for c, x in recorded.clients.items()
    }:
        problems.append("other clients")
    if problems:
        raise ReplayError("the other config cannot replay this run: " + "; ".join(problems))


class Replay:
    """Replays ``rounds`` of a run recorded under ``recorded`` with the policies of ``hierarchy``.

    Args:
        hierarchy: the config to aggregate with (the run's own, or a :func:`what_if`).
        rounds: every aggregator round the run reported, any order.
        updates: the recorded updates by id (client updates and submissions).
        on_broadcast: sees every model a federation broadcasts (evaluation, hashing).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        rounds: Sequence[RecordedRound],
        updates: Mapping[str, RecordedUpdate],
        *,
        on_broadcast: OnBroadcast | None = None,
        takes: Mapping[str, Mapping[int, int]] | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.cores = federation_cores(hierarchy, "replay")
        self.rounds: dict[str, deque[RecordedRound]] = {f: deque() for f in self.cores}
        for r in sorted(rounds, key=lambda r: (r.federation, r.round)):
            if r.federation not in self.cores:
                raise ReplayError(f"a round of {r.federation!r}, not a federation of the config")
            self.rounds[r.federation].append(r)
        self.updates = dict(updates)
        self.on_broadcast = on_broadcast or (lambda *_: None)
        #: federation -> its broadcast version -> the parent version it took for it (recorded)
        self.takes = {f: dict(t) for f, t in (takes or {}).items()}
        self.replayed: list[ReplayedRound] = []
        self.submissions: dict[tuple[str, int], Offer] = {}
        #: every model each federation broadcast: federation -> version -> (weights, final)
        self.broadcasts: dict[str, dict[int, tuple[Weights, bool]]] = {f: {} for f in self.cores}
        #: every residual-cache entry the replay's closes produced: federation -> round -> K
        self.residuals: dict[str, dict[int, Weights]] = {}
        #: where the replay stopped early: (federation, recorded round, why)
        self.stalled: list[tuple[str, int, str]] = []

    def run(self) -> list[ReplayedRound]:
        for fid, core in self.cores.items():
            self.on_broadcast(fid, core.version, core.round, core.weights)
        progress = True
        while progress:
            progress = False
            for fid in self.cores:
                while self._step(fid):
                    progress = True
        for fid, left in self.rounds.items():
            if left:
                self.stalled.append((fid, left[0].round, self._waiting(fid, left[0])))
        return self.replayed

    def _waiting(self, fid: str, r: RecordedRound) -> str:
        if not self.cores[fid].open:
            wanted = self._wanted(fid)
            return "waits for its parent's broadcast" + (f" v{wanted}" if wanted else "")
        missing = [i for i in self._candidates(r) if self._offer(fid, i) is None]
        return f"waits for {', '.join(sorted(missing) + self._unreplayed(fid, r))}"

    def _candidates(self, r: RecordedRound) -> list[str]:
        ledger = r.ledger
        ids = dict.fromkeys([*ledger.folded, *ledger.superseded, *ledger.refused])
        known = [i for i in ids if i in self.updates]
        unknown = [i for i in ids if i not in self.updates]
        if unknown:
            raise ReplayError(
                f"{r.federation} round {r.round} names updates not on its topic: {unknown[:3]}"
            )
        # In the order they lay on the topic (a newer update of a member replaces an older).
        return sorted(known, key=lambda i: self.updates[i].offset)

    def _offer(self, fid: str, update_id: str) -> Offer | None:
        u = self.updates[update_id]
        if u.sender in self.hierarchy.federations:  # a sub-federation's submission: ours
            return self.submissions.get((u.sender, u.round))
        return Offer(u.sender, u.update_id, u.delta, u.samples, u.base_version)

    def _unreplayed(self, fid: str, r: RecordedRound) -> list[str]:
        """Residual entries round ``r`` of ``fid`` read live that the replay has not made yet."""
        named = r.ledger.residuals or {}
        links = set(self.hierarchy.residual_links(fid))
        return [
            f"{o}'s residual of round {k}"
            for o, k in sorted(named.items())
            if o in links and k not in self.residuals.get(o, {})
        ]

    def _cached(self, fid: str, r: RecordedRound) -> dict[str, tuple[int, Weights]]:
        """The residual-cache entries round ``r`` of ``fid`` reads: those its ledger names
        (the very entries the live close read), among the federations ``fid`` links to here;
        for a ledger recorded before ledgers named them, each linked federation's latest."""
        links = [o for o in self.hierarchy.residual_links(fid) if self.residuals.get(o)]
        named = r.ledger.residuals
        if named is None:
            return {o: max(self.residuals[o].items()) for o in links}
        return {o: (named[o], self.residuals[o][named[o]]) for o in links if o in named}

    def _step(self, fid: str) -> bool:
        core, left = self.cores[fid], self.rounds[fid]
        self._take_recorded(fid)
        if not left or not core.open:
            return False
        r = left[0]
        offers = [self._offer(fid, i) for i in self._candidates(r)]
        if any(o is None for o in offers) or self._unreplayed(fid, r):
            return False
        left.popleft()
        for offer in offers:
            assert offer is not None
            core.offer(offer)
        recorded = tuple(sorted(self.updates[i].sender for i in r.ledger.folded))
        if not core.arrived and recorded:  # (a round empty live closes empty here too)
            self.replayed.append(
                ReplayedRound(fid, r.round, core.version, (), recorded, True, "", {"skipped": 1.0})
            )
            return True
        closed = core.close("replay", core.residual_entries(self._cached(fid, r)), r.live)
        if closed.residual is not None:
            self.residuals.setdefault(fid, {})[core.round] = closed.residual
        by_id = {o.update_id: o.sender for o in offers if o is not None}
        folded = tuple(sorted(by_id[i] for i in closed.folded))
        self.replayed.append(
            ReplayedRound(
                fid,
                r.round,
                closed.version,
                folded,
                recorded,
                False,
                model_hash(core.weights, self.hierarchy.run.chunk_kib * 1024),
                closed.values,
            )
        )
        self._carry(fid, closed.next)
        return True

    def _carry(self, fid: str, next_steps: tuple[Step, ...]) -> None:
        """Carry out what the core says happens next, as the recording says it happened."""
        for step in next_steps:
            match step:
                case Submit(submission=s) if s is not None:  # None: empty rounds, live as here
                    offer = Offer(fid, s.update_id, s.delta, s.samples, s.base_version)
                    self.submissions[(fid, s.round)] = offer
                case AwaitParent():
                    self._take_recorded(fid)  # the broadcast it took may be out already
                case Broadcast():
                    self._broadcast(fid)
                case _:  # OpenRound (rounds are not timed here), Done
                    pass

    def _wanted(self, fid: str) -> int | None:
        """The parent broadcast ``fid`` took live for its next model, where recorded: its next
        broadcast's manifest names it, else its next round's ledger (None: unknown)."""
        took = self.takes.get(fid, {}).get(self.cores[fid].version + 1)
        if took is not None:
            return took
        left = self.rounds[fid]
        return left[0].ledger.parent_version if left else None

    def _take_recorded(self, fid: str) -> None:
        """Take the parent broadcast ``fid`` took live, once the replay has made it. (Live, a
        federation that has submitted takes the newest parent broadcast it finds, which may
        predate its own submission's fold: a late joiner, a restart.)"""
        core, wanted = self.cores[fid], self._wanted(fid)
        parent = self.hierarchy.federations[fid].parent
        if parent is None or wanted is None:
            return
        if core.wants_parent(wanted) and wanted in self.broadcasts[parent]:
            weights, final = self.broadcasts[parent][wanted]
            self._carry(fid, core.take_parent(weights, wanted, final))

    def _broadcast(self, fid: str) -> None:
        core = self.cores[fid]
        self.on_broadcast(fid, core.version, core.round, core.weights)
        children = self.hierarchy.federations[fid].children
        if children:  # kept for a child that takes it later (cores never change tensors in place)
            kept = self.broadcasts[fid]
            kept[core.version] = (dict(core.weights), core.final)
            taken = min(self.cores[c].parent_version for c in children)
            for version in [v for v in kept if v <= taken]:  # no child takes these any more
                del kept[version]
        for child in children:
            sub, wanted = self.cores[child], self._wanted(child)
            if wanted is not None and wanted != core.version:
                continue  # the recording says the child took another broadcast
            if sub.wants_parent(core.version):
                self._carry(child, sub.take_parent(core.weights, core.version, core.final))
