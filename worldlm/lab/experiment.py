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

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worldlm.config.hierarchy import parse
from worldlm.config.feasibility import noise_ratio
from worldlm.lab.dp_study import DPStudy, clip_rule, noise_for, population, with_client_dp
from worldlm.lab.grid import (
    QUICK,
    STANDARD,
    Cell,
    CellResult,
    Job,
    load_cell,
    run_jobs,
    setting_raw,
)
from worldlm.lab.methods import METHODS, client_budget, uniform_budget
from worldlm.lab.report import Comparison, MethodResult, write_report
from worldlm.training.corpus import partitions
from worldlm.training.workbench import initial_weights

__all__ = ["QUICK", "STANDARD", "Cell", "Experiment", "setting_raw", "shipped_configs"]

#: The shipped data settings: name -> config file in ``worldlm/configs``.
SETTINGS = {"languages": "demo.toml", "domains": "domains.toml", "mixed": "mixed.toml"}
#: Every method of the experiment (``worldlm/lab/methods.py``).
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


@dataclass
class Experiment:
    """The grid and where it writes.

    :meth:`run` works in two phases, each running its missing cells over ``processes``
    processes: first every method's seed 0 at every rate of the grid; then, at the rates
    chosen on validation, the other seeds, the misplaced tree and the DP study. The reports
    are then built from the cells on disk.
    """

    out: Path
    configs: dict[str, Path]
    methods: Sequence[str] = EXPERIMENT_METHODS
    seeds: int = 5
    lrs: Sequence[float] = LRS
    budget: dict[str, int] | None = field(default_factory=lambda: dict(STANDARD))
    on_cell: Callable[[Cell, bool], None] | None = None  # (cell, was it cached)
    should_stop: Callable[[], bool] | None = None
    #: DP at a population, on the first data setting (None: skip)
    dp: DPStudy | None = None
    processes: int = 1
    command: str = "worldlm experiment"

    def cells(self) -> int:
        """How many cells the grid has (the misplaced tree runs at WorldLM's rate only)."""
        per_setting = sum(
            (1 if m == "worldlm_misplaced" and "worldlm" in self.methods else len(self.lrs))
            + self.seeds
            - 1
            for m in self.methods
        )
        dp = 0 if self.dp is None else 2 * len(self.dp.methods) * self._dp_seeds()
        return len(self.configs) * per_setting + dp

    def _dp_seeds(self) -> int:
        return min(self.seeds, self.dp.seeds) if self.dp is not None else 0

    def run(self) -> dict[str, Any]:
        self._reported: set[Cell] = set()
        self._jobs(self._tuning_jobs())
        chosen = {s: self._choose(s) for s in self.configs}
        later = [j for s, c in self.configs.items() for j in self._seed_jobs(s, c, chosen[s])]
        if self.dp is not None:
            setting, config = next(iter(self.configs.items()))
            later = self._dp_jobs(setting, config, self.dp, chosen[setting]) + later
        self._jobs(later)  # the DP cells (several times a standard one) first: no long tail
        summary: dict[str, Any] = {"settings": {}}
        for setting, config in self.configs.items():
            summary["settings"][setting] = self._setting(setting, config, chosen[setting])
        if self.dp is not None:
            setting, config = next(iter(self.configs.items()))
            summary["dp"] = self._dp(setting, config, self.dp, chosen[setting])
        summary["budget"] = self.budget
        summary["seeds"] = self.seeds
        summary["lrs"] = list(self.lrs)
        return summary

    # -- the grid ------------------------------------------------------------------------

    def _grid(self, method: str) -> bool:
        """Whether ``method`` picks its rate (the misplaced tree runs at WorldLM's)."""
        return not (method == "worldlm_misplaced" and "worldlm" in self.methods)

    def _tuning_jobs(self) -> list[Job]:
        return [
            Job(Cell(s, m, 0, lr), c)
            for s, c in self.configs.items()
            for m in self.methods
            if self._grid(m)
            for lr in self.lrs
        ]

    def _choose(self, setting: str) -> dict[str, float]:
        chosen: dict[str, float] = {}
        for m in self.methods:
            if self._grid(m):
                val = {lr: self._load(Cell(setting, m, 0, lr)).val.mean for lr in self.lrs}
                chosen[m] = min(val, key=val.__getitem__)
        if "worldlm_misplaced" in self.methods and "worldlm" in chosen:
            chosen["worldlm_misplaced"] = chosen["worldlm"]
        return chosen

    def _seed_jobs(self, setting: str, config: Path, chosen: dict[str, float]) -> list[Job]:
        return [
            Job(Cell(setting, m, seed, chosen[m]), config)
            for m in self.methods
            for seed in range(0 if not self._grid(m) else 1, self.seeds)
        ]

    def _jobs(self, jobs: list[Job]) -> None:
        def done(cell: Cell) -> None:
            self._reported.add(cell)
            if self.on_cell is not None:
                self.on_cell(cell, False)

        run_jobs(
            jobs,
            self.out,
            self.budget,
            processes=self.processes,
            should_stop=self.should_stop,
            on_done=done,
        )
        for job in jobs:  # cells a previous run left
            if job.cell not in self._reported:
                self._reported.add(job.cell)
                if self.on_cell is not None:
                    self.on_cell(job.cell, True)

    def _load(self, cell: Cell) -> CellResult:
        return load_cell(cell.path(self.out))

    # -- reports -------------------------------------------------------------------------

    def _setting(self, setting: str, config: Path, chosen: dict[str, float]) -> dict[str, Any]:
        results: dict[str, dict[int, MethodResult]] = {}
        selection: dict[str, dict[str, float]] = {}
        for method in self.methods:
            grid = self.lrs if self._grid(method) else [chosen[method]]
            selection[method] = {
                f"{lr:g}": self._load(Cell(setting, method, 0, lr)).val.mean for lr in grid
            }
            results[method] = {
                seed: self._load(Cell(setting, method, seed, chosen[method])).test
                for seed in range(self.seeds)
            }
        raw = setting_raw(config, 0, chosen.get("worldlm", self.lrs[0]), self.budget)
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
                "budget": self.budget,
            },
            split="test",
        )
        data = write_report(
            self.out / setting,
            comparison,
            title=f"WorldLM experiment: {setting}",
            command=self.command,
        )
        data["lr"] = {"chosen": {m: chosen[m] for m in self.methods}, "validation": selection}
        sent = {
            m: [
                self._load(Cell(setting, m, s, chosen[m])).bytes_per_update
                for s in range(self.seeds)
            ]
            for m in self.methods
        }
        data["bytes_per_update"] = {m: sum(v) / len(v) for m, v in sent.items() if all(v)}
        (self.out / setting / "report.json").write_text(json.dumps(data, indent=2))
        return data

    def _dp_plan(
        self, setting: str, config: Path, study: DPStudy, chosen: dict[str, float]
    ) -> dict[str, Any]:
        """The DP study's population, clip norm and noise multiplier (fixed before any DP
        cell); the clip rule trains every client once, so it is kept with the cells."""
        name = f"{setting}-dp"
        prepare = functools.partial(population, shards=study.shards)
        lr = {m: chosen.get(m, self.lrs[0]) for m in study.methods}
        raw0 = prepare(setting_raw(config, 0, lr[study.methods[0]], self.budget))
        h = parse(raw0, known_partitions={p.name for p in partitions()})
        rounds = uniform_budget(h)
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
        private = functools.partial(with_client_dp, clip=clip, sigma=sigma, delta=study.delta)
        jobs = {
            (method, dp, seed): Job(
                Cell(name, f"{method}+dp" if dp else method, seed, lr[method]),
                config,
                prepare,
                private if dp else None,
            )
            for method in study.methods
            for dp in (False, True)
            for seed in range(self._dp_seeds())
        }
        return {"name": name, "h": h, "rounds": rounds, "clip": clip, "sigma": sigma, "jobs": jobs}

    def _dp_jobs(
        self, setting: str, config: Path, study: DPStudy, chosen: dict[str, float]
    ) -> list[Job]:
        return list(self._dp_plan(setting, config, study, chosen)["jobs"].values())

    def _dp(
        self, setting: str, config: Path, study: DPStudy, chosen: dict[str, float]
    ) -> dict[str, Any]:
        """Each method with and without DP on the client edges, at a larger population."""
        plan = self._dp_plan(setting, config, study, chosen)
        name, h, rounds, clip, sigma = (plan[k] for k in ("name", "h", "rounds", "clip", "sigma"))
        results: dict[str, dict[int, MethodResult]] = {}
        spent: dict[str, float] = {}
        for (_, _, seed), job in plan["jobs"].items():
            key = job.cell.method
            got = self._load(job.cell)
            results.setdefault(key, {})[seed] = got.test
            spent[key] = max(spent.get(key, 0.0), got.epsilon)
        members = {f.id: len(f.clients) for f in h.federations.values() if f.clients}
        params = sum(w.numel() for w in initial_weights(h.run).values() if w.is_floating_point())
        # The noise a federation's average carries, against the clipped update it hides (the
        # rule the config check refuses by; this study forces it: worldlm/config/feasibility.py).
        noise_to_signal = noise_ratio(sigma, params, min(members.values()))
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
                "update_params": params,
                "noise_norm_over_clip": round(noise_to_signal, 1),
                "target_epsilon": study.epsilon,
                "delta": study.delta,
                "epsilon_spent": {k: round(v, 3) for k, v in spent.items() if v},
                "budget": self.budget,
            },
            split="test",
        )
        data = write_report(
            self.out / name,
            comparison,
            title=f"DP at a population: {setting}",
            command=self.command,
        )
        return data


def shipped_configs() -> dict[str, Path]:
    base = resources.files("worldlm") / "configs"
    return {name: Path(str(base / file)) for name, file in SETTINGS.items()}
