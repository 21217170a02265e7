"""MessagePack codec: one typed decoder per topic, and clear errors for bad bytes.

Decoding checks the envelope's schema version. A message of an unknown version is reported as
:class:`~schemas.errors.SchemaVersionError` even when its body no longer fits our types, so
an operator sees "unknown version" rather than a generic parse failure.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from schemas.errors import DecodeError, SchemaVersionError
from schemas.messages import (
    SUPPORTED_SCHEMA_VERSIONS,
    AnyMessage,
    DeadLetter,
    DeltaMessage,
    EventMessage,
    Message,
    MetricsReport,
)

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()


class _VersionProbe(msgspec.Struct):
    schema_version: Any = None


class _EnvelopeProbe(msgspec.Struct):
    envelope: _VersionProbe


_probe = msgspec.msgpack.Decoder(_EnvelopeProbe)


def encode(message: Message) -> bytes:
    """Encode a message as MessagePack (a map; any MessagePack reader can decode it)."""
    return _encoder.encode(message)


def encode_into(message: Message, buffer: bytearray, offset: int = 0) -> None:
    """Encode into a reusable buffer (avoids one allocation per chunk on hot paths)."""
    _encoder.encode_into(message, buffer, offset)


class Decoder(Generic[T]):
    """A typed decoder for one topic's message union, with version checking."""

    def __init__(self, type_: Any) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(type_)

    def decode(self, data: bytes | memoryview) -> T:
        """Decode ``data``; raise :class:`DecodeError` or :class:`SchemaVersionError`."""
        try:
            message = self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            version = _probe_version(data)
            if version is not None and version not in SUPPORTED_SCHEMA_VERSIONS:
                raise SchemaVersionError(version, SUPPORTED_SCHEMA_VERSIONS) from exc
            raise DecodeError(f"malformed message: {exc}") from exc
        version = message.envelope.schema_version  # type: ignore[attr-defined]
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise SchemaVersionError(version, SUPPORTED_SCHEMA_VERSIONS)
        return message


def _probe_version(data: bytes | memoryview) -> object | None:
    try:
        return _probe.decode(data).envelope.schema_version
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


#: Decoder for update (``L{k}.up``) and broadcast (``L{k}.down``) topics.
delta_decoder: Decoder[DeltaMessage] = Decoder(DeltaMessage)
#: Decoder for the run-wide event topic.
event_decoder: Decoder[EventMessage] = Decoder(EventMessage)
#: Decoder for the metrics topic.
metrics_decoder: Decoder[MetricsReport] = Decoder(MetricsReport)
#: Decoder for the dead-letter topic.
dead_letter_decoder: Decoder[DeadLetter] = Decoder(DeadLetter)
#: Decoder for any message (tools and dashboards that read every topic).
any_decoder: Decoder[AnyMessage] = Decoder(AnyMessage)
