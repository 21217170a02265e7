"""The demo's report: a perplexity table (report.md), the figures (report.json), and
validation perplexity per federation over rounds (perplexity.png)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: method key -> label in tables and plots
LABELS = {"worldlm": "WorldLM", "fedavg": "FedAvg (flat)", "local": "Local only"}


@dataclass
class MethodResult:
    """One method's outcome: final validation perplexity per client, and curves."""

    final: dict[str, float]
    # client -> [(round, val_ppl)] as the client measured it on each model it received
    curve: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def mean(self) -> float:
        return sum(self.final.values()) / len(self.final) if self.final else math.nan


def federation_curves(
    result: MethodResult, groups: dict[str, str]
) -> dict[str, list[tuple[int, float]]]:
    """Mean validation perplexity of each federation's clients, per round."""
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for client, points in result.curve.items():
        for rnd, ppl in points:
            by[groups[client]][rnd].append(ppl)
    return {f: sorted((r, sum(v) / len(v)) for r, v in rounds.items()) for f, rounds in by.items()}


def write_report(
    out: Path,
    results: dict[str, MethodResult],
    *,
    groups: dict[str, str],
    partitions: dict[str, str],
    rounds: int,
    wall_s: float,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write report.json, report.md and perplexity.png into ``out``; return the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "methods": {
            m: {
                "mean_val_ppl": r.mean,
                "val_ppl": dict(sorted(r.final.items())),
                "wall_s": r.wall_s,
                "curves": {
                    f: [[x, y] for x, y in pts] for f, pts in federation_curves(r, groups).items()
                },
            }
            for m, r in results.items()
        },
        "rounds": rounds,
        "wall_s": wall_s,
        "settings": settings,
    }
    (out / "report.json").write_text(json.dumps(data, indent=2))
    (out / "report.md").write_text(_markdown(results, groups, partitions, rounds, wall_s, settings))
    _plot(out / "perplexity.png", results, groups)
    return data


def _markdown(
    results: dict[str, MethodResult],
    groups: dict[str, str],
    partitions: dict[str, str],
    rounds: int,
    wall_s: float,
    settings: dict[str, Any],
) -> str:
    methods = list(results)
    head = (
        "| client | federation | partition | "
        + " | ".join(LABELS.get(m, m) for m in methods)
        + " |"
    )
    lines = [
        "# WorldLM demo report",
        "",
        f"Validation perplexity on each client's fixed validation split after {rounds} training "
        f"rounds per client (same clients, same token budget, same validation text for every "
        f"method). Lower is better. Wall time {wall_s:.0f} s.",
        "",
        head,
        "|" + "---|" * (3 + len(methods)),
    ]
    for client in sorted(groups, key=lambda c: (groups[c], c)):
        cells = [f"{results[m].final.get(client, math.nan):.1f}" for m in methods]
        lines.append(
            f"| {client} | {groups[client]} | {partitions[client]} | " + " | ".join(cells) + " |"
        )
    lines.append(
        "| **mean** | | | " + " | ".join(f"**{results[m].mean:.1f}**" for m in methods) + " |"
    )
    if "worldlm" in results and "fedavg" in results:
        ratio = results["fedavg"].mean / results["worldlm"].mean
        lines += ["", f"FedAvg / WorldLM mean perplexity: **{ratio:.2f}x**."]
    lines += [
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        "![validation perplexity per federation](perplexity.png)",
        "",
    ]
    return "\n".join(lines)


def _plot(path: Path, results: dict[str, MethodResult], groups: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    federations = sorted(set(groups.values()))
    colors = {f: plt.get_cmap("tab10")(i) for i, f in enumerate(federations)}
    styles = {"worldlm": "-", "fedavg": "--", "local": ":"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, result in results.items():
        for federation, points in federation_curves(result, groups).items():
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                styles.get(method, "-."),
                color=colors[federation],
                marker="o",
                markersize=3,
                label=f"{federation} · {LABELS.get(method, method)}",
            )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("training round (per client)")
    ax.set_ylabel("validation perplexity (log)")
    ax.set_title("Validation perplexity per federation")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(results))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
