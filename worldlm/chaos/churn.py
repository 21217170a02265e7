"""Client churn: a share of the clients SIGKILLed and restarted in every round.

One run of the config, every participant its own process. In each of the first ``rounds``
root rounds, at a random moment under a second after the round opened, ``share`` of the
clients (drawn anew each round) are SIGKILLed and started again at once. A killed client
leaves no clean goodbye: its heartbeat expires and the quorum counts the live; its new
process joins from the model Redis points at. Every round must still close on its quorum:
a round that closes at its deadline, or later, waited for members that were gone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass

from worldlm.chaos.fleet import Fleet
from worldlm.chaos.trials import Setting, Stage, bounded_trial, trial_rng
from worldlm.chaos.verdict import Row, ScenarioResult, Trial, count_row, ratio_row, total
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.chaos.watch import RoundTimes, RunWatch

SCENARIO = "client_churn"
#: The share of clients killed and restarted in each round.
SHARE = 0.3
#: A kill lands this long after its round opened, at most.
WINDOW_S = 1.0


@dataclass(frozen=True)
class ChurnObservation:
    rounds: int  # rounds with churn
    times: list[RoundTimes]  # the root's rounds, in order
    deadline_s: float
    kills: int
    exits: Mapping[str, int | None]


def past_deadline(times: RoundTimes, deadline_s: float) -> bool:
    """A round that did not close on its quorum before its deadline."""
    seconds = times.seconds
    by_deadline = times.reason in ("deadline", "empty")
    return by_deadline or (seconds is not None and seconds > deadline_s)


def judge(index: int, o: ChurnObservation) -> Trial:
    closed = sum(t.closed is not None for t in o.times)
    late = sum(past_deadline(t, o.deadline_s) for t in o.times)
    slowest = max((t.seconds or 0.0 for t in o.times), default=0.0)
    completed = all(code == 0 for code in o.exits.values())
    problems = []
    if closed < o.rounds:
        problems.append(f"{o.rounds - closed} round(s) never closed")
    if late:
        problems.append(f"{late} round(s) waited past their deadline")
    if not completed:
        problems.append(f"not every participant exited cleanly: {dict(o.exits)}")
    figures = {
        "rounds": o.rounds,
        "rounds_closed": closed,
        "past_deadline": late,
        "closed_by_deadline": sum(t.reason in ("deadline", "empty") for t in o.times),
        "slowest_round_s": round(slowest, 2),
        "kills": o.kills,
        "completed": completed,
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial], clients: int, victims: int, rounds: int) -> list[Row]:
    closed = int(total(trials, "rounds_closed"))
    slowest = max((t.figure("slowest_round_s") for t in trials), default=0.0)
    return [
        Row(SCENARIO, "clients killed and restarted per round", f"{victims} of {clients}"),
        ratio_row(SCENARIO, "rounds closed", closed, rounds * len(trials)),
        count_row(
            SCENARIO, "rounds that waited past their deadline", total(trials, "past_deadline")
        ),
        Row(SCENARIO, "slowest round", f"{slowest:.1f} s"),
        ratio_row(
            SCENARIO,
            "runs completed",
            sum(t.figures.get("completed") is True for t in trials),
            len(trials),
        ),
    ]


def victims_per_round(clients: int, share: float = SHARE) -> int:
    return max(1, round(share * clients))


async def run(
    setting: Setting, rounds: int = 5, trials: int = 1, *, limit_s: float = 300.0
) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    clients = 0
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(setting, index, rounds, stage)

        result.trials.append(await bounded_trial(SCENARIO, index, limit_s, body))
        clients = len(setting.config(SCENARIO, index, rounds).hierarchy.clients)
    result.rows = summarize(result.trials, clients, victims_per_round(clients), rounds)
    result.seconds = time.monotonic() - started
    return result


async def _trial(setting: Setting, index: int, rounds: int, stage: Stage) -> Trial:
    rng = trial_rng(setting.seed, SCENARIO, index)
    config = setting.config(SCENARIO, index, rounds=rounds)
    h, servers = config.hierarchy, setting.servers
    root = h.root.id
    clients = sorted(h.clients)
    k = victims_per_round(len(clients))
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    kills = 0
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        Fleet(config, servers, setting.trial_dir(SCENARIO, index)) as fleet,
    ):
        await fleet.start_all()
        for r in range(rounds):
            stage(f"waiting for round {r} to open")
            await fleet.alongside(watch.until(functools.partial(watch.opened, root, r)))
            await asyncio.sleep(rng.uniform(0.0, WINDOW_S))
            for victim in rng.sample(clients, k):
                await fleet[victim].restart()
                kills += 1
            stage(f"waiting for round {r} to close")
            await fleet.alongside(watch.until(functools.partial(watch.closed, root, r)))
        stage("waiting for every participant to exit")
        exits = await fleet.wait_all()
        await watch.settle(lambda: watch.closed(root, rounds - 1))
        times = [watch.round(root, r) for r in range(rounds)]
    deadline = h.root.policy.schedule.deadline_s
    return judge(index, ChurnObservation(rounds, times, deadline, kills, exits))
