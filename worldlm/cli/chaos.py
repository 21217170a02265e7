"""``worldlm chaos``: fault campaigns on real processes and servers, one table at the end."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from worldlm.cli.options import single_threaded_torch
from worldlm.cli.stopping import run_until_signal


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def chaos(
    config: Annotated[
        Path | None,
        typer.Argument(help="Hierarchy config (TOML); default: the shipped chaos.toml."),
    ] = None,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            "-s",
            help="aggregator_kill, client_churn, bad_input, redis_restart, broker_restart, "
            "forged_revocation, broker_loss, silent_federation or kill_every_level "
            "(repeatable); default: all.",
        ),
    ] = None,
    kill_trials: Annotated[
        int, typer.Option("--kill-trials", min=1, help="Aggregator SIGKILL trials.")
    ] = 20,
    churn_rounds: Annotated[
        int, typer.Option("--churn-rounds", min=1, help="Rounds with client churn.")
    ] = 5,
    records: Annotated[
        int, typer.Option("--records", min=1, help="Bad records an outside producer sends.")
    ] = 10_000,
    restart_trials: Annotated[
        int, typer.Option("--restart-trials", min=1, help="Trials per server restarted.")
    ] = 1,
    silent_trials: Annotated[
        int, typer.Option("--silent-trials", min=1, help="Trials with a silent federation.")
    ] = 1,
    levels_trials: Annotated[
        int,
        typer.Option("--levels-trials", min=1, help="Runs killed at every level (own config)."),
    ] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Every random choice follows it.")] = 0,
    out: Annotated[
        Path, typer.Option("--out", help="faults.json, faults.md and every trial's logs.")
    ] = Path("out/faults"),
    kafka: Annotated[str | None, typer.Option("--kafka", help="Kafka host:port.")] = None,
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Inject faults into live runs and judge them from what the runs recorded: aggregators
    SIGKILLed mid-round, clients churning, bad input from an outside producer, Redis and the
    broker restarted mid-run; and issue 19's outside probes: forged and erased revocations
    under ACLs, the memory broker lost for good, a federation whose members all fell silent;
    and a kill at every level of a three-level tree, whose final models must equal the
    uninterrupted run's bit for bit (its own config, config/shipped/chaos-levels.toml).
    Every trial is bounded in time (a hang is a failed trial).
    Prints one table; exit 1 if a target was missed. The restart scenarios need the
    embedded servers (no --kafka/--redis)."""
    from worldlm import logs
    from worldlm.chaos.campaign import SCENARIOS, Sizes, run_campaign
    from worldlm.chaos.configs import DEFAULT_CONFIG, read_raw
    from worldlm.chaos.verdict import Campaign, ScenarioResult

    logs.configure(level=log_level)
    single_threaded_torch()
    chosen = scenario or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; known: {', '.join(SCENARIOS)}")
    if (kafka or redis) and {"redis_restart", "broker_restart"} & set(chosen):
        raise typer.BadParameter("the restart scenarios restart their own embedded servers")
    path = config or DEFAULT_CONFIG
    from worldlm.cli.options import load_config

    load_config(path, None)  # a usage error here, not in every trial
    sizes = Sizes(
        kill_trials=kill_trials,
        churn_rounds=churn_rounds,
        bad_records=records,
        restart_trials=restart_trials,
        silent_trials=silent_trials,
        levels_trials=levels_trials,
    )

    def progress(result: ScenarioResult) -> None:
        verdict = "targets met" if result.ok else "TARGETS MISSED"
        typer.echo(
            f"{result.name}: {len(result.trials)} trial(s), {result.seconds:.0f} s, {verdict}",
            err=True,
        )

    async def main(stop: asyncio.Event) -> Campaign:
        return await run_campaign(
            read_raw(path),
            out / "trials",
            scenarios=chosen,
            sizes=sizes,
            seed=seed,
            kafka=kafka,
            redis=redis,
            on_scenario=progress,
        )

    campaign = run_until_signal(main)
    campaign.command = shlex.join(["worldlm", *sys.argv[1:]])
    campaign.commit = _commit()
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(campaign.as_dict(), indent=2) + "\n")
    head = f"{campaign.date}, commit {campaign.commit}: `{campaign.command}`"
    (out / "faults.md").write_text(f"{head}\n\n{campaign.markdown()}\n")
    typer.echo(campaign.render())
    typer.echo(f"json: {out / 'faults.json'}", err=True)
    if not campaign.ok:
        raise typer.Exit(1)
