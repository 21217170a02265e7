"""The codec: typed round trips, interoperability with plain msgpack, and clear errors."""

from __future__ import annotations

import msgpack
import msgspec
import pytest

from schemas.codec import any_decoder, delta_decoder, encode, event_decoder
from schemas.errors import DecodeError, SchemaVersionError
from schemas.messages import (
    SCHEMA_VERSION,
    DeadLetter,
    DeltaChunk,
    Envelope,
    MembershipEvent,
    MetricsReport,
    RoundEvent,
)

ENV = Envelope(run="r1", sender="client-a", federation="eu", timestamp=1.5)


def test_membership_event_round_trips_through_typed_decoder() -> None:
    event = MembershipEvent(envelope=ENV, member="client-a", action="joined")
    assert event_decoder.decode(encode(event)) == event


def test_any_decoder_dispatches_each_message_type_by_tag() -> None:
    messages = [
        RoundEvent(envelope=ENV, round=3, action="closed", reason="quorum", arrived=2, quorum=2),
        MetricsReport(envelope=ENV, round=1, node="eu", role="aggregator", values={"ppl": 12.5}),
        DeadLetter(
            envelope=ENV,
            reason="malformed",
            detail="x",
            source_topic="t",
            source_partition=0,
            source_offset=7,
            payload=b"\x00",
        ),
    ]
    decoded = [any_decoder.decode(encode(m)) for m in messages]
    assert decoded == messages
    assert [type(m) for m in decoded] == [RoundEvent, MetricsReport, DeadLetter]


def test_message_decodes_with_plain_msgpack_package() -> None:
    chunk = DeltaChunk(
        envelope=ENV, update_id="u1", index=2, count=5, hash=123, data=memoryview(b"abc")
    )
    plain = msgpack.unpackb(encode(chunk), raw=False)
    assert plain["type"] == "chunk"
    assert plain["envelope"] == {
        "run": "r1",
        "sender": "client-a",
        "federation": "eu",
        "schema_version": SCHEMA_VERSION,
        "timestamp": 1.5,
    }
    assert (plain["update_id"], plain["index"], plain["count"], plain["hash"]) == ("u1", 2, 5, 123)
    assert plain["data"] == b"abc"


def test_plain_msgpack_message_decodes_with_typed_decoder() -> None:
    raw = msgpack.packb(
        {
            "type": "membership",
            "envelope": {
                "run": "r",
                "sender": "c",
                "federation": "f",
                "schema_version": 1,
                "timestamp": 2.0,
            },
            "member": "c",
            "action": "left",
        }
    )
    event = event_decoder.decode(raw)
    assert isinstance(event, MembershipEvent) and event.action == "left"


def test_chunk_data_decodes_as_view_into_the_record_without_copy() -> None:
    record = encode(
        DeltaChunk(
            envelope=ENV, update_id="u", index=0, count=1, hash=0, data=memoryview(b"x" * 1000)
        )
    )
    chunk = delta_decoder.decode(record)
    assert isinstance(chunk, DeltaChunk)
    assert isinstance(chunk.data, memoryview) and chunk.data.obj is record


def test_malformed_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match="malformed"):
        delta_decoder.decode(b"\xc1\xff\x00not msgpack")


def test_wrong_message_type_for_topic_raises_decode_error() -> None:
    event = encode(MembershipEvent(envelope=ENV, member="c", action="joined"))
    with pytest.raises(DecodeError):
        delta_decoder.decode(event)


def test_unknown_schema_version_raises_schema_version_error() -> None:
    future = msgspec.structs.replace(ENV, schema_version=99)
    with pytest.raises(SchemaVersionError) as info:
        event_decoder.decode(encode(MembershipEvent(envelope=future, member="c", action="joined")))
    assert info.value.version == 99 and info.value.reason == "unknown_schema_version"


def test_unknown_schema_version_with_incompatible_body_still_reports_version() -> None:
    raw = msgpack.packb(
        {
            "type": "membership",
            "envelope": {"run": "r", "sender": "c", "federation": "f", "schema_version": 3},
            "member": ["a", "new", "shape"],
            "action": 5,
        }
    )
    with pytest.raises(SchemaVersionError):
        event_decoder.decode(raw)


def test_envelope_timestamp_defaults_to_now() -> None:
    env = Envelope(run="r", sender="s", federation="f")
    assert env.timestamp > 1.7e9
