"""Chunked deltas over Kafka: publish an encoded delta, and turn records back into deltas.

Transport only: what a delta means is the participants' business. The receiver never raises
on bad input; it returns a :class:`Unreadable` with the reason (to dead-letter and count) and
goes on, and it tracks the lowest offset still needed by incomplete updates, so a consumer
commits only past what it has fully folded in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition

from brokers.kafka import Producer
from schemas.codec import delta_decoder, encode
from schemas.delta import CompletedDelta, EncodedDelta, Reassembler
from schemas.errors import WireError
from schemas.messages import DeltaManifest

#: How many completed updates a receiver remembers, to recognise one delivered again.
REMEMBER_COMPLETED = 65536


@dataclass(frozen=True)
class Published:
    """Where a delta landed: its manifest's offset is where a reader starts."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int
    bytes: int


async def publish_delta(producer: Producer, topic: str, key: str, delta: EncodedDelta) -> Published:
    """Publish manifest then chunks, in order, to the partition of ``key``.

    Chunks are encoded one at a time as the producer takes them, so encoding overlaps with
    the network, and at most one encoded chunk is held here at a time.
    """
    sizes: list[int] = []

    def records() -> Iterator[bytes]:
        for message in delta.messages():
            value = encode(message)
            sizes.append(len(value))
            yield value

    meta = await producer.send_many(topic, records(), key=key)
    return Published(
        topic=topic,
        partition=meta[0].partition,
        first_offset=meta[0].offset,
        last_offset=meta[-1].offset,
        records=len(sizes),
        bytes=sum(sizes),
    )


@dataclass(frozen=True)
class Received:
    """A complete, verified delta and the records it came from."""

    delta: CompletedDelta
    topic: str
    partition: int
    first_offset: int
    last_offset: int


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be used, and why."""

    reason: str
    detail: str
    record: ConsumerRecord


@dataclass(frozen=True)
class Repeat:
    """The manifest of an update this receiver completed before (at-least-once re-delivery,
    or a republished record): nothing to fold, but a consumer that accounts for every update
    counts it as a duplicate."""

    sender: str
    update_id: str
    record: ConsumerRecord


class DeltaReceiver:
    """Feeds Kafka records through the codec and a :class:`Reassembler`."""

    def __init__(self, reassembler: Reassembler | None = None) -> None:
        self.reassembler = reassembler or Reassembler()
        self.rejected: Counter[str] = Counter()
        self.records = 0
        self.bytes = 0
        self._first_offset: dict[tuple[str, str], tuple[TopicPartition, int]] = {}
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()

    def feed(self, record: ConsumerRecord) -> Received | Unreadable | Repeat | None:
        """Fold one record in; a :class:`Received` when it completes a delta, a
        :class:`Repeat` for the manifest of one completed before."""
        self.records += 1
        value: bytes = record.value or b""
        self.bytes += len(value)
        tp = TopicPartition(record.topic, record.partition)
        try:
            message = delta_decoder.decode(value)
            key = (message.envelope.sender, message.update_id)
            if key in self._done and isinstance(message, DeltaManifest):
                return Repeat(key[0], key[1], record)
            self._first_offset.setdefault(key, (tp, record.offset))
            done = self.reassembler.add(message)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            return Unreadable(exc.reason, str(exc), record)
        if done is None:
            return None
        _, first = self._first_offset.pop(key, (tp, record.offset))
        self._done[key] = None
        if len(self._done) > REMEMBER_COMPLETED:
            self._done.popitem(last=False)
        return Received(done, record.topic, record.partition, first, record.offset)

    def expire(self) -> int:
        """Drop expired incomplete updates; return how many."""
        expired = self.reassembler.expire()
        for key in expired:
            self._first_offset.pop(key, None)
        return len(expired)

    def safe_offset(self, tp: TopicPartition, next_offset: int) -> int:
        """The offset a consumer may commit on ``tp``: before any incomplete update's start."""
        self._gc()
        pending = [o for (p, o) in self._first_offset.values() if p == tp]
        return min([next_offset, *pending])

    def _gc(self) -> None:
        # Partials the reassembler dropped (rejected or expired) no longer pin offsets.
        live = self.reassembler.pending_keys()
        for key in [k for k in self._first_offset if k not in live]:
            del self._first_offset[key]
