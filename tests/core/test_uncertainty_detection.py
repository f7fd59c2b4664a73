"""Detection uncertainty: the documented range and behaviour of every score, as properties (hypothesis)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fleetloop_core import uncertainty_detection as dunc

FINITE = dict(allow_nan=False, allow_infinity=False)


@st.composite
def box_sets(draw, max_boxes=6):
    n = draw(st.integers(0, max_boxes))
    corners = draw(arrays(np.float32, (n, 2), elements=st.floats(0, 100, width=32, **FINITE)))
    sizes = draw(arrays(np.float32, (n, 2), elements=st.floats(1, 50, width=32, **FINITE)))
    return np.concatenate([corners, corners + sizes], axis=1).reshape(-1, 4)


scores_batches = arrays(
    np.float32,
    st.tuples(st.integers(1, 5), st.integers(0, 8)),
    elements=st.one_of(st.floats(0, 1, width=32, **FINITE), st.just(np.nan)),
)


@settings(max_examples=60, deadline=None)
@given(scores_batches, st.floats(0, 1), st.floats(0, 1))
def test_band_count_and_score(scores, a, b):
    low, high = min(a, b), max(a, b)
    count = dunc.band_count(scores, low, high)
    assert count.shape == (scores.shape[0],) and np.all(count >= 0)
    assert np.all(count <= np.sum(~np.isnan(scores), axis=1))
    score = dunc.band_score(count)
    assert np.all((0 <= score) & (score < 1))
    assert np.all((count == 0) == (score == 0))
    # a wider band never holds fewer boxes; the score grows with the count
    wider = dunc.band_count(scores, max(0.0, low - 0.1), min(1.0, high + 0.1))
    assert np.all(wider >= count)
    assert np.all(np.diff(dunc.band_score(np.arange(6))) > 0)


def test_band_rejects_a_backwards_band():
    with pytest.raises(ValueError, match="score band"):
        dunc.band_count(np.zeros((1, 2)), 0.6, 0.4)
    assert dunc.band_around(0.3, 0.15) == pytest.approx((0.15, 0.45))
    assert dunc.band_around(0.95, 0.1) == pytest.approx((0.85, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(0, 5), st.integers(2, 12)),
        elements=st.floats(0, 1, width=32, **FINITE),
    )
)
def test_box_entropy_in_unit_interval_and_order_free(class_scores):
    h = dunc.box_entropy(class_scores) if class_scores.shape[1] else np.zeros(0)
    assert np.all((0 <= h) & (h <= 1))
    mean, peak = dunc.box_entropy_stats(class_scores)
    assert mean.shape == peak.shape == (class_scores.shape[0],)
    assert np.all((0 <= mean) & (mean <= peak + 1e-6) & (peak <= 1))
    flipped = class_scores[:, ::-1]
    np.testing.assert_allclose(dunc.box_entropy_stats(flipped)[1], peak, atol=1e-5)
    if class_scores.shape[1] == 0:
        assert np.all(mean == 0) and np.all(peak == 0)


@pytest.mark.parametrize("classes", [2, 10])
def test_box_entropy_extremes(classes):
    one_hot = np.eye(classes, dtype=np.float32)
    assert np.allclose(dunc.box_entropy(one_hot), 0.0, atol=1e-6)
    assert np.allclose(dunc.box_entropy(np.full((3, classes), 0.4)), 1.0, atol=1e-6)
    assert np.allclose(dunc.box_entropy(np.zeros((1, classes))), 1.0)  # no opinion at all
    padded = dunc.pad([one_hot[:2], np.zeros((0, classes))])
    mean, peak = dunc.box_entropy_stats(padded)
    assert mean.tolist() == pytest.approx([0.0, 0.0]) and peak.tolist() == pytest.approx([0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(box_sets(), box_sets(), st.floats(0.1, 0.9))
def test_disagreement_range_symmetry_and_identity(a, b, threshold):
    d = dunc.box_disagreement(a, b, iou_threshold=threshold)
    assert 0.0 <= d.score <= 1.0
    assert d.unmatched == len(a) + len(b) - 2 * d.matched and d.unmatched >= 0
    assert d.matched <= min(len(a), len(b))
    if d.matched:
        assert threshold - 1e-6 <= d.mean_iou <= 1.0 + 1e-6
    back = dunc.box_disagreement(b, a, iou_threshold=threshold)
    assert back.score == pytest.approx(d.score, abs=1e-5) and back.matched == d.matched
    same = dunc.box_disagreement(a, a[::-1].copy(), iou_threshold=threshold)
    assert same.score <= 1e-5 and same.unmatched == 0 and same.mean_iou == pytest.approx(1.0, abs=1e-5)


def test_disagreement_extremes_and_class_conflicts():
    a = np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    far = a + 100
    assert dunc.box_disagreement(a, far).score == 1.0 and dunc.box_disagreement(a, far).unmatched == 4
    assert dunc.box_disagreement(a, a[:0]).score == 1.0 and dunc.box_disagreement(a, a[:0]).mean_iou == 0.0
    d = dunc.box_disagreement(a, a, np.asarray([1, 2]), np.asarray([1, 3]))
    assert d.score == pytest.approx(0.0, abs=1e-6) and d.class_conflicts == 1 and d.mean_iou == pytest.approx(1.0)
    shifted = a + np.asarray([2, 0, 2, 0], np.float32)
    partial = dunc.box_disagreement(a, shifted)
    assert 0.0 < partial.score < 0.5 and partial.matched == 2
    # one box missing: one of three boxes unmatched
    assert dunc.box_disagreement(a, a[:1]).unmatched == 1


@settings(max_examples=50, deadline=None)
@given(box_sets(), box_sets())
def test_pairwise_iou_is_a_symmetric_unit_matrix(a, b):
    iou = dunc.pairwise_iou(a, b)
    assert iou.shape == (len(a), len(b)) and np.all((0 <= iou) & (iou <= 1 + 1e-6))
    np.testing.assert_allclose(dunc.pairwise_iou(b, a), iou.T, atol=1e-6)
    if len(a):
        np.testing.assert_allclose(np.diag(dunc.pairwise_iou(a, a)), 1.0, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 10)), elements=st.integers(0, 5)))
def test_count_flicker(windows):
    f = dunc.count_flicker(windows)
    assert f.shape == (windows.shape[0],) and np.all((0 <= f) & (f <= 1))
    steady = np.repeat(windows[:, :1], windows.shape[1], axis=1)
    assert np.all(dunc.count_flicker(steady) == 0)
    if windows.shape[1] > 1:
        alternating = np.tile([[0, 1]], (1, windows.shape[1]))[:, : windows.shape[1]]
        assert dunc.count_flicker(alternating)[0] == 1.0


def test_detection_parts_keep_the_names_the_task_independent_policies_read():
    # the disagreement and novelty policies read these two parts whatever the task
    assert {"disagreement", "novelty"} <= set(dunc.SCORE_PARTS) and len(set(dunc.SCORE_PARTS)) == 6
    assert math.isnan(dunc.pad([np.ones(2), np.ones(0)])[1, 0])
