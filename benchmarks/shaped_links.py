"""Shaped-link validation: the clock's predicted round time against live runs on links the
kernel shapes.

Every participant is its own process (``worldlm aggregator`` / ``worldlm client`` with
``--kafka``/``--redis``) in its own Linux network namespace. A hub namespace holds the
embedded broker and Redis (``worldlm infra up``) and the root's aggregator; each client's
namespace is joined to the hub by a veth pair with a token-bucket qdisc (``tbf``) on each end,
so the client's updates (up) and the broadcasts it fetches (down) cross a link of the
profile's rate, shaped by the kernel, not by our code. The tree is flat (a root and its
clients) so each client's veth is exactly its edge in the link model.

For every profile the same config runs live: the round time is the median interval between
the root's closes after its first round (``round_closed`` in its JSON log). The loopback run
(no qdisc) measures what the clock does not model here: training, evaluation and our own
overhead. The prediction for a shaped profile is

    predicted = measured loopback round + the simulator's round on the profile's [links]

(the simulator runs the same config with the profile as ``[links]`` and no ``[clock]``, so its
round is the link model's transfer time alone: the slowest client's broadcast down and update
up). The error is (predicted - measured) / measured; it is also given for the time the links
add (measured - loopback).

Latency comes from a delaying TCP proxy (``benchmarks/delay_proxy.py``; ``netem`` does not
work on these machines) in front of the broker in the hub: the broker listens on the hub's
loopback and advertises the proxy's address, so every Kafka byte a client sends or fetches is
delayed by the profile's one-way latency each way (the root's aggregator, beside the broker,
is not delayed). Redis is not delayed (heartbeats and pointers, off the round's path).

Needs root and ``ip netns``; prints why and exits 0 elsewhere. Every namespace (and with it
every veth and qdisc) is removed on exit, error or Ctrl-C.

    sudo python benchmarks/shaped_links.py [--profiles 50,20,10,10/100,20@50,100@100]
        [--rounds 4] [--json out.json]

A profile is ``RATE`` (Mbit/s, every client), ``RATE0/RATE1`` (per client), optionally
``@LATENCY`` (one-way ms).
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

ROOT = Path(__file__).resolve().parent.parent
HUB_IP = "10.22.0.1"
KAFKA_PORT, REDIS_PORT, BROKER_PORT = 19092, 16379, 29092
CLIENTS = {"c0": "lang-en", "c1": "lang-de"}


def config_toml(
    run_id: str, rounds: int, links: dict[str, float] | None, latency_ms: float = 0.0
) -> str:
    """The flat tree (root, two clients), tiny and short; ``links``: client -> Mbit/s."""
    lines = [
        "[run]",
        f'id = "{run_id}"',
        'model = "tiny"',
        f"rounds = {rounds}",
        "seq_len = 32",
        "batch_size = 4",
        "eval_batches = 1",
        "heartbeat_s = 1.0",
        "[defaults]",
        "local_steps = 2",
        "[defaults.schedule]",
        "deadline_s = 300.0",
        "[federations.root]",
    ]
    for cid, partition in CLIENTS.items():
        lines += [f"[clients.{cid}]", 'federation = "root"', f'partition = "{partition}"']
    for cid, mbit in (links or {}).items():
        lines += [f"[links.{cid}]", f"bandwidth_mbit = {mbit}", f"latency_ms = {latency_ms}"]
    return "\n".join(lines) + "\n"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Network:
    """A hub namespace and one namespace per client, joined by veth pairs."""

    def __init__(self, clients: list[str]) -> None:
        tag = os.getpid() % 100000
        self.hub = f"wl22h{tag}"
        self.ns = {c: f"wl22{c}{tag}" for c in clients}
        self.dev = {c: (f"h{i}p{tag}", f"c{i}p{tag}") for i, c in enumerate(clients, 1)}
        self.ips = {c: f"10.22.{i}.2" for i, c in enumerate(clients, 1)}

    def up(self) -> None:
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "addr", "add", f"{HUB_IP}/32", "dev", "lo")
        for i, (c, ns) in enumerate(self.ns.items(), 1):
            hub_dev, dev = self.dev[c]
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", hub_dev, "netns", self.hub, "type", "veth",
               "peer", "name", dev, "netns", ns)  # fmt: skip
            sh("ip", "-n", self.hub, "addr", "add", f"10.22.{i}.1/24", "dev", hub_dev)
            sh("ip", "-n", ns, "addr", "add", f"10.22.{i}.2/24", "dev", dev)
            sh("ip", "-n", self.hub, "link", "set", hub_dev, "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"10.22.{i}.1")

    def shape(self, rates: dict[str, float] | None) -> None:
        """A tbf qdisc of each client's rate on both ends of its veth (None: none)."""
        for c, ns in self.ns.items():
            hub_dev, dev = self.dev[c]
            for where, name in ((self.hub, hub_dev), (ns, dev)):
                sh("ip", "netns", "exec", where, "tc", "qdisc", "del", "dev", name, "root",
                   check=False)  # fmt: skip
                if rates is None:
                    continue
                mbit = rates[c]
                burst = max(64 * 1024, int(mbit * 1e6 / 8 / 100))  # >= a GSO segment, 10 ms
                tbf = ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "100ms"]
                sh("ip", "netns", "exec", where, "tc", "qdisc", "add", "dev", name, "root", *tbf)

    def down(self) -> None:
        for ns in [*self.ns.values(), self.hub]:
            sh("ip", "netns", "del", ns, check=False)


def spawn(ns: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``worldlm ARGS`` (or any command, when ``args`` starts with a path) in ``ns``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = args if args[0].startswith("/") else [sys.executable, "-m", "worldlm", *args]
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def servers(net: Network, work: Path) -> Iterator[None]:
    """Tansu on the hub's loopback, advertising the proxy's address; Redis on the hub's."""
    from brokers.embedded import redis_server_binary, tansu_binary

    broker = spawn(net.hub, [tansu_binary(), "broker", "--listener-url",
                             f"tcp://127.0.0.1:{BROKER_PORT}", "--advertised-listener-url",
                             f"tcp://{HUB_IP}:{KAFKA_PORT}", "--storage-engine",
                             "memory://tansu/"], work / "broker.log")  # fmt: skip
    redis = spawn(net.hub, [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", HUB_IP,
                            "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                  work / "redis.log")  # fmt: skip
    try:
        for port in (BROKER_PORT, REDIS_PORT):
            host = "127.0.0.1" if port == BROKER_PORT else HUB_IP
            deadline = time.monotonic() + 30
            probe = ["ip", "netns", "exec", net.hub, "bash", "-c", f"echo >/dev/tcp/{host}/{port}"]
            while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing listens on {host}:{port} in the hub")
                time.sleep(0.2)
        yield
    finally:
        stop(broker)
        stop(redis)


@contextlib.contextmanager
def delayed(net: Network, work: Path, latency_ms: float) -> Iterator[None]:
    """The delaying proxy in front of the broker for one profile."""
    log = work / f"proxy-{latency_ms:g}.log"
    proxy = spawn(net.hub, [sys.executable, str(ROOT / "benchmarks" / "delay_proxy.py"),
                            "--listen", f"{HUB_IP}:{KAFKA_PORT}", "--to",
                            f"127.0.0.1:{BROKER_PORT}", "--delay-ms", str(latency_ms),
                            "--local", HUB_IP], log)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "delaying" not in log.read_text(errors="replace"):
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield
    finally:
        stop(proxy)


def closes(log: Path) -> list[float]:
    """The root's round closes (seconds since the epoch), from its JSON log."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if '"round_closed"' in line:
            with contextlib.suppress(ValueError, KeyError):
                stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
                times.append(datetime.fromisoformat(stamp).timestamp())
    return times


def live_round_s(net: Network, work: Path, name: str, rounds: int) -> list[float]:
    """One live run of the flat tree; the intervals between the root's closes after its first."""
    run_id = f"shaped-{name.replace('/', '-').replace('@', '-')}-{os.getpid()}"
    config = work / f"{run_id}.toml"
    config.write_text(config_toml(run_id, rounds, None))
    endpoints = ["--kafka", f"{HUB_IP}:{KAFKA_PORT}", "--redis", f"redis://{HUB_IP}:{REDIS_PORT}/0"]
    common = ["--config", str(config), *endpoints, "--log-level", "info"]
    agg_log = work / f"{run_id}.root.log"
    procs = [spawn(net.hub, ["aggregator", *common, "--node", "root", "--checkpoint-dir",
                             str(work / run_id)], agg_log)]  # fmt: skip
    procs += [
        spawn(ns, ["client", *common, "--node", c], work / f"{run_id}.{c}.log")
        for c, ns in net.ns.items()
    ]
    try:
        procs[0].wait(timeout=600)
        for p in procs[1:]:
            p.wait(timeout=60)
    finally:
        for p in procs:
            stop(p)
    times = closes(agg_log)
    if len(times) < rounds:
        raise RuntimeError(f"{name}: {len(times)} closes of {rounds}; see {agg_log}")
    return [b - a for a, b in itertools.pairwise(times)]


def predicted_transfer_s(rates: dict[str, float], latency_ms: float, rounds: int) -> float:
    """The simulator's round on the profile's links with no declared compute."""
    sys.path.insert(0, str(ROOT))
    import tomllib

    from worldlm.config.hierarchy import parse
    from worldlm.lab.simulator import simulate
    from worldlm.lab.timeline import timeline

    h = parse(tomllib.loads(config_toml("predict", rounds, rates, latency_ms)))
    result, _ = simulate(h, workers=1)
    return statistics.median(timeline(h, result.reports).round_s["root"][1:])


def profile(spec: str) -> tuple[dict[str, float], float]:
    """``"20"``: every client at 20 Mbit/s; ``"10/100"``: c0 at 10, c1 at 100; ``"20@50"``:
    and 50 ms one way. Returns (client -> Mbit/s, latency in ms)."""
    rates, _, latency = spec.partition("@")
    parts = [float(x) for x in rates.split("/")]
    return {c: parts[min(i, len(parts) - 1)] for i, c in enumerate(CLIENTS)}, float(latency or 0)


def can_shape() -> str | None:
    """Why this machine cannot run the benchmark (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and qdiscs)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"wl22probe{os.getpid()}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "ip netns does not work here"
    sh("ip", "netns", "del", probe, check=False)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="50,20,10,10/100,20@50,100@100")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if (why := can_shape()) is not None:
        print(f"skipped: {why}")
        return 0
    net = Network(list(CLIENTS))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shaped-") as tmp:
        work = Path(tmp)
        try:
            net.up()
            with servers(net, work):
                net.shape(None)
                with delayed(net, work, 0.0):
                    base = statistics.median(live_round_s(net, work, "loopback", args.rounds))
                print(f"loopback: measured round {base:.2f}s")
                for spec in args.profiles.split(","):
                    rates, latency_ms = profile(spec)
                    net.shape(rates)
                    with delayed(net, work, latency_ms):
                        rounds = live_round_s(net, work, spec, args.rounds)
                    measured = statistics.median(rounds)
                    transfer = predicted_transfer_s(rates, latency_ms, args.rounds)
                    predicted = base + transfer
                    row = {
                        "profile": spec,
                        "rounds_s": [round(x, 3) for x in rounds],
                        "measured_s": round(measured, 3),
                        "loopback_s": round(base, 3),
                        "link_model_transfer_s": round(transfer, 3),
                        "predicted_s": round(predicted, 3),
                        "error": round((predicted - measured) / measured, 4),
                        "added_error": round(transfer / (measured - base) - 1, 4)
                        if measured > base
                        else None,
                    }
                    rows.append(row)
                    print(json.dumps(row))
        finally:
            net.down()
    if rows:
        worst = max(abs(r["error"]) for r in rows)
        print(f"worst round-time error {worst:.1%} over {len(rows)} profiles")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json is not None:
        data = {"loopback_s": base, "profiles": rows, "loadavg": load}
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
