"""The simulated world: seeded, camera-like, streams with tracks, sites that differ, held-out items."""

import numpy as np
import pytest

from fleetloop_sim import dataset
from fleetloop_sim import sim, sim_render
from fleetloop_core.errors import DatasetError


def test_dataset_reads_debian_package():
    train = dataset.load_split("train")
    test = dataset.load_split("test")
    assert train.images.shape == (60_000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10))


def test_missing_dataset_names_apt_package(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        dataset.load_split("train", str(tmp_path))


def test_corrupt_idx_file(tmp_path):
    import gzip

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as handle:
            handle.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + b"\x00" * 20)
    with pytest.raises(DatasetError, match="truncated IDX file"):
        dataset.load_split("train", str(tmp_path))


def test_partitions_are_disjoint(pool):
    parts = [pool.lab_train, pool.lab_test, pool.field_stream, pool.field_test]
    total = sum(len(p) for p in parts)
    assert len(np.unique(np.concatenate(parts))) == total == 70_000
    # lab tiers never see a test-split item; field test items are never streamed
    assert pool.lab_train.max() < 60_000
    assert not set(pool.field_test) & set(pool.field_stream)


def test_stream_is_seeded_and_camera_like(pool):
    site = sim.make_site(0, seed=3)
    a = list(sim.CameraStream(site, "robot-a", seed=5).frames(60))
    b = list(sim.CameraStream(site, "robot-a", seed=5).frames(60))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    frame = a[0].image
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    stamps = [f.stamp_ns for f in a]
    assert stamps == sorted(stamps) and stamps[1] - stamps[0] == 100_000_000  # 10 Hz


def test_stream_has_tracks_none_frames_and_revisits(pool):
    site = sim.make_site(2, seed=0)
    frames = list(sim.CameraStream(site, "r", seed=1, revisit_prob=0.5).frames(3000))
    labels = np.array([f.truth.label for f in frames])
    none_share = np.mean(labels == dataset.NONE_INDEX)
    assert 0.35 < none_share < 0.65
    tracks = {}
    for f in frames:
        if f.truth.track_id >= 0:
            tracks.setdefault(f.truth.track_id, []).append(f)
    lengths = [len(v) for v in tracks.values()]
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 40
    # one item per track, consecutive frames of a track are near-duplicates (small pixel change)
    track = max(tracks.values(), key=len)
    assert len({f.truth.item for f in track}) == 1
    diffs = [np.abs(x.image.astype(int) - y.image.astype(int)).mean() for x, y in zip(track, track[1:])]
    assert np.median(diffs) < 30
    items = [f.truth.item for f in frames if f.truth.item >= 0]
    item_tracks = {}
    for f in frames:
        if f.truth.item >= 0:
            item_tracks.setdefault(f.truth.item, set()).add(f.truth.track_id)
    assert any(len(t) > 1 for t in item_tracks.values()), "robots revisit items"
    assert set(items) <= set(pool.field_stream)


def test_sites_differ_and_one_lab_rare_class_is_common_in_field():
    sites = sim.make_fleet_sites(4, seed=0)
    assert len({s.shift for s in sites}) == 4
    lab = sim.lab_prior()
    rare = sim.RARE_IN_LAB_CLASS
    assert lab[rare] < 0.01
    assert max(s.class_prior[rare] for s in sites) > 0.2
    for s in sites:
        assert abs(s.class_prior.sum() - 1) < 1e-9


def test_hard_mode_is_iid_without_none(pool):
    site = sim.make_site(1)
    frames = list(sim.CameraStream(site, "r", seed=0, mode="hard").frames(200))
    assert all(f.truth.label != dataset.NONE_INDEX for f in frames)
    assert len({f.truth.track_id for f in frames}) == 200


def test_frame_size_is_configurable(pool):
    frames = list(sim.CameraStream(sim.make_site(0), "r", height=480, width=640).frames(3))
    assert frames[0].image.shape == (480, 640, 3)
    with pytest.raises(ValueError, match="at least 32x32"):
        sim_render.Renderer(sim.make_site(0), pool, 16, 16)


def test_field_frames_differ_from_lab_frames(pool):
    lab = sim.render_set(sim.LAB_SITE, pool.lab_test, 200, seed=0)
    field = sim.field_test_set(sim.make_site(0), 200, seed=0)
    assert abs(lab.images.mean() - field.images.mean()) > 3 or abs(lab.images.std() - field.images.std()) > 3
    assert set(field.items[field.items >= 0]) <= set(pool.field_test)


def test_truth_only_frames_match_rendered_stream(pool):
    site = sim.make_site(3, seed=1)
    rendered = list(sim.CameraStream(site, "r", seed=2).frames(400))
    truth_only = list(sim.CameraStream(site, "r", seed=2).frames(400, render=False))
    assert all(t.image is None for t in truth_only)
    assert [(f.truth, f.stamp_ns) for f in rendered] == [(f.truth, f.stamp_ns) for f in truth_only]
    # skipping ahead without pixels leaves the stream where rendering it would have
    skipped = sim.CameraStream(site, "r", seed=2)
    list(skipped.frames(300, render=False))
    assert np.array_equal(next(iter(skipped.frames(1))).image, rendered[300].image)


def test_stream_is_the_same_however_it_is_chunked():
    site = sim.make_site(0, seed=5)
    whole = [f.truth for f in sim.CameraStream(site, "r", seed=1).frames(500, render=False)]
    chunked_stream = sim.CameraStream(site, "r", seed=1)
    chunked = []
    for size in (1, 7, 100, 3, 389):
        chunked += [f.truth for f in chunked_stream.frames(size, render=False)]
    assert chunked == whole


def test_field_validation_and_test_splits_are_disjoint_halves_of_the_held_out_items(pool):
    validation, test = pool.field_split("validation"), pool.field_split("test")
    assert not set(validation) & set(test)
    assert np.array_equal(np.sort(np.concatenate([validation, test])), pool.field_test)
    assert abs(len(validation) - len(test)) <= 1
    site = sim.make_site(0)
    gate = sim.field_test_set(site, 200, seed=0, split="validation")
    report = sim.field_test_set(site, 200, seed=0, split="test")
    assert set(gate.items[gate.items >= 0]) <= set(validation)
    assert set(report.items[report.items >= 0]) <= set(test)
    with pytest.raises(ValueError, match="unknown field split"):
        pool.field_split("train")
