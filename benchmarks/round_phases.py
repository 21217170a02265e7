"""Where a root round's wall time goes, hop by hop, from the participants' own log lines.

Runs benchmarks/scale.py's hierarchy (root -> F federations -> N clients, tiny model) once per
trial in a fresh process with info logs, and splits every root round after the first into the
phases of its critical path, each the slowest federation's:

- down: the root's broadcast to the federations' broadcasts (their follower decodes the root's
  model, takes the backbone, checkpoints, encodes and publishes);
- clients: a federation's broadcast to its last admitted update (the clients decode, train,
  encode and publish; the aggregator reassembles, checks and checkpoints each update);
- close: the last admitted update to the federation's ``round_closed`` (fold, residuals,
  checkpoint, announcement);
- up: the federation's close to the root's ``round_closed`` (submission, the root's intake,
  fold, checkpoint, announcement);
- root: the root's close to its next broadcast.

``train`` is the clients' training CPU per round packed ideally on the process's cores (from
their reports), ``fixed`` the round less that: the fixed cost the issue 23 target (100 ms at 8
clients) is about. Every trial is printed, then the medians.

    python benchmarks/round_phases.py [--clients 8] [--federations 2] [--local-steps 1]
        [--rounds 4] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

PHASES = ("down", "clients", "close", "up", "root")


def one(clients: int, federations: int, rounds: int, steps: int) -> None:
    """One run in this process, info logs as JSON on stderr, client training CPU on stdout."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale

    from worldlm import logs

    logs.configure(level="info", json=True)
    torch.set_num_threads(1)
    row = asyncio.run(scale.measure(clients, federations, rounds, steps, 32, 4))
    print(json.dumps(row), flush=True)


def _t(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def phases(events: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, float]]:
    """Per root round after the first: each phase's seconds, the round, train and fixed."""
    by: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {}
    for e in events:
        by.setdefault((e.get("node", ""), e["event"]), []).append((_t(e), e))
    root_casts = sorted(t for t, e in by.get(("root", "broadcast"), []))
    root_closes = sorted(t for t, e in by.get(("root", "round_closed"), []))
    feds = sorted({node for node, ev in by if ev == "round_closed" and node != "root"})
    cores = len(os.sched_getaffinity(0))
    train = row["train_cpu_per_round_s"] / cores if "train_cpu_per_round_s" in row else 0.0
    out = []
    for start, end in itertools.pairwise(root_casts[1:]):  # the first round starts up
        closes = [t for t in root_closes if start < t < end]
        if not closes:
            continue
        p = dict.fromkeys(PHASES, 0.0)
        for fed in feds:
            casts, accepted, closed = (
                sorted(t for t, _ in by.get((fed, event), []) if start <= t <= closes[0])
                for event in ("broadcast", "update_accepted", "round_closed")
            )
            if not (casts and accepted and closed):
                continue
            p["down"] = max(p["down"], casts[0] - start)
            p["clients"] = max(p["clients"], accepted[-1] - casts[0])
            p["close"] = max(p["close"], closed[-1] - accepted[-1])
            p["up"] = max(p["up"], closes[0] - closed[-1])
        p["root"] = end - closes[0]
        p["round"] = end - start
        p["train"] = train
        p["fixed"] = p["round"] - train
        out.append(p)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--federations", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.clients, args.federations, args.rounds, args.local_steps)
        return
    columns = [*PHASES, "round", "train", "fixed"]
    print(" | ".join(["trial round", *(f"{c} s" for c in columns)]), flush=True)
    rows = []
    for trial in range(args.trials):
        command = [sys.executable, __file__, "--one", "--clients", str(args.clients)]
        command += ["--federations", str(args.federations), "--rounds", str(args.rounds)]
        command += ["--local-steps", str(args.local_steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(done.stderr[-4000:])
        events = []
        for line in done.stderr.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event and "timestamp" in event:
                events.append(event)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        for i, p in enumerate(phases(events, row)):
            rows.append(p)
            cells = " | ".join(f"{p[c]:.3f}" for c in columns)
            print(f"{trial} {i + 1} | {cells}", flush=True)
    cells = " | ".join(f"{statistics.median(r[c] for r in rows):.3f}" for c in columns)
    print(f"median | {cells}", flush=True)


if __name__ == "__main__":
    main()
