"""The campaign's process shell: a participant that ends while a trial waits on the run ends
the wait at once, naming it and what it wrote (no servers: a `worldlm` that exits at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers.embedded import Servers
from tests.worldlm.participants.helpers import flat
from worldlm.chaos.configs import TrialConfig
from worldlm.chaos.fleet import Fleet, Process
from worldlm.chaos.trials import ParticipantExited


async def test_a_participant_that_exits_ends_the_wait_with_its_name_and_code(
    tmp_path: Path,
) -> None:
    config = TrialConfig(tmp_path / "config.toml", flat("fleet"))
    async with Fleet(config, Servers("unused:9092", "redis://unused"), tmp_path) as fleet:
        broken = Process("client", "en-0", ["no-such-command"], fleet.logs)
        fleet.processes["en-0"] = broken
        await broken.start()
        with pytest.raises(ParticipantExited, match="en-0 exited with 2"):
            async with asyncio.timeout(120):
                await fleet.alongside(asyncio.Event().wait())
    assert broken.returncode == 2 and broken.log_path.read_text()
