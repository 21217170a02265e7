"""The regime study's report: the map's figures from its cells on disk.

Per point of the map (clients per federation N, tokens per client T) and method: each
client's test perplexity at its best validation round (and on the final model), averaged
over clients, mean and 95% CI over seeds; the ratio to local-only paired by seed (< 1: the
method beats training alone). Crossovers are where a method's mean ratio crosses 1 between
two neighbouring caps, interpolated in log T. Writes ``report.json``, ``report.md``,
``regimes.png`` (the map) and ``curves.png`` (validation curves at both ends of the T axis).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worldlm.lab.report import interval, json_safe
from worldlm.lab.studies.regime_text import label, markdown
from worldlm.lab.studies.regimes import RegimeStudy, Tokens, best_round_scores, point_name

Figure = dict[str, float]


def _figure(values: list[float]) -> Figure:
    m, h = interval(values) if values else (math.nan, math.nan)
    return {"mean": m, "ci95": h, "n": len(values)}


def tokens_per_client(study: RegimeStudy, clients: int, tokens: Tokens) -> float:
    """The mean training tokens a client of this point holds (seed 0's shards)."""
    from worldlm.config.hierarchy import parse
    from worldlm.lab.grid import setting_raw
    from worldlm.lab.studies.regimes import population
    from worldlm.training.workbench import client_data

    raw = setting_raw(study.config, 0, study.lr, study.budget)
    shards = study.shards_at(clients, tokens)
    assert shards is not None, (clients, tokens)
    h = parse(population(raw, clients, shards, tokens))
    sizes = [client_data(h.run, c).train.numel() for c in h.clients.values()]
    return statistics.fmean(sizes)


def collect(study: RegimeStudy, out: Path) -> dict[str, Any]:
    """Every point's figures, the crossovers, the misplaced tree and the DP cells."""
    points: dict[str, Any] = {}
    for n, t in study.points():
        name = point_name(n, t)
        methods = study.methods_at(n) + (study.dp_methods() if study.dp_point(n, t) else ())
        per: dict[str, dict[int, dict[str, float]]] = {}
        for m in methods:
            per[m] = {}
            for seed in range(study.seeds):
                cell = study.load(out, n, t, m, seed)
                scores = best_round_scores(cell)
                per[m][seed] = {
                    "early": statistics.fmean(s[2] for s in scores.values()),
                    "final": statistics.fmean(s[3] for s in scores.values()),
                    "past_best": statistics.fmean(float(s[0] < s[1]) for s in scores.values()),
                    "best_round": statistics.fmean(s[0] for s in scores.values()),
                    "last_round": statistics.fmean(s[1] for s in scores.values()),
                    "epsilon": cell.epsilon,
                }
        figures: dict[str, Any] = {}
        for m, seeds in per.items():
            base = m.split("+")[0]
            figures[m] = {
                "early": _figure([s["early"] for s in seeds.values()]),
                "final": _figure([s["final"] for s in seeds.values()]),
                "vs_local": _paired(seeds, per.get("local", {}), "early"),
                "vs_local_final": _paired(seeds, per.get("local", {}), "final"),
                "past_best": statistics.fmean(s["past_best"] for s in seeds.values()),
                "best_round": statistics.fmean(s["best_round"] for s in seeds.values()),
                "last_round": statistics.fmean(s["last_round"] for s in seeds.values()),
                "epsilon": max(s["epsilon"] for s in seeds.values()),
            }
            if m != base and base in per:
                figures[m]["vs_no_dp"] = _paired(seeds, per[base], "early")
        if "worldlm_misplaced" in per:
            figures["worldlm_misplaced"]["vs_worldlm"] = _paired(
                per["worldlm_misplaced"], per["worldlm"], "early"
            )
        points[name] = {
            "clients": n,
            "cap": t,
            "shards": study.shards_at(n, t),
            "tokens": tokens_per_client(study, n, t),
            "methods": figures,
        }
    return {"points": points, "crossovers": crossovers(study, points)}


def _paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], key: str) -> Figure:
    seeds = sorted(set(a) & set(b))
    return _figure([a[s][key] / b[s][key] for s in seeds])


def crossovers(study: RegimeStudy, points: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per N and method: where its mean ratio to local-only crosses 1 along T (log-linear
    between neighbouring caps), or on which side of 1 it stays."""
    out: dict[str, dict[str, Any]] = {}
    for n in study.clients:
        row = [points[point_name(n, t)] for t in study.tokens_at(n)]
        for m in study.methods_at(n):
            if m == "local":
                continue
            xs = [p["tokens"] for p in row]
            ys = [p["methods"][m]["vs_local"]["mean"] for p in row]
            found = []
            for i in range(len(xs) - 1):
                a, b = ys[i] - 1, ys[i + 1] - 1
                if a == 0 or a * b < 0:
                    frac = a / (a - b)
                    log_t = math.log(xs[i]) + frac * (math.log(xs[i + 1]) - math.log(xs[i]))
                    found.append(
                        {"tokens": round(math.exp(log_t)), "pays_below": ys[i] < 1 <= ys[i + 1]}
                    )
            side = "pays" if all(y < 1 for y in ys) else "loses" if all(y > 1 for y in ys) else ""
            out.setdefault(str(n), {})[m] = {"crossings": found, "everywhere": side}
    return out


def write(study: RegimeStudy, out: Path, *, command: str, wall_s: float | None = None) -> str:
    """Collect, then write report.json, report.md and both figures; return the markdown."""
    data = collect(study, out)
    data["study"] = {
        "tokens": list(study.tokens),
        "clients": list(study.clients),
        "shards": study.shards,
        "seeds": study.seeds,
        "lr": study.lr,
        "budget": study.budget,
        "dp": None if study.dp is None else study.dp.__dict__,
        "config": study.config.name,
        "wall_s": wall_s,
        "written": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
    }
    (out / "report.json").write_text(json.dumps(json_safe(data), indent=2))
    plot_map(out / "regimes.png", study, data)
    plot_curves(out / "curves.png", study, out)
    text = markdown(study, data, command)
    (out / "report.md").write_text(text)
    return text


def _commit() -> str | None:
    """The checkout's commit, when the study runs from one (named in the report)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def plot_map(path: Path, study: RegimeStudy, data: dict[str, Any]) -> None:
    """Each method's perplexity over local-only's against tokens per client, one panel per
    N, a 95% band across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(study.clients), figsize=(6 * len(study.clients), 4.6))
    axes = axes if len(study.clients) > 1 else [axes]
    for ax, n in zip(axes, study.clients, strict=True):
        row = [data["points"][point_name(n, t)] for t in study.tokens_at(n)]
        xs = [p["tokens"] for p in row]
        for i, m in enumerate(study.methods_at(n)):
            figs = [p["methods"][m]["vs_local"] for p in row]
            ys = [f["mean"] for f in figs]
            hs = [0.0 if math.isnan(f["ci95"]) else f["ci95"] for f in figs]
            ax.plot(xs, ys, marker="o", label=label(m), color=f"C{i}")
            ax.fill_between(
                xs, [y - h for y, h in zip(ys, hs, strict=True)],
                [y + h for y, h in zip(ys, hs, strict=True)], alpha=0.12, color=f"C{i}",
            )  # fmt: skip
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per client (log)")
        ax.set_ylabel("test perplexity / local-only's (< 1: joining pays)")
        ax.set_title(f"{n} clients per federation")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, study: RegimeStudy, out: Path) -> None:
    """Mean validation perplexity per client round at the smallest and the largest cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(study.clients), 2, figsize=(12, 4.2 * len(study.clients)), squeeze=False
    )
    for row, n in enumerate(study.clients):
        caps = study.tokens_at(n)
        for col, t in enumerate((caps[0], caps[-1])):
            ax = axes[row][col]
            for i, m in enumerate(study.methods_at(n)):
                curves = [
                    dict(study.load(out, n, t, m, s).val.mean_curve()) for s in range(study.seeds)
                ]
                rounds = sorted(set.intersection(*(set(c) for c in curves)))
                stats = [interval([c[r] for c in curves]) for r in rounds]
                ys = [y for y, _ in stats]
                ax.plot(rounds, ys, marker="o", markersize=3, label=label(m), color=f"C{i}")
                if m == "local" and ys:
                    best = min(range(len(ys)), key=ys.__getitem__)
                    ax.plot(rounds[best], ys[best], marker="*", markersize=14, color=f"C{i}")
            ax.set_yscale("log")
            ax.set_xlabel("client rounds")
            ax.set_ylabel("mean validation perplexity (log)")
            cap = "whole shard" if t is None else f"{t} tokens"
            ax.set_title(f"{n} clients per federation, {cap} per client")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
