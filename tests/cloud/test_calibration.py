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
