"""Ranges and properties of every uncertainty score (fleetloop_core.uncertainty)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fleetloop_core import uncertainty as unc

PROB_FUNCS = [unc.entropy, unc.margin, unc.least_confidence]


def _softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


logit_batches = arrays(
    np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)), elements=st.floats(-20, 20, width=32)
)


@pytest.mark.parametrize("func", PROB_FUNCS)
def test_uniform_scores_maximal_and_one_hot_zero(func):
    for classes in (2, 3, 11):
        uniform = np.full((1, classes), 1.0 / classes, np.float32)
        one_hot = np.eye(classes, dtype=np.float32)
        assert func(uniform)[0] == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(func(one_hot), 0.0, atol=1e-5)


@pytest.mark.parametrize("func", PROB_FUNCS)
@given(logits=logit_batches)
@settings(max_examples=60, deadline=None)
def test_probability_scores_in_unit_interval(func, logits):
    scores = func(_softmax(logits))
    assert scores.shape == (logits.shape[0],)
    assert np.all(scores >= 0.0) and np.all(scores <= 1.0)


@pytest.mark.parametrize("func", PROB_FUNCS)
@given(logits=arrays(np.float32, st.integers(3, 11), elements=st.floats(-5, 5, width=32)))
@settings(max_examples=60, deadline=None)
def test_monotone_in_softmax_temperature(func, logits):
    # a hotter softmax is never more certain (ties aside)
    temperatures = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    scores = [float(func(_softmax(logits[None, :], t))[0]) for t in temperatures]
    assert all(b >= a - 1e-4 for a, b in zip(scores, scores[1:])), scores


def test_entropy_matches_closed_form():
    p = np.array([[0.5, 0.5, 0.0, 0.0]], np.float32)
    assert unc.entropy(p)[0] == pytest.approx(np.log(2) / np.log(4), abs=1e-6)
    assert unc.margin(p)[0] == pytest.approx(1.0)
    assert unc.least_confidence(p)[0] == pytest.approx(0.5 * 4 / 3)


@given(a=logit_batches)
@settings(max_examples=60, deadline=None)
def test_disagreement_range_symmetry_and_identity(a):
    p = _softmax(a)
    q = _softmax(a[:, ::-1].copy())
    d = unc.disagreement(p, q)
    assert np.all((d >= 0) & (d <= 1))
    assert np.allclose(d, unc.disagreement(q, p), atol=1e-5)
    assert np.allclose(unc.disagreement(p, p), 0.0, atol=1e-5)


def test_disagreement_disjoint_is_one():
    p = np.array([[1, 0, 0]], np.float32)
    q = np.array([[0, 1, 0]], np.float32)
    assert unc.disagreement(p, q)[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="shape"):
        unc.disagreement(p, np.ones((1, 4), np.float32) / 4)


def test_flicker_range_and_extremes():
    assert unc.flicker(np.array([[1, 1, 1, 1]]))[0] == 0.0
    assert unc.flicker(np.array([[1, 2, 1, 2]]))[0] == 1.0
    assert unc.flicker(np.array([[1, 1, 2, 2, 2]]))[0] == pytest.approx(0.25)
    assert unc.flicker(np.array([[3]]))[0] == 0.0


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.integers(2, 10))
@settings(max_examples=80, deadline=None)
def test_flicker_window_matches_vectorised_function(labels, size):
    window = unc.FlickerWindow(size)
    for i, label in enumerate(labels):
        value = window.push(label)
        recent = np.array(labels[max(0, i + 1 - size) : i + 1])[None, :]
        assert value == pytest.approx(float(unc.flicker(recent)[0]))
        assert 0.0 <= value <= 1.0


@given(
    arrays(np.float32, st.tuples(st.integers(1, 5), st.just(8)), elements=st.floats(-3, 3, width=32)),
    arrays(np.float32, st.tuples(st.integers(1, 10), st.just(8)), elements=st.floats(-3, 3, width=32)),
)
@settings(max_examples=60, deadline=None)
def test_novelty_range(emb, memory):
    scores = unc.novelty(emb, memory)
    assert np.all((scores >= 0) & (scores <= 1))


def test_novelty_extremes_and_memory():
    e = np.array([[1.0, 0.0, 0.0]], np.float32)
    assert unc.novelty(e, np.empty((0, 3)))[0] == 1.0
    assert unc.novelty(e, e)[0] == pytest.approx(0.0, abs=1e-6)
    assert unc.novelty(e, -e)[0] == pytest.approx(1.0, abs=1e-6)
    assert unc.novelty(e, np.array([[0.0, 1.0, 0.0]]))[0] == pytest.approx(0.5, abs=1e-6)
    memory = unc.EmbeddingMemory(dim=3, capacity=2)
    assert memory.score(e[0]) == 1.0  # empty memory: new
    assert memory.score(e[0]) == pytest.approx(0.0, abs=1e-6)
    memory.score(np.array([0.0, 1.0, 0.0]))
    memory.score(np.array([0.0, 0.0, 1.0]))  # capacity 2: e is forgotten
    assert memory.score(e[0], remember=False) == pytest.approx(0.5, abs=1e-6)
    assert len(memory) == 2
    with pytest.raises(ValueError, match="dim"):
        memory.score(np.ones(4))


@given(arrays(np.float32, st.tuples(st.just(6), st.just(5)), elements=st.floats(0.125, 3, width=32)))
@settings(max_examples=40, deadline=None)
def test_embedding_memory_matches_vectorised_novelty(embs):
    memory = unc.EmbeddingMemory(dim=5, capacity=4)
    for i, e in enumerate(embs):
        expected = unc.novelty(e[None], embs[max(0, i - 4) : i])[0] if i else 1.0
        assert memory.score(e) == pytest.approx(float(expected), abs=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        unc.entropy(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="memory shape"):
        unc.novelty(np.ones((1, 3)), np.ones((2, 4)))


def test_zero_embedding_is_novel_and_not_remembered():
    memory = unc.EmbeddingMemory(dim=3, capacity=4)
    assert memory.score(np.zeros(3)) == 1.0
    assert len(memory) == 0


def test_unit_input_memory_agrees_with_general_memory():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 6)).astype(np.float32)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    general, unit = unc.EmbeddingMemory(6, 8), unc.EmbeddingMemory(6, 8, unit_inputs=True)
    for v, u in zip(vectors, units):
        assert general.score(v) == pytest.approx(unit.score(u), abs=1e-5)
