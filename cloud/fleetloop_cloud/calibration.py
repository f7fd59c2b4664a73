"""Calibrated confidence: temperature scaling fitted on human-labeled frames (pure functions).

The teachers' outputs are combined in log space (the geometric mean of T1's and T2's
probabilities, renormalised) and one temperature ``T`` is fitted by minimising the negative
log-likelihood of the human labels (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017). ``T > 1`` softens over-confident teachers; the arg-max never changes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-12


def ensemble_log_probs(probs_a: np.ndarray, probs_b: np.ndarray) -> np.ndarray:
    """Return log of the renormalised geometric mean of two tiers' probabilities, (N, C)."""
    log_mean = 0.5 * (np.log(np.clip(probs_a, _EPS, 1.0)) + np.log(np.clip(probs_b, _EPS, 1.0)))
    return log_mean - _logsumexp(log_mean)[:, None]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Return probabilities softmax(log_probs / temperature), (N, C), rows sum to 1."""
    scaled = np.asarray(log_probs, np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Return the mean NLL (nats) of ``labels`` under temperature-scaled ``log_probs``."""
    scaled = np.asarray(log_probs, np.float64) / float(temperature)
    norm = _logsumexp(scaled)
    return float(np.mean(norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Return the temperature minimising the NLL of ``labels`` (1.0 when there are no labels)."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 1.0
    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(log_probs, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Return the expected calibration error in [0, 1] (equal-width confidence bins)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return float(error)


def committee_log_probs(probs_a: np.ndarray, probs_b: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    """Return the log of the renormalised weighted product ``p_a^w_a * p_b^w_b`` of two tiers, (N, C).

    A product of experts whose weights say how far to trust each tier; ``(0.5 / T, 0.5 / T)`` is the
    geometric mean at temperature ``T`` (:func:`ensemble_log_probs`, :func:`apply_temperature`).
    """
    w_a, w_b = (float(w) for w in weights)
    log = w_a * np.log(np.clip(probs_a, _EPS, 1.0)) + w_b * np.log(np.clip(probs_b, _EPS, 1.0))
    out: np.ndarray = log - _logsumexp(log)[:, None]
    return out


def fit_committee(
    probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.0, 20.0)
) -> tuple[float, float]:
    """Return the weights ``(w_a, w_b)`` minimising the NLL of ``labels`` under :func:`committee_log_probs`.

    Stacking in log space (a two-feature multinomial logistic regression, no bias): each tier is
    calibrated and weighed by the evidence at once, so a tier that is wrong in the field gets a
    weight near 0 instead of a veto. ``(0.5, 0.5)`` (the plain geometric mean) without labels.
    """
    from scipy.optimize import minimize

    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 0.5, 0.5
    log_a = np.log(np.clip(probs_a, _EPS, 1.0)).astype(np.float64)
    log_b = np.log(np.clip(probs_b, _EPS, 1.0)).astype(np.float64)
    rows = np.arange(len(labels))

    def nll(w: np.ndarray) -> float:
        log = w[0] * log_a + w[1] * log_b
        return float(np.mean(_logsumexp(log) - log[rows, labels]))

    result = minimize(nll, x0=np.array([0.5, 0.5]), method="L-BFGS-B", bounds=[bounds, bounds])
    return float(result.x[0]), float(result.x[1])
