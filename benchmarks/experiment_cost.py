"""Seconds per cell of an experiment, from the cells it wrote (``worldlm experiment --out``).

Each cell records its wall time and the part spent in local training and evaluation; this
prints them per setting and method, and what the whole grid cost.

    python benchmarks/experiment_cost.py [out/experiment]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/experiment")
    walls: dict[tuple[str, str], list[float]] = defaultdict(list)
    train: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in sorted((out / "cells").glob("*/*/*.json")):
        data = json.loads(path.read_text())
        key = (data["cell"]["setting"], data["cell"]["method"])
        walls[key].append(data["wall_s"])
        train[key].append(data["train_s"])
    if not walls:
        sys.exit(f"no cells under {out / 'cells'}")
    print(f"{'setting':<14} {'method':<22} {'cells':>5} {'s/cell':>8} {'training':>9}")
    for (setting, method), w in sorted(walls.items()):
        share = sum(train[setting, method]) / sum(w)
        print(f"{setting:<14} {method:<22} {len(w):>5} {statistics.fmean(w):>8.1f} {share:>9.0%}")
    every = [x for w in walls.values() for x in w]
    mean, total = statistics.fmean(every), sum(every) / 60
    print(f"all: {len(every)} cells, {mean:.1f} s per cell, {total:.1f} min of cell time")
    summary = out / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        if "wall_s" in data:
            print(
                f"the last invocation: {data['wall_s'] / 60:.1f} min wall on "
                f"{data.get('processes', 1)} processes (cells reused from an earlier one cost 0)"
            )


if __name__ == "__main__":
    main()
