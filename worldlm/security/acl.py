"""Who may touch what: the Kafka and Redis ACLs of a run, derived from its hierarchy.

Pure: a :class:`Grant` per principal from the config alone, and renderers that turn grants
into ``kafka-acls.sh`` commands or ``ACL SETUSER`` arguments. Nothing here connects to
anything; ``worldlm acl`` prints what these return, and ``prepare_run``
(:mod:`worldlm.participants.node`) applies the Redis side of a run with ``isolation = "acl"``.

A client writes its federation's ``up`` topic and reads its ``down`` topic; an aggregator
reads its own ``up``, writes its own ``down``, and, one level up, writes its parent's ``up`` and
reads its parent's ``down``. In Redis a client touches its federation's membership and reads
its model pointer; an aggregator owns every key of its federation, joins its parent's
membership, reads its parent's model pointer and the residual caches its policy links to;
both read the run's revocation chain (the admin appends to it, signed: a write by anyone
else does not count; on Redis 7 the read-only pattern ``%R~`` keeps participants from writing
it at all, while on Redis 6, which has none, the pattern is read-write and the signature
check is the fence).
Nobody reads a sibling's traffic or keys. The run-wide topics are written by participants and
read by the observer (the dashboard, the runner's metrics collector) only, because dead
letters carry the first bytes of rejected updates of every federation.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from schemas.keyspace import Keyspace
from schemas.topics import Topics, check_name
from worldlm.config.hierarchy import Hierarchy

Role = Literal["client", "aggregator", "observer"]

#: Reading the run's dashboard view needs no participant: this principal reads, never writes.
OBSERVER = "observer"

# Redis commands per role, inside Lua scripts included (Redis checks those too); the scripts
# are in brokers/scripts.py and the plain calls in brokers/state.py and brokers/residuals.py.
# redis-py runs a script with EVALSHA, loading it on NOSCRIPT; a pipeline asks SCRIPT EXISTS;
# it names itself with CLIENT SETINFO on connecting (Redis 7.2+ and Valkey answer it).
_CONNECT = ("ping", "evalsha", "script|load", "script|exists", "client|setinfo")
_CLIENT = (
    *_CONNECT,
    *("time", "zscore", "zadd", "hset", "expire"),  # the heartbeat script
    *("multi", "exec", "zrem", "hdel"),  # a clean leave
    "hgetall",  # the model pointer
    "lrange",  # the revocation chain
)
_AGGREGATOR = (
    *_CLIENT,
    *("get", "set", "del", "pexpire", "mget", "hget", "hincrby", "sadd", "scard", "smembers"),
    *("zcount", "zrangebyscore"),
)
_OBSERVER = (
    *_CONNECT,
    *("time", "zrangebyscore"),  # the roster script
    *("hgetall", "smembers", "get", "mget", "multi", "exec"),
)


def principal(run: str, node: str) -> str:
    """The user name of ``node`` in run ``run``, on Kafka and Redis alike: ``<run>.<node>``.

    The run is part of the name because ACL users are server-wide while ids repeat across runs.
    """
    return f"{check_name('run id', run)}.{check_name('id', node)}"


@dataclass(frozen=True)
class Grant:
    """What one principal may do: the topics it writes and reads, the Redis key patterns it
    may read and write (``keys``) or only read (``read_keys``), and its Redis commands."""

    node: str
    principal: str
    role: Role
    writes: tuple[str, ...]
    reads: tuple[str, ...]
    keys: tuple[str, ...]
    read_keys: tuple[str, ...]
    commands: tuple[str, ...]


def grants(hierarchy: Hierarchy) -> list[Grant]:
    """One grant per aggregator (parents first), per client, and the observer's."""
    run = hierarchy.run.id
    if OBSERVER in hierarchy.federations or OBSERVER in hierarchy.clients:
        raise ValueError(f"{OBSERVER!r} is the observer's name; rename that participant")
    t, k = Topics(run), Keyspace(run)
    out: list[Grant] = []
    for fed in hierarchy.walk():
        writes, reads = [t.down(fed.id), t.events, t.metrics, t.dead_letter], [t.up(fed.id)]
        keys = [
            k.barriers(fed.id),
            k.members(fed.id),
            k.member_info(fed.id),
            k.model_version(fed.id),
            k.staleness(fed.id),
            k.stale_updates(fed.id),
            k.leader(fed.id),
            k.residual(fed.id),
            k.residual_parts(fed.id),
        ]
        read_keys = [
            k.revoked_keys(),
            *(
                pattern
                for other in hierarchy.residual_links(fed.id)
                for pattern in (k.residual(other), k.residual_parts(other))
            ),
        ]
        if fed.parent is not None:
            writes.insert(1, t.up(fed.parent))
            reads.append(t.down(fed.parent))
            keys += [k.members(fed.parent), k.member_info(fed.parent)]
            read_keys.insert(1, k.model_version(fed.parent))
        out.append(
            Grant(
                fed.id,
                principal(run, fed.id),
                "aggregator",
                tuple(writes),
                tuple(reads),
                tuple(keys),
                tuple(read_keys),
                _AGGREGATOR,
            )
        )
    for client in hierarchy.clients.values():
        f = client.federation
        out.append(
            Grant(
                client.id,
                principal(run, client.id),
                "client",
                (t.up(f), t.events, t.metrics),
                (t.down(f),),
                (k.members(f), k.member_info(f)),
                (k.model_version(f), k.revoked_keys()),
                _CLIENT,
            )
        )
    out.append(
        Grant(
            OBSERVER,
            principal(run, OBSERVER),
            "observer",
            (),
            tuple(t.run_wide()),
            (),
            (k.everything(),),
            _OBSERVER,
        )
    )
    return out


def password_hash(password: str) -> str:
    """The SHA-256 hex digest Redis accepts in place of a password (``#<hash>``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def redis_rules(grant: Grant, password: str | None, *, read_only: bool = True) -> list[str]:
    """The ``ACL SETUSER`` arguments after the user name, from a clean slate (``reset``).

    With a password the user gets its hash (``#…``: the rules can be printed and stored);
    without one, a ``><password>`` placeholder to fill in. ``read_only`` marks read-only
    patterns ``%R~`` (Redis 7); Redis 6 has no read-only patterns, so there they are
    read-write (``~``).
    """
    secret = f"#{password_hash(password)}" if password is not None else "><password>"
    marker = "%R~" if read_only else "~"
    return [
        "reset",
        "on",
        secret,
        "resetchannels",
        *(f"~{p}" for p in grant.keys),
        *(f"{marker}{p}" for p in grant.read_keys),
        "-@all",
        *(f"+{c}" for c in grant.commands),
    ]


def redis_commands(
    hierarchy: Hierarchy, passwords: Mapping[str, str] | None = None, *, read_only: bool = True
) -> list[str]:
    """One ``ACL SETUSER`` line per principal (``passwords``: node id -> password)."""
    lines = []
    for g in grants(hierarchy):
        password = passwords.get(g.node) if passwords is not None else None
        rules = redis_rules(g, password, read_only=read_only)
        lines.append(shlex.join(["ACL", "SETUSER", g.principal, *rules]))
    return lines


def kafka_commands(
    hierarchy: Hierarchy, bootstrap: str, *, command_config: str | None = None
) -> list[str]:
    """``kafka-topics.sh`` lines creating the run's topics, then one ``kafka-acls.sh`` line
    per principal and operation.

    Participants read by explicit partition assignment and commit no offsets, so no
    consumer-group ACL is needed; Read and Write imply Describe. The producers are not
    idempotent, so no cluster IdempotentWrite either. ``command_config``: the admin client's
    properties file (``--command-config``) on a secured cluster.
    """
    t = Topics(hierarchy.run.id)
    admin = ["--command-config", command_config] if command_config else []
    lines = [
        shlex.join(
            [
                *("kafka-topics.sh", "--bootstrap-server", bootstrap, *admin),
                *("--create", "--if-not-exists"),
                *("--topic", topic, "--partitions", str(hierarchy.run.partitions)),
                *("--config", f"retention.ms={hierarchy.run.retention_ms}"),
            ]
        )
        for topic in [*t.data_plane(f.id for f in hierarchy.walk()), *t.run_wide()]
    ]
    for g in grants(hierarchy):
        for operation, topics in (("Write", g.writes), ("Read", g.reads)):
            lines += [
                shlex.join(
                    [
                        *("kafka-acls.sh", "--bootstrap-server", bootstrap, *admin, "--add"),
                        *("--allow-principal", f"User:{g.principal}"),
                        *("--operation", operation, "--topic", topic),
                    ]
                )
                for topic in topics
            ]
    return lines


def principals(hierarchy: Hierarchy) -> list[str]:
    """Every id with credentials of its own: federations (aggregators), clients, observer."""
    return [*hierarchy.federations, *hierarchy.clients, OBSERVER]
