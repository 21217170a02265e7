"""Topic and Redis key names: per level, per run, validated."""

from __future__ import annotations

import pytest

from schemas.keyspace import Keyspace
from schemas.topics import Topics


def test_every_federation_has_its_own_topics_namespaced_by_run() -> None:
    t = Topics("run-1")
    assert t.up("root") == "worldlm.run-1.fed.root.up"
    assert t.down("eu-west") == "worldlm.run-1.fed.eu-west.down"
    assert t.data_plane(["root", "eu"]) == [t.up("root"), t.down("root"), t.up("eu"), t.down("eu")]
    # Siblings never share a data topic: an ACL per topic isolates them.
    assert len(set(t.data_plane(["a", "b", "a.b", "a-b"]))) == 8
    assert {t.events, t.metrics, t.dead_letter} == set(t.run_wide())
    assert all(name.startswith("worldlm.run-1.") for name in t.run_wide())


@pytest.mark.parametrize("bad", ["", "has space", "colon:no", "star*"])
def test_illegal_federation_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="federation"):
        Topics("r").up(bad)


def test_a_topic_name_past_kafkas_limit_is_rejected() -> None:
    t = Topics("r" * 120, prefix="p" * 120)
    with pytest.raises(ValueError, match="249"):
        t.down("f" * 20)


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
