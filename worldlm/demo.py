"""The shipped demo: WorldLM against flat FedAvg and local-only training, on the same clients.

Three levels (root -> language-group federations -> clients) on the built-in corpus with the
tiny model. Every method trains each client for the same number of rounds of the same number
of local steps (the same token budget) and is evaluated on the same fixed validation splits:

* ``worldlm``: the shipped hierarchy (``worldlm/configs/demo.toml``): backbone averaged up to
  the root, key layers aggregated by attention inside each federation, residual embeddings
  from sibling federations;
* ``fedavg``: one flat federation of all clients, everything averaged (no key layers);
* ``local``: each client trains alone, nothing shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from brokers.embedded import embedded_servers
from schemas.messages import MetricsReport
from worldlm.config import Hierarchy, parse
from worldlm.participants.node import Endpoints
from worldlm.participants.progress import RoundProgress
from worldlm.participants.runner import run_hierarchy
from worldlm.report import MethodResult, write_report
from worldlm.training.corpus import partitions
from worldlm.training.workbench import Workbench, initial_weights

#: Overrides of ``--quick``: fewer rounds, steps and evaluation batches.
QUICK = {"rounds": 1, "internal_rounds": 2, "local_steps": 8, "eval_batches": 2}


def demo_config_path() -> Path:
    return Path(str(resources.files("worldlm") / "configs" / "demo.toml"))


def demo_raw(
    run_id: str, overrides: dict[str, int] | None = None, config: Path | None = None
) -> dict[str, Any]:
    """A hierarchy config (the shipped demo's unless ``config``) as a dict, with ``rounds``,
    ``eval_batches``, ``internal_rounds`` or ``local_steps`` overridden."""
    raw = tomllib.loads((config or demo_config_path()).read_text())
    raw["run"]["id"] = run_id
    for key, value in (overrides or {}).items():
        if key in ("rounds", "eval_batches", "seq_len", "batch_size"):
            raw["run"][key] = value
        elif key in ("internal_rounds", "local_steps"):
            raw["defaults"][key] = value
        else:
            raise ValueError(f"unknown demo override {key!r}")
    return raw


def client_rounds(h: Hierarchy) -> int:
    """Training rounds each client runs under the hierarchy (root rounds x internal rounds)."""
    per_root_round = {
        h.federations[c.federation].policy.internal_rounds for c in h.clients.values()
    }
    assert len(per_root_round) == 1, "the demo gives every leaf federation the same internal rounds"
    return h.run.rounds * per_root_round.pop()


def flat_fedavg(raw: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The same clients in one flat federation, FedAvg on every tensor, ``rounds`` rounds."""
    flat = copy.deepcopy(raw)
    flat["run"]["id"] = raw["run"]["id"] + "-fedavg"
    flat["run"]["rounds"] = rounds
    flat["defaults"] |= {"key": "fedavg", "backbone": "fedavg", "internal_rounds": 1}
    flat["defaults"].pop("residual", None)
    flat["defaults"]["residual"] = {"links": "none"}
    flat["federations"] = {"root": {}}
    for client in flat["clients"].values():
        client["federation"] = "root"
    return flat


@dataclass
class DemoOutcome:
    report: dict[str, Any]
    out: Path


def _result(reports: list[MetricsReport], wall_s: float) -> MethodResult:
    curve: dict[str, list[tuple[int, float]]] = {}
    final: dict[str, float] = {}
    for r in reports:
        if r.role != "client" or "val_ppl" not in r.values:
            continue
        curve.setdefault(r.node, []).append((r.round, r.values["val_ppl"]))
        if r.values.get("final"):
            final[r.node] = r.values["val_ppl"]
    return MethodResult(final, curve, wall_s)


async def _federated(h: Hierarchy, endpoints: Endpoints, desc: str) -> MethodResult:
    with RoundProgress(h, desc=desc) as progress:
        result = await run_hierarchy(h, endpoints, on_report=progress.update)
    return _result(result.reports, result.wall_s)


def _local_client(h: Hierarchy, cid: str, rounds: int) -> tuple[float, list[tuple[int, float]]]:
    bench = Workbench(h.run, h.clients[cid], h.client_policy(cid))
    weights = initial_weights(h.run)
    curve = []
    for rnd in range(rounds):
        curve.append((rnd, bench.evaluate(weights).perplexity))
        result = bench.train(weights)
        weights = {
            n: w + result.delta[n] if w.is_floating_point() else w for n, w in weights.items()
        }
    final = bench.evaluate(weights).perplexity
    curve.append((rounds, final))
    return final, curve


def _local(h: Hierarchy, rounds: int) -> MethodResult:
    """Each client alone: the same workbench, rounds and steps, no communication.

    Two clients at a time: torch releases the GIL in its kernels, so two threads use both
    cores of a small machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    started = time.perf_counter()
    final: dict[str, float] = {}
    curve: dict[str, list[tuple[int, float]]] = {}
    clients = sorted(h.clients)
    with (
        ThreadPoolExecutor(max_workers=2) as pool,
        tqdm(total=len(clients), desc="local", unit="client") as bar,
    ):
        futures = {cid: pool.submit(_local_client, h, cid, rounds) for cid in clients}
        for cid, future in futures.items():
            final[cid], curve[cid] = future.result()
            bar.update()
    return MethodResult(final, curve, time.perf_counter() - started)


async def run_demo(
    out: Path,
    *,
    quick: bool = False,
    run_id: str | None = None,
    overrides: dict[str, int] | None = None,
    dashboard_port: int | None = None,
    config: Path | None = None,
) -> DemoOutcome:
    """Run the three methods and write the report into ``out``.

    ``config`` replaces the shipped demo hierarchy (e.g. ``worldlm/configs/domains.toml``):
    WorldLM runs it as written; flat FedAvg and local-only run on the same clients.

    With ``dashboard_port``, a live dashboard of the WorldLM run is served on that port while
    the federated methods run (its URL is printed on stderr).
    """
    started = time.perf_counter()
    run_id = run_id or f"demo-{int(time.time())}"
    known = {p.name for p in partitions()}
    raw = demo_raw(run_id, (QUICK if quick else {}) | (overrides or {}), config)
    worldlm = parse(raw, source=str(config or demo_config_path()), known_partitions=known)
    rounds = client_rounds(worldlm)
    fedavg = parse(flat_fedavg(raw, rounds), source="flat fedavg", known_partitions=known)
    async with embedded_servers() as servers, contextlib.AsyncExitStack() as stack:
        endpoints = Endpoints(servers.kafka, servers.redis)
        if dashboard_port is not None:
            from worldlm.dashboard import Dashboard

            board = Dashboard(
                kafka=servers.kafka,
                redis=servers.redis,
                run_id=run_id,
                hierarchy=worldlm,
                port=dashboard_port,
            )
            await stack.enter_async_context(board)
            print(f"dashboard: {board.url} (run {run_id})", file=sys.stderr, flush=True)
        results = {
            "worldlm": await _federated(worldlm, endpoints, "worldlm"),
            "fedavg": await _federated(fedavg, endpoints, "fedavg"),
        }
    results["local"] = await asyncio.to_thread(_local, worldlm, rounds)
    clients = worldlm.clients
    settings = {
        "model": worldlm.run.model,
        "root_rounds": worldlm.run.rounds,
        "client_rounds": rounds,
        "local_steps": worldlm.client_policy(next(iter(clients))).local_steps,
        "batch_size": worldlm.run.batch_size,
        "seq_len": worldlm.run.seq_len,
        "quick": quick,
        "config": (config or demo_config_path()).name,
    }
    report = write_report(
        out,
        results,
        groups={c: cl.federation for c, cl in clients.items()},
        partitions={c: cl.partition for c, cl in clients.items()},
        rounds=rounds,
        wall_s=time.perf_counter() - started,
        settings=settings,
    )
    return DemoOutcome(report, out)
