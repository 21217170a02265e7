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
from collections.abc import Iterable, Iterator, Mapping

from schemas.messages import DeadLetter, MembershipEvent, MetricsReport, RoundEvent
from worldlm.config.hierarchy import Hierarchy
from worldlm.dashboard.entities import ClientView, FederationView, LevelView, Member, RoundStats
from worldlm.dashboard.views import RunView

#: A record's position: (topic, partition, offset). Used to ignore records seen before.
Position = tuple[str, int, int]


class DashboardState(RunView):
    """The live view of one run, folded from its topics and Redis (see the module docstring)."""

    def __init__(self, run_id: str, hierarchy: Hierarchy | None = None) -> None:
        super().__init__(run_id)
        self._seen: set[Position] = set()
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
        fed.unreadable = max(fed.unreadable, v.get("unreadable", 0.0))
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
        # An event's quorum is the round core's (0: not given, e.g. a recording from before
        # events carried it); its arrivals are the members the round held.
        if event.action == "opened":
            if event.round >= fed.round or fed.round_opened_at is None:
                fed.round, fed.round_opened_at, fed.round_open = event.round, ts, True
                fed.arrived, fed.quorum, fed.barrier_closed = event.arrived, event.quorum, False
        elif event.round >= fed.round:
            known = fed.quorum if event.round == fed.round else 0  # from its opening, Redis
            fed.round, fed.round_open = event.round, False
            fed.last_close_reason = event.reason
            fed.arrived, fed.quorum, fed.barrier_closed = event.arrived, event.quorum or known, True
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
