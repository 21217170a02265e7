"""The Prometheus exposition shows the dashboard's figures, parsed by prometheus-client."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import DeadLetter, Envelope, RoundEvent
from tests.worldlm.dashboard.test_state import RUN, agg_report, client_report, member, tree
from worldlm.dashboard.prometheus import exposition, registry_for
from worldlm.dashboard.state import DashboardState


def samples(state: DashboardState) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = exposition(registry_for(state)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset({"run": RUN, **kv}.items())


def test_exposition_has_gauges_per_federation_client_level_and_rejection_reason() -> None:
    s = DashboardState(RUN, tree())
    s.apply(member("fr-0", "latin", "joined"))
    s.apply(
        RoundEvent(
            envelope=Envelope(RUN, "latin", "latin", timestamp=50.0), round=2, action="opened"
        )
    )
    s.apply_barrier("latin", 2, arrived=1, quorum=2, closed=False)
    s.apply_leader("latin", "host-a:7:beef")
    s.apply(client_report("fr-0", "latin", 2, 42.0))
    s.apply(agg_report("slavic", 0, lag=7, bytes_in=300.0, **{"dp/epsilon": 3.5}))
    s.apply(
        DeadLetter(
            envelope=Envelope(RUN, "latin", "root"),
            reason="nan",
            detail="",
            source_topic="x",
            source_partition=0,
            source_offset=0,
        )
    )
    got = samples(s)
    fed = labels(federation="latin")
    assert got[("worldlm_federation_round", fed)] == 2
    assert got[("worldlm_federation_barrier_arrived", fed)] == 1
    assert got[("worldlm_federation_barrier_quorum", fed)] == 2
    assert got[("worldlm_federation_round_deadline_timestamp_seconds", fed)] == 50.0 + 30.0
    assert got[("worldlm_federation_members", labels(federation="latin", status="live"))] == 1
    assert got[("worldlm_federation_val_ppl", fed)] == 42.0
    assert got[("worldlm_client_val_ppl", labels(client="fr-0", federation="latin"))] == 42.0
    slavic = labels(federation="slavic")
    assert got[("worldlm_aggregator_consumer_lag", slavic)] == 7
    assert got[("worldlm_federation_dp_epsilon", slavic)] == 3.5
    assert got[("worldlm_federation_bytes", labels(federation="slavic", direction="in"))] == 300
    stale = labels(federation="slavic", staleness="0")
    assert got[("worldlm_federation_accepted_updates_by_staleness", stale)] == 2
    assert got[("worldlm_level_updates_total", labels(level="1"))] == 2
    assert got[("worldlm_rejected_inputs_total", labels(federation="latin", reason="nan"))] == 1
    lead = labels(federation="latin", leader="host-a:7:beef")
    assert got[("worldlm_federation_leader_info", lead)] == 1
    assert not any(
        name == "worldlm_federation_leader_info" and dict(k)["federation"] == "slavic"
        for name, k in got
    )  # no lease read for slavic: no series


def test_each_dashboard_has_its_own_registry() -> None:
    a, b = DashboardState(RUN, tree()), DashboardState("other", None)
    assert registry_for(a) is not registry_for(b)
    assert ("worldlm_federation_round", labels(federation="root")) in samples(a)
    assert not any(name == "worldlm_federation_round" for name, _ in samples(b))
