"""The ``worldlm`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worldlm.cli.dashboard import dashboard as dashboard_command
from worldlm.cli.data import app as data_app
from worldlm.cli.infra import app as infra_app
from worldlm.cli.keys import app as keys_app
from worldlm.cli.participants import aggregator, client, run, single_threaded_torch
from worldlm.cli.simulate import simulate

app = typer.Typer(
    name="worldlm",
    help="WorldLM: worldwide federated training of language models over Kafka and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(infra_app, name="infra", help="Embedded Kafka (Tansu) and Redis servers.")
app.add_typer(data_app, name="data", help="Build corpora and the tokenizer.")
app.add_typer(keys_app, name="keys", help="Signing keys of participants.")
app.command()(run)
app.command()(simulate)
app.command()(client)
app.command()(aggregator)
app.command(name="dashboard")(dashboard_command)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the report.")] = Path(
        "out/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer rounds and steps.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = (
        "warning"
    ),
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="Serve the live dashboard of the WorldLM run.")
    ] = False,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", help="The dashboard's HTTP port.")
    ] = 8050,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Another hierarchy to compare (e.g. worldlm/configs/domains.toml).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run WorldLM, flat FedAvg and local-only on the built-in corpus; write a report.

    Three levels (root -> language-group federations -> two clients each), the tiny model,
    embedded Kafka and Redis. Writes OUT/report.md, OUT/report.json and OUT/perplexity.png.
    With --config, WorldLM runs that hierarchy and the baselines run on its clients.
    """
    import asyncio

    from worldlm import logs
    from worldlm.demo import run_demo

    logs.configure(level=log_level)
    single_threaded_torch()
    outcome = asyncio.run(
        run_demo(
            out,
            quick=quick,
            dashboard_port=dashboard_port if dashboard else None,
            config=config,
        )
    )
    methods = outcome.report["methods"]
    typer.echo("")
    for name, figures in methods.items():
        typer.echo(f"{name:>8}: mean validation perplexity {figures['mean_val_ppl']:9.2f}")
    typer.echo(f"report: {out / 'report.md'}  plot: {out / 'perplexity.png'}")


def main() -> None:
    app()
