"""The ``worldlm`` command line."""

from __future__ import annotations

import typer

from worldlm.cli.acl import acl
from worldlm.cli.audit import audit
from worldlm.cli.chaos import chaos
from worldlm.cli.dashboard import dashboard as dashboard_command
from worldlm.cli.data import app as data_app
from worldlm.cli.demo import demo
from worldlm.cli.experiment import experiment
from worldlm.cli.finetune import export, pretrain
from worldlm.cli.infra import app as infra_app
from worldlm.cli.keys import app as keys_app
from worldlm.cli.participants import aggregator, client, run
from worldlm.cli.replay import replay
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
app.command()(demo)
app.command()(experiment)
app.command()(acl)
app.command()(audit)
app.command()(replay)
app.command()(chaos)
app.command()(pretrain)
app.command()(export)


def main() -> None:
    app()
