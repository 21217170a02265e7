"""One config over several processes on the real embedded Kafka and Redis.

``worldlm run --workers 2`` runs every participant exactly once, over two children, each
round at its full quorum as in one process; SIGTERM to the parent ends it and its children
cleanly (status 143: stopped, not completed); a child that dies is named and the run fails.
``worldlm run --share i/N`` started by hand, N times, runs the whole config with nothing else
(what containers and hosts do).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from brokers.embedded import Servers
from schemas.codec import metrics_decoder
from schemas.messages import MetricsReport
from schemas.topics import Topics
from tests.worldlm.participants.helpers import (
    endpoints,
    log_events,
    participant_process,
    poll,
    raw_config,
    read_topic,
    settings,
)
from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.participants.node import prepare_run
from worldlm.participants.shares import partition
from worldlm.chaos.watch import RunWatch

CLIENTS = {
    "fr-0": ("a", "lang-fr"),
    "es-0": ("a", "lang-es"),
    "en-0": ("b", "lang-en"),
    "de-0": ("b", "lang-de"),
}
WORKER = re.compile(r"worker (\d+)/(\d+) \(pid (\d+)\)")


def two_level(run_id: str, tmp_path: Path, *, rounds: int) -> tuple[Hierarchy, Path]:
    """root -> a, b -> two clients each, as a config file."""
    raw = raw_config(
        run_id,
        federations={"root": {}, "a": {"parent": "root"}, "b": {"parent": "root"}},
        clients=CLIENTS,
        rounds=rounds,
        defaults={"internal_rounds": 1, "schedule": {"deadline_s": 60.0}},
    )
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(raw))
    return parse(raw), config


async def metrics(servers: Servers, h: Hierarchy) -> list[MetricsReport]:
    return await read_topic(
        settings(servers, h),
        Topics(h.run.id).metrics,
        metrics_decoder.decode,
        partitions=h.run.partitions,
    )


def worker_pids(log_file: Path) -> dict[str, int]:
    """The children the parent announced: share -> pid."""
    found = WORKER.findall(log_file.read_text())
    return {f"{i}/{n}": int(pid) for i, n, pid in found}


def gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def assert_every_participant_ran_once(reports: list[MetricsReport], h: Hierarchy) -> None:
    # An aggregator reports each round it closed, a client each model version it trained on:
    # once, unless the participant ran twice.
    seen = Counter(
        (r.node, r.round if r.role == "aggregator" else r.values["version"]) for r in reports
    )
    assert [key for key, n in seen.items() if n > 1] == []
    finals = Counter(r.node for r in reports if r.role == "client" and r.values.get("final"))
    assert finals == dict.fromkeys(h.clients, 1)
    root_rounds = sorted(r.round for r in reports if r.node == "root")
    assert root_rounds == list(range(h.run.rounds))


async def test_two_workers_run_every_participant_once_at_full_quorum(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h, config = two_level(run_id, tmp_path, rounds=2)
    shares = partition(h, 2)
    assert all(a.aggregators and a.clients for a in shares)  # both kinds spread
    args = ["run", str(config), "--workers", "2", "--kafka", servers.kafka]
    log = tmp_path / "parent.log"
    async with participant_process([*args, "--redis", servers.redis], log) as parent:
        async with asyncio.timeout(300):
            assert await parent.wait() == 0, log.read_text()[-3000:]

    text = log.read_text()
    pids = worker_pids(log)
    assert set(pids) == {"1/2", "2/2"} and all(gone(p) for p in pids.values())
    for a in shares:  # each child announced with its own participants
        assert f"worker {a.share} (pid {pids[str(a.share)]}): {a.describe()}" in text
    assert re.search(r"done in [\d.]+s on 2 workers", text)
    for client in h.clients:
        assert re.search(rf"{client} +final validation perplexity", text), client
    reports = await metrics(servers, h)
    assert_every_participant_ran_once(reports, h)
    # Released together, every member was live for every round, as in one process.
    expected = {"root": 2.0, "a": 2.0, "b": 2.0}
    for report in (r for r in reports if r.role == "aggregator"):
        assert report.values["members"] == report.values["arrived"] == expected[report.node]


async def test_sigterm_to_the_parent_stops_it_and_its_children_cleanly(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h, config = two_level(run_id, tmp_path, rounds=100)
    await prepare_run(h, endpoints(servers))  # the watch is assigned existing partitions
    args = ["run", str(config), "--workers", "2", "--log-level", "info"]
    args += ["--kafka", servers.kafka, "--redis", servers.redis]
    log = tmp_path / "parent.log"
    watch = RunWatch(settings(servers, h), run_id, h.run.partitions)
    async with watch, participant_process(args, log) as parent:
        async with asyncio.timeout(300):
            await watch.wait_for(lambda r: r.node == "root")
        pids = worker_pids(log)
        assert len(pids) == 2
        parent.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):  # generous: a clean stop takes a few seconds
            returncode = await parent.wait()
            await poll(_all_gone(pids.values()))
    assert returncode == 143, log.read_text()[-3000:]  # stopped by SIGTERM, not completed
    events = log_events(log)
    stopped = Counter(e["node"] for e in events if e["event"] == "client_stopped")
    assert stopped == dict.fromkeys(h.clients, 1)  # every client left its federation
    finals = [r for r in watch.reports if r.values.get("final")]
    assert finals == []  # stopped mid-run, not finished
    assert re.search(r"stopped after [\d.]+s on 2 workers", log.read_text())


async def test_a_child_that_dies_is_named_and_the_run_stops_with_an_error(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h, config = two_level(run_id, tmp_path, rounds=100)
    await prepare_run(h, endpoints(servers))
    args = ["run", str(config), "--workers", "2", "--kafka", servers.kafka]
    log = tmp_path / "parent.log"
    watch = RunWatch(settings(servers, h), run_id, h.run.partitions)
    async with watch, participant_process([*args, "--redis", servers.redis], log) as parent:
        async with asyncio.timeout(300):
            await watch.wait_for(lambda r: r.node == "root")
        pids = worker_pids(log)
        os.kill(pids["2/2"], signal.SIGKILL)
        async with asyncio.timeout(30):
            returncode = await parent.wait()
            await poll(_all_gone(pids.values()))
    assert returncode == 1
    text = log.read_text()
    dead = partition(h, 2)[1]
    named = f"worker 2/2 (pid {pids['2/2']}; {dead.describe()}) was killed by SIGKILL"
    assert f"{named}; stopping the other workers" in text
    assert re.search(r"failed after [\d.]+s on 2 workers: " + re.escape(named), text)


async def test_shares_started_by_hand_run_the_whole_config(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h, config = two_level(run_id, tmp_path, rounds=2)
    base = ["run", str(config), "--kafka", servers.kafka, "--redis", servers.redis]
    base += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    async with (
        participant_process([*base, "--share", "1/2"], tmp_path / "1.log") as first,
        participant_process([*base, "--share", "2/2"], tmp_path / "2.log") as second,
    ):
        async with asyncio.timeout(300):
            codes = await asyncio.gather(first.wait(), second.wait())
    assert codes == [0, 0], [(tmp_path / f"{i}.log").read_text()[-2000:] for i in (1, 2)]
    for i, a in enumerate(partition(h, 2), start=1):
        assert f"share {i}/2 ({a.describe()}): done in" in (tmp_path / f"{i}.log").read_text()
    assert_every_participant_ran_once(await metrics(servers, h), h)


def _all_gone(pids: Iterable[int]) -> Callable[[], Awaitable[bool]]:
    wanted = list(pids)

    async def check() -> bool:
        return all(gone(p) for p in wanted)

    return check


# ---- the command line, without servers ---------------------------------------------------------

runner = CliRunner()
WIDE = {"TERMINAL_WIDTH": "1000", "COLUMNS": "1000"}  # click's error box on one line


def test_run_help_offers_workers_and_share_but_not_the_internal_worker_flag() -> None:
    result = runner.invoke(app, ["run", "--help"], env=WIDE)
    assert result.exit_code == 0
    assert "--workers" in result.output and "--share" in result.output
    assert "--worker " not in result.output


def test_a_share_needs_given_servers_and_a_valid_i_of_n(tmp_path: Path) -> None:
    config = str(tmp_path / "any.toml")  # never read: the options are refused first
    cases = {
        ("--share", "1/2"): "give --kafka and --redis",
        ("--share", "3/2"): "need 1 <= i <= N",
        ("--share", "one"): "expected i/N",
        ("--share", "1/2", "--workers", "2"): "not with --workers",
    }
    for extra, message in cases.items():
        result = runner.invoke(app, ["run", config, *extra], env=WIDE)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
