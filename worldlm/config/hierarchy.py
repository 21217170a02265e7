"""The hierarchy config: a typed tree of federations and clients, loaded from TOML.

Every federation keeps its own policy: ``[defaults]`` applies to all, ``[federations.<id>]``
overrides any field for one federation (nested tables merge key by key). Validation happens
at load, and every mistake is one :class:`ConfigError` naming the file and the place in it
(``federations.romance.parent``), never a traceback from deep inside a run.

    [run]
    id = "demo"          # namespace of topics and Redis keys
    model = "tiny"       # model preset
    rounds = 4           # root rounds

    [defaults]
    local_steps = 10
    [defaults.schedule]
    mode = "sync"
    quorum = 1.0

    [federations.root]
    [federations.romance]
    parent = "root"
    internal_rounds = 2

    [clients.fr-0]
    federation = "romance"
    partition = "fr"
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from worldlm.config.checks import check as _check
from worldlm.config.checks import check_id as _check_name
from worldlm.config.checks import check_policy as _check_policy
from worldlm.config.checks import check_run as _check_run
from worldlm.config.checks import with_adapters
from worldlm.config.feasibility import check as check_member_dp
from worldlm.config.links import Links, parse_links
from worldlm.config.schema import (
    AttentionConfig,
    ClientConfig,
    ConfigError,
    DPConfig,
    LoraConfig,
    Policy,
    RecordDPConfig,
    ResidualConfig,
    RunConfig,
    ScheduleConfig,
    _FederationFile,
)

__all__ = [
    "AttentionConfig",
    "Client",
    "ClientConfig",
    "ConfigError",
    "DPConfig",
    "Federation",
    "Hierarchy",
    "LoraConfig",
    "Policy",
    "RecordDPConfig",
    "ResidualConfig",
    "RunConfig",
    "ScheduleConfig",
    "load",
    "parse",
]


@dataclass(frozen=True)
class Federation:
    """An inner node of the tree."""

    id: str
    parent: str | None
    level: int
    policy: Policy
    children: tuple[str, ...]  # sub-federations
    clients: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        return self.children + self.clients


@dataclass(frozen=True)
class Client:
    id: str
    federation: str
    partition: str
    shard: int
    shards: int
    keep_key_layers: bool
    #: At most this many training tokens (the start of the client's shuffled shard's stream;
    #: None: all of it). Validation and test text are not capped.
    train_tokens: int | None = None


@dataclass(frozen=True)
class Hierarchy:
    """A validated tree: one root, federations to any depth, clients at the leaves."""

    run: RunConfig
    federations: dict[str, Federation]
    clients: dict[str, Client]
    source: str = "<config>"
    #: The network and compute times the simulator's clock reads (``[links]``, ``[clock]``).
    links: Links = dataclasses.field(default_factory=Links)

    @property
    def root(self) -> Federation:
        return next(f for f in self.federations.values() if f.parent is None)

    @property
    def depth(self) -> int:
        """Level of the deepest federation (the root is level 0)."""
        return max(f.level for f in self.federations.values())

    def walk(self) -> Iterator[Federation]:
        """Federations, parents before children."""
        order = [self.root.id]
        for fid in order:
            order.extend(self.federations[fid].children)
        return (self.federations[f] for f in order)

    def siblings(self, federation: str) -> tuple[str, ...]:
        parent = self.federations[federation].parent
        if parent is None:
            return ()
        return tuple(c for c in self.federations[parent].children if c != federation)

    def residual_links(self, federation: str) -> tuple[str, ...]:
        """Federations whose residual embeddings ``federation`` reads."""
        residual = self.federations[federation].policy.residual
        if residual is None or residual.links == "none":
            return ()
        if residual.links == "siblings":
            return self.siblings(federation)
        return tuple(residual.links)

    def residual_readers(self, federation: str) -> tuple[str, ...]:
        """Federations that read ``federation``'s residual embedding (whose links name it):
        whom its residual-cache entries are sealed to in a sealing run."""
        return tuple(f for f in self.federations if federation in self.residual_links(f))

    def client_policy(self, client: str) -> Policy:
        return self.federations[self.clients[client].federation].policy

    def client_rounds(self, client: str) -> int:
        """Local training rounds ``client`` runs over the whole run: ``run.rounds`` times the
        ``internal_rounds`` of every federation on its path below the root."""
        rounds, fed = self.run.rounds, self.federations[self.clients[client].federation]
        while fed.parent is not None:
            rounds *= fed.policy.internal_rounds
            fed = self.federations[fed.parent]
        return rounds


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _convert(value: Any, type_: Any, where: str, source: str) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = ""
        if " - at `$" in message:
            message, _, path = message.partition(" - at `$")
            path = path.rstrip("`")
        raise ConfigError(f"{source}: {where}{path}: {message}") from None


def load(path: str | Path, *, known_partitions: set[str] | None = None) -> Hierarchy:
    """Load and validate a hierarchy config file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, source=str(path), known_partitions=known_partitions)


def parse(
    raw: Mapping[str, Any], *, source: str = "<config>", known_partitions: set[str] | None = None
) -> Hierarchy:
    """Validate a config already read from TOML (see :func:`load`)."""
    unknown = set(raw) - {"run", "defaults", "federations", "clients", "links", "clock"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
    run: RunConfig = _convert(raw.get("run", {}), RunConfig, "run", source)
    _check(run.rounds >= 1, source, "run.rounds", "must be at least 1")
    _check(run.seq_len >= 2 and run.batch_size >= 1, source, "run", "seq_len >= 2, batch_size >= 1")
    _check_run(run, source)
    _check_name(run.id, source, "run.id")
    for section in ("defaults", "federations", "clients"):
        _check(isinstance(raw.get(section, {}), Mapping), source, section, "must be a table")
    defaults = raw.get("defaults", {})
    # Report mistakes in defaults as such, not as the first federation's.
    _check_policy(_convert(defaults, Policy, "defaults", source), source, "defaults")

    fed_raw: Mapping[str, Any] = raw.get("federations", {})
    client_raw: Mapping[str, Any] = raw.get("clients", {})
    _check(bool(fed_raw), source, "federations", "at least one federation (the root) is needed")
    policies: dict[str, Policy] = {}
    parents: dict[str, str | None] = {}
    for fid, table in fed_raw.items():
        where = f"federations.{fid}"
        _check_name(fid, source, where)
        _check(isinstance(table, Mapping), source, where, "must be a table")
        parents[fid] = _convert(
            {"parent": table.get("parent")}, _FederationFile, where, source
        ).parent
        body = {k: v for k, v in table.items() if k != "parent"}
        policies[fid] = _convert(_merge(defaults, body), Policy, where, source)
        _check_policy(policies[fid], source, where)

    run = with_adapters(run, policies, source)
    for fid, parent in parents.items():
        if parent is not None and parent not in parents:
            raise ConfigError(f"{source}: federations.{fid}.parent: unknown federation {parent!r}")
    # Cycles first: federations that all sit on cycles leave no root to count.
    levels: dict[str, int] = {}
    for fid in parents:
        seen, node, level = [fid], parents[fid], 0
        while node is not None:
            if node in seen:
                cycle = " -> ".join([*seen[seen.index(node) :], node])
                raise ConfigError(f"{source}: federations.{fid}.parent: cycle {cycle}")
            seen.append(node)
            node, level = parents[node], level + 1
        levels[fid] = level
    roots = [f for f, p in parents.items() if p is None]
    _check(
        len(roots) == 1,
        source,
        "federations",
        f"exactly one root (no parent) needed, found {roots}",
    )

    clients: dict[str, Client] = {}
    per_partition: dict[str, list[str]] = {}
    for cid, table in client_raw.items():
        where = f"clients.{cid}"
        _check_name(cid, source, where)
        _check(cid not in parents, source, where, "a client and a federation share this id")
        c: ClientConfig = _convert(table, ClientConfig, where, source)
        if c.federation not in parents:
            raise ConfigError(f"{source}: {where}.federation: unknown federation {c.federation!r}")
        if known_partitions is not None and c.partition not in known_partitions:
            raise ConfigError(
                f"{source}: {where}.partition: unknown partition {c.partition!r}; "
                f"known: {sorted(known_partitions)}"
            )
        if (c.shard is None) != (c.shards is None):
            raise ConfigError(
                f"{source}: {where}: shard and shards go together (set both or neither)"
            )
        if c.train_tokens is not None:
            _check(
                c.train_tokens > run.seq_len,
                source,
                f"{where}.train_tokens",
                f"must exceed run.seq_len ({run.seq_len}): a batch needs one window",
            )
        per_partition.setdefault(c.partition, []).append(cid)
        clients[cid] = Client(
            cid,
            c.federation,
            c.partition,
            c.shard or 0,
            c.shards or 0,
            c.keep_key_layers,
            c.train_tokens,
        )
    # Unset shards: the clients of one partition split it evenly, in file order.
    for sharing in per_partition.values():
        for i, cid in enumerate(sharing):
            cl = clients[cid]
            shards = cl.shards or len(sharing)
            shard = cl.shard if cl.shards else i
            _check(0 <= shard < shards, source, f"clients.{cid}.shard", f"must be in [0, {shards})")
            clients[cid] = dataclasses.replace(cl, shard=shard, shards=shards)
        holders: dict[tuple[int, int], str] = {}
        for cid in sharing:
            slot = (clients[cid].shard, clients[cid].shards)
            if slot in holders:
                raise ConfigError(
                    f"{source}: clients.{cid}.shard: shard {slot[0]} of {slot[1]} of partition "
                    f"{clients[cid].partition!r} is {holders[slot]}'s already (clients would "
                    "train on the same text)"
                )
            holders[slot] = cid

    federations: dict[str, Federation] = {}
    for fid in parents:
        children = tuple(f for f, p in parents.items() if p == fid)
        members = tuple(c for c, cl in clients.items() if cl.federation == fid)
        _check(bool(children or members), source, f"federations.{fid}", "has no members")
        federations[fid] = Federation(
            fid, parents[fid], levels[fid], policies[fid], children, members
        )
    network = parse_links(raw, set(federations) | set(clients), source)
    hierarchy = Hierarchy(run, federations, clients, source, network)
    for fid in federations:
        links = hierarchy.federations[fid].policy.residual
        if links is not None and isinstance(links.links, list):
            for other in links.links:
                if other == fid:
                    raise ConfigError(
                        f"{source}: federations.{fid}.residual.links: a federation cannot link "
                        "to itself (its own key layers are already the aggregate)"
                    )
                if other not in federations:
                    raise ConfigError(
                        f"{source}: federations.{fid}.residual.links: unknown federation {other!r}"
                    )
    # Last: it builds the model (on the meta device) to count what each DP edge noises.
    check_member_dp(hierarchy)
    return hierarchy
