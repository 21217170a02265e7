"""Simulator benchmark: its own cost, and its speed-up over the live system, in one run.

(a) the simulator on a config: wall time against the time spent in local training and
    evaluation (the same work a live run does); everything else is the simulator's own cost
    (target: <= 3% of wall time);
(b) the same config as a live `worldlm run` (every participant in one process, on embedded
    Kafka and Redis): wall time, and the simulator's speed-up over it.

Both use one torch intra-op thread per training thread, as the CLI does. Trials alternate
(a) and (b); every pair is printed, and the medians are compared.

    python benchmarks/simulate.py [--config worldlm/config/shipped/demo.toml] [--trials 7] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import torch

from worldlm.config.hierarchy import parse
from worldlm.lab.demo import QUICK, demo_raw
from worldlm.participants.node import Endpoints
from worldlm.participants.runner import run_hierarchy
from worldlm.lab.simulator import Simulation
from worldlm.training.corpus import partitions


def simulated(raw: dict) -> tuple[float, float]:
    h = parse(raw, known_partitions={p.name for p in partitions()})
    simulation = Simulation(h)
    result = simulation.run()
    return result.wall_s, simulation.train_s


async def live(raw: dict) -> float:
    from brokers.embedded import embedded_servers

    h = parse(raw, known_partitions={p.name for p in partitions()})
    async with embedded_servers() as servers:
        started = time.perf_counter()
        await run_hierarchy(h, Endpoints(servers.kafka, servers.redis))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="the demo's --quick budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for trial in range(args.trials):
        raw = demo_raw(
            f"bench-sim-{trial}-{int(time.time())}", QUICK if args.quick else {}, args.config
        )
        order = ["sim", "live"] if trial % 2 == 0 else ["live", "sim"]
        got: dict[str, float] = {}
        for which in order:
            if which == "sim":
                got["sim"], got["train"] = simulated(raw)
            else:
                got["live"] = asyncio.run(live(raw))
        own = 1 - got["train"] / got["sim"]
        rows.append((got["sim"], got["train"], own, got["live"], got["live"] / got["sim"]))
        print(
            f"trial {trial} ({'/'.join(order)}): simulator {got['sim']:.1f} s "
            f"(training+evaluation {got['train']:.1f} s, own {own:.1%}), "
            f"live {got['live']:.1f} s, speed-up {got['live'] / got['sim']:.2f}x",
            flush=True,
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"median of {len(rows)}: simulator {med[0]:.1f} s, own cost {med[2]:.1%} of its wall "
        f"time; live {med[3]:.1f} s; speed-up {med[4]:.2f}x"
    )


if __name__ == "__main__":
    main()
