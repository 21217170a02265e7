"""What an aggregator publishes: its submissions and broadcasts, its round closes exactly once.

A close is saved in the checkpoint (the new model and round) before it is announced: the
Redis barrier, the round event and the metrics report with the round's ledger, which
``worldlm audit`` and ``worldlm replay`` read. A SIGKILL between the two used to lose the
report: the audit then counted the round's updates as lost and a replay stalled there,
although they were folded once. Now the announcement is made before the save and saved with
it (``Meta.unreported``), and cleared once published; an aggregator that resumes with one
reads its metrics partition back and publishes the report only if it is not there, so a round
is reported once whatever moment the kill hit.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from brokers.kafka import PartitionReader, partition_for
from schemas.codec import encode, metrics_decoder
from schemas.errors import WireError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

    from schemas.messages import MetricsReport
    from worldlm.participants.books import RoundBooks
    from worldlm.participants.node import Node
    from worldlm.core.rounds import Submission
    from worldlm.core.steps import Meta

#: Empty fetches in a row that end a read-back whose end the broker never reported.
QUIET_FETCHES = 25


@dataclass(frozen=True)
class Notice:
    """What a close announces: the barrier's reason, the round event, the metrics report.

    ``folded`` is the members whose updates the round folded (its arrivals), ``quorum`` the
    quorum its round core asked of it (0: not known, e.g. a notice saved before it was kept).
    """

    round: int
    reason: str
    version: int
    folded: int
    report: bytes  # the encoded MetricsReport, published as is
    quorum: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "reason": self.reason,
            "version": self.version,
            "folded": self.folded,
            "quorum": self.quorum,
            "report": base64.b64encode(self.report).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Notice:
        return cls(
            int(data["round"]),
            str(data["reason"]),
            int(data["version"]),
            int(data["folded"]),
            base64.b64decode(data["report"]),
            int(data.get("quorum", 0)),
        )


class Announcer:
    """Publishes a federation's models and round closes for its aggregator shell."""

    def __init__(self, node: Node, federation: str, books: RoundBooks) -> None:
        self.node, self.id, self.books = node, federation, books

    async def submit(self, parent: str, submission: Submission | None, round: int) -> None:
        """Send the federation's backbone update to its parent (nothing to send: say so)."""
        node = self.node
        if submission is None:
            node.log.info("submission_skipped", parent=parent, round=round)
            return
        published = await node.publish(
            node.topics.up(parent),
            parent,
            submission.wire,
            codecs=submission.codecs,
            to=[parent],
            federation=parent,
            kind="update",
            base_version=submission.base_version,
            sample_count=submission.samples,
            round=submission.round,
            update_id=submission.update_id,
        )
        node.log.info(
            "submitted_to_parent",
            parent=parent,
            base=submission.base_version,
            bytes=published.bytes,
            tensors=len(submission.delta),
        )

    async def broadcast(
        self, weights: Mapping[str, torch.Tensor], meta: Meta, members: Sequence[str]
    ) -> None:
        """Publish the federation's model (the full weights: a model, not a delta) and point
        Redis at it."""
        node = self.node
        published = await node.publish(
            node.topics.down(self.id),
            self.id,
            weights,
            to=members,
            federation=self.id,
            kind="broadcast",
            base_version=meta.version,
            version=meta.version,
            round=meta.round,
            metrics={"final": float(meta.final), "parent_version": float(meta.parent_version)},
        )
        await node.state.set_model_version(
            self.id,
            meta.version,
            topic=published.topic,
            partition=published.partition,
            offset=published.first_offset,
        )
        node.log.info(
            "broadcast",
            version=meta.version,
            round=meta.round,
            final=meta.final,
            bytes=published.bytes,
        )

    def notice(
        self,
        round: int,
        reason: str,
        version: int,
        folded: int,
        report: MetricsReport,
        quorum: int = 0,
    ) -> Notice:
        return Notice(round, reason, version, folded, encode(report), quorum)

    async def publish(self, notice: Notice) -> None:
        """Announce a close (each step idempotent but the event: a repeat is harmless)."""
        node = self.node
        await node.state.close_round(self.id, notice.round, notice.reason, self.id)
        await self.books.event(
            "closed", notice.round, notice.version, notice.reason, notice.folded, notice.quorum
        )
        await node.producer.send(node.topics.metrics, notice.report, key=node.id)

    async def resume(self, notice: Notice) -> bool:
        """Publish a close saved but maybe not announced before a restart; True if it was
        missing (and is published now), False if the report was there already."""
        if await self.reported(notice.round):
            self.node.log.info("round_report_found", round=notice.round)
            return False
        await self.publish(notice)
        self.node.counters["reports_republished"] += 1
        self.node.log.warning("round_report_republished", round=notice.round)
        return True

    async def reported(self, round: int) -> bool:
        """Whether this aggregator's report of ``round`` is on the metrics topic: its own
        partition (the report's key is the node's id) read back to the end."""
        node, topic = self.node, self.node.topics.metrics
        tp = TopicPartition(topic, partition_for(node.id, await node.producer.partitions(topic)))
        run = node.run.id
        position, idle = 0, 0
        async with PartitionReader(node.settings, {tp: 0}) as reader:
            while idle < QUIET_FETCHES:
                batch = await reader.fetch(timeout_ms=200)
                idle = 0 if batch else idle + 1
                for record in batch:
                    position = record.offset + 1
                    try:
                        report = metrics_decoder.decode(record.value or b"")
                    except WireError:
                        continue
                    if (
                        report.envelope.run == run
                        and report.node == node.id
                        and report.role == "aggregator"
                        and report.round == round
                    ):
                        return True
                end = reader.highwater(tp)
                if end is not None and position >= end:
                    return False
        return False
