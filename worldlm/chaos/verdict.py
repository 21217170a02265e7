"""What a fault campaign concludes: trials, the rows of its table, and how they are printed.

Pure values, no I/O. A scenario's shell observes a trial and hands the observations to the
scenario's judge, which returns a :class:`Trial`; the scenario then sums its trials into
:class:`Row` s, one measure each, with the target it is held to. A trial that hung is a
failed trial with a reason, like any other: the campaign always ends with a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Figure = int | float | str | bool


@dataclass(frozen=True)
class Trial:
    """One trial of one scenario: passed or not, why not, how long, and what was measured."""

    scenario: str
    index: int
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    figures: Mapping[str, Figure] = field(default_factory=dict)

    def figure(self, name: str, default: float = 0.0) -> float:
        """A numeric figure (``default`` when the trial did not get as far as measuring it)."""
        value = self.figures.get(name, default)
        return float(value) if isinstance(value, int | float) else default


def hung(scenario: str, index: int, limit_s: float, seconds: float, stage: str) -> Trial:
    """The verdict on a trial that did not end within its bound."""
    return Trial(
        scenario,
        index,
        False,
        f"hang: no verdict within {limit_s:.0f} s (at: {stage})",
        seconds,
        {"hung": True},
    )


def failed(scenario: str, index: int, seconds: float, stage: str, error: BaseException) -> Trial:
    """The verdict on a trial whose shell raised (the campaign itself failed, not the run)."""
    return Trial(scenario, index, False, f"error at {stage}: {error!r}"[:300], seconds, {})


@dataclass(frozen=True)
class Row:
    """One measure of a scenario: the result, the target, and whether it was met
    (``None``: reported, not held to a target)."""

    scenario: str
    measure: str
    result: str
    target: str = ""
    met: bool | None = None


def count_row(
    scenario: str, measure: str, value: float, *, target: float | None = 0, unit: str = ""
) -> Row:
    """A count held to ``target`` (met when equal); ``target=None`` only reports it."""
    text = f"{value:g}{unit}"
    if target is None:
        return Row(scenario, measure, text)
    return Row(scenario, measure, text, f"{target:g}{unit}", value == target)


def ratio_row(scenario: str, measure: str, part: int, whole: int, *, held: bool = True) -> Row:
    """``part/whole``, held to ``whole/whole`` unless ``held`` is False."""
    text = f"{part}/{whole}"
    if not held:
        return Row(scenario, measure, text)
    return Row(scenario, measure, text, f"{whole}/{whole}", part == whole and whole > 0)


def total(trials: Iterable[Trial], name: str) -> float:
    return sum(t.figure(name) for t in trials)


@dataclass
class ScenarioResult:
    """A scenario's trials and the rows it sums them into."""

    name: str
    trials: list[Trial] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every row held to a target met it."""
        return all(r.met is not False for r in self.rows)

    def failures(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]


@dataclass
class Campaign:
    """Every scenario run, in order; the table and the JSON are made from it."""

    scenarios: list[ScenarioResult] = field(default_factory=list)
    command: str = ""
    date: str = ""
    commit: str = ""

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.scenarios)

    @property
    def rows(self) -> list[Row]:
        return [r for s in self.scenarios for r in s.rows]

    def render(self) -> str:
        """The plain-text table, then one line per failed trial (with its reason)."""
        head = ("scenario", "measure", "result", "target", "met")
        body = [(r.scenario, r.measure, r.result, r.target, _met(r.met)) for r in self.rows]
        lines = _aligned([head, *body])
        for s in self.scenarios:
            lines += [f"{s.name} trial {t.index}: {t.reason}" for t in s.failures()]
        lines.append("all targets met" if self.ok else "TARGETS MISSED")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table as Markdown (what docs/faults.md shows)."""
        lines = ["| scenario | measure | result | target | met |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(
                f"| {r.scenario} | {r.measure} | {r.result} | {r.target} | {_met(r.met)} |"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "date": self.date,
            "commit": self.commit,
            "ok": self.ok,
            "scenarios": [
                {
                    "name": s.name,
                    "ok": s.ok,
                    "seconds": round(s.seconds, 1),
                    "rows": [asdict(r) for r in s.rows],
                    "trials": [
                        asdict(t) | {"figures": dict(t.figures), "seconds": round(t.seconds, 2)}
                        for t in s.trials
                    ],
                }
                for s in self.scenarios
            ],
        }


def _met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
