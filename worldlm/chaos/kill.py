"""Aggregator SIGKILL: killed at a random point of a round, restarted from its checkpoint.

Each trial is a fresh run of the config: every aggregator is its own ``worldlm aggregator``
process, the clients are tasks of the campaign's process. At a random round and a random
moment after it opened, one aggregator (drawn from the config's federations) is SIGKILLed
and, after a random pause under a second, started again on the same checkpoint directory.
The run must then end as if nothing happened, which the campaign checks from what the run
recorded, not from what the participants say about themselves:

- ``worldlm audit``'s accounting (:func:`~worldlm.record.recording.audit_run`): no round reported
  twice, no update lost, none folded twice;
- ``worldlm replay`` of the recording through the same round core reproduces every
  broadcast model bit for bit (an update folded twice *into the weights*, e.g. from a torn
  checkpoint, would show here even with a clean ledger).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

from worldlm.chaos.fleet import Fleet, Members
from worldlm.chaos.trials import Setting, Stage, bounded_trial, trial_rng
from worldlm.chaos.uninterrupted import differing, not_comparable
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row, total
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.record.recording import audit_run, recorded_run
from worldlm.record.replay_report import replay_run
from worldlm.chaos.watch import RunWatch

SCENARIO = "aggregator_kill"
#: Root rounds per trial: the kill lands in one of the first ``ROUNDS - 1``.
ROUNDS = 3
#: The window after a round opened in which the kill lands, until rounds have been timed.
FIRST_WINDOW_S = 2.0


@dataclass(frozen=True)
class KillObservation:
    """What one trial showed."""

    target: str
    killed_round: int  # the round that was open (or about to) when the kill landed
    killed_after_s: float  # seconds after that round opened
    completed: bool  # the root's last round reported, every participant exited cleanly
    exits: Mapping[str, int | None]
    client_errors: Mapping[str, str]
    rounds_reported: int
    repeated_reports: int
    lost: int
    folded_twice: int
    unread: int
    reproduced: bool | None  # None: the replay could not run
    #: every final model is the uninterrupted run's (None: the config's weights depend on
    #: timing, see ``uninterrupted.not_comparable``)
    uninterrupted: bool | None = None
    problems: tuple[str, ...] = ()  # the audit's other findings (unmatched, unpublished)


def judge(index: int, o: KillObservation) -> Trial:
    """Pass when the run completed and nothing was reported twice, lost or counted twice."""
    problems = []
    if not o.completed:
        problems.append(f"run did not complete (exits {dict(o.exits)}, {dict(o.client_errors)})")
    if o.repeated_reports:
        problems.append(f"{o.repeated_reports} round(s) reported more than once")
    if o.lost:
        problems.append(f"{o.lost} update(s) lost")
    if o.folded_twice:
        problems.append(f"{o.folded_twice} update(s) folded twice")
    if o.reproduced is False:
        problems.append("replay does not reproduce the recorded models")
    if o.uninterrupted is False:
        problems.append("the final models are not the uninterrupted run's")
    problems += list(o.problems)
    figures: dict[str, Figure] = {
        "target": o.target,
        "killed_round": o.killed_round,
        "killed_after_s": round(o.killed_after_s, 3),
        "completed": o.completed,
        "rounds_reported": o.rounds_reported,
        "repeated_reports": o.repeated_reports,
        "lost": o.lost,
        "folded_twice": o.folded_twice,
        "unread": o.unread,
        "reproduced": "n/a" if o.reproduced is None else o.reproduced,
        "uninterrupted": "n/a" if o.uninterrupted is None else o.uninterrupted,
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial]) -> list[Row]:
    n = len(trials)
    completed = sum(t.figures.get("completed") is True for t in trials)
    reproduced = sum(t.figures.get("reproduced") is True for t in trials)
    return [
        ratio_row(SCENARIO, "runs completed", completed, n),
        count_row(SCENARIO, "rounds reported more than once", total(trials, "repeated_reports")),
        count_row(SCENARIO, "updates lost", total(trials, "lost")),
        count_row(SCENARIO, "updates counted twice", total(trials, "folded_twice")),
        ratio_row(SCENARIO, "models reproduced by replay", reproduced, n),
        *_uninterrupted_row(trials),
        count_row(SCENARIO, "hung trials", sum(bool(t.figures.get("hung")) for t in trials)),
    ]


def _uninterrupted_row(trials: list[Trial]) -> list[Row]:
    """Runs at the uninterrupted run's weights, among those whose config makes it a test."""
    held = [t for t in trials if t.figures.get("uninterrupted") in (True, False)]
    if not held:
        return []
    same = sum(t.figures["uninterrupted"] is True for t in held)
    return [ratio_row(SCENARIO, "runs at the uninterrupted weights, bit for bit", same, len(held))]


async def run(setting: Setting, trials: int, *, limit_s: float = 180.0) -> ScenarioResult:
    """``trials`` kill trials, one after another; each bounded by ``limit_s``."""
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    durations: list[float] = []
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(setting, index, stage, durations)

        result.trials.append(await bounded_trial(SCENARIO, index, limit_s, body))
    result.rows = summarize(result.trials)
    result.seconds = time.monotonic() - started
    return result


async def _trial(setting: Setting, index: int, stage: Stage, durations: list[float]) -> Trial:
    rng = trial_rng(setting.seed, SCENARIO, index)
    config = setting.config(SCENARIO, index, rounds=ROUNDS)
    h, servers = config.hierarchy, setting.servers
    feds = sorted(h.federations)
    target = rng.choice(feds)
    kill_round = rng.randrange(ROUNDS - 1)
    fraction, pause = rng.random(), rng.uniform(0.0, 1.0)
    root = h.root.id
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    workdir = setting.trial_dir(SCENARIO, index)
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        Fleet(config, servers, workdir) as fleet,
        Members(config, servers, sorted(h.clients)) as members,
    ):
        await fleet.start(aggregators=[f.id for f in reversed(list(h.walk()))])
        stage(f"waiting for {target} to open round {kill_round}")
        await fleet.alongside(watch.until(lambda: watch.opened(target, kill_round)))
        window = statistics.median(durations) if durations else FIRST_WINDOW_S
        opened = watch.round(target, kill_round).opened or time.time()
        await asyncio.sleep(max(0.0, opened + fraction * window - time.time()))
        killed_after = time.time() - opened
        if watch.closed(target, kill_round):  # the round was quicker than the window
            kill_round += 1
        await fleet.bounce(target, pause, stage)
        exits = await fleet.finish(members, stage)
        await watch.settle(lambda: watch.reported(root, ROUNDS - 1))
        for r in range(ROUNDS):
            seconds = watch.round(target, r).seconds
            if seconds is not None and r != kill_round:
                durations.append(seconds)
    comparable = not_comparable(h) is None
    if comparable:
        stage("comparing with the uninterrupted run")
    unequal = await asyncio.to_thread(differing, h, fleet.checkpoints) if comparable else None
    stage("auditing the recording")
    table = await audit_run(servers.kafka, config.run_id, hierarchy=h)
    stage("replaying the recording")
    try:
        recorded = await recorded_run(servers.kafka, h, None)
        outcome = await asyncio.to_thread(
            replay_run, h, h, recorded, setting="the run's own config", evaluate=False
        )
        reproduced: bool | None = outcome.reproduced
    except Exception:
        reproduced = None
    errors = members.errors()
    observation = KillObservation(
        target=target,
        killed_round=kill_round,
        killed_after_s=killed_after,
        completed=all(code == 0 for code in exits.values())
        and not errors
        and watch.reported(root, ROUNDS - 1),
        exits=exits,
        client_errors=errors,
        rounds_reported=len({r.round for r in watch.aggregator_reports(root)}),
        repeated_reports=len(table.repeated_reports),
        lost=sum(len(ids) for ids in table.lost.values()),
        folded_twice=sum(len(ids) for ids in table.folded_twice.values()),
        unread=sum(len(ids) for ids in table.unread.values()),
        reproduced=reproduced,
        uninterrupted=None if unequal is None else not unequal,
        problems=tuple(p for p in table.problems if not p.startswith(("LOST", "FOLDED TWICE"))),
    )
    return judge(index, observation)
