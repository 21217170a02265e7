"""Tensor layout on the wire: dtype names, packing into one payload, zero-copy views out.

Torch is imported lazily, inside the functions that need it, so ``schemas`` stays importable
(and its codec testable) without it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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


class Segments:
    """A payload that is never materialised: tensor memory and zero padding, in layout order.

    ``read(start, stop)`` returns a view into one tensor's memory when the range lies inside
    one tensor (the common case for large tensors: zero copy), else the joined bytes.
    """

    def __init__(self, total: int, parts: list[tuple[int, memoryview]]) -> None:
        self.total = total
        self._starts = [start for start, _ in parts]
        self._parts = parts

    def __len__(self) -> int:
        return self.total

    def pieces(self, start: int, stop: int) -> list[memoryview]:
        """Bytes ``[start, stop)`` as views into the tensors' memory and the padding, in order."""
        stop = min(stop, self.total)
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        pieces: list[memoryview] = []
        while start < stop and i < len(self._parts):
            base, part = self._parts[i]
            lo, hi = start - base, min(stop - base, len(part))
            if hi > lo:
                pieces.append(part[lo:hi])
                start += hi - lo
            i += 1
        return pieces

    def read(self, start: int, stop: int) -> memoryview | bytes:
        pieces = self.pieces(start, stop)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def iter_parts(self) -> list[memoryview]:
        return [part for _, part in self._parts]

    def materialise(self) -> bytearray:
        out = bytearray(self.total)
        view = memoryview(out)
        for base, part in self._parts:
            view[base : base + len(part)] = part
        return out


def layout(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[TensorSpec, ...], Segments]:
    """Lay tensors out in one aligned virtual payload, without copying their bytes.

    Padding between tensors is zeros, so the payload (and its hash) is fully determined.
    """
    import torch

    specs: list[TensorSpec] = []
    parts: list[tuple[int, memoryview]] = []
    offset = 0
    for name, tensor in tensors.items():
        dtype = _wire_dtype(tensor)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        nbytes = flat.numel() * ITEMSIZE[dtype]
        specs.append(TensorSpec(name, dtype, tuple(tensor.shape), offset, nbytes))
        if nbytes:
            parts.append((offset, flat.view(torch.uint8).numpy().data))
        padded = _align(offset + nbytes)
        if padded > offset + nbytes:
            parts.append((offset + nbytes, memoryview(bytes(padded - offset - nbytes))))
        offset = padded
    total = specs[-1].offset + specs[-1].nbytes if specs else 0
    if parts and parts[-1][0] >= total:
        parts.pop()  # no padding after the last tensor
    return tuple(specs), Segments(total, parts)


def pack(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[TensorSpec, ...], bytearray]:
    """Lay tensors out in one aligned, materialised payload (one copy of each tensor)."""
    specs, segments = layout(tensors)
    return specs, segments.materialise()


def unpack(specs: tuple[TensorSpec, ...], payload: Any) -> dict[str, torch.Tensor]:
    """Tensors as views into ``payload``, any writable buffer (no copy; they share memory)."""
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
