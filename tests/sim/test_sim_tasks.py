"""The tasks' parts of the world: detection streams with 0..n items, boxes that match the painted pixels, overlaps,
truncation; the task's part picked by name."""

from dataclasses import replace

import numpy as np
import pytest

from fleetloop_sim import dataset
from fleetloop_sim import sim, sim_render, sim_tasks
from fleetloop_core.uncertainty_detection import pairwise_iou


def _plain_site():
    # black, noise-free, no blur: every painted pixel is the item's
    return replace(sim.LAB_SITE, shift=replace(sim_render.LAB_SHIFT, noise_sigma=0.0, background_rgb=(0.0, 0.0, 0.0)))


@pytest.mark.parametrize("angle", [0.0, 23.0, -41.0])
def test_boxes_are_the_tight_box_of_the_painted_item(pool, angle):
    renderer = sim_render.Renderer(_plain_site(), pool, 120, 160)
    for item in (3, 400, 7777):
        placements = [sim_render.Placement(item, (0.45, 0.5), 0.4, angle)]
        image, truth = renderer.draw(placements), sim_tasks.box_truth(renderer, placements)
        ys, xs = np.nonzero(image.max(axis=2) >= 12)
        painted = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        assert len(truth.boxes) == 1
        assert np.abs(painted - truth.boxes[0]).max() <= 2.5, (item, painted, truth.boxes[0])
        assert truth.classes[0] == pool.labels[item] and not truth.truncated[0]


def test_truncated_items_are_clipped_to_the_frame_and_flagged(pool):
    renderer = sim_render.Renderer(_plain_site(), pool, 128, 128)
    truth = sim_tasks.box_truth(
        renderer,
        [
            sim_render.Placement(10, (0.02, 0.5), 0.35, 0.0),  # cut by the left border
            sim_render.Placement(11, (0.6, 0.6), 0.3, 0.0),
        ],
    )
    assert len(truth.boxes) == 2
    left = truth.boxes[0]
    assert left[0] == 0.0 and truth.truncated[0] and not truth.truncated[1]
    assert np.all(truth.boxes[:, 2] <= 128) and np.all(truth.boxes >= 0)
    # an item entirely outside the frame is not in the truth
    gone = sim_tasks.box_truth(renderer, [sim_render.Placement(10, (-0.5, 0.5), 0.3, 0.0)])
    assert len(gone.boxes) == 0 and gone.label == dataset.NONE_INDEX


def test_stream_is_seeded_with_empty_frames_overlaps_truncation_and_tracks(pool):
    site = sim.make_site(1, seed=0)
    a = list(sim.CameraStream(site, "robot-a", seed=4, task="detection").frames(600))
    b = list(sim.CameraStream(site, "robot-a", seed=4, task="detection").frames(600))
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.truth.boxes, y.truth.boxes) for x, y in zip(a, b))
    assert a[0].image.shape == (128, 128, 3) and a[1].stamp_ns - a[0].stamp_ns == 100_000_000
    counts = np.array([len(f.truth.boxes) for f in a])
    assert 0.15 < np.mean(counts == 0) < 0.7  # background-only stretches
    assert counts.max() >= 3  # several items at once
    assert sum(int(f.truth.truncated.sum()) for f in a) > 10
    overlapping = sum(bool((np.triu(pairwise_iou(f.truth.boxes, f.truth.boxes), 1) > 0.05).any()) for f in a)
    assert overlapping > 10
    # an item keeps its track id while it moves, and its box moves smoothly
    tracks: dict[int, list[np.ndarray]] = {}
    for frame in a:
        for box, track in zip(frame.truth.boxes, frame.truth.track_ids):
            tracks.setdefault(int(track), []).append(box)
    long = [np.stack(v) for v in tracks.values() if len(v) >= 8]
    assert long
    steps = np.concatenate([np.abs(np.diff((t[:, :2] + t[:, 2:]) / 2, axis=0)).max(axis=1) for t in long])
    assert np.median(steps) < 6.0
    # the classification view of a frame: the largest box's class, or none
    busy = next(f for f in a if len(f.truth.boxes) >= 2)
    areas = (busy.truth.boxes[:, 2] - busy.truth.boxes[:, 0]) * (busy.truth.boxes[:, 3] - busy.truth.boxes[:, 1])
    assert busy.truth.label == busy.truth.classes[int(np.argmax(areas))]


def test_field_sets_use_held_out_items_and_sets_are_seeded(pool):
    site = sim.make_site(0)
    test = sim.field_test_set(site, 40, seed=0, task="detection")
    again = sim.field_test_set(site, 40, seed=0, task="detection")
    assert np.array_equal(test.images, again.images)
    items = np.concatenate([t.items for t in test.truths])
    assert len(items) and set(items.tolist()) <= set(pool.field_test.tolist())
    assert test.box_count() == len(items) and set(test.sites) == {site.name}
    two = sim_tasks.Detection(max_items=2)
    lab = sim.render_set(sim.LAB_SITE, pool.lab_train, 30, seed=1, sites=sim.lab_sites(4), task=two)
    assert max(len(t.boxes) for t in lab.truths) <= 2
    assert len({t.site for t in lab.truths}) > 1


def test_bad_settings_and_unknown_tasks_are_rejected():
    site = sim.make_site(0)
    with pytest.raises(ValueError, match="item_scale"):
        sim.CameraStream(site, "r", task=sim_tasks.Detection(item_scale=(0.5, 0.2)))
    with pytest.raises(ValueError, match="max_items"):
        sim.CameraStream(site, "r", task=sim_tasks.Detection(max_items=0))
    with pytest.raises(ValueError, match="unknown task 'segmentation' \\(known: classification, detection\\)"):
        sim.CameraStream(site, "r", task="segmentation")
