"""The regime study's report.md: the map as tables, the crossovers in words, every cell."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from worldlm.lab.methods import METHODS
from worldlm.lab.studies.regimes import RegimeStudy, Tokens, point_name

Figure = dict[str, float]


def label(method: str) -> str:
    base = method.split("+")[0]
    return METHODS[base].label + (" + record DP" if method.endswith("+rdp") else "")


def cell(f: Figure, digits: int = 2) -> str:
    if math.isnan(f["mean"]):
        return "-"
    ci = "" if math.isnan(f["ci95"]) else f" ± {f['ci95']:.{digits}f}"
    return f"{f['mean']:.{digits}f}{ci}"


def _cap(t: Tokens) -> str:
    return "whole shard" if t is None else f"{t:,}"


def _column(study: RegimeStudy, t: Tokens) -> str:
    """A T column's heading, naming the shards where the cap needs larger ones."""
    at = (study.shards_at(n, t) for n in study.clients)
    wider = sorted({s for s in at if s is not None and s != study.shards})
    shards = f" (shards of {', '.join(str(s) for s in wider)})" if wider else ""
    return f"T = {_cap(t)}{shards}"


def _by_n(study: RegimeStudy, pts: dict[str, Any], n: int, t: Tokens) -> dict[str, Any] | None:
    return pts[point_name(n, t)] if t in study.tokens_at(n) else None


def markdown(study: RegimeStudy, data: dict[str, Any], command: str) -> str:
    pts = data["points"]
    budget = study.budget
    steps = budget["rounds"] * 2 * budget["local_steps"]
    lines = [
        "# Where joining a federation pays: the regime map",
        "",
        f"Command: `{command}`, written {data['study']['written']}"
        + (f" at commit {data['study']['commit']}" if data["study"].get("commit") else "")
        + (
            f"; this invocation took {data['study']['wall_s'] / 60:.1f} min (cells an earlier "
            "one left on disk cost it nothing)"
            if data["study"].get("wall_s")
            else ""
        )
        + ".",
        "",
        f"Tree: `{study.config.name}` (a root over three federations, one English domain each). "
        f"A point of the map: N clients per federation, each holding shard i < N of "
        f"{study.shards} disjoint shards of its federation's domain (of N shards where a cap "
        f"exceeds {study.nested_cap:,} tokens), capped at T training tokens. Budget per "
        f"client, every method: {steps} local steps of "
        f"{budget['batch_size']} x {budget['seq_len']} tokens "
        f"({steps * budget['batch_size'] * budget['seq_len']:,} tokens seen); learning rate "
        f"{study.lr:g} for every method; {study.seeds} seeds. Figure: each client's test "
        "perplexity (its own held-out documents) at its best validation round (early "
        "stopping; final-model figures below), mean over clients, mean ± 95% CI over seeds. "
        "Ratio: over local-only's, paired by seed (< 1: the method beats training alone).",
        "",
    ]
    for n in study.clients:
        row = [(t, pts[point_name(n, t)]) for t in study.tokens_at(n)]
        lines += [
            f"## {n} clients per federation",
            "",
            "| method | "
            + " | ".join(f"{_column(study, t)}: {p['tokens']:,.0f}" for t, p in row)
            + " |",
            "|---|" + "---|" * len(row),
        ]
        for m in study.methods_at(n):
            cells = []
            for _, p in row:
                f = p["methods"][m]
                ratio = "" if m == "local" else f"; **{cell(f['vs_local'])}x**"
                cells.append(f"{cell(f['early'], 0)}{ratio}")
            lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        lines += ["", *_crossover_lines(study, data, n), ""]
    lines += _local_lines(study, pts)
    lines += _misplaced_lines(study, pts)
    lines += _dp_lines(study, pts)
    lines += _final_lines(study, pts)
    return "\n".join(lines) + "\n"


def _crossover_lines(study: RegimeStudy, data: dict[str, Any], n: int) -> list[str]:
    out = []
    for m, c in data["crossovers"][str(n)].items():
        if c["crossings"]:
            parts = [
                f"{'beats' if x['pays_below'] else 'loses to'} local-only below about "
                f"{x['tokens']:,} tokens per client"
                for x in c["crossings"]
            ]
            out.append(f"- {label(m)}: " + "; ".join(parts) + ".")
        elif c["everywhere"] == "pays":
            out.append(f"- {label(m)}: beats local-only at every T measured.")
        elif c["everywhere"] == "loses":
            out.append(f"- {label(m)}: loses to local-only at every T measured.")
    return out


def _grid(
    study: RegimeStudy,
    pts: dict[str, Any],
    ns: list[int],
    show: Callable[[dict[str, Any]], str],
) -> list[str]:
    """A row per N, a column per T: ``show`` of each point's methods, ``-`` where the point
    does not exist."""
    lines = [
        "| N | " + " | ".join(_column(study, t) for t in study.tokens) + " |",
        "|---|" + "---|" * len(study.tokens),
    ]
    for n in ns:
        cells = [
            "-" if (point := _by_n(study, pts, n, t)) is None else show(point["methods"])
            for t in study.tokens
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _local_lines(study: RegimeStudy, pts: dict[str, Any]) -> list[str]:
    def show(methods: dict[str, Any]) -> str:
        f = methods["local"]
        return f"{f['past_best']:.0%}, round {f['best_round']:.1f} of {f['last_round']:.0f}"

    return [
        "## Local-only passes its best validation point",
        "",
        "Share of local-only clients whose best validation round comes before their last "
        "(over clients and seeds), and the mean best round (of the last): where the share is "
        "high the budget outlasts what a client's own text can teach (curves: `curves.png`).",
        "",
        *_grid(study, pts, list(study.clients), show),
    ]


def _misplaced_lines(study: RegimeStudy, pts: dict[str, Any]) -> list[str]:
    ns = [n for n in study.clients if n >= study.misplaced]
    if not ns:
        return []
    return [
        "## The misplaced tree",
        "",
        "The same clients regrouped so that each federation holds a mix of the three domains "
        "(client i of federation j moves to federation (j + i) mod 3); perplexity over "
        "WorldLM's on the tree as written, paired by seed (> 1: the grouping matters).",
        "",
        *_grid(study, pts, ns, lambda m: f"{cell(m['worldlm_misplaced']['vs_worldlm'])}x"),
    ]


def _dp_lines(study: RegimeStudy, pts: dict[str, Any]) -> list[str]:
    if study.dp is None:
        return []
    dp = study.dp
    lines = [
        "## Record-level DP",
        "",
        f"DP-SGD inside every client (per-example clip {dp.clip_norm:g}, Poisson sampling, "
        f"noise from the opacus RDP accountant for epsilon {dp.epsilon:g} at delta "
        f"{dp.delta:g} over the client's whole budget), N = {min(study.clients)}.",
        "",
        "| T | method | test ppl | / same method without DP | / local-only (no DP) "
        "| epsilon spent |",
        "|---|---|---|---|---|---|",
    ]
    for n, t in study.points():
        if not study.dp_point(n, t):
            continue
        for m in study.dp_methods():
            f = pts[point_name(n, t)]["methods"][m]
            eps = f["epsilon"]
            lines.append(
                f"| {_cap(t)} | {label(m)} | {cell(f['early'], 0)} | {cell(f['vs_no_dp'])}x "
                f"| {cell(f['vs_local'])}x | {'-' if math.isnan(eps) else f'{eps:.2f}'} |"
            )
    return [*lines, ""]


def _final_lines(study: RegimeStudy, pts: dict[str, Any]) -> list[str]:
    lines = [
        "## Final-model figures (no early stopping)",
        "",
        "Test perplexity of the final model; ratio to local-only's final model, paired.",
        "",
    ]
    for n in study.clients:
        lines += [
            f"**{n} clients per federation**",
            "",
            "| method | " + " | ".join(_column(study, t) for t in study.tokens_at(n)) + " |",
            "|---|" + "---|" * len(study.tokens_at(n)),
        ]
        for m in study.methods_at(n):
            cells = []
            for t in study.tokens_at(n):
                f = pts[point_name(n, t)]["methods"][m]
                ratio = "" if m == "local" else f"; {cell(f['vs_local_final'])}x"
                cells.append(f"{cell(f['final'], 0)}{ratio}")
            lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
