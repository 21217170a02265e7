"""WorldLM and its baselines as transforms of one hierarchy config: one vocabulary of methods.

A method is not a strategy of its own: it is the same clients, data, model and token budget
under another tree or policy, built by the same config loader and strategy factory as the
system. Each builder takes a raw config (a dict read from TOML) and returns the raw configs to
run (several for ``local``: one one-client federation per client).

Token budget: a client trains once per round of its own federation, and a federation runs
``internal_rounds`` rounds per round of its parent, so a client's budget is ``run.rounds``
times the internal rounds of every federation on its path below the root
(:func:`client_budget`). Flat methods give every client exactly that many rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worldlm.config.hierarchy import ConfigError, Hierarchy, parse

Raw = dict[str, Any]

#: Policy fields a method sets itself; a federation's own value would undo the method.
_METHOD_FIELDS = ("key", "residual", "backbone", "server_lr", "momentum", "compression")


@dataclass(frozen=True)
class Method:
    """A named way to train the config's clients."""

    name: str
    label: str
    description: str
    build: Callable[[Raw, int], list[Raw]]


def client_budget(h: Hierarchy) -> dict[str, int]:
    """Local training rounds each client runs under ``h``: its whole path to the root
    (:meth:`Hierarchy.client_rounds`)."""
    return {cid: h.client_rounds(cid) for cid in h.clients}


def uniform_budget(h: Hierarchy) -> int:
    """The one budget every client has (flat baselines need it), or a ConfigError."""
    budget = client_budget(h)
    if len(set(budget.values())) != 1:
        raise ConfigError(
            f"{h.source}: clients train different numbers of rounds under this tree "
            f"({dict(sorted(budget.items()))}); flat baselines cannot match them: give every "
            "leaf federation's path the same product of internal_rounds"
        )
    steps = {h.client_policy(c).local_steps for c in h.clients}
    if len(steps) != 1:
        raise ConfigError(f"{h.source}: clients use different local_steps {sorted(steps)}")
    return next(iter(budget.values()))


def _policy(raw: Raw, **fields: Any) -> Raw:
    """``raw`` with ``fields`` set for every federation (federation overrides cleared)."""
    out = copy.deepcopy(raw)
    out.setdefault("defaults", {})
    for name in _METHOD_FIELDS:
        if name in fields:
            for table in out.get("federations", {}).values():
                table.pop(name, None)
    out["defaults"].update(fields)
    return out


def _suffix(raw: Raw, suffix: str) -> Raw:
    raw["run"]["id"] = f"{raw['run'].get('id', 'worldlm')}-{suffix}"
    return raw


def _flat(
    raw: Raw, rounds: int, suffix: str, clients: list[str] | None = None, **fields: Any
) -> Raw:
    """The same clients in one federation (the root), ``rounds`` rounds, one per root round."""
    flat = _policy(raw, **fields)
    flat["run"]["rounds"] = rounds
    flat["defaults"]["internal_rounds"] = 1
    flat["federations"] = {"root": {}}
    chosen = clients if clients is not None else list(raw["clients"])
    flat["clients"] = {
        c: {**copy.deepcopy(raw["clients"][c]), "federation": "root"} for c in chosen
    }
    return _suffix(flat, suffix)


_NONE = {"links": "none"}


def _worldlm(raw: Raw, rounds: int) -> list[Raw]:
    return [copy.deepcopy(raw)]


def _no_residual(raw: Raw, rounds: int) -> list[Raw]:
    return [_suffix(_policy(raw, residual=_NONE), "nores")]


def _mean_key(raw: Raw, rounds: int) -> list[Raw]:
    return [_suffix(_policy(raw, key="mean", residual=_NONE), "meankey")]


def _compressed(codec: str, **params: Any) -> Callable[[Raw, int], list[Raw]]:
    """WorldLM with every edge's updates in ``codec`` (error feedback on)."""

    def build(raw: Raw, rounds: int) -> list[Raw]:
        return [_suffix(_policy(raw, compression={"codec": codec, **params}), codec)]

    return build


def _hierarchical(raw: Raw, rounds: int) -> list[Raw]:
    return [_suffix(_policy(raw, key="fedavg", backbone="fedavg", residual=_NONE), "hfedavg")]


def _fedavg(raw: Raw, rounds: int) -> list[Raw]:
    return [_flat(raw, rounds, "fedavg", key="fedavg", backbone="fedavg", residual=_NONE)]


def _fedavgm(raw: Raw, rounds: int) -> list[Raw]:
    return [
        _flat(
            raw,
            rounds,
            "fedavgm",
            key="fedavg",
            backbone="fedavgm",
            momentum=0.9,
            server_lr=1.0,
            residual=_NONE,
        )
    ]


def _fedper(raw: Raw, rounds: int) -> list[Raw]:
    flat = _flat(raw, rounds, "fedper", key="local", backbone="fedavg", residual=_NONE)
    for client in flat["clients"].values():
        client["keep_key_layers"] = True
    return [flat]


def misplace(raw: Raw) -> Raw:
    """The same clients regrouped so that each leaf federation holds dissimilar data.

    Client i of leaf federation j (in config order) moves to leaf (j + i) mod L: the first
    client of each federation stays, the others rotate into neighbours, so no two clients
    that the config grouped together stay together (with up to L clients per leaf).
    """
    out = copy.deepcopy(raw)
    leaves: dict[str, list[str]] = {}
    for cid, table in raw["clients"].items():
        leaves.setdefault(table["federation"], []).append(cid)
    names = list(leaves)
    for j, fid in enumerate(names):
        for i, cid in enumerate(leaves[fid]):
            out["clients"][cid]["federation"] = names[(j + i) % len(names)]
    return out


def _misplaced(raw: Raw, rounds: int) -> list[Raw]:
    return [_suffix(misplace(raw), "misplaced")]


def _centralized(raw: Raw, rounds: int) -> list[Raw]:
    # Not a federation: the clients of this flat config are whose text is pooled.
    return [_flat(raw, rounds, "central", key="fedavg", backbone="fedavg", residual=_NONE)]


def _local(raw: Raw, rounds: int) -> list[Raw]:
    return [
        _flat(raw, rounds, f"local-{c}", [c], key="fedavg", backbone="fedavg", residual=_NONE)
        for c in raw["clients"]
    ]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("worldlm", "WorldLM", "the config as written", _worldlm),
        Method("worldlm_nores", "WorldLM w/o residuals", "no residual embeddings", _no_residual),
        Method(
            "worldlm_meankey",
            "WorldLM w/o attention",
            "key layers kept per federation and averaged (no attention, no residuals)",
            _mean_key,
        ),
        Method(
            "worldlm_misplaced",
            "WorldLM, misplaced tree",
            "the config's policy with each federation's clients regrouped to dissimilar data",
            _misplaced,
        ),
        Method(
            "worldlm_bf16",
            "WorldLM, bf16 updates",
            "every update sent in bfloat16 (half the bytes), with error feedback",
            _compressed("bf16"),
        ),
        Method(
            "worldlm_int8",
            "WorldLM, int8 updates",
            "every update sent in int8 with a float32 scale per 256 values (0.26x the bytes), "
            "with error feedback",
            _compressed("int8", block=256),
        ),
        Method(
            "worldlm_topk",
            "WorldLM, top-10% updates",
            "every update sent as its largest 10% of values and their indices (0.2x the bytes), "
            "with error feedback",
            _compressed("topk", fraction=0.1),
        ),
        Method(
            "hierarchical_fedavg",
            "Hierarchical FedAvg",
            "the tree, every tensor averaged up to the root (no key layers)",
            _hierarchical,
        ),
        Method("fedavg", "FedAvg (flat)", "one federation, every tensor averaged", _fedavg),
        Method(
            "fedavgm",
            "FedAvgM (flat)",
            "one federation, server momentum 0.9 on every tensor",
            _fedavgm,
        ),
        Method(
            "fedper",
            "FedPer (flat)",
            "one federation, backbone averaged, each client keeps its own key layers",
            _fedper,
        ),
        Method("local", "Local only", "each client trains alone", _local),
        Method(
            "centralized",
            "Centralized",
            "one model on the union of the clients' training text, same total budget "
            "(worldlm/lab/centralized.py; the config lists the clients)",
            _centralized,
        ),
    )
}


def method_configs(
    raw: Raw,
    method: str,
    *,
    known_partitions: set[str] | None = None,
    then: Callable[[Raw], Raw] | None = None,
) -> list[Hierarchy]:
    """The validated hierarchies that run ``method`` on ``raw``'s clients and budget
    (``then`` changes each built config before it is validated, e.g. to add DP)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    source = f"{raw.get('run', {}).get('id', 'config')} [{method}]"
    rounds = uniform_budget(parse(raw, source=source, known_partitions=known_partitions))
    return [
        parse(then(r) if then else r, source=source, known_partitions=known_partitions)
        for r in METHODS[method].build(raw, rounds)
    ]
