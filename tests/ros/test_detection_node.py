"""The perception node with detectors: Detection2DArray (vision_msgs' fields) with boxes where the truth says.

The detector here is trained by our code on exactly the frames the test publishes (it memorises
them), so where its boxes land checks the node's whole geometry path: 160x120 camera frames
letterboxed into the 64x64 model input, decoded, suppressed, mapped back to image pixels and
written as centre + size. A wrong scale or a forgotten padding offset moves every box off its item.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 120, 160


def _frames():
    from fleetloop_sim import sim, sim_tasks

    return sim.render_set(
        sim.LAB_SITE,
        sim.item_pool().lab_test,
        12,
        seed="ros-detection",
        height=HEIGHT,
        width=WIDTH,
        none_fraction=0.15,
        sites=sim.lab_sites(3),
        task=sim_tasks.Detection(max_items=2, item_scale=(0.3, 0.45)),
    )


@pytest.fixture(scope="module")
def memorising_detector():
    """A det-tiny detector (yolo layout) trained on the test frames until it knows them; cached."""
    import fcntl
    import os

    from fleetloop_models.modelbuild import code_fingerprint

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(code_fingerprint("detection").encode())
    out = ROOT / ".cache" / "ros-detector" / digest.hexdigest()[:16]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "T4" / "manifest.json").is_file():
            from fleetloop_models import zoo
            from fleetloop_sim import sim_tasks
            from fleetloop_models.trainers import detection as td

            os.environ.setdefault("FLEETLOOP_TRAIN_THREADS", "1")
            data = _frames()
            images, boxes, classes = td.fit_into(data.images, data.truths, 64)
            model = td.DetectorDeployable(zoo.build("det-tiny", 10), 64, 64)
            td.fit_detector(
                model,
                images,
                td.assign(boxes, classes, 64, 64),
                progress=False,
                config=td.DetectorFitConfig(epochs=200, batch_size=12, lr=0.01, flip=False),
            )
            td.write_detector_package(
                model,
                out / "T4",
                "fleetloop-t4-ros-test-detector",
                "memorised",
                "T4",
                "det-tiny",
                "yolo",
                sim_tasks.DETECTION_CLASSES,
                {"data": "the ROS test's 12 frames"},
                zoo.parameter_count(model.net),
            )
    return out


def test_detections_land_where_the_truth_says(ros, memorising_detector):
    from fleetloop_interfaces.msg import Detection2DArray, FrameResult
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from fleetloop_core.tasks import DetectionTask, load_cascade
    from fleetloop_core.uncertainty_detection import match_boxes
    from fleetloop_ros.messages import boxes_from_msg, core_result_from_msg
    from fleetloop_ros.perception import PerceptionNode

    data = _frames()
    node = PerceptionNode(
        namespace=ros.namespace,
        context=ros.context,
        parameter_overrides=[
            Parameter("models_dir", value=str(memorising_detector)),
            Parameter("escalation_tier", value=""),
            Parameter("image_qos", value="reliable"),
        ],
    )
    ros.executor.add_node(node)
    try:
        assert node.detects
        received = ros.collect(Detection2DArray, "detections")
        results = ros.collect(FrameResult, "frame_results")
        camera = ros.publisher(Image, "camera/image_raw")
        ros.wait_for_subscribers(camera)
        stamps = ros.stream(camera, list(data.images), rate_hz=20.0, count=len(data))
        ros.spin_until(
            lambda: len(received) >= len(data) and len(results) >= len(data),
            60,
            lambda: f"{len(data)} detection arrays ({len(received)} so far)",
        )
    finally:
        ros.executor.remove_node(node)
        node.destroy_node()

    reference = load_cascade(memorising_detector, "T4", None)
    by_stamp = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec: m for m in received}
    matched = total = 0
    for index, (stamp, truth) in enumerate(zip(stamps, data.truths)):
        msg = by_stamp[stamp]
        boxes, scores, classes = boxes_from_msg(msg)
        assert msg.class_names[3] == "dress" and msg.tier_used == "T4" and msg.models[0].version == "memorised"
        assert all(d.header.stamp == msg.header.stamp and d.id == str(i) for i, d in enumerate(msg.detections))
        # a field copy of what the core cascade returns for the same frame
        expected = reference.infer(data.images[index]).detections
        np.testing.assert_allclose(boxes, expected.boxes, atol=1e-3)
        np.testing.assert_allclose(scores, expected.scores, atol=1e-5)
        assert np.array_equal(classes, expected.classes)
        # in the image's pixels, where the truth says
        assert np.all(boxes[:, 0::2] <= WIDTH) and np.all(boxes[:, 1::2] <= HEIGHT) and np.all(boxes >= 0)
        matching = match_boxes(boxes, truth.boxes, 0.5)
        matched += int(np.sum(classes[matching.pairs[:, 0]] == truth.classes[matching.pairs[:, 1]]))
        total += len(truth.boxes)
        if not len(truth.boxes):
            assert len(boxes) == 0
    assert total >= 10 and matched >= 0.85 * total, (matched, total)
    # the frame summary beside the boxes: the best box's class, or none
    summary = {r.header.stamp.sec * 1_000_000_000 + r.header.stamp.nanosec: r for r in results}
    for stamp, truth in zip(stamps, data.truths):
        assert summary[stamp].labels[-1] == "none" and len(summary[stamp].labels) == 11
        # the frame's scores under the detection task's own part names, which a selector in another
        # process reads back (core_result_from_msg) and weighs with its detection weights
        back = core_result_from_msg(summary[stamp])
        assert back.task == "detection" and set(DetectionTask.score_parts) <= set(back.scores)
        assert "margin" not in back.scores and all(0.0 <= back.scores[p] <= 1.0 for p in DetectionTask.score_parts)
        if not len(truth.boxes):
            assert summary[stamp].label_name == "none"
