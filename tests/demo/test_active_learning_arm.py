"""The demo's active-learning arm: every arm picks its own first batch, on a grid from one label a class."""

from __future__ import annotations

import numpy as np

from fleetloop_cloud.demo import active_learning


def _world(rng, classes=11, dim=16, frames=3000):
    """Class clusters on a unit sphere, half the frames one background class (as the fleet's `none`)."""
    centres = rng.normal(size=(classes, dim))
    shares = np.full(classes, 0.5 / (classes - 1))
    shares[-1] = 0.5

    def draw(n):
        labels = rng.choice(classes, size=n, p=shares)
        x = centres[labels] + rng.normal(0, 0.3, (n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels

    return draw(frames), draw(1000)


def test_each_arm_picks_its_first_batch_and_a_first_budget_hit_is_an_upper_bound():
    (pool, labels), (test, test_labels) = _world(np.random.default_rng(0))
    result = active_learning.run(
        pool, labels, test, test_labels, 11, [11, 16, 22, 32, 45, 64, 90], 2, target_share=0.9, strategy="typiclust"
    )
    random_curve, typiclust = result.curves["random"], result.curves["typiclust"]
    # no shared seed batch: at 11 labels the arms already differ; random's 11 frames are half background
    # and miss classes, typicality's cover the clusters
    assert typiclust.accuracy[0] > random_curve.accuracy[0] + 0.1
    assert result.labels_needed["typiclust"] == 11.0 and result.at_first_budget == ["typiclust"]
    assert result.ratio_is_upper_bound and result.ratio is not None and result.ratio < 1.0
    assert result.to_dict()["ratio_is_upper_bound"] is True
    # the same strategy against itself is no upper bound: both reach it at once, or neither
    same = active_learning.run(pool, labels, test, test_labels, 11, [11, 16, 22], repeats=1, strategy="random", seed=0)
    assert not same.ratio_is_upper_bound
