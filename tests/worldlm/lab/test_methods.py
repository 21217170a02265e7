"""Methods are config transforms: same clients, data and token budget, another tree or policy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worldlm.participants.helpers import raw_config
from worldlm.config.hierarchy import ConfigError, parse
from worldlm.lab.methods import METHODS, client_budget, method_configs, uniform_budget


def deep_raw(**federation_rounds: int) -> dict[str, Any]:
    """root -> europe -> {latin, slavic}; a client under each leaf and one under europe."""
    raw = raw_config(
        "m",
        federations={
            "root": {},
            "europe": {"parent": "root"},
            "latin": {"parent": "europe", "key": "local", "backbone": "nesterov"},
            "slavic": {"parent": "europe"},
        },
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "ru-0": ("slavic", "lang-ru"),
        },
        rounds=3,
        defaults={"internal_rounds": 1},
    )
    for fid, rounds in federation_rounds.items():
        raw["federations"][fid]["internal_rounds"] = rounds
    return raw


def test_budget_multiplies_internal_rounds_along_the_whole_path_to_the_root() -> None:
    h = parse(deep_raw(europe=2, latin=3, slavic=3, root=5))
    # root rounds 3 x europe 2 x leaf 3; the root's own internal_rounds does not count
    assert client_budget(h) == {"fr-0": 18, "es-0": 18, "ru-0": 18}


def test_unequal_budgets_are_refused_by_name_for_flat_baselines() -> None:
    h = parse(deep_raw(europe=2, latin=3, slavic=1))
    assert client_budget(h) == {"fr-0": 18, "es-0": 18, "ru-0": 6}
    with pytest.raises(ConfigError, match="different numbers of rounds"):
        uniform_budget(h)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_clients_data_steps_and_budget(method: str) -> None:
    raw = deep_raw(europe=2, latin=2, slavic=2)
    worldlm = parse(raw)
    built = method_configs(raw, method)
    clients = {c: b for h in built for c, b in client_budget(h).items()}
    assert clients == client_budget(worldlm) == {"fr-0": 12, "es-0": 12, "ru-0": 12}
    for h in built:
        for cid, cl in h.clients.items():
            original = worldlm.clients[cid]
            assert (cl.partition, cl.shard, cl.shards) == (
                original.partition,
                original.shard,
                original.shards,
            )
            assert h.client_policy(cid).local_steps == worldlm.client_policy(cid).local_steps
        assert h.run.id != worldlm.run.id or method == "worldlm"


def test_methods_set_their_policy_in_every_federation() -> None:
    raw = deep_raw()
    (mean,) = method_configs(raw, "worldlm_meankey")
    assert {f.policy.key for f in mean.federations.values()} == {"mean"}
    assert all(mean.residual_links(f) == () for f in mean.federations)
    (hier,) = method_configs(raw, "hierarchical_fedavg")
    assert {(f.policy.key, f.policy.backbone) for f in hier.federations.values()} == {
        ("fedavg", "fedavg")
    }
    (fedper,) = method_configs(raw, "fedper")
    assert list(fedper.federations) == ["root"] and fedper.root.policy.key == "local"
    assert all(c.keep_key_layers for c in fedper.clients.values())
    for codec in ("bf16", "int8", "topk"):
        (compressed,) = method_configs(raw, f"worldlm_{codec}")
        assert {f.policy.compression.codec for f in compressed.federations.values()} == {codec}
        assert compressed.run.id.endswith(codec)
    local = method_configs(raw, "local")
    assert sorted(next(iter(h.clients)) for h in local) == ["es-0", "fr-0", "ru-0"]
    with pytest.raises(ConfigError, match="unknown method"):
        method_configs(raw, "fedprox")


def test_misplacing_rotates_clients_so_no_two_grouped_clients_stay_together() -> None:
    raw = raw_config(
        "m",
        federations={"root": {}, "a": {"parent": "root"}, "b": {"parent": "root"}},
        clients={
            "a1": ("a", "lang-fr"),
            "a2": ("a", "lang-es"),
            "b1": ("b", "lang-ru"),
            "b2": ("b", "lang-pl"),
        },
    )
    (h,) = method_configs(raw, "worldlm_misplaced")
    groups = {f: set(fed.clients) for f, fed in h.federations.items() if fed.clients}
    assert groups == {"a": {"a1", "b2"}, "b": {"b1", "a2"}}
