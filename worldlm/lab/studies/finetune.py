"""``worldlm experiment --study finetune``: full fine-tuning against LoRA, from one base.

Every cell starts from the same pretrained base (``worldlm pretrain`` on the partitions no
client of the config holds) and runs one method on the config's clients, either training
every weight (``full``) or LoRA adapters on the frozen base (``lora``), on the simulator, for
the same budget. The methods are WorldLM, flat FedAvg, FedPer and local-only
(``worldlm/lab/methods.py``); under LoRA their B and K are adapter sets. A second pair of
settings adds record-level DP (DP-SGD in each client) at one epsilon to WorldLM, on the
adapters and on the full model. Each setting is reported in ``worldlm experiment``'s format
(``OUT/<setting>/report.{md,json}``: each client's test perplexity, mean ± 95% CI over seeds)
and ``OUT/report.md`` puts the settings side by side with the bytes per client update.

Learning rates are fixed per mode, not tuned (LoRA's adapters move the model through a
low-rank product, which usually wants a larger rate): ``lrs``; the report names them.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worldlm.config.hierarchy import parse
from worldlm.lab.grid import Cell, Job, load_cell, run_jobs, setting_raw
from worldlm.lab.methods import METHODS, client_budget
from worldlm.lab.report import Comparison, MethodResult, interval, write_report
from worldlm.training.corpus import partitions

#: The default tree: the shipped language demo (six clients, three federations).
DEMO = Path(str(resources.files("worldlm") / "config" / "shipped" / "demo.toml"))
METHODS_COMPARED = ("worldlm", "fedavg", "fedper", "local")
#: Per cell: 3 root rounds (2 internal), 5 local steps of 8 x 64 tokens, 2 evaluation batches.
BUDGET = {"rounds": 3, "local_steps": 5, "eval_batches": 2, "seq_len": 64, "batch_size": 8}
LORA: dict[str, Any] = {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def with_base(raw: dict[str, Any], base: str, lora: dict[str, Any] | None) -> dict[str, Any]:
    """``raw`` starting from ``base``, training adapters (``lora``) or every weight."""
    out = copy.deepcopy(raw)
    out["run"]["init"] = base
    if lora is not None:
        out["defaults"]["lora"] = dict(lora)
    return out


def with_record_dp(raw: dict[str, Any], epsilon: float, delta: float) -> dict[str, Any]:
    """DP-SGD in every client at (``epsilon``, ``delta``) over its whole run (clip 1)."""
    out = copy.deepcopy(raw)
    out["defaults"]["record_dp"] = {"epsilon": epsilon, "delta": delta, "clip_norm": 1.0}
    for table in out["federations"].values():
        table.pop("record_dp", None)
    return out


@dataclass
class FinetuneStudy:
    """The grid: modes (full, lora) x methods x seeds, and WorldLM under record-level DP."""

    out: Path
    base: Path
    config: Path = DEMO
    methods: tuple[str, ...] = METHODS_COMPARED
    seeds: int = 3
    lrs: dict[str, float] = field(default_factory=lambda: {"full": 3e-3, "lora": 1e-2})
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA))
    budget: dict[str, int] = field(default_factory=lambda: dict(BUDGET))
    dp_epsilon: float | None = 8.0
    dp_delta: float = 1e-5
    processes: int = 1
    should_stop: Callable[[], bool] | None = None
    on_done: Callable[[Cell], None] | None = None

    def jobs(self) -> list[Job]:
        jobs = []
        for mode in ("full", "lora"):
            prepare = functools.partial(
                with_base, base=str(self.base), lora=self.lora if mode == "lora" else None
            )
            lr = self.lrs[mode]
            for method in self.methods:
                for seed in range(self.seeds):
                    jobs.append(Job(Cell(mode, method, seed, lr), self.config, prepare))
            if self.dp_epsilon is not None:
                private = functools.partial(
                    with_record_dp, epsilon=self.dp_epsilon, delta=self.dp_delta
                )
                for seed in range(self.seeds):
                    cell = Cell(f"{mode}-dp", "worldlm+dp", seed, lr)
                    jobs.append(Job(cell, self.config, prepare, private))
        return jobs

    def run(self) -> None:
        """Run the missing cells (``processes`` at a time); finished cells are kept."""
        run_jobs(
            self.jobs(),
            self.out,
            self.budget,
            processes=self.processes,
            should_stop=self.should_stop,
            on_done=self.on_done,
        )

    def report(self, command: str) -> dict[str, Any]:
        """Each setting's report (``OUT/<setting>/``) and the side-by-side summary."""
        by_setting: dict[str, dict[str, dict[int, Any]]] = {}
        for job in self.jobs():
            cell = job.cell
            got = load_cell(cell.path(self.out))
            by_setting.setdefault(cell.setting, {}).setdefault(cell.method, {})[cell.seed] = got
        raw = setting_raw(self.config, 0, self.lrs["full"], self.budget)
        h = parse(raw, known_partitions={p.name for p in partitions()})
        summary: dict[str, Any] = {"settings": {}, "command": command, "lrs": self.lrs}
        for setting, methods in by_setting.items():
            results: dict[str, dict[int, MethodResult]] = {
                m: {s: r.test for s, r in seeds.items()} for m, seeds in methods.items()
            }
            mode = setting.removesuffix("-dp")
            comparison = Comparison(
                results,
                groups={c: cl.federation for c, cl in h.clients.items()},
                partitions={c: cl.partition for c, cl in h.clients.items()},
                labels={m: f"{METHODS[m.split('+')[0]].label}, {mode}" for m in results},
                settings={
                    "config": self.config.name,
                    "base": str(self.base),
                    "mode": mode,
                    "lora": self.lora if mode == "lora" else None,
                    "lr": self.lrs[mode],
                    "client_rounds": max(client_budget(h).values()),
                    "seeds": self.seeds,
                    "budget": self.budget,
                    "record_dp_epsilon": self.dp_epsilon if setting.endswith("-dp") else None,
                },
                split="test",
            )
            data = write_report(
                self.out / setting,
                comparison,
                title=f"Fine-tuning from one base: {setting}",
                command=command,
            )
            data["bytes_per_update"] = {
                m: _mean([r.bytes_per_update for r in seeds.values()])
                for m, seeds in methods.items()
            }
            data["epsilon_spent"] = {
                m: max(r.epsilon for r in seeds.values()) for m, seeds in methods.items()
            }
            (self.out / setting / "report.json").write_text(json.dumps(data, indent=2))
            summary["settings"][setting] = data
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summary_table(summary: dict[str, Any], methods: tuple[str, ...]) -> str:
    """Markdown: one row per method, full vs LoRA (test perplexity, mean ± 95% CI over
    seeds; bytes per client update), then WorldLM under record-level DP."""
    settings = summary["settings"]
    lines = [
        "| method | full fine-tuning | LoRA | LoRA / full (paired) | bytes per update, full | "
        "bytes per update, LoRA |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        full, lora = settings["full"], settings["lora"]
        lines.append(
            f"| {METHODS[m].label} | {_ppl(full, m)} | {_ppl(lora, m)} | "
            f"{_ratio(full, lora, m)} | {full['bytes_per_update'].get(m, 0):,.0f} | "
            f"{lora['bytes_per_update'].get(m, 0):,.0f} |"
        )
    if "full-dp" in settings and "lora-dp" in settings:
        full, lora = settings["full-dp"], settings["lora-dp"]
        m = "worldlm+dp"
        eps = max(full["epsilon_spent"].get(m, 0.0), lora["epsilon_spent"].get(m, 0.0))
        lines.append(
            f"| WorldLM + record-level DP (ε spent ≤ {eps:.2f}) | {_ppl(full, m)} | "
            f"{_ppl(lora, m)} | {_ratio(full, lora, m)} | "
            f"{full['bytes_per_update'].get(m, 0):,.0f} | "
            f"{lora['bytes_per_update'].get(m, 0):,.0f} |"
        )
    return "\n".join(lines)


def _ppl(data: dict[str, Any], method: str) -> str:
    mean = data["methods"][method]["mean"]
    return f"{mean['mean']:.1f} ± {mean['ci95'] or 0:.1f}"


def _ratio(full: dict[str, Any], lora: dict[str, Any], method: str) -> str:
    """LoRA's mean perplexity over full fine-tuning's, paired by seed."""
    a, b = full["methods"][method]["seeds"], lora["methods"][method]["seeds"]
    seeds = sorted(set(a) & set(b))
    mean, half = interval([_seed_mean(b[s]) / _seed_mean(a[s]) for s in seeds])
    return f"{mean:.2f} ± {half if half == half else 0:.2f}×"


def _seed_mean(seed: dict[str, Any]) -> float:
    scores = list(seed["score"].values())
    return sum(scores) / len(scores)
