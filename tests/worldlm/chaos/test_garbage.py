"""The bad input the campaign sends, fed to the aggregator's own intake and round core
without servers: every kind aimed at the aggregator is refused with a reason (dead-lettered
by the shell), none is admitted, and a forged update of another run or federation is refused
although its sender is a member."""

from __future__ import annotations

import random
from collections import Counter

from aiokafka import ConsumerRecord

from brokers.deltas import Received, Unreadable
from brokers.kafka import KafkaSettings
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat
from worldlm.chaos.bad_input import target_of
from worldlm.chaos.garbage import KINDS, garbage, zone_counts
from worldlm.core.federation import Accepted, FederationCore, Refused
from worldlm.participants.intake import Intake
from worldlm.training.workbench import federation_key, initial_weights


def consumer_record(
    topic: str, partition: int, offset: int, key: str, value: bytes
) -> ConsumerRecord:
    return ConsumerRecord(
        topic, partition, offset, 0, 0, key.encode(), value, None, len(key), len(value), ()
    )


def test_garbage_holds_every_kind_and_at_least_the_records_asked_for() -> None:
    h = flat("g")
    items = garbage(random.Random(1), target_of(h, "root"), 500)
    assert {i.kind for i in items} == set(KINDS)
    counts = zone_counts(items)
    assert sum(counts.values()) >= 500 and counts["aggregator"] > counts["nobody"] > 0
    again = garbage(random.Random(1), target_of(h, "root"), 500)
    assert [i.kind for i in again] == [i.kind for i in items]  # a seed gives the same kinds


def test_every_bad_input_aimed_at_the_aggregator_is_refused_with_a_reason() -> None:
    h = flat("g")
    target = target_of(h, "root")
    intake = Intake(KafkaSettings(bootstrap="unused:9092", partitions=2), target.up, "root")
    core = FederationCore(
        h, "root", initial_weights(h.run), key=federation_key(h, "root"), new_id=lambda: "sub"
    )
    items = [i for i in garbage(random.Random(2), target, 400) if i.zone == "aggregator"]
    reasons: Counter[str] = Counter()
    refused_items = 0
    offset = 0
    for item in items:
        refused = False
        for r in item.records:
            assert (r.topic, r.partition, r.key) == (
                Topics("g").up("root"),
                target.read_partition,
                "root",
            )
            result = intake.receiver.feed(
                consumer_record(r.topic, r.partition, offset, r.key, r.value)
            )
            offset += 1
            if isinstance(result, Unreadable):
                reasons[result.reason] += 1
                refused = True
            elif isinstance(result, Received):
                decision = core.offer(intake.make_offer(result))
                assert not isinstance(decision, Accepted), (item.kind, decision)
                assert isinstance(decision, Refused)
                reasons[decision.reason] += 1
                refused = True
        assert refused, item.kind
        refused_items += 1
    assert refused_items == len(items) and not core.pending
    assert {"malformed", "chunk_corrupt", "chunk_truncated", "unknown_schema_version"} <= set(
        reasons
    )
    assert {"unknown_sender", "bad_manifest", "wrong_run", "wrong_federation"} <= set(reasons)
