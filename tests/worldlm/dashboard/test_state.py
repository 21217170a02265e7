"""DashboardState folds messages and Redis snapshots into the view: pure, no servers."""

from __future__ import annotations

import json
from typing import Any

from schemas.messages import (
    DeadLetter,
    Envelope,
    MembershipEvent,
    MetricsReport,
    RoundEvent,
)
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.dashboard.state import DashboardState

RUN = "t-dash"


def env(sender: str, federation: str, ts: float = 1000.0) -> Envelope:
    return Envelope(run=RUN, sender=sender, federation=federation, timestamp=ts)


def client_report(node: str, fed: str, rnd: int, ppl: float, ts: float = 1000.0) -> MetricsReport:
    return MetricsReport(
        envelope=env(node, fed, ts),
        round=rnd,
        node=node,
        role="client",
        values={"val_ppl": ppl, "val_loss": 1.0, "bytes_in": 100.0, "bytes_out": 50.0},
    )


def agg_report(fed: str, rnd: int, ts: float = 1000.0, **values: float) -> MetricsReport:
    base = {"accepted": 2.0, "staleness_mean": 0.0, "staleness_max": 0.0, "lag": 0.0}
    return MetricsReport(
        envelope=env(fed, fed, ts), round=rnd, node=fed, role="aggregator", values=base | values
    )


def member(
    who: str, fed: str, action: str, role: str = "client", ts: float = 1000.0
) -> MembershipEvent:
    return MembershipEvent(envelope=env(who, fed, ts), member=who, action=action, role=role)  # type: ignore[arg-type]


def tree() -> Hierarchy:
    return parse(
        {
            "run": {"id": RUN},
            "defaults": {"schedule": {"deadline_s": 30.0, "quorum": 0.5, "min_quorum": 1}},
            "federations": {
                "root": {},
                "latin": {"parent": "root"},
                # force: one member cannot carry DP noise; only the DP flag is under test
                "slavic": {"parent": "root", "dp": {"noise_multiplier": 1.0, "force": True}},
            },
            "clients": {
                "fr-0": {"federation": "latin", "partition": "p"},
                "es-0": {"federation": "latin", "partition": "p"},
                "ru-0": {"federation": "slavic", "partition": "q"},
            },
        }
    )


def test_tree_from_config_has_parents_children_and_clients_before_any_record() -> None:
    view = DashboardState(RUN, tree()).snapshot()
    feds = view["federations"]
    assert view["roots"] == ["root"]
    assert feds["root"]["children"] == ["latin", "slavic"] and feds["root"]["level"] == 0
    assert feds["latin"]["clients"] == ["es-0", "fr-0"] and feds["latin"]["level"] == 1
    assert feds["slavic"]["dp"] is True and feds["latin"]["dp"] is False
    assert json.loads(json.dumps(view)) == view  # JSON-ready


def test_tree_without_config_is_built_from_membership_and_metrics() -> None:
    s = DashboardState(RUN)
    s.apply(member("latin", "root", "joined", role="aggregator"))
    s.apply(member("fr-0", "latin", "joined"))
    s.apply(client_report("es-0", "latin", 0, 50.0))
    s.apply(agg_report("root", 0))
    view = s.snapshot()
    assert view["roots"] == ["root"]
    assert view["federations"]["latin"]["parent"] == "root"
    assert view["federations"]["latin"]["clients"] == ["es-0", "fr-0"]
    assert view["federations"]["root"]["children"] == ["latin"]
    assert view["federations"]["latin"]["level"] == 1


def test_membership_transitions_joined_left_expired_and_redis_roster() -> None:
    s = DashboardState(RUN, tree())
    s.apply(member("fr-0", "latin", "joined", ts=10))
    s.apply(member("es-0", "latin", "joined", ts=10))
    s.apply(member("fr-0", "latin", "left", ts=20))
    s.apply(RoundEvent(envelope=env("latin", "latin", 25), round=0, action="opened"))
    # An expiry event, then a roster read later in which es-0 is live again (it rejoined).
    s.apply(member("es-0", "latin", "expired", ts=30))
    members = s.snapshot()["federations"]["latin"]["members"]
    assert {m: v["status"] for m, v in members.items()} == {"fr-0": "left", "es-0": "expired"}
    s.apply_roster("latin", live=["es-0"], expired=[], at=40)
    assert s.federation_view("latin")["members"]["es-0"]["status"] == "live"
    # An older observation never overrides a newer one.
    s.apply(member("es-0", "latin", "expired", ts=35))
    assert s.federation_view("latin")["members"]["es-0"]["status"] == "live"
    assert s.client_view("fr-0")["status"] == "left"
    assert s.federation_view("latin")["live_members"] == 1


def test_per_federation_perplexity_is_the_mean_of_its_clients_by_round() -> None:
    s = DashboardState(RUN, tree())
    for node, r, ppl in [("fr-0", 0, 100.0), ("es-0", 0, 300.0), ("fr-0", 1, 50.0)]:
        s.apply(client_report(node, "latin", r, ppl))
    s.apply(client_report("ru-0", "slavic", 0, 70.0))
    view = s.snapshot()
    assert view["federations"]["latin"]["ppl"] == [[0, 200.0], [1, 50.0]]
    assert view["clients"]["fr-0"]["ppl"] == [[0, 100.0], [1, 50.0]]
    # Latest of every client at any depth: root sees (50 + 300 + 70) / 3.
    assert view["federations"]["root"]["ppl_latest"] == (50.0 + 300.0 + 70.0) / 3


def test_barrier_fill_round_and_deadline_from_events_redis_and_policy() -> None:
    s = DashboardState(RUN, tree())
    for cid in ("fr-0", "es-0"):
        s.apply(member(cid, "latin", "joined", ts=99))
    s.apply(RoundEvent(envelope=env("latin", "latin", 100.0), round=3, action="opened"))
    f = s.federation_view("latin")
    assert f["round"] == 3 and f["round_open"] and f["deadline_at"] == 130.0
    assert (f["arrived"], f["quorum"]) == (0, 1)  # no quorum given: max(1, ceil(2 live x 0.5))
    s.apply_barrier("latin", 3, arrived=1, quorum=2, closed=False)
    s.apply_barrier("latin", 2, arrived=9, quorum=9, closed=True)  # another round: ignored
    f = s.federation_view("latin")
    assert (f["arrived"], f["quorum"], f["barrier_closed"]) == (1, 2, False)
    s.apply(
        RoundEvent(
            envelope=env("latin", "latin", 105.0),
            round=3,
            action="closed",
            reason="deadline",
            arrived=1,
            quorum=2,
            version=4,
        )
    )
    f = s.federation_view("latin")
    assert not f["round_open"] and f["deadline_at"] is None and f["last_close_reason"] == "deadline"
    assert (f["arrived"], f["quorum"], f["barrier_closed"], f["version"]) == (1, 2, True, 4)


def test_round_events_carry_the_cores_quorum_apart_from_the_arrivals() -> None:
    """The quorum is what the round core asks, the arrivals what came: a round that opens
    with an update pending (after a restart) and closes over its quorum shows both."""
    s = DashboardState(RUN, tree())
    opened = RoundEvent(env("latin", "latin", 100.0), 5, "opened", arrived=1, quorum=2)
    s.apply(opened)
    f = s.federation_view("latin")
    assert (f["arrived"], f["quorum"], f["barrier_closed"]) == (1, 2, False)
    s.apply(RoundEvent(env("latin", "latin", 101.0), 5, "closed", "quorum", arrived=3, quorum=2))
    f = s.federation_view("latin")
    assert (f["arrived"], f["quorum"], f["barrier_closed"]) == (3, 2, True)
    # A close that names no quorum (an older recording) keeps the round's, never its arrivals.
    s.apply(RoundEvent(env("latin", "latin", 102.0), 6, "opened", quorum=2))
    s.apply(RoundEvent(env("latin", "latin", 103.0), 6, "closed", "deadline", arrived=1))
    f = s.federation_view("latin")
    assert (f["arrived"], f["quorum"]) == (1, 2)


def test_refused_updates_and_unreadable_records_are_two_figures() -> None:
    s = DashboardState(RUN, tree())
    s.apply(agg_report("latin", 0, rejected=1.0, unreadable=40.0))
    f = s.federation_view("latin")
    assert (f["rejected"], f["unreadable"]) == (1.0, 40.0)


def test_staleness_histogram_exact_from_redis_else_from_metrics() -> None:
    s = DashboardState(RUN, tree())
    s.apply(agg_report("latin", 0, accepted=3, staleness_mean=0, staleness_max=0))
    s.apply(agg_report("latin", 1, accepted=1, staleness_mean=2, staleness_max=2))
    # Round 2: Redis says exactly who was how stale; round 3: only the report (mean 1, max 2).
    s.apply(agg_report("latin", 2, accepted=2, staleness_mean=0.5, staleness_max=1))
    s.apply_staleness("latin", 2, {"fr-0": 0, "es-0": 1})
    s.apply(agg_report("latin", 3, accepted=3, staleness_mean=1.0, staleness_max=2))
    # round 3 keeps its mean and max: one update at 2, the other two at 1 and 0.
    assert s.staleness_histogram("latin") == {0: 3 + 1 + 1, 1: 1 + 1, 2: 1 + 1}
    assert s.federation_view("latin")["staleness"] == [[0, 5], [1, 2], [2, 2]]
    assert (
        sum(n for _, n in s.federation_view("latin")["staleness"])
        == 9
        == (s.federation_view("latin")["accepted"])
    )


def test_rejected_inputs_counted_by_reason_and_attributed_to_the_rejecting_federation() -> None:
    s = DashboardState(RUN, tree())

    def letter(reason: str, offset: int) -> DeadLetter:
        # An aggregator's envelope names its parent; it is the sender that rejected.
        return DeadLetter(
            envelope=env("latin", "root"),
            reason=reason,
            detail=f"{reason} detail",
            source_topic="worldlm.t.fed.eu.up",
            source_partition=0,
            source_offset=offset,
        )

    s.apply(letter("nan", 1), at=("dl", 0, 0))
    s.apply(letter("nan", 2), at=("dl", 0, 1))
    s.apply(letter("unknown_sender", 3), at=("dl", 0, 2))
    view = s.snapshot()
    assert view["rejected_by_reason"] == {"nan": 2, "unknown_sender": 1}
    assert ["latin", "nan", 2] in view["rejected_by_federation"]
    assert view["dead_letters"][-1]["source"] == "worldlm.t.fed.eu.up[0]@3"


def test_dp_epsilon_series_and_latest_from_aggregator_metrics() -> None:
    s = DashboardState(RUN, tree())
    s.apply(agg_report("slavic", 0, **{"dp/epsilon": 1.5, "dp/delta": 1e-5}))
    s.apply(agg_report("slavic", 1, **{"dp/epsilon": 2.25}))
    f = s.federation_view("slavic")
    assert f["epsilon"] == 2.25 and f["epsilon_series"] == [[0, 1.5], [1, 2.25]]
    assert s.federation_view("latin")["epsilon"] is None


def test_levels_sum_updates_and_bytes_and_lag_per_aggregator() -> None:
    s = DashboardState(RUN, tree())
    s.apply(agg_report("latin", 0, ts=0.0, accepted=2, bytes_in=100.0, bytes_out=10.0, lag=3))
    s.apply(agg_report("slavic", 0, ts=10.0, accepted=1, bytes_in=50.0, bytes_out=5.0))
    s.apply(agg_report("root", 0, ts=10.0, accepted=2, bytes_in=80.0))
    levels = s.levels()
    assert levels[1]["updates"] == 3 and levels[1]["bytes_in"] == 150.0
    assert levels[1]["updates_per_s"] == (3 - 2) / 10.0
    assert levels[0]["updates"] == 2
    assert s.federation_view("latin")["lag"] == 3


def feed(s: DashboardState, records: list[tuple[Any, tuple[str, int, int]]]) -> None:
    for message, at in records:
        s.apply(message, at)


def test_replaying_the_same_records_changes_nothing() -> None:
    records: list[tuple[Any, tuple[str, int, int]]] = [
        (member("fr-0", "latin", "joined"), ("events", 0, 0)),
        (RoundEvent(envelope=env("latin", "latin"), round=0, action="opened"), ("events", 0, 1)),
        (client_report("fr-0", "latin", 0, 80.0), ("metrics", 0, 0)),
        (agg_report("latin", 0, bytes_in=10.0), ("metrics", 1, 0)),
        (
            DeadLetter(
                envelope=env("latin", "root"),
                reason="nan",
                detail="",
                source_topic="x",
                source_partition=0,
                source_offset=0,
            ),
            ("dead", 0, 0),
        ),
    ]
    once, twice = DashboardState(RUN, tree()), DashboardState(RUN, tree())
    feed(once, records)
    feed(twice, records)
    feed(twice, records)
    a, b = once.snapshot(), twice.snapshot()
    for view in (a, b):
        view.pop("now"), view.pop("seq"), view.pop("counters")
    assert a == b
    assert twice.counters["duplicates"] == len(records)


def test_deltas_carry_changed_entities_and_polls_that_change_nothing_are_silent() -> None:
    s = DashboardState(RUN, tree())
    s.take_delta()
    assert s.take_delta() is None
    s.apply(client_report("fr-0", "latin", 0, 80.0))
    delta = s.take_delta()
    assert delta is not None
    assert set(delta["clients"]) == {"fr-0"} and "latin" in delta["federations"]
    s.apply_roster("latin", live=[], expired=[], at=5.0)
    s.apply_barrier("latin", 0, 0, 0, False)
    assert s.take_delta() is None
    s.apply_roster("latin", live=["fr-0"], expired=[], at=6.0)
    delta = s.take_delta()
    assert delta is not None and delta["federations"]["latin"]["members"]["fr-0"]["status"] == (
        "live"
    )


def test_leading_replica_is_shown_and_a_repeated_read_is_silent() -> None:
    s = DashboardState(RUN, tree())
    s.take_delta()
    s.apply_leader("latin", "host-a:101:abcd")
    delta = s.take_delta()
    assert delta is not None and delta["federations"]["latin"]["leader"] == "host-a:101:abcd"
    s.apply_leader("latin", "host-a:101:abcd")
    assert s.take_delta() is None
    s.apply_leader("latin", "host-b:202:ef01")  # a standby took over
    delta = s.take_delta()
    assert delta is not None and delta["federations"]["latin"]["leader"] == "host-b:202:ef01"
    s.apply_leader("nowhere", "x")  # unknown federations are not invented by a Redis read
    assert "nowhere" not in s.federations
