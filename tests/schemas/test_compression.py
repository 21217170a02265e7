"""Compressed deltas: what was sent decodes exactly, through the real chunked wire format,
int8 stays within half a step of its block's scale, and every malformed codec map is a
CodecError, never a crash."""

from __future__ import annotations

import pytest
import torch

from schemas.codec import delta_decoder, encode
from schemas.compression import INDEX, SCALE, check, compress, decompress
from schemas.delta import Reassembler, encode_delta
from schemas.errors import CodecError
from schemas.messages import Envelope, TensorCodec


def delta() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(33, 17, generator=g),  # 561 values: a short last block
        "b": torch.randn(5, generator=g) * 1e-3,
        "zero": torch.zeros(300),
        "empty": torch.zeros(0, 4),
        "count": torch.arange(4),  # not float32: travels as it is
    }


def through_the_wire(
    wire: dict[str, torch.Tensor], codecs: dict[str, TensorCodec]
) -> dict[str, torch.Tensor]:
    """Encode, chunk, serialise, reassemble: what a receiver holds."""
    envelope = Envelope(run="r", sender="c", federation="f")
    encoded = encode_delta(
        wire, envelope=envelope, kind="update", base_version=0, chunk_size=512, codecs=codecs
    )
    reassembler = Reassembler()
    done = None
    for message in encoded.messages():
        done = reassembler.add(delta_decoder.decode(encode(message))) or done
    assert done is not None
    assert done.manifest.codecs == codecs
    return decompress(done.tensors(), done.manifest.codecs)


@pytest.mark.parametrize("codec", ["bf16", "int8", "topk"])
def test_the_receiver_decodes_exactly_what_the_sender_decodes(codec: str) -> None:
    wire, codecs = compress(delta(), codec, block=128, fraction=0.1)
    sender = decompress(wire, codecs)
    receiver = through_the_wire(wire, codecs)
    assert sender.keys() == receiver.keys() == delta().keys()
    for name, tensor in sender.items():
        assert torch.equal(receiver[name], tensor), name
        assert receiver[name].shape == delta()[name].shape
    assert torch.equal(receiver["count"], torch.arange(4))
    assert set(codecs) == {"w", "b", "zero", "empty"}


def test_bf16_is_the_nearest_bfloat16() -> None:
    d = delta()
    wire, codecs = compress(d, "bf16")
    assert wire["w"].dtype == torch.bfloat16
    assert torch.equal(decompress(wire, codecs)["w"], d["w"].to(torch.bfloat16).float())


@pytest.mark.parametrize("block", [128, 256])
def test_int8_error_is_within_half_a_step_of_each_blocks_scale(block: int) -> None:
    x = delta()["w"]
    wire, codecs = compress({"w": x}, "int8", block=block)
    scale = wire["w" + SCALE]
    assert scale.shape == (-(-x.numel() // block),)
    error = (decompress(wire, codecs)["w"] - x).abs().reshape(-1)
    padded = torch.nn.functional.pad(error, (0, -error.numel() % block)).view(-1, block)
    assert (padded.amax(dim=1) <= scale / 2 * (1 + 1e-5)).all()
    # Each block's largest value is sent exactly (it is +-127 steps).
    blocks = torch.nn.functional.pad(x.reshape(-1), (0, -x.numel() % block)).view(-1, block)
    assert torch.allclose(blocks.abs().amax(dim=1), scale * 127)


def test_an_all_zero_block_decodes_to_zeros() -> None:
    wire, codecs = compress({"z": torch.zeros(300)}, "int8", block=128)
    assert torch.equal(decompress(wire, codecs)["z"], torch.zeros(300))


def test_topk_keeps_the_largest_values_exactly_and_zeroes_the_rest() -> None:
    x = delta()["w"]
    wire, codecs = compress({"w": x}, "topk", fraction=0.1)
    k = wire["w"].numel()
    assert k == 57  # ceil(0.1 * 561)
    out = decompress(wire, codecs)["w"].reshape(-1)
    kept = out != 0
    assert int(kept.sum()) == k
    assert torch.equal(out[kept], x.reshape(-1)[kept])
    assert x.reshape(-1)[~kept].abs().max() <= x.reshape(-1)[kept].abs().min()


def test_int8_is_about_a_quarter_of_float32_and_topk_twice_its_fraction() -> None:
    x = {"w": torch.randn(1024, 256)}
    int8, _ = compress(x, "int8", block=256)
    topk, _ = compress(x, "topk", fraction=0.1)
    raw = 1024 * 256 * 4
    assert sum(t.numel() * t.element_size() for t in int8.values()) / raw == 0.25 + 1 / 256
    k = 26215  # ceil(0.1 * 262144): 4 bytes of value and 4 of index each
    assert sum(t.numel() * t.element_size() for t in topk.values()) == 8 * k


# -- malformed codec maps ------------------------------------------------------------------


def good() -> tuple[dict[str, torch.Tensor], dict[str, TensorCodec]]:
    wire, codecs = compress({"w": torch.randn(10, 30)}, "int8", block=128)
    top, top_codecs = compress({"t": torch.randn(50)}, "topk", fraction=0.2)
    return wire | top, codecs | top_codecs


def test_a_well_formed_map_passes() -> None:
    check(*good())


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda w, c: c.update(w=TensorCodec("zstd", (10, 30))), "unknown codec 'zstd'"),
        (lambda w, c: w.pop("w" + SCALE), "not sent"),
        (lambda w, c: w.update({"w" + SCALE: torch.ones(2)}), r"its codec needs float32 \(3,\)"),
        (lambda w, c: c.update(w=TensorCodec("int8", (10, 30), 0)), "block 0 is not positive"),
        (lambda w, c: c.update(w=TensorCodec("int8", (30, 10), 128)), "int8"),
        (lambda w, c: w.update(w=w["w"].float()), "its codec needs int8"),
        (lambda w, c: c.update(t=TensorCodec("topk", (5,))), "10 topk values for 5"),
        (lambda w, c: w.update({"t" + INDEX: w["t" + INDEX] + 50}), r"outside \[0, 50\)"),
        (lambda w, c: w.update({"t" + INDEX: w["t" + INDEX] * 0}), "not strictly increasing"),
        (lambda w, c: w.update({"t" + INDEX: w["t" + INDEX][:3]}), "its codec needs int32"),
        (lambda w, c: c.update(t=TensorCodec("topk", (2**40,))), "exceeds"),
        (lambda w, c: c.pop("t"), "belong to no codec entry"),
        (lambda w, c: c.update(v=TensorCodec("bf16", (-1,))), "negative dimension"),
    ],
)
def test_a_malformed_codec_map_is_a_codec_error(breakage: object, message: str) -> None:
    wire, codecs = good()
    breakage(wire, codecs)  # type: ignore[operator]
    with pytest.raises(CodecError, match=message) as info:
        decompress(wire, codecs)
    assert info.value.reason == "bad_codec" and not info.value.retriable


def test_a_manifest_without_codecs_still_decodes() -> None:
    """Old manifests carry no codec map: every tensor is as it was sent."""
    x = {"w": torch.randn(4, 4)}
    assert torch.equal(through_the_wire(x, {})["w"], x["w"])
