"""``worldlm replay``'s outcome: the replayed models checked against the recorded broadcasts,
evaluated on the clients' validation text, and written as report.json, report.md and a PNG.

The replay itself is ``worldlm/record/replay.py`` (pure); reading the run is
``worldlm/record/recording.py``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worldlm.config.hierarchy import Hierarchy
from worldlm.lab.report import json_safe
from worldlm.record.recording import Recorded
from worldlm.record.replay import Replay, ReplayedRound, model_hash
from worldlm.training.workbench import Weights, Workbench

LIMIT = (
    "Replay re-aggregates the updates the clients actually sent. Those updates were trained "
    "from the recorded broadcasts, so a replay answers 'what would this round's aggregate "
    "have been from the same updates', not what a whole run under the other setting would "
    "have done. Clients that keep their own key layers are evaluated on the broadcast model."
)


@dataclass(frozen=True)
class BroadcastRow:
    federation: str
    version: int
    round: int
    replay_hash: str
    recorded_hash: str | None

    @property
    def identical(self) -> bool | None:
        return None if self.recorded_hash is None else self.replay_hash == self.recorded_hash


@dataclass(frozen=True)
class ClientRow:
    client: str
    federation: str
    version: int
    round: int
    recorded_val_ppl: float | None
    replay_val_ppl: float | None


@dataclass
class ReplayOutcome:
    run: str
    setting: str
    rounds: list[ReplayedRound] = field(default_factory=list)
    broadcasts: list[BroadcastRow] = field(default_factory=list)
    clients: list[ClientRow] = field(default_factory=list)
    stalled: list[tuple[str, int, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        """Every replayed broadcast the run recorded is the recorded model, bit for bit."""
        checked = [b.identical for b in self.broadcasts if b.identical is not None]
        return bool(checked) and all(checked) and not self.stalled

    def as_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "run": self.run,
                "setting": self.setting,
                "reproduced": self.reproduced,
                "limit": LIMIT,
                "rounds": [asdict(r) for r in self.rounds],
                "broadcasts": [asdict(b) | {"identical": b.identical} for b in self.broadcasts],
                "clients": [asdict(c) for c in self.clients],
                "stalled": self.stalled,
                "unreadable": self.unreadable,
            }
        )


def replay_run(
    recorded_config: Hierarchy,
    hierarchy: Hierarchy,
    recorded: Recorded,
    *,
    setting: str,
    evaluate: bool = True,
) -> ReplayOutcome:
    """Replay ``recorded`` under ``hierarchy``; check and (``evaluate``) score each model a
    federation broadcasts on its clients' validation split."""
    outcome = ReplayOutcome(recorded_config.run.id, setting, unreadable=list(recorded.unreadable))
    benches: dict[str, Workbench] = {}
    scores: dict[tuple[str, int], float] = {}

    def on_broadcast(fid: str, version: int, round_: int, weights: Weights) -> None:
        row = BroadcastRow(
            fid,
            version,
            round_,
            model_hash(weights, hierarchy.run.chunk_kib * 1024),
            recorded.broadcasts.get((fid, version)),
        )
        outcome.broadcasts.append(row)
        if not evaluate:
            return
        for cid in hierarchy.federations[fid].clients:
            if cid not in benches:
                policy = hierarchy.client_policy(cid)
                benches[cid] = Workbench(hierarchy.run, hierarchy.clients[cid], policy)
            scores[(cid, version)] = benches[cid].evaluate(weights).perplexity

    replay = Replay(
        hierarchy,
        recorded.rounds,
        recorded.updates,
        on_broadcast=on_broadcast,
        takes=recorded.takes,
    )
    outcome.rounds = replay.run()
    outcome.stalled = replay.stalled
    for report in recorded.clients:
        version = int(report.values.get("version", -1))
        key = (report.node, version)
        outcome.clients.append(
            ClientRow(
                report.node,
                report.envelope.federation,
                version,
                report.round,
                report.values.get("val_ppl"),
                scores.pop(key, None),
            )
        )
    return outcome


def markdown(outcome: ReplayOutcome, command: str) -> str:
    verdict = (
        "every replayed broadcast is the recorded model, bit for bit"
        if outcome.reproduced
        else "the replayed models differ from the recorded ones (expected for another setting)"
    )
    lines = [
        f"# Replay of run `{outcome.run}`: {outcome.setting}",
        "",
        f"`{command}`",
        "",
        f"**{verdict}.**",
        "",
        f"> {LIMIT}",
        "",
        "## Rounds",
        "",
        "| federation | round | version | folded (replay) | folded (recorded) | skipped |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in outcome.rounds:
        lines.append(
            f"| {r.federation} | {r.round} | {r.version} | {', '.join(r.folded)} | "
            f"{', '.join(r.recorded)} | {'yes' if r.skipped else ''} |"
        )
    lines += ["", "## Validation perplexity of each broadcast", ""]
    lines += ["| client | round | version | recorded | replay |", "|---|---:|---:|---:|---:|"]
    for c in sorted(outcome.clients, key=lambda c: (c.client, c.version)):
        lines.append(
            f"| {c.client} | {c.round} | {c.version} | {_num(c.recorded_val_ppl)} | "
            f"{_num(c.replay_val_ppl)} |"
        )
    for fid, round_, why in outcome.stalled:
        lines.append(f"\nStalled: {fid} round {round_} {why}.")
    if outcome.unreadable:
        lines.append(f"\nUnreadable records: {', '.join(sorted(set(outcome.unreadable)))}.")
    return "\n".join(lines) + "\n"


def plot(path: Path, outcome: ReplayOutcome) -> None:
    """Mean validation perplexity over clients per round, recorded against replayed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pick, style in (
        ("recorded", lambda c: c.recorded_val_ppl, "-o"),
        ("replay", lambda c: c.replay_val_ppl, "--s"),
    ):
        by_round: dict[int, list[float]] = defaultdict(list)
        for c in outcome.clients:
            value = pick(c)
            if value is not None and math.isfinite(value):
                by_round[c.round].append(value)
        xs = sorted(by_round)
        ax.plot(xs, [sum(by_round[x]) / len(by_round[x]) for x in xs], style, label=label)
    ax.set_xlabel("round of the broadcast")
    ax.set_ylabel("mean validation perplexity over clients")
    ax.set_title(f"replay of {outcome.run}: {outcome.setting}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, outcome: ReplayOutcome, command: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    data = outcome.as_dict()
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(markdown(outcome, command))
    plot(out / "replay.png", outcome)
    return data


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
