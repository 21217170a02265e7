"""Comparison reports over seeds: report.json (every cell's figures), report.md, perplexity.png.

A *score* is a client's mean validation perplexity over the last quarter of its evaluations
(at least the final one): one federated round can land anywhere on an oscillating curve, so
the last snapshot alone would decide a comparison by luck. A result with a held-out split
(``MethodResult.held_out``: each client's test perplexity, measured once, on the final model)
scores by it instead, while its curve stays the validation curve the plots and the divergence
check read. Across seeds each client's score
gets a mean and a 95% confidence interval (Student's t); the method's mean over clients gets
one too, and the ratio of two methods is taken per seed (paired: same seed, same data
order) before its interval is computed. A run whose mean curve ends more than 10% above its
best point, or holds a non-finite value, is flagged as diverged.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A curve ending this much above its best point is flagged as diverged.
DIVERGENCE = 1.10


@dataclass
class MethodResult:
    """One method, one seed: each client's perplexity curve (round -> val ppl) and wall time."""

    curve: dict[str, list[tuple[int, float]]]
    wall_s: float = 0.0
    train_s: float = 0.0
    #: each client's held-out (test) perplexity on the final model; None: score by ``curve``
    held_out: dict[str, float] | None = None

    @property
    def final(self) -> dict[str, float]:
        """Each client's perplexity on the final model (held-out when there is one)."""
        if self.held_out is not None:
            return dict(self.held_out)
        return {c: pts[-1][1] for c, pts in self.curve.items() if pts}

    @property
    def score(self) -> dict[str, float]:
        """Each client's held-out perplexity on the final model, or without a held-out split
        its mean perplexity over the last quarter of its evaluations."""
        if self.held_out is not None:
            return dict(self.held_out)
        out = {}
        for c, pts in self.curve.items():
            k = max(1, (len(pts) - 1) // 4)
            out[c] = statistics.fmean(p for _, p in pts[-k:])
        return out

    @property
    def mean(self) -> float:
        s = self.score
        return statistics.fmean(s.values()) if s else math.nan

    def mean_curve(self) -> list[tuple[int, float]]:
        by: dict[int, list[float]] = {}
        for pts in self.curve.values():
            for r, p in pts:
                by.setdefault(r, []).append(p)
        return sorted((r, statistics.fmean(v)) for r, v in by.items())

    @property
    def diverged(self) -> bool:
        ys = [p for _, p in self.mean_curve()]
        return bool(ys) and (not all(math.isfinite(y) for y in ys) or ys[-1] > DIVERGENCE * min(ys))


def interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (nan width for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    from scipy.stats import t

    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(half)


@dataclass
class Comparison:
    """Every method's results over seeds on one config's clients."""

    results: dict[str, dict[int, MethodResult]]
    groups: dict[str, str]
    partitions: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: which text the scores were measured on (``validation`` or ``test``); curves are always
    #: validation
    split: str = "validation"

    def summary(self, method: str) -> dict[str, Any]:
        runs = self.results[method]
        per_client = {c: interval([r.score[c] for r in runs.values()]) for c in sorted(self.groups)}
        return {
            "clients": {c: {"mean": m, "ci95": h} for c, (m, h) in per_client.items()},
            "mean": dict(
                zip(("mean", "ci95"), interval([r.mean for r in runs.values()]), strict=True)
            ),
            "diverged_seeds": [s for s, r in runs.items() if r.diverged],
            "wall_s": statistics.fmean(r.wall_s for r in runs.values()),
        }

    def ratio(self, numerator: str, denominator: str) -> dict[str, Any] | None:
        """``numerator``'s mean perplexity over ``denominator``'s, paired by seed."""
        if numerator not in self.results or denominator not in self.results:
            return None
        seeds = sorted(set(self.results[numerator]) & set(self.results[denominator]))
        per_seed = [
            self.results[numerator][s].mean / self.results[denominator][s].mean for s in seeds
        ]
        mean, half = interval(per_seed)
        return {"mean": mean, "ci95": half, "per_seed": dict(zip(seeds, per_seed, strict=True))}

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "settings": self.settings,
            "groups": self.groups,
            "partitions": self.partitions,
            "methods": {
                m: {
                    "label": self.labels.get(m, m),
                    **self.summary(m),
                    "seeds": {
                        str(s): {
                            "score": r.score,
                            "final": r.final,
                            "curves": {c: [list(p) for p in pts] for c, pts in r.curve.items()},
                            "wall_s": r.wall_s,
                            "train_s": r.train_s,
                        }
                        for s, r in runs.items()
                    },
                }
                for m, runs in self.results.items()
            },
            "ratios": {
                f"{m}/worldlm": self.ratio(m, "worldlm")
                for m in self.results
                if m != "worldlm" and "worldlm" in self.results
            },
        }


def _cell(mean: float, ci95: float | None, digits: int = 1) -> str:
    def fmt(x: float) -> str:  # a diverged run's astronomical figure in a few digits
        return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.2e}"

    if ci95 is None or math.isnan(ci95):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(ci95)}"


def markdown(c: Comparison, title: str, command: str) -> str:
    methods = list(c.results)
    summaries = {m: c.summary(m) for m in methods}
    seeds = sorted({s for runs in c.results.values() for s in runs})
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`. Seeds {seeds}. Score: {_score_text(c.split)} (same clients, "
        f"token budget and {c.split} text for every method), mean ± 95% CI over seeds. Curves: "
        "validation perplexity per round. Lower is better.",
        "",
        "| client | federation | partition | "
        + " | ".join(c.labels.get(m, m) for m in methods)
        + " |",
        "|" + "---|" * (3 + len(methods)),
    ]
    for client in sorted(c.groups, key=lambda x: (c.groups[x], x)):
        cells = [_cell(**summaries[m]["clients"][client]) for m in methods]
        lines.append(
            f"| {client} | {c.groups[client]} | {c.partitions[client]} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        "| **mean** | | | "
        + " | ".join(f"**{_cell(**summaries[m]['mean'])}**" for m in methods)
        + " |"
    )
    lines.append(
        "| wall s / run | | | "
        + " | ".join(f"{summaries[m]['wall_s']:.1f}" for m in methods)
        + " |"
    )
    lines.append("")
    for m in methods:
        ratio = c.ratio(m, "worldlm") if m != "worldlm" else None
        if ratio is not None:
            paired = ", ".join(f"{v:.2f}" for v in ratio["per_seed"].values())
            lines.append(
                f"- {c.labels.get(m, m)} / WorldLM mean perplexity: "
                f"**{_cell(ratio['mean'], ratio['ci95'], 2)}x** (paired by seed: {paired})"
            )
    diverged = {m: s["diverged_seeds"] for m, s in summaries.items() if s["diverged_seeds"]}
    lines.append("")
    lines.append(
        "Diverged (mean curve ends >10% above its best): "
        + (", ".join(f"{c.labels.get(m, m)} seeds {s}" for m, s in diverged.items()) or "none")
    )
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in c.settings.items()), ""]
    lines += ["![mean validation perplexity per round, scores per method](perplexity.png)", ""]
    return "\n".join(lines)


def _score_text(split: str) -> str:
    if split == "test":
        return "each client's perplexity on its held-out test text, on the final model"
    return f"each client's mean {split} perplexity over the last quarter of its evaluations"


def plot(path: Path, c: Comparison, title: str) -> None:
    """Mean perplexity over clients per round, a 95% band across seeds; final scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    for i, (method, runs) in enumerate(c.results.items()):
        curves = [dict(r.mean_curve()) for r in runs.values()]
        rounds = sorted(set.intersection(*(set(cv) for cv in curves)))
        stats = [interval([cv[r] for cv in curves]) for r in rounds]
        ys = [m for m, _ in stats]
        ax.plot(
            rounds, ys, marker="o", markersize=3, label=c.labels.get(method, method), color=f"C{i}"
        )
        if len(curves) > 1:
            ax.fill_between(
                rounds,
                [m - h for m, h in stats],
                [m + h for m, h in stats],
                alpha=0.15,
                color=f"C{i}",
            )
        s = c.summary(method)["mean"]
        bars.bar(
            i, s["mean"], yerr=0 if math.isnan(s["ci95"]) else s["ci95"], color=f"C{i}", capsize=4
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("local training rounds per client")
    ax.set_ylabel("mean validation perplexity (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    bars.set_xticks(
        range(len(c.results)),
        [c.labels.get(m, m) for m in c.results],
        rotation=35,
        ha="right",
        fontsize=7,
    )
    bars.set_ylabel("score (mean ± 95% CI over seeds)")
    bars.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, c: Comparison, *, title: str, command: str) -> dict[str, Any]:
    """Write report.json, report.md and perplexity.png into ``out``; return the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    data = json_safe(c.to_json())
    (out / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False))
    (out / "report.md").write_text(markdown(c, title, command))
    plot(out / "perplexity.png", c, title)
    return data


def json_safe(value: Any) -> Any:
    """NaN (an interval of one seed) as null, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def curves_from_reports(
    reports: Sequence[Any], key: str = "val_ppl"
) -> dict[str, list[tuple[int, float]]]:
    """Client -> [(training rounds so far, ``key``)] from a run's metrics reports, in order
    (a round whose report lacks ``key``, e.g. one ``run.eval_every`` skips, still counts)."""
    curve: dict[str, list[tuple[int, float]]] = {}
    seen: dict[str, int] = {}
    for r in reports:
        if r.role != "client":
            continue
        rounds = seen.get(r.node, 0)
        seen[r.node] = rounds + 1
        if key in r.values:
            curve.setdefault(r.node, []).append((rounds, r.values[key]))
    return curve
