"""The shipped demo: WorldLM against its baselines on the same clients, over seeds.

Three levels (root -> language-group federations -> clients) on the built-in corpus with the
tiny model, or any hierarchy given with ``--config``. Every method (``worldlm/lab/methods.py``)
trains each client for the same number of rounds of the same number of local steps (the
budget its path to the root gives it) and is evaluated on the same fixed validation splits.
Methods run on the simulator (the same federation core, strategies and trainer as the live
system; deterministic for a seed); ``live=True`` runs WorldLM itself on embedded Kafka and
Redis instead, which is what a dashboard can follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.lab.methods import METHODS, client_budget, method_configs
from worldlm.lab.progress import RoundProgress
from worldlm.lab.report import Comparison, MethodResult, curves_from_reports, write_report
from worldlm.training.corpus import partitions

#: Overrides of ``--quick``: fewer rounds, steps and evaluation batches.
QUICK = {"rounds": 1, "internal_rounds": 2, "local_steps": 8, "eval_batches": 2}
#: The demo's methods: WorldLM, its ablation without attention, and the baselines that
#: beat or bracket it.
DEMO_METHODS = ("worldlm", "worldlm_meankey", "fedper", "fedavg", "local")


def demo_config_path() -> Path:
    return Path(str(resources.files("worldlm") / "configs" / "demo.toml"))


def demo_raw(
    run_id: str, overrides: dict[str, int] | None = None, config: Path | None = None
) -> dict[str, Any]:
    """A hierarchy config (the shipped demo's unless ``config``) as a dict, with ``rounds``,
    ``eval_batches``, ``seq_len``, ``batch_size``, ``internal_rounds`` or ``local_steps``
    overridden (``internal_rounds`` for every federation but the root)."""
    raw = tomllib.loads((config or demo_config_path()).read_text())
    raw["run"]["id"] = run_id
    for key, value in (overrides or {}).items():
        if key in ("rounds", "eval_batches", "seq_len", "batch_size", "seed"):
            raw["run"][key] = value
        elif key in ("internal_rounds", "local_steps"):
            raw["defaults"][key] = value
            for table in raw.get("federations", {}).values():
                if table.get("parent") is not None:
                    table.pop(key, None)
        else:
            raise ValueError(f"unknown demo override {key!r}")
    return raw


@dataclass
class DemoOutcome:
    report: dict[str, Any]
    out: Path


def run_method(
    raw: dict[str, Any],
    method: str,
    *,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> MethodResult:
    """``method`` on ``raw``'s clients, on the simulator (deterministic for the seed)."""
    from worldlm.lab.simulator import Simulation

    known = {p.name for p in partitions()}
    started = time.perf_counter()
    curve: dict[str, list[tuple[int, float]]] = {}
    train_s = 0.0
    hierarchies = method_configs(raw, method, known_partitions=known)
    disable = len(hierarchies) > 1 or None
    for h in hierarchies:
        with RoundProgress(h, desc=desc or method, disable=disable) as progress:
            simulation = Simulation(h, on_report=progress.update, should_stop=should_stop)
            result = simulation.run()
        curve |= curves_from_reports(result.reports)
        train_s += simulation.train_s
    return MethodResult(curve, time.perf_counter() - started, train_s)


async def run_live(
    h: Hierarchy, *, dashboard_port: int | None = None, stop: asyncio.Event | None = None
) -> MethodResult:
    """WorldLM itself on embedded Kafka and Redis (optionally with a live dashboard)."""
    from brokers.embedded import embedded_servers
    from worldlm.participants.node import Endpoints
    from worldlm.participants.runner import run_hierarchy

    async with embedded_servers() as servers, contextlib.AsyncExitStack() as stack:
        if dashboard_port is not None:
            from worldlm.dashboard import Dashboard

            board = Dashboard(
                kafka=servers.kafka,
                redis=servers.redis,
                run_id=h.run.id,
                hierarchy=h,
                port=dashboard_port,
            )
            await stack.enter_async_context(board)
            print(f"dashboard: {board.url} (run {h.run.id})", file=sys.stderr, flush=True)
        with RoundProgress(h, desc="worldlm (live)") as progress:
            result = await run_hierarchy(
                h, Endpoints(servers.kafka, servers.redis), on_report=progress.update, stop=stop
            )
    return MethodResult(curves_from_reports(result.reports), result.wall_s)


async def run_demo(
    out: Path,
    *,
    quick: bool = False,
    run_id: str | None = None,
    overrides: dict[str, int] | None = None,
    seeds: int = 1,
    methods: tuple[str, ...] = DEMO_METHODS,
    live: bool = False,
    dashboard_port: int | None = None,
    config: Path | None = None,
    stop: asyncio.Event | None = None,
) -> DemoOutcome:
    """Run ``methods`` for seeds ``0..seeds-1`` and write the report into ``out``.

    ``config`` replaces the shipped demo hierarchy (e.g. ``worldlm/config/shipped/domains.toml``).
    With ``live`` (implied by ``dashboard_port``) WorldLM runs on embedded Kafka and Redis.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    run_id = run_id or f"demo-{int(time.time())}"
    live = live or dashboard_port is not None
    known = {p.name for p in partitions()}
    results: dict[str, dict[int, MethodResult]] = {m: {} for m in methods}
    for seed in range(seeds):
        raw = demo_raw(
            f"{run_id}-s{seed}",
            (QUICK if quick else {}) | (overrides or {}) | {"seed": seed},
            config,
        )
        for method in methods:
            if method == "worldlm" and live:
                h = parse(raw, source=str(config or demo_config_path()), known_partitions=known)
                results[method][seed] = await run_live(h, dashboard_port=dashboard_port, stop=stop)
            else:
                desc = f"{method} seed {seed}"
                results[method][seed] = await asyncio.to_thread(
                    run_method,
                    raw,
                    method,
                    desc=desc,
                    should_stop=stop.is_set if stop is not None else None,
                )
    h = parse(raw, source=str(config or demo_config_path()), known_partitions=known)
    some = next(iter(h.clients))
    settings = {
        "config": (config or demo_config_path()).name,
        "model": h.run.model,
        "root_rounds": h.run.rounds,
        "client_rounds": max(client_budget(h).values()),
        "local_steps": h.client_policy(some).local_steps,
        "batch_size": h.run.batch_size,
        "seq_len": h.run.seq_len,
        "seeds": seeds,
        "quick": quick,
        "worldlm_live": live,
    }
    comparison = Comparison(
        results,
        groups={c: cl.federation for c, cl in h.clients.items()},
        partitions={c: cl.partition for c, cl in h.clients.items()},
        labels={m: METHODS[m].label for m in methods},
        settings=settings,
    )
    command = "worldlm demo" + (" --quick" if quick else "") + f" --seeds {seeds}"
    if config is not None:
        command += f" --config {config}"
    report = write_report(out, comparison, title="WorldLM demo report", command=command)
    return DemoOutcome(report, out)
