"""The round core says what happens next: a whole three-level run driven on the cores alone
(no shell, no queue of our own making beyond carrying the steps out), and the order of
resumption after a restart at each point of the exchange."""

from __future__ import annotations

import itertools

import torch

from tests.worldlm.participants.helpers import hierarchy
from worldlm.config.hierarchy import Hierarchy
from worldlm.core.federation import FederationCore, Offer
from worldlm.core.steps import AwaitParent, Broadcast, Done, OpenRound, Step, Submit
from worldlm.training.workbench import federation_key, initial_weights

IDS = itertools.count()


def levels() -> Hierarchy:
    """root -> europe -> latin -> clients, a client at each level above."""
    return hierarchy(
        "steps",
        federations={
            "root": {},
            "europe": {"parent": "root"},
            "latin": {"parent": "europe", "internal_rounds": 2},
        },
        clients={
            "en-0": ("root", "lang-en"),
            "de-0": ("europe", "lang-de"),
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
        },
        rounds=2,
        defaults={"residual": {"links": "none"}, "schedule": {"deadline_s": 10.0}},
    )


def cores(h: Hierarchy) -> dict[str, FederationCore]:
    start = initial_weights(h.run)
    return {
        f: FederationCore(h, f, start, key=federation_key(h, f), new_id=lambda: f"sub-{next(IDS)}")
        for f in h.federations
    }


def client_update(core: FederationCore, client: str, seed: int) -> Offer:
    g = torch.Generator().manual_seed(seed)
    delta = {
        n: torch.randn(t.shape, generator=g) * 0.01
        for n, t in core.weights.items()
        if t.is_floating_point()
    }
    return Offer(client, f"{client}-{next(IDS)}", delta, 8, core.meta.version)


def test_a_three_level_run_is_a_sequence_of_steps_the_core_gives() -> None:
    h = levels()
    c = cores(h)
    log: list[tuple[str, str]] = []
    seeds = itertools.count()

    def carry(fid: str, steps: tuple[Step, ...]) -> None:
        for step in steps:
            log.append((fid, type(step).__name__))
            match step:
                case Submit(submission=s):
                    assert s is not None
                    parent = h.federations[fid].parent
                    assert parent is not None
                    offer = Offer(fid, s.update_id, s.delta, s.samples, s.base_version)
                    arrive(parent, offer)
                case Broadcast(version=version, final=final):
                    assert version == c[fid].meta.version
                    for child in h.federations[fid].children:
                        sub = c[child]
                        if sub.meta.awaiting_parent and version > sub.meta.parent_version:
                            carry(child, sub.take_parent(c[fid].weights, version, final))
                case OpenRound(round=r):
                    assert r == c[fid].meta.round
                    c[fid].open_round(0.0)
                    for client in sorted(h.federations[fid].clients):  # they train and send
                        arrive(fid, client_update(c[fid], client, next(seeds)))
                case AwaitParent(after=after):
                    assert after == c[fid].meta.parent_version
                case Done():
                    pass

    def arrive(fid: str, offer: Offer) -> None:
        core = c[fid]
        assert type(core.offer(offer)).__name__ == "Accepted"
        members = core.expected(live=0)  # nobody heartbeats here: declared members count
        reason = core.close_reason(0.0, members)
        if reason is not None:
            carry(fid, core.close(reason, [], members).next)

    for fid in ("latin", "europe", "root"):  # every core starts at its first round
        carry(fid, (OpenRound(0),))

    assert c["root"].meta.final and c["europe"].meta.final and c["latin"].meta.final
    assert c["root"].meta.round == h.run.rounds
    assert c["latin"].meta.round == h.run.rounds * 2  # internal_rounds 2 below europe
    # latin exchanges every second round, europe every round; the root ends the run
    latin = [s for f, s in log if f == "latin"]
    assert latin[:4] == ["OpenRound", "Broadcast", "OpenRound", "Submit"]
    assert latin[-2:] == ["Broadcast", "Done"]
    assert [s for f, s in log if f == "europe"][-2:] == ["Broadcast", "Done"]
    final_root = max(i for i, e in enumerate(log) if e == ("root", "Broadcast"))
    assert log.index(("latin", "Done")) > final_root  # the root's final model reached latin
    assert sum(1 for f, s in log if s == "Done") == 3


def test_resuming_carries_out_what_the_kill_interrupted_in_order() -> None:
    h = levels()
    c = cores(h)["latin"]
    assert c.next_steps(published=None) == (Broadcast(0, 0, False), OpenRound(0))
    assert c.next_steps(published=0) == (OpenRound(0),)  # its model is out already
    for r in range(2):  # two internal rounds: the second ends the exchange
        for client in ("es-0", "fr-0"):
            c.offer(client_update(c, client, r))
        closed = c.close("quorum", [], 2)
    first = closed.next
    assert isinstance(first[0], Submit) and first[1] == AwaitParent(0)
    again = c.next_steps(published=2)  # restarted while waiting: the same submission again
    assert isinstance(again[0], Submit) and again[0].submission is not None
    assert first[0].submission is not None
    assert again[0].submission.update_id == first[0].submission.update_id
    parent = {n: t.clone() for n, t in c.weights.items()}
    assert c.take_parent(parent, 1, final=True) == (Broadcast(3, 2, True), Done())
    assert c.next_steps(published=3) == (Done(),)  # the final model went out before a kill
