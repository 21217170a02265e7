"""The cells of ``worldlm experiment``: one method, one data setting, one seed, one rate.

A cell runs on the simulator (the same core, strategies and trainer as the live system) and
is written to ``OUT/cells/<setting>/<method>/lr<lr>-s<seed>.json`` as soon as it finishes, so
a killed experiment continues from the cells already there. :func:`run_jobs` runs the cells
that are missing, one per process over ``jobs`` processes: cells are independent, so they
scale with the cores (2 processes running one cell each beat one process training two
clients at a time, whose federations wait for their slowest member).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import tomllib
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldlm.core.stopping import Stopped
from worldlm.lab.centralized import train_centralized
from worldlm.lab.methods import client_budget, method_configs
from worldlm.lab.report import MethodResult, curves_from_reports
from worldlm.training.corpus import partitions

#: The default budget per cell (overrides of each setting's config): 3 root rounds, 5 local
#: steps of 8 x 64 tokens, 2 evaluation batches. Sized so the whole default experiment fits
#: an hour on 2 cores (``benchmarks/experiment_cost.py``); ``budget=None`` keeps the config's.
STANDARD = {"rounds": 3, "local_steps": 5, "eval_batches": 2, "seq_len": 64, "batch_size": 8}
#: ``--quick``: a smoke-sized budget (and 3 seeds): the pipeline end to end in minutes.
QUICK = {"rounds": 1, "local_steps": 2, "eval_batches": 1, "seq_len": 32, "batch_size": 4}
TEST_FRACTION = 0.1

Transform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    setting: str
    method: str
    seed: int
    lr: float

    def path(self, out: Path) -> Path:
        return out / "cells" / self.setting / self.method / f"lr{self.lr:g}-s{self.seed}.json"


@dataclass
class CellResult:
    val: MethodResult
    test: MethodResult
    budget: dict[str, int] = field(default_factory=dict)
    epsilon: float = 0.0  # the largest (epsilon at delta) any federation of the cell spent
    #: mean bytes a client put on the wire per update (after its edge's codec); 0: unknown
    bytes_per_update: float = 0.0
    #: every held-out figure a client measured (only the final one unless
    #: ``run.test_each_eval``), by the round of the validation figure it was measured with
    test_curve: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: the simulated clock (worldlm/lab/clock.py): each client's (sim_s, validation
    #: perplexity) and each federation's close times
    timed: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    closes: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A cell and how to build its configs; picklable (transforms are module-level functions
    or ``functools.partial`` of them) so it can run in another process."""

    cell: Cell
    config: Path
    prepare: Transform | None = None  # changes the setting's config (e.g. a population)
    then: Transform | None = None  # changes each config the method built (e.g. DP)


def setting_raw(
    config: Path, seed: int, lr: float, budget: dict[str, int] | None
) -> dict[str, Any]:
    """A setting's config with the cell's seed and learning rate and the budget's overrides
    (keys of ``STANDARD``; ``None`` keeps the config's own budget)."""
    raw = tomllib.loads(config.read_text())
    run = raw.setdefault("run", {})
    run.update(seed=seed, lr=lr, test_fraction=TEST_FRACTION)
    run["id"] = f"{run.get('id', config.stem)}-s{seed}-lr{lr:g}"
    raw["defaults"].pop("lr", None)
    for table in raw.get("federations", {}).values():
        table.pop("lr", None)
    if budget:
        for key in ("rounds", "eval_batches", "seq_len", "batch_size"):
            if key in budget:
                run[key] = budget[key]
        if "local_steps" in budget:
            raw["defaults"]["local_steps"] = budget["local_steps"]
            for table in raw.get("federations", {}).values():
                table.pop("local_steps", None)
    return raw


def run_cell(
    job: Job,
    budget: dict[str, int] | None,
    should_stop: Callable[[], bool] | None = None,
    *,
    workers: int = 2,
) -> CellResult:
    """One cell on the simulator: validation and test curves of every client."""
    from worldlm.lab.simulator import Simulation

    cell = job.cell
    known = {p.name for p in partitions()}
    raw = setting_raw(job.config, cell.seed, cell.lr, budget)
    if job.prepare is not None:
        raw = job.prepare(raw)
    started = time.perf_counter()
    val: dict[str, list[tuple[int, float]]] = {}
    test: dict[str, list[tuple[int, float]]] = {}
    budgets: dict[str, int] = {}
    train_s = 0.0
    epsilon = 0.0
    sent: list[float] = []
    timed: dict[str, list[tuple[float, float]]] = {}
    closes: dict[str, list[float]] = {}
    method = cell.method.split("+")[0]  # "worldlm+dp": the method under a variant
    for h in method_configs(raw, method, known_partitions=known, then=job.then):
        budgets |= client_budget(h)
        if method == "centralized":
            cval, ctest, spent_s = train_centralized(h, should_stop)
            val |= cval
            test |= ctest
            train_s += spent_s
            continue
        simulation = Simulation(h, should_stop=should_stop, workers=workers)
        result = simulation.run()
        train_s += simulation.train_s
        for r in result.reports:
            if r.role == "client" and "bytes_out" in r.values:
                sent.append(r.values["bytes_out"])
            # Member-level DP is spent by aggregators, record-level DP by clients.
            spent = [v for k, v in r.values.items() if k.endswith("epsilon")]
            epsilon = max([epsilon, *spent])
            if r.role == "client" and "val_ppl" in r.values:
                timed.setdefault(r.node, []).append((r.values["sim_s"], r.values["val_ppl"]))
            elif r.role == "aggregator":
                closes.setdefault(r.node, []).append(r.values["sim_s"])
        val |= curves_from_reports(result.reports, "val_ppl")
        test |= curves_from_reports(result.reports, "test_ppl")
    wall = time.perf_counter() - started
    return CellResult(
        MethodResult(val, wall, train_s),
        MethodResult(val, wall, train_s, held_out=_finals(test) or None),
        budgets,
        epsilon,
        sum(sent) / len(sent) if sent else 0.0,
        test,
        timed,
        closes,
    )


def _finals(curves: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Each client's last figure (the held-out split is measured on the final model only)."""
    return {c: pts[-1][1] for c, pts in curves.items() if pts}


def save_cell(path: Path, cell: Cell, result: CellResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "cell": cell.__dict__,
        "val": {c: [list(p) for p in pts] for c, pts in result.val.curve.items()},
        "test": {c: [list(p) for p in pts] for c, pts in result.test_curve.items()}
        or {c: [[0, p]] for c, p in result.test.final.items()},
        "wall_s": result.val.wall_s,
        "train_s": result.val.train_s,
        "budget": result.budget,
        "epsilon": result.epsilon,
        "bytes_per_update": result.bytes_per_update,
        "timed": result.timed,
        "closes": result.closes,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # a killed experiment never leaves a torn cell


def load_cell(path: Path) -> CellResult:
    data = json.loads(path.read_text())

    def curves(d: dict[str, list[list[float]]]) -> dict[str, list[tuple[int, float]]]:
        return {c: [(int(r), float(p)) for r, p in pts] for c, pts in d.items()}

    wall, train = data["wall_s"], data["train_s"]
    val, test = curves(data["val"]), curves(data["test"])
    return CellResult(
        MethodResult(val, wall, train),
        MethodResult(val, wall, train, held_out=_finals(test) or None),
        data.get("budget", {}),
        data.get("epsilon", 0.0),
        data.get("bytes_per_update", 0.0),
        test,
        {c: [(float(t), float(p)) for t, p in pts] for c, pts in data.get("timed", {}).items()},
        data.get("closes", {}),
    )


# -- many cells at once ------------------------------------------------------------------

_stop_event: Any = None  # in a pool process: the parent's stop flag


def _init_process(stop: Any) -> None:
    import torch

    global _stop_event
    _stop_event = stop
    torch.set_num_threads(1)


def _run_in_process(job: Job, budget: dict[str, int] | None) -> CellResult:
    return run_cell(job, budget, _stop_event.is_set, workers=1)


def run_jobs(
    jobs: Iterable[Job],
    out: Path,
    budget: dict[str, int] | None,
    *,
    processes: int = 1,
    should_stop: Callable[[], bool] | None = None,
    on_done: Callable[[Cell], None] | None = None,
) -> None:
    """Run every job whose cell is not on disk yet and write it; ``processes`` at a time.

    With one process the cells run here (two client threads each). A stop request is passed
    to the pool's processes, whose cells end at their next message; finished cells are kept.
    """

    todo = [j for j in jobs if not j.cell.path(out).exists()]
    if processes <= 1 or len(todo) <= 1:
        for job in todo:
            save_cell(job.cell.path(out), job.cell, run_cell(job, budget, should_stop))
            if on_done is not None:
                on_done(job.cell)
        return
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_init_process, initargs=(stop,)
    ) as pool:
        running: dict[Future[CellResult], Job] = {
            pool.submit(_run_in_process, job, budget): job for job in todo
        }
        while running:
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            if should_stop is not None and should_stop():
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise Stopped("experiment stopped on request")
            for future in done:
                job = running.pop(future)
                save_cell(job.cell.path(out), job.cell, future.result())
                if on_done is not None:
                    on_done(job.cell)


def default_processes() -> int:
    """One cell per core this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
