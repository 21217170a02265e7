"""A run can always be stopped: SIGTERM ends `worldlm run` within seconds at any phase, server
start-up included, and its embedded broker and redis-server never outlive it; a run whose
Redis, or whose broker in memory, dies ends in seconds with one clear error. The exit status
tells a stopped run from a completed one: 143 after SIGTERM, 130 after SIGINT (0 only at the
end, 1 for a failure)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest
import tomli_w

from brokers.embedded import EmbeddedRedis, Servers
from tests.worldlm.participants.helpers import (
    WORLDLM,
    flat_raw,
    log_events,
    participant_process,
    poll,
)

#: The status of a command a signal stopped: 128 + the signal, as a shell reports it.
STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}


def logged(log: Path, event: str) -> bool:
    return any(e["event"] == event for e in log_events(log))


def children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc; Linux)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        ("server_start", signal.SIGTERM),
        ("training", signal.SIGTERM),
        ("training", signal.SIGINT),
    ],
    ids=["server_start-SIGTERM", "training-SIGTERM", "training-SIGINT"],
)
async def test_a_signal_ends_a_run_in_seconds_with_its_status_and_leaves_no_server_behind(
    tmp_path: Path, run_id: str, phase: str, sig: signal.Signals
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(flat_raw(run_id, rounds=50, local_steps=5)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "run.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        WORLDLM, "run", str(config), "--log-level", "info", stdout=log, stderr=log, env=env
    )
    try:
        servers: set[int] = set()
        async with asyncio.timeout(60):
            # start-up: the first server child exists; training: both are up and a while later
            wanted = 1 if phase == "server_start" else 2
            while len(servers) < wanted:
                servers = children(proc.pid)
                await asyncio.sleep(0.02)
        if phase == "training":  # a client has trained and published an update

            async def trained() -> bool:
                return logged(log_path, "client_round")

            async with asyncio.timeout(120):
                await poll(trained)
        proc.send_signal(sig)
        async with asyncio.timeout(30):  # grace 10 s, then cancelled; servers stop in <= 5 s
            code = await proc.wait()
        text = log_path.read_text()
        assert f"stopping ({sig.name})" in text
        assert code == STATUS[sig], text[-3000:]  # stopped, not completed
        if phase == "training":
            assert re.search(r"stopped after [\d.]+s\b", text)

        async def all_gone() -> bool:
            return not any(alive(pid) for pid in servers)

        async with asyncio.timeout(10):
            await poll(all_gone)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def test_a_run_whose_redis_dies_ends_in_seconds_with_one_clear_error(
    servers: Servers, tmp_path: Path, run_id: str
) -> None:
    redis = EmbeddedRedis()
    await redis.start()
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(flat_raw(run_id, rounds=50, local_steps=3)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            WORLDLM,
            "run",
            str(config),
            "--kafka",
            servers.kafka,
            "--redis",
            redis.url,
            "--log-level",
            "info",
            stdout=out,
            stderr=out,
            env=env,
        )
    try:

        async def trained() -> bool:  # mid-run: a client has trained and published an update
            return logged(log, "client_round")

        async with asyncio.timeout(120):
            await poll(trained)
        await redis.stop()
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == 1
        lines = [line for line in log.read_text().splitlines() if not line.startswith("{")]
        assert any(
            line.startswith(f"worldlm: Redis at {redis.url} is unreachable") for line in lines
        )
        assert not any("Traceback" in line for line in lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_a_run_whose_memory_broker_dies_ends_in_seconds_with_one_line_not_a_flood(
    tmp_path: Path, run_id: str
) -> None:
    """`worldlm run` on its embedded broker in memory, the broker SIGKILLed once the root has
    closed a round: the run cannot go on (the log is gone), so it exits 1 with one line naming
    the broker, the round and --durable, within seconds (60 s here, a slow machine), and what
    it writes meanwhile stays a few lines (it was a hang, or 12 625 lines of aiokafka errors)."""
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(flat_raw(run_id, rounds=50, local_steps=3)))
    log_path = tmp_path / "run.log"
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        WORLDLM, "run", str(config), "--log-level", "info", stdout=log, stderr=log,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    try:

        async def root_closed() -> bool:
            return any(
                e["event"] == "round_closed" and e.get("node") == "root"
                for e in log_events(log_path)
            )

        async with asyncio.timeout(180):
            await poll(root_closed)
        (broker,) = [pid for pid in children(proc.pid) if "tansu" in cmdline(pid)]
        bootstrap = re.search(r"embedded kafka ([\d.]+:\d+)", log_path.read_text())
        assert bootstrap is not None
        before = log_path.stat().st_size
        os.kill(broker, signal.SIGKILL)
        async with asyncio.timeout(60):
            code = await proc.wait()
        after = log_path.read_bytes()[before:].decode(errors="replace").split("\n")
        text = log_path.read_text()
        assert code == 1, text[-3000:]
        prefix = f"worldlm: Kafka at {bootstrap[1]} unreachable (lost at round "
        (line,) = [line for line in after if line.startswith(prefix)]
        assert line.endswith("; the memory broker keeps no log: rerun, or use --durable"), line
        assert line[len(prefix) :].split(")")[0].isdigit()  # the round the run had reached
        assert len(after) < 50, "\n".join(after)
        assert "Traceback" not in text
        assert [e["reason"] for e in log_events(log_path) if e["event"] == "kafka_gone"] == [
            "unreachable"
        ]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


@pytest.mark.parametrize("role", ["client", "aggregator"])
async def test_one_participant_whose_redis_is_gone_ends_with_one_clear_error(
    servers: Servers, tmp_path: Path, run_id: str, role: str
) -> None:
    """`worldlm client` / `worldlm aggregator` against a live broker and a Redis that is gone
    (stopped before it starts): exit 1 with one `unreachable` line, no traceback."""
    redis = EmbeddedRedis()
    await redis.start()
    url = redis.url
    await redis.stop()
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(flat_raw(run_id)))
    node = "en-0" if role == "client" else "root"
    log = tmp_path / f"{role}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            WORLDLM,
            role,
            "--config",
            str(config),
            "--node",
            node,
            "--kafka",
            servers.kafka,
            "--redis",
            url,
            "--checkpoint-dir" if role == "aggregator" else "--log-level",
            str(tmp_path / "ckpt") if role == "aggregator" else "info",
            stdout=out,
            stderr=out,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        async with asyncio.timeout(90):
            code = await proc.wait()
        assert code == 1
        lines = [line for line in log.read_text().splitlines() if not line.startswith("{")]
        assert any(line.startswith(f"worldlm: Redis at {url} is unreachable") for line in lines)
        assert not any("Traceback" in line for line in lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_participant_a_signal_stops_exits_with_its_status(
    servers: Servers, tmp_path: Path, run_id: str
) -> None:
    """`worldlm aggregator` and `worldlm client` stopped mid-run (once the client has trained):
    143 after SIGTERM, 130 after SIGINT, each after its clean stop."""
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(flat_raw(run_id, rounds=50, local_steps=2)))
    common = ["--config", str(config), "--kafka", servers.kafka, "--redis", servers.redis]
    aggregator_log, client_log = tmp_path / "aggregator.log", tmp_path / "client.log"
    async with (
        participant_process(
            ["aggregator", "--node", "root", "--checkpoint-dir", str(tmp_path / "ckpt"), *common],
            aggregator_log,
        ) as aggregator,
        participant_process(["client", "--node", "en-0", *common], client_log) as client,
    ):

        async def trained() -> bool:
            return logged(client_log, "client_round")

        async with asyncio.timeout(120):
            await poll(trained)
        client.send_signal(signal.SIGINT)
        aggregator.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            codes = await asyncio.gather(client.wait(), aggregator.wait())
    assert codes == [130, 143], (client_log.read_text()[-2000:], aggregator_log.read_text()[-2000:])
    assert logged(client_log, "client_stopped") and logged(aggregator_log, "aggregator_stopped")
