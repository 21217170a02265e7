"""Tensor layout on the wire: dtype names, packing into one payload, zero-copy views out.

Torch is imported lazily, inside the functions that need it, so ``schemas`` stays importable
(and its codec testable) without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from schemas.errors import TensorFormatError
from schemas.messages import TensorSpec

if TYPE_CHECKING:
    import torch

#: dtype name on the wire -> bytes per element.
ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}

#: Tensors start on this boundary inside a payload, so views out of it are aligned.
ALIGNMENT = 64


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in ITEMSIZE:
        raise TensorFormatError(
            f"dtype {name!r} is not carried on the wire; use one of {list(ITEMSIZE)}"
        )
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def _wire_dtype(tensor: torch.Tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise TensorFormatError(
            f"dtype {name!r} is not carried on the wire; use one of {list(ITEMSIZE)}"
        )
    return name


def expected_nbytes(spec: TensorSpec) -> int:
    """The byte length a spec's dtype and shape imply."""
    count = 1
    for dim in spec.shape:
        count *= dim
    return count * ITEMSIZE[spec.dtype]


def check_specs(specs: tuple[TensorSpec, ...], total_bytes: int) -> None:
    """Raise :class:`TensorFormatError` unless every spec is a known dtype inside the payload."""
    names: set[str] = set()
    for spec in specs:
        if spec.name in names:
            raise TensorFormatError(f"tensor {spec.name!r} appears twice")
        names.add(spec.name)
        if spec.dtype not in ITEMSIZE:
            raise TensorFormatError(f"tensor {spec.name!r} has unknown dtype {spec.dtype!r}")
        if any(dim < 0 for dim in spec.shape):
            raise TensorFormatError(f"tensor {spec.name!r} has a negative dimension {spec.shape}")
        if spec.nbytes != expected_nbytes(spec):
            raise TensorFormatError(
                f"tensor {spec.name!r}: {spec.nbytes} bytes do not fit dtype {spec.dtype} "
                f"and shape {spec.shape}"
            )
        if spec.offset < 0 or spec.offset + spec.nbytes > total_bytes:
            raise TensorFormatError(f"tensor {spec.name!r} lies outside the payload")


def pack(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[TensorSpec, ...], bytearray]:
    """Lay tensors out in one aligned payload: one copy of each tensor's bytes, no more."""
    import torch

    specs: list[TensorSpec] = []
    sources: list[torch.Tensor] = []
    offset = 0
    for name, tensor in tensors.items():
        dtype = _wire_dtype(tensor)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        nbytes = flat.numel() * ITEMSIZE[dtype]
        specs.append(TensorSpec(name, dtype, tuple(tensor.shape), offset, nbytes))
        sources.append(flat)
        offset = _align(offset + nbytes)
    total = specs[-1].offset + specs[-1].nbytes if specs else 0
    payload = bytearray(total)
    out = torch.frombuffer(payload, dtype=torch.uint8) if total else None
    for spec, flat in zip(specs, sources, strict=True):
        if spec.nbytes and out is not None:
            out[spec.offset : spec.offset + spec.nbytes].copy_(flat.view(torch.uint8))
    return tuple(specs), payload


def unpack(specs: tuple[TensorSpec, ...], payload: bytearray) -> dict[str, torch.Tensor]:
    """Tensors as views into ``payload`` (no copy); they share its memory."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        dtype = _torch_dtype(spec.dtype)
        count = spec.nbytes // ITEMSIZE[spec.dtype]
        if count == 0:
            tensors[spec.name] = torch.empty(spec.shape, dtype=dtype)
            continue
        flat = torch.frombuffer(payload, dtype=dtype, count=count, offset=spec.offset)
        tensors[spec.name] = flat.view(spec.shape)
    return tensors
