"""A kill at every level changes nothing: the killed run ends at the uninterrupted run's weights.

Each trial is a fresh run of ``worldlm/config/shipped/chaos-levels.toml`` (root -> europe ->
{latin, slavic} -> clients: three levels of aggregators, sync, every declared member, no
residual links): every aggregator is its own ``worldlm aggregator`` process, the clients
are tasks of the campaign's process. One aggregator of each level (a leaf federation drawn
at random, europe, the root) is SIGKILLed in turn, each at a random moment of a random round
after it opened, and started again after a random pause under a second on its checkpoint
directory. Judged from what the run left:

- every federation's final model equals the simulator's bit for bit (the uninterrupted
  run's: a live run equals the simulator, ``tests/worldlm/lab/test_simulator.py``);
- ``worldlm audit``: nothing lost, folded twice, reported twice, or otherwise unaccounted.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from worldlm.chaos.configs import read_raw, trial_config
from worldlm.chaos.fleet import Fleet, Members
from worldlm.chaos.trials import Setting, Stage, bounded_trial, trial_rng
from worldlm.chaos.uninterrupted import differing, not_comparable
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row, total
from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.record.recording import audit_run
from worldlm.chaos.watch import RunWatch

SCENARIO = "kill_every_level"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "chaos-levels.toml"
#: Root rounds per trial; each kill lands in one of the first ``ROUNDS - 1`` of its target.
ROUNDS = 3
#: The window after a round opened in which a kill lands.
WINDOW_S = 1.5


@dataclass(frozen=True)
class LevelsObservation:
    kills: tuple[tuple[str, int, float], ...]  # (target, round, seconds after it opened)
    landed: int  # kills that hit a running process
    completed: bool
    exits: Mapping[str, int | None]
    client_errors: Mapping[str, str]
    differing: tuple[str, ...]  # federations whose final model is not the uninterrupted one
    lost: int
    folded_twice: int
    repeated_reports: int
    problems: tuple[str, ...]  # the audit's other findings


def judge(index: int, o: LevelsObservation) -> Trial:
    """Pass when every kill landed, the run completed, every final model is the
    uninterrupted run's and the audit found nothing."""
    problems = []
    if o.landed < len(o.kills):
        problems.append(f"{len(o.kills) - o.landed} kill(s) hit a process that had ended")
    if not o.completed:
        problems.append(f"run did not complete (exits {dict(o.exits)}, {dict(o.client_errors)})")
    if o.differing:
        problems.append(f"not the uninterrupted weights: {', '.join(o.differing)}")
    problems += list(o.problems)
    if o.repeated_reports:
        problems.append(f"{o.repeated_reports} round(s) reported more than once")
    figures: dict[str, Figure] = {
        "kills": "; ".join(f"{t} r{r} +{s:.2f}s" for t, r, s in o.kills),
        "kill_count": len(o.kills),
        "landed": o.landed,
        "completed": o.completed,
        "uninterrupted": not o.differing,
        "lost": o.lost,
        "folded_twice": o.folded_twice,
        "repeated_reports": o.repeated_reports,
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial]) -> list[Row]:
    n = len(trials)
    return [
        ratio_row(
            SCENARIO, "runs completed", sum(t.figures.get("completed") is True for t in trials), n
        ),
        ratio_row(
            SCENARIO,
            "kills that hit a running aggregator",
            int(total(trials, "landed")),
            int(total(trials, "kill_count")),
        ),
        ratio_row(
            SCENARIO,
            "runs at the uninterrupted weights, bit for bit",
            sum(t.figures.get("uninterrupted") is True for t in trials),
            n,
        ),
        count_row(SCENARIO, "updates lost", total(trials, "lost")),
        count_row(SCENARIO, "updates counted twice", total(trials, "folded_twice")),
        count_row(SCENARIO, "rounds reported more than once", total(trials, "repeated_reports")),
        count_row(SCENARIO, "hung trials", sum(bool(t.figures.get("hung")) for t in trials)),
    ]


async def run(setting: Setting, trials: int, *, limit_s: float = 300.0) -> ScenarioResult:
    """``trials`` trials, one after another; each bounded by ``limit_s``."""
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(setting, index, stage)

        result.trials.append(await bounded_trial(SCENARIO, index, limit_s, body))
    result.rows = summarize(result.trials)
    result.seconds = time.monotonic() - started
    return result


def targets(h: Hierarchy, pick: str) -> list[str]:
    """One aggregator per level, deepest first: ``pick`` among the deepest level's."""
    by_level: dict[int, list[str]] = {}
    for fed in h.federations.values():
        by_level.setdefault(fed.level, []).append(fed.id)
    deepest = max(by_level)
    return [
        pick if level == deepest else sorted(by_level[level])[0]
        for level in sorted(by_level, reverse=True)
    ]


async def _trial(setting: Setting, index: int, stage: Stage) -> Trial:
    rng = trial_rng(setting.seed, SCENARIO, index)
    workdir = setting.trial_dir(SCENARIO, index)
    config = trial_config(read_raw(CONFIG), workdir, setting.run_id(SCENARIO, index), ROUNDS)
    h, servers = config.hierarchy, setting.servers
    reason = not_comparable(h)
    assert reason is None, f"{CONFIG.name}: {reason}"
    deepest = max(f.level for f in h.federations.values())
    leaves = sorted(f.id for f in h.federations.values() if f.level == deepest)
    plan = [
        (t, rng.randrange(ROUNDS - 1), rng.random(), rng.uniform(0.0, 1.0))
        for t in targets(h, rng.choice(leaves))
    ]
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    kills: list[tuple[str, int, float]] = []
    landed = 0
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        Fleet(config, servers, workdir) as fleet,
        Members(config, servers, sorted(h.clients)) as members,
    ):
        await fleet.start(aggregators=[f.id for f in reversed(list(h.walk()))])
        for target, round_, fraction, pause in plan:
            stage(f"waiting for {target} to open round {round_}")
            await fleet.alongside(watch.until(functools.partial(watch.opened, target, round_)))
            opened = watch.round(target, round_).opened or time.time()
            await asyncio.sleep(max(0.0, opened + fraction * WINDOW_S - time.time()))
            kills.append((target, round_, time.time() - opened))
            landed += await fleet.bounce(target, pause, stage)
        exits = await fleet.finish(members, stage)
        await watch.settle(lambda: watch.reported(h.root.id, ROUNDS - 1))
    stage("comparing with the uninterrupted run")
    unequal = await asyncio.to_thread(differing, h, fleet.checkpoints)
    stage("auditing the recording")
    table = await audit_run(servers.kafka, config.run_id, hierarchy=h)
    errors = members.errors()
    lost = sum(len(ids) for ids in table.lost.values())
    twice = sum(len(ids) for ids in table.folded_twice.values())
    other = tuple(p for p in table.problems if not p.startswith(("LOST", "FOLDED TWICE")))
    observation = LevelsObservation(
        kills=tuple(kills),
        landed=landed,
        completed=all(code == 0 for code in exits.values())
        and not errors
        and watch.reported(h.root.id, ROUNDS - 1),
        exits=exits,
        client_errors=errors,
        differing=tuple(unequal),
        lost=lost,
        folded_twice=twice,
        repeated_reports=len(table.repeated_reports),
        problems=other,
    )
    return judge(index, observation)
