"""Flower side by side: the same federated work through Flower and through WorldLM, in one run.

The work: one flat federation of ``--clients`` clients (flat FedAvg), the tiny model, each
client's shard of the corpus, ``--steps`` local steps of AdamW (seq 32 x batch 4, the scale
benchmark's step) from the received model and one evaluation batch of it per round,
``--rounds`` rounds. Every client runs WorldLM's own ``Learner`` (model, data, trainer) in both
systems, so the training and evaluation are the same code on the same bytes.

- flower: Flower (``pip install -e '.[bench]'``) in deployment mode on loopback: one
  ``flower-superlink`` and ``--clients`` ``flower-supernode`` processes (``--insecure``,
  runtime dependency installation off), the app in ``benchmarks/flower_app`` submitted with
  ``flwr run``: a ServerApp running ``flwr.serverapp.strategy.FedAvg`` (every client every
  round, ``fraction_evaluate = 0``: evaluation happens inside the train message, as in WorldLM,
  not in a second round trip) and a ClientApp that runs the client's round. Flower 1.42 starts
  one ClientApp process per message in both of its isolation modes (``subprocess``, the
  default, is used: ``process`` only moves the start into ``flower-superexec``); its warm
  executors are for Kubernetes. So each client builds its Learner (model, tokenizer, shard)
  again every round: that is the cost of Flower's execution model, and it is measured as is.
- worldlm: ``worldlm run CONFIG`` (embedded Kafka and Redis, every participant in one process).
- simulate (``--simulate``): the simulator ``worldlm simulate CONFIG`` runs (2 training
  threads), clocked at the root's reports. Flower's own simulation needs ``flwr[simulation]``
  (Ray), not installed here, so it is not run.

Per system and trial: round s (median time between two closed rounds, as in
benchmarks/scale.py), CPU s per round (every process of the system, servers and spawned
processes included, between the first and the last closed round, sampled from /proc), wall s
(start of the command to the last round, start-up included) and payload MB per round (model
bytes down and up over every client: Flower's ArrayRecords, WorldLM's delta records). Trials
alternate the systems' order; every trial is printed, then medians.

    python benchmarks/flower.py [--steps 1,10] [--rounds 5] [--clients 8] [--trials 3]
        [--simulate] [--flwr-path DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cpu_sampler import Sampler, free_port  # benchmarks/, run as a script

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "flower_app"


def config_text(clients: int, rounds: int, steps: int, run_id: str) -> str:
    """A flat federation: root and ``clients`` clients (flat FedAvg, no key layers)."""
    from worldlm.training.corpus import partitions

    names = [p.name for p in partitions()]
    shards = -(-clients // len(names))
    lines = [
        "[run]",
        f'id = "{run_id}"',
        'model = "tiny"',
        f"rounds = {rounds}",
        "seq_len = 32",
        "batch_size = 4",
        "eval_batches = 1",
        "heartbeat_s = 1.0",
        "",
        "[defaults]",
        f"local_steps = {steps}",
        'backbone = "fedavg"',
        'key = "fedavg"',  # flat FedAvg: the whole model averaged, no attention, no residuals
        "",
        "[defaults.residual]",
        'links = "none"',
        "",
        "[defaults.schedule]",
        'mode = "sync"',
        "quorum = 1.0",
        "deadline_s = 600.0",
        "",
        "[federations.root]",
    ]
    for i in range(clients):
        lines += [
            "",
            f"[clients.c{i:03d}]",
            'federation = "root"',
            f'partition = "{names[i % len(names)]}"',
            f"shard = {i // len(names)}",
            f"shards = {shards}",
        ]
    return "\n".join(lines) + "\n"


def worldlm_bytes(config: Path, clients: int) -> int:
    """Record bytes of one round: a broadcast down to and an update up from every client."""
    from schemas.codec import encode
    from schemas.delta import encode_delta
    from schemas.messages import Envelope
    from worldlm.config.hierarchy import load
    from worldlm.training.workbench import initial_weights

    h = load(config)
    weights = initial_weights(h.run)
    env = Envelope(run=h.run.id, sender="c000", federation="root")
    total = 0
    for kind in ("broadcast", "update"):
        delta = encode_delta(
            weights, envelope=env, kind=kind, base_version=0, chunk_size=h.run.chunk_kib * 1024
        )
        total += sum(len(encode(m)) for m in delta.messages())
    return total * clients


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def summarise(start: float, ends: list[float], sampler: Sampler, payload: int) -> dict[str, Any]:
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    cpu = (sampler.at(ends[-1]) - sampler.at(ends[0])) / max(1, len(ends) - 1)
    return {
        "round_s": statistics.median(gaps) if gaps else float("nan"),
        "cpu_per_round_s": cpu,
        "wall_s": ends[-1] - start,
        "mb_per_round": payload / 1e6,
        "rounds": len(ends),
    }


def worldlm_trial(config: Path, clients: int, env: dict[str, str]) -> dict[str, Any]:
    """``worldlm run CONFIG``: the root's ``round_closed`` log lines end the rounds."""
    command = [sys.executable, "-m", "worldlm", "run", str(config), "--log-level", "info"]
    ends: list[float] = []
    with Sampler() as sampler:
        start = time.time()
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "round_closed" and event.get("round", -1) >= 0:
                    ends.append(_iso(event["timestamp"]))
        if proc.wait() != 0:
            sys.exit(f"worldlm run failed ({proc.returncode})")
    return summarise(start, ends, sampler, worldlm_bytes(config, clients))


#: The simulator, as `worldlm simulate` runs it, with a clock on the root's reports (the
#: reports themselves carry none: the simulator is deterministic).
SIMULATE = """
import json, sys, time
import torch
from worldlm.config.hierarchy import load
from worldlm.lab.simulator import Simulation
torch.set_num_threads(1)
ends = []
def seen(report):
    if report.role == "aggregator" and report.node == "root":
        ends.append(time.time())
Simulation(load(sys.argv[1]), on_report=seen, workers=2).run()
print(json.dumps(ends))
"""


def simulate_trial(config: Path, clients: int, env: dict[str, str]) -> dict[str, Any]:
    """The simulator on the same config (``worldlm simulate``'s Simulation, 2 workers)."""
    with Sampler() as sampler:
        start = time.time()
        command = [sys.executable, "-c", SIMULATE, str(config)]
        done = subprocess.run(command, env=env, check=True, cwd=ROOT, capture_output=True)
        ends = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return summarise(start, ends, sampler, worldlm_bytes(config, clients))


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started inside are stopped (SIGTERM, then SIGKILL) on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def flower_trial(
    config: Path, clients: int, rounds: int, env: dict[str, str], bin_dir: Path, work: Path
) -> dict[str, Any]:
    """SuperLink + ``clients`` SuperNodes on loopback, the app submitted with ``flwr run``."""
    home, out = work / "flwr-home", work / "rounds.jsonl"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    out.unlink(missing_ok=True)
    port = free_port()  # Flower 1.42 serves its Fleet, Control and Runtime APIs on one port
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    path = os.pathsep.join([str(bin_dir), env.get("PATH", "")])  # flower-superexec, flwr-*
    env = env | {"FLWR_HOME": str(home), "PATH": path}
    logs = (work / "flower.log").open("ab")
    spawn = {"env": env, "stdout": logs, "stderr": logs, "start_new_session": True}
    with Sampler() as sampler, processes() as started:
        start = time.time()
        started.append(
            subprocess.Popen(  # type: ignore[call-overload]
                [
                    str(bin_dir / "flower-superlink"),
                    "--insecure",
                    "--disable-runtime-dependency-installation",
                    "--host=127.0.0.1",
                    f"--port={port}",
                ],
                **spawn,
            )
        )
        for i in range(clients):
            started.append(
                subprocess.Popen(  # type: ignore[call-overload]
                    [
                        str(bin_dir / "flower-supernode"),
                        "--insecure",
                        f"--superlink=127.0.0.1:{port}",
                        f"--node-config=partition-id={i} num-partitions={clients}",
                        "--host=127.0.0.1",
                        f"--port={free_port()}",
                    ],
                    **spawn,
                )
            )
        run_config = f"config='{config}' rounds={rounds} clients={clients} out='{out}'"
        for _ in range(60):  # the SuperLink's Control API takes a moment to come up
            submitted = subprocess.run(
                [str(bin_dir / "flwr"), "run", str(APP), "bench", "--run-config", run_config],
                env=env,
                capture_output=True,
                check=False,
            )
            if submitted.returncode == 0:
                break
            time.sleep(1)
        else:
            log = (work / "flower.log").read_text(errors="replace")[-3000:]
            sys.exit(f"flwr run failed: {submitted.stderr.decode()[-2000:]}\n{log}")
        deadline = time.time() + 600 + rounds * 120
        lines: list[dict[str, Any]] = []
        while len(lines) < rounds and time.time() < deadline:
            time.sleep(0.2)
            if out.exists():
                lines = [json.loads(x) for x in out.read_text().splitlines()]
        if len(lines) < rounds:
            log = (work / "flower.log").read_text(errors="replace")[-3000:]
            sys.exit(f"Flower finished {len(lines)} of {rounds} rounds:\n{log}")
    logs.close()
    if any(x["replies"] != clients for x in lines):
        sys.exit(f"a Flower round lost replies: {lines}")
    payload = statistics.median(x["down"] + x["up"] for x in lines)
    return summarise(start, [x["t"] for x in lines], sampler, int(payload))


COLUMNS = (
    ("round s", "round_s", "{:.2f}"),
    ("CPU s/round", "cpu_per_round_s", "{:.2f}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("MB/round", "mb_per_round", "{:.1f}"),
)


def row(label: str, r: dict[str, Any]) -> str:
    return " | ".join([label, *(fmt.format(r[key]) for _, key, fmt in COLUMNS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="1,10", help="local steps per round, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3, help="trials per system and setting")
    parser.add_argument("--simulate", action="store_true", help="also time `worldlm simulate`")
    parser.add_argument("--flwr-path", type=Path, default=None, help="flwr installed here")
    parser.add_argument("--json", type=Path, default=None, help="also write every trial here")
    args = parser.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    paths = [str(ROOT)]
    bin_dir = Path(sys.executable).parent
    if args.flwr_path is not None:  # pip install --target DIR flwr
        paths.insert(0, str(args.flwr_path))
        bin_dir = args.flwr_path / "bin"
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if not (bin_dir / "flower-superlink").exists():
        sys.exit("Flower is not installed: pip install -e '.[bench]' (or --flwr-path DIR)")
    systems = ["flower", "worldlm"] + (["simulate"] if args.simulate else [])
    rows: list[dict[str, Any]] = []
    print(" | ".join(["steps trial system", *(label for label, _, _ in COLUMNS)]), flush=True)
    with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
        work = Path(tmp)
        for steps in (int(s) for s in args.steps.split(",")):
            config = work / f"flat-{steps}.toml"
            run_id = f"flower-bench-{steps}"
            config.write_text(config_text(args.clients, args.rounds, steps, run_id))
            for trial in range(args.trials):
                order = systems if trial % 2 == 0 else systems[::-1]
                for system in order:
                    if system == "flower":
                        r = flower_trial(config, args.clients, args.rounds, env, bin_dir, work)
                    elif system == "worldlm":
                        r = worldlm_trial(config, args.clients, env)
                    else:
                        r = simulate_trial(config, args.clients, env)
                    r |= {"steps": steps, "trial": trial, "system": system}
                    rows.append(r)
                    print(row(f"{steps} {trial} {system}", r), flush=True)
    print("medians:")
    for steps in sorted({r["steps"] for r in rows}):
        for system in systems:
            mine = [r for r in rows if r["steps"] == steps and r["system"] == system]
            median = {k: statistics.median(r[k] for r in mine) for _, k, _ in COLUMNS}
            print(row(f"{steps} median {system}", median), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
