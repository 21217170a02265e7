"""The network a run is imagined on, for the simulator's clock: ``[links]`` and ``[clock]``.

Every node but the root has one edge, to its parent (a client to its federation, a federation
to its parent federation); ``[links.<id>]`` describes it, keyed by the child's id or by a
shell-style pattern (``"*"``, ``"es-*"``): an exact id wins, then the first pattern that
matches, in file order. A node no entry names is on loopback (no transfer time).

    [links."*"]                 # every edge: inside a region
    bandwidth_mbit = 1000
    latency_ms = 5
    [links.east-asian]          # this federation's edge to the root: across continents
    bandwidth_mbit = 20
    latency_ms = 150
    [links.ja-0]
    compute = 0.5               # this client trains at half this machine's speed

``[clock]`` declares the compute side: seconds per local optimizer step, per evaluation of a
received model and per close of a round, on this machine (a node's ``compute`` divides them).
Declared, not measured, so the same config gives the same simulated times on any machine;
unset, compute is free and the clock counts transfers only.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from worldlm.config.schema import ConfigError


class LinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One edge: bandwidth in Mbit/s each way (None: unlimited), one-way latency in ms, and
    the child's compute speed relative to this machine (2.0: twice as fast)."""

    bandwidth_mbit: float | None = None
    latency_ms: float = 0.0
    compute: float = 1.0


class ClockConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Declared compute times on this machine, in seconds (0: free)."""

    step_s: float = 0.0
    eval_s: float = 0.0
    aggregate_s: float = 0.0


LOOPBACK = LinkConfig()


@dataclass(frozen=True)
class Links:
    """The ``[links]`` entries (pattern -> edge, in file order) and the ``[clock]``."""

    entries: tuple[tuple[str, LinkConfig], ...] = ()
    clock: ClockConfig = field(default_factory=ClockConfig)

    def edge(self, node: str) -> LinkConfig:
        """The edge from ``node`` to its parent."""
        exact = dict(self.entries)
        if node in exact:
            return exact[node]
        for pattern, link in self.entries:
            if fnmatch.fnmatchcase(node, pattern):
                return link
        return LOOPBACK

    @property
    def declared(self) -> bool:
        """Whether the config says anything about the network or compute."""
        return bool(self.entries) or self.clock != ClockConfig()


def parse_links(raw: Mapping[str, Any], nodes: Collection[str], source: str) -> Links:
    """``[links]`` and ``[clock]`` of a config read from TOML, checked against its nodes."""
    table = raw.get("links", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: links: must be a table")
    entries: list[tuple[str, LinkConfig]] = []
    for key, value in table.items():
        where = f"links.{key}"
        link = _convert(value, LinkConfig, where, source)
        pattern = any(c in key for c in "*?[")
        if not pattern and key not in nodes:
            raise ConfigError(f"{source}: {where}: no client or federation has this id")
        if pattern and not any(fnmatch.fnmatchcase(n, key) for n in nodes):
            raise ConfigError(f"{source}: {where}: the pattern matches no client or federation")
        bw = link.bandwidth_mbit
        if bw is not None and not (math.isfinite(bw) and bw > 0):
            raise ConfigError(f"{source}: {where}.bandwidth_mbit: must be positive")
        if not (math.isfinite(link.latency_ms) and link.latency_ms >= 0):
            raise ConfigError(f"{source}: {where}.latency_ms: must be >= 0")
        if not (math.isfinite(link.compute) and link.compute > 0):
            raise ConfigError(f"{source}: {where}.compute: must be positive")
        entries.append((key, link))
    clock = _convert(raw.get("clock", {}), ClockConfig, "clock", source)
    for name in ("step_s", "eval_s", "aggregate_s"):
        value = getattr(clock, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{source}: clock.{name}: must be >= 0")
    return Links(tuple(entries), clock)


def _convert(value: Any, type_: Any, where: str, source: str) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        raise ConfigError(f"{source}: {where}{path.rstrip('`')}: {message}") from None
