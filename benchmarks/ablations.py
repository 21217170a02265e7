"""Why do attention and residual embeddings not help on the demo? Measured variants.

Each variant is the demo config (or ``--config``) with one change, run as WorldLM on the
simulator over the same seeds with the same token budget, next to the ablations and FedPer;
the report (report.md, report.json, perplexity.png in ``--out``) has the same statistics as
the demo's (score = mean validation perplexity over the last quarter of evaluations, mean and
95% CI over seeds, ratios paired by seed).

    python benchmarks/ablations.py [--seeds 3] [--out docs/ablations] [--config CONFIG]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worldlm.config.hierarchy import parse
from worldlm.lab.demo import demo_config_path, demo_raw, run_method
from worldlm.lab.methods import METHODS
from worldlm.lab.report import Comparison, MethodResult, write_report
from worldlm.training.corpus import partitions

Raw = dict[str, Any]


def with_defaults(**fields: Any) -> Callable[[Raw], Raw]:
    def change(raw: Raw) -> Raw:
        out = copy.deepcopy(raw)
        for key, value in fields.items():
            if isinstance(value, dict):
                out["defaults"].setdefault(key, {}).update(value)
            else:
                out["defaults"][key] = value
        return out

    return change


#: variant -> (method it runs, change to the config, what it tests)
VARIANTS: dict[str, tuple[str, Callable[[Raw], Raw], str]] = {
    "worldlm": ("worldlm", with_defaults(), "the demo config"),
    "nores": ("worldlm_nores", with_defaults(), "no residual embeddings"),
    "meankey": ("worldlm_meankey", with_defaults(), "K averaged: no attention, no residuals"),
    # alpha is ~uniform at tau = 1 (entropy ln 2 with two children): the distances between a
    # federation's K and its children's are far below 1, so the rule is FedAvg in disguise
    "tau0.1": ("worldlm", with_defaults(attention={"tau": 0.1}), "attention temperature 0.1"),
    "tau0.01": ("worldlm", with_defaults(attention={"tau": 0.01}), "attention temperature 0.01"),
    "tau0.01-nores": (
        "worldlm_nores",
        with_defaults(attention={"tau": 0.01}),
        "temperature 0.01, no residuals",
    ),
    "small_k": (
        "worldlm",
        with_defaults(key_layers=["model.layers.3.*", "model.norm.*"]),
        "K = last block + final norm (embeddings shared)",
    ),
    "fedper": ("fedper", with_defaults(), "FedPer (flat), each client keeps K"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/ablations"))
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = [v for v in args.variants.split(",") if v]
    results: dict[str, dict[int, MethodResult]] = {v: {} for v in chosen}
    for seed in range(args.seeds):
        base = demo_raw(f"ablate-s{seed}-{int(time.time())}", {"seed": seed}, args.config)
        for variant in chosen:
            method, change, _ = VARIANTS[variant]
            results[variant][seed] = run_method(change(base), method, desc=f"{variant} s{seed}")
            print(
                f"{variant} seed {seed}: mean score {results[variant][seed].mean:.1f}", flush=True
            )
    h = parse(base, known_partitions={p.name for p in partitions()})
    comparison = Comparison(
        results,
        groups={c: cl.federation for c, cl in h.clients.items()},
        partitions={c: cl.partition for c, cl in h.clients.items()},
        labels={
            v: f"{v}: {VARIANTS[v][2]}" if v not in METHODS else METHODS[v].label for v in chosen
        },
        settings={"config": (args.config or demo_config_path()).name, "seeds": args.seeds},
    )
    command = f"python benchmarks/ablations.py --seeds {args.seeds}"
    if args.config is not None:
        command += f" --config {args.config}"
    write_report(args.out, comparison, title="WorldLM ablations", command=command)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
