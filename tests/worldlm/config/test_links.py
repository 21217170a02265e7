"""``[links]`` and ``[clock]`` load as typed edges and declared times, checked at load."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worldlm.participants.helpers import flat_raw
from worldlm.config.hierarchy import ConfigError, parse
from worldlm.config.links import LOOPBACK, ClockConfig, LinkConfig


def with_network(**sections: Any) -> dict[str, Any]:
    return {**flat_raw("links"), **sections}


def test_no_links_is_loopback_and_nothing_declared() -> None:
    h = parse(flat_raw("links"))
    assert h.links.edge("en-0") == LOOPBACK
    assert not h.links.declared


def test_links_and_clock_load_per_edge() -> None:
    h = parse(
        with_network(
            links={"*": {"bandwidth_mbit": 1000, "latency_ms": 5}, "de-0": {"compute": 0.5}},
            clock={"step_s": 0.05, "eval_s": 0.2},
        )
    )
    assert h.links.edge("en-0") == LinkConfig(1000, 5.0)
    assert h.links.edge("de-0") == LinkConfig(None, 0.0, 0.5)
    assert h.links.clock == ClockConfig(step_s=0.05, eval_s=0.2)
    assert h.links.declared


@pytest.mark.parametrize(
    ("links", "clock", "message"),
    [
        ({"xx-0": {}}, {}, "links.xx-0: no client or federation"),
        ({"zz*": {}}, {}, "links.zz\\*: the pattern matches no"),
        ({"en-0": {"bandwidth_mbit": 0}}, {}, "links.en-0.bandwidth_mbit: must be positive"),
        ({"en-0": {"latency_ms": -1}}, {}, "links.en-0.latency_ms"),
        ({"en-0": {"compute": 0}}, {}, "links.en-0.compute"),
        ({"en-0": {"speed": 2}}, {}, "links.en-0"),
        ({}, {"step_s": -1}, "clock.step_s"),
        ({}, {"tick": 1}, "clock"),
    ],
)
def test_a_bad_link_or_clock_is_one_config_error(
    links: dict[str, Any], clock: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(with_network(links=links, clock=clock))
