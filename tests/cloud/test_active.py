"""Cloud active learning strategies (registered by name)."""

import numpy as np
import pytest

from fleetloop_core.errors import ConfigError

from fleetloop_cloud import active


def _clusters(rng):
    """Three tight clusters on the unit circle: 30, 30 and 3 frames."""
    centres = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    sizes = (30, 30, 3)
    points = np.concatenate([c + rng.normal(0, 0.02, (s, 2)) for c, s in zip(centres, sizes)])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), np.repeat([0, 1, 2], sizes)


def test_registry_names_and_unknown_name_is_an_error():
    assert set(active.STRATEGIES) == {"random", "uncertainty", "diversity", "uncertainty-diversity", "typiclust"}
    with pytest.raises(ConfigError, match=r"unknown strategy 'coreset'.*known: random"):
        active.select("coreset", np.zeros((3, 2)), np.zeros(3), 1, np.random.default_rng(0))


def test_diversity_covers_every_cluster_where_random_and_uncertainty_do_not_have_to():
    rng = np.random.default_rng(0)
    points, cluster = _clusters(rng)
    uncertainty = np.where(cluster == 0, 0.9, 0.1)
    picked = active.select("diversity", points, uncertainty, 3, np.random.default_rng(1))
    assert set(cluster[picked]) == {0, 1, 2}
    top = active.select("uncertainty", points, uncertainty, 3, np.random.default_rng(1))
    assert set(cluster[top]) == {0}
    # weighted k-center: covers the space too, starting where the teachers are unsure
    both = active.select("uncertainty-diversity", points, uncertainty, 3, np.random.default_rng(1))
    assert set(cluster[both]) == {0, 1, 2} and cluster[both[0]] == 0


def test_already_labeled_regions_count_for_diversity():
    rng = np.random.default_rng(0)
    points, cluster = _clusters(rng)
    labeled = points[cluster != 2][:2]
    labeled = np.concatenate([points[cluster == 0][:1], points[cluster == 1][:1]])
    picked = active.select("diversity", points, np.zeros(len(points)), 1, np.random.default_rng(0), labeled)
    assert cluster[picked[0]] == 2


def test_random_is_seeded_and_order_returns_a_permutation():
    points, _ = _clusters(np.random.default_rng(0))
    a = active.select("random", points, np.zeros(len(points)), 5, np.random.default_rng(7))
    b = active.select("random", points, np.zeros(len(points)), 5, np.random.default_rng(7))
    assert (a == b).all()
    order = active.order("uncertainty-diversity", points, np.linspace(0, 1, len(points)), np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(points)))


def _blobs(rng, sizes, spread=0.05, dim=8):
    """Clusters of the given sizes around random unit centres in ``dim`` dimensions, unit-length rows."""
    centres = rng.normal(size=(len(sizes), dim))
    points = np.concatenate([c + rng.normal(0, spread, (s, dim)) for c, s in zip(centres, sizes)])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_typiclust_covers_every_dense_cluster_first_with_its_most_typical_frame():
    rng = np.random.default_rng(0)
    sizes = (400, 60, 40, 30, 20, 3)  # a dominant cluster, four smaller ones, a 3-frame outlier group
    points, cluster = _blobs(rng, sizes)
    picked = active.select("typiclust", points, np.zeros(len(points)), 5, np.random.default_rng(1))
    # one frame of each of the five clusters of >= min_cluster frames, none of the outliers; random
    # picks at this size land in the dominant cluster most of the time
    assert sorted(cluster[picked].tolist()) == [0, 1, 2, 3, 4]
    flat = np.zeros(len(points))
    randoms = [set(cluster[active.select("random", points, flat, 5, np.random.default_rng(s))]) for s in range(20)]
    assert sum(len(r) == 5 for r in randoms) < 5
    # each pick is its cluster's most typical frame: the closest to the cluster's centre, up to ties
    for index in picked:
        members = points[cluster == cluster[index]]
        centre = members.mean(axis=0)
        centre /= np.linalg.norm(centre)
        assert points[index] @ centre >= np.quantile(members @ centre, 0.8)


def test_typiclust_counts_labeled_frames_and_leaves_outlier_groups_for_last():
    rng = np.random.default_rng(2)
    points, cluster = _blobs(rng, (80, 80, 80, 3))
    labeled = np.concatenate([points[cluster == 0][:3], points[cluster == 1][:3]])
    picked = active.select("typiclust", points, np.zeros(len(points)), 3, np.random.default_rng(0), labeled)
    assert cluster[picked[0]] == 2  # the one dense cluster nobody labeled yet comes first
    # 6 labeled + 4 picks: ten k-means clusters, the 3-frame outlier group one of them, never picked
    # while a cluster of >= min_cluster frames has frames left
    more = active.select("typiclust", points, np.zeros(len(points)), 4, np.random.default_rng(0), labeled)
    assert 3 not in set(cluster[more].tolist())
    every = active.order("typiclust", points, np.zeros(len(points)), np.random.default_rng(0))
    assert sorted(every.tolist()) == list(range(len(points)))
    # a whole queue in order (at most one cluster per 5 frames, not one per frame): the outlier group
    # only once the clusters of >= 5 frames are used up, i.e. after most of the dense blobs' frames
    position = {int(index): place for place, index in enumerate(every)}
    assert min(position[int(i)] for i in np.flatnonzero(cluster == 3)) > 0.75 * len(points)


def test_kmeans_assigns_in_blocks_exactly_as_at_once_and_finds_separated_clusters():
    from fleetloop_cloud.active import _kmeans, _nearest_centre

    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    centres = rng.normal(size=(7, 8)).astype(np.float32)
    at_once = (((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)).argmin(axis=1)
    assert (_nearest_centre(x, centres, block=64) == at_once).all()  # 64 rows a block: 16 blocks, the last short
    # three far-apart blobs come back as three clusters, each whole
    blobs = np.concatenate([rng.normal(loc=10.0 * c, size=(50, 4)) for c in range(3)]).astype(np.float32)
    assigned = _kmeans(blobs, 3, np.random.default_rng(0))
    assert sorted(len(set(assigned[c * 50 : (c + 1) * 50])) for c in range(3)) == [1, 1, 1]
    assert len(set(assigned)) == 3
