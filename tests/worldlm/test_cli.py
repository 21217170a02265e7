"""The command line: every documented command exists, and the smoke transfer works end to end."""

from __future__ import annotations

from typer.testing import CliRunner

from brokers.embedded import Endpoints
from worldlm.cli import app

runner = CliRunner()


def test_top_level_help_lists_the_command_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ["infra", "data", "demo"]:
        assert command in result.output


def test_infra_up_help_documents_ports() -> None:
    result = runner.invoke(app, ["infra", "up", "--help"])
    assert result.exit_code == 0
    assert "--kafka-port" in result.output and "--redis-port" in result.output


def test_smoke_requires_both_addresses_or_neither() -> None:
    result = runner.invoke(app, ["infra", "smoke", "--kafka", "127.0.0.1:1"])
    assert result.exit_code != 0
    assert "both --kafka and --redis" in result.output


async def test_smoke_transfer_against_given_servers_is_bit_exact(servers: Endpoints) -> None:
    from worldlm.smoke import smoke_transfer

    report = await smoke_transfer(servers.kafka, servers.redis, megabytes=4)
    assert report.bit_exact and report.barrier_closed and report.residual_round == 0
    assert report.chunks > 1  # 4 MB does not fit one 768 KiB chunk
