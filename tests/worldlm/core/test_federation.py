"""The federation core on plain tensors, no broker: every admission reason, the sync and async
close rules, staleness, the exchange with the parent (only the backbone goes up) and
snapshot/restore."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from tests.worldlm.participants.helpers import hierarchy
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.federation import (
    Accepted,
    Duplicate,
    FederationCore,
    Offer,
    Refused,
    take_parent,
)
from worldlm.training.workbench import federation_key, initial_weights

IDS = itertools.count()
NORM = initial_weights(
    hierarchy("n", federations={"root": {}}, clients={"fr-0": ("root", "lang-fr")}).run
)["model.norm.weight"].shape[0]


def tree(**defaults: Any) -> Hierarchy:
    return hierarchy(
        "core",
        federations={"root": {}, "latin": {"parent": "root", "internal_rounds": 2}},
        clients={"fr-0": ("latin", "lang-fr"), "es-0": ("latin", "lang-es")},
        defaults={"residual": {"links": "none"}, **defaults},
    )


def core(h: Hierarchy | None = None, fid: str = "latin") -> FederationCore:
    h = h or tree()
    return FederationCore(
        h, fid, initial_weights(h.run), key=federation_key(h, fid), new_id=lambda: f"id-{next(IDS)}"
    )


def delta(c: FederationCore, seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(t.shape, generator=g) * scale
        for n, t in c.weights.items()
        if t.is_floating_point()
    }


def offer(
    c: FederationCore, sender: str, seed: int = 0, *, uid: str | None = None, **fields: Any
) -> Offer:
    values: dict[str, Any] = {
        "delta": delta(c, seed),
        "samples": 10,
        "base_version": c.meta.version,
    } | fields
    return Offer(sender, uid or f"{sender}-{next(IDS)}", **values)


def reason(c: FederationCore, o: Offer) -> str:
    decision = c.offer(o)
    assert isinstance(decision, Refused), decision
    return decision.reason


# -- admission -------------------------------------------------------------------------


def test_a_fitting_update_from_a_member_is_accepted_with_its_staleness() -> None:
    c = core()
    decision = c.offer(offer(c, "fr-0"))
    assert decision == Accepted("fr-0", decision.update_id, 0)  # type: ignore[union-attr]
    assert [p.sender for p in c.pending] == ["fr-0"] and c.counters["updates_accepted"] == 1


def test_the_same_update_id_twice_is_a_duplicate_not_a_second_arrival() -> None:
    c = core()
    o = offer(c, "fr-0", uid="u1")
    assert isinstance(c.offer(o), Accepted)
    assert c.offer(o) == Duplicate("u1")
    assert len(c.pending) == 1 and c.counters["updates_duplicate"] == 1


@pytest.mark.parametrize(
    ("sender", "fields", "expected"),
    [
        ("fr-0", {"kind": "broadcast"}, "wrong_kind"),
        ("fr-0", {"run": "another-run"}, "wrong_run"),
        ("fr-0", {"federation": "another-federation"}, "wrong_federation"),
        ("de-0", {}, "unknown_sender"),
        ("fr-0", {"unverified": ("bad_signature", "fr-0: does not verify")}, "bad_signature"),
        ("fr-0", {"samples": 0}, "no_samples"),
        ("fr-0", {"base_version": 5}, "future_version"),
        ("fr-0", {"delta": {"nope.weight": torch.ones(2)}}, "unknown_tensor"),
        ("fr-0", {"delta": {"model.norm.weight": torch.ones(3)}}, "bad_shape"),
        ("fr-0", {"delta": {"model.norm.weight": torch.full((NORM,), float("nan"))}}, "non_finite"),
    ],
)
def test_each_reason_an_update_cannot_be_folded_is_named_and_counted(
    sender: str, fields: dict[str, Any], expected: str
) -> None:
    c = core()
    assert reason(c, offer(c, sender, **fields)) == expected
    assert c.pending == [] and c.counters[f"rejected_{expected}"] == 1


def test_an_update_older_than_the_staleness_bound_is_refused_and_within_it_weighed() -> None:
    c = core(tree(schedule={"mode": "async", "buffer": 1, "staleness_bound": 1}))
    for seed in range(2):  # two rounds: version 2
        c.offer(offer(c, "fr-0", seed))
        c.close("buffer", [], members=2)
    assert c.meta.version == 2
    assert reason(c, offer(c, "es-0", base_version=0)) == "stale"
    assert c.offer(offer(c, "es-0", base_version=1)) == Accepted("es-0", c.pending[0].update_id, 1)
    closed = c.close("buffer", [], members=2)
    assert closed.values["staleness_max"] == 1.0


def test_a_newer_update_from_the_same_member_replaces_its_older_one() -> None:
    c = core()
    c.offer(offer(c, "fr-0", 1))
    second = offer(c, "fr-0", 2)
    c.offer(second)
    assert [p.update_id for p in c.pending] == [second.update_id]


# -- closing -------------------------------------------------------------------------------


def test_sync_closes_at_the_quorum_of_live_members_or_at_the_deadline() -> None:
    c = core(tree(schedule={"quorum": 0.5, "deadline_s": 10.0}))
    c.open_round(100.0)
    assert c.close_reason(100.0, members=2) is None  # nothing pending, and not yet its deadline
    c.offer(offer(c, "fr-0"))
    assert c.close_reason(101.0, members=2) == "quorum"  # 1 of 2 at quorum 0.5
    full = core(tree(schedule={"deadline_s": 10.0, "min_quorum": 2}))
    full.open_round(100.0)
    full.offer(offer(full, "fr-0"))
    assert full.close_reason(105.0, members=1) is None  # min_quorum 2 although one is live
    assert full.close_reason(110.5, members=1) == "deadline"


def test_a_sync_round_counts_declared_members_so_a_dead_one_is_waited_for_until_the_deadline() -> (
    None
):
    c = core(tree(schedule={"deadline_s": 10.0}))  # quorum 1.0 of latin's fr-0 and es-0
    assert c.expected(live=1) == 2  # es-0's heartbeat expired: it still counts
    assert c.expected(live=1, departed={"es-0"}) == 1  # it said goodbye: it does not
    c.open_round(100.0)
    c.offer(offer(c, "fr-0"))
    members = c.expected(live=1)
    assert c.close_reason(105.0, members) is None  # waits for es-0 ...
    assert c.close_reason(110.5, members) == "deadline"  # ... until the deadline
    assert c.close_reason(101.0, c.expected(live=1, departed={"es-0"})) == "quorum"
    live = core(tree(schedule={"deadline_s": 10.0, "wait_for": "live"}))
    assert live.expected(live=1) == 1  # the old rule: only those heartbeating now
    live.open_round(100.0)
    live.offer(offer(live, "fr-0"))
    assert live.close_reason(101.0, live.expected(live=1)) == "quorum"


def test_a_new_round_gets_its_own_clock_and_a_reopened_one_keeps_it() -> None:
    c = core(tree(schedule={"deadline_s": 10.0}))
    c.open_round(100.0)
    for sender in ("fr-0", "es-0"):
        c.offer(offer(c, sender))
    c.close("quorum", [], 2)
    c.offer(offer(c, "fr-0"))  # sent early, e.g. while the federation waited for its parent
    c.open_round(200.0)  # round 1: its deadline counts from now, not from round 0's opening
    assert c.close_reason(205.0, 2) is None and c.close_reason(210.5, 2) == "deadline"
    restarted = core(tree(schedule={"deadline_s": 10.0}))
    restarted.restore(c.snapshot())
    restarted.open_round(207.0)  # the same round opened again after a restart: same clock
    assert restarted.close_reason(210.5, 2) == "deadline"


def test_a_sync_round_with_nothing_pending_closes_empty_at_its_deadline_keeping_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = core(tree(schedule={"deadline_s": 10.0}))
    before = {n: t.clone() for n, t in c.weights.items()}
    c.open_round(100.0)
    assert c.close_reason(105.0, members=2) is None  # before its deadline it stays open
    assert c.close_reason(110.0, members=2) is None
    assert c.close_reason(110.5, members=2) == "empty"

    def refuse(*_: object) -> None:
        raise AssertionError("the strategy is not called on zero updates")

    monkeypatch.setattr(c.strategy, "aggregate", refuse)
    cached = {n: t + 1.0 for n, t in c.weights.items() if n in c.key}
    closed = c.close("empty", c.residual_entries({"slavic": (0, cached)}), members=2)
    assert same(c.weights, before)  # the model stays
    assert (closed.reason, closed.round, closed.version, c.meta.round) == ("empty", 0, 1, 1)
    assert closed.folded == () and closed.residual is None  # nothing new for the cache
    assert closed.ledger.residuals == {} and closed.values["residuals"] == 0.0
    assert c.counters["rounds_empty"] == c.counters["rounds_closed"] == 1
    assert closed.values["rounds_empty"] == 1.0 and closed.values["arrived"] == 0.0
    assert not closed.exchange and c.open  # one of latin's two internal rounds
    # The next round goes on as after any close: an update on the new version closes it.
    monkeypatch.undo()
    c.open_round(200.0)
    c.offer(offer(c, "fr-0"))
    c.offer(offer(c, "es-0"))
    assert c.close_reason(200.0, members=2) == "quorum"
    assert c.close("quorum", [], 2).exchange and c.submission() is not None


def test_a_federation_whose_members_fell_silent_still_ends_the_run_by_deadlines() -> None:
    """A shell's loop on a clock: latin's members send nothing. Before empty rounds closed,
    latin's round stayed open for ever and the run never ended (this loop ran out)."""
    h = tree(schedule={"deadline_s": 10.0})
    root, latin = core(h, "root"), core(h, "latin")
    start = {n: t.clone() for n, t in root.weights.items()}
    reasons: dict[str, list[str]] = {"root": [], "latin": []}
    root.open_round(0.0), latin.open_round(0.0)
    for now in map(float, range(200)):
        for c, live in ((latin, 2), (root, 1)):
            reason = c.close_reason(now, live)
            if reason is None:
                continue
            reasons[c.id].append(reason)
            closed = c.close(reason, [], live)
            if closed.exchange:
                assert c.submission() is None  # nothing folded: nothing goes up
                continue
            c.open_round(now)
            if c is root and latin.meta.awaiting_parent:  # the broadcast, taken by latin
                latin.take_parent(root.weights, root.meta.version, root.meta.final)
                latin.open_round(now)
        if root.meta.final and latin.meta.final:
            break
    assert root.meta.final and latin.meta.final, reasons
    assert reasons == {"root": ["empty", "empty"], "latin": ["empty", "empty"]}
    assert root.counters["rounds_empty"] == 2 and latin.counters["submissions_skipped"] == 1
    assert root.counters["rejected"] == 0  # no bogus zero-sample update reached the parent
    assert same(root.weights, start) and same(latin.weights, start)


def test_an_exchange_after_an_empty_round_submits_what_the_other_rounds_folded() -> None:
    c = core(tree(schedule={"deadline_s": 10.0}))
    base = {n: t.clone() for n, t in c.weights.items()}
    c.offer(offer(c, "fr-0", 1))
    c.close("quorum", [], 2)
    c.open_round(0.0)
    closed = c.close(c.close_reason(11.0, members=2) or "", [], 2)
    assert closed.reason == "empty" and closed.exchange
    s = c.submission()
    assert s is not None and s.samples == 10 and c.counters["submissions_skipped"] == 0
    for name, d in s.delta.items():
        assert torch.equal(d, c.weights[name] - base[name]), name


def test_an_async_round_closes_at_its_deadline_with_a_partial_or_an_empty_buffer() -> None:
    c = core(tree(schedule={"mode": "async", "buffer": 2, "deadline_s": 10.0}))
    c.open_round(0.0)
    assert c.close_reason(5.0, members=2) is None
    assert c.close_reason(10.5, members=2) == "empty"
    c.close("empty", [], 2)
    c.open_round(10.5)
    c.offer(offer(c, "fr-0"))
    assert c.close_reason(15.0, members=2) is None  # the buffer is not full yet
    assert c.close_reason(21.0, members=2) == "deadline"  # a member short: it does not wait
    assert len(c.close("deadline", [], 2).folded) == 1 and c.counters["rounds_empty"] == 1


def test_async_closes_when_its_buffer_is_full() -> None:
    c = core(tree(schedule={"mode": "async", "buffer": 2}))
    c.offer(offer(c, "fr-0"))
    assert c.close_reason(0.0, members=2) is None
    c.offer(offer(c, "es-0"))
    assert c.close_reason(0.0, members=2) == "buffer"


def test_close_folds_in_sender_order_whatever_the_arrival_order() -> None:
    a, b = core(), core()
    fr, es = offer(a, "fr-0", 1), offer(a, "es-0", 2)
    a.offer(fr), a.offer(es)
    b.offer(es), b.offer(fr)
    ca, cb = a.close("quorum", [], 2), b.close("quorum", [], 2)
    for name in a.weights:
        assert torch.equal(a.weights[name], b.weights[name]), name
    assert ca.folded == cb.folded and ca.version == 1 and a.meta.round == 1
    assert ca.values["arrived"] == 2.0 and not ca.exchange
    # the key layers go to the residual cache; the round is open again with nothing pending
    assert ca.residual is not None and set(ca.residual) == a.key and a.pending == []


def test_after_its_internal_rounds_a_federation_exchanges_and_the_root_finishes() -> None:
    c = core()
    for seed in range(2):
        c.offer(offer(c, "fr-0", seed))
        closed = c.close("quorum", [], 1)
    assert closed.exchange and c.meta.awaiting_parent and not c.open
    root = core(fid="root")
    root.offer(offer(root, "latin"))
    assert root.close("quorum", [], 1).final is False  # rounds = 2
    root.offer(offer(root, "latin", 1))
    assert root.close("quorum", [], 1).final is True


# -- the parent ----------------------------------------------------------------------------


def test_only_the_backbone_goes_up_and_the_parents_backbone_comes_back() -> None:
    c = core()
    base = {n: t.clone() for n, t in c.weights.items()}
    for seed in range(2):
        c.offer(offer(c, "fr-0", seed))
        c.close("quorum", [], 1)
    s = c.submission()
    assert set(s.delta) and not set(s.delta) & c.key  # K never leaves the federation
    for name, d in s.delta.items():
        assert torch.equal(d, c.weights[name] - base[name]), name
    assert c.submission().update_id == s.update_id  # a resubmission is a duplicate upstairs
    own_key = {n: c.weights[n].clone() for n in c.key}
    parent = {n: t + 1.0 if t.is_floating_point() else t for n, t in base.items()}
    c.take_parent(parent, version=1, final=False)
    for name, value in c.weights.items():
        expected = own_key[name] if name in c.key else parent[name]
        assert torch.equal(value, expected), name
    assert c.open and c.meta.parent_version == 1 and c.meta.version == 3


def test_take_parent_copies_the_parents_tensors() -> None:
    ours = {"a": torch.zeros(2), "k": torch.zeros(2)}
    parent = {"a": torch.ones(2), "k": torch.ones(2)}
    taken = take_parent(ours, parent, frozenset({"k"}))
    taken["a"].add_(1.0)
    assert torch.equal(parent["a"], torch.ones(2)) and torch.equal(taken["k"], torch.zeros(2))


# -- checkpoints ---------------------------------------------------------------------------


def same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_restored_core_decides_and_aggregates_exactly_as_the_original() -> None:
    h = tree(backbone="fedavgm", momentum=0.5)
    c = core(h)
    c.offer(offer(c, "fr-0", 1))
    c.offer(offer(c, "es-0", 2))
    c.close("quorum", [], 2)  # momentum state now non-zero
    pending = offer(c, "fr-0", 3)
    c.offer(pending)
    snapshot = c.snapshot()

    restored = core(h)
    restored.restore(snapshot)
    assert restored.offer(pending) == Duplicate(pending.update_id)
    last = offer(c, "es-0", 4)
    c.offer(last), restored.offer(last)
    c.close("quorum", [], 2), restored.close("quorum", [], 2)
    assert same(c.weights, restored.weights)
    assert restored.meta.version == c.meta.version == 2


# -- the named sources of nondeterminism of a live run ------------------------------------


def test_with_a_quorum_below_one_the_first_arrivals_decide_the_round() -> None:
    """Live, arrival order is timing: with quorum 0.5 of two, whoever arrives first is folded
    alone (the simulator's order is fixed; a live run's is not)."""
    h = tree(schedule={"quorum": 0.5})
    results = []
    for first in ("fr-0", "es-0"):
        c = core(h)
        c.offer(offer(c, first, seed=1 if first == "fr-0" else 2))
        assert c.close_reason(0.0, members=2) == "quorum"
        results.append(c.close("quorum", [], 2))
    assert results[0].folded != results[1].folded


def test_the_residuals_a_close_reads_change_the_key_layers() -> None:
    """Live, a federation reads whatever its linked federations last wrote to the cache."""
    h = hierarchy(
        "core",
        federations={
            "root": {"residual": {"links": "none"}},
            "latin": {"parent": "root", "residual": {"links": ["slavic"], "sign": -1}},
            "slavic": {"parent": "root", "residual": {"links": "none"}},
        },
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "ru-0": ("slavic", "lang-ru"),
        },
    )
    weights = []
    for stale_round in (0, 1):
        c = core(h)
        c.offer(offer(c, "fr-0", 1))
        c.offer(offer(c, "es-0", 2))
        cached = {n: t + (0.01 * (stale_round + 1)) for n, t in c.weights.items() if n in c.key}
        entries = c.residual_entries({"slavic": (stale_round, cached)})
        c.close("quorum", entries, 2)
        weights.append({n: c.weights[n] for n in c.key})
    assert any(not torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
