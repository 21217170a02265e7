"""Scale benchmark: N clients in F federations in one `worldlm run`-style process.

For each size, a fresh Python process starts the embedded Kafka and Redis servers and runs the
whole hierarchy (root -> F federations -> N clients; tiny model, ``--local-steps`` local
steps, 1 by default) with
``run_hierarchy``, as ``worldlm run`` does, and prints one row:

- wall: the run, from the participants' start to ``run_hierarchy`` returning;
- first round: the start to the root's first closed round;
- round: the median time between two closed root rounds;
- overhead: everything but local training, as a share of a round:
  ``1 - (training CPU per round / cores) / round``, with training packed ideally onto the
  process's cores (``os.sched_getaffinity``); on a machine shared with other work the process
  gets less than its cores and this overstates the overhead, so the row also gives
- cpu overhead: the share of this process's CPU during the rounds that was not local training
  (evaluation included), and eval: the share that was evaluation;
- where a round's capacity (cores x round time) goes: train (local training), other (this
  process's CPU that is not training), servers (the broker's and Redis's CPU) and idle (no
  one: the cores wait for a hop of the round: a fetch, a quorum, a parent);
- RSS per participant: (peak RSS - RSS before the participants started) / (N + F + 1), and
  per client likewise / N (the servers are other processes and are not counted);
- Kafka and Redis connections: the most TCP sockets of this process to each server at once
  (sampled every 0.25 s from /proc: Linux only);
- members expired: ``expired`` membership events on the run's events topic (0 when no
  heartbeat was starved);
- exit: the root's last closed round to ``run_hierarchy`` returning (the final broadcast, every
  client's final evaluation, every participant's clean stop).

    python benchmarks/scale.py [--sizes 8,32,100] [--federations F] [--rounds 4] [--trials 7]
        [--local-steps 1] [--seq-len 32] [--batch-size 4]

F defaults to max(2, round(N / 10)). Every trial is a fresh process (so peak RSS is that
run's own); every trial's row is printed, then the median of each column per size.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: One row per size: (label, key, format).
COLUMNS = (
    ("clients", "clients", "{:d}"),
    ("feds", "federations", "{:d}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("first round s", "first_round_s", "{:.1f}"),
    ("round s", "round_s", "{:.2f}"),
    ("overhead", "overhead", "{:.0%}"),
    ("cpu overhead", "cpu_overhead", "{:.0%}"),
    ("eval", "eval_share", "{:.0%}"),
    ("train", "capacity_train", "{:.0%}"),
    ("other", "capacity_other", "{:.0%}"),
    ("servers", "capacity_servers", "{:.0%}"),
    ("idle", "capacity_idle", "{:.0%}"),
    ("MB/participant", "rss_per_participant_mb", "{:.1f}"),
    ("MB/client", "rss_per_client_mb", "{:.1f}"),
    ("kafka conns", "kafka_connections", "{:d}"),
    ("redis conns", "redis_connections", "{:d}"),
    ("expired", "members_expired", "{:d}"),
    ("exit s", "exit_s", "{:.1f}"),
)


def config(
    n: int,
    federations: int,
    rounds: int,
    run_id: str,
    local_steps: int = 1,
    seq_len: int = 32,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Root -> ``federations`` -> ``n`` clients over the corpus partitions (sharded)."""
    from worldlm.training.corpus import partitions

    names = [p.name for p in partitions()]
    shards = math.ceil(n / len(names))
    feds = [f"f{i:02d}" for i in range(federations)]
    return {
        "run": {
            "id": run_id,
            "model": "tiny",
            "rounds": rounds,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "eval_batches": 1,
            "heartbeat_s": 1.0,
            "partitions": 4,
        },
        "defaults": {
            "local_steps": local_steps,
            "internal_rounds": 1,
            "schedule": {"mode": "sync", "quorum": 1.0, "deadline_s": 300.0},
        },
        "federations": {"root": {}, **{f: {"parent": "root"} for f in feds}},
        "clients": {
            f"c{i:03d}": {
                "federation": feds[i % federations],
                "partition": names[i % len(names)],
                "shard": i // len(names),
                "shards": shards,
            }
            for i in range(n)
        },
    }


def _socket_ports() -> list[int]:
    """Remote ports of this process's connected TCP sockets, each descriptor asked for its
    peer. (Reading /proc/self/net/tcp instead makes the kernel walk its whole connection
    table: ~4.5 ms a file on this machine, twice per sample, four samples a second, on the
    event loop whose overhead this benchmark measures.)"""
    ports = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:["):
                continue
            sock = socket.socket(fileno=int(fd))  # wraps the descriptor; detached below
        except (OSError, ValueError):
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                ports.append(int(sock.getpeername()[1]))
        except OSError:
            pass  # a listening or unconnected socket
        finally:
            sock.detach()  # never close what is not ours
    return ports


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _expired(kafka: str, topic: str, partitions: int) -> int:
    from aiokafka import TopicPartition

    from brokers.kafka import KafkaSettings, PartitionReader
    from schemas.codec import event_decoder
    from schemas.errors import WireError
    from schemas.messages import MembershipEvent

    start = {TopicPartition(topic, p): 0 for p in range(partitions)}
    count, quiet = 0, 0
    async with PartitionReader(KafkaSettings(kafka, partitions=partitions), start) as reader:
        while quiet < 5:
            records = await reader.fetch(timeout_ms=100)
            quiet = 0 if records else quiet + 1
            for record in records:
                try:
                    event = event_decoder.decode(record.value or b"")
                except WireError:
                    continue
                count += isinstance(event, MembershipEvent) and event.action == "expired"
    return count


async def measure(
    n: int,
    federations: int,
    rounds: int,
    local_steps: int = 1,
    seq_len: int = 32,
    batch_size: int = 4,
) -> dict[str, Any]:
    """One run of ``n`` clients; the figures of one row."""
    from brokers.embedded import EmbeddedKafka, EmbeddedRedis, Servers
    from schemas.messages import MetricsReport
    from schemas.topics import Topics
    from worldlm.config.hierarchy import parse
    from worldlm.participants.node import Endpoints
    from worldlm.participants.runner import run_hierarchy
    from worldlm.training.corpus import partitions

    run_id = f"scale-{n}-{int(time.time())}"
    known = {p.name for p in partitions()}
    raw = config(n, federations, rounds, run_id, local_steps, seq_len, batch_size)
    h = parse(raw, known_partitions=known)
    # (wall, process CPU, servers' CPU, report)
    seen: list[tuple[float, float, float, MetricsReport]] = []
    running: list[EmbeddedKafka | EmbeddedRedis] = []

    def on_report(report: MetricsReport) -> None:
        servers_cpu = sum(s.cpu_seconds() for s in running) if report.node == "root" else 0.0
        seen.append((time.perf_counter(), time.process_time(), servers_cpu, report))

    async with EmbeddedKafka() as kafka_server, EmbeddedRedis() as redis_server:
        servers = Servers(kafka_server.bootstrap, redis_server.url)
        running[:] = [kafka_server, redis_server]
        kafka_port = int(servers.kafka.rsplit(":", 1)[1])
        redis_port = int(servers.redis.split(":")[2].split("/")[0])
        peak = {kafka_port: 0, redis_port: 0}

        async def sample() -> None:
            while True:
                ports = _socket_ports()
                for port in peak:
                    peak[port] = max(peak[port], ports.count(port))
                await asyncio.sleep(0.25)

        rss_before = _rss_mb()
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await run_hierarchy(h, Endpoints(servers.kafka, servers.redis), on_report=on_report)
        ended = time.perf_counter()
        sampler.cancel()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        expired = await _expired(servers.kafka, Topics(run_id).events, h.run.partitions)

    root = [(t, cpu, srv) for t, cpu, srv, r in seen if r.node == "root" and r.role == "aggregator"]
    (first_t, first_cpu, first_srv), (last_t, last_cpu, last_srv) = root[0], root[-1]
    # What the clients reported between the first and the last closed root round.
    window = [r.values for t, _, _, r in seen if r.role == "client" and first_t < t <= last_t]
    train_cpu = sum(v.get("train_cpu_s", 0.0) for v in window)
    eval_cpu = sum(v.get("eval_cpu_s", 0.0) for v in window)
    process_cpu = last_cpu - first_cpu
    intervals = [b[0] - a[0] for a, b in itertools.pairwise(root)]
    round_s = statistics.median(intervals)
    cores = len(os.sched_getaffinity(0))
    capacity = cores * (last_t - first_t)  # core-seconds between the first and last round
    servers_cpu = last_srv - first_srv
    participants = n + federations + 1
    return {
        "clients": n,
        "federations": federations,
        "local_steps": local_steps,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "rounds": len(root),
        "wall_s": ended - started,
        "first_round_s": first_t - started,
        "round_s": round_s,
        "overhead": 1 - train_cpu / cores / len(intervals) / round_s,
        "cpu_overhead": 1 - train_cpu / process_cpu,
        "eval_share": eval_cpu / process_cpu,
        "capacity_train": train_cpu / capacity,
        "capacity_other": (process_cpu - train_cpu) / capacity,
        "capacity_servers": servers_cpu / capacity,
        "capacity_idle": 1 - (process_cpu + servers_cpu) / capacity,
        "train_cpu_per_round_s": train_cpu / len(intervals),
        "process_cpu_per_round_s": process_cpu / len(intervals),
        "cores": cores,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss,
        "rss_per_participant_mb": (peak_rss - rss_before) / participants,
        "rss_per_client_mb": (peak_rss - rss_before) / n,
        "kafka_connections": peak[kafka_port],
        "redis_connections": peak[redis_port],
        "members_expired": expired,
        "exit_s": ended - last_t,
    }


def one(n: int, federations: int, rounds: int, local_steps: int, seq_len: int, batch: int) -> None:
    """Measure one size in this process; print its row as JSON."""
    import torch

    from worldlm import logs

    logs.configure(level="warning")
    torch.set_num_threads(1)  # as `worldlm run` does
    row = asyncio.run(measure(n, federations, rounds, local_steps, seq_len, batch))
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8,32,100", help="numbers of clients, comma-separated")
    parser.add_argument("--federations", type=int, default=0, help="0: max(2, round(N / 10))")
    parser.add_argument("--rounds", type=int, default=4, help="root rounds")
    parser.add_argument("--trials", type=int, default=7, help="runs per size (medians)")
    parser.add_argument("--local-steps", type=int, default=1, help="local steps per round")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    def feds(n: int) -> int:
        return args.federations or max(2, round(n / 10))

    if args.one:
        one(args.one, feds(args.one), args.rounds, args.local_steps, args.seq_len, args.batch_size)
        return
    rows, medians = [], []
    print(" | ".join(["trial", *(label for label, _, _ in COLUMNS)]), flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        trials = []
        for trial in range(args.trials):
            command = [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds)]
            command += ["--federations", str(feds(n)), "--local-steps", str(args.local_steps)]
            command += ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{n} clients failed:\n{done.stderr[-4000:]}")
            trials.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"trial": trial})
            print(_row(trials[-1], str(trial)), flush=True)
        median = {k: statistics.median(t[k] for t in trials) for k in trials[0]}
        medians.append(median)
        rows += trials
    for median in medians:
        print(_row(median, "median"))
    if args.json is not None:
        args.json.write_text(json.dumps({"trials": rows, "medians": medians}, indent=1))


def _row(row: dict[str, Any], label: str) -> str:
    return " | ".join([label, *(fmt.format(type_(row[key])) for _, key, fmt, type_ in _typed())])


def _typed() -> list[tuple[str, str, str, type]]:
    return [(label, key, fmt, int if fmt == "{:d}" else float) for label, key, fmt in COLUMNS]


if __name__ == "__main__":
    main()
