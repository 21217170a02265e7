"""The campaign's judges and its table, on plain observations (no servers): each scenario
passes only at its targets, a hang is a failed trial with its stage, and the table says
which targets were missed and why."""

from __future__ import annotations

import asyncio

from worldlm.chaos import bad_input, churn, kill, restarts
from worldlm.chaos.garbage import Item, Record
from worldlm.chaos.trials import bounded_trial
from worldlm.chaos.verdict import Campaign, ScenarioResult, Trial
from worldlm.watch import RoundTimes


def kill_observation(**changes: object) -> kill.KillObservation:
    values: dict[str, object] = {
        "target": "root",
        "killed_round": 1,
        "killed_after_s": 0.4,
        "completed": True,
        "exits": {"root": 0},
        "client_errors": {},
        "rounds_reported": 3,
        "repeated_reports": 0,
        "lost": 0,
        "folded_twice": 0,
        "unread": 0,
        "reproduced": True,
    }
    return kill.KillObservation(**(values | changes))  # type: ignore[arg-type]


def test_a_kill_trial_passes_only_with_nothing_repeated_lost_or_counted_twice() -> None:
    assert kill.judge(0, kill_observation()).ok
    changes: list[tuple[dict[str, object], str]] = [
        ({"completed": False}, "did not complete"),
        ({"repeated_reports": 1}, "reported more than once"),
        ({"lost": 2}, "2 update(s) lost"),
        ({"folded_twice": 1}, "folded twice"),
        ({"reproduced": False}, "replay does not reproduce"),
    ]
    for change, words in changes:
        trial = kill.judge(0, kill_observation(**change))
        assert not trial.ok and words in trial.reason


def test_kill_rows_hold_the_issue_targets() -> None:
    trials = [kill.judge(i, kill_observation()) for i in range(3)]
    trials.append(kill.judge(3, kill_observation(lost=1)))
    rows = {r.measure: r for r in kill.summarize(trials)}
    assert rows["runs completed"].result == "4/4" and rows["runs completed"].met
    assert rows["updates lost"].result == "1" and rows["updates lost"].met is False
    assert rows["updates counted twice"].met and rows["rounds reported more than once"].met


def test_a_round_closed_at_its_deadline_or_later_waited_past_it() -> None:
    assert not churn.past_deadline(RoundTimes(0.0, 5.0, "quorum"), 30.0)
    assert churn.past_deadline(RoundTimes(0.0, 30.1, "deadline"), 30.0)
    assert churn.past_deadline(RoundTimes(0.0, 30.1, "empty"), 30.0)  # nothing came at all
    assert churn.past_deadline(RoundTimes(0.0, 31.0, "quorum"), 30.0)
    times = [RoundTimes(0.0, 2.0, "quorum"), RoundTimes(2.0, 33.0, "deadline")]
    trial = churn.judge(0, churn.ChurnObservation(3, times, 30.0, 6, {"root": 0}))
    assert not trial.ok
    assert "1 round(s) never closed" in trial.reason and "1 round(s) waited" in trial.reason
    rows = {r.measure: r for r in churn.summarize([trial], 10, 3, 3)}
    assert rows["rounds closed"].result == "2/3" and not rows["rounds closed"].met


def test_a_restart_ends_completed_with_a_clear_error_or_unclear() -> None:
    assert restarts.ending(0, "") == "completed"
    clear = '{"event": "x"}\nworldlm: Redis at redis://x is unreachable: gone\n'
    assert restarts.ending(1, clear) == "clear_error"
    assert restarts.ending(1, clear + "Traceback (most recent call last):\n") == "unclear"
    assert restarts.ending(-9, "") == "unclear"
    observation = restarts.RestartObservation(
        {"root": "clear_error", "en-0": "completed"}, {"root": 1, "en-0": 0}, 3.0, {}
    )
    trial = restarts.judge("redis_restart", 0, observation)
    assert trial.ok and trial.figures["outcome"] == "clear_error"


def record() -> Record:
    return Record("up", 0, "root", b"x")


def test_every_bad_input_read_must_be_dead_lettered_and_none_admitted() -> None:
    items = [
        Item("random_bytes", "aggregator", (record(),)),
        Item("unknown_sender", "aggregator", (record(), record()), "u1"),
        Item("other_run", "aggregator", (record(), record()), "u2"),
        Item("other_key", "nobody", (record(),)),
    ]
    offsets = {0: [("up", 0, 0)], 1: [("up", 0, 1), ("up", 0, 2)], 2: [("up", 0, 3), ("up", 0, 4)]}
    offsets[3] = [("up", 0, 5)]
    fates = bad_input.fates(items, offsets, {("up", 0, 0), ("up", 0, 1)}, admitted_ids={"u2"})
    assert [(f.dead_lettered, f.admitted) for f in fates] == [
        (True, False),
        (True, False),
        (False, True),
        (False, False),
    ]
    trial = bad_input.judge(0, fates, {"root": 0, "en-0": 0}, (4, 4))
    assert not trial.ok
    assert "1 bad input(s) read but not dead-lettered" in trial.reason
    assert "1 forged update(s) admitted" in trial.reason
    assert trial.figures["nobody_records"] == 1 and trial.figures["records_sent"] == 6
    clean = bad_input.judge(0, fates[:2] + fates[3:], {"root": 0}, (4, 4), counted=(2, 2))
    assert clean.ok
    uncounted = bad_input.judge(0, fates[:2], {"root": 0}, (4, 4), counted=(1, 2))
    assert not uncounted.ok and "ledgers count 1 of its 2 letters" in uncounted.reason


async def test_a_trial_that_hangs_is_a_failed_trial_naming_where_it_hung() -> None:
    async def body(stage: object) -> Trial:
        assert callable(stage)
        stage("waiting for round 2 to close")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    trial = await bounded_trial("aggregator_kill", 7, 0.2, body)
    assert not trial.ok and trial.index == 7
    assert trial.reason.startswith("hang: no verdict within 0 s (at: waiting for round 2 to close)")

    async def broken(stage: object) -> Trial:
        raise RuntimeError("no broker")

    failed = await bounded_trial("bad_input", 0, 5.0, broken)
    assert not failed.ok and "RuntimeError('no broker')" in failed.reason


def test_the_table_names_each_missed_target_and_the_failed_trials() -> None:
    good = kill.judge(0, kill_observation())
    bad = kill.judge(1, kill_observation(lost=1))
    result = ScenarioResult("aggregator_kill", [good, bad], kill.summarize([good, bad]))
    campaign = Campaign([result], command="worldlm chaos", date="2026-12-02", commit="abc")
    text = campaign.render()
    assert "updates lost" in text and "NO" in text
    assert "aggregator_kill trial 1: 1 update(s) lost" in text
    assert text.endswith("TARGETS MISSED") and not campaign.ok
    assert campaign.markdown().startswith("| scenario | measure | result | target | met |")
    data = campaign.as_dict()
    assert data["ok"] is False and data["scenarios"][0]["trials"][1]["figures"]["lost"] == 1
