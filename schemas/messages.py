"""Typed messages of the wire contract: frozen, tagged msgspec structs under a versioned envelope.

Every message carries an :class:`Envelope` (run, sender, federation, schema version, time).
Messages are MessagePack maps, so any MessagePack library can read them; the ``type`` field
names the message. Schema evolution follows msgspec's rules: new fields get defaults, a field
never changes type, and a change that breaks readers bumps :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

#: The schema version this build writes. Version 2 (issue 23): a delta manifest's
#: ``content_hash`` is derived from its chunks' hashes (``schemas/reassembly.py``), not a hash
#: of the whole payload; every other message reads as in version 1.
SCHEMA_VERSION = 2
#: The schema versions this build reads (a version-1 manifest is verified by its own rule).
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)


def _now() -> float:
    return time.time()


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Who sent a message, for which run and federation, in which schema version, and when."""

    run: str
    sender: str
    federation: str
    schema_version: int = SCHEMA_VERSION
    timestamp: float = msgspec.field(default_factory=_now)


class Message(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of every message: a tagged struct with an envelope."""

    envelope: Envelope


class TensorSpec(msgspec.Struct, frozen=True, array_like=True):
    """One tensor inside a delta payload: its bytes are ``payload[offset : offset + nbytes]``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class TensorCodec(msgspec.Struct, frozen=True, array_like=True):
    """How one tensor of a delta was compressed (``schemas/compression.py``): the codec's
    name, the tensor's own shape, and for ``int8`` the values per scale."""

    codec: str
    shape: tuple[int, ...]
    block: int = 0


class Seal(msgspec.Struct, frozen=True, array_like=True):
    """How a sealed delta's chunks are encrypted (``schemas/sealing.py``): the scheme, the
    sender's ephemeral X25519 public key, the content key wrapped to each recipient, and the
    BLAKE2b-256 of each encrypted chunk (what a signature over the manifest covers)."""

    scheme: str
    ephemeral: bytes
    keys: dict[str, bytes]
    chunks: tuple[bytes, ...] = ()


DeltaKind = Literal["update", "broadcast", "residual"]


class DeltaManifest(Message, frozen=True, tag="manifest"):
    """The description of one chunked tensor set on the wire.

    The wire contract calls every chunked tensor set a "delta" (``DeltaManifest``,
    ``DeltaChunk``, ``schemas/delta.py``) after its first use; ``kind`` says what it holds:
    ``update``, a member's change since ``base_version``; ``broadcast``, a federation's whole
    model at ``version`` (not a difference); ``residual``, a federation's key layers.

    Each chunk carries its own xxh3-64 hash, so a corrupt chunk is caught before it is
    placed; ``content_hash`` (schema version 2) is the xxh3-128 hex digest of the payload's
    size, the chunk size and every chunk's hash in order (:func:`schemas.reassembly.
    derived_hash`), so it binds the chunks to this manifest with one hashing pass per side.
    In schema version 1 it was the xxh3-128 of the whole payload (still read).
    """

    update_id: str
    kind: DeltaKind
    tensors: tuple[TensorSpec, ...]
    total_bytes: int
    content_hash: str
    chunk_size: int
    chunk_count: int
    base_version: int
    sample_count: int = 0
    version: int = 0
    round: int = 0
    metrics: dict[str, float] = {}
    #: Signed deltas only (schemas.signing): the payload's BLAKE2b digest, and the sender's
    #: Ed25519 signature over this manifest with ``signature`` empty.
    digest: str = ""
    signature: bytes = b""
    #: Compressed tensors only: tensor name -> its codec (absent: sent as it is).
    codecs: dict[str, TensorCodec] = {}
    #: Sealed deltas only: chunks are ciphertext only the recipients named here can open.
    seal: Seal | None = None


class DeltaChunk(Message, frozen=True, tag="chunk"):
    """Bytes ``[index * chunk_size, ...)`` of an update's payload, with their xxh3-64 hash.

    ``data`` is decoded as a memoryview into the record's bytes: no copy until reassembly.
    """

    update_id: str
    index: int
    count: int
    hash: int
    data: memoryview


MembershipAction = Literal["joined", "heartbeat", "left", "expired"]


class MembershipEvent(Message, frozen=True, tag="membership"):
    """A participant joined, left or was found expired in a federation."""

    member: str
    action: MembershipAction
    role: Literal["client", "aggregator"] = "client"


class RoundEvent(Message, frozen=True, tag="round"):
    """A federation opened or closed a round, and why.

    ``arrived``: the members whose updates the round held (pending when it opened, folded when
    it closed); ``quorum``: the distinct senders its round core asks of it (0: not given).
    """

    round: int
    action: Literal["opened", "closed"]
    reason: str = ""
    arrived: int = 0
    quorum: int = 0
    version: int = 0


class RoundLedger(msgspec.Struct, frozen=True):
    """What an aggregator decided about its update topic in one round, by update id: the
    exactly-once accounting ``worldlm audit`` checks against what the children published.

    ``folded`` were aggregated (``declined`` is the part the strategy then left out, e.g. a
    non-finite delta); ``duplicates`` were dropped as already folded or pending (at-least-once
    re-delivery); ``superseded`` were replaced by a newer update of the same member before the
    close; ``refused`` maps the updates the round core refused (dead-lettered) to the reason.
    ``dead_lettered`` counts every record dead-lettered from the topic in the round, undecodable
    ones included. ``offsets`` maps ``topic:partition`` to the ``[start, end)`` the round's
    decisions cover: every record below ``end`` has been decided. ``residuals`` maps each
    federation whose residual-cache entry was an attention candidate of the close to the round
    that entry was cached in (which entry a live close reads depends on timing; a replay feeds
    the same one); None in ledgers recorded before it existed. ``parent_version`` is the
    parent broadcast the federation's model last took its backbone from (a sub-federation takes
    the newest broadcast it finds once it has submitted, which depends on timing too); None
    for the root and in older ledgers.
    """

    folded: tuple[str, ...] = ()
    declined: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()
    refused: dict[str, str] = {}
    dead_lettered: int = 0
    offsets: dict[str, tuple[int, int]] = {}
    residuals: dict[str, int] | None = None
    parent_version: int | None = None


class MetricsReport(Message, frozen=True, tag="metrics"):
    """Per-round figures a participant publishes for dashboards (loss, perplexity, bytes, ...).

    An aggregator's report also carries the round's :class:`RoundLedger`.
    """

    round: int
    node: str
    role: Literal["client", "aggregator"]
    values: dict[str, float] = {}
    ledger: RoundLedger | None = None


class DeadLetter(Message, frozen=True, tag="dead_letter"):
    """A rejected input, kept with the reason it was rejected and where it came from."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    payload: bytes = b""


#: Messages on the update and broadcast topics.
DeltaMessage = DeltaManifest | DeltaChunk
#: Messages on the run-wide event topic.
EventMessage = MembershipEvent | RoundEvent
AnyMessage = DeltaManifest | DeltaChunk | MembershipEvent | RoundEvent | MetricsReport | DeadLetter
