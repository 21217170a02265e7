"""A server SIGKILLed mid-run and restarted: Redis (every key gone with it: no persistence) or
the broker (on its durable storage: the log survives, as a real Kafka's would).

Each trial starts its own server of the kind under test on a free port (the other server is
the campaign's), runs the config with every participant its own process, and once the root
has closed its first round SIGKILLs that server, waits ``DOWN_S`` and starts it again on the
same port. Then every participant must end in bounded time, one of two ways: the run
completes (it reconnected), or the participant stops with one clear error line
(``worldlm: ... unreachable``), no traceback. A participant still running at the trial's
bound is a hang; one that exits otherwise is an unclear stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from brokers.embedded import EmbeddedKafka, EmbeddedRedis, Servers
from worldlm.chaos.fleet import Fleet, Process
from worldlm.chaos.trials import Setting, Stage, bounded_trial
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.chaos.watch import RunWatch

Server = Literal["redis", "broker"]
#: Root rounds per trial (the restart comes after the first).
ROUNDS = 4
#: How long the server stays down.
DOWN_S = 2.0
#: How often a trial waiting for its participants to end notes the run's progress.
PROGRESS_S = 5.0

Ending = Literal["completed", "clear_error", "unclear"]


@dataclass(frozen=True)
class RestartObservation:
    endings: Mapping[str, Ending]
    exits: Mapping[str, int | None]
    end_after_s: float  # from the server's return to the last participant's exit
    unclear: Mapping[str, list[str]]  # the last lines of each unclear stop


def ending(code: int | None, log: str) -> Ending:
    """How one participant ended, from its return code and what it wrote."""
    if code == 0:
        return "completed"
    lines = [line for line in log.splitlines() if not line.startswith("{")]
    clear = any(line.startswith("worldlm: ") for line in lines)
    if code == 1 and clear and not any("Traceback" in line for line in lines):
        return "clear_error"
    return "unclear"


def judge(scenario: str, index: int, o: RestartObservation) -> Trial:
    completed = all(e == "completed" for e in o.endings.values())
    unclear = {n: o.exits[n] for n, e in o.endings.items() if e == "unclear"}
    outcome = "completed" if completed else ("unclear" if unclear else "clear_error")
    problems = []
    if unclear:
        problems.append(f"unclear stop of {unclear}: {dict(o.unclear)}"[:600])
    figures: dict[str, Figure] = {
        "outcome": outcome,
        "end_after_s": round(o.end_after_s, 1),
        "clear_errors": sum(e == "clear_error" for e in o.endings.values()),
        "completed_participants": sum(e == "completed" for e in o.endings.values()),
    }
    return Trial(scenario, index, not problems, "; ".join(problems), figures=figures)


def summarize(scenario: str, trials: list[Trial]) -> list[Row]:
    n = len(trials)

    def outcome(name: str) -> int:
        return sum(t.figures.get("outcome") == name for t in trials)

    hangs = sum(bool(t.figures.get("hung")) for t in trials)
    slowest = max((t.figure("end_after_s") for t in trials), default=0.0)
    return [
        ratio_row(
            scenario, "runs completed after the restart", outcome("completed"), n, held=False
        ),
        ratio_row(
            scenario, "runs stopped with a clear error", outcome("clear_error"), n, held=False
        ),
        count_row(scenario, "runs hung or stopped unclearly", hangs + outcome("unclear")),
        Row(scenario, "slowest end after the restart", f"{slowest:.1f} s"),
    ]


async def run(
    setting: Setting, server: Server, trials: int = 1, *, limit_s: float = 240.0
) -> ScenarioResult:
    scenario = f"{server}_restart"
    started = time.monotonic()
    result = ScenarioResult(scenario)
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(setting, server, index, stage)

        result.trials.append(await bounded_trial(scenario, index, limit_s, body))
    result.rows = summarize(scenario, result.trials)
    result.seconds = time.monotonic() - started
    return result


async def _trial(setting: Setting, server: Server, index: int, stage: Stage) -> Trial:
    scenario = f"{server}_restart"
    config = setting.config(scenario, index, rounds=ROUNDS)
    h = config.hierarchy
    workdir = setting.trial_dir(scenario, index)
    own: EmbeddedKafka | EmbeddedRedis = (
        EmbeddedKafka(storage=workdir / "log") if server == "broker" else EmbeddedRedis()
    )
    await own.start()
    try:
        if isinstance(own, EmbeddedKafka):
            servers = replace(setting.servers, kafka=own.bootstrap)
        else:
            servers = Servers(setting.servers.kafka, own.url)
        await prepare_run(h, Endpoints(servers.kafka, servers.redis))
        async with (
            Fleet(config, servers, workdir) as fleet,
            RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        ):
            await fleet.start_all()
            stage("waiting for the root's first round to close")
            await fleet.alongside(watch.until(lambda: watch.closed(h.root.id, 0)))
            stage(f"restarting the {server}")
            await own.kill()
            await asyncio.sleep(DOWN_S)
            await own.start()  # the same port (and, for the broker, the same storage)
            back = time.monotonic()
            stage("waiting for every participant to exit")
            exits = await _exits(fleet, stage, lambda: _progress(watch, h.root.id))
            end_after = time.monotonic() - back
            endings = {n: ending(p.returncode, _log(p)) for n, p in fleet.processes.items()}
            unclear = {n: fleet[n].log_tail() for n, e in endings.items() if e == "unclear"}
    finally:
        await own.stop()
    return judge(scenario, index, RestartObservation(endings, exits, end_after, unclear))


def _progress(watch: RunWatch, root: str) -> str:
    """How far the run got, as its events say (a hang that still made progress was slow)."""
    closed = [t for r in range(ROUNDS) if (t := watch.round(root, r)).closed is not None]
    if not closed:
        return "the root closed no round"
    last = max(t.closed or 0.0 for t in closed)
    return f"the root closed {len(closed)}/{ROUNDS} rounds, the last {time.time() - last:.0f} s ago"


async def _exits(fleet: Fleet, stage: Stage, progress: Callable[[], str]) -> dict[str, int | None]:
    """Wait for every process, naming the ones still running and the run's progress in the
    stage (what a hang's verdict says)."""
    pending = {asyncio.ensure_future(p.wait()): n for n, p in fleet.processes.items()}
    while pending:
        stage(f"waiting for {sorted(pending.values())} to exit; {progress()}")
        done, _ = await asyncio.wait(
            pending, timeout=PROGRESS_S, return_when=asyncio.FIRST_COMPLETED
        )
        for future in done:
            pending.pop(future)
    return fleet.codes()


def _log(p: Process) -> str:
    try:
        return p.log_path.read_text(errors="replace")
    except OSError:
        return ""
