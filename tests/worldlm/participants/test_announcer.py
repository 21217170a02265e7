"""A round saved but not announced before the aggregator died is reported once, on the real
servers: the report the kill would have lost is published by the restarted aggregator, and
one that went out before the kill is found on the metrics topic and not sent again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from brokers.embedded import Servers
from tests.worldlm.participants.helpers import endpoints, flat, settings
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.announcer import Announcer, Notice
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.recording import audit_run
from worldlm.watch import RunWatch


@pytest.mark.parametrize("reported", [False, True], ids=["before-the-report", "after-it"])
async def test_a_close_saved_but_not_announced_is_reported_exactly_once_after_a_restart(
    servers: Servers,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reported: bool,
) -> None:
    h = flat(run_id, rounds=2)
    ep = endpoints(servers)
    await prepare_run(h, ep)
    publish, died = Announcer.publish, asyncio.Event()

    async def dies_in_the_window(self: Announcer, notice: Notice) -> None:
        if notice.round == 0 and not died.is_set():  # the first aggregator's close of round 0
            if reported:
                await publish(self, notice)
            died.set()
            await asyncio.Event().wait()  # its process ends here: cancelled below
        await publish(self, notice)

    monkeypatch.setattr(Announcer, "publish", dies_in_the_window)
    clients = [ClientParticipant(h, ep, c) for c in ("en-0", "de-0")]
    first = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    second = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    async with (
        RunWatch(settings(servers, h), run_id, h.run.partitions) as watch,
        asyncio.timeout(120),
        asyncio.TaskGroup() as group,
    ):
        for client in clients:
            group.create_task(client.run())
        killed = asyncio.create_task(first.run())
        await died.wait()  # round 0 is in the checkpoint; its announcement stops here
        killed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await killed
        assert first.core.meta.unreported  # what the checkpoint holds
        await second.run()
        await watch.wait_for(lambda r: r.node == "root" and r.round == 1)
    table = await audit_run(servers.kafka, run_id, hierarchy=h)

    assert sorted(r.round for r in watch.reports if r.node == "root") == [0, 1]
    assert second.node.counters["reports_republished"] == (0 if reported else 1)
    assert table.problems == [] and table.repeated_reports == []
    assert table.matched["root"] == table.published["root"] == 4  # 2 clients x 2 rounds
