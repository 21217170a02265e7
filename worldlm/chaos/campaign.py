"""A fault campaign: the chosen scenarios one after another, on one pair of servers.

Every scenario is bounded in trials and each trial in time, so a campaign always ends with
its :class:`~worldlm.chaos.verdict.Campaign` table, whatever the system under test does.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.embedded import Servers, embedded_servers
from worldlm.chaos import (
    bad_input,
    broker_loss,
    churn,
    kill,
    levels,
    restarts,
    revocation,
    silent,
)
from worldlm.chaos.trials import Setting
from worldlm.chaos.verdict import Campaign, ScenarioResult

SCENARIOS = (
    "aggregator_kill",
    "client_churn",
    "bad_input",
    "redis_restart",
    "broker_restart",
    # issue 19's outside probes
    "forged_revocation",
    "broker_loss",
    "silent_federation",
    # issue 19: a kill at every level ends at the uninterrupted run's weights
    "kill_every_level",
)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (the issue's campaign by default; tests pass small ones)."""

    kill_trials: int = 20
    churn_rounds: int = 5
    churn_trials: int = 1
    bad_records: int = 10_000
    restart_trials: int = 1
    revocation_kinds: tuple[revocation.Kind, ...] = revocation.KINDS
    broker_loss_kinds: tuple[broker_loss.Kind, ...] = broker_loss.KINDS
    silent_trials: int = 1
    silent_rounds: int = silent.ROUNDS
    levels_trials: int = 10
    #: the bound of one trial, per scenario family (seconds)
    kill_limit_s: float = 180.0
    churn_limit_s: float = 420.0
    bad_input_limit_s: float = 420.0
    restart_limit_s: float = 420.0
    revocation_limit_s: float = 420.0
    broker_loss_limit_s: float = 420.0
    silent_limit_s: float = 420.0
    levels_limit_s: float = 300.0


async def scenario(name: str, setting: Setting, sizes: Sizes) -> ScenarioResult:
    """Run one scenario by name."""
    match name:
        case "aggregator_kill":
            return await kill.run(setting, sizes.kill_trials, limit_s=sizes.kill_limit_s)
        case "client_churn":
            return await churn.run(
                setting, sizes.churn_rounds, sizes.churn_trials, limit_s=sizes.churn_limit_s
            )
        case "bad_input":
            return await bad_input.run(setting, sizes.bad_records, limit_s=sizes.bad_input_limit_s)
        case "redis_restart" | "broker_restart":
            server: restarts.Server = "redis" if name == "redis_restart" else "broker"
            return await restarts.run(
                setting, server, sizes.restart_trials, limit_s=sizes.restart_limit_s
            )
        case "forged_revocation":
            return await revocation.run(
                setting, sizes.revocation_kinds, limit_s=sizes.revocation_limit_s
            )
        case "broker_loss":
            return await broker_loss.run(
                setting, sizes.broker_loss_kinds, limit_s=sizes.broker_loss_limit_s
            )
        case "silent_federation":
            return await silent.run(
                setting,
                sizes.silent_trials,
                rounds=sizes.silent_rounds,
                limit_s=sizes.silent_limit_s,
            )
        case "kill_every_level":
            return await levels.run(setting, sizes.levels_trials, limit_s=sizes.levels_limit_s)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


@contextlib.asynccontextmanager
async def _servers(kafka: str | None, redis: str | None) -> AsyncIterator[Servers]:
    if kafka and redis:
        yield Servers(kafka, redis)
        return
    async with embedded_servers() as servers:
        yield servers


async def run_campaign(
    raw: Mapping[str, Any],
    workdir: Path,
    *,
    scenarios: Sequence[str] = SCENARIOS,
    sizes: Sizes = Sizes(),
    seed: int = 0,
    kafka: str | None = None,
    redis: str | None = None,
    on_scenario: Callable[[ScenarioResult], None] | None = None,
) -> Campaign:
    """Run ``scenarios`` on the given servers (embedded ones when not given); every trial
    keeps its config and participant logs under ``workdir``."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    campaign = Campaign(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    async with _servers(kafka, redis) as servers:
        setting = Setting(servers, raw, workdir, seed, f"chaos-{uuid.uuid4().hex[:6]}")
        for name in scenarios:
            result = await scenario(name, setting, sizes)
            campaign.scenarios.append(result)
            if on_scenario is not None:
                on_scenario(result)
    return campaign
