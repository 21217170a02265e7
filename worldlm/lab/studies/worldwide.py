"""``worldlm experiment --study worldwide``: the shipped tree over worldwide links.

The demo tree (root -> latin, slavic, east-asian -> two clients each) on one stated profile
(:data:`PROFILE`): clients reach their federation inside a region (1 Gbit/s, 5 ms), the
federations reach the root across continents (100 Mbit/s, 150 ms), and east-asian sits
behind a 20 Mbit/s link. Compute is declared (:data:`CLOCK`, measured once on this machine:
:func:`calibrate` measures it again and the report prints both), so every figure is a
function of the config and the seed. Each setting changes one policy of the root's edge:

- ``fp32``: the demo as shipped (sync, float32 updates);
- ``bf16``, ``int8``, ``topk``: the federations' submissions to the root in that codec
  (error feedback on; broadcasts stay float32, as the system sends them);
- ``async``: the root folds submissions as they come, two at a time, discounted by
  staleness; it runs 3/2 as many root rounds, so it folds as many submissions as ``fp32``;
- ``overlap``: every federation goes on training while its submission travels and puts the
  root's answer under the progress made since (``exchange = "overlap"``, one step delayed).

Per setting and seed, on the simulator: when the whole tree (the mean of its six clients'
latest validation perplexities) and each federation's clients first reach the target, and
the final perplexity. The target of a seed is :data:`TARGET_FACTOR` x the final perplexity of
the ``fp32`` cell of the same seed (per part of the tree), so every comparison is paired by
seed (same data order, same start). (The first rule, 1.1 x fp32's mean over seeds, left one
seed of every setting short of it: the seeds' final perplexities spread far wider than 10%;
docs/worldwide.md keeps that report.)
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldlm.lab.grid import Cell, CellResult, Job, load_cell, run_jobs, setting_raw
from worldlm.lab.report import interval
from worldlm.lab.studies.finetune import DEMO
from worldlm.lab.timeline import first_reach, points_curve

#: Per cell: the demo's rounds (4 root, 2 internal), 5 local steps of 8 x 64 tokens.
BUDGET = {"rounds": 4, "local_steps": 5, "eval_batches": 2, "seq_len": 64, "batch_size": 8}
#: The stated profile: inside a region, across continents, one slow federation.
REGION = {"bandwidth_mbit": 1000.0, "latency_ms": 5.0}
CONTINENT = {"bandwidth_mbit": 100.0, "latency_ms": 150.0}
SLOW = {"bandwidth_mbit": 20.0, "latency_ms": 150.0}
PROFILE: dict[str, dict[str, float]] = {
    "*": REGION,
    "latin": CONTINENT,
    "slavic": CONTINENT,
    "east-asian": SLOW,
}
#: Declared compute on this machine (seconds): a local step of 8 x 64 tokens of the tiny
#: model, an evaluation of 2 batches, a close: :func:`calibrate` measured 0.087, 0.047 and
#: 0.022 on 2026-12-08 (2 shared cores, under load), rounded here.
CLOCK = {"step_s": 0.08, "eval_s": 0.05, "aggregate_s": 0.02}
SETTINGS = ("fp32", "bf16", "int8", "topk", "async", "overlap")
TARGET_FACTOR = 1.1
LR = 3e-3


def on_profile(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` on :data:`PROFILE` with :data:`CLOCK`."""
    out = copy.deepcopy(raw)
    out["links"] = copy.deepcopy(PROFILE)
    out["clock"] = dict(CLOCK)
    return out


def with_setting(raw: dict[str, Any], setting: str) -> dict[str, Any]:
    """``raw`` on the profile under one setting of the root's edge (:data:`SETTINGS`)."""
    out = on_profile(raw)
    root = out["federations"]["root"]
    if setting in ("bf16", "int8", "topk"):
        root["compression"] = {"codec": setting}
    elif setting == "overlap":
        out["defaults"]["exchange"] = "overlap"
    elif setting == "async":
        root["schedule"] = {"mode": "async", "buffer": 2, "staleness_bound": 2}
        out["run"]["rounds"] = out["run"]["rounds"] * 3 // 2
    elif setting != "fp32":
        raise ValueError(f"unknown setting {setting!r}; known: {SETTINGS}")
    return out


def _prepare(setting: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    import functools

    return functools.partial(with_setting, setting=setting)


@dataclass
class WorldwideStudy:
    """The grid: settings x seeds on the demo tree, one cell per pair."""

    out: Path
    config: Path = DEMO
    seeds: int = 3
    settings: tuple[str, ...] = SETTINGS
    budget: dict[str, int] = field(default_factory=lambda: dict(BUDGET))
    processes: int = 1
    should_stop: Callable[[], bool] | None = None
    on_done: Callable[[Cell], None] | None = None

    def jobs(self) -> list[Job]:
        return [
            Job(Cell(s, "worldlm", seed, LR), self.config, _prepare(s))
            for s in self.settings
            for seed in range(self.seeds)
        ]

    def run(self) -> None:
        run_jobs(
            self.jobs(),
            self.out,
            self.budget,
            processes=self.processes,
            should_stop=self.should_stop,
            on_done=self.on_done,
        )

    def report(self) -> dict[str, Any]:
        """Per setting: time to target and final perplexity of the tree and of each
        federation, over seeds; the targets; the run's simulated length."""
        cells = {
            (j.cell.setting, j.cell.seed): load_cell(j.cell.path(self.out)) for j in self.jobs()
        }
        parts = _parts(self.config)
        finals = {
            (s, seed): {p: _curve(r, clients)[-1][1] for p, clients in parts.items()}
            for (s, seed), r in cells.items()
        }
        seeds = range(self.seeds)
        # Per seed and part: the fp32 cell of the same seed (same data, same start) fixes it.
        targets = {(p, k): TARGET_FACTOR * finals["fp32", k][p] for p in parts for k in seeds}
        out: dict[str, Any] = {
            "targets": {p: [targets[p, k] for k in seeds] for p in parts},
            "settings": {},
        }
        for s in self.settings:
            rows: dict[str, Any] = {}
            for p, clients in parts.items():
                reached = [first_reach(_curve(cells[s, k], clients), targets[p, k]) for k in seeds]
                base = [
                    first_reach(_curve(cells["fp32", k], clients), targets[p, k]) for k in seeds
                ]
                got = [x for x in reached if x is not None]
                ratios = [x / b for x, b in zip(reached, base, strict=True) if x is not None and b]
                rows[p] = {
                    "reached": len(got),
                    "time_to_target_s": _ci(got),
                    "vs_fp32": _ci(ratios),
                    "final_ppl": _ci([finals[s, k][p] for k in seeds]),
                    "final_vs_fp32": _ci([finals[s, k][p] / finals["fp32", k][p] for k in seeds]),
                    "seeds": dict(enumerate(reached)),
                }
            waiting = {
                f: _ci([_wait_share(cells[s, seed], f, n) for seed in range(self.seeds)])
                for f, n in _internal_rounds(self.config).items()
            }
            ends = [
                max(max(t) for t in cells[s, seed].closes.values()) for seed in range(self.seeds)
            ]
            out["settings"][s] = {"parts": rows, "end_s": _ci(ends), "waiting": waiting}
        return out


def _parts(config: Path) -> dict[str, tuple[str, ...]]:
    """ "tree" and each federation below the root -> its clients."""
    import tomllib

    raw = tomllib.loads(config.read_text())
    clients = raw["clients"]
    parts: dict[str, tuple[str, ...]] = {"tree": tuple(sorted(clients))}
    for fid, table in raw["federations"].items():
        if table.get("parent") is not None:
            parts[fid] = tuple(sorted(c for c, t in clients.items() if t["federation"] == fid))
    return parts


def _internal_rounds(config: Path) -> dict[str, int]:
    """Each federation below the root -> its internal rounds per exchange with the root."""
    import tomllib

    raw = tomllib.loads(config.read_text())
    default = raw.get("defaults", {}).get("internal_rounds", 1)
    return {
        f: t.get("internal_rounds", default)
        for f, t in raw["federations"].items()
        if t.get("parent") is not None
    }


def _wait_share(result: CellResult, federation: str, internal: int) -> float:
    """The share of the run ``federation`` spends between submitting to the root and the
    root's next close (the least it waits for the root's model; what an exchange overlapped
    with the next rounds could hide at most)."""
    roots, mine = sorted(result.closes["root"]), result.closes[federation]
    waits = [
        next((r for r in roots if r >= sent), sent) - sent
        for sent in mine[internal - 1 :: internal]
    ]
    end = max(max(t) for t in result.closes.values())
    return sum(waits) / end if end else 0.0


def _curve(result: CellResult, clients: tuple[str, ...]) -> list[tuple[float, float]]:
    return points_curve(result.timed, clients)


def _ci(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    mean, half = interval(values)
    return {"mean": mean, "ci95": half if half == half else None, "n": len(values)}


def calibrate(config: Path = DEMO, budget: dict[str, int] | None = None) -> dict[str, float]:
    """This machine's compute times at the study's budget (loopback, one client at a time):
    medians of a local step, an evaluation and a close, in seconds."""
    from worldlm.config.hierarchy import parse
    from worldlm.lab.simulator import Simulation
    from worldlm.training.corpus import partitions

    raw = setting_raw(config, 0, LR, budget or BUDGET)
    h = parse(raw, known_partitions={p.name for p in partitions()})
    sim = Simulation(h, workers=1)
    result = sim.run()
    steps = h.federations["latin"].policy.local_steps
    train = [r.values["train_s"] / steps for r in result.reports if "train_s" in r.values]
    evals = [r.values["eval_cpu_s"] for r in result.reports if "val_ppl" in r.values]
    return {
        "step_s": statistics.median(train),
        "eval_s": statistics.median(evals),
        "aggregate_s": statistics.median(sim.close_s),
    }
