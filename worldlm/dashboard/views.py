"""The dashboard's read model: the figures and JSON views derived from the entities it shows
(``entities.py``). :class:`RunView` holds the state;
:class:`~worldlm.dashboard.state.DashboardState` folds the streams and Redis into it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Any

from worldlm.dashboard.entities import ClientView, FederationView, LevelView

#: A record's position: (topic, partition, offset). Used to ignore records seen before.
Position = tuple[str, int, int]

#: How many recent dead letters the view keeps (counts by reason are kept for all).
RECENT_DEAD_LETTERS = 50
#: The window of the update and byte rates per level, seconds of event time.
RATE_WINDOW_S = 60.0


class RunView:
    """The entities of one run and every figure and view derived from them (read side)."""

    def __init__(self, run_id: str) -> None:
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
        self.has_config = False
        self._dirty_feds: set[str] = set()
        self._dirty_clients: set[str] = set()
        self._dirty_run = False

    # -- the tree -----------------------------------------------------------------------

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
        """The round core's quorum (events, Redis), else the policy's of the live members."""
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
            "unreadable": fed.unreadable,
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
