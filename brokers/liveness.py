"""What a broker watch decides (no I/O): probe outcomes in, changes of state out.

The shell that probes, logs and stops participants is :mod:`brokers.health`; the states:

* ``up``: the last probe was answered;
* ``failing``: probes fail (not for long yet);
* ``lost``: three probes in a row failed, over ``lost_after_s`` at least;
* ``gone``: lost for good (final): a broker that keeps no log once lost, or once it answers
  without a topic it had (it came back empty, restarted on its port); a broker that keeps
  its log once lost for ``wait_s`` more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

#: Probes failing this long (and at least three in a row): the broker is lost.
LOST_AFTER_S = 3.0
#: How long a broker that keeps its log is waited for once lost.
WAIT_S = 120.0


class State(StrEnum):
    UP = "up"
    FAILING = "failing"
    LOST = "lost"
    GONE = "gone"


@dataclass(frozen=True)
class Lost:
    """Probes failed for ``lost_after_s``: a broker that keeps its log is waited for."""


@dataclass(frozen=True)
class Back:
    """A lost broker answers again."""

    outage_s: float


@dataclass(frozen=True)
class Gone:
    """Lost for good: ``unreachable`` (too long, or at all for a memory broker) or
    ``emptied`` (a memory broker answering without topics it had: ``missing``)."""

    reason: str
    outage_s: float
    missing: tuple[str, ...] = ()


Change = Lost | Back | Gone


class HealthCore:
    """What a watch decides from its probes: fed each outcome and the time, returns the
    change of state it makes (None when there is none to report)."""

    def __init__(
        self, *, keeps_log: bool, lost_after_s: float = LOST_AFTER_S, wait_s: float = WAIT_S
    ) -> None:
        self.keeps_log = keeps_log
        self.lost_after_s = lost_after_s
        self.wait_s = wait_s
        self.state = State.UP
        self.failing_since: float | None = None
        self.failures = 0  # probes failed in a row
        #: Every topic seen, with its partition count (checked on a memory broker).
        self.topics: dict[str, int] = {}

    def failed(self, now: float) -> Change | None:
        """A probe got no answer."""
        if self.state is State.GONE:
            return None
        if self.failing_since is None:
            self.failing_since, self.state = now, State.FAILING
        self.failures += 1
        outage = now - self.failing_since
        if self.state is State.FAILING and outage >= self.lost_after_s and self.failures >= 3:
            if not self.keeps_log:
                self.state = State.GONE
                return Gone("unreachable", outage)
            self.state = State.LOST
            return Lost()
        if self.state is State.LOST and outage >= self.lost_after_s + self.wait_s:
            self.state = State.GONE
            return Gone("unreachable", outage)
        return None

    def reached(self, now: float, topics: Mapping[str, int]) -> Change | None:
        """A probe was answered, listing ``topics`` (name: partitions)."""
        if self.state is State.GONE:
            return None
        outage = now - self.failing_since if self.failing_since is not None else 0.0
        if not self.keeps_log:
            missing = tuple(sorted(t for t, n in self.topics.items() if topics.get(t) != n))
            if missing:
                self.state = State.GONE
                return Gone("emptied", outage, missing)
        self.topics.update(topics)
        was, self.state, self.failing_since, self.failures = self.state, State.UP, None, 0
        return Back(outage) if was is State.LOST else None


class BrokerLost(Exception):
    """The broker is gone for good: the work that needs it stopped. Not retriable."""

    retriable = False

    def __init__(self, bootstrap: str, gone: Gone, keeps_log: bool) -> None:
        self.bootstrap, self.gone, self.keeps_log = bootstrap, gone, keeps_log
        super().__init__(self.describe())

    def __reduce__(self) -> tuple[type[BrokerLost], tuple[str, Gone, bool]]:
        return type(self), (self.bootstrap, self.gone, self.keeps_log)  # copies (aiokafka's)

    def describe(self, round: int | None = None) -> str:
        """``Kafka at H:P unreachable (lost at round N ...)``: one line for the operator."""
        at = "lost" if round is None else f"lost at round {round}"
        if self.gone.reason == "emptied":
            at += f"; it came back without {len(self.gone.missing)} of its topics"
        elif self.keeps_log:
            at += f"; not back after {self.gone.outage_s:.0f} s"
        return f"Kafka at {self.bootstrap} unreachable ({at})"
