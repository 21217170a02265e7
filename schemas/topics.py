"""Kafka topic names, per federation and run-wide, in one place.

Every federation owns two topics: ``fed.<id>.up`` carries the updates of its members (clients
and sub-federations) to its aggregator and ``fed.<id>.down`` carries that aggregator's
broadcasts, both keyed by the federation's id so its traffic stays ordered in one partition.
No two federations share a data topic, so a per-topic ACL (``worldlm acl``) keeps a
participant to its own federation's traffic: it writes its parent's ``up`` and reads its
parent's ``down``, and nothing of a sibling's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,120}$")
#: Kafka's limit on a topic name.
MAX_TOPIC = 249


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is usable in topic and key names, else raise ValueError."""
    if not _LEGAL.match(value):
        raise ValueError(
            f"{kind} {value!r} must be 1-120 characters of letters, digits, '.', '_', '-'"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """The topic names of one run."""

    run: str
    prefix: str = "worldlm"

    def __post_init__(self) -> None:
        check_name("run id", self.run)
        check_name("topic prefix", self.prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}.{self.run}"

    def up(self, federation: str) -> str:
        """Updates from the members of ``federation`` to its aggregator."""
        return self._topic(f"fed.{check_name('federation', federation)}.up")

    def down(self, federation: str) -> str:
        """Broadcasts from the aggregator of ``federation`` to its members."""
        return self._topic(f"fed.{check_name('federation', federation)}.down")

    @property
    def events(self) -> str:
        """Membership and round events, run-wide."""
        return f"{self.base}.events"

    @property
    def metrics(self) -> str:
        """Per-round metrics, run-wide: what dashboards read."""
        return f"{self.base}.metrics"

    @property
    def dead_letter(self) -> str:
        """Rejected input, with the reason."""
        return f"{self.base}.dead-letter"

    def data_plane(self, federations: Iterable[str]) -> list[str]:
        """Every update and broadcast topic of ``federations``: each one's up, then down."""
        return [name for f in federations for name in (self.up(f), self.down(f))]

    def run_wide(self) -> list[str]:
        return [self.events, self.metrics, self.dead_letter]

    def _topic(self, tail: str) -> str:
        name = f"{self.base}.{tail}"
        if len(name) > MAX_TOPIC:
            raise ValueError(f"topic name {name[:60]!r}... is longer than {MAX_TOPIC} characters")
        return name
