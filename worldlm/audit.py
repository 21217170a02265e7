"""Exactly-once accounting of a run, checked from what it recorded: a pure core.

Feed it the run's decoded messages (:meth:`Audit.record` for every record of a federation's
up topic, :meth:`Audit.report` for the metrics, :meth:`Audit.dead_letter` for the dead
letters) and ask for the :class:`AuditTable`. The Kafka reading is ``worldlm/recording.py``'s.

Every update a child published (a distinct update id among the manifests of its federation's
up topic) must end in exactly one of: folded by the parent (a round ledger's ``folded``),
replaced by a newer update of the same member (``superseded``), refused by the round core
(``refused``: stale, unknown sender, bad signature...) or dead-lettered by the shell. One
that is none of these although its aggregator's ledgers cover its offset is **lost**; one
beyond the last offset they cover is **unread** (published after the last close, e.g. a
straggler when the run ended); one folded in two rounds is **folded twice**. Duplicates
(re-deliveries of an id) are counted, never folded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas.messages import (
    DeadLetter,
    DeltaChunk,
    DeltaManifest,
    MetricsReport,
    RoundLedger,
)


@dataclass(frozen=True)
class RoundRow:
    """One federation's round: what its children published in the offsets the round covers,
    and what the aggregator decided."""

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

    def with_barrier(self, arrived: int) -> RoundRow:
        return replace(self, arrived_redis=arrived)


@dataclass
class AuditTable:
    """The audit's answer: one row per federation and round, and the flagged update ids."""

    rows: list[RoundRow] = field(default_factory=list)
    #: federation -> ids covered by its ledgers' offsets but never accounted for
    lost: dict[str, list[str]] = field(default_factory=dict)
    #: federation -> ids published after the last offset its ledgers cover
    unread: dict[str, list[str]] = field(default_factory=dict)
    #: federation -> id -> the rounds that folded it (more than one)
    folded_twice: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: (federation, round) reported more than once (the first report counts)
    repeated_reports: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost and nothing folded twice."""
        return not any(self.lost.values()) and not any(self.folded_twice.values())

    def render(self) -> str:
        """A plain-text table, then one line per flag."""
        head = (
            f"{'federation':<16}{'round':>6}{'published':>10}{'folded':>8}{'declined':>9}"
            f"{'dup':>5}{'superseded':>11}{'refused':>8}{'stale':>6}{'dead':>6}{'redis':>6}"
            "  offsets"
        )
        lines = [head]
        for r in self.rows:
            spans = " ".join(f"{tp}[{a},{b})" for tp, (a, b) in sorted(r.offsets.items()))
            lines.append(
                f"{r.federation:<16}{r.round:>6}{r.published:>10}{r.folded:>8}{r.declined:>9}"
                f"{r.duplicates:>5}{r.superseded:>11}{r.refused:>8}{r.stale:>6}"
                f"{r.dead_lettered:>6}{'-' if r.arrived_redis is None else r.arrived_redis:>6}"
                f"  {spans}"
            )
        for fed, ids in sorted(self.lost.items()):
            lines += [f"LOST {fed} {i}" for i in ids]
        for fed, twice in sorted(self.folded_twice.items()):
            lines += [f"FOLDED TWICE {fed} {i} rounds {rs}" for i, rs in sorted(twice.items())]
        for fed, ids in sorted(self.unread.items()):
            lines += [f"unread {fed} {i} (published after the last close)" for i in ids]
        for fed, round_ in self.repeated_reports:
            lines.append(f"note: {fed} round {round_} was reported more than once")
        lines.append("ok: nothing lost, nothing folded twice" if self.ok else "NOT OK")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Manifest:
    update_id: str
    partition: int
    offset: int


class Audit:
    """Accumulates a run's records; :meth:`table` checks them.

    Args:
        up_topics: federation id -> the name of its up topic (``Topics.up``).
    """

    def __init__(self, up_topics: Mapping[str, str]) -> None:
        self.up_topics = dict(up_topics)
        self._federation = {topic: fed for fed, topic in self.up_topics.items()}
        self._manifests: dict[str, list[_Manifest]] = defaultdict(list)
        self._ids: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> id
        self._ledgers: dict[str, dict[int, RoundLedger]] = defaultdict(dict)
        self._repeated: list[tuple[str, int]] = []
        self._letters: dict[str, dict[str, str]] = defaultdict(dict)  # fed -> id -> reason
        self._pending_letters: list[DeadLetter] = []

    def record(
        self, topic: str, partition: int, offset: int, message: DeltaManifest | DeltaChunk
    ) -> None:
        """One decoded record of an up topic (a manifest or a chunk)."""
        fed = self._federation.get(topic)
        if fed is None:
            return
        self._ids[(topic, partition, offset)] = message.update_id
        if isinstance(message, DeltaManifest) and message.kind == "update":
            self._manifests[fed].append(_Manifest(message.update_id, partition, offset))

    def report(self, report: MetricsReport) -> None:
        """One metrics report; only an aggregator's with a ledger counts."""
        if report.role != "aggregator" or report.ledger is None:
            return
        fed = report.envelope.federation
        if report.round in self._ledgers[fed]:
            self._repeated.append((fed, report.round))
            return
        self._ledgers[fed][report.round] = report.ledger

    def dead_letter(self, letter: DeadLetter) -> None:
        """One dead letter; those from an up topic are attributed to the update they name."""
        if letter.source_topic in self._federation:
            self._pending_letters.append(letter)  # attributed once every record is in

    def table(self) -> AuditTable:
        """Check what was fed so far."""
        for letter in self._pending_letters:
            fed = self._federation[letter.source_topic]
            key = (letter.source_topic, letter.source_partition, letter.source_offset)
            update_id = self._ids.get(key)
            if update_id is not None:
                self._letters[fed].setdefault(update_id, letter.reason)
        self._pending_letters = []
        table = AuditTable(repeated_reports=list(self._repeated))
        for fed in sorted(set(self._manifests) | set(self._ledgers)):
            self._check(fed, table)
        return table

    def _check(self, fed: str, table: AuditTable) -> None:
        topic = self.up_topics.get(fed, "")
        ledgers = sorted(self._ledgers[fed].items())
        first: dict[str, _Manifest] = {}
        for m in self._manifests[fed]:
            first.setdefault(m.update_id, m)
        claimed: set[str] = set()
        for round_, ledger in ledgers:
            published = {
                i for i, m in first.items() if _covers(ledger, topic, m) and i not in claimed
            }
            claimed |= published
            table.rows.append(
                RoundRow(
                    federation=fed,
                    round=round_,
                    published=len(published),
                    folded=len(ledger.folded),
                    declined=len(ledger.declined),
                    duplicates=len(ledger.duplicates),
                    superseded=len(ledger.superseded),
                    refused=len(ledger.refused),
                    stale=sum(reason == "stale" for reason in ledger.refused.values()),
                    dead_lettered=ledger.dead_lettered,
                    offsets=dict(ledger.offsets),
                )
            )
        folded_in: dict[str, list[int]] = defaultdict(list)
        accounted = set(self._letters[fed])
        for round_, ledger in ledgers:
            for update_id in ledger.folded:
                folded_in[update_id].append(round_)
            accounted |= set(ledger.folded) | set(ledger.superseded) | set(ledger.refused)
        twice = {i: rs for i, rs in folded_in.items() if len(rs) > 1}
        if twice:
            table.folded_twice[fed] = twice
        ends: dict[tuple[str, int], int] = {}
        for _, ledger in ledgers:
            for name, (_, end) in ledger.offsets.items():
                t, _, p = name.rpartition(":")
                ends[(t, int(p))] = max(ends.get((t, int(p)), 0), end)
        for update_id, m in sorted(first.items(), key=lambda kv: kv[1].offset):
            if update_id in accounted:
                continue
            covered = m.offset < ends.get((topic, m.partition), 0)
            (table.lost if covered else table.unread).setdefault(fed, []).append(update_id)


def _covers(ledger: RoundLedger, topic: str, m: _Manifest) -> bool:
    span = ledger.offsets.get(f"{topic}:{m.partition}")
    return span is not None and span[0] <= m.offset < span[1]
