"""The hierarchy config: the shipped demo loads, defaults merge, the tree walks parents first,
and every mistake is one ConfigError that names the file and the place in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worldlm.config.hierarchy import ConfigError, load, parse
from worldlm.training.corpus import partitions

DEMO = Path(__file__).parents[2] / "worldlm" / "configs" / "demo.toml"

SMALL = """
[run]
id = "small"
rounds = 3

[defaults]
local_steps = 5
[defaults.schedule]
quorum = 0.5
deadline_s = 30.0

[federations.root]

[federations.latin]
parent = "root"
local_steps = 7
[federations.latin.schedule]
deadline_s = 9.0

[federations.iberian]
parent = "latin"

[federations.germanic]
parent = "root"
residual = { links = "none" }

[clients.es-0]
federation = "iberian"
partition = "lang-es"

[clients.fr-0]
federation = "latin"
partition = "lang-fr"

[clients.de-0]
federation = "germanic"
partition = "lang-de"

[clients.de-1]
federation = "germanic"
partition = "lang-de"
"""


def known() -> set[str]:
    return {p.name for p in partitions()}


def small(tmp_path: Path, text: str = SMALL) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(text)
    return path


def base() -> dict[str, Any]:
    return {
        "run": {"id": "t"},
        "federations": {"root": {}, "a": {"parent": "root"}, "b": {"parent": "root"}},
        "clients": {
            "c0": {"federation": "a", "partition": "lang-en"},
            "c1": {"federation": "b", "partition": "lang-de"},
        },
    }


def test_shipped_demo_config_loads_against_the_builtin_corpus() -> None:
    h = load(DEMO, known_partitions=known())
    assert h.root.id == "root" and h.depth == 1
    assert set(h.federations["root"].children) == {"latin", "slavic", "east-asian"}
    assert all(len(h.federations[f].clients) == 2 for f in h.federations["root"].children)
    assert h.federations["east-asian"].policy.backbone == "fedavgm"
    assert h.federations["latin"].policy.backbone == "fedavg"
    assert h.federations["root"].policy.internal_rounds == 1
    assert h.federations["latin"].policy.internal_rounds == 2


def test_defaults_apply_to_all_and_a_federation_overrides_field_by_field(tmp_path: Path) -> None:
    h = load(small(tmp_path), known_partitions=known())
    latin, iberian, root = (h.federations[f].policy for f in ["latin", "iberian", "root"])
    assert root.local_steps == 5 and iberian.local_steps == 5 and latin.local_steps == 7
    # Nested tables merge key by key: latin keeps the default quorum, overrides the deadline.
    assert latin.schedule.quorum == 0.5 and latin.schedule.deadline_s == 9.0
    assert iberian.schedule.quorum == 0.5 and iberian.schedule.deadline_s == 30.0
    assert root.schedule.mode == "sync"  # a built-in default neither file section set


def test_levels_members_and_walk_order_parents_before_children(tmp_path: Path) -> None:
    h = load(small(tmp_path), known_partitions=known())
    order = [f.id for f in h.walk()]
    assert order[0] == "root" and sorted(order) == ["germanic", "iberian", "latin", "root"]
    for fed in h.federations.values():
        if fed.parent is not None:
            assert order.index(fed.parent) < order.index(fed.id)
    assert {f: h.federations[f].level for f in order} == {
        "root": 0,
        "latin": 1,
        "germanic": 1,
        "iberian": 2,
    }
    assert h.depth == 2
    assert h.federations["latin"].members == ("iberian", "fr-0")
    # Clients of one partition split it evenly, in file order.
    assert (h.clients["de-0"].shard, h.clients["de-0"].shards) == (0, 2)
    assert (h.clients["de-1"].shard, h.clients["de-1"].shards) == (1, 2)
    assert (h.clients["es-0"].shard, h.clients["es-0"].shards) == (0, 1)


def test_residual_links_default_to_siblings_and_can_be_none_or_a_list(tmp_path: Path) -> None:
    h = load(small(tmp_path), known_partitions=known())
    assert h.residual_links("latin") == ("germanic",)
    assert h.residual_links("germanic") == ()  # links = "none"
    assert h.residual_links("iberian") == ()  # an only child has no siblings
    assert h.residual_links("root") == ()
    raw = base()
    raw["federations"]["a"]["residual"] = {"links": ["b"], "gamma": 0.5}
    explicit = parse(raw)
    assert explicit.residual_links("a") == ("b",)
    assert explicit.siblings("a") == ("b",)


def _apply(raw: dict[str, Any], changes: dict[str, Any]) -> None:
    """Set dotted paths in a raw config (``federations.a.parent``)."""
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value


#: (what is wrong, the change that makes it wrong, the place the error must name)
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown parent", {"federations.a.parent": "nowhere"}, "federations.a.parent"),
    (
        "cycle",
        {"federations.x": {"parent": "y"}, "federations.y": {"parent": "x"}},
        "federations.x.parent: cycle x -> y -> x",
    ),
    ("two roots", {"federations.b.parent": None}, "federations: exactly one root"),
    ("unknown client federation", {"clients.c0.federation": "x"}, "clients.c0.federation"),
    ("unknown partition", {"clients.c1.partition": "lang-xx"}, "clients.c1.partition"),
    ("bad type in a federation", {"federations.a.local_steps": "ten"}, "federations.a.local_steps"),
    ("bad type in defaults", {"defaults.local_steps": "ten"}, "defaults.local_steps"),
    ("quorum above 1", {"federations.b.schedule.quorum": 1.5}, "federations.b.schedule.quorum"),
    ("quorum above 1 in defaults", {"defaults.schedule.quorum": 1.5}, "defaults.schedule.quorum"),
    ("zero local steps", {"federations.a.local_steps": 0}, "federations.a.local_steps"),
    ("negative deadline", {"defaults.schedule.deadline_s": -1.0}, "defaults.schedule.deadline_s"),
    ("bad schedule mode", {"federations.a.schedule.mode": "later"}, "federations.a.schedule.mode"),
    ("unknown section", {"extras": {"x": 1}}, "unknown section(s) ['extras']"),
    ("unknown run field", {"run.epochs": 3}, "run: Object contains unknown field `epochs`"),
    ("unknown federation field", {"federations.a.learning_rate": 0.1}, "federations.a: "),
    ("unknown client field", {"clients.c0.weight": 2}, "clients.c0: "),
    ("federation without members", {"federations.lonely": {"parent": "root"}}, "lonely: has no"),
    ("residual link to nowhere", {"federations.a.residual.links": ["z"]}, "a.residual.links"),
    ("zero rounds", {"run.rounds": 0}, "run.rounds"),
    ("zero heartbeat", {"run.heartbeat_s": 0.0}, "run.heartbeat_s"),
    ("zero partitions", {"run.partitions": 0}, "run.partitions"),
    ("zero replay window", {"run.replay_window_h": 0}, "run.replay_window_h"),
    ("illegal run id", {"run.id": "has space"}, "run.id"),
    ("client id taken by a federation", {"clients.a": {"federation": "b"}}, "clients.a: a client"),
    ("federations not a table", {"federations": 3}, "federations: must be a table"),
    ("shard out of range", {"clients.c0.shard": 5, "clients.c0.shards": 2}, "clients.c0.shard"),
    ("shard without shards", {"clients.c0.shard": 1}, "clients.c0: shard and shards go together"),
    ("shards without shard", {"clients.c0.shards": 2}, "clients.c0: shard and shards go together"),
    (
        "two clients on one shard",
        {"clients.c1.partition": "lang-en", "clients.c0.shard": 0, "clients.c0.shards": 2,
         "clients.c1.shard": 0, "clients.c1.shards": 2},
        "clients.c1.shard: shard 0 of 2 of partition 'lang-en' is c0's already",
    ),
    (
        "every federation on a cycle",
        {"federations.root.parent": "b", "federations.b.parent": "root"},
        "cycle root -> b -> root",
    ),
    ("residual link to itself", {"federations.a.residual.links": ["a"]}, "link to itself"),
    ("token cap under a window", {"clients.c0.train_tokens": 64}, "clients.c0.train_tokens"),
    ("test at every eval, no test", {"run.test_each_eval": True}, "run.test_each_eval"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "where"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_mistake_is_one_config_error_naming_the_place(
    changes: dict[str, Any], where: str
) -> None:  # fmt: skip
    raw = base()
    _apply(raw, changes)
    with pytest.raises(ConfigError) as info:
        parse(raw, source="hier.toml", known_partitions=known())
    message = str(info.value)
    assert message.startswith("hier.toml: "), message
    assert where in message, message
    assert "\n" not in message  # one line, no traceback text


def test_the_config_without_mistakes_is_valid() -> None:
    h = parse(base(), known_partitions=known())  # the baseline the mistakes start from
    assert set(h.federations) == {"root", "a", "b"} and set(h.clients) == {"c0", "c1"}


def test_load_names_the_file_for_missing_files_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")
    broken = small(tmp_path, "[run\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(broken)
    assert str(broken) in str(info.value)


def test_a_mistake_in_a_file_names_the_file_and_the_place(tmp_path: Path) -> None:
    path = small(tmp_path, SMALL.replace("local_steps = 7", 'local_steps = "seven"'))
    with pytest.raises(ConfigError) as info:
        load(path, known_partitions=known())
    assert str(info.value).startswith(f"{path}: federations.latin.local_steps: ")
