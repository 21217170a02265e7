"""The ACLs of a run, derived from its config: nobody is granted a sibling's topics or keys."""

from __future__ import annotations

import hashlib
import shlex
from fnmatch import fnmatchcase

import pytest

from schemas.keyspace import Keyspace
from schemas.topics import Topics
from tests.worldlm.participants.helpers import hierarchy
from worldlm.security.acl import (
    Grant,
    grants,
    kafka_commands,
    principal,
    principals,
    redis_commands,
    redis_rules,
)
from worldlm.config.hierarchy import Hierarchy

RUN = "r1"


def tree(**defaults: object) -> Hierarchy:
    """root -> latin, slavic; fr-0 in latin, ru-0 in slavic, en-0 at the root."""
    return hierarchy(
        RUN,
        federations={"root": {}, "latin": {"parent": "root"}, "slavic": {"parent": "root"}},
        clients={
            "fr-0": ("latin", "lang-fr"),
            "ru-0": ("slavic", "lang-ru"),
            "en-0": ("root", "lang-en"),
        },
        defaults=dict(defaults),
    )


def by_node(h: Hierarchy) -> dict[str, Grant]:
    return {g.node: g for g in grants(h)}


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    # Redis globs and fnmatch agree on '*' and literals, all our ids can hold (check_name).
    return any(fnmatchcase(key, p) for p in patterns)


def test_a_client_writes_its_federations_up_and_reads_its_down_only() -> None:
    t, g = Topics(RUN), by_node(tree())["fr-0"]
    assert g.principal == "r1.fr-0" and g.role == "client"
    assert g.writes == (t.up("latin"), t.events, t.metrics)
    assert g.reads == (t.down("latin"),)


def test_an_aggregator_owns_its_topics_and_speaks_one_level_up() -> None:
    t, grant = Topics(RUN), by_node(tree())
    latin, root = grant["latin"], grant["root"]
    assert set(latin.reads) == {t.up("latin"), t.down("root")}
    assert set(latin.writes) == {t.down("latin"), t.up("root"), *t.run_wide()}
    assert set(root.reads) == {t.up("root")}
    assert set(root.writes) == {t.down("root"), *t.run_wide()}


def test_no_participant_is_granted_a_siblings_topics_or_keys() -> None:
    h = tree(residual={"links": "none"})
    t, k, grant = Topics(RUN), Keyspace(RUN), by_node(h)
    slavic_topics = {t.up("slavic"), t.down("slavic")}
    slavic_keys = [
        k.barrier_arrivals("slavic", 0),
        k.barrier_state("slavic", 3),
        k.members("slavic"),
        k.member_info("slavic"),
        k.model_version("slavic"),
        k.staleness("slavic"),
        k.stale_updates("slavic"),
        k.leader("slavic"),
        k.residual("slavic"),
        k.residual_part("slavic", "g", 0),
    ]
    for node in ("latin", "fr-0"):
        g = grant[node]
        assert not slavic_topics & {*g.writes, *g.reads}, node
        assert not [key for key in slavic_keys if matches(key, g.keys + g.read_keys)], node
    # ... while every key of its own federation is within the aggregator's reach.
    latin = grant["latin"]
    own = [key.replace("slavic", "latin") for key in slavic_keys]
    assert all(matches(key, latin.keys) for key in own)
    # A client may keep its membership and read its model pointer, and nothing else.
    fr = grant["fr-0"]
    assert [key for key in own if matches(key, fr.keys)] == [
        k.members("latin"),
        k.member_info("latin"),
    ]
    assert [key for key in own if matches(key, fr.read_keys)] == [k.model_version("latin")]
    # Both read the revocation list; only the operator (an admin) writes it.
    assert matches(k.revoked_keys(), fr.read_keys) and matches(k.revoked_keys(), latin.read_keys)
    assert not matches(k.revoked_keys(), fr.keys + latin.keys)


def test_residual_links_grant_read_access_to_the_linked_caches_only() -> None:
    k, latin = Keyspace(RUN), by_node(tree())["latin"]  # links = "siblings" by default
    assert matches(k.residual_part("slavic", "g", 2), latin.read_keys)
    assert not matches(k.residual_part("slavic", "g", 2), latin.keys)
    assert not matches(k.members("slavic"), latin.read_keys + latin.keys)


def test_the_observer_reads_the_run_wide_topics_and_writes_nothing() -> None:
    h = tree()
    g = by_node(h)["observer"]
    assert g.writes == () and set(g.reads) == set(Topics(RUN).run_wide())
    assert g.keys == () and g.read_keys == (Keyspace(RUN).everything(),)
    assert principals(h) == ["root", "latin", "slavic", "fr-0", "ru-0", "en-0", "observer"]


def test_observer_is_a_reserved_name() -> None:
    h = hierarchy(RUN, federations={"observer": {}}, clients={"c": ("observer", "lang-en")})
    with pytest.raises(ValueError, match="observer"):
        grants(h)


def test_principals_carry_the_run_because_acl_users_are_server_wide() -> None:
    assert principal("run-a", "c1") != principal("run-b", "c1")
    with pytest.raises(ValueError, match="id"):
        principal("r", "x:y")


def test_redis_rules_hold_the_password_hash_never_the_password() -> None:
    g = by_node(tree())["fr-0"]
    rules = redis_rules(g, "s3cret")
    assert "s3cret" not in " ".join(rules)
    assert f"#{hashlib.sha256(b's3cret').hexdigest()}" in rules
    assert rules[:2] == ["reset", "on"] and "-@all" in rules and "resetchannels" in rules
    assert f"%R~{Keyspace(RUN).model_version('latin')}" in rules
    # Redis 6 has no read-only patterns: the pattern is read-write there.
    old = redis_rules(g, "s3cret", read_only=False)
    assert f"~{Keyspace(RUN).model_version('latin')}" in old and not any("%R" in r for r in old)
    assert "><password>" in redis_rules(g, None)


def test_redis_commands_are_one_acl_setuser_line_per_principal() -> None:
    h = tree()
    lines = redis_commands(h, {p: f"pw-{p}" for p in principals(h)})
    assert len(lines) == len(principals(h))
    first = shlex.split(lines[0])
    assert first[:3] == ["ACL", "SETUSER", "r1.root"]
    assert first[3:] == redis_rules(by_node(h)["root"], "pw-root")


def test_kafka_commands_create_every_topic_then_grant_each_principal() -> None:
    h, t = tree(), Topics(RUN)
    lines = [shlex.split(line) for line in kafka_commands(h, "b:9093", command_config="a.props")]
    created = [argv[argv.index("--topic") + 1] for argv in lines if argv[0] == "kafka-topics.sh"]
    assert set(created) == {*t.data_plane(h.federations), *t.run_wide()}
    retention = {argv[argv.index("--config") + 1] for argv in lines if argv[0] == "kafka-topics.sh"}
    assert retention == {f"retention.ms={h.run.retention_ms}"}  # kept for the replay window
    grants_ = {
        (argv[argv.index("--allow-principal") + 1], argv[argv.index("--operation") + 1], argv[-1])
        for argv in lines
        if argv[0] == "kafka-acls.sh"
    }
    assert all(
        argv[1:5] == ["--bootstrap-server", "b:9093", "--command-config", "a.props"]
        for argv in lines
    )
    assert {(op, topic) for who, op, topic in grants_ if who == "User:r1.fr-0"} == {
        ("Write", t.up("latin")),
        ("Write", t.events),
        ("Write", t.metrics),
        ("Read", t.down("latin")),
    }
    assert ("User:r1.latin", "Read", t.down("root")) in grants_
    assert ("User:r1.latin", "Write", t.up("root")) in grants_
    assert not [g for g in grants_ if g[0] == "User:r1.fr-0" and "slavic" in g[2]]


def test_the_revocation_chain_is_read_only_to_participants_on_redis_7() -> None:
    chain = Keyspace(RUN).revoked_keys()
    appends = {"rpush", "lpush", "rpushx", "lset", "linsert", "ltrim", "lrem", "rpop", "lpop"}
    for g in grants(tree()):
        if g.role == "observer":
            continue
        assert "lrange" in g.commands and not appends & set(g.commands), g.node
        rules = redis_rules(g, "pw")
        assert f"%R~{chain}" in rules and f"~{chain}" not in rules
        # Redis 6 has no read-only patterns: the admin's signature is the fence there.
        assert f"~{chain}" in redis_rules(g, "pw", read_only=False)
