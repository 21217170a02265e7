"""Kafka topic names, per hierarchy level and run-wide, in one place.

Level k is the depth of the aggregator that owns the topic (the root is level 0):
``L{k}.up`` carries updates from children to level-k aggregators and ``L{k}.down`` carries
their broadcasts, both keyed by the aggregator's id so one federation's traffic stays ordered
in one partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,120}$")


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

    def up(self, level: int) -> str:
        """Updates from children to the aggregators at ``level``."""
        return f"{self.base}.L{self._level(level)}.up"

    def down(self, level: int) -> str:
        """Broadcasts from the aggregators at ``level`` to their children."""
        return f"{self.base}.L{self._level(level)}.down"

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

    def levels(self, depth: int) -> list[str]:
        """Every data-plane topic of a hierarchy whose deepest aggregator is at ``depth``."""
        return [name for k in range(depth + 1) for name in (self.up(k), self.down(k))]

    def run_wide(self) -> list[str]:
        return [self.events, self.metrics, self.dead_letter]

    @staticmethod
    def _level(level: int) -> int:
        if level < 0:
            raise ValueError(f"hierarchy level must be >= 0, got {level}")
        return level
