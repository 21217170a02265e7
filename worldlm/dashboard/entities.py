"""What the dashboard shows, entity by entity: a federation, its members and closed rounds, a
client, and one level of the tree. Plain mutable records; :class:`~worldlm.dashboard.views.RunView`
derives every figure and view from them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: How many points a throughput series keeps.
SERIES_POINTS = 600


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
    rejected: float = 0.0  # updates its round core refused or its strategy declined (run total)
    unreadable: float = 0.0  # records it dead-lettered unread (run total)
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
