"""The campaign's judges and its table, on plain observations (no servers): each scenario
passes only at its targets, a hang is a failed trial with its stage, and the table says
which targets were missed and why."""

from __future__ import annotations

import asyncio

from worldlm.chaos import bad_input, broker_loss, churn, kill, restarts, revocation, silent
from worldlm.chaos.garbage import Item, Record
from worldlm.chaos.probes import two_federations
from worldlm.chaos.trials import bounded_trial
from worldlm.chaos.verdict import Campaign, ScenarioResult, Trial
from worldlm.chaos.watch import RoundTimes


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


def silent_observation(**changes: object) -> silent.SilentObservation:
    empty = RoundTimes(10.0, 14.1, "empty")
    values: dict[str, object] = {
        "silent": "west",
        "killed": ("de-0", "fr-0"),
        "silent_rounds": [empty, empty],
        "root_rounds": [RoundTimes(0.0, 3.0, "quorum"), *[RoundTimes(3.0, 11.0, "deadline")] * 2],
        "rounds": 3,
        "rounds_empty": 2,
        "submissions_skipped": 2,
        "exits": {"root": 0, "west": 0, "east": 0, "en-0": 0},
        "lost": 0,
    }
    return silent.SilentObservation(**(values | changes))  # type: ignore[arg-type]


def test_a_silent_federation_passes_only_closing_every_round_by_its_deadline() -> None:
    trial = silent.judge(0, silent_observation())
    assert trial.ok and trial.figures["closed_empty"] == 2
    assert trial.figures["root_rounds_without"] == 2
    changes: list[tuple[dict[str, object], str]] = [
        ({"silent_rounds": [RoundTimes(10.0, None)]}, "closed by ['never']"),
        ({"silent_rounds": []}, "opened no round"),
        ({"root_rounds": [RoundTimes(0.0, 3.0, "quorum")]}, "root closed 1/3"),
        ({"exits": {"root": 0, "west": 1}}, "did not complete"),
        ({"lost": 1}, "1 update(s) lost"),
    ]
    for change, words in changes:
        failed = silent.judge(0, silent_observation(**change))
        assert not failed.ok and words in failed.reason, failed.reason
    rows = {r.measure: r for r in silent.summarize([trial, failed])}
    assert rows["runs completed"].result == "2/2" and rows["updates lost"].met is False
    assert rows["of them closed empty"].result.startswith("4 (rounds_empty 4")


def test_loss_of_the_broker_ends_clearly_only_with_exit_1_and_the_line_naming_it() -> None:
    line = "worldlm: Kafka at 127.0.0.1:9 unreachable (lost at round 1); the memory broker ..."
    assert broker_loss.ending(1, ["embedded kafka 127.0.0.1:9", line], "127.0.0.1:9") == (
        "clear_error"
    )
    assert broker_loss.ending(1, [line, "Traceback (most recent call last):"], "127.0.0.1:9") == (
        "unclear"
    )
    assert broker_loss.ending(1, [line], "127.0.0.1:8") == "unclear"  # another broker
    assert broker_loss.ending(130, [line], "127.0.0.1:9") == "unclear"
    assert broker_loss.ending(0, [], "127.0.0.1:9") == "completed"

    def observed(kind: broker_loss.Kind, end_s: float) -> broker_loss.LossObservation:
        return broker_loss.LossObservation(
            kind, {"run": "clear_error"}, {"run": end_s}, {"run": 9}, {"run": "exit 1: ..."}
        )

    fast, slow = (
        broker_loss.judge(0, observed("run", 5.0)),
        broker_loss.judge(1, observed("run", 40)),
    )
    assert fast.ok and not slow.ok and "bound 30 s" in slow.reason
    waited = broker_loss.judge(2, observed("participants", 126.0))
    assert waited.ok  # a --kafka broker is waited for: WAIT_S
    rows = {r.measure: r for r in broker_loss.summarize([fast, slow, waited])}
    assert rows["processes ended with the clear error"].result == "3/3"
    assert rows["slowest end after the kill, one `worldlm run`"].met is False
    assert rows["slowest end after the kill, `--kafka` processes"].met is True


def revocation_observation(**changes: object) -> revocation.RevocationObservation:
    values: dict[str, object] = {
        "kind": "forged",
        "attempts": [
            revocation.Attempt("attacker", "RPUSH", False, "NOPERM"),
            revocation.Attempt("unfenced", "RPUSH", True),
        ],
        "readers": 6,
        "ignored_by": 6,
        "tampered_by": 0,
        "counted": [2] * 6,
        "revoked_refusals": 0,
        "exits": {"root": 0, "en-0": 0},
        "lost": 0,
    }
    return revocation.RevocationObservation(**(values | changes))  # type: ignore[arg-type]


def test_a_forged_or_erased_revocation_passes_only_if_nobody_is_frozen_out() -> None:
    trial = revocation.judge(0, revocation_observation())
    assert trial.ok and trial.figures["attacker_refused"] == 1
    erasing = [revocation.Attempt("attacker", "EXPIRE 0", True)]  # landed (Redis 6)
    erased = revocation.judge(
        1, revocation_observation(kind="erased", tampered_by=6, attempts=erasing)
    )
    assert erased.ok
    # Redis 7 / Valkey refused every erasing write (read-only): nothing to report
    kept = revocation.judge(2, revocation_observation(kind="erased"))
    assert kept.ok and kept.figures["untouched"] is True
    changes: list[tuple[dict[str, object], str]] = [
        ({"revoked_refusals": 2}, "refused as revoked"),
        ({"ignored_by": 5}, "5 of 6 participants ignored"),
        ({"kind": "erased", "attempts": erasing}, "0 of 6 participants reported the erasure"),
        ({"exits": {"root": 1}}, "did not complete"),
        ({"lost": 1}, "1 update(s) lost"),
    ]
    for change, words in changes:
        failed = revocation.judge(0, revocation_observation(**change))
        assert not failed.ok and words in failed.reason, failed.reason
    rows = {r.measure: r for r in revocation.summarize([trial, erased])}
    assert rows["attacker's writes refused by Redis (its own user)"].met is None  # reported
    assert rows["participants that ignored the forged entries"].result == "6/6"
    assert rows["participants that reported the erased entry"].met
    kept_rows = {r.measure: r for r in revocation.summarize([kept])}
    assert kept_rows["erasures Redis refused outright (read-only)"].result == "1"


def test_a_flat_config_becomes_two_federations_and_a_tree_stays() -> None:
    flat = {
        "federations": {"root": {}},
        "clients": {c: {"federation": "root", "partition": "p"} for c in ("c", "a", "b")},
    }
    tree = two_federations(flat)
    assert tree["federations"] == {
        "root": {},
        "west": {"parent": "root"},
        "east": {"parent": "root"},
    }
    assert {c: t["federation"] for c, t in tree["clients"].items()} == {
        "a": "west",
        "b": "east",
        "c": "west",
    }
    assert two_federations(tree) == tree and flat["federations"] == {"root": {}}
