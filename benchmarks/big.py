"""Paper-size models on one machine: each participant's peak memory in model units, and where
a root round's time goes.

    python benchmarks/big.py [--preset 75m] [--clients 4] [--federations 2] [--rounds 2]
        [--local-steps 1] [--seq-len 64] [--batch-size 2]

The embedded Kafka and Redis run in this process; every participant of the hierarchy (root ->
F federations -> N clients, ``--preset``) runs as its own ``worldlm aggregator`` or
``worldlm client`` process against them, as docker-compose runs them, so each one's peak
memory is its own: the kernel's ``ru_maxrss`` of the process (``os.wait4``). It is printed
whole and as model units above the floor, ``(peak - floor) / model bytes``, where the floor is
the peak of a process that imports everything a participant imports and builds no model, and
the model's bytes are its float32 parameters (tied tensors once).

A root round's time is split from the participants' log lines (ISO timestamps, JSON):
broadcast -> the federations' close (their rounds: clients' training, transfers, folds),
federations' close -> the root's close (submissions up and the root's fold), and the root's
close -> its broadcast (checkpoint and publish). Clients' local training is the ``train_s``
of their ``client_round`` lines. Every row is one run: this benchmark reports, it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from brokers.embedded import embedded_servers

ROOT = Path(__file__).resolve().parent.parent
#: What a participant process imports before it builds a model: its floor.
FLOOR_CODE = (
    "import torch, transformers, aiokafka, redis; "
    "import worldlm.cli, worldlm.participants.runner, worldlm.training.workbench"
)


@dataclass
class Participant:
    id: str
    role: str  # "aggregator" or "client"
    log: Path
    peak_bytes: int = 0
    status: int = 0


def model_bytes(preset: str) -> int:
    """The float32 bytes of the preset's parameters (tied tensors once), built on ``meta``."""
    from worldlm.training.model import ModelConfig, build_model
    from worldlm.training.tokenizer import load_tokenizer

    shape = ModelConfig.from_preset(preset, vocab_size=load_tokenizer().vocab_size)
    model = build_model(shape, device="meta")
    return sum(p.numel() * 4 for p in model.parameters())


def write_config(path: Path, args: argparse.Namespace) -> None:
    langs = ["lang-es", "lang-fr", "lang-pl", "lang-ru", "lang-ja", "lang-zh"]
    lines = [
        "[run]",
        'id = "big"',
        f'model = "{args.preset}"',
        f"rounds = {args.rounds}",
        f"seq_len = {args.seq_len}",
        f"batch_size = {args.batch_size}",
        "eval_batches = 1",
        "heartbeat_s = 2.0",
        "[defaults]",
        "internal_rounds = 1",
        f"local_steps = {args.local_steps}",
        "[defaults.schedule]",
        "deadline_s = 600.0",
        "[federations.root]",
    ]
    for f in range(args.federations):
        lines += [f"[federations.f{f}]", 'parent = "root"']
    for c in range(args.clients):
        lines += [
            f"[clients.c{c}]",
            f'federation = "f{c % args.federations}"',
            f'partition = "{langs[c % len(langs)]}"',
        ]
    path.write_text("\n".join(lines) + "\n")


def start(argv: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its stderr (the log) in ``log``."""
    out = log.open("w") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=out)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def reap(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Wait for ``proc``: (exit status, peak RSS in bytes, the kernel's ``ru_maxrss``)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage.ru_maxrss * 1024


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def run(args: argparse.Namespace, work: Path) -> list[Participant]:
    config = work / "big.toml"
    write_config(config, args)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    participants = [Participant("root", "aggregator", work / "root.log")]
    participants += [
        Participant(f"f{f}", "aggregator", work / f"f{f}.log") for f in range(args.federations)
    ]
    participants += [
        Participant(f"c{c}", "client", work / f"c{c}.log") for c in range(args.clients)
    ]
    async with embedded_servers() as servers:
        procs = []
        for p in participants:
            argv = [sys.executable, "-m", "worldlm", p.role, "--config", str(config)]
            argv += ["--node", p.id]
            argv += ["--kafka", servers.kafka, "--redis", servers.redis, "--log-level", "info"]
            if p.role == "aggregator":
                argv += ["--checkpoint-dir", str(work / "checkpoints")]
            procs.append(start(argv, env, p.log))
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(procs)) as pool:  # one waiter each, all at once
            reaped = await asyncio.gather(*(loop.run_in_executor(pool, reap, q) for q in procs))
        for p, (status, peak) in zip(participants, reaped, strict=True):
            p.status, p.peak_bytes = status, peak
    return participants


def split(participants: list[Participant], federations: int) -> list[dict[str, float]]:
    """Per root round: broadcast -> federations' close -> root's close -> next broadcast."""
    logs = {p.id: events(p.log) for p in participants}
    root_casts = [at(e) for e in logs["root"] if e.get("event") == "broadcast"]
    root_closes = [at(e) for e in logs["root"] if e.get("event") == "round_closed"]
    fed_closes = [
        [at(e) for e in logs[f"f{f}"] if e.get("event") == "round_closed"]
        for f in range(federations)
    ]
    train = [
        float(e["train_s"])
        for p in participants
        if p.role == "client"
        for e in logs[p.id]
        if e.get("event") == "client_round" and "train_s" in e
    ]
    rows = []
    for r, (cast, close) in enumerate(zip(root_casts, root_closes, strict=False)):
        feds = [closes[r] for closes in fed_closes if r < len(closes)]
        if not feds:
            break
        nxt = root_casts[r + 1] if r + 1 < len(root_casts) else float("nan")
        rows.append(
            {
                "round": r,
                "to_federations_close": max(feds) - cast,
                "to_root_close": close - max(feds),
                "to_broadcast": nxt - close,
                "train_median": statistics.median(train) if train else float("nan"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="75m")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--federations", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    size = model_bytes(args.preset)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    _, floor = reap(start([sys.executable, "-c", FLOOR_CODE], env))
    print(
        f"preset {args.preset}: {size / 1e6:,.0f} MB of float32 parameters; a participant "
        f"process's floor (imports, no model): {floor / 1e6:,.0f} MB"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="worldlm-big-") as tmp:
        participants = asyncio.run(run(args, Path(tmp)))
        wall = time.perf_counter() - started
        print(f"\n{'participant':>12} | {'role':>10} | {'exit':>4} | {'peak MB':>8} | model units")
        for p in participants:
            units = (p.peak_bytes - floor) / size
            print(
                f"{p.id:>12} | {p.role:>10} | {p.status:>4} | {p.peak_bytes / 1e6:>8,.0f} | "
                f"{units:.2f}"
            )
        total = sum(p.peak_bytes for p in participants)
        print(
            f"sum of peaks {total / 1e9:.1f} GB for {len(participants)} processes; "
            f"wall {wall:.0f} s"
        )
        print(f"\n{'root round':>10} | {'-> feds close':>13} | {'-> root close':>13} | "
              f"{'-> broadcast':>12} | client train (median)")  # fmt: skip
        for row in split(participants, args.federations):
            print(
                f"{row['round']:>10} | {row['to_federations_close']:>12.1f}s | "
                f"{row['to_root_close']:>12.1f}s | {row['to_broadcast']:>11.1f}s | "
                f"{row['train_median']:.1f} s"
            )


if __name__ == "__main__":
    main()
