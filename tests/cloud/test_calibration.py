"""Temperature scaling on human-labeled frames."""

import numpy as np
import pytest

from fleetloop_cloud.calibration import (
    apply_temperature,
    ensemble_log_probs,
    expected_calibration_error,
    fit_temperature,
)


def _overconfident(n: int, rng, true_temperature: float = 3.0):
    """Labels drawn from softmax(logits / T): a model reporting softmax(logits) is over-confident by T."""
    logits = rng.normal(0, 4.0, size=(n, 11))
    true_probs = apply_temperature(logits, true_temperature)
    labels = np.array([rng.choice(11, p=p / p.sum()) for p in true_probs.astype(np.float64)])
    return logits, labels


def test_fit_recovers_the_temperature_and_improves_calibration():
    rng = np.random.default_rng(0)
    logits, labels = _overconfident(4000, rng)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(apply_temperature(logits, 1.0), labels)
    after = expected_calibration_error(apply_temperature(logits, temperature), labels)
    assert after < before / 2


def test_temperature_keeps_the_argmax_and_defaults_without_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 11))
    assert (apply_temperature(logits, 0.3).argmax(1) == apply_temperature(logits, 7.0).argmax(1)).all()
    assert fit_temperature(logits, np.zeros(0, np.int64)) == 1.0


def test_ensemble_is_a_normalised_geometric_mean():
    a = np.array([[0.7, 0.2, 0.1]])
    b = np.array([[0.1, 0.8, 0.1]])
    probs = np.exp(ensemble_log_probs(a, b))
    assert probs.sum() == pytest.approx(1.0)
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum()
    assert np.allclose(probs, expected)


def test_the_committee_weighs_a_field_ready_teacher_over_one_that_is_wrong_in_the_field():
    from fleetloop_cloud.autolabel import combine
    from fleetloop_cloud.calibration import fit_committee

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    good = np.full((400, 5), 0.05)
    good[np.arange(400), labels] = 0.8  # right, a little under-confident
    bad = np.full((400, 5), 0.02)
    bad[np.arange(400), (labels + 1) % 5] = 0.92  # confidently wrong (a lab teacher in the field)
    w_good, w_bad = fit_committee(good, bad, labels)
    assert w_good > 1.0 and w_bad < 0.05  # sharpened, and the wrong teacher all but ignored
    committee = combine(good, bad, weights=(w_good, w_bad))
    assert (committee.label == labels).all() and not committee.agree.any()
    assert committee.confidence.min() > 0.9
    assert fit_committee(good, bad, np.zeros(0, np.int64)) == (0.5, 0.5)
