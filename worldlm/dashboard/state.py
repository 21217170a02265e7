"""The dashboard's view model: what the streams and Redis say about a run, folded into one state.

Pure and synchronous: :class:`DashboardState` takes decoded messages (metrics reports,
membership and round events, dead letters) and Redis snapshots (rosters, barriers, staleness)
and keeps the tree, per-federation rounds and barriers, perplexity series, staleness
distribution, throughput per level, consumer lag, rejections and DP budgets. Every ``apply_*``
is idempotent for a record it has seen (keyed by topic, partition and offset), so replaying a
topic from offset 0 after a reconnect changes nothing. :meth:`snapshot` is the whole view as
JSON-ready data; :meth:`take_delta` is what changed since its last call (whole entities, so a
browser can apply deltas by replacement).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import DeadLetter, MembershipEvent, MetricsReport, RoundEvent
from worldlm.config import Hierarchy

#: A record's position: (topic, partition, offset). Used to ignore records seen before.
Position = tuple[str, int, int]

#: How many recent dead letters the view keeps (counts by reason are kept for all).
RECENT_DEAD_LETTERS = 50
#: How many points a throughput series keeps.
SERIES_POINTS = 600
#: The window of the update and byte rates per level, seconds of event time.
RATE_WINDOW_S = 60.0


@dataclass
class Member:
    """A member of a federation as the dashboard last heard of it."""

    status: str  # "live", "left", "expired"
    role: str
    since: float  # event time of the last status change (s since the epoch)

    def view(self) -> dict[str, Any]:
        return {"status": self.status, "role": self.role, "since": self.since}


@dataclass
class RoundStats:
    """One closed round of an aggregator, from its metrics report."""

    accepted: int
    staleness_mean: float
    staleness_max: int


@dataclass
class FederationView:
    """Everything the dashboard shows for one federation."""

    id: str
    parent: str | None = None
    from_config: bool = False
    deadline_s: float | None = None
    quorum_fraction: float | None = None
    min_quorum: int | None = None
    mode: str = ""
    dp_configured: bool = False
    round: int = 0
    round_opened_at: float | None = None
    round_open: bool = False
    last_close_reason: str = ""
    arrived: int = 0
    quorum: int = 0
    barrier_closed: bool = False
    version: int = 0
    lag: float | None = None
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    rejected: float = 0.0
    final: bool = False
    members: dict[str, Member] = field(default_factory=dict)
    #: round -> (accepted, staleness mean, staleness max) from the aggregator's metrics.
    rounds: dict[int, RoundStats] = field(default_factory=dict)
    #: round -> member -> staleness, read from Redis when the round closed (exact, live only).
    staleness_samples: dict[int, dict[str, int]] = field(default_factory=dict)
    #: round -> {metric key containing "epsilon": value}.
    epsilon: dict[int, dict[str, float]] = field(default_factory=dict)
    lag_series: dict[int, float] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)
    #: The lease token of the aggregator replica leading the federation (host:pid:nonce).
    leader: str | None = None


@dataclass
class ClientView:
    id: str
    federation: str | None = None
    from_config: bool = False
    round: int | None = None
    ppl: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None
    train_loss: float | None = None
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    version: int = 0
    final: bool = False


@dataclass
class LevelView:
    """Update throughput and bytes of the aggregators at one level of the tree."""

    updates: int = 0
    #: Per federation: latest cumulative bytes in / out reported by its aggregator.
    bytes_in: dict[str, float] = field(default_factory=dict)
    bytes_out: dict[str, float] = field(default_factory=dict)
    #: (event time, cumulative accepted updates, cumulative bytes in) after each report.
    series: deque[tuple[float, int, float]] = field(
        default_factory=lambda: deque(maxlen=SERIES_POINTS)
    )


class DashboardState:
    """The live view of one run, folded from its topics and Redis (see the module docstring)."""

    def __init__(self, run_id: str, hierarchy: Hierarchy | None = None) -> None:
        self.run_id = run_id
        self.federations: dict[str, FederationView] = {}
        self.clients: dict[str, ClientView] = {}
        self._levels: dict[int, LevelView] = {}
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=RECENT_DEAD_LETTERS)
        self.rejected_by_reason: Counter[tuple[str, str]] = Counter()  # (federation, reason)
        self.counters: Counter[str] = Counter()  # records folded, per kind
        self.seq = 0
        self.started_at = time.time()
        self.last_event_at: float | None = None
        self._seen: set[Position] = set()
        self._dirty_feds: set[str] = set()
        self._dirty_clients: set[str] = set()
        self._dirty_run = False
        self.has_config = hierarchy is not None
        if hierarchy is not None:
            self._load_config(hierarchy)

    # -- the tree -----------------------------------------------------------------------

    def _load_config(self, h: Hierarchy) -> None:
        for fed in h.walk():
            view = self._federation(fed.id)
            schedule = fed.policy.schedule
            view.parent, view.from_config = fed.parent, True
            view.deadline_s = schedule.deadline_s if schedule.mode == "sync" else None
            view.quorum_fraction, view.min_quorum = schedule.quorum, schedule.min_quorum
            view.mode, view.dp_configured = schedule.mode, fed.policy.dp is not None
        for cid, client in h.clients.items():
            view_c = self._client(cid)
            view_c.federation, view_c.from_config = client.federation, True

    def _federation(self, fid: str) -> FederationView:
        view = self.federations.get(fid)
        if view is None:
            view = self.federations[fid] = FederationView(fid)
            if fid in self.clients and self.clients[fid].federation is None:
                del self.clients[fid]  # an aggregator first seen as a bare member
        self._dirty_feds.add(fid)
        return view

    def _client(self, cid: str) -> ClientView:
        view = self.clients.get(cid)
        if view is None:
            view = self.clients[cid] = ClientView(cid)
        self._dirty_clients.add(cid)
        return view

    def _link_member(self, federation: str, member: str, role: str) -> None:
        """Learn the tree from the streams: ``member`` (a client or a sub-federation)."""
        if role == "aggregator":
            child = self._federation(member)
            if child.parent is None and not child.from_config and member != federation:
                child.parent = federation
        else:
            client = self._client(member)
            if client.federation is None:
                client.federation = federation
        self._federation(federation)

    def level(self, fid: str) -> int:
        """Depth of ``fid`` (the root is 0), by its known parents."""
        depth, node, seen = 0, self.federations.get(fid), {fid}
        while node is not None and node.parent is not None and node.parent not in seen:
            seen.add(node.parent)
            depth += 1
            node = self.federations.get(node.parent)
        return depth

    def children(self, fid: str) -> list[str]:
        return sorted(f for f, v in self.federations.items() if v.parent == fid)

    def clients_of(self, fid: str) -> list[str]:
        return sorted(c for c, v in self.clients.items() if v.federation == fid)

    def roots(self) -> list[str]:
        return sorted(f for f, v in self.federations.items() if v.parent is None or v.parent == f)

    # -- folding ------------------------------------------------------------------------

    def _fresh(self, at: Position | None, kind: str) -> bool:
        if at is not None:
            if at in self._seen:
                self.counters["duplicates"] += 1
                return False
            self._seen.add(at)
        self.counters[kind] += 1
        self.seq += 1
        return True

    def apply(self, message: object, at: Position | None = None) -> None:
        """Fold any message the dashboard reads."""
        match message:
            case MetricsReport():
                self.apply_metrics(message, at)
            case MembershipEvent() | RoundEvent():
                self.apply_event(message, at)
            case DeadLetter():
                self.apply_dead_letter(message, at)

    def apply_metrics(self, report: MetricsReport, at: Position | None = None) -> None:
        if not self._fresh(at, "metrics"):
            return
        self._seen_time(report.envelope.timestamp)
        if report.role == "client":
            self._client_metrics(report)
        else:
            self._aggregator_metrics(report)

    def _client_metrics(self, report: MetricsReport) -> None:
        v = report.values
        view = self._client(report.node)
        if view.federation is None:
            view.federation = report.envelope.federation
            self._federation(report.envelope.federation)
        if "val_ppl" in v and math.isfinite(v["val_ppl"]):
            view.ppl[report.round] = v["val_ppl"]
            self._dirty_feds.add(view.federation)
        if view.round is None or report.round >= view.round:
            view.round = report.round
            view.val_loss = v.get("val_loss", view.val_loss)
            view.train_loss = v.get("train_loss", view.train_loss)
            view.version = int(v.get("version", view.version))
        view.bytes_in += v.get("bytes_in", 0.0)
        view.bytes_out += v.get("bytes_out", 0.0)
        view.final = view.final or bool(v.get("final"))

    def _aggregator_metrics(self, report: MetricsReport) -> None:
        v = report.values
        fed = self._federation(report.node)
        r = report.round
        new_round = r not in fed.rounds
        fed.rounds[r] = RoundStats(
            accepted=int(v.get("accepted", 0)),
            staleness_mean=v.get("staleness_mean", 0.0),
            staleness_max=int(v.get("staleness_max", 0)),
        )
        fed.version = max(fed.version, int(v.get("version", 0)))
        fed.bytes_in = max(fed.bytes_in, v.get("bytes_in", 0.0))
        fed.bytes_out = max(fed.bytes_out, v.get("bytes_out", 0.0))
        fed.rejected = max(fed.rejected, v.get("rejected", 0.0))
        if "lag" in v:
            fed.lag = v["lag"]
            fed.lag_series[r] = v["lag"]
        eps = {k: x for k, x in v.items() if "epsilon" in k}
        if eps:
            fed.epsilon[r] = eps
        fed.attention = {k: x for k, x in v.items() if k.startswith("attention/alpha/")} or (
            fed.attention
        )
        level = self._levels.setdefault(self.level(fed.id), LevelView())
        if new_round:
            level.updates += fed.rounds[r].accepted
        level.bytes_in[fed.id] = fed.bytes_in
        level.bytes_out[fed.id] = fed.bytes_out
        level.series.append(
            (report.envelope.timestamp, level.updates, sum(level.bytes_in.values()))
        )
        self._dirty_run = True

    def apply_event(self, event: MembershipEvent | RoundEvent, at: Position | None = None) -> None:
        if not self._fresh(at, "events"):
            return
        ts = event.envelope.timestamp
        self._seen_time(ts)
        if isinstance(event, MembershipEvent):
            if event.action == "heartbeat":
                return
            self._link_member(event.envelope.federation, event.member, event.role)
            status = "live" if event.action == "joined" else event.action
            self._set_member(event.envelope.federation, event.member, status, event.role, ts)
            return
        fed = self._federation(event.envelope.federation)
        if event.action == "opened":
            if event.round >= fed.round or fed.round_opened_at is None:
                fed.round, fed.round_opened_at, fed.round_open = event.round, ts, True
                fed.arrived, fed.quorum, fed.barrier_closed = 0, 0, False
        elif event.round >= fed.round:
            fed.round, fed.round_open = event.round, False
            fed.last_close_reason = event.reason
            fed.arrived, fed.quorum, fed.barrier_closed = event.arrived, event.quorum, True
        fed.version = max(fed.version, event.version)

    def _set_member(self, federation: str, member: str, status: str, role: str, ts: float) -> None:
        fed = self._federation(federation)
        current = fed.members.get(member)
        if current is not None and current.since > ts:
            return  # an older observation than the one we have
        if current is None or current.status != status:
            fed.members[member] = Member(status, role, ts)
        else:
            current.since = max(current.since, ts)

    def apply_dead_letter(self, letter: DeadLetter, at: Position | None = None) -> None:
        if not self._fresh(at, "dead_letters"):
            return
        env = letter.envelope
        self._seen_time(env.timestamp)
        # An aggregator's envelope names its parent; the federation that rejected is the sender.
        federation = env.sender if env.sender in self.federations else env.federation
        self.rejected_by_reason[(federation, letter.reason)] += 1
        self.dead_letters.append(
            {
                "at": env.timestamp,
                "federation": federation,
                "sender": env.sender,
                "reason": letter.reason,
                "detail": letter.detail[:300],
                "source": f"{letter.source_topic}[{letter.source_partition}]"
                f"@{letter.source_offset}",
            }
        )
        self._dirty_run = True

    # -- Redis snapshots ----------------------------------------------------------------

    def apply_roster(
        self,
        federation: str,
        live: Iterable[str],
        expired: Iterable[str],
        roles: Mapping[str, str] | None = None,
        at: float | None = None,
    ) -> None:
        """Fold a Redis roster read at time ``at``: who is live or expired right now."""
        ts = time.time() if at is None else at
        roles = roles or {}
        with self._quiet(federation):
            for member, status in [
                *((m, "live") for m in live),
                *((m, "expired") for m in expired),
            ]:
                role = roles.get(member) or (
                    "aggregator" if member in self.federations else "client"
                )
                self._link_member(federation, member, role)
                self._set_member(federation, member, status, role, ts)

    def apply_barrier(
        self, federation: str, round: int, arrived: int, quorum: int, closed: bool
    ) -> None:
        """Fold a Redis barrier read of ``federation``'s ``round`` (ignored for other rounds)."""
        if federation not in self.federations:
            return
        with self._quiet(federation):
            fed = self._federation(federation)
            if round == fed.round:
                fed.arrived = max(fed.arrived, arrived)
                fed.barrier_closed = closed or fed.barrier_closed
                fed.quorum = quorum or fed.quorum

    def apply_leader(self, federation: str, token: str | None) -> None:
        """Fold a Redis read of which aggregator replica leads ``federation`` (None: none)."""
        if federation not in self.federations:
            return
        with self._quiet(federation):
            self._federation(federation).leader = token

    def apply_staleness(self, federation: str, round: int, samples: Mapping[str, int]) -> None:
        """Fold the staleness of the updates ``federation`` accepted in ``round`` (from Redis)."""
        if samples and self._federation(federation).staleness_samples.get(round) != samples:
            self.federations[federation].staleness_samples[round] = dict(samples)
            self.seq += 1

    @contextlib.contextmanager
    def _quiet(self, federation: str) -> Iterator[None]:
        """Poll results mark a federation dirty only if its view changed."""
        was_dirty = federation in self._dirty_feds
        before = self.federation_view(federation) if federation in self.federations else None
        clients = set(self._dirty_clients)
        yield
        if not was_dirty and before is not None and self.federation_view(federation) == before:
            self._dirty_feds.discard(federation)
            self._dirty_clients = clients
        elif federation in self._dirty_feds:
            self.seq += 1

    def _seen_time(self, ts: float) -> None:
        self.last_event_at = ts if self.last_event_at is None else max(self.last_event_at, ts)

    # -- derived figures ----------------------------------------------------------------

    def federation_ppl(self, fid: str) -> dict[int, float]:
        """Round -> mean validation perplexity of the federation's own clients."""
        by_round: dict[int, list[float]] = {}
        for cid in self.clients_of(fid):
            for r, ppl in self.clients[cid].ppl.items():
                by_round.setdefault(r, []).append(ppl)
        return {r: sum(x) / len(x) for r, x in sorted(by_round.items())}

    def latest_ppl(self, fid: str) -> float | None:
        """Mean of the latest perplexity of every client under ``fid`` (at any depth)."""
        values = [
            c.ppl[max(c.ppl)]
            for cid in self._descendant_clients(fid)
            if (c := self.clients[cid]).ppl
        ]
        return sum(values) / len(values) if values else None

    def _descendant_clients(self, fid: str) -> list[str]:
        out, stack, seen = [], [fid], set()
        while stack:
            f = stack.pop()
            if f in seen:
                continue
            seen.add(f)
            out.extend(self.clients_of(f))
            stack.extend(self.children(f))
        return out

    def staleness_histogram(self, fid: str) -> dict[int, int]:
        """Staleness -> number of accepted updates.

        Exact where the round's per-member staleness was read from Redis when it closed, or
        where the report says every update was fresh (max 0) or there was one update; otherwise
        (a replayed run's stale rounds) the round's updates are spread so that its reported
        mean and max are kept: one at the max, the others as evenly as integers allow.
        """
        fed = self.federations.get(fid)
        hist: Counter[int] = Counter()
        if fed is None:
            return {}
        for r in sorted(set(fed.rounds) | set(fed.staleness_samples)):
            samples, stats = fed.staleness_samples.get(r), fed.rounds.get(r)
            if samples is not None and (stats is None or len(samples) == stats.accepted):
                hist.update(samples.values())
            elif stats is not None and stats.accepted > 0:
                n, top = stats.accepted, stats.staleness_max
                if top == 0 or n == 1:
                    hist[top] += n
                else:
                    hist[top] += 1
                    rest = min(max(0, round(stats.staleness_mean * n) - top), top * (n - 1))
                    q, r = divmod(rest, n - 1)
                    hist[q + 1] += r
                    hist[q] += n - 1 - r
        return dict(sorted(hist.items()))

    def live_members(self, fid: str) -> int:
        fed = self.federations.get(fid)
        return sum(m.status == "live" for m in fed.members.values()) if fed else 0

    def expected_quorum(self, fid: str) -> int | None:
        """Redis's quorum once someone arrived, else what the policy asks of the live members."""
        fed = self.federations[fid]
        if fed.quorum:
            return fed.quorum
        if fed.quorum_fraction is None or fed.min_quorum is None:
            return None
        return max(fed.min_quorum, math.ceil(self.live_members(fid) * fed.quorum_fraction - 1e-9))

    def epsilon_latest(self, fid: str) -> dict[str, float]:
        fed = self.federations.get(fid)
        if fed is None or not fed.epsilon:
            return {}
        return fed.epsilon[max(fed.epsilon)]

    def levels(self) -> dict[int, dict[str, Any]]:
        out = {}
        for k, level in sorted(self._levels.items()):
            rate_updates = rate_bytes = 0.0
            if len(level.series) >= 2:
                end = level.series[-1]
                start = next(p for p in level.series if p[0] >= end[0] - RATE_WINDOW_S)
                span = end[0] - start[0]
                if span > 0:
                    rate_updates = (end[1] - start[1]) / span
                    rate_bytes = (end[2] - start[2]) / span
            out[k] = {
                "updates": level.updates,
                "bytes_in": sum(level.bytes_in.values()),
                "bytes_out": sum(level.bytes_out.values()),
                "updates_per_s": rate_updates,
                "bytes_in_per_s": rate_bytes,
                "series": [[t, u, b] for t, u, b in level.series],
            }
        return out

    # -- views --------------------------------------------------------------------------

    def federation_view(self, fid: str) -> dict[str, Any]:
        fed = self.federations[fid]
        deadline_at = (
            fed.round_opened_at + fed.deadline_s
            if fed.round_open and fed.round_opened_at is not None and fed.deadline_s
            else None
        )
        eps = self.epsilon_latest(fid)
        return {
            "id": fid,
            "parent": fed.parent,
            "level": self.level(fid),
            "children": self.children(fid),
            "clients": self.clients_of(fid),
            "from_config": fed.from_config,
            "mode": fed.mode,
            "round": fed.round,
            "round_open": fed.round_open,
            "round_opened_at": fed.round_opened_at,
            "deadline_s": fed.deadline_s,
            "deadline_at": deadline_at,
            "last_close_reason": fed.last_close_reason,
            "arrived": fed.arrived,
            "quorum": self.expected_quorum(fid),
            "barrier_closed": fed.barrier_closed,
            "version": fed.version,
            "members": {m: v.view() for m, v in sorted(fed.members.items())},
            "live_members": self.live_members(fid),
            "ppl": [[r, p] for r, p in self.federation_ppl(fid).items()],
            "ppl_latest": self.latest_ppl(fid),
            "lag": fed.lag,
            "lag_series": [[r, x] for r, x in sorted(fed.lag_series.items())],
            "bytes_in": fed.bytes_in,
            "bytes_out": fed.bytes_out,
            "rejected": fed.rejected,
            "accepted": sum(s.accepted for s in fed.rounds.values()),
            "staleness": [[s, n] for s, n in self.staleness_histogram(fid).items()],
            "dp": fed.dp_configured or bool(fed.epsilon),
            "epsilon": eps.get("dp/epsilon", max(eps.values(), default=None)),
            "epsilon_series": [
                [r, e.get("dp/epsilon", max(e.values()))] for r, e in sorted(fed.epsilon.items())
            ],
            "attention": fed.attention,
            "leader": fed.leader,
        }

    def client_view(self, cid: str) -> dict[str, Any]:
        c = self.clients[cid]
        fed = self.federations.get(c.federation or "")
        member = fed.members.get(cid) if fed else None
        return {
            "id": cid,
            "federation": c.federation,
            "status": member.status if member else ("done" if c.final else "unknown"),
            "round": c.round,
            "ppl": [[r, p] for r, p in sorted(c.ppl.items())],
            "ppl_latest": c.ppl[max(c.ppl)] if c.ppl else None,
            "val_loss": c.val_loss,
            "train_loss": c.train_loss,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "version": c.version,
            "final": c.final,
        }

    def _run_view(self) -> dict[str, Any]:
        by_reason: Counter[str] = Counter()
        for (_, reason), n in self.rejected_by_reason.items():
            by_reason[reason] += n
        return {
            "levels": {str(k): v for k, v in self.levels().items()},
            "dead_letters": list(self.dead_letters),
            "rejected_by_reason": dict(by_reason.most_common()),
            "rejected_by_federation": [
                [f, r, n] for (f, r), n in sorted(self.rejected_by_reason.items())
            ],
            "roots": self.roots(),
            "counters": dict(self.counters),
            "last_event_at": self.last_event_at,
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole view (JSON-ready). Leaves pending deltas alone: other viewers need them."""
        return {
            "type": "snapshot",
            "run": self.run_id,
            "seq": self.seq,
            "now": time.time(),
            "has_config": self.has_config,
            "federations": {f: self.federation_view(f) for f in sorted(self.federations)},
            "clients": {c: self.client_view(c) for c in sorted(self.clients)},
            **self._run_view(),
        }

    @property
    def dirty(self) -> bool:
        return bool(self._dirty_feds or self._dirty_clients or self._dirty_run)

    def take_delta(self) -> dict[str, Any] | None:
        """The entities changed since the last delta, or None if nothing did.

        Federations and clients are sent whole; a changed tree (a new member, a new parent)
        marks its federations dirty, so the browser can rebuild the tree from the delta.
        """
        if not self.dirty:
            return None
        feds = set(self._dirty_feds)
        for fid in list(feds):  # a federation's parent lists its children: resend it too
            parent = self.federations[fid].parent if fid in self.federations else None
            if parent in self.federations:
                feds.add(parent)
        for cid in self._dirty_clients:  # a client's perplexity changes its federation's mean
            fed = self.clients[cid].federation if cid in self.clients else None
            if fed in self.federations:
                feds.add(fed)
        delta: dict[str, Any] = {
            "type": "delta",
            "run": self.run_id,
            "seq": self.seq,
            "now": time.time(),
            "federations": {f: self.federation_view(f) for f in sorted(feds)},
            "clients": {c: self.client_view(c) for c in sorted(self._dirty_clients)},
        }
        if self._dirty_run or feds:
            delta |= self._run_view()
        self._dirty_feds.clear()
        self._dirty_clients.clear()
        self._dirty_run = False
        return delta
