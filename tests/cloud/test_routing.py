"""Routing decisions: threshold from audited data, acceptance, tracks, propagation (pure functions)."""

import math

import numpy as np
import pytest

from fleetloop_cloud import routing


def test_wilson_interval_brackets_the_proportion_and_narrows_with_n():
    low, high = routing.wilson_interval(49, 50, 0.95)
    assert low < 49 / 50 < high <= 1.0
    low_big, high_big = routing.wilson_interval(980, 1000, 0.95)
    assert high_big - low_big < high - low
    assert routing.wilson_interval(0, 0) == (0.0, 1.0)
    # textbook value: 10/10 at 95 % -> lower bound 0.7225
    assert routing.wilson_interval(10, 10, 0.95)[0] == pytest.approx(0.7225, abs=1e-3)


def test_wilson_lower_is_point_estimate_at_z0_and_conservative_above():
    assert routing.wilson_lower(45, 50, 0.0) == pytest.approx(0.9)
    assert routing.wilson_lower(45, 50, 1.0) < 0.9
    assert routing.wilson_lower(50, 50, 1.0) == pytest.approx(50 / 51)


def test_wilson_upper_mirrors_the_lower_bound_and_says_when_errors_rule_a_target_out():
    assert routing.wilson_upper(45, 50, 0.0) == pytest.approx(0.9)
    low, high = routing.wilson_lower(45, 50, 1.0), routing.wilson_upper(45, 50, 1.0)
    assert high - 0.9 == pytest.approx(0.9 - low, abs=0.02) and high > 0.9
    assert routing.wilson_upper(0, 0, 1.0) == 1.0 and routing.wilson_upper(30, 30, 1.0) == pytest.approx(1.0)
    # among 30 sure frames, one error does not yet rule 0.98 out at z = 1; two do
    assert routing.wilson_upper(29, 30, 1.0) >= 0.98 > routing.wilson_upper(28, 30, 1.0)


def _validation(n_good_high: int, n_bad_low: int, rng):
    """Confident frames all correct, less confident ones wrong."""
    confidence = np.concatenate([rng.uniform(0.9, 1.0, n_good_high), rng.uniform(0.3, 0.6, n_bad_low)])
    correct = np.concatenate([np.ones(n_good_high, bool), np.zeros(n_bad_low, bool)])
    return confidence, correct


def test_threshold_accepts_exactly_the_frames_that_meet_the_target():
    rng = np.random.default_rng(0)
    confidence, correct = _validation(200, 50, rng)
    agree = np.ones(len(confidence), bool)
    threshold = routing.choose_threshold(confidence, correct, agree, target=0.98, z=1.0, min_accepted=30)
    assert threshold.automated
    accepted = routing.accept(confidence, agree, threshold.value)
    assert correct[accepted].mean() >= 0.98
    # every confident (correct) frame is accepted; wrong ones only as far as the bound still allows
    assert accepted[:200].all() and accepted.sum() == threshold.accepted_frames < 210
    assert threshold.lower_bound >= 0.98
    assert routing.wilson_lower(200, threshold.accepted_frames + 1, 1.0) < 0.98  # the lowest such threshold


def test_threshold_is_infinite_without_enough_evidence():
    rng = np.random.default_rng(1)
    confidence, correct = _validation(20, 5, rng)
    threshold = routing.choose_threshold(confidence, correct, np.ones(25, bool), 0.98, z=1.0, min_accepted=30)
    assert not threshold.automated and math.isinf(threshold.value)
    assert "need 30" in threshold.reason
    assert not routing.accept(confidence, np.ones(25, bool), threshold.value).any()
    # 40 all-correct frames cannot show 98 % at z=1 (lower bound 40/41 < 0.98): still nothing automated
    confidence, correct = _validation(40, 0, rng)
    assert not routing.choose_threshold(confidence, correct, np.ones(40, bool), 0.98, 1.0, 30).automated
    # the point estimate (z=0) would automate them: the bound is what makes the choice conservative
    assert routing.choose_threshold(confidence, correct, np.ones(40, bool), 0.98, 0.0, 30).automated


def test_threshold_ignores_frames_where_tiers_disagree_and_respects_the_floor():
    rng = np.random.default_rng(2)
    confidence, correct = _validation(100, 0, rng)
    agree = np.ones(100, bool)
    agree[:60] = False
    threshold = routing.choose_threshold(confidence, correct, agree, 0.98, z=0.0, min_accepted=30)
    assert threshold.eligible_frames == 40 and threshold.accepted_frames == 40
    assert not routing.accept(confidence, agree, threshold.value)[:60].any()
    floored = routing.choose_threshold(confidence, correct, agree, 0.98, z=0.0, min_accepted=30, floor=0.999)
    assert not floored.automated or floored.value >= 0.999


def test_threshold_never_splits_ties():
    confidence = np.array([0.99] * 40 + [0.95] * 10)
    correct = np.array([True] * 40 + [True] * 5 + [False] * 5)
    threshold = routing.choose_threshold(confidence, correct, np.ones(50, bool), 0.98, z=0.0, min_accepted=30)
    assert threshold.value == pytest.approx(0.99)
    assert threshold.accepted_frames == 40


def test_derive_tracks_uses_hints_then_chains_similar_close_frames():
    ids = [f"{i:064x}" for i in range(7)]
    robots = ["r1"] * 6 + ["r2"]
    streams = ["camera"] * 7
    stamps = np.array([0, 0.1, 0.2, 5.0, 5.1, 5.2, 0.0]) * 1e9
    emb = np.zeros((7, 2), np.float32)
    emb[:, 0] = 1.0
    emb[4] = [0.0, 1.0]  # dissimilar: breaks the chain
    hints = [None, None, None, "t7", "t7", None, None]
    keys = routing.derive_tracks(
        robots, streams, stamps.astype(np.int64), emb, hints, ids, max_gap_s=1.0, min_similarity=0.9
    )
    assert keys[0] == keys[1] == keys[2]  # close and similar
    # the robot's hint joins frames only while the teacher sees the same item: these two it does not
    assert (keys[3], keys[4]) == ("r1/camera/hint:t7", "r1/camera/hint:t7#1")
    assert keys[5] not in (keys[0], keys[3])  # a hinted track interrupts the chain
    assert keys[6] != keys[0]  # another robot
    no_hints = routing.derive_tracks(
        robots, streams, stamps.astype(np.int64), emb, hints, ids, 1.0, 0.9, use_hints=False
    )
    assert no_hints[3] != no_hints[2]  # 4.8 s gap
    assert no_hints[4] != no_hints[3]  # dissimilar


def test_propagate_confirms_only_agreeing_frames_and_reports_disputes():
    keys = ["a", "a", "a", "a", "b", "b", "c", "c"]
    predicted = np.array([3, 3, 3, 5, 1, 1, 2, 2])
    agree = np.array([True, True, False, True, True, True, True, True])
    confidence = np.array([0.9, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2])
    candidates = np.array([False, True, True, True, False, True, False, True])
    accepted = np.zeros(8, bool)
    accepted[3] = False
    human = {0: 3, 4: 1, 6: 2}
    result = routing.propagate(keys, predicted, agree, confidence, human, candidates, accepted, min_confidence=0.5)
    assert result.labels == {1: 3, 5: 1}  # 2: tiers disagree; 3: other label; 7: under min confidence
    # an auto-accepted frame contradicting its track's human label is disputed
    accepted[3] = True
    candidates[3] = False
    result = routing.propagate(keys, predicted, agree, confidence, human, candidates, accepted)
    assert result.disputed == [3]
    # two humans disagreeing on one track: nothing propagates there
    result = routing.propagate(keys, predicted, agree, confidence, {0: 3, 1: 4, 4: 1}, candidates, accepted)
    assert "a" in result.ambiguous_tracks and 2 not in result.labels and 3 not in result.disputed


def test_class_thresholds_route_each_class_on_its_own_evidence():
    from fleetloop_cloud.routing import accept_by_class, class_thresholds

    # class 0: 60 right; class 1: 60 with every fifth wrong; class 2: 5 frames only
    label = np.repeat([0, 1, 2], [60, 60, 5])
    confidence = np.full(len(label), 0.95)
    correct = np.ones(len(label), bool)
    correct[60:120:5] = False
    thresholds = class_thresholds(confidence, label, correct, 3, target=0.98, z=1.0, min_accepted=30)
    assert thresholds[0].automated and thresholds[0].accepted_frames == 60
    assert not thresholds[1].automated and "no threshold reaches" in thresholds[1].reason
    assert (
        not thresholds[2].automated and "only 5" in thresholds[2].reason and "pooled: 1 classes" in thresholds[2].reason
    )
    mask = accept_by_class(np.array([0.96, 0.99, 0.99]), np.array([0, 1, 2]), thresholds)
    assert mask.tolist() == [True, False, False]


def test_classes_with_little_evidence_are_routed_on_their_pooled_evidence():
    from fleetloop_cloud.routing import class_thresholds

    # classes 1 and 2: 25 right frames each (too few alone), class 3: 25 frames, 5 wrong
    label = np.repeat([0, 1, 2, 3], [60, 25, 25, 25])
    correct = np.ones(len(label), bool)
    confidence = np.full(len(label), 0.97)
    pooled = class_thresholds(confidence, label, correct, 4, target=0.98, z=1.0, min_accepted=30)
    assert pooled[1].automated and pooled[1] == pooled[2] == pooled[3]  # one group, one threshold
    correct[110:115] = False  # class 3's errors count against the whole group
    spoiled = class_thresholds(confidence, label, correct, 4, target=0.98, z=1.0, min_accepted=30)
    assert spoiled[0].automated and not spoiled[1].automated and not spoiled[3].automated


def test_revalidation_keeps_consistent_evidence_and_resets_on_a_contradicting_fresh_sample():
    from fleetloop_cloud.routing import revalidate

    accepted = np.ones(100, bool)
    fresh = np.arange(100) >= 40
    assert revalidate(accepted, np.ones(100, bool), fresh, 0.98).keep
    wrong = np.ones(100, bool)
    wrong[40::4] = False  # a quarter of the fresh accepted frames wrong
    verdict = revalidate(accepted, wrong, fresh, 0.98)
    assert not verdict.keep and verdict.frames == 60 and verdict.correct == 45 and "reset" in verdict.reason
    assert revalidate(np.zeros(100, bool), wrong, fresh, 0.98).keep  # nothing accepted: nothing contradicted


def test_another_opinion_after_a_contradicted_suggestion_and_after_two_people_disagree():
    from fleetloop_cloud.routing import needs_another_opinion

    assert not needs_another_opinion([3], 3)  # confirmed the suggestion
    assert needs_another_opinion([4], 3)  # contradicted it: ask a second person
    assert not needs_another_opinion([4, 4], 3)  # the two agree: the teachers were wrong
    assert needs_another_opinion([4, 3], 3)  # they disagree: a third decides
    assert not needs_another_opinion([4, 3, 3], 3)
    assert not needs_another_opinion([4], None)  # nothing was suggested: nothing to contradict


def test_a_robot_track_hint_splits_where_the_teacher_sees_another_item_or_a_long_gap():
    from fleetloop_cloud.routing import derive_tracks

    item_a, item_b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    stamps = np.array([0.0, 0.3, 0.6, 0.9, 1.2, 6.0]) * 1e9
    embeddings = np.stack([item_a, item_a, item_a, item_b, item_b, item_b])
    keys = derive_tracks(
        ["r"] * 6, ["s"] * 6, stamps.astype(np.int64), embeddings, ["7"] * 6, [f"f{i}" for i in range(6)]
    )
    # one hint, three tracks: the edge tracker chained item b onto item a, and item b reappears 4.8 s later
    assert keys[:3] == ["r/s/hint:7"] * 3 and keys[3:5] == ["r/s/hint:7#1"] * 2 and keys[5] == "r/s/hint:7#2"
    # without embeddings only the gap splits
    plain = derive_tracks(["r"] * 6, ["s"] * 6, stamps.astype(np.int64), None, ["7"] * 6, [f"f{i}" for i in range(6)])
    assert plain == ["r/s/hint:7"] * 5 + ["r/s/hint:7#1"]
