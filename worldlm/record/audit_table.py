"""The answer of ``worldlm audit``: one row per federation and round, the updates it names,
and the verdict with one line per problem (``worldlm/record/audit.py`` computes it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from worldlm.record.provenance import REASONS


@dataclass(frozen=True)
class Flagged:
    """An update the audit names: who sent it, its id, where its first record lies, and why."""

    federation: str
    sender: str
    update_id: str
    partition: int
    offset: int
    reason: str = ""

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        where = f"p{self.partition}@{self.offset}"
        return f"{self.federation} {self.update_id} from {self.sender} at {where}{why}"


@dataclass(frozen=True)
class RoundRow:
    """One federation's round: the published updates it decided (or lost within the offsets
    it read), what the aggregator decided, and the outside records among those offsets."""

    federation: str
    round: int
    published: int
    folded: int
    declined: int
    duplicates: int
    superseded: int
    refused: int
    stale: int
    dead_lettered: int
    offsets: dict[str, tuple[int, int]]
    #: members the round's Redis barrier recorded as arrived (None: not read, or expired)
    arrived_redis: int | None = None
    #: updates no participant of the run published there (forged, misaddressed: foreign)
    foreign: int = 0
    #: updates whose records never all arrived (a manifest short of chunks, or chunks alone)
    incomplete: int = 0
    #: records that do not decode
    unreadable: int = 0

    def with_barrier(self, arrived: int) -> RoundRow:
        return replace(self, arrived_redis=arrived)


@dataclass
class AuditTable:
    """The audit's answer; :attr:`problems` says what makes it not ok."""

    rows: list[RoundRow] = field(default_factory=list)
    #: federation -> published updates its aggregator read past but never accounted for
    lost: dict[str, list[Flagged]] = field(default_factory=dict)
    #: federation -> published updates past everything its aggregator decided (run's end)
    unread: dict[str, list[Flagged]] = field(default_factory=dict)
    #: federation -> id -> the rounds that folded it (more than one)
    folded_twice: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: federation -> id a ledger folded -> why no published update matches it
    folded_unpublished: dict[str, dict[str, str]] = field(default_factory=dict)
    #: federation -> how many updates the run's participants published / were matched to a
    #: fold or a named refusal
    published: dict[str, int] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)
    foreign: list[Flagged] = field(default_factory=list)
    incomplete: list[Flagged] = field(default_factory=list)
    #: federation -> records of its up topic that do not decode
    unreadable: dict[str, int] = field(default_factory=dict)
    #: (federation, round) reported more than once (the first report counts)
    repeated_reports: list[tuple[str, int]] = field(default_factory=list)
    #: what the check left out (e.g. senders, without a config)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One line per reason the run's accounting does not hold."""
        lines = [
            f"LOST {u}: read by its aggregator, never folded, refused or dead-lettered"
            for ids in self.lost.values()
            for u in ids
        ]
        for fed, twice in sorted(self.folded_twice.items()):
            lines += [f"FOLDED TWICE {fed} {i} in rounds {rs}" for i, rs in sorted(twice.items())]
        for fed, why in sorted(self.folded_unpublished.items()):
            lines += [f"FOLDED UNPUBLISHED {fed} {i}: {w}" for i, w in sorted(why.items())]
        for fed, count in sorted(self.published.items()):
            if count and not self.matched.get(fed):
                lines.append(
                    f"NOTHING MATCHED {fed}: {count} updates published, none matched to a fold "
                    "or a named refusal"
                )
        return lines

    @property
    def ok(self) -> bool:
        """Every published update matched to one fold or a named refusal, no fold without a
        published update, and something matched wherever something was published."""
        return not self.problems

    def render(self) -> str:
        """A plain-text table, the named updates, then the problems and the verdict."""
        head = (
            f"{'federation':<16}{'round':>6}{'published':>10}{'folded':>8}{'declined':>9}"
            f"{'dup':>5}{'superseded':>11}{'refused':>8}{'stale':>6}{'dead':>6}{'foreign':>8}"
            f"{'incomplete':>11}{'unreadable':>11}{'redis':>6}  offsets"
        )
        lines = [head]
        for r in self.rows:
            spans = " ".join(f"{tp}[{a},{b})" for tp, (a, b) in sorted(r.offsets.items()))
            lines.append(
                f"{r.federation:<16}{r.round:>6}{r.published:>10}{r.folded:>8}{r.declined:>9}"
                f"{r.duplicates:>5}{r.superseded:>11}{r.refused:>8}{r.stale:>6}"
                f"{r.dead_lettered:>6}{r.foreign:>8}{r.incomplete:>11}{r.unreadable:>11}"
                f"{'-' if r.arrived_redis is None else r.arrived_redis:>6}  {spans}"
            )
        lines += [f"foreign {u} ({REASONS.get(u.reason, u.reason)})" for u in self.foreign]
        lines += [f"incomplete {u}" for u in self.incomplete]
        for ids in self.unread.values():
            lines += [
                f"unread {u} (published after the last offset its aggregator decided)" for u in ids
            ]
        for fed, round_ in self.repeated_reports:
            lines.append(f"note: {fed} round {round_} was reported more than once")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            f"published {sum(self.published.values())}, matched {sum(self.matched.values())}, "
            f"unread {sum(map(len, self.unread.values()))}; foreign {len(self.foreign)}, "
            f"incomplete {len(self.incomplete)}, unreadable {sum(self.unreadable.values())}"
        )
        problems = self.problems
        lines += problems
        lines.append(
            f"NOT OK: {len(problems)} problem(s)"
            if problems
            else "ok: every published update matched to one fold or a named refusal"
        )
        return "\n".join(lines)
