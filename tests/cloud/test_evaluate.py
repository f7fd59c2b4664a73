"""The gate (pure) and per-site / per-class scoring."""

import numpy as np
import pytest

from fleetloop_cloud.config import EvaluationConfig
from fleetloop_cloud.evaluate import Scores, TestSet, gate, score


def _scores(overall, sites, classes):
    return Scores(overall=overall, frames=1000, per_site=sites, per_class=classes)


CONFIG = EvaluationConfig(min_gain=0.01, max_class_regression=0.05, max_site_regression=0.03, min_support=20)


def test_promotes_a_better_model_with_no_regression():
    before = _scores(0.80, {"site-0": (0.8, 500), "site-1": (0.8, 500)}, {"bag": (0.7, 100)})
    after = _scores(0.85, {"site-0": (0.84, 500), "site-1": (0.86, 500)}, {"bag": (0.69, 100)})
    decision = gate(before, after, CONFIG)
    assert decision.promote and decision.gain == 0.85 - 0.80


def test_blocks_too_small_a_gain_and_site_or_class_regressions():
    before = _scores(0.80, {"site-0": (0.8, 500), "site-1": (0.8, 500)}, {"bag": (0.7, 100), "none": (0.9, 10)})
    assert not gate(before, _scores(0.805, before.per_site, before.per_class), CONFIG).promote
    # beyond its limit and its noise (three groups gated: 2.13 standard errors, 0.058 here)
    worse_site = _scores(0.85, {"site-0": (0.95, 500), "site-1": (0.70, 500)}, before.per_class)
    decision = gate(before, worse_site, CONFIG)
    assert not decision.promote and "site:site-1" in decision.regressions
    worse_class = _scores(0.85, {"site-0": (0.85, 500), "site-1": (0.85, 500)}, {"bag": (0.45, 100), "none": (0.5, 10)})
    decision = gate(before, worse_class, CONFIG)
    assert not decision.promote and set(decision.regressions) == {"class:bag"}  # 'none' has 10 < 20 frames


def test_score_per_site_and_class():
    test = TestSet("t", [np.zeros((4, 4, 3), np.uint8)] * 4, np.array([0, 0, 1, 10]), np.array(["a", "a", "b", "b"]))
    result = score(np.array([0, 1, 1, 10]), test)
    assert result.overall == 0.75
    assert result.per_site == {"a": (0.5, 2), "b": (1.0, 2)}
    # per class F1: t-shirt 1 hit of 2 true and 1 said; trouser 1 hit of 1 true and 2 said
    assert result.per_class == {
        "t-shirt": (pytest.approx(2 / 3), 2),
        "trouser": (pytest.approx(2 / 3), 1),
        "none": (1.0, 1),
    }


def test_a_model_that_says_one_class_everywhere_scores_its_precision_too():
    labels = np.array([4] * 30 + [0] * 30 + [10] * 40)
    test = TestSet("t", [np.zeros((4, 4, 3), np.uint8)] * 100, labels, np.array(["s"] * 100))
    always_coat = score(np.full(100, 4), test)
    better = score(np.where(labels == 4, 0, labels), test)  # right on everything but coat
    # recall would credit "always coat" with a perfect 1.0 on coat; F1 counts its 70 false coats
    assert always_coat.per_class["coat"][0] == pytest.approx(2 * 30 / (30 + 100))
    assert always_coat.per_class["none"][0] == 0.0
    assert better.per_class["none"][0] == 1.0 and better.overall > always_coat.overall


def test_the_gate_selects_on_the_validation_split_never_on_the_items_headline_figures_use(pool):
    from fleetloop_cloud.evaluate import _field_set

    gate = _field_set(0, 0, 120, 128, 128)
    shown = set(gate.items[gate.items >= 0].tolist())
    assert shown and shown <= set(pool.field_split("validation").tolist())
    assert not shown & set(pool.field_split("test").tolist())  # the demo's headline split (demo/run.py)


def test_a_drop_within_the_sampling_noise_of_a_small_site_is_no_regression():
    # 150 frames: 0.527 -> 0.487 is 6 frames, within one standard error (0.058) of two such samples
    before = _scores(0.30, {"site-0": (0.10, 150), "site-1": (0.527, 150)}, {})
    after = _scores(0.55, {"site-0": (0.61, 150), "site-1": (0.487, 150)}, {})
    assert gate(before, after, CONFIG).promote
    # the same drop on 2000 frames is beyond its noise (0.016): a regression
    big = _scores(0.30, {"site-0": (0.10, 2000), "site-1": (0.527, 2000)}, {})
    decision = gate(big, _scores(0.55, {"site-0": (0.61, 2000), "site-1": (0.487, 2000)}, {}), CONFIG)
    # (two sites gated: each at the 1 - 0.05 / 2 quantile, 1.96 standard errors, 0.031)
    assert not decision.promote and "noise 0.031" in decision.reasons[0]
    # regression_z 0 and no family correction: the limit alone decides
    strict = EvaluationConfig(**{**CONFIG.model_dump(), "regression_z": 0.0, "regression_alpha": None})
    assert not gate(before, after, strict).promote


def test_a_drop_that_one_of_fifteen_gated_classes_shows_by_chance_is_no_regression():
    # 15 classes of 50 frames; a candidate 0.03 better overall, one class 0.10 down (1.05 standard errors, as
    # a demo's sneakers 0.488 -> 0.384): at one standard error a group in 15 drops that far by chance most times
    classes = {f"class-{i}": (0.5, 50) for i in range(15)}
    before = _scores(0.60, {}, classes)
    after = _scores(0.63, {}, {**classes, "class-3": (0.39, 50)})
    assert gate(before, after, CONFIG).promote
    per_group = EvaluationConfig(**{**CONFIG.model_dump(), "regression_alpha": None})
    decision = gate(before, after, per_group)
    assert not decision.promote and "class-3" in decision.reasons[0]
    # a class that loses 0.30 is beyond the family's noise too (2.71 standard errors, 0.246)
    worse = gate(before, _scores(0.63, {}, {**classes, "class-3": (0.20, 50)}), CONFIG)
    assert not worse.promote and "noise 0.246" in worse.reasons[0]
