"""The paper's table, reproducible: data settings x methods x seeds x learning rates.

Every cell is one method on one data setting with one seed and one learning rate, run on the
simulator (the same core, strategies and trainer as the live system). A cell is written to
``OUT/cells/<setting>/<method>/lr<lr>-s<seed>.json`` as soon as it finishes, so a killed
experiment continues from the cells already there.

Fairness: each method picks its learning rate from the grid by its validation score on seed
0 (each client's mean validation perplexity over the last quarter of its evaluations, averaged
over clients); the other seeds run at that rate; the reported figures are on each client's
held-out **test** split (``run.test_fraction``), never used for any choice.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worldlm.centralized import train_centralized
from worldlm.config import parse
from worldlm.dp_study import DPStudy, clip_rule, noise_for, population, with_client_dp
from worldlm.methods import METHODS, client_budget, method_configs, uniform_budget
from worldlm.report import (
    Comparison,
    MethodResult,
    curves_from_reports,
    write_report,
)
from worldlm.training.corpus import partitions

#: The shipped data settings: name -> config file in ``worldlm/configs``.
SETTINGS = {"languages": "demo.toml", "domains": "domains.toml", "mixed": "mixed.toml"}
#: Every method of the experiment (``worldlm/methods.py``).
EXPERIMENT_METHODS = (
    "worldlm",
    "worldlm_nores",
    "worldlm_meankey",
    "worldlm_misplaced",
    "hierarchical_fedavg",
    "fedavg",
    "fedavgm",
    "fedper",
    "local",
    "centralized",
)
LRS = (1e-3, 3e-3, 1e-2)
#: ``--quick``: a smaller budget per cell (and 3 seeds); the default is the demo's budget.
QUICK = {"rounds": 1, "local_steps": 5, "eval_batches": 1, "seq_len": 32, "batch_size": 8}
TEST_FRACTION = 0.1


@dataclass
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


def setting_raw(config: Path, seed: int, lr: float, quick: bool | dict[str, int]) -> dict[str, Any]:
    """A setting's config with the cell's seed and learning rate (and the quick budget, or
    the given overrides of ``QUICK``'s keys)."""
    raw = tomllib.loads(config.read_text())
    run = raw.setdefault("run", {})
    run.update(seed=seed, lr=lr, test_fraction=TEST_FRACTION)
    run["id"] = f"{run.get('id', config.stem)}-s{seed}-lr{lr:g}"
    raw["defaults"].pop("lr", None)
    for table in raw.get("federations", {}).values():
        table.pop("lr", None)
    if quick:
        budget = QUICK if quick is True else quick
        for key in ("rounds", "eval_batches", "seq_len", "batch_size"):
            if key in budget:
                run[key] = budget[key]
        raw["defaults"]["local_steps"] = budget["local_steps"]
        for table in raw.get("federations", {}).values():
            table.pop("local_steps", None)
    return raw


def run_cell(
    cell: Cell,
    config: Path,
    quick: bool | dict[str, int],
    should_stop: Callable[[], bool] | None = None,
    *,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    then: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> CellResult:
    """One cell on the simulator: validation and test curves of every client.

    ``prepare`` changes the setting's config before the method is built (e.g. a larger
    population); ``then`` changes each config the method built (e.g. DP on its edges).
    """
    from worldlm.simulator import Simulation

    known = {p.name for p in partitions()}
    raw = setting_raw(config, cell.seed, cell.lr, quick)
    if prepare is not None:
        raw = prepare(raw)
    started = time.perf_counter()
    val: dict[str, list[tuple[int, float]]] = {}
    test: dict[str, list[tuple[int, float]]] = {}
    budget: dict[str, int] = {}
    train_s = 0.0
    epsilon = 0.0
    method = cell.method.removesuffix("+dp")
    for h in method_configs(raw, method, known_partitions=known, then=then):
        budget |= client_budget(h)
        if method == "centralized":
            cval, ctest, spent_s = train_centralized(h, should_stop)
            val |= cval
            test |= ctest
            train_s += spent_s
            continue
        simulation = Simulation(h, should_stop=should_stop)
        result = simulation.run()
        train_s += simulation.train_s
        for r in result.reports:
            if r.role == "aggregator":
                spent = [v for k, v in r.values.items() if k.endswith("epsilon")]
                epsilon = max([epsilon, *spent])
        val |= curves_from_reports(result.reports, "val_ppl")
        test |= curves_from_reports(result.reports, "test_ppl")
    wall = time.perf_counter() - started
    return CellResult(
        MethodResult(val, wall, train_s), MethodResult(test, wall, train_s), budget, epsilon
    )


def save_cell(path: Path, cell: Cell, result: CellResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "cell": cell.__dict__,
        "val": {c: [list(p) for p in pts] for c, pts in result.val.curve.items()},
        "test": {c: [list(p) for p in pts] for c, pts in result.test.curve.items()},
        "wall_s": result.val.wall_s,
        "train_s": result.val.train_s,
        "budget": result.budget,
        "epsilon": result.epsilon,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # a killed experiment never leaves a torn cell


def load_cell(path: Path) -> CellResult:
    data = json.loads(path.read_text())

    def curves(d: dict[str, list[list[float]]]) -> dict[str, list[tuple[int, float]]]:
        return {c: [(int(r), float(p)) for r, p in pts] for c, pts in d.items()}

    wall, train = data["wall_s"], data["train_s"]
    return CellResult(
        MethodResult(curves(data["val"]), wall, train),
        MethodResult(curves(data["test"]), wall, train),
        data.get("budget", {}),
        data.get("epsilon", 0.0),
    )


@dataclass
class Experiment:
    """The grid and where it writes."""

    out: Path
    configs: dict[str, Path]
    methods: Sequence[str] = EXPERIMENT_METHODS
    seeds: int = 5
    lrs: Sequence[float] = LRS
    quick: bool | dict[str, int] = False  # True: QUICK; a dict: another small budget
    on_cell: Callable[[Cell, bool], None] | None = None  # (cell, was it cached)
    should_stop: Callable[[], bool] | None = None
    #: DP at a population, on the first data setting (None: skip)
    dp: DPStudy | None = None

    def cells(self) -> int:
        """How many cells the grid has (the misplaced tree runs at WorldLM's rate only)."""
        per_setting = sum(
            (1 if m == "worldlm_misplaced" and "worldlm" in self.methods else len(self.lrs))
            + self.seeds
            - 1
            for m in self.methods
        )
        dp = 0 if self.dp is None else 2 * len(self.dp.methods) * self.seeds
        return len(self.configs) * per_setting + dp

    def cell(self, cell: Cell, config: Path | None = None, **transforms: Any) -> CellResult:
        path = cell.path(self.out)
        if path.exists():
            result = load_cell(path)
            cached = True
        else:
            config = config or self.configs[cell.setting]
            result = run_cell(cell, config, self.quick, self.should_stop, **transforms)
            save_cell(path, cell, result)
            cached = False
        if self.on_cell is not None:
            self.on_cell(cell, cached)
        return result

    def run(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"settings": {}}
        for setting, config in self.configs.items():
            summary["settings"][setting] = self._setting(setting, config)
        if self.dp is not None:
            setting, config = next(iter(self.configs.items()))
            chosen = summary["settings"][setting]["lr"]["chosen"]
            summary["dp"] = self._dp(setting, config, self.dp, chosen)
        summary["quick"] = bool(self.quick)
        summary["seeds"] = self.seeds
        summary["lrs"] = list(self.lrs)
        return summary

    def _setting(self, setting: str, config: Path) -> dict[str, Any]:
        results: dict[str, dict[int, MethodResult]] = {}
        chosen: dict[str, float] = {}
        selection: dict[str, dict[str, float]] = {}
        for method in self.methods:
            # the misplaced tree runs at WorldLM's rate: it asks what the tree costs, not
            # what a retuned method could recover
            grid = (
                [chosen["worldlm"]]
                if method == "worldlm_misplaced" and "worldlm" in chosen
                else self.lrs
            )
            val = {lr: self.cell(Cell(setting, method, 0, lr)) for lr in grid}
            selection[method] = {f"{lr:g}": v.val.mean for lr, v in val.items()}
            best = min(val, key=lambda lr: val[lr].val.mean)
            chosen[method] = best
            results[method] = {0: val[best].test}
            for seed in range(1, self.seeds):
                results[method][seed] = self.cell(Cell(setting, method, seed, best)).test
        raw = setting_raw(config, 0, chosen.get("worldlm", self.lrs[0]), self.quick)
        h = parse(raw, known_partitions={p.name for p in partitions()})
        comparison = Comparison(
            results,
            groups={c: cl.federation for c, cl in h.clients.items()},
            partitions={c: cl.partition for c, cl in h.clients.items()},
            labels={m: f"{METHODS[m].label} (lr {chosen[m]:g})" for m in self.methods},
            settings={
                "config": config.name,
                "client_rounds": max(client_budget(h).values()),
                "local_steps": h.client_policy(next(iter(h.clients))).local_steps,
                "seeds": self.seeds,
                "lr_grid": list(self.lrs),
                "quick": bool(self.quick),
            },
            split="test",
        )
        command = (
            "worldlm experiment" + (" --quick" if self.quick else "") + f" --seeds {self.seeds}"
        )
        data = write_report(
            self.out / setting, comparison, title=f"WorldLM experiment: {setting}", command=command
        )
        data["lr"] = {"chosen": {m: chosen[m] for m in self.methods}, "validation": selection}
        (self.out / setting / "report.json").write_text(json.dumps(data, indent=2))
        return data

    def _dp(
        self, setting: str, config: Path, study: DPStudy, chosen: dict[str, float]
    ) -> dict[str, Any]:
        """Each method with and without DP on the client edges, at a larger population."""
        name = f"{setting}-dp"

        def prepare(raw: dict[str, Any]) -> dict[str, Any]:
            return population(raw, study.shards)

        lr = {m: chosen.get(m, self.lrs[0]) for m in study.methods}
        raw0 = prepare(setting_raw(config, 0, lr[study.methods[0]], self.quick))
        h = parse(raw0, known_partitions={p.name for p in partitions()})
        rounds = uniform_budget(h)
        # The clip rule trains every client once: kept with the cells, so a rerun reuses it.
        rule = self.out / "cells" / name / "dp.json"
        wanted = {"shards": study.shards, "epsilon": study.epsilon, "delta": study.delta}
        cached = json.loads(rule.read_text()) if rule.exists() else {}
        if cached.get("study") == wanted and cached.get("rounds") == rounds:
            clip, sigma = cached["clip"], cached["sigma"]
        else:
            clip = clip_rule(raw0)
            sigma = noise_for(study.epsilon, study.delta, rounds)
            rule.parent.mkdir(parents=True, exist_ok=True)
            rule.write_text(
                json.dumps({"study": wanted, "rounds": rounds, "clip": clip, "sigma": sigma})
            )

        def private(raw: dict[str, Any]) -> dict[str, Any]:
            return with_client_dp(raw, clip, sigma, study.delta)

        results: dict[str, dict[int, MethodResult]] = {}
        spent: dict[str, float] = {}
        for method in study.methods:
            for dp in (False, True):
                key = f"{method}+dp" if dp else method
                results[key] = {}
                for seed in range(self.seeds):
                    cell = Cell(name, key, seed, lr[method])
                    got = self.cell(cell, config, prepare=prepare, then=private if dp else None)
                    results[key][seed] = got.test
                    spent[key] = max(spent.get(key, 0.0), got.epsilon)
        members = {f.id: len(f.clients) for f in h.federations.values() if f.clients}
        comparison = Comparison(
            results,
            groups={c: cl.federation for c, cl in h.clients.items()},
            partitions={c: cl.partition for c, cl in h.clients.items()},
            labels={
                k: f"{METHODS[k.removesuffix('+dp')].label}"
                + (" + DP" if k.endswith("+dp") else "")
                for k in results
            },
            settings={
                "clients": len(h.clients),
                "members_per_federation": members,
                "client_rounds": rounds,
                "clip_norm_C": round(clip, 4),
                "noise_multiplier": round(sigma, 4),
                "target_epsilon": study.epsilon,
                "delta": study.delta,
                "epsilon_spent": {k: round(v, 3) for k, v in spent.items() if v},
                "quick": bool(self.quick),
            },
            split="test",
        )
        command = "worldlm experiment" + (" --quick" if self.quick else "")
        data = write_report(
            self.out / name, comparison, title=f"DP at a population: {setting}", command=command
        )
        return data


def shipped_configs() -> dict[str, Path]:
    base = resources.files("worldlm") / "configs"
    return {name: Path(str(base / file)) for name, file in SETTINGS.items()}
