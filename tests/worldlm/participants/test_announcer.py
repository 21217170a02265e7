"""A round saved but not announced before the aggregator died is reported once, on the real
servers: the report the kill would have lost is published by the restarted aggregator, and
one that went out before the kill is found on the metrics topic and not sent again. A close
announces the round core's reason and quorum, and the arrivals, each as what it is."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from brokers.embedded import Servers
from schemas.messages import Envelope, RoundEvent
from tests.worldlm.participants.helpers import endpoints, flat, settings
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.announcer import Announcer, Notice
from worldlm.participants.books import RoundBooks
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


class Recorder(SimpleNamespace):
    """A node that keeps what an announcement sends (no servers)."""

    def __init__(self) -> None:
        super().__init__(id="root", events=[], closes=[], sent=[])
        self.topics = SimpleNamespace(metrics="metrics")
        self.state = SimpleNamespace(close_round=self._close_round)
        self.producer = SimpleNamespace(send=self._send)

    def envelope(self, federation: str | None = None) -> Envelope:
        return Envelope(run="r", sender=self.id, federation=federation or "")

    async def event(self, message: RoundEvent) -> None:
        self.events.append(message)

    async def _close_round(self, *args: Any) -> bool:
        self.closes.append(args)
        return True

    async def _send(self, topic: str, value: bytes, key: str) -> None:
        self.sent.append((topic, value))


async def test_a_close_announces_the_cores_reason_and_quorum_apart_from_the_arrivals() -> None:
    node: Any = Recorder()
    announcer = Announcer(node, "root", RoundBooks(node))
    await announcer.publish(Notice(3, "deadline", 4, 1, b"report", quorum=2))
    (event,) = node.events
    assert (event.action, event.round, event.reason) == ("closed", 3, "deadline")
    assert (event.arrived, event.quorum, event.version) == (1, 2, 4)
    assert node.closes == [("root", 3, "deadline", "root")]  # the core's close, recorded
    assert node.sent == [("metrics", b"report")]


def test_a_notice_keeps_its_quorum_through_a_checkpoint_and_reads_one_saved_without() -> None:
    notice = Notice(3, "quorum", 4, 2, b"report", quorum=2)
    assert Notice.from_json(notice.to_json()) == notice
    older = {k: v for k, v in notice.to_json().items() if k != "quorum"}
    assert Notice.from_json(older).quorum == 0  # not known: shown as no quorum, not arrivals
