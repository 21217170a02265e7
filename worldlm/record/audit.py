"""Exactly-once accounting of a run, checked from what it recorded: a pure core.

Feed it the run's decoded messages (:meth:`Audit.record` for every record of a federation's
up topic, :meth:`Audit.unreadable` for those that do not decode, :meth:`Audit.report` for
the metrics, :meth:`Audit.dead_letter` for the dead letters) and ask for the
:class:`~worldlm.record.audit_table.AuditTable`. The Kafka reading is ``worldlm/record/recording.py``'s.

Only updates the run's own participants published count (:mod:`worldlm.record.provenance`); the
others are *foreign*, and an update whose records never all arrived is *incomplete*: both
are named, neither is ever lost. Every published update must end in exactly one of: folded
by the parent (a round ledger's ``folded``), replaced by a newer update of the same member
(``superseded``), refused by the round core (``refused``: stale, unknown sender, bad
signature...) or dead-lettered by the shell. One that is none of these although its
aggregator read past it is **lost**; one past everything its aggregator decided is
**unread** (a straggler when the run ended); one folded in two rounds is **folded twice**;
a fold of an id no published update carries is **folded unpublished**.

A round is charged with the updates its ledger names, wherever they lie: its ledger's
offsets stop at the first update still incomplete when it closed (the intake may commit no
further), and a manifest whose chunks never come would otherwise leave every later round
with nothing published. What a round read is its ledger's offsets stretched to the last
record of the updates it decided; the outside records and lost updates there are its.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from schemas.messages import DeadLetter, DeltaChunk, DeltaManifest, MetricsReport, RoundLedger
from worldlm.record.audit_table import AuditTable, Flagged, RoundRow
from worldlm.record.provenance import Provenance

__all__ = ["Audit", "AuditTable", "Flagged", "RoundRow"]


@dataclass(frozen=True)
class _Part:
    """One record of an update: a manifest (``number``: its chunk count) or a chunk (its
    index), with the reason it is foreign (None: addressed by a member to the aggregator)."""

    partition: int
    offset: int
    sender: str
    update_id: str
    manifest: bool
    number: int
    reason: str | None


@dataclass(frozen=True)
class _Update:
    """A published update: complete, by one of the run's participants."""

    flagged: Flagged
    last: int  # the offset of its last record

    @property
    def place(self) -> tuple[int, int]:
        """(partition, offset) of its manifest."""
        return self.flagged.partition, self.flagged.offset


class Audit:
    """Accumulates a run's records; :meth:`table` checks them.

    Args:
        up_topics: federation id -> the name of its up topic (``Topics.up``).
        provenance: who may publish there (default: records keyed by the federation).
    """

    def __init__(self, up_topics: Mapping[str, str], provenance: Provenance | None = None) -> None:
        self.up_topics = dict(up_topics)
        self.provenance = provenance or Provenance()
        self._federation = {topic: fed for fed, topic in self.up_topics.items()}
        self._parts: dict[str, list[_Part]] = defaultdict(list)
        self._unreadable: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._ids: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> id
        self._ledgers: dict[str, dict[int, RoundLedger]] = defaultdict(dict)
        self._repeated: list[tuple[str, int]] = []
        self._letters: list[DeadLetter] = []

    def record(
        self,
        topic: str,
        partition: int,
        offset: int,
        message: DeltaManifest | DeltaChunk,
        *,
        key: bytes | None,
    ) -> None:
        """One decoded record of an up topic (a manifest or a chunk) and its Kafka key."""
        fed = self._federation.get(topic)
        if fed is None:
            return
        self._ids[(topic, partition, offset)] = message.update_id
        sender = message.envelope.sender
        if isinstance(message, DeltaManifest):
            reason = self.provenance.foreign(fed, key, message)
            number, is_manifest = message.chunk_count, True
        else:
            reason = self.provenance.addressed(fed, key, message.envelope)
            number, is_manifest = message.index, False
        part = _Part(partition, offset, sender, message.update_id, is_manifest, number, reason)
        self._parts[fed].append(part)

    def unreadable(self, topic: str, partition: int, offset: int) -> None:
        """A record of an up topic that does not decode."""
        fed = self._federation.get(topic)
        if fed is not None:
            self._unreadable[fed].append((partition, offset))

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
            self._letters.append(letter)  # attributed once every record is in

    def table(self) -> AuditTable:
        """Check what was fed so far."""
        table = AuditTable(repeated_reports=list(self._repeated), notes=self.provenance.notes())
        for fed in sorted(set(self._parts) | set(self._ledgers) | set(self._unreadable)):
            self._check(fed, table)
        return table

    def _check(self, fed: str, table: AuditTable) -> None:
        topic = self.up_topics.get(fed, "")
        ledgers = sorted(self._ledgers[fed].items())
        read = {p for _, ledger in ledgers for p in _windows(ledger, topic)}
        updates, foreign, incomplete = _sort(fed, self._parts[fed], read)
        rounds = _Rounds(ledgers, topic, updates)
        letters: dict[str, tuple[int, int]] = {}  # id -> the dead-lettered record
        for letter in self._letters:
            uid = self._ids.get((topic, letter.source_partition, letter.source_offset))
            if letter.source_topic == topic and uid in updates:
                letters.setdefault(uid, (letter.source_partition, letter.source_offset))

        charged: dict[int | None, int] = defaultdict(int)  # round -> published updates
        matched = 0
        for uid, u in sorted(updates.items(), key=lambda kv: kv[1].place):
            if uid in rounds.decided:
                matched += 1
                charged[rounds.decided[uid]] += 1
            elif uid in letters:
                matched += 1
                charged[rounds.at(*letters[uid])] += 1
            elif rounds.read_past(*u.place):
                table.lost.setdefault(fed, []).append(u.flagged)
                charged[rounds.at(*u.place)] += 1
            else:
                table.unread.setdefault(fed, []).append(u.flagged)
        table.published[fed], table.matched[fed] = len(updates), matched
        twice = {i: rs for i, rs in rounds.folded_in.items() if len(rs) > 1}
        if twice:
            table.folded_twice[fed] = twice
        why = {f.update_id: f"foreign ({f.reason})" for f in foreign}
        why |= {f.update_id: f"incomplete ({f.reason})" for f in incomplete}
        unpublished = {
            i: why.get(i, "no update with this id on the up topic")
            for i in rounds.folded_in
            if i not in updates
        }
        if unpublished:
            table.folded_unpublished[fed] = unpublished
        table.foreign += foreign
        table.incomplete += incomplete
        table.unreadable[fed] = len(self._unreadable[fed])

        outside: dict[tuple[int | None, str], int] = defaultdict(int)
        for kind, found in (("foreign", foreign), ("incomplete", incomplete)):
            for f in found:
                outside[(rounds.at(f.partition, f.offset), kind)] += 1
        for partition, offset in self._unreadable[fed]:
            outside[(rounds.at(partition, offset), "unreadable")] += 1
        for round_, ledger in ledgers:
            table.rows.append(
                RoundRow(
                    federation=fed,
                    round=round_,
                    published=charged[round_],
                    folded=len(ledger.folded),
                    declined=len(ledger.declined),
                    duplicates=len(ledger.duplicates),
                    superseded=len(ledger.superseded),
                    refused=len(ledger.refused),
                    stale=sum(reason == "stale" for reason in ledger.refused.values()),
                    dead_lettered=ledger.dead_lettered,
                    offsets=dict(ledger.offsets),
                    foreign=outside[(round_, "foreign")],
                    incomplete=outside[(round_, "incomplete")],
                    unreadable=outside[(round_, "unreadable")],
                )
            )


class _Rounds:
    """What a federation's aggregator decided and read, round by round.

    An update belongs to the first round whose ledger names it (folded, superseded or
    refused). A round read its ledger's offsets stretched to the last record of the updates
    it decided (the offsets stop at an update still incomplete at the close), and everything
    the previous rounds had not.
    """

    def __init__(
        self, ledgers: list[tuple[int, RoundLedger]], topic: str, updates: Mapping[str, _Update]
    ) -> None:
        self.decided: dict[str, int] = {}  # id -> the round whose ledger names it first
        self.folded_in: dict[str, list[int]] = defaultdict(list)
        self.spans: list[tuple[int, dict[int, tuple[int, int]]]] = []  # partition -> [a, b)
        self.reach: dict[int, int] = {}  # partition -> below it, every record was read
        for round_, ledger in ledgers:
            ends = dict(self.reach)
            for p, (_, end) in _windows(ledger, topic).items():
                ends[p] = max(ends.get(p, 0), end)
            for uid in (*ledger.folded, *ledger.superseded, *ledger.refused):
                self.decided.setdefault(uid, round_)
                if (u := updates.get(uid)) is not None:
                    p = u.flagged.partition
                    ends[p] = max(ends.get(p, 0), u.last + 1)
            for uid in ledger.folded:
                self.folded_in[uid].append(round_)
            self.spans.append((round_, {p: (self.reach.get(p, 0), e) for p, e in ends.items()}))
            self.reach = ends

    def at(self, partition: int, offset: int) -> int | None:
        """The round that read this record (None: none did)."""
        for round_, span in self.spans:
            start, end = span.get(partition, (0, 0))
            if start <= offset < end:
                return round_
        return None

    def read_past(self, partition: int, offset: int) -> bool:
        return offset < self.reach.get(partition, 0)


def _windows(ledger: RoundLedger, topic: str) -> dict[int, tuple[int, int]]:
    """The ledger's offsets on ``topic``: partition -> [start, end)."""
    found = {}
    for name, span in ledger.offsets.items():
        t, _, p = name.rpartition(":")
        if t == topic and p.isdigit():
            found[int(p)] = (span[0], span[1])
    return found


def _sort(
    fed: str, parts: list[_Part], read: set[int]
) -> tuple[dict[str, _Update], list[Flagged], list[Flagged]]:
    """The federation's records as updates: published (id -> first complete delivery),
    foreign and incomplete. ``read``: the partitions its aggregator reads (from its ledgers;
    empty: not known)."""
    manifests: dict[tuple[str, str], list[_Part]] = defaultdict(list)
    chunks: dict[tuple[str, str, int], dict[int, int]] = defaultdict(dict)  # -> index: offset
    stray: dict[tuple[str, str], list[_Part]] = defaultdict(list)  # chunks, foreign ones too
    for part in parts:
        if read and part.partition not in read and part.reason is None:
            part = replace(part, reason="unread_partition")
        key = (part.sender, part.update_id)
        if part.manifest:
            manifests[key].append(part)
        else:
            stray[key].append(part)
            if part.reason is None:
                chunks[(*key, part.partition)].setdefault(part.number, part.offset)

    def flag(part: _Part, reason: str) -> Flagged:
        return Flagged(fed, part.sender, part.update_id, part.partition, part.offset, reason)

    updates: dict[str, _Update] = {}
    foreign: list[Flagged] = []
    incomplete: list[Flagged] = []
    for key, found in manifests.items():
        if (outsider := next((m for m in found if m.reason is not None), None)) is not None:
            foreign.append(flag(outsider, outsider.reason or ""))
        genuine = [m for m in found if m.reason is None]
        if not genuine:
            continue
        best: tuple[int, _Part] | None = None  # (chunks it has, manifest), the fullest
        for m in genuine:
            have = chunks.get((*key, m.partition), {})
            got = sum(1 for i in have if 0 <= i < m.number)
            if got == m.number:
                last = max([m.offset, *have.values()])
                updates.setdefault(m.update_id, _Update(flag(m, ""), last))
                break
            if best is None or got > best[0]:
                best = (got, m)
        else:
            assert best is not None
            got, m = best
            incomplete.append(flag(m, f"{got} of {m.number} chunks"))
    for key, found in stray.items():
        if key in manifests:
            continue
        addressed = [p for p in found if p.reason is None]
        if addressed:
            incomplete.append(flag(addressed[0], f"{len(addressed)} chunk(s), no manifest"))
        else:
            foreign.append(flag(found[0], found[0].reason or ""))

    def place(f: Flagged) -> tuple[int, int]:
        return f.partition, f.offset

    return updates, sorted(foreign, key=place), sorted(incomplete, key=place)
