"""Topic and Redis key names: per level, per run, validated."""

from __future__ import annotations

import pytest

from schemas.keyspace import Keyspace
from schemas.topics import Topics


def test_topics_are_per_level_and_namespaced_by_run() -> None:
    t = Topics("run-1")
    assert t.up(0) == "worldlm.run-1.L0.up"
    assert t.down(2) == "worldlm.run-1.L2.down"
    assert t.levels(1) == [t.up(0), t.down(0), t.up(1), t.down(1)]
    assert {t.events, t.metrics, t.dead_letter} == set(t.run_wide())
    assert all(name.startswith("worldlm.run-1.") for name in t.run_wide())


def test_negative_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        Topics("r").up(-1)


@pytest.mark.parametrize("bad", ["", "has space", "slash/no", "x" * 121])
def test_illegal_run_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        Topics(bad)
    with pytest.raises(ValueError, match="run id"):
        Keyspace(bad)


def test_redis_keys_share_one_run_namespace_and_cluster_slot() -> None:
    k = Keyspace("r9")
    names = [
        k.barrier_arrivals("eu", 1),
        k.barrier_state("eu", 1),
        k.members("eu"),
        k.member_info("eu"),
        k.model_version("eu"),
        k.staleness("eu"),
        k.stale_updates("eu"),
        k.residual("eu"),
        k.residual_part("eu", "g", 0),
    ]
    assert all(n.startswith("worldlm:{r9}:") for n in names)
    assert len(set(names)) == len(names)
