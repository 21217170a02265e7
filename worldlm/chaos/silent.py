"""A silent federation: every client of one federation SIGKILLed for good mid-run.

Issue 19's probe 3: a round that received nothing never closed, so a federation whose
members fell silent hung its parent and the run. Each trial runs the campaign's config as a
tree (root -> two federations -> clients, :func:`~worldlm.chaos.probes.two_federations`),
``sync`` with full quorum, short deadlines (the federations :data:`DEADLINE_S`, the root twice
that: a parent waits longer than its children), every participant its own process, each
client joined before any aggregator starts. Once the silent federation has closed a round
with updates in it (its round 0, unless its members missed that deadline), every one of its
clients is SIGKILLed (no clean leave: a quorum that counts declared members waits for them
until the deadline). Then the silent federation must close each later round by its
deadline, empty unless a killed client's update got out first (``rounds_empty``; its
exchanges with nothing to send are ``submissions_skipped``), the root must close by its own
deadline without it, and the run must complete; ``worldlm audit`` must count nothing lost
(what the killed clients published before the kill was folded or refused by name).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from worldlm.chaos.fleet import Fleet
from worldlm.chaos.probes import exits, lost_updates, members_of, start_joined, two_federations
from worldlm.chaos.trials import Setting, Stage, bounded_trial
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row, total
from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.chaos.watch import RoundTimes, RunWatch

SCENARIO = "silent_federation"
#: Root rounds per trial: round 0 with every member, the rest with one federation silent.
ROUNDS = 4
#: The federations' deadline (the root's is twice this).
DEADLINE_S = 5.0
#: Closed by the deadline: these reasons.
BY_DEADLINE = ("deadline", "empty")


@dataclass(frozen=True)
class SilentObservation:
    """What one trial showed: the silent federation's rounds after the kill, the root's
    rounds, the silent federation's counters (its last metrics report), and the exits of
    the participants that were not killed."""

    silent: str
    killed: Sequence[str]
    silent_rounds: Sequence[RoundTimes]  # every round it opened after the kill, in order
    root_rounds: Sequence[RoundTimes]  # every root round, in order
    rounds: int  # the root rounds the run is configured for
    rounds_empty: int
    submissions_skipped: int
    exits: Mapping[str, int | None]
    lost: int


def judge(index: int, o: SilentObservation) -> Trial:
    """Pass when the run completed, every round of the silent federation after the kill
    closed by its deadline, and nothing was lost."""
    closed = [t for t in o.silent_rounds if t.closed is not None]
    by_deadline = [t for t in closed if t.reason in BY_DEADLINE]
    empty = sum(t.reason == "empty" for t in closed)
    root_closed = sum(t.closed is not None for t in o.root_rounds)
    without = sum(t.reason in BY_DEADLINE for t in o.root_rounds[1:])
    completed = root_closed == o.rounds and all(code == 0 for code in o.exits.values())
    problems = []
    if not completed:
        problems.append(
            f"run did not complete: root closed {root_closed}/{o.rounds}, exits {dict(o.exits)}"
        )
    if not o.silent_rounds:
        problems.append(f"{o.silent} opened no round after its members were killed")
    if len(by_deadline) < len(o.silent_rounds):
        reasons = [t.reason or "never" for t in o.silent_rounds]
        problems.append(f"{o.silent}'s rounds after the kill closed by {reasons}")
    if o.lost:
        problems.append(f"{o.lost} update(s) lost")
    slowest = max((t.seconds or 0.0 for t in closed), default=0.0)
    figures: dict[str, Figure] = {
        "completed": completed,
        "silent_rounds": len(o.silent_rounds),
        "closed_by_deadline": len(by_deadline),
        "closed_empty": empty,
        "rounds_empty": o.rounds_empty,
        "submissions_skipped": o.submissions_skipped,
        "root_rounds_without": without,
        "slowest_silent_round_s": round(slowest, 2),
        "lost": o.lost,
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial], deadline_s: float = DEADLINE_S) -> list[Row]:
    n = len(trials)
    completed = sum(t.figures.get("completed") is True for t in trials)
    rounds = int(total(trials, "silent_rounds"))
    slowest = max((t.figure("slowest_silent_round_s") for t in trials), default=0.0)
    counters = f"rounds_empty {total(trials, 'rounds_empty'):g}, submissions_skipped " + (
        f"{total(trials, 'submissions_skipped'):g}"
    )
    return [
        ratio_row(SCENARIO, "runs completed", completed, n),
        ratio_row(
            SCENARIO,
            "silent federation's rounds closed by their deadline",
            int(total(trials, "closed_by_deadline")),
            rounds,
        ),
        Row(
            SCENARIO,
            "of them closed empty",
            f"{total(trials, 'closed_empty'):g} ({counters})",
        ),
        Row(
            SCENARIO,
            "root rounds closed by their deadline without it",
            f"{total(trials, 'root_rounds_without'):g}",
        ),
        Row(SCENARIO, "slowest silent round", f"{slowest:.1f} s (deadline {deadline_s:g} s)"),
        count_row(SCENARIO, "updates lost", total(trials, "lost")),
        count_row(SCENARIO, "hung trials", sum(bool(t.figures.get("hung")) for t in trials)),
    ]


def silent_raw(setting: Setting, deadline_s: float = DEADLINE_S) -> dict[str, object]:
    """The campaign's config as a tree, sync with full quorum and short deadlines."""
    raw = two_federations(setting.raw)
    defaults = dict(raw.get("defaults", {}))
    schedule = dict(defaults.get("schedule", {}))
    schedule.update(mode="sync", quorum=1.0, deadline_s=deadline_s)
    raw["defaults"] = {**defaults, "schedule": schedule}
    feds = dict(raw["federations"])
    root = next(f for f, t in feds.items() if not dict(t).get("parent"))
    table = dict(feds[root])
    table["schedule"] = {**dict(table.get("schedule", {})), "deadline_s": 2 * deadline_s}
    raw["federations"] = {**feds, root: table}
    return raw


async def run(
    setting: Setting,
    trials: int = 1,
    *,
    rounds: int = ROUNDS,
    limit_s: float = 240.0,
    deadline_s: float = DEADLINE_S,
) -> ScenarioResult:
    """``trials`` trials of ``rounds`` root rounds each (2 at least: the silence is after 0);
    the federations' deadline ``deadline_s``, the root's twice that."""
    assert rounds >= 2, "the members fall silent after round 0"
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    mine = replace(setting, raw=silent_raw(setting, deadline_s))
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(mine, index, rounds, stage)

        result.trials.append(await bounded_trial(SCENARIO, index, limit_s, body))
    result.rows = summarize(result.trials, deadline_s)
    result.seconds = time.monotonic() - started
    return result


def silent_federation(h: Hierarchy) -> str:
    """The root's last child that has clients (the one made silent)."""
    return [c for c in sorted(h.root.children) if h.federations[c].clients][-1]


def folded(watch: RunWatch, federation: str) -> int | None:
    """The first round ``federation`` closed with something in it (None: none yet)."""
    for r in itertools.count():
        times = watch.round(federation, r)
        if times.closed is None:
            return None
        if times.reason != "empty":
            return r
    raise AssertionError("unreachable")


async def _trial(setting: Setting, index: int, rounds: int, stage: Stage) -> Trial:
    config = setting.config(SCENARIO, index, rounds=rounds)
    h, servers = config.hierarchy, setting.servers
    root, silent = h.root.id, silent_federation(h)
    victims = members_of(h, silent)
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        Fleet(config, servers, setting.trial_dir(SCENARIO, index)) as fleet,
    ):
        await start_joined(fleet, servers.redis, stage)
        stage(f"waiting for {silent} to fold a round")
        await fleet.alongside(watch.until(lambda: folded(watch, silent) is not None))
        last_heard = folded(watch, silent) or 0
        for victim in victims:
            await fleet[victim].kill()
        survivors = [p for n, p in fleet.processes.items() if n not in victims]
        codes = await exits(survivors, stage)
        await watch.settle(lambda: watch.reported(root, rounds - 1))
        after = range(last_heard + 1, last_heard + 10 * rounds)
        opened = [r for r in after if watch.opened(silent, r)]
        reports = watch.aggregator_reports(silent)
        last = reports[-1].values if reports else {}
        silent_rounds = [watch.round(silent, r) for r in opened]
        root_rounds = [watch.round(root, r) for r in range(rounds)]
    stage("auditing the recording")
    observation = SilentObservation(
        silent=silent,
        killed=victims,
        silent_rounds=silent_rounds,
        root_rounds=root_rounds,
        rounds=rounds,
        rounds_empty=int(last.get("rounds_empty", 0)),
        submissions_skipped=int(last.get("submissions_skipped", 0)),
        exits=codes,
        lost=await lost_updates(servers.kafka, h),
    )
    return judge(index, observation)
