"""The simulator keeps the clock's time: a round takes the broadcast down, the clients' work
and their updates up (the slowest client), and the close; the same config gives the same
times; without links every time is 0."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.worldlm.participants.helpers import flat_raw
from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.lab.clock import Clock
from worldlm.lab.simulator import simulate
from worldlm.lab.timeline import timeline

CLOCK = {"step_s": 0.1, "eval_s": 0.2, "aggregate_s": 0.05}
LINKS = {"en-0": {"bandwidth_mbit": 10, "latency_ms": 20}, "de-0": {"bandwidth_mbit": 100}}


def flat_on_links(run_id: str, **more: Any) -> Hierarchy:
    raw = flat_raw(run_id, rounds=2, local_steps=2)
    raw["run"] |= {"eval_batches": 1, "batch_size": 4, "seq_len": 32}
    return parse({**raw, "links": LINKS, "clock": CLOCK, **more})


def test_a_round_takes_the_slowest_clients_transfers_and_work_then_the_close(
    run_id: str,
) -> None:
    h = flat_on_links(run_id)
    result, sim = simulate(h)
    clock = Clock(h.links, h.run.chunk_kib * 1024)
    down, up = sim.message_bytes["root", "broadcast"], sim.message_bytes["en-0", "update"]
    work = clock.work_s("en-0", steps=2, evaluated=True)
    per_client = {c: clock.down_s(c, down) + work + clock.up_s(c, up) for c in ("en-0", "de-0")}
    assert per_client["en-0"] > per_client["de-0"]  # the 10 Mbit/s client is the slow one
    t = timeline(h, result.reports)
    expected = max(per_client.values()) + 0.05
    assert t.round_s["root"] == pytest.approx([expected, expected])
    # clients are stamped with when the model they evaluated reached them
    firsts = {r.node: r.values["sim_s"] for r in result.reports if r.role == "client"}
    assert firsts["en-0"] == pytest.approx(2 * expected + clock.down_s("en-0", down))
    assert t.end_s == pytest.approx(firsts["en-0"])


def test_the_same_config_gives_the_same_simulated_times(run_id: str) -> None:
    h = flat_on_links(run_id)
    first, _ = simulate(h)
    second, _ = simulate(h)
    times = [[r.values.get("sim_s") for r in res.reports] for res in (first, second)]
    assert times[0] == times[1]
    assert timeline(h, first.reports, 1e9).as_dict() == timeline(h, second.reports, 1e9).as_dict()


def test_without_links_or_clock_every_time_is_zero(run_id: str) -> None:
    raw = flat_raw(run_id, rounds=1, local_steps=1)
    raw["run"] |= {"eval_batches": 1, "batch_size": 4, "seq_len": 32}
    result, _ = simulate(parse(raw))
    assert {r.values["sim_s"] for r in result.reports} == {0.0}


def test_time_to_target_is_when_the_mean_of_the_latest_figures_first_reaches_it(
    run_id: str,
) -> None:
    h = flat_on_links(run_id)
    result, _ = simulate(h)
    curve = timeline(h, result.reports).curve["root"]
    target = min(v for _, v in curve)  # reached exactly once the best figure is in
    t = timeline(h, result.reports, target)
    assert t.reached_s["root"] == next(at for at, v in curve if v == target)
    assert timeline(h, result.reports, target / 2).reached_s["root"] is None


SMALL = """
[run]
id = "clock-cli"
rounds = 1
seq_len = 32
batch_size = 4
eval_batches = 1
[defaults]
local_steps = 1
[federations.root]
[clients.en-0]
federation = "root"
partition = "lang-en"
[links.en-0]
bandwidth_mbit = 10
latency_ms = 20
[clock]
step_s = 0.1
"""


def test_worldlm_simulate_prints_the_simulated_rounds_and_the_time_to_target(
    tmp_path: Path,
) -> None:
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    got = CliRunner().invoke(
        app, ["simulate", str(config), "--target", "1e9", "--out", str(tmp_path / "out")]
    )
    assert got.exit_code == 0, got.output
    # the first evaluation is of the first broadcast, once it crossed the 10 Mbit/s link
    assert re.search(r"root  simulated round s: [\d.]+; target 1e\+09 at [1-9][\d.]*s", got.output)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["simulated"]["round_s"]["root"][0] > 0.1  # the link and one step
