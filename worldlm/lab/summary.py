"""``worldlm experiment``'s summary: one table over data settings (each method's mean test
score with its 95% CI and learning rate, ratios to WorldLM, bytes per update, the DP cell),
written as OUT/report.md from the per-setting reports (``report.py``)."""

from __future__ import annotations

from typing import Any


def summary_markdown(summary: dict[str, Any], command: str) -> str:
    """One table over data settings: each method's mean test score ± 95% CI, and the ratios."""
    lines = [
        "# WorldLM experiment",
        "",
        f"Command: `{command}`. Figures: each client's **test** perplexity (held-out text, "
        "measured once, on the final model), averaged over clients; mean ± 95% CI over "
        f"{summary['seeds']} seeds. Learning rates chosen per method and setting on validation "
        f"text from {summary['lrs']}. Budget per cell: "
        f"{summary.get('budget') or 'each config its own'}. Lower is better. Per-setting "
        "reports: `<setting>/report.md`.",
        "",
    ]
    settings = summary["settings"]
    methods = list(next(iter(settings.values()))["methods"]) if settings else []
    lines.append("| method | " + " | ".join(settings) + " |")
    lines.append("|---|" + "---|" * len(settings))
    for m in methods:
        cells = []
        for data in settings.values():
            mean = data["methods"][m]["mean"]
            half = mean["ci95"]
            lr = data["lr"]["chosen"][m]
            spread = f" ± {_ppl(half)}" if half is not None else ""
            flag = " (diverged)" if data["methods"][m]["diverged_seeds"] else ""
            cells.append(f"{_ppl(mean['mean'])}{spread}{flag} (lr {lr:g})")
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios to WorldLM (paired by seed; > 1: WorldLM is better):", ""]
    lines.append("| ratio | " + " | ".join(settings) + " |")
    lines.append("|---|" + "---|" * len(settings))
    for m in methods:
        if m == "worldlm":
            continue
        cells = []
        for data in settings.values():
            r = data["ratios"].get(f"{m}/worldlm")
            if r is None:
                cells.append("")
                continue
            spread = f" ± {r['ci95']:.2f}" if r["ci95"] is not None else ""
            cells.append(f"{r['mean']:.2f}{spread}")
        lines.append(f"| {_label(m)} / WorldLM | " + " | ".join(cells) + " |")
    sent = {s: d.get("bytes_per_update", {}) for s, d in settings.items()}
    if any(sent.values()):
        lines += ["", "Bytes a client sends per update (mean over rounds and seeds, MB):", ""]
        lines.append("| method | " + " | ".join(settings) + " |")
        lines.append("|---|" + "---|" * len(settings))
        for m in methods:
            cells = [f"{sent[s][m] / 1e6:.3f}" if m in sent[s] else "" for s in settings]
            lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    dp = summary.get("dp")
    if dp:
        st = dp["settings"]
        lines += [
            "",
            f"Differential privacy ({st['clients']} clients, members per federation "
            f"{sorted(set(st['members_per_federation'].values()))}, DP on the client edges, "
            f"target epsilon {st['target_epsilon']} at delta {st['delta']}, clip C = "
            f"{st['clip_norm_C']}, noise multiplier {st['noise_multiplier']}, noise norm in "
            f"each federation's average {st.get('noise_norm_over_clip', '?')} x C, epsilon spent "
            f"{st['epsilon_spent']}); full table: `{next(iter(settings))}-dp/report.md`:",
            "",
            "| method | test score |",
            "|---|---|",
        ]
        for figures in dp["methods"].values():
            mean = figures["mean"]
            spread = f" ± {_ppl(mean['ci95'])}" if mean["ci95"] is not None else ""
            flag = " (diverged)" if figures["diverged_seeds"] else ""
            lines.append(f"| {figures['label']} | {_ppl(mean['mean'])}{spread}{flag} |")
    lines.append("")
    return "\n".join(lines)


def _ppl(x: float) -> str:
    """A perplexity for a table: a diverged run's astronomical figure in a few digits."""
    return f"{x:.1f}" if abs(x) < 1e6 else f"{x:.2e}"


def _label(method: str) -> str:
    from worldlm.lab.methods import METHODS

    return METHODS[method].label
