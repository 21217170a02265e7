"""What a run published on its metrics topic: the result every way of running gives (a live
run, ``worldlm/participants/runner.py``; the simulator; a run spread over processes). A plain
value: importing it pulls no broker client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.messages import MetricsReport


@dataclass
class RunResult:
    """What a run published on its metrics topic, in order."""

    reports: list[MetricsReport] = field(default_factory=list)
    wall_s: float = 0.0

    def client_reports(self) -> list[MetricsReport]:
        return [r for r in self.reports if r.role == "client"]

    def final_ppl(self) -> dict[str, float]:
        """Each client's validation perplexity of the final model."""
        return {r.node: r.values["val_ppl"] for r in self.client_reports() if r.values.get("final")}
