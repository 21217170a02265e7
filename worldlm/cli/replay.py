"""``worldlm replay``: re-aggregate a finished run's recorded updates, as recorded or what-if."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from worldlm import logs
from worldlm.cli.participants import RunIdOpt

if TYPE_CHECKING:
    from worldlm.config.hierarchy import DPConfig


def _dp(value: str | None) -> DPConfig | bool | None:
    """``CLIP:NOISE`` (e.g. ``1.0:0.5``), ``off``, or None (keep the config's)."""
    from worldlm.config.hierarchy import DPConfig

    if value is None:
        return False
    if value == "off":
        return None
    try:
        clip, noise = (float(x) for x in value.split(":"))
    except ValueError:
        raise typer.BadParameter(
            "give CLIP:NOISE, e.g. 1.0:0.5, or off", param_hint="--dp"
        ) from None
    if clip <= 0 or noise < 0:
        raise typer.BadParameter("clip must be positive and noise >= 0", param_hint="--dp")
    # Forced: a what-if replay is an analysis of what this DP would have done to the recorded
    # updates, divergence included; the population check warns (dp_forced) instead of refusing.
    return DPConfig(clip_norm=clip, noise_multiplier=noise, force=True)


def replay(
    config: Annotated[Path, typer.Argument(help="The run's own config (TOML), as it ran.")],
    kafka: Annotated[str, typer.Option("--kafka", help="Kafka bootstrap address host:port.")],
    out: Annotated[Path, typer.Option("--out", help="Write report.json, report.md, replay.png.")],
    other: Annotated[
        Path | None,
        typer.Option("--config", help="Aggregate with this config's policies instead."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="Every federation's backbone: fedavg, fedavgm, ..."),
    ] = None,
    staleness_bound: Annotated[
        int | None, typer.Option("--staleness-bound", min=0, help="Every federation's bound.")
    ] = None,
    dp: Annotated[
        str | None, typer.Option("--dp", help="Every federation's DP: CLIP:NOISE, or off.")
    ] = None,
    key_dir: Annotated[
        Path | None,
        typer.Option("--key-dir", help="Key directory with the aggregators' keys (sealed runs)."),
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Score each replayed broadcast.")
    ] = True,
    run_id: RunIdOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Replay a finished run's recorded updates through the same round core, without
    training. With the run's own config the models are the recorded ones bit for bit; with
    --config, --strategy, --staleness-bound or --dp the report sets the re-aggregated models'
    validation perplexity next to the recorded one. Exit 1 if an own-config replay does not
    reproduce the run."""
    import torch

    from worldlm.cli.participants import load_config
    from worldlm.record.recording import recorded_run
    from worldlm.record.replay import ReplayError, check_replayable, what_if
    from worldlm.record.replay_report import replay_run, write_report

    logs.configure(level=log_level)
    torch.set_num_threads(1)
    recorded_config = load_config(config, run_id)
    hierarchy = load_config(other, recorded_config.run.id) if other else recorded_config
    if strategy is not None or staleness_bound is not None or dp is not None:
        hierarchy = what_if(
            hierarchy,
            backbone=strategy,
            staleness_bound=staleness_bound,
            dp=_dp(dp),
        )
        if dp not in (None, "off"):
            from worldlm.config.feasibility import check as check_member_dp

            check_member_dp(hierarchy)  # what_if skips parse: the forced DP is logged here
    own = hierarchy == recorded_config
    setting = "the run's own config" if own else _setting(other, strategy, staleness_bound, dp)
    try:
        check_replayable(recorded_config, hierarchy)
        recorded = asyncio.run(
            recorded_run(kafka, recorded_config, str(key_dir) if key_dir else None)
        )
        outcome = replay_run(
            recorded_config, hierarchy, recorded, setting=setting, evaluate=evaluate
        )
    except ReplayError as exc:
        typer.echo(f"worldlm: {exc}", err=True)
        raise typer.Exit(2) from None
    command = shlex.join(["worldlm", *sys.argv[1:]])
    write_report(out, outcome, command)
    verdict = "reproduced bit for bit" if outcome.reproduced else "differs from the recording"
    typer.echo(f"replayed {len(outcome.rounds)} rounds ({setting}): {verdict}")
    typer.echo(f"report: {out / 'report.md'}")
    if own and not outcome.reproduced:
        raise typer.Exit(1)


def _setting(other: Path | None, strategy: str | None, bound: int | None, dp: str | None) -> str:
    parts = [f"config {other.name}"] if other else []
    parts += [f"strategy {strategy}"] if strategy else []
    parts += [f"staleness bound {bound}"] if bound is not None else []
    parts += [f"dp {dp}"] if dp else []
    return ", ".join(parts) or "the run's own config"
