"""Bad input from an outside producer during a live run.

One run of the config, every participant its own process. Once the target federation has
opened its first round, a producer of the campaign's own writes :func:`~worldlm.chaos.garbage`
items to the federation's topics: random bytes, truncated records, corrupted and truncated
chunks, unknown schema versions, unknown senders, oversized and negative size claims, and
well-formed updates of another run or another federation; a few go to the down topic (what
the members read) and a few where nobody reads. Then the run must complete, and the
recording must show what became of every item: dead-lettered (a dead letter names one of its
records), admitted into a round (a ledger names its update id: never), or neither.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from brokers.kafka import KafkaSettings, Producer, partition_for
from schemas.topics import Topics
from worldlm.chaos.fleet import Fleet
from worldlm.chaos.garbage import Item, Target, garbage
from worldlm.chaos.trials import Setting, Stage, bounded_trial, trial_rng
from worldlm.chaos.verdict import Row, ScenarioResult, Trial, count_row, ratio_row
from worldlm.config.hierarchy import Hierarchy
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.record.recording import dead_letters, settings_for
from worldlm.training.workbench import initial_weights
from worldlm.chaos.watch import RunWatch

SCENARIO = "bad_input"
#: Root rounds of the run the bad input is sent into.
ROUNDS = 4

Where = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True)
class Fate:
    """What became of one item."""

    kind: str
    zone: str
    records: int
    dead_lettered: bool
    admitted: bool  # a ledger folded or superseded with it: a forged update got in


def fates(
    items: list[Item],
    offsets: Mapping[int, list[Where]],
    lettered: set[Where],
    admitted_ids: set[str],
) -> list[Fate]:
    """Each item's fate, from where its records landed (``offsets`` by item index), the
    records dead letters name, and the update ids round ledgers took in."""
    return [
        Fate(
            item.kind,
            item.zone,
            len(item.records),
            any(w in lettered for w in offsets.get(i, [])),
            bool(item.update_id) and item.update_id in admitted_ids,
        )
        for i, item in enumerate(items)
    ]


def judge(
    index: int,
    outcome: list[Fate],
    exits: Mapping[str, int | None],
    rounds: tuple[int, int],
    counted: tuple[int, int] = (0, 0),
) -> Trial:
    """``counted``: the dead letters the aggregator's round ledgers counted, and those it
    wrote (every one must be counted: the run goes on for rounds after the bad input)."""
    read = [f for f in outcome if f.zone != "nobody"]
    missed = [f for f in read if not f.dead_lettered]
    admitted = [f for f in outcome if f.admitted]
    crashes = {n: c for n, c in exits.items() if c != 0}
    problems = []
    if crashes:
        problems.append(f"participant(s) crashed: {crashes}")
    if missed:
        kinds = Counter(f"{f.zone}:{f.kind}" for f in missed)
        problems.append(f"{len(missed)} bad input(s) read but not dead-lettered: {dict(kinds)}")
    if admitted:
        problems.append(
            f"{len(admitted)} forged update(s) admitted: {dict(Counter(f.kind for f in admitted))}"
        )
    if rounds[0] < rounds[1]:
        problems.append(f"{rounds[1] - rounds[0]} round(s) not completed")
    if counted[0] != counted[1]:
        problems.append(f"the aggregator's ledgers count {counted[0]} of its {counted[1]} letters")
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for f in outcome:
        by_kind[f.kind][0] += f.records
        by_kind[f.kind][1] += 1
        by_kind[f.kind][2] += f.dead_lettered
    figures: dict[str, int | float | str | bool] = {
        "records_sent": sum(f.records for f in outcome),
        "items": len(outcome),
        "read_records": sum(f.records for f in read),
        "read_items": len(read),
        "read_dead_lettered": sum(f.dead_lettered for f in read),
        "nobody_records": sum(f.records for f in outcome if f.zone == "nobody"),
        "admitted": len(admitted),
        "crashes": len(crashes),
        "rounds_completed": rounds[0],
        "rounds": rounds[1],
        "letters_counted": counted[0],
        "aggregator_letters": counted[1],
    }
    for kind, (records, items, lettered) in sorted(by_kind.items()):
        figures[f"{kind}.records"] = records
        figures[f"{kind}.dead_lettered"] = f"{lettered}/{items}"
    return Trial(SCENARIO, index, not problems, "; ".join(problems), figures=figures)


def summarize(trials: list[Trial]) -> list[Row]:
    def add(name: str) -> int:
        return int(sum(t.figure(name) for t in trials))

    read_items, read_dl = add("read_items"), add("read_dead_lettered")
    return [
        count_row(SCENARIO, "records sent", add("records_sent"), target=None),
        count_row(SCENARIO, "participant crashes", add("crashes")),
        Row(
            SCENARIO,
            "bad inputs a participant read, dead-lettered",
            f"{read_dl}/{read_items} ({add('read_records')} records)",
            f"{read_items}/{read_items}",
            read_dl == read_items and read_items > 0,
        ),
        count_row(SCENARIO, "records where nobody reads", add("nobody_records"), target=None),
        ratio_row(
            SCENARIO,
            "aggregator's dead letters counted in its round ledgers",
            add("letters_counted"),
            add("aggregator_letters"),
        ),
        count_row(SCENARIO, "forged updates admitted", add("admitted")),
        ratio_row(SCENARIO, "rounds completed", add("rounds_completed"), add("rounds") or ROUNDS),
    ]


def target_of(h: Hierarchy, federation: str) -> Target:
    topics = Topics(h.run.id)
    fed = h.federations[federation]
    weights = initial_weights(h.run)
    name = min(
        (n for n, t in weights.items() if t.is_floating_point()), key=lambda n: weights[n].numel()
    )
    return Target(
        run=h.run.id,
        federation=federation,
        members=tuple(fed.members),
        up=topics.up(federation),
        down=topics.down(federation),
        read_partition=partition_for(federation, h.run.partitions),
        partitions=h.run.partitions,
        tensor=(name, tuple(weights[name].shape)),
    )


async def send(kafka: str, items: list[Item]) -> dict[int, list[Where]]:
    """Send every item's records in order; where each item's records landed."""
    landed: dict[int, list[Where]] = defaultdict(list)
    async with Producer(
        KafkaSettings(bootstrap=kafka, client_id="worldlm-chaos-forger")
    ) as producer:
        batch: list[tuple[int, bytes]] = []
        head: tuple[str, int, str] | None = None

        async def flush() -> None:
            if head is None or not batch:
                return
            metas = await producer.send_many(
                head[0], [v for _, v in batch], key=head[2], partition=head[1]
            )
            for (i, _), meta in zip(batch, metas, strict=True):
                landed[i].append((meta.topic, meta.partition, meta.offset))
            batch.clear()

        for i, item in enumerate(items):
            for record in item.records:
                where = (record.topic, record.partition, record.key)
                if where != head or len(batch) >= 256:
                    await flush()
                    head = where
                batch.append((i, record.value))
        await flush()
    return landed


async def run(
    setting: Setting, records: int = 10_000, trials: int = 1, *, limit_s: float = 300.0
) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult(SCENARIO)
    for index in range(trials):

        async def body(stage: Stage, index: int = index) -> Trial:
            return await _trial(setting, index, records, stage)

        result.trials.append(await bounded_trial(SCENARIO, index, limit_s, body))
    result.rows = summarize(result.trials)
    result.seconds = time.monotonic() - started
    return result


async def _trial(setting: Setting, index: int, records: int, stage: Stage) -> Trial:
    rng = trial_rng(setting.seed, SCENARIO, index)
    config = setting.config(SCENARIO, index, rounds=ROUNDS)
    h, servers = config.hierarchy, setting.servers
    root = h.root.id
    federation = rng.choice(sorted(f for f, fed in h.federations.items() if fed.members))
    items = garbage(rng, target_of(h, federation), records)
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    async with (
        RunWatch(servers.kafka, config.run_id, h.run.partitions) as watch,
        Fleet(config, servers, setting.trial_dir(SCENARIO, index)) as fleet,
    ):
        await fleet.start_all()
        stage(f"waiting for {federation} to open its first round")
        await fleet.alongside(watch.until(lambda: watch.opened(federation, 0)))
        stage(f"sending {sum(len(i.records) for i in items)} bad records")
        landed = await send(servers.kafka, items)
        stage("waiting for every participant to exit")
        exits = await fleet.wait_all()
        await watch.settle(lambda: watch.reported(root, ROUNDS - 1))
        reported = len({r.round for r in watch.aggregator_reports(root)})
        ledgers = [r.ledger for r in watch.aggregator_reports(federation) if r.ledger]
        admitted = {uid for ledger in ledgers for uid in (*ledger.folded, *ledger.superseded)}
    stage("reading the dead letters")
    letters = await dead_letters(settings_for(servers.kafka, config.run_id), Topics(config.run_id))
    lettered = {(d.source_topic, d.source_partition, d.source_offset) for d in letters}
    outcome = fates(items, landed, lettered, admitted)
    up = Topics(config.run_id).up(federation)
    wrote = sum(d.envelope.sender == federation and d.source_topic == up for d in letters)
    counted = (sum(ledger.dead_lettered for ledger in ledgers), wrote)
    return judge(index, outcome, exits, (reported, ROUNDS), counted)
