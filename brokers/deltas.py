"""Chunked deltas over Kafka: publish an encoded delta, and turn records back into deltas.

Transport only: what a delta means is the participants' business. The receiver never raises
on bad input; it returns a :class:`Unreadable` with the reason (to dead-letter and count) and
goes on, and it tracks the lowest offset still needed by incomplete updates, so a consumer
commits only past what it has fully folded in. A :class:`SharedReceiver` decodes and verifies
each record of one partition once for every reader in the process that follows it.
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


#: Type of what :meth:`DeltaReceiver.feed` returns.
Outcome = Received | Unreadable | Repeat | None


class SharedReceiver:
    """One :class:`DeltaReceiver` for every reader of one sender's records on one partition
    in this process (the clients of a federation following its broadcasts).

    Each record is decoded, hash-checked and reassembled once, by the first reader that
    feeds it; the others get the same outcome for that offset, the same :class:`Received`
    (its payload shared, read-only by contract: receivers never modify what they get). Only
    what every reader would conclude alike is shared: the bytes' integrity (chunk and content
    hashes, the manifest's sizes). A sealed delta is not readable here (no key), so sealing
    runs keep a receiver per reader; a signature is checked by each reader against its own
    keys and revocations.

    The outcomes of the last ``remember`` offsets are kept, and the payloads of the last
    ``keep`` completed deltas: an older completed delta reads as nothing (a newer one of the
    same sender lies further on), so a reader never holds more than the newest models alive.
    """

    def __init__(self, *, remember: int = 4096, keep: int = 2) -> None:
        self.receiver = DeltaReceiver()
        self.records = 0  # records decoded here (each once, however many readers)
        self._outcomes: OrderedDict[int, Outcome] = OrderedDict()
        self._complete: list[int] = []  # offsets of kept Received outcomes, oldest first
        self._remember, self._keep = remember, keep
        self._low: int | None = None  # lowest and highest offset decoded so far
        self._high = -1

    def feed(self, record: ConsumerRecord) -> Outcome:
        """The outcome of ``record``, decoding it only if no reader has."""
        offset = record.offset
        if offset in self._outcomes:
            return self._outcomes[offset]
        if self._low is not None and self._low <= offset <= self._high:
            return None  # decoded before: a chunk, or a delta no longer kept
        self._low = offset if self._low is None else min(self._low, offset)
        self._high = max(self._high, offset)
        self.records += 1
        outcome = self.receiver.feed(record)
        self._outcomes[offset] = outcome
        if isinstance(outcome, Received):
            self._complete.append(offset)
            if len(self._complete) > self._keep:
                self._outcomes[self._complete.pop(0)] = None
        while len(self._outcomes) > self._remember:
            dropped, _ = self._outcomes.popitem(last=False)
            if dropped in self._complete:
                self._complete.remove(dropped)
        return outcome
