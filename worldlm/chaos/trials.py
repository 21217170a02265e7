"""Running one trial within a bound: whatever the system does, the trial ends with a verdict.

The body of a trial says what it is doing (:class:`Stage`); if it has not returned its
:class:`~worldlm.chaos.verdict.Trial` within the bound, it is cancelled (which unwinds its
fleet: every process of the trial is stopped) and the verdict is a hang at that stage. An
error of the campaign's own shell is a failed trial too, never an exception out of the
campaign.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from brokers.embedded import Servers
from worldlm.chaos.configs import TrialConfig, trial_config
from worldlm.chaos.verdict import Trial, failed, hung

log = structlog.get_logger("worldlm.chaos")


class ParticipantExited(Exception):
    """A participant process ended while the trial was waiting on the run it belongs to."""


class Stage:
    """What a trial is doing now (named in the verdict when it hangs there)."""

    def __init__(self) -> None:
        self.now = "starting"

    def __call__(self, what: str) -> None:
        if what != self.now:
            log.info("trial_stage", stage=what)
        self.now = what


Body = Callable[[Stage], Awaitable[Trial]]


async def bounded_trial(scenario: str, index: int, limit_s: float, body: Body) -> Trial:
    """``body``'s verdict, or a hang after ``limit_s``, or a failure if it raised."""
    stage = Stage()
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_s) as bound:
            trial = await body(stage)
    except TimeoutError as exc:
        seconds = time.monotonic() - started
        if bound.expired():
            verdict = hung(scenario, index, limit_s, seconds, stage.now)
        else:
            verdict = failed(scenario, index, seconds, stage.now, exc)
    except ParticipantExited as exc:
        seconds = time.monotonic() - started
        verdict = Trial(scenario, index, False, f"{exc} (at: {stage.now})"[:600], seconds, {})
    except Exception as exc:
        verdict = failed(scenario, index, time.monotonic() - started, stage.now, exc)
    else:
        verdict = replace(trial, seconds=time.monotonic() - started)
    log.info("trial_done", scenario=scenario, index=index, ok=verdict.ok, reason=verdict.reason)
    return verdict


def trial_rng(seed: int, scenario: str, index: int) -> random.Random:
    """A generator per trial: a campaign is repeatable from its seed, trial by trial."""
    return random.Random(f"{seed}:{scenario}:{index}")


@dataclass(frozen=True)
class Setting:
    """What every scenario of a campaign shares: the servers, the base config, where trials
    keep their files, the seed, and the prefix of their run ids."""

    servers: Servers
    raw: Mapping[str, Any]
    workdir: Path
    seed: int = 0
    prefix: str = "chaos"

    def run_id(self, scenario: str, index: int) -> str:
        return f"{self.prefix}-{scenario.replace('_', '-')}-{index}"

    def trial_dir(self, scenario: str, index: int) -> Path:
        return self.workdir / scenario / str(index)

    def config(self, scenario: str, index: int, rounds: int | None = None) -> TrialConfig:
        """The trial's own config: its run id, and ``rounds`` root rounds if given."""
        return trial_config(
            self.raw, self.trial_dir(scenario, index), self.run_id(scenario, index), rounds
        )
