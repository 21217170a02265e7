"""Report statistics: scores over the last rounds, t intervals, paired ratios, divergence."""

from __future__ import annotations

import math

import pytest

from worldlm.lab.report import Comparison, MethodResult, interval


def test_score_is_the_mean_of_the_last_quarter_of_evaluations() -> None:
    # 9 evaluations (8 rounds): the last 2 count
    r = MethodResult({"a": [(i, float(100 - i)) for i in range(9)]})
    assert r.score == {"a": (93.0 + 92.0) / 2}
    assert r.final == {"a": 92.0}
    # 3 evaluations: only the final one
    assert MethodResult({"a": [(0, 9.0), (1, 5.0), (2, 4.0)]}).score == {"a": 4.0}


def test_a_held_out_split_scores_by_the_final_model_and_curves_stay_validation() -> None:
    val = {"a": [(0, 10.0), (1, 5.0), (2, 6.0)]}
    r = MethodResult(val, held_out={"a": 7.5})
    assert r.score == r.final == {"a": 7.5}
    assert r.mean == 7.5
    assert r.mean_curve() == [(0, 10.0), (1, 5.0), (2, 6.0)]
    assert r.diverged  # judged on the validation curve, which rose 20% over its best


def test_interval_is_students_t_and_undefined_for_one_value() -> None:
    mean, half = interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(interval([5.0])[1])


def test_a_curve_ending_well_above_its_best_is_flagged_diverged() -> None:
    assert MethodResult({"a": [(0, 10.0), (1, 5.0), (2, 5.4)]}).diverged is False
    assert MethodResult({"a": [(0, 10.0), (1, 5.0), (2, 6.0)]}).diverged is True
    assert MethodResult({"a": [(0, 10.0), (1, math.inf)]}).diverged is True


def test_ratio_is_paired_by_seed() -> None:
    def run(v: float) -> MethodResult:
        return MethodResult({"a": [(0, v)], "b": [(0, v)]})

    c = Comparison(
        {"worldlm": {0: run(10.0), 1: run(20.0)}, "fedavg": {0: run(20.0), 1: run(40.0)}},
        groups={"a": "f", "b": "f"},
        partitions={"a": "p", "b": "q"},
    )
    ratio = c.ratio("fedavg", "worldlm")
    assert ratio is not None
    assert ratio["per_seed"] == {0: 2.0, 1: 2.0} and ratio["mean"] == 2.0 and ratio["ci95"] == 0.0
