"""The broker watch's decisions, on plain probe outcomes and times (no broker)."""

from __future__ import annotations

import copy

from brokers.liveness import Back, BrokerLost, Gone, HealthCore, Lost, State

TOPICS = {"worldlm.r.events": 2, "worldlm.r.fed.root.up": 2}


def fail(core: HealthCore, *times: float) -> list[object]:
    return [core.failed(t) for t in times]


def test_a_memory_broker_failing_three_probes_over_the_grace_is_gone_at_once() -> None:
    core = HealthCore(keeps_log=False, lost_after_s=3.0)
    core.reached(0.0, TOPICS)
    assert fail(core, 10.0, 11.0) == [None, None]
    assert core.state is State.FAILING
    assert core.failed(12.0) is None  # three failures, but within the grace
    assert core.failed(13.0) == Gone("unreachable", 3.0)
    assert core.state is State.GONE
    assert core.failed(14.0) is None and core.reached(15.0, TOPICS) is None  # final


def test_two_slow_probes_are_not_a_loss_however_long_they_took() -> None:
    """A starved machine: each probe times out after seconds; three in a row are needed."""
    core = HealthCore(keeps_log=False, lost_after_s=3.0)
    assert fail(core, 0.0, 6.0) == [None, None]
    assert core.reached(7.0, TOPICS) is None  # back within the grace: nothing to report
    assert core.state is State.UP and core.failures == 0


def test_a_broker_that_keeps_its_log_is_waited_for_then_given_up() -> None:
    core = HealthCore(keeps_log=True, lost_after_s=3.0, wait_s=60.0)
    assert fail(core, 0.0, 1.0, 2.0, 3.0) == [None, None, None, Lost()]
    assert core.state is State.LOST
    assert core.reached(10.0, {}) == Back(10.0)  # said once, topics not checked
    assert core.state is State.UP
    assert fail(core, 20.0, 21.0, 23.0)[-1] == Lost()
    assert core.failed(82.0) is None  # 62 s into the outage: still waited for
    assert core.failed(83.0) == Gone("unreachable", 63.0)


def test_a_memory_broker_that_answers_without_its_topics_came_back_empty() -> None:
    core = HealthCore(keeps_log=False)
    core.reached(0.0, TOPICS)
    core.reached(1.0, {**TOPICS, "worldlm.r.metrics": 2})  # new topics are learnt
    assert core.failed(2.0) is None
    gone = core.reached(2.5, {"worldlm.r.events": 1, "worldlm.r.metrics": 2})
    assert gone == Gone("emptied", 0.5, ("worldlm.r.events", "worldlm.r.fed.root.up"))


def test_a_lost_broker_is_one_line_naming_it_and_copies_whole() -> None:
    lost = BrokerLost("127.0.0.1:9092", Gone("unreachable", 3.0), keeps_log=False)
    assert lost.describe(4) == "Kafka at 127.0.0.1:9092 unreachable (lost at round 4)"
    waited = BrokerLost("k:9092", Gone("unreachable", 125.0), keeps_log=True)
    assert str(waited) == "Kafka at k:9092 unreachable (lost; not back after 125 s)"
    emptied = BrokerLost("k:9092", Gone("emptied", 1.0, ("a", "b")), keeps_log=False)
    assert (
        emptied.describe()
        == "Kafka at k:9092 unreachable (lost; it came back without 2 of its topics)"
    )
    twin = copy.copy(waited)  # aiokafka copies the error it fails each pending send with
    assert (twin.bootstrap, twin.gone, twin.keeps_log, str(twin)) == (
        "k:9092",
        waited.gone,
        True,
        str(waited),
    )
