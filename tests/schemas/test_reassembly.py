"""One hashing pass on each side: the chunk hashes the sender computes are the ones a chunk's
bytes give, the content hash is derived from them, and the receiver's check holds in any
arrival order, catches a corrupt or swapped chunk, and still reads schema-version-1 manifests
(whose content hash is the whole payload's)."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest
import torch

from schemas.codec import delta_decoder, encode
from schemas.delta import EncodedDelta, encode_delta
from schemas.errors import ChunkCorrupt, ContentHashMismatch
from schemas.messages import DeltaChunk, DeltaMessage, Envelope
from schemas.reassembly import Reassembler, chunk_hash, content_hash, derived_hash, payload_hash


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Sizes that leave padding between tensors, and chunks that straddle tensor boundaries.
    return {
        "a": torch.randn(300, generator=g),
        "b": torch.randn(7, 3, generator=g).to(torch.float16),
        "c": torch.randn(1001, generator=g),
        "d": torch.randint(0, 9, (5,), generator=g),
    }


def encoded(chunk_size: int = 700, seed: int = 0) -> EncodedDelta:
    env = Envelope(run="r", sender="s", federation="f")
    return encode_delta(
        state(seed), envelope=env, kind="update", base_version=0, chunk_size=chunk_size
    )


def wire(message: DeltaMessage) -> DeltaMessage:
    return delta_decoder.decode(encode(message))


@pytest.mark.parametrize("chunk_size", [64, 700, 4096, 1 << 20])
def test_one_pass_hashes_equal_the_hashes_of_the_published_bytes(chunk_size: int) -> None:
    delta = encoded(chunk_size)
    payload = delta.segments.materialise()
    assert delta.manifest.content_hash == payload_hash([payload], chunk_size)
    assert delta.manifest.content_hash == payload_hash(delta.segments.iter_parts(), chunk_size)
    hashes = [chunk_hash(c.data) for c in delta.chunks]
    assert delta.manifest.content_hash == derived_hash(hashes, len(payload), chunk_size)
    for chunk in delta.chunks:
        assert chunk.hash == chunk_hash(chunk.data)
        start = chunk.index * chunk_size
        assert bytes(chunk.data) == bytes(payload[start : start + chunk_size])


def test_content_hash_holds_for_every_arrival_order_of_four_chunks() -> None:
    delta = encoded(chunk_size=1400)  # 5352 bytes
    assert delta.manifest.chunk_count == 4
    want = state()
    for order in itertools.permutations(range(4)):
        r = Reassembler()
        r.add(wire(delta.manifest))
        results = [r.add(wire(delta.chunk(i))) for i in order]
        done = results[-1]
        assert done is not None and all(x is None for x in results[:-1])
        got = done.tensors()
        assert all(torch.equal(got[k], v) for k, v in want.items())


def test_chunks_before_the_manifest_and_duplicates_still_hash_right() -> None:
    delta = encoded(chunk_size=512)
    messages: list[DeltaMessage] = [wire(c) for c in delta.chunks]
    messages += messages[:3]
    random.Random(1).shuffle(messages)
    messages.insert(len(messages) // 2, wire(delta.manifest))
    r = Reassembler()
    done = [x for x in (r.add(m) for m in messages) if x is not None]
    assert len(done) == 1
    assert payload_hash([done[0].payload.data], 512) == delta.manifest.content_hash


def test_chunks_with_matching_chunk_hashes_but_other_bytes_fail_the_content_hash() -> None:
    # A chunk from another payload, re-hashed, passes its own check: the running content
    # hash must still catch it, in order and out of order.
    delta, other = encoded(chunk_size=1024, seed=0), encoded(chunk_size=1024, seed=1)
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]):
        r = Reassembler()
        r.add(wire(delta.manifest))
        with pytest.raises(ContentHashMismatch):
            for i in order:
                chunk: DeltaChunk = delta.chunk(i)
                if i == 2:
                    swapped = other.chunk(i)
                    chunk = msgspec.structs.replace(chunk, data=swapped.data, hash=swapped.hash)
                r.add(wire(chunk))
        assert r.counters.updates_rejected == 1


def test_a_sealed_delta_carries_no_plaintext_hash() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    env = Envelope(run="r", sender="s", federation="f")
    sealed = encode_delta(
        state(), envelope=env, kind="update", base_version=0, seal_to={"agg": key.public_key()}
    )
    assert sealed.manifest.content_hash == ""
    assert sealed.chunk_hashes is None
    assert sealed.sealed is not None
    assert all(c.hash == chunk_hash(c.data) for c in sealed.chunks)


def test_a_corrupt_chunk_is_refused_and_the_update_still_completes_from_a_good_copy() -> None:
    delta = encoded(chunk_size=512)
    r = Reassembler()
    r.add(wire(delta.manifest))
    good = delta.chunk(1)
    flipped = bytearray(good.data)
    flipped[7] ^= 1
    with pytest.raises(ChunkCorrupt):
        r.add(wire(msgspec.structs.replace(good, data=memoryview(bytes(flipped)))))
    assert r.counters.chunks_rejected == 1
    done = [r.add(wire(delta.chunk(i))) for i in range(delta.manifest.chunk_count)]
    assert done[-1] is not None
    assert all(torch.equal(done[-1].tensors()[k], v) for k, v in state().items())


def test_a_manifest_whose_sizes_differ_from_its_chunks_fails_the_content_hash() -> None:
    # The derived hash covers the payload size and chunk size too, not only the chunk hashes.
    delta = encoded(chunk_size=1024)
    lying = msgspec.structs.replace(
        delta.manifest,
        content_hash=derived_hash([c.hash for c in delta.chunks], 0, 1024),
    )
    r = Reassembler()
    r.add(wire(lying))
    with pytest.raises(ContentHashMismatch):
        for chunk in delta.chunks:
            r.add(wire(chunk))


@pytest.mark.parametrize("swap", [False, True])
def test_a_schema_version_1_manifest_is_verified_by_the_whole_payload_hash(swap: bool) -> None:
    delta, other = encoded(chunk_size=1024, seed=0), encoded(chunk_size=1024, seed=1)
    old = msgspec.structs.replace(delta.manifest.envelope, schema_version=1)
    v1 = msgspec.structs.replace(
        delta.manifest, envelope=old, content_hash=content_hash(delta.segments.materialise())
    )
    r = Reassembler()
    r.add(wire(v1))
    chunks = list(delta.chunks)
    if swap:
        chunks[3] = msgspec.structs.replace(
            chunks[3], data=other.chunk(3).data, hash=other.chunk(3).hash
        )
        with pytest.raises(ContentHashMismatch):
            for chunk in reversed(chunks):
                r.add(wire(chunk))
        return
    done = [r.add(wire(c)) for c in reversed(chunks)][-1]
    assert done is not None
    assert all(torch.equal(done.tensors()[k], v) for k, v in state().items())
