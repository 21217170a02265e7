"""One decoding per process: readers of a partition share each record's outcome, corrupt input
is refused for every one of them, and only the newest complete deltas are kept alive."""

from __future__ import annotations

import msgspec
import torch
from aiokafka import ConsumerRecord

from brokers.deltas import Received, SharedReceiver, Unreadable
from schemas.codec import encode
from schemas.delta import encode_delta
from schemas.messages import DeltaMessage, Envelope


def records(version: int, first_offset: int, corrupt: int | None = None) -> list[ConsumerRecord]:
    env = Envelope(run="r", sender="fed", federation="fed")
    g = torch.Generator().manual_seed(version)
    delta = encode_delta(
        {"w": torch.randn(1000, generator=g)},
        envelope=env,
        kind="broadcast",
        base_version=0,
        version=version,
        chunk_size=1024,
    )
    out = []
    for i, message in enumerate(delta.messages()):
        m: DeltaMessage = message
        if corrupt is not None and i == corrupt:
            flipped = bytearray(m.data)  # type: ignore[union-attr]
            flipped[0] ^= 1
            m = msgspec.structs.replace(m, data=memoryview(bytes(flipped)))
        value = encode(m)
        offset = first_offset + i
        out.append(ConsumerRecord("t", 0, offset, 0, 0, b"fed", value, None, 3, len(value), ()))
    return out


def test_readers_share_each_record_and_get_the_same_verified_delta() -> None:
    shared = SharedReceiver()
    batch = records(1, 0)
    first = [shared.feed(r) for r in batch]
    second = [shared.feed(r) for r in batch]
    assert shared.records == len(batch)  # decoded once, for both readers
    assert first == second
    done = first[-1]
    assert isinstance(done, Received) and done.delta.manifest.version == 1
    assert all(o is None for o in first[:-1])


def test_a_corrupt_chunk_is_refused_for_every_reader_and_the_delta_never_completes() -> None:
    shared = SharedReceiver()
    batch = records(1, 0, corrupt=2)
    for _ in range(2):
        outcomes = [shared.feed(r) for r in batch]
        assert isinstance(outcomes[2], Unreadable) and outcomes[2].reason == "chunk_corrupt"
        assert not any(isinstance(o, Received) for o in outcomes)


def test_only_the_newest_complete_deltas_stay_alive() -> None:
    shared = SharedReceiver(keep=1)
    old, new = records(1, 0), records(2, 100)
    for r in old + new:
        shared.feed(r)
    late = [shared.feed(r) for r in old + new]  # a reader that starts at the old one
    done = [o for o in late if isinstance(o, Received)]
    assert [d.delta.manifest.version for d in done] == [2]
