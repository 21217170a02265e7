"""The regime study: where joining a federation pays, mapped over the data a client holds.

``worldlm experiment --study regimes``. The axes are the two quantities that decide whether a
client gains from others: **tokens per client** (from data-starved, a few thousand tokens
seen many times under the budget, to plentiful, every token seen about once) and **clients
per federation** (a federation's members share one distribution: one English domain). Every
cell runs every method on the simulator (the same round core, strategies and trainer as the
live system) with the same per-client token budget, so only the data differs along an axis.

The tree is ``worldlm/config/shipped/regimes.toml``: a root over three federations, one domain each.
Its ``[clients]`` tables are prototypes: a cell with N clients per federation and a cap of T
tokens replaces each by N clients holding shards 0..N-1 of ``shards`` disjoint shards of its
partition (fixed by the seed), each capped at its first T training tokens (nested: a larger
cap holds a smaller one's text). Validation and test text are each client's own held-out
documents of its shard, never capped, the same for every method and cap.

Reported figure: a client's test perplexity at its **best validation round** (early
stopping: a starved model overfits, and a practitioner keeps its best checkpoint; every
method gets the same rule), with the final model's figure beside it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worldlm.lab.grid import Cell, CellResult, Job, load_cell, run_jobs

Raw = dict[str, Any]

#: The methods of every cell (worldlm/lab/methods.py); the misplaced tree joins where a
#: federation has many members (``RegimeStudy.misplaced``).
REGIME_METHODS = (
    "worldlm",
    "worldlm_meankey",
    "fedper",
    "fedavg",
    "hierarchical_fedavg",
    "local",
    "centralized",
)
#: The budget per cell: 4 root rounds x 2 federation rounds x 4 local steps of 8 x 32 tokens
#: (32 steps, 8,192 tokens seen per client); 4 evaluation batches of validation and of test.
#: Sequences of 32 tokens (the table's 64) halve a cell's cost: the map fits an hour.
REGIME_BUDGET = {"rounds": 4, "local_steps": 4, "eval_batches": 4, "seq_len": 32, "batch_size": 8}
#: ``--quick``: 2 root rounds x 2 x 2 steps of 4 x 32 tokens, 1 evaluation batch.
QUICK_BUDGET = {"rounds": 2, "local_steps": 2, "eval_batches": 1, "seq_len": 32, "batch_size": 4}
#: ``None``: the client's whole shard (about 17k-21k training tokens at 8 shards).
Tokens = int | None


@dataclass(frozen=True)
class RecordDPCells:
    """Record-level DP-SGD (per-example clipping and noise inside each client, accounted
    over the client's own examples) on the methods below, at the smallest and largest token
    caps, with the fewest clients per federation; compared with the same cells without DP."""

    epsilon: float = 8.0
    delta: float = 1e-5
    clip_norm: float = 1.0
    methods: tuple[str, ...] = ("worldlm", "fedavg", "local")


@dataclass(frozen=True)
class RegimeStudy:
    """The map's axes, methods, seeds and budget; :meth:`jobs` lists every cell to run."""

    tokens: tuple[Tokens, ...] = (512, 2048, None, 65536)
    clients: tuple[int, ...] = (2, 8)
    shards: int = 8
    #: The largest cap every client's shard of ``shards`` holds (the smallest shard of the
    #: shipped partitions at 8 shards has 16.9k training tokens). A larger cap needs a larger
    #: shard: the point's N clients hold N shards (shard i of 8 lies inside shard i of N when
    #: N divides 8, so the text still nests; the held-out documents are the larger shard's).
    #: Where N is ``shards`` itself there is no larger shard, and no such point.
    nested_cap: int = 16384
    methods: tuple[str, ...] = REGIME_METHODS
    #: the misplaced tree runs where a federation has this many members or more
    misplaced: int = 8
    seeds: int = 3
    #: one learning rate for every method (the demo's; fixed before any cell ran)
    lr: float = 3e-3
    budget: dict[str, int] = field(default_factory=lambda: dict(REGIME_BUDGET))
    dp: RecordDPCells | None = RecordDPCells()
    config: Path = field(
        default_factory=lambda: Path(str(resources.files("worldlm") / "configs/regimes.toml"))
    )

    def __post_init__(self) -> None:
        if max(self.clients) > self.shards:
            raise ValueError(f"{max(self.clients)} clients per federation need >= as many shards")

    def methods_at(self, clients: int) -> tuple[str, ...]:
        extra = ("worldlm_misplaced",) if clients >= self.misplaced else ()
        return self.methods + extra

    def dp_methods(self) -> tuple[str, ...]:
        return tuple(f"{m}+rdp" for m in self.dp.methods) if self.dp is not None else ()

    def shards_at(self, clients: int, tokens: Tokens) -> int | None:
        """How many shards a partition is dealt into at this point (None: no such point)."""
        if tokens is None or tokens <= self.nested_cap:
            return self.shards
        wider = clients < self.shards and self.shards % clients == 0
        return clients if wider else None

    def tokens_at(self, clients: int) -> list[Tokens]:
        """The caps of the map's row for ``clients`` per federation, in axis order."""
        return [t for t in self.tokens if self.shards_at(clients, t) is not None]

    def dp_point(self, clients: int, tokens: Tokens) -> bool:
        """Whether the record-level DP cells run at this point of the map: both ends of the
        row with the fewest clients per federation."""
        if self.dp is None or clients != min(self.clients):
            return False
        row = self.tokens_at(clients)
        return tokens in (row[0], row[-1])

    def points(self) -> Iterator[tuple[int, Tokens]]:
        for n in self.clients:
            for t in self.tokens_at(n):
                yield n, t

    def jobs(self) -> list[Job]:
        """Every cell, the costliest first (most clients, then DP) so the pool ends evenly."""
        jobs = []
        for n, t in sorted(self.points(), key=lambda p: -p[0]):
            shards = self.shards_at(n, t)
            assert shards is not None  # points() yields only points that exist
            prepare = functools.partial(population, clients=n, shards=shards, tokens=t)
            for seed in range(self.seeds):
                if self.dp_point(n, t):
                    assert self.dp is not None
                    private = functools.partial(
                        with_record_dp,
                        epsilon=self.dp.epsilon,
                        delta=self.dp.delta,
                        clip=self.dp.clip_norm,
                    )
                    for m in self.dp_methods():
                        jobs.append(Job(self.cell(n, t, m, seed), self.config, prepare, private))
                for m in self.methods_at(n):
                    jobs.append(Job(self.cell(n, t, m, seed), self.config, prepare))
        return jobs

    def cell(self, clients: int, tokens: Tokens, method: str, seed: int) -> Cell:
        return Cell(point_name(clients, tokens), method, seed, self.lr)

    def run(
        self,
        out: Path,
        *,
        processes: int = 1,
        should_stop: Callable[[], bool] | None = None,
        on_done: Callable[[Cell], None] | None = None,
    ) -> None:
        """Run every cell not on disk yet (resumable: finished cells are kept)."""
        run_jobs(
            self.jobs(),
            out,
            self.budget,
            processes=processes,
            should_stop=should_stop,
            on_done=on_done,
        )

    def load(self, out: Path, clients: int, tokens: Tokens, method: str, seed: int) -> CellResult:
        return load_cell(self.cell(clients, tokens, method, seed).path(out))


def point_name(clients: int, tokens: Tokens) -> str:
    return f"n{clients}-t{tokens if tokens is not None else 'all'}"


def population(raw: Raw, clients: int, shards: int, tokens: Tokens) -> Raw:
    """Each prototype client of ``raw`` replaced by ``clients`` clients of its federation:
    shards 0..clients-1 of ``shards`` of its partition, each capped at ``tokens``."""
    out = copy.deepcopy(raw)
    out["clients"] = {}
    for cid, table in raw["clients"].items():
        for i in range(clients):
            member = {**table, "shard": i, "shards": shards}
            if tokens is not None:
                member["train_tokens"] = tokens
            out["clients"][f"{cid}-{i}"] = member
    out["run"]["id"] = f"{raw['run'].get('id', 'regimes')}-{point_name(clients, tokens)}"
    # the held-out split beside every validation figure: the report picks the best round's
    out["run"]["test_each_eval"] = True
    return out


def with_record_dp(raw: Raw, epsilon: float, delta: float, clip: float) -> Raw:
    """Record-level DP-SGD in every client (a policy of every federation)."""
    out = copy.deepcopy(raw)
    out.setdefault("defaults", {})["record_dp"] = {
        "epsilon": epsilon,
        "delta": delta,
        "clip_norm": clip,
    }
    for table in out.get("federations", {}).values():
        table.pop("record_dp", None)
    out["run"]["id"] = f"{out['run'].get('id', 'regimes')}-rdp"
    return out


def best_round_scores(result: CellResult) -> dict[str, tuple[int, int, float, float]]:
    """Client -> (best validation round, last round, test at that round, final test).

    The best round is the first round of the lowest validation perplexity; the test figure
    is the one measured with it (``run.test_each_eval``)."""
    out = {}
    for client, val in result.val.curve.items():
        test = dict(result.test_curve.get(client, []))
        if not val or not test:
            continue
        best = min(val, key=lambda point: point[1])[0]
        last = val[-1][0]
        out[client] = (best, last, test[best], test[max(test)])
    return out
