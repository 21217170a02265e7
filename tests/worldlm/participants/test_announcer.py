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
from worldlm.record.recording import audit_run
from worldlm.chaos.watch import RunWatch


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


async def test_a_kill_inside_a_read_batch_loses_none_of_its_updates(
    servers: Servers, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two updates interleaved on the partition (en-0's manifest, de-0's, then en-0's chunks,
    then de-0's) complete in one read; the aggregator dies after admitting en-0's. Its
    checkpoint must not pass de-0's start (complete in the same batch, not offered yet): the
    restart folds both. Found by the aggregator_kill campaign, 2026-12-07 (an update read,
    never folded); before, the checkpoint recorded the offset after en-0's last chunk."""
    import torch

    from brokers.deltas import Received
    from brokers.kafka import Producer
    from schemas.codec import encode
    from schemas.delta import encode_delta
    from schemas.messages import Envelope
    from schemas.topics import Topics
    from worldlm.participants.admission import Admission
    from worldlm.participants.intake import Intake
    from worldlm.training.workbench import initial_weights

    h = flat(run_id, rounds=1)
    ep = endpoints(servers)
    await prepare_run(h, ep)
    streams = []
    for seed, sender in enumerate(("en-0", "de-0")):
        g = torch.Generator().manual_seed(seed)
        delta = {
            n: torch.randn(t.shape, generator=g) * 0.01
            for n, t in initial_weights(h.run).items()
            if t.is_floating_point()
        }
        encoded = encode_delta(
            delta,
            envelope=Envelope(run=run_id, sender=sender, federation="root"),
            kind="update",
            base_version=0,
            sample_count=8,
        )
        streams.append([encode(m) for m in encoded.messages()])
    (en_manifest, *en_chunks), (de_manifest, *de_chunks) = streams
    async with Producer(settings(servers, h)) as producer:
        interleaved = [en_manifest, de_manifest, *en_chunks, *de_chunks]
        await producer.send_many(Topics(run_id).up("root"), interleaved, key="root")

    read, offer = Intake.read, Admission._offer
    died, holds = asyncio.Event(), []

    async def read_both_at_once(self: Intake, position: int, wait_ms: int = 100) -> Any:
        """The first read returns once both updates are complete, as one batch (what a fetch
        that holds the last chunks of both gives)."""
        if died.is_set():
            return await read(self, position, wait_ms)
        found: list[Any] = []
        while sum(isinstance(i, Received) for i in found) < 2:
            more, position = await read(self, position, wait_ms)
            found += more
        return found, position

    async def dies_after_the_first(self: Admission, received: Any, revoked: Any, hold: Any) -> Any:
        if died.is_set():
            return await offer(self, received, revoked, hold)
        sender = await offer(self, received, revoked, hold)
        holds.append(hold)
        died.set()
        await asyncio.Event().wait()  # its process ends here: cancelled below
        return sender

    monkeypatch.setattr(Intake, "read", read_both_at_once)
    monkeypatch.setattr(Admission, "_offer", dies_after_the_first)
    first = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    second = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    async with asyncio.timeout(120):
        killed = asyncio.create_task(first.run())
        await died.wait()
        saved = dict(first.checkpoint.load()[0].offsets)
        killed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await killed
        await second.run()
    table = await audit_run(servers.kafka, run_id, hierarchy=h)

    assert holds == [1]  # de-0's manifest, the second record, was in the same batch
    assert saved[first.intake.name] <= 1  # the checkpoint stopped before it
    assert table.problems == [] and table.matched["root"] == 2
    assert second.core.meta.final and second.core.counters["updates_accepted"] == 2
