"""Compressed updates on slow links: the edge's codec (config) and the sender's error feedback.

A federation's policy names the codec its members' updates travel in
(``[federations.X.compression]``); a client and a sub-federation sending to X both use X's.
The sender adds what earlier quantization dropped (its residual) to the new update before
compressing, and keeps what this one drops for the next (error feedback, as in DiLoCo /
INTELLECT-1 pseudo-gradient compression): over rounds, the decoded updates sum to the true
ones up to one round's residual.

:class:`Compressor` is pure and synchronous; the live client and aggregator and the simulator
all use it through :class:`~worldlm.training.learner.Learner` and
:class:`~worldlm.core.federation.FederationCore`, and the receiver folds exactly what
the sender decoded (:func:`schemas.compression.decompress`), so compressed runs are
deterministic and the simulator still matches a live run bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import torch

from schemas.codec import encode
from schemas.compression import compress, decompress, nbytes
from schemas.delta import DEFAULT_CHUNK_SIZE, encode_delta
from schemas.messages import Envelope, TensorCodec
from worldlm.strategies.base import Weights

#: ``none``: float32 as computed; see :mod:`schemas.compression` for the others.
Codec = Literal["none", "bf16", "int8", "topk"]


class CompressionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The codec of updates sent to a federation (``none``: float32 as computed).

    ``block``: values per int8 scale; ``fraction``: share of values topk keeps;
    ``error_feedback``: carry what the codec dropped into the sender's next update.
    """

    codec: Codec = "none"
    block: int = 256
    fraction: float = 0.1
    error_feedback: bool = True


def check_compression(c: CompressionConfig) -> tuple[str, str] | None:
    """What is wrong with ``c`` as (field, message), or None."""
    if not 16 <= c.block <= 65536:
        return "block", f"must be in [16, 65536] (128 or 256 are usual), got {c.block}"
    if not 0 < c.fraction <= 1:
        return "fraction", f"must be in (0, 1], got {c.fraction}"
    return None


@dataclass(frozen=True, eq=False)
class Compressed:
    """One update as sent: the wire tensors and codec map, what the receiver will decode
    (``decoded``), and the sender's residual after it (``carry``)."""

    wire: Weights
    codecs: dict[str, TensorCodec]
    decoded: Weights
    carry: Weights = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data on the wire (manifest and padding aside)."""
        return nbytes(self.wire)


class Compressor:
    """One sender's side of one edge: compress with error feedback.

    :meth:`compress` is a pure function of the update and the current residual;
    :meth:`commit` adopts its carry once the update counts as sent (a federation commits
    when its parent answers, so a resubmission after a restart compresses identically).
    """

    def __init__(self, config: CompressionConfig) -> None:
        self.config = config
        self.residual: Weights = {}

    @property
    def active(self) -> bool:
        return self.config.codec != "none"

    def compress(self, delta: Mapping[str, torch.Tensor]) -> Compressed:
        """``delta`` plus the residual, compressed; the residual itself is not changed."""
        c = self.config
        if c.codec == "none":
            plain = dict(delta)
            return Compressed(plain, {}, plain)
        corrected = {n: t + self.residual[n] if n in self.residual else t for n, t in delta.items()}
        wire, codecs = compress(corrected, c.codec, block=c.block, fraction=c.fraction)
        decoded = decompress(wire, codecs)
        carry = {n: corrected[n] - decoded[n] for n in codecs} if c.error_feedback else {}
        return Compressed(wire, codecs, decoded, carry)

    def commit(self, sent: Compressed) -> None:
        """``sent`` went out: its carry is the residual for the next update."""
        if self.active:
            self.residual = dict(sent.carry)

    def send(self, delta: Mapping[str, torch.Tensor]) -> Compressed:
        """:meth:`compress` and :meth:`commit` at once (a client's update)."""
        sent = self.compress(delta)
        self.commit(sent)
        return sent


def update_bytes(
    delta: Mapping[str, torch.Tensor],
    config: CompressionConfig,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Bytes of every record (manifest and chunks) that publishing ``delta`` under ``config``
    takes: what one update costs on its link."""
    sent = Compressor(config).send(delta)
    return encoded_bytes(sent.wire, sent.codecs, chunk_size=chunk_size)


def encoded_bytes(
    wire: Mapping[str, torch.Tensor],
    codecs: Mapping[str, TensorCodec] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Bytes of every record (manifest and chunks) that publishing ``wire`` (tensors as sent,
    with their ``codecs``) takes."""
    encoded = encode_delta(
        dict(wire),
        envelope=Envelope(run="bytes", sender="sender", federation="receiver"),
        kind="update",
        base_version=0,
        chunk_size=chunk_size,
        codecs=dict(codecs or {}),
    )
    return sum(len(encode(message)) for message in encoded.messages())
