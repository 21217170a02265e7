"""Shares of a hierarchy (pure): every participant runs in exactly one share, the shares are
balanced by estimated work, and every host computes the same ones from the same config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worldlm.participants.helpers import hierarchy, raw_config
from worldlm.config.hierarchy import Hierarchy, load, parse
from worldlm.participants.shares import Share, assignment, partition, weights

DEMO = Path(__file__).parents[3] / "worldlm" / "configs" / "demo.toml"


def three_levels() -> dict[str, Any]:
    """root -> eu (-> west, east), asia; eleven clients, uneven local work."""
    return raw_config(
        "shares",
        federations={
            "root": {},
            "eu": {"parent": "root", "internal_rounds": 2},
            "west": {"parent": "eu", "local_steps": 20},
            "east": {"parent": "eu"},
            "asia": {"parent": "root", "internal_rounds": 3},
        },
        clients={
            **{f"w{i}": ("west", "lang-en") for i in range(4)},
            **{f"e{i}": ("east", "lang-de") for i in range(3)},
            **{f"a{i}": ("asia", "lang-fr") for i in range(4)},
        },
    )


def participants(h: Hierarchy) -> list[str]:
    return [*h.federations, *h.clients]


@pytest.mark.parametrize("config", ["demo", "three_levels"])
def test_every_participant_is_in_exactly_one_share_for_any_count(config: str) -> None:
    h = load(DEMO) if config == "demo" else parse(three_levels())
    everyone = participants(h)
    for count in range(1, len(everyone) + 3):
        shares = partition(h, count)
        assert [a.share for a in shares] == [Share(i, count) for i in range(1, count + 1)]
        held = [p for a in shares for p in a.participants]
        assert sorted(held) == sorted(everyone), count
        for a in shares:
            assert set(a.aggregators) <= set(h.federations) and set(a.clients) <= set(h.clients)


def test_shares_are_balanced_within_one_participants_weight() -> None:
    h = parse(three_levels())
    weight = weights(h)
    for count in range(1, 8):
        loads = [a.weight for a in partition(h, count)]
        assert max(loads) - min(loads) <= max(weight.values()) + 1e-9, (count, loads)
        assert sum(loads) == pytest.approx(sum(weight.values()))
    # The demo on two cores: three clients and two aggregators each.
    demo = partition(load(DEMO), 2)
    assert [len(a.clients) for a in demo] == [3, 3]
    assert [len(a.aggregators) for a in demo] == [2, 2]


def test_the_same_config_gives_the_same_shares_whatever_the_order_of_its_tables() -> None:
    raw = three_levels()
    shuffled = {
        **raw,
        "federations": dict(reversed(raw["federations"].items())),
        "clients": dict(reversed(raw["clients"].items())),
    }
    for count in (2, 3, 5):
        first = [set(a.participants) for a in partition(parse(raw), count)]
        again = [set(a.participants) for a in partition(parse(raw), count)]
        reordered = [set(a.participants) for a in partition(parse(shuffled), count)]
        assert first == again == reordered


def test_more_shares_than_participants_leaves_the_last_ones_empty() -> None:
    h = hierarchy("tiny", federations={"root": {}}, clients={"en-0": ("root", "lang-en")}, rounds=1)
    shares = partition(h, 4)
    assert [len(a.participants) for a in shares] == [1, 1, 0, 0]
    assert shares[3].describe() == "no participants"


def test_work_follows_local_steps_internal_rounds_and_members() -> None:
    weight = weights(parse(three_levels()))
    # west trains 20 steps against east's 10, both twice per root round (eu's rounds).
    assert weight["w0"] > weight["e0"]
    # asia's clients train 10 steps three times per root round; east's 10 steps twice.
    assert weight["a0"] > weight["e0"]
    # An aggregator's work grows with its members and its rounds.
    assert weight["west"] > weight["east"] and weight["asia"] > weight["root"]


def test_an_assignment_lists_parents_first_and_clients_in_config_order() -> None:
    h = parse(three_levels())
    for count in (1, 2, 3):
        for a in partition(h, count):
            assert a == assignment(h, a.share)
            tree = [f.id for f in h.walk()]
            assert list(a.aggregators) == [f for f in tree if f in a.aggregators]
            assert list(a.clients) == [c for c in h.clients if c in a.clients]
    whole = assignment(h, Share(1, 1))
    assert whole.describe(most=3) == "root, eu, asia and 13 more"


@pytest.mark.parametrize(
    ("text", "share"), [("1/1", Share(1, 1)), ("2/3", Share(2, 3)), (" 3 / 3 ", Share(3, 3))]
)
def test_a_share_is_written_i_of_n(text: str, share: Share) -> None:
    assert Share.parse(text) == share
    assert Share.parse(str(share)) == share


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "3", "a/b", "-1/2", "1/2/3", ""])
def test_a_share_outside_1_to_n_or_not_i_of_n_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="share"):
        Share.parse(text)
