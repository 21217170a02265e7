"""The clock is a pure time model: bytes, bandwidth, latency, records and declared compute
give the same seconds everywhere, and its agenda hands events out in time order."""

from __future__ import annotations

import math

import pytest

from worldlm.config.links import ClockConfig, LinkConfig, Links
from worldlm.lab.clock import FETCH_BYTES, PAYLOAD_PER_WIRE_BYTE, Agenda, Clock, transfer_s, wire_s

MB = 1_000_000


def test_loopback_moves_any_size_in_no_time() -> None:
    clock = Clock()
    assert clock.up_s("anyone", 50 * MB) == 0.0
    assert clock.down_s("anyone", 50 * MB) == 0.0
    assert clock.work_s("anyone", steps=10, evaluated=True) == 0.0


def test_bandwidth_alone_is_payload_bits_over_the_rate_less_the_headers() -> None:
    link = LinkConfig(bandwidth_mbit=100)
    assert PAYLOAD_PER_WIRE_BYTE == pytest.approx(0.9564, abs=1e-4)
    assert wire_s(link, 100 * MB) == pytest.approx(8.0 / PAYLOAD_PER_WIRE_BYTE)
    assert transfer_s(link, 100 * MB, exchanges=7) == wire_s(link, 100 * MB)  # no latency


def test_each_record_after_the_first_costs_a_round_trip_upward() -> None:
    links = Links((("c", LinkConfig(bandwidth_mbit=8, latency_ms=100)),))
    clock = Clock(links, chunk_bytes=1 * MB)
    wire = 2.5 / PAYLOAD_PER_WIRE_BYTE  # 2.5 MB at 1 MB/s, less the headers
    # a manifest and 3 chunks = 4 records: the wire time and (2*4-1) one-way latencies
    assert clock.up_s("c", int(2.5 * MB)) == pytest.approx(wire + 0.7)
    # a broadcast under one fetch: one latency
    assert clock.down_s("c", int(2.5 * MB)) == pytest.approx(wire + 0.1)
    # two fetches: one more round trip
    two = (FETCH_BYTES + 1) / MB / PAYLOAD_PER_WIRE_BYTE
    assert clock.down_s("c", FETCH_BYTES + 1) == pytest.approx(two + 0.3)


def test_compute_is_declared_and_scaled_by_the_nodes_speed() -> None:
    clock_cfg = ClockConfig(step_s=0.1, eval_s=0.5, aggregate_s=0.2)
    links = Links((("slow", LinkConfig(compute=0.5)),), clock_cfg)
    clock = Clock(links)
    assert clock.work_s("fast", steps=10, evaluated=True) == pytest.approx(1.5)
    assert clock.work_s("fast", steps=10, evaluated=False) == pytest.approx(1.0)
    assert clock.work_s("slow", steps=10, evaluated=True) == pytest.approx(3.0)
    assert clock.aggregate_s("slow") == pytest.approx(0.4)


def test_an_exact_id_beats_a_pattern_and_patterns_go_in_file_order() -> None:
    inside, across, slow = (LinkConfig(1000, 5), LinkConfig(100, 150), LinkConfig(20, 150))
    links = Links((("*", inside), ("east-asian", slow), ("e*", across)))
    assert links.edge("es-0") == inside  # "*" comes first
    assert links.edge("east-asian") == slow
    links = Links((("e*", across), ("*", inside)))
    assert links.edge("es-0") == across
    assert links.edge("ru-0") == inside


def test_the_agenda_orders_by_time_then_by_insertion() -> None:
    agenda: Agenda[str] = Agenda()
    for at, name in ((2.0, "c"), (1.0, "a"), (1.0, "b"), (0.0, "first")):
        agenda.add(at, name)
    got = []
    while agenda:
        got.append((agenda.pop(), agenda.now))
    assert got == [("first", 0.0), ("a", 1.0), ("b", 1.0), ("c", 2.0)]
    with pytest.raises(ValueError, match="past"):
        agenda.add(1.0, "late")


def test_all_zero_times_keep_first_in_first_out() -> None:
    agenda: Agenda[int] = Agenda()
    for i in range(5):
        agenda.add(0.0, i)
    assert [agenda.pop() for _ in range(5)] == list(range(5))
    assert math.isclose(agenda.now, 0.0)
