"""Chunked deltas: encoding, bit-exact reassembly, and every way chunks can go wrong."""

from __future__ import annotations

import random

import msgspec
import pytest
import torch

from schemas.codec import delta_decoder, encode
from schemas.delta import EncodedDelta, Reassembler, chunk_hash, encode_delta
from schemas.errors import (
    ChunkCorrupt,
    ChunkError,
    ChunkTruncated,
    ContentHashMismatch,
    ManifestError,
    TensorFormatError,
)
from schemas.messages import DeltaChunk, DeltaMessage, Envelope


def mixed_state(seed: int = 0, scale: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "emb.weight": torch.randn(64 * scale, 33, generator=g),
        "norm.weight": torch.randn(33, generator=g).to(torch.float16),
        "attn.q": torch.randn(17, 5, generator=g).to(torch.bfloat16),
        "double": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "steps": torch.randint(-5, 5, (11,), generator=g),
        "small_int": torch.randint(0, 100, (4, 4), generator=g, dtype=torch.int32).to(torch.int8),
        "mask": torch.rand(9, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
    }


def encoded(sender: str, seed: int, chunk_size: int = 1000) -> EncodedDelta:
    env = Envelope(run="r", sender=sender, federation="eu")
    return encode_delta(
        mixed_state(seed),
        envelope=env,
        kind="update",
        base_version=3,
        sample_count=10,
        chunk_size=chunk_size,
    )


def wire(message: DeltaMessage) -> DeltaMessage:
    """Through the codec, as a consumer would see it."""
    return delta_decoder.decode(encode(message))


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def assert_bit_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(
            got[name].view(-1).view(torch.uint8) if tensor.numel() else got[name],
            tensor.reshape(-1).view(torch.uint8) if tensor.numel() else tensor,
        ), name


def test_manifest_describes_every_tensor_and_chunks_are_bounded() -> None:
    delta = encoded("a", 0, chunk_size=1000)
    m = delta.manifest
    assert [s.name for s in m.tensors] == list(mixed_state(0))
    assert m.chunk_count == len(delta.chunks) == -(-m.total_bytes // 1000)
    assert all(len(c.data) <= 1000 for c in delta.chunks)
    assert (m.base_version, m.sample_count, m.envelope.sender) == (3, 10, "a")
    assert {s.dtype for s in m.tensors} >= {
        "float32",
        "float16",
        "bfloat16",
        "int64",
        "int8",
        "bool",
    }


def test_in_order_reassembly_is_bit_exact_for_every_dtype() -> None:
    delta = encoded("a", 1)
    r = Reassembler()
    results = [r.add(wire(m)) for m in delta.messages()]
    done = results[-1]
    assert done is not None and all(x is None for x in results[:-1])
    assert_bit_exact(done.tensors(), mixed_state(1))
    assert r.counters.updates_completed == 1 and r.pending == 0


def test_reassembled_tensors_are_views_into_one_buffer() -> None:
    delta = encoded("a", 2)
    r = Reassembler()
    done = next(d for d in (r.add(wire(m)) for m in delta.messages()) if d)
    tensors = done.tensors()
    base = torch.frombuffer(done.payload, dtype=torch.uint8).data_ptr()
    spec = {s.name: s for s in done.manifest.tensors}
    assert tensors["emb.weight"].data_ptr() == base + spec["emb.weight"].offset


def test_duplicated_reordered_interleaved_chunks_from_three_senders_reassemble() -> None:
    deltas = {s: encoded(s, seed) for seed, s in enumerate(["a", "b", "c"])}
    stream: list[DeltaMessage] = []
    for d in deltas.values():
        msgs = list(d.messages())
        stream += msgs + random.Random(1).sample(msgs, 6)  # duplicates, manifests included
    random.Random(7).shuffle(stream)
    r = Reassembler()
    done = {d.sender: d for d in (r.add(wire(m)) for m in stream) if d is not None}
    assert set(done) == {"a", "b", "c"}
    for seed, sender in enumerate(["a", "b", "c"]):
        assert_bit_exact(done[sender].tensors(), mixed_state(seed))
    assert r.counters.updates_completed == 3
    assert r.counters.chunks_duplicate > 0 and r.pending == 0


def test_corrupt_chunk_is_rejected_and_counted_while_others_complete() -> None:
    a, b = encoded("a", 0), encoded("b", 1)
    bad = a.chunks[2]
    flipped = bytearray(bad.data)
    flipped[0] ^= 0xFF
    corrupt = msgspec.structs.replace(bad, data=memoryview(bytes(flipped)))
    r = Reassembler()
    r.add(wire(a.manifest))
    with pytest.raises(ChunkCorrupt, match="chunk 2 of update"):
        r.add(wire(corrupt))
    assert r.counters.chunks_rejected == 1
    done_b = [d for d in (r.add(wire(m)) for m in b.messages()) if d]
    assert len(done_b) == 1
    # a's good copy of chunk 2 (redelivery) still completes a
    done_a = [d for d in (r.add(wire(m)) for m in a.chunks) if d]
    assert len(done_a) == 1
    assert_bit_exact(done_a[0].tensors(), mixed_state(0))


def test_truncated_chunk_is_rejected_with_clear_error() -> None:
    a = encoded("a", 0)
    short = a.chunks[1].data[:-10]
    truncated = DeltaChunk(
        envelope=a.chunks[1].envelope,
        update_id=a.manifest.update_id,
        index=1,
        count=a.manifest.chunk_count,
        hash=chunk_hash(short),
        data=short,
    )
    r = Reassembler()
    r.add(wire(a.manifest))
    with pytest.raises(ChunkTruncated, match="990 bytes where 1000 belong"):
        r.add(wire(truncated))
    assert r.counters.chunks_rejected == 1


def test_chunk_index_outside_manifest_is_rejected() -> None:
    a = encoded("a", 0)
    stray = msgspec.structs.replace(a.chunks[0], index=a.manifest.chunk_count + 5)
    r = Reassembler()
    r.add(wire(a.manifest))
    with pytest.raises(ChunkError, match="outside the manifest"):
        r.add(wire(stray))


def test_chunks_before_manifest_are_held_then_placed() -> None:
    a = encoded("a", 4)
    r = Reassembler()
    assert all(r.add(wire(c)) is None for c in a.chunks)
    done = r.add(wire(a.manifest))
    assert done is not None
    assert_bit_exact(done.tensors(), mixed_state(4))


def test_late_duplicates_after_completion_are_ignored_and_counted() -> None:
    a = encoded("a", 0)
    r = Reassembler()
    for m in a.messages():
        r.add(wire(m))
    assert r.add(wire(a.chunks[0])) is None
    assert r.counters.chunks_duplicate == 1 and r.pending == 0 and r.counters.updates_completed == 1


def test_incomplete_updates_expire_and_are_counted() -> None:
    now = [0.0]
    r = Reassembler(ttl_s=10, clock=lambda: now[0])
    a = encoded("a", 0)
    r.add(wire(a.manifest))
    r.add(wire(a.chunks[0]))
    now[0] = 5.0
    assert r.expire() == []
    now[0] = 11.0
    assert r.expire() == [("a", a.manifest.update_id)]
    assert r.counters.updates_expired == 1 and r.pending == 0


def test_oversized_update_is_refused_at_the_manifest() -> None:
    r = Reassembler(max_update_bytes=100)
    with pytest.raises(ManifestError, match="exceeds 100"):
        r.add(wire(encoded("a", 0).manifest))
    assert r.counters.updates_rejected == 1


def test_manifest_whose_specs_disagree_with_shapes_is_refused() -> None:
    m = encoded("a", 0).manifest
    spec = msgspec.structs.replace(m.tensors[0], shape=(1, 2, 3))
    bad = msgspec.structs.replace(m, tensors=(spec, *m.tensors[1:]))
    with pytest.raises(TensorFormatError, match="do not fit dtype"):
        Reassembler().add(wire(bad))


def test_payload_that_fails_content_hash_is_rejected() -> None:
    a = encoded("a", 0)
    lying = msgspec.structs.replace(a.manifest, content_hash="0" * 32)
    r = Reassembler()
    r.add(wire(lying))
    with pytest.raises(ContentHashMismatch):
        for c in a.chunks:
            r.add(wire(c))
    assert r.counters.updates_rejected == 1


def test_unsupported_dtype_is_refused_when_encoding() -> None:
    env = Envelope(run="r", sender="s", federation="f")
    with pytest.raises(TensorFormatError, match="complex64"):
        encode_delta(
            {"z": torch.zeros(2, dtype=torch.complex64)},
            envelope=env,
            kind="update",
            base_version=0,
        )


def test_empty_state_dict_round_trips_as_one_empty_chunk() -> None:
    env = Envelope(run="r", sender="s", federation="f")
    d = encode_delta({}, envelope=env, kind="broadcast", base_version=0)
    r = Reassembler()
    done = [x for x in (r.add(wire(m)) for m in d.messages()) if x]
    assert len(done) == 1 and done[0].tensors() == {}
