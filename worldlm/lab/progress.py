"""A progress display for runs: rounds per federation and the latest perplexities (tqdm)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from tqdm import tqdm

from schemas.messages import MetricsReport
from worldlm.config.hierarchy import Hierarchy


class RoundProgress:
    """One bar over the root's rounds; the postfix shows each federation's round and mean ppl."""

    def __init__(
        self, hierarchy: Hierarchy, *, disable: bool | None = None, desc: str = "rounds"
    ) -> None:
        self.hierarchy = hierarchy
        self.bar = tqdm(total=hierarchy.run.rounds, desc=desc, unit="round", disable=disable)
        self.rounds: dict[str, int] = {}
        self.ppl: dict[str, float] = {}

    def update(self, report: MetricsReport) -> None:
        if report.role == "aggregator":
            self.rounds[report.node] = report.round + 1
            if report.node == self.hierarchy.root.id:
                self.bar.n = min(report.round + 1, self.bar.total)
        elif "val_ppl" in report.values:
            self.ppl[report.envelope.federation + "/" + report.node] = report.values["val_ppl"]
        by_fed: dict[str, list[float]] = {}
        for key, value in self.ppl.items():
            by_fed.setdefault(key.split("/")[0], []).append(value)
        self.bar.set_postfix(
            {
                f: f"r{self.rounds.get(f, 0)} ppl {sum(v) / len(v):.0f}"
                for f, v in sorted(by_fed.items())
            },
            refresh=True,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bar.close()
