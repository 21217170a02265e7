"""Broker loss without ``--durable``: the memory broker SIGKILLed for good mid-run.

Issue 19's probe 2: the default memory broker of a run SIGKILLed, and the run went on for
45 s writing 12 625 lines of aiokafka errors, then exited 130. A memory broker's log dies
with it, so the run cannot go on: every participant must end with exit 1 and one line,
``worldlm: Kafka at H:P unreachable ...``, no traceback. Two kinds of trial, as a run is
deployed:

* ``run``: one ``worldlm run`` of the config on its own embedded servers (the probe itself);
  its broker (a child process) is SIGKILLed once the root closed its first round. The
  process started the broker, so it knows the broker keeps no log: it must end within
  :data:`RUN_BOUND_S`.
* ``participants``: every participant its own ``worldlm aggregator`` / ``worldlm client``
  process on a memory broker the trial starts (the campaign's Redis), as with
  ``worldlm infra up`` without ``--durable``. To those processes the broker is a
  ``--kafka`` broker: nothing tells them it keeps no log, so they wait for it
  (:data:`~brokers.liveness.WAIT_S`) like for Apache Kafka, and must end within
  :data:`PARTICIPANTS_BOUND_S`.

Nothing is audited: the broker's log, which the audit reads, died with it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from brokers.embedded import EmbeddedKafka
from brokers.liveness import LOST_AFTER_S, WAIT_S
from worldlm.chaos.fleet import Fleet, Process
from worldlm.chaos.probes import exits, log_events, plain_lines
from worldlm.chaos.trials import ParticipantExited, Setting, Stage, bounded_trial
from worldlm.chaos.verdict import Figure, Row, ScenarioResult, Trial, count_row, ratio_row
from worldlm.participants.node import Endpoints, prepare_run

SCENARIO = "broker_loss"
Kind = Literal["run", "participants"]
KINDS: tuple[Kind, ...] = ("run", "participants")
#: Root rounds configured: more than a trial lets it reach (the kill comes after the first).
ROUNDS = 50
#: The bound on a ``worldlm run``'s end after its memory broker died ("within seconds").
RUN_BOUND_S = 30.0
#: The bound on a ``--kafka`` participant's end: its wait for the broker, and some.
PARTICIPANTS_BOUND_S = LOST_AFTER_S + WAIT_S + 30.0
#: How often a wait on a log looks again.
POLL_S = 0.5

Ending = Literal["completed", "clear_error", "unclear"]


def bound(kind: Kind) -> float:
    return RUN_BOUND_S if kind == "run" else PARTICIPANTS_BOUND_S


def ending(code: int | None, lines: list[str], bootstrap: str) -> Ending:
    """How one process ended, from its return code and its plain (not JSON) lines: the clear
    error is exit 1 with the line naming the broker, and no traceback."""
    if code == 0:
        return "completed"
    named = any(line.startswith(f"worldlm: Kafka at {bootstrap} unreachable") for line in lines)
    if code == 1 and named and not any("Traceback" in line for line in lines):
        return "clear_error"
    return "unclear"


@dataclass(frozen=True)
class LossObservation:
    kind: Kind
    endings: Mapping[str, Ending]
    end_after_s: Mapping[str, float]  # from the kill to each process's exit
    lines_after: Mapping[str, int]  # what each process wrote from the kill on
    words: Mapping[str, str]  # each process's exit and its last words (or its traceback's)


def judge(index: int, o: LossObservation) -> Trial:
    """Pass when every process ended with the clear error within its kind's bound."""
    unclear = {n: o.words.get(n, "") for n, e in o.endings.items() if e != "clear_error"}
    slowest = max(o.end_after_s.values(), default=0.0)
    problems = []
    if unclear:
        problems.append(f"not the clear error: {unclear}"[:600])
    if slowest > bound(o.kind):
        problems.append(f"slowest end {slowest:.1f} s after the kill (bound {bound(o.kind):g} s)")
    figures: dict[str, Figure] = {
        "kind": o.kind,
        "processes": len(o.endings),
        "clear_errors": sum(e == "clear_error" for e in o.endings.values()),
        "unclear": sum(e == "unclear" for e in o.endings.values()),
        "completed": sum(e == "completed" for e in o.endings.values()),
        "slowest_end_s": round(slowest, 1),
        "most_lines_after": max(o.lines_after.values(), default=0),
    }
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial]) -> list[Row]:
    rows = [
        ratio_row(
            SCENARIO,
            "processes ended with the clear error",
            int(sum(t.figure("clear_errors") for t in trials)),
            int(sum(t.figure("processes") for t in trials)),
        )
    ]
    named: tuple[tuple[Kind, str], ...] = (
        ("run", "one `worldlm run`"),
        ("participants", "`--kafka` processes"),
    )
    for kind, what in named:
        mine = [t for t in trials if t.figures.get("kind") == kind]
        if mine:
            slowest = max(t.figure("slowest_end_s") for t in mine)
            met = slowest <= bound(kind) and all("slowest_end_s" in t.figures for t in mine)
            rows.append(
                Row(
                    SCENARIO,
                    f"slowest end after the kill, {what}",
                    f"{slowest:.1f} s",
                    f"≤ {bound(kind):g} s",
                    met,
                )
            )
    most = max((t.figure("most_lines_after") for t in trials), default=0.0)
    rows += [
        Row(SCENARIO, "most lines a process wrote after the kill", f"{most:g}"),
        count_row(SCENARIO, "unclear stops", sum(t.figure("unclear") for t in trials)),
        count_row(SCENARIO, "hung trials", sum(bool(t.figures.get("hung")) for t in trials)),
        Row(SCENARIO, "updates lost", "n/a: the log died with the broker"),
    ]
    return rows


async def run(
    setting: Setting, kinds: tuple[Kind, ...] = KINDS, *, limit_s: float = 300.0
) -> ScenarioResult:
    """One trial per kind, in order."""
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    for index, kind in enumerate(kinds):

        async def body(stage: Stage, index: int = index, kind: Kind = kind) -> Trial:
            trial = _run_trial if kind == "run" else _participants_trial
            return await trial(setting, index, stage)

        verdict = await bounded_trial(SCENARIO, index, limit_s, body)
        result.trials.append(replace(verdict, figures={"kind": kind, **verdict.figures}))
    result.rows = summarize(result.trials)
    result.seconds = time.monotonic() - started
    return result


async def _run_trial(setting: Setting, index: int, stage: Stage) -> Trial:
    config = setting.config(SCENARIO, index, rounds=ROUNDS)
    logs = setting.trial_dir(SCENARIO, index) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args = ["run", str(config.path), "--log-level", "info"]
    proc = Process("run", "run", args, logs)
    await proc.start()
    try:
        stage("waiting for the root's first round to close")
        await _root_closed(proc, config.hierarchy.root.id)
        found = re.search(r"embedded kafka ([\d.]+:\d+)", proc.log_path.read_text())
        brokers = [pid for pid in _children(proc) if "tansu" in _cmdline(pid)]
        if found is None or len(brokers) != 1:
            raise RuntimeError(f"no one embedded broker to kill (children {brokers})")
        size = proc.log_path.stat().st_size
        stage("killing the run's memory broker")
        os.kill(brokers[0], signal.SIGKILL)
        killed = time.monotonic()
        code = (await exits([proc], stage))["run"]
        ended = time.monotonic() - killed
        observation = _observe("run", {"run": (proc, code, ended, size)}, found[1])
    finally:
        await proc.close()
    return judge(index, observation)


async def _participants_trial(setting: Setting, index: int, stage: Stage) -> Trial:
    config = setting.config(SCENARIO, index, rounds=ROUNDS)
    h = config.hierarchy
    own = EmbeddedKafka()  # in memory: its log dies with it
    await own.start()
    try:
        servers = replace(setting.servers, kafka=own.bootstrap)
        await prepare_run(h, Endpoints(servers.kafka, servers.redis))
        async with Fleet(config, servers, setting.trial_dir(SCENARIO, index)) as fleet:
            await fleet.start_all()
            stage("waiting for the root's first round to close")
            await fleet.alongside(_root_closed(fleet[h.root.id], h.root.id))
            sizes = {n: _size(p.log_path) for n, p in fleet.processes.items()}
            stage("killing the memory broker")
            await own.kill()
            killed = time.monotonic()
            ends: dict[str, float] = {}

            async def timed(p: Process) -> None:
                await p.wait()
                ends[p.node] = time.monotonic() - killed

            waits = [asyncio.ensure_future(timed(p)) for p in fleet.processes.values()]
            codes = await exits(fleet.processes.values(), stage)
            await asyncio.gather(*waits)
            seen = {n: (p, codes[n], ends[n], sizes[n]) for n, p in fleet.processes.items()}
            observation = _observe("participants", seen, own.bootstrap)
    finally:
        await own.stop()
    return judge(index, observation)


def _observe(
    kind: Kind, seen: Mapping[str, tuple[Process, int, float, int]], bootstrap: str
) -> LossObservation:
    """``seen``: each process, its return code, its end after the kill and its log's size
    at the kill."""
    endings, after, words = {}, {}, {}
    for node, (p, code, _, size) in seen.items():
        lines = plain_lines(p.log_path)
        endings[node] = ending(code, lines, bootstrap)
        after[node] = p.log_path.read_bytes()[size:].count(b"\n")
        words[node] = f"exit {code}: {_trouble(lines)}"
    ends = {node: end for node, (_, _, end, _) in seen.items()}
    return LossObservation(kind, endings, ends, after, words)


def _trouble(lines: list[str]) -> str:
    """The exception a traceback ends with, if the lines hold one; else the last line."""
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            after = [x for x in lines[i + 1 :] if x and not x.startswith(" ")]
            return f"a traceback, {after[0][:160]}" if after else "a traceback"
    return lines[-1] if lines else ""


async def _root_closed(p: Process, root: str) -> None:
    """Once ``p``'s log says the root closed a round (it is the root, or runs it)."""
    while not any(
        e.get("event") == "round_closed" and e.get("node") == root for e in log_events(p.log_path)
    ):
        if not p.running:
            raise ParticipantExited(f"{p.node} exited with {p.returncode}: {p.log_tail(3)}")
        await asyncio.sleep(POLL_S)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _children(p: Process) -> list[int]:
    """The process ids whose parent is ``p`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == (p.proc.pid if p.proc else -1):
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
