"""What the outside-probe scenarios share (issue 19's probes made campaign scenarios).

A two-federation tree made of the campaign's config, a start in which every client has
joined its federation before any round opens (processes start slowly on a loaded machine,
and a round with a short deadline would otherwise close short of members), waiting for
processes to exit while saying who is still running, and what the processes wrote.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from brokers.state import RedisState
from schemas.keyspace import Keyspace
from worldlm.chaos.fleet import Fleet, Process
from worldlm.chaos.trials import Stage
from worldlm.config.hierarchy import Hierarchy
from worldlm.record.recording import audit_run

#: The two federations a flat config's clients are dealt to.
CHILDREN = ("west", "east")
#: How often a wait on Redis looks again.
POLL_S = 0.5
#: How often a wait for exits names who is still running.
PROGRESS_S = 5.0


def two_federations(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` as a tree root -> two federations -> clients: as it is if it is one already
    (two children of the root hold clients), else its clients dealt in turn, by id, to
    :data:`CHILDREN` under its root."""
    out = copy.deepcopy(dict(raw))
    feds: dict[str, Any] = dict(out.get("federations", {}))
    clients: dict[str, Any] = dict(out.get("clients", {}))
    roots = [f for f, t in feds.items() if not dict(t).get("parent")]
    if len(roots) != 1 or len(clients) < 2:
        raise ValueError("a two-federation tree needs one root and two clients at least")
    root = roots[0]
    homes = {dict(c).get("federation") for c in clients.values()}
    children = [f for f, t in feds.items() if dict(t).get("parent") == root and f in homes]
    if len(children) >= 2:
        return out
    out["federations"] = {root: feds[root], **{c: {"parent": root} for c in CHILDREN}}
    out["clients"] = {
        cid: {**dict(clients[cid]), "federation": CHILDREN[i % 2]}
        for i, cid in enumerate(sorted(clients))
    }
    return out


def members_of(h: Hierarchy, federation: str) -> list[str]:
    """The clients of ``federation``, by id."""
    return sorted(c.id for c in h.clients.values() if c.federation == federation)


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Once ``check()`` holds: Redis has no event to wait on, so look every ``POLL_S``."""
    while True:
        if await check():
            return
        await asyncio.sleep(POLL_S)


async def start_joined(fleet: Fleet, redis: str, stage: Stage) -> None:
    """Every client of the fleet's config, then, once each heartbeats in its federation,
    every aggregator (leaves first). ``redis``: an admin's connection (it reads rosters)."""
    h = fleet.config.hierarchy
    await fleet.start(clients=sorted(h.clients))
    stage("waiting for every client to join its federation")
    async with RedisState(redis, Keyspace(h.run.id)) as state:

        async def joined() -> bool:
            for fed in {c.federation for c in h.clients.values()}:
                live = set((await state.roster(fed)).live)
                if not set(members_of(h, fed)) <= live:
                    return False
            return True

        await fleet.alongside(_until(joined))
    await fleet.start(aggregators=[f.id for f in reversed(list(h.walk()))])


async def exits(processes: Iterable[Process], stage: Stage) -> dict[str, int]:
    """Every process's return code once it exited, naming the ones still running in the
    stage (what a hang's verdict says); bound it with the trial's limit."""
    waits = {p.node: asyncio.ensure_future(p.wait()) for p in processes}
    while running := sorted(n for n, w in waits.items() if not w.done()):
        stage(f"waiting for {running} to exit")
        left = [waits[n] for n in running]
        await asyncio.wait(left, timeout=PROGRESS_S, return_when=asyncio.FIRST_COMPLETED)
    return {n: w.result() for n, w in waits.items()}


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log entries a process wrote (other lines skipped)."""
    found = []
    for line in _lines(path):
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def plain_lines(path: Path) -> list[str]:
    """What a process wrote that is not a JSON log entry (its last words, a traceback)."""
    return [line for line in _lines(path) if line and not line.startswith("{")]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


async def lost_updates(
    kafka: str, h: Hierarchy, keys: Mapping[str, Ed25519PublicKey] | None = None
) -> int:
    """Updates ``worldlm audit`` counts lost in the run (only its participants' count)."""
    table = await audit_run(kafka, h.run.id, hierarchy=h, keys=keys)
    return sum(len(ids) for ids in table.lost.values())
