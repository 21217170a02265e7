"""``exchange = "overlap"``: a federation submits to its parent and goes on training; the
parent's answer replaces its backbone as it was at the submission and keeps the progress
since on top; with the answer still out when its next exchange is due, it waits for it."""

from __future__ import annotations

import itertools

import torch

from tests.worldlm.participants.helpers import hierarchy
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.federation import Accepted, FederationCore, Offer
from worldlm.core.steps import AwaitParent, Broadcast, OpenRound, Submit
from worldlm.training.workbench import federation_key, initial_weights

IDS = itertools.count()


def tree(exchange: str = "overlap") -> Hierarchy:
    return hierarchy(
        "overlap",
        federations={"root": {}, "latin": {"parent": "root", "exchange": exchange}},
        clients={"fr-0": ("latin", "lang-fr"), "es-0": ("latin", "lang-es")},
        rounds=3,
        defaults={"residual": {"links": "none"}, "schedule": {"deadline_s": 10.0}},
    )


def cores(h: Hierarchy) -> dict[str, FederationCore]:
    start = initial_weights(h.run)
    return {
        f: FederationCore(h, f, start, key=federation_key(h, f), new_id=lambda: f"s-{next(IDS)}")
        for f in h.federations
    }


def a_round(core: FederationCore, seed: int) -> tuple:
    """Both clients' updates, then the close; the steps that follow."""
    core.open_round(0.0)
    for client in ("fr-0", "es-0"):
        g = torch.Generator().manual_seed(seed)
        delta = {
            n: torch.randn(t.shape, generator=g) * 0.01
            for n, t in core.weights.items()
            if t.is_floating_point()
        }
        offer = Offer(client, f"{client}-{next(IDS)}", delta, 8, core.meta.version)
        assert isinstance(core.offer(offer), Accepted)
    return core.close("quorum", [], 2).next


def answer(root: FederationCore, submit: Submit) -> None:
    """The root folds the submission (its only member) and closes."""
    s = submit.submission
    assert s is not None
    root.open_round(0.0)
    assert isinstance(
        root.offer(Offer("latin", s.update_id, s.delta, s.samples, s.base_version)), Accepted
    )
    root.close("quorum", [], 1)


def test_after_submitting_the_federation_goes_on_and_merges_the_answer_mid_round() -> None:
    h = tree()
    c = cores(h)
    latin, root = c["latin"], c["root"]
    steps = a_round(latin, 1)
    assert [type(s) for s in steps] == [Submit, AwaitParent, Broadcast, OpenRound]
    assert latin.meta.in_flight and latin.open and latin.wants_parent(root.version + 1)
    at_submission = dict(latin.weights)
    answer(root, steps[0])
    latin.open_round(0.0)
    a_round(latin, 2)  # internal_rounds = 1: the next exchange is due, the answer is out
    assert latin.after_close() == ()  # the answer is awaited already: the rounds pause
    assert latin.meta.awaiting_parent and not latin.open
    assert latin.next_steps() == (AwaitParent(latin.meta.parent_version),)  # on a resume
    before = dict(latin.weights)
    steps = latin.take_parent(root.weights, root.version, False)
    # the parent's backbone under our progress since the submission; our key layers kept
    for n, w in latin.weights.items():
        if n in latin.key:
            assert torch.equal(w, before[n])
        elif w.is_floating_point():
            expected = root.weights[n] + (before[n] - at_submission[n])
            assert torch.allclose(w, expected, atol=1e-6)
    # the waiting rounds are done: the next submission (that progress) goes at once
    assert [type(s) for s in steps] == [Submit, AwaitParent, Broadcast, OpenRound]
    sent = steps[0].submission
    assert sent is not None and sent.base_version == root.version
    n = next(n for n in sent.delta if n not in latin.key)
    assert torch.allclose(sent.delta[n], before[n] - at_submission[n], atol=1e-6)


def test_an_answer_that_comes_mid_round_changes_the_model_and_nothing_else() -> None:
    h = tree()
    c = cores(h)
    latin, root = c["latin"], c["root"]
    submit = a_round(latin, 1)[0]
    answer(root, submit)
    version, round_ = latin.version, latin.round
    assert latin.take_parent(root.weights, root.version, False) == ()
    assert (latin.version, latin.round, latin.open) == (version, round_, True)
    assert not latin.meta.in_flight and latin.meta.parent_version == root.version


def test_wait_stays_the_default_exchange() -> None:
    latin = cores(tree("wait"))["latin"]
    steps = a_round(latin, 1)
    assert [type(s) for s in steps] == [Submit, AwaitParent]
    assert not latin.meta.in_flight and not latin.open
