"""Compressed deltas: per-tensor codecs for slow links, and their exact, validated decoding.

A compressed delta is an ordinary delta (:mod:`schemas.delta`) whose manifest also maps each
compressed tensor's name to a :class:`~schemas.messages.TensorCodec`. Its wire tensors are:

* ``bf16``: ``name`` in bfloat16, the tensor's own shape.
* ``int8``: ``name`` in int8 (the tensor's shape) and ``name::scale``, one float32 scale per
  ``block`` values of the flattened tensor (absmax / 127; the last block may be short).
* ``topk``: ``name`` (float32, the ``k`` kept values) and ``name::index`` (int32, their
  strictly increasing positions in the flattened tensor); every other value is zero.

Tensors not in the map travel as they are. Decoding is exact for what was sent: the sender
keeps the difference (error feedback, ``worldlm/strategies/compression.py``), so :func:`decompress` is
the one definition of what an update means, used by sender and receiver alike. Every way a
manifest can disagree with its tensors raises :class:`~schemas.errors.CodecError`.

Torch is imported lazily, as in :mod:`schemas.tensors`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from schemas.errors import CodecError
from schemas.messages import TensorCodec

if TYPE_CHECKING:
    import torch

#: The codecs this build writes and reads.
CODECS = ("bf16", "int8", "topk")
#: Companion tensors' name suffixes (never part of a model parameter's name).
SCALE = "::scale"
INDEX = "::index"
#: Decoded updates larger than this are refused (a topk shape is not bounded by its bytes).
DEFAULT_MAX_DECODED_BYTES = 4 * 1024**3


def compress(
    tensors: Mapping[str, torch.Tensor], codec: str, *, block: int = 256, fraction: float = 0.1
) -> tuple[dict[str, torch.Tensor], dict[str, TensorCodec]]:
    """The wire tensors and codec map of ``tensors`` under ``codec`` (float32 tensors only;
    others travel as they are)."""
    import torch

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; use one of {CODECS}")
    if codec == "int8" and block < 1:
        raise ValueError(f"int8 block must be positive, got {block}")
    if codec == "topk" and not 0 < fraction <= 1:
        raise ValueError(f"topk fraction must be in (0, 1], got {fraction}")
    wire: dict[str, torch.Tensor] = {}
    codecs: dict[str, TensorCodec] = {}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32:
            wire[name] = tensor
            continue
        t = tensor.detach().to("cpu").contiguous()
        shape = tuple(t.shape)
        if codec == "bf16":
            wire[name] = t.to(torch.bfloat16)
            codecs[name] = TensorCodec("bf16", shape)
        elif codec == "int8":
            wire[name], wire[name + SCALE] = _int8(t, block)
            codecs[name] = TensorCodec("int8", shape, block)
        else:
            wire[name], wire[name + INDEX] = _topk(t, fraction)
            codecs[name] = TensorCodec("topk", shape)
    return wire, codecs


def _int8(t: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    flat = t.reshape(-1)
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, -n % block)).view(-1, block)
    scale = blocks.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:n].reshape(t.shape), scale


def _topk(t: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    flat = t.reshape(-1)
    n = flat.numel()
    if n >= 2**31:
        raise ValueError(f"topk indices are int32; a tensor of {n} values is too large")
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    index = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
    return flat[index].clone(), index.to(torch.int32)


def decompress(
    wire: Mapping[str, torch.Tensor],
    codecs: Mapping[str, TensorCodec],
    *,
    max_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> dict[str, torch.Tensor]:
    """The delta ``wire`` and ``codecs`` describe (compressed tensors decoded to float32);
    raise :class:`CodecError` if they disagree in any way."""
    import torch

    check(wire, codecs, max_bytes=max_bytes)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in wire.items():
        if name.endswith((SCALE, INDEX)):
            continue
        spec = codecs.get(name)
        if spec is None:
            out[name] = tensor
        elif spec.codec == "bf16":
            out[name] = tensor.to(torch.float32)
        elif spec.codec == "int8":
            scale = wire[name + SCALE]
            n = tensor.numel()
            q = torch.nn.functional.pad(tensor.reshape(-1).to(torch.float32), (0, -n % spec.block))
            values = (q.view(-1, spec.block) * scale[:, None]).reshape(-1)[:n]
            out[name] = values.reshape(spec.shape)
        else:
            dense = torch.zeros(math.prod(spec.shape), dtype=torch.float32)
            dense[wire[name + INDEX].to(torch.int64)] = tensor
            out[name] = dense.reshape(spec.shape)
    return out


def check(
    wire: Mapping[str, torch.Tensor],
    codecs: Mapping[str, TensorCodec],
    *,
    max_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> None:
    """Raise :class:`CodecError` unless every codec entry names well-formed wire tensors and
    every companion tensor belongs to one."""
    import torch

    expected: set[str] = set()
    decoded = 0
    for name, spec in codecs.items():
        if spec.codec not in CODECS:
            raise CodecError(f"tensor {name!r}: unknown codec {spec.codec!r}; known: {CODECS}")
        if any(dim < 0 for dim in spec.shape):
            raise CodecError(f"tensor {name!r}: negative dimension in {spec.shape}")
        n = math.prod(spec.shape)
        decoded += 4 * n
        if decoded > max_bytes:
            raise CodecError(f"tensor {name!r}: decoded update exceeds {max_bytes} bytes")
        if spec.codec == "bf16":
            _want(wire, name, torch.bfloat16, spec.shape)
        elif spec.codec == "int8":
            if spec.block < 1:
                raise CodecError(f"tensor {name!r}: int8 block {spec.block} is not positive")
            _want(wire, name, torch.int8, spec.shape)
            _want(wire, name + SCALE, torch.float32, (-(-n // spec.block),))
            expected.add(name + SCALE)
        else:
            values = _want(wire, name, torch.float32, None)
            k = values.numel()
            if values.dim() != 1 or k > n:
                raise CodecError(f"tensor {name!r}: {k} topk values for {n} positions")
            index = _want(wire, name + INDEX, torch.int32, (k,))
            expected.add(name + INDEX)
            if k and (int(index.min()) < 0 or int(index.max()) >= n):
                raise CodecError(f"tensor {name!r}: topk index outside [0, {n})")
            if k > 1 and not bool((index[1:] > index[:-1]).all()):
                raise CodecError(f"tensor {name!r}: topk indices are not strictly increasing")
    stray = {n for n in wire if n.endswith((SCALE, INDEX))} - expected
    if stray:
        raise CodecError(f"companion tensors {sorted(stray)} belong to no codec entry")


def _want(
    wire: Mapping[str, torch.Tensor],
    name: str,
    dtype: torch.dtype,
    shape: tuple[int, ...] | None,
) -> torch.Tensor:
    tensor = wire.get(name)
    if tensor is None:
        raise CodecError(f"tensor {name!r} is named by the codec map but not sent")
    if tensor.dtype != dtype or (shape is not None and tuple(tensor.shape) != shape):
        raise CodecError(
            f"tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')} "
            f"{tuple(tensor.shape)}; its codec needs {str(dtype).removeprefix('torch.')} "
            f"{shape if shape is not None else '(k,)'}"
        )
    return tensor


def nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor data (without layout padding or the manifest)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
