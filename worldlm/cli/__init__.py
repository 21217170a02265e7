"""The ``worldlm`` command line."""

from __future__ import annotations

import typer

from worldlm.cli.data import app as data_app
from worldlm.cli.infra import app as infra_app
from worldlm.cli.participants import aggregator, client, run

app = typer.Typer(
    name="worldlm",
    help="WorldLM: worldwide federated training of language models over Kafka and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(infra_app, name="infra", help="Embedded Kafka (Tansu) and Redis servers.")
app.add_typer(data_app, name="data", help="Build corpora and the tokenizer.")
app.command()(run)
app.command()(client)
app.command()(aggregator)


@app.command()
def demo(
    megabytes: float = typer.Option(16.0, help="Size of the smoke delta."),
) -> None:
    """Run the shipped demo on embedded servers (for now: the data-plane smoke transfer)."""
    from worldlm.cli.infra import run_smoke

    run_smoke(kafka=None, redis=None, megabytes=megabytes)


def main() -> None:
    app()
