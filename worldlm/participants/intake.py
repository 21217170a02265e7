"""A federation's intake: its partition of the update topic, read from a checkpointed offset.

Records are reassembled into updates (chunks, hashes, duplicates and interleaving are
``DeltaReceiver``'s business) and handed out as :class:`Offer`s for the round core, or as
rejections to dead-letter. The intake tracks the offset below which every record has been
folded or refused (what a checkpoint may record), how far behind the partition's end it was
(the high watermark, the consumer lag), and holes it had to read again. In a sealing run it
opens only updates sealed to its aggregator; in a signing run an update whose signature
fails makes it re-read the key directory once (the sender's key may have been rotated).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from aiokafka import ConsumerRecord, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from brokers.deltas import DeltaReceiver, Received, Repeat, Unreadable
from brokers.kafka import KafkaSettings, PartitionReader, partition_for
from schemas.compression import decompress
from schemas.delta import Reassembler
from schemas.sealing import Unsealer
from schemas.signing import SignatureError, verify_manifest
from worldlm.core.federation import Offer


class UpdateOrigin:
    """Where a reassembled update came from (its first record), to dead-letter it: an
    :class:`~worldlm.participants.node.Origin` without the payload."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.value: bytes | None = None


class Intake:
    """Reads one federation's update partition."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        federation: str,
        *,
        keys: Mapping[str, Ed25519PublicKey] | None = None,
        unsealer: Unsealer | None = None,
        reload_keys: Callable[[], bool] | None = None,
    ) -> None:
        self.tp = TopicPartition(topic, partition_for(federation, settings.partitions))
        self.name = f"{self.tp.topic}:{self.tp.partition}"
        self.settings = settings
        self.keys = keys
        self.reload_keys = reload_keys
        self.receiver = DeltaReceiver(Reassembler(unsealer=unsealer))
        self.lag = 0  # the most records behind the partition's end since the last reset
        #: ids of updates delivered again since the last take_repeats() (republished)
        self.repeats: list[str] = []
        self._key = federation.encode()
        self._reader: PartitionReader | None = None

    async def start(self, offset: int) -> None:
        self._reader = PartitionReader(self.settings, {self.tp: offset})
        await self._reader.start()

    async def stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()

    @property
    def gaps(self) -> tuple[int, int]:
        """Holes read again, and holes accepted after waiting (``PartitionReader``)."""
        r = self._reader
        return (r.gaps, r.gaps_skipped) if r is not None else (0, 0)

    async def read(
        self, position: int, wait_ms: int = 100
    ) -> tuple[list[Received | tuple[ConsumerRecord, Unreadable]], int]:
        """What the partition has (waiting up to ``wait_ms`` for records, returning as soon as
        some come): updates and refused records, and the new safe offset (``position`` if
        nothing was read)."""
        assert self._reader is not None, "start() first"
        found: list[Received | tuple[ConsumerRecord, Unreadable]] = []
        next_offset = None
        for record in await self._reader.fetch(timeout_ms=wait_ms):
            if record.key == self._key:
                result = self.receiver.feed(record)
                if isinstance(result, Unreadable):
                    found.append((record, result))
                elif isinstance(result, Received):
                    found.append(result)
                elif isinstance(result, Repeat):
                    self.repeats.append(result.update_id)
            next_offset = record.offset + 1
        if next_offset is not None:
            position = self.receiver.safe_offset(self.tp, next_offset)
        highwater = self._reader.highwater(self.tp)
        if highwater is not None:
            self.lag = max(self.lag, highwater - (next_offset or position))
        return found, position

    def take_repeats(self) -> list[str]:
        """The ids delivered again since the last call (each one a duplicate to count)."""
        repeats, self.repeats = self.repeats, []
        return repeats

    def safe_after(self, received: Received) -> int:
        """The offset a checkpoint may record once ``received`` is durable."""
        return self.receiver.safe_offset(self.tp, received.last_offset + 1)

    def offer(self, received: Received, revoked: Collection[str] = ()) -> Offer:
        """The update as the round core sees it: decoded (a malformed codec map raises
        :class:`~schemas.errors.CodecError`), its signature verified here (a key whose
        fingerprint is in ``revoked`` does not verify): the core judges the facts."""
        delta = received.delta
        m = delta.manifest
        keys, reload = self.keys, self.reload_keys

        def verify() -> None:
            assert keys is not None
            try:
                verify_manifest(m, keys, delta.payload.data, revoked)
            except SignatureError as exc:
                retry = exc.reason in ("bad_signature", "unknown_signer")
                if not (retry and reload is not None and reload()):
                    raise
                verify_manifest(m, keys, delta.payload.data, revoked)

        unverified = None
        if keys is not None:
            try:
                verify()
            except SignatureError as exc:
                unverified = (exc.reason, str(exc))

        return Offer(
            m.envelope.sender,
            m.update_id,
            decompress(delta.tensors(), m.codecs),
            m.sample_count,
            m.base_version,
            kind=m.kind,
            unverified=unverified,
            run=m.envelope.run,
            federation=m.envelope.federation,
        )
