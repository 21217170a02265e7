"""Bad input, made to order: what an outside producer can write to a run's topics.

Pure: no I/O. :func:`garbage` returns :class:`Item` s, each one bad input (a record, or the
records of one forged update) with where it is aimed: ``aggregator`` (a federation's up
topic, its partition, its key: what the aggregator reads), ``clients`` (its down topic,
read by its members), or ``nobody`` (the up topic's other partition, or the read partition
under a key no federation has: no participant decodes it). The campaign sends them, then
judges from the dead-letter topic and the round ledgers what became of each.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas.codec import encode
from schemas.delta import encode_delta, new_update_id
from schemas.messages import DeltaChunk, DeltaManifest, Envelope, Message, TensorSpec

Zone = Literal["aggregator", "clients", "nobody"]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    key: str
    value: bytes


@dataclass(frozen=True)
class Item:
    """One bad input; ``update_id`` names a forged update (to look for in the ledgers)."""

    kind: str
    zone: Zone
    records: tuple[Record, ...]
    update_id: str = ""


@dataclass(frozen=True)
class Target:
    """The federation under attack, and what a forger knows of it (public facts)."""

    run: str
    federation: str
    members: tuple[str, ...]
    up: str
    down: str
    read_partition: int  # the partition the federation's key maps to
    partitions: int
    #: a model tensor a forged update carries: name, shape (float32)
    tensor: tuple[str, tuple[int, ...]]


class _Forge:
    """Makes one kind of item; ``rng`` decides every detail."""

    def __init__(self, rng: random.Random, t: Target) -> None:
        self.rng, self.t = rng, t

    def envelope(self, sender: str | None = None, **changes: object) -> Envelope:
        sender = sender or self.rng.choice(self.t.members)
        envelope = Envelope(run=self.t.run, sender=sender, federation=self.t.federation)
        return msgspec.structs.replace(envelope, **changes) if changes else envelope

    def update(self, envelope: Envelope) -> tuple[DeltaManifest, list[DeltaChunk]]:
        """A well-formed update (one small tensor of the model, zeros) under ``envelope``."""
        import torch

        name, shape = self.t.tensor
        encoded = encode_delta(
            {name: torch.zeros(shape)},
            envelope=envelope,
            kind="update",
            base_version=0,
            sample_count=1,
            chunk_size=self.rng.choice([64, 256, 4096]),
        )
        return encoded.manifest, list(encoded.chunks)

    def up(self, *messages: Message | bytes) -> tuple[Record, ...]:
        return self.at(self.t.up, self.t.read_partition, self.t.federation, *messages)

    def at(
        self, topic: str, partition: int, key: str, *messages: Message | bytes
    ) -> tuple[Record, ...]:
        return tuple(
            Record(topic, partition, key, m if isinstance(m, bytes) else encode(m))
            for m in messages
        )

    def manifest(self, **changes: object) -> DeltaManifest:
        manifest, _ = self.update(self.envelope())
        return msgspec.structs.replace(manifest, update_id=new_update_id(), **changes)

    # -- aimed at the aggregator ---------------------------------------------------------

    def random_bytes(self) -> Item:
        return Item(
            "random_bytes", "aggregator", self.up(self.rng.randbytes(self.rng.randint(1, 2048)))
        )

    def truncated_record(self) -> Item:
        manifest, chunks = self.update(self.envelope())
        whole = encode(self.rng.choice([manifest, chunks[0]]))
        return Item(
            "truncated_record", "aggregator", self.up(whole[: self.rng.randint(1, len(whole) - 1)])
        )

    def corrupted_chunk(self) -> Item:
        _, chunks = self.update(self.envelope())
        chunk = chunks[0]
        data = bytearray(chunk.data)
        data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        bad = msgspec.structs.replace(chunk, data=memoryview(bytes(data)))
        return Item("corrupted_chunk", "aggregator", self.up(bad))

    def truncated_chunk(self) -> Item:
        manifest, chunks = self.update(self.envelope())
        chunk = chunks[0]
        short = msgspec.structs.replace(
            chunk, data=memoryview(bytes(chunk.data)[: len(chunk.data) // 2])
        )
        short = msgspec.structs.replace(short, hash=_chunk_hash(short.data))
        return Item("truncated_chunk", "aggregator", self.up(manifest, short), manifest.update_id)

    def wrong_schema_version(self) -> Item:
        version = self.rng.choice([0, 3, 4, 99, -1, 2**31])
        manifest, chunks = self.update(self.envelope(schema_version=version))
        return Item(
            "wrong_schema_version", "aggregator", self.up(self.rng.choice([manifest, chunks[0]]))
        )

    def unknown_sender(self) -> Item:
        manifest, chunks = self.update(self.envelope(f"intruder-{self.rng.randrange(10**6)}"))
        return Item("unknown_sender", "aggregator", self.up(manifest, *chunks), manifest.update_id)

    def oversized_claim(self) -> Item:
        size = self.rng.choice([2**33, 2**40, 2**62])
        chunk = self.rng.choice([768 * 1024, 2**30])
        claim = self.manifest(total_bytes=size, chunk_size=chunk, chunk_count=-(-size // chunk))
        return Item("oversized_claim", "aggregator", self.up(claim))

    def negative_claim(self) -> Item:
        name, shape = self.t.tensor
        choice = self.rng.randrange(4)
        if choice == 0:
            claim = self.manifest(total_bytes=-self.rng.randint(1, 2**31))
        elif choice == 1:
            claim = self.manifest(chunk_size=-self.rng.randint(1, 2**20))
        elif choice == 2:
            claim = self.manifest(chunk_count=-self.rng.randint(1, 100))
        else:
            spec = TensorSpec(name, "float32", tuple(-d for d in shape), 0, -4 * shape[0])
            claim = self.manifest(tensors=(spec,))
        return Item("negative_claim", "aggregator", self.up(claim))

    def other_run(self) -> Item:
        manifest, chunks = self.update(self.envelope(run=f"{self.t.run}-other"))
        return Item("other_run", "aggregator", self.up(manifest, *chunks), manifest.update_id)

    def other_federation(self) -> Item:
        manifest, chunks = self.update(self.envelope(federation=f"{self.t.federation}-other"))
        return Item(
            "other_federation", "aggregator", self.up(manifest, *chunks), manifest.update_id
        )

    # -- aimed at the members, and at nobody ---------------------------------------------

    def broadcast_garbage(self) -> Item:
        t = self.t
        value = self.rng.randbytes(self.rng.randint(1, 2048))
        return Item(
            "broadcast_garbage", "clients", self.at(t.down, t.read_partition, t.federation, value)
        )

    def other_partition(self) -> Item:
        t = self.t
        others = [p for p in range(t.partitions) if p != t.read_partition] or [t.read_partition]
        value = self.rng.randbytes(self.rng.randint(1, 2048))
        return Item(
            "other_partition", "nobody", self.at(t.up, self.rng.choice(others), t.federation, value)
        )

    def other_key(self) -> Item:
        t = self.t
        value = self.rng.randbytes(self.rng.randint(1, 2048))
        key = f"nobody-{self.rng.randrange(1000)}"
        return Item("other_key", "nobody", self.at(t.up, t.read_partition, key, value))


def _chunk_hash(data: memoryview) -> int:
    from schemas.delta import chunk_hash

    return chunk_hash(data)


#: Kinds and their weights: most bad input is aimed where the aggregator reads.
KINDS: dict[str, int] = {
    "random_bytes": 3,
    "truncated_record": 2,
    "corrupted_chunk": 2,
    "truncated_chunk": 1,
    "wrong_schema_version": 2,
    "unknown_sender": 1,
    "oversized_claim": 1,
    "negative_claim": 2,
    "other_run": 1,
    "other_federation": 1,
    "broadcast_garbage": 1,
    "other_partition": 1,
    "other_key": 1,
}


def garbage(rng: random.Random, target: Target, records: int) -> list[Item]:
    """Items of every kind (each kind at least once) until they hold ``records`` records."""
    forge = _Forge(rng, target)
    makers: dict[str, Callable[[], Item]] = {k: getattr(forge, k) for k in KINDS}
    items = [make() for make in makers.values()]
    kinds, weights = list(KINDS), list(KINDS.values())
    while sum(len(i.records) for i in items) < records:
        items.append(makers[rng.choices(kinds, weights)[0]]())
    rng.shuffle(items)
    return items


def zone_counts(items: list[Item]) -> Mapping[Zone, int]:
    """Records per zone."""
    counts: dict[Zone, int] = {"aggregator": 0, "clients": 0, "nobody": 0}
    for item in items:
        counts[item.zone] += len(item.records)
    return counts
