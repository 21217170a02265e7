"""The command line: every registered command has its help, and the smoke transfer works end
to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from brokers.embedded import Servers
from worldlm.cli import app
from worldlm.security.keys import load_keyring

DEMO = str(Path(__file__).parents[2] / "worldlm" / "configs" / "demo.toml")

runner = CliRunner()


def registered(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command registered on the app, groups and their subcommands, as its words."""
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield (*path, name)
        yield from registered(sub, (*path, name))


COMMANDS = list(registered(typer.main.get_command(app)))


def test_the_commands_are_read_from_the_app_subcommands_included() -> None:
    """The list is read from the app, so a new command is checked without editing this file."""
    top = {c[0] for c in COMMANDS}
    assert {"run", "client", "aggregator", "experiment", "chaos", "infra", "keys"} <= top
    assert ("infra", "up") in COMMANDS and ("keys", "revoke") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_registered_command_has_its_own_help(command: tuple[str, ...]) -> None:
    # `worldlm X --help` fails for a command that does not exist (a word in the top-level
    # help text would not prove it does).
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    usage = result.output.replace("Usage: root", "Usage: worldlm")
    assert f"worldlm {' '.join(command)}" in usage


def test_every_registered_command_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = sorted({c[0] for c in COMMANDS if f"worldlm {c[0]}" not in readme})
    assert not missing, f"README.md never names: {missing}"


def test_an_unknown_command_is_refused() -> None:
    assert runner.invoke(app, ["nonesuch", "--help"]).exit_code != 0


def test_infra_up_help_documents_ports() -> None:
    result = runner.invoke(app, ["infra", "up", "--help"])
    assert result.exit_code == 0
    assert "--kafka-port" in result.output and "--redis-port" in result.output


def test_smoke_requires_both_addresses_or_neither() -> None:
    result = runner.invoke(app, ["infra", "smoke", "--kafka", "127.0.0.1:1"])
    assert result.exit_code != 0
    assert "both --kafka and --redis" in result.output


async def test_smoke_transfer_against_given_servers_is_bit_exact(servers: Servers) -> None:
    from brokers.smoke import smoke_transfer

    report = await smoke_transfer(servers.kafka, servers.redis, megabytes=4)
    assert report.bit_exact and report.barrier_closed and report.residual_round == 0
    assert report.chunks > 1  # 4 MB does not fit one 768 KiB chunk


def test_keys_generate_writes_a_loadable_pair_for_every_participant(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", "--config", DEMO, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "10 key pairs written, 0 kept" in result.output
    ring = load_keyring(tmp_path, "es-0")
    assert ring.signer is not None and len(ring.public) == 10  # 4 federations, 6 clients
    again = runner.invoke(app, ["keys", "generate", "--config", DEMO, "--out", str(tmp_path)])
    assert "0 key pairs written, 10 kept" in again.output


def test_a_participant_without_its_key_is_a_usage_error_naming_keys(tmp_path: Path) -> None:
    config = tmp_path / "signed.toml"
    config.write_text(Path(DEMO).read_text().replace("[run]\n", '[run]\nsigning = "required"\n', 1))
    args = ["client", "--config", str(config), "--node", "es-0", "--kafka", "127.0.0.1:1"]
    result = runner.invoke(
        app,
        [*args, "--redis", "redis://127.0.0.1:1/0", "--keys", str(tmp_path)],
        env={"TERMINAL_WIDTH": "1000", "COLUMNS": "1000"},  # the error box on one line
    )
    assert result.exit_code == 2, result.output
    assert "--keys" in result.output and "es-0.key is missing" in result.output
