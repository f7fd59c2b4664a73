"""Detectors at the edge: both output layouts decoded from ONNX models built by our code, the layout check
at load (a deliberately mismatched manifest), letterbox round trips, OpenCV NMS, the detection cascade."""

import json
import shutil

import numpy as np
import pytest

from fleetloop_sim import sim
from fleetloop_core.box_decoding import Detections, cxcywh_to_xyxy, letterbox, letterbox_geometry, nms
from fleetloop_core.detection import DetectorModel
from fleetloop_core.detection_cascade import DetectionCascade, DetectionCascadeConfig
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.contracts.manifest import DetectionSpec, load_manifest, write_manifest
from fleetloop_core.tasks import load_model
from fleetloop_core import uncertainty_detection as dunc
from fleetloop_core.uncertainty_detection import pairwise_iou


@pytest.fixture(scope="module")
def frames():
    data = sim.field_test_set(sim.make_site(0), 12, seed=3, task="detection")
    return data


def _reference_nms(boxes, scores, classes, threshold, iou):
    """Plain greedy per-class NMS (the textbook loop) to check OpenCV's batched NMS against."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= threshold]
    kept = []
    for i in order:
        if all(classes[j] != classes[i] or pairwise_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= iou for j in kept):
            kept.append(i)
    return kept


def _export(detection_models, tmp_path, layout):
    """Export T2's weights in another layout as a package (same network, different output layout)."""
    import torch

    from fleetloop_models import zoo
    from fleetloop_models.trainers.detection import DetectorDeployable, write_detector_package

    manifest = load_manifest(detection_models["T2"])
    net = zoo.build(manifest.architecture, len(manifest.labels))
    model = DetectorDeployable(net, manifest.input.height, manifest.input.width)
    model.load_state_dict(torch.load(detection_models["T2"] / "weights.pt", weights_only=True))
    directory = tmp_path / layout
    write_detector_package(
        model,
        directory,
        manifest.name,
        manifest.version,
        "T2",
        manifest.architecture,
        layout,
        manifest.labels,
        {},
        manifest.parameters,
    )
    return directory


def test_every_layout_of_one_network_decodes_to_the_same_boxes(detection_models, tmp_path, frames):
    models = {
        layout: DetectorModel.load(_export(detection_models, tmp_path, layout), providers=("cpu",), warmup=0)
        for layout in ("yolo", "boxes_scores", "boxes_scores_labels")
    }
    assert models["yolo"].spec.layout == "yolo" and models["boxes_scores"].spec.labels_output is None
    assert models["boxes_scores_labels"].spec.labels_output == "labels"
    total = 0
    for image in frames.images:
        results = {name: m.detect(image, score_floor=0.01).detections for name, m in models.items()}
        base = results["yolo"]
        total += len(base)
        for name, other in results.items():
            assert len(other) == len(base), name
            np.testing.assert_allclose(other.boxes, base.boxes, atol=1e-3)
            np.testing.assert_allclose(other.scores, base.scores, atol=1e-5)
            assert np.array_equal(other.classes, base.classes)
        assert base.class_scores is not None and results["boxes_scores_labels"].class_scores is None
    assert total > 0


def test_decoding_matches_the_torch_network_and_textbook_nms(detection_models, frames):
    import torch

    from fleetloop_models import zoo
    from fleetloop_models.trainers import detection as td

    for tier in ("T4", "T3"):  # yolo and boxes_scores as built by the profile
        model = DetectorModel.load(detection_models[tier], providers=("cpu",), warmup=0)
        manifest = model.manifest
        net = td.DetectorDeployable(
            zoo.build(manifest.architecture, len(manifest.labels)),
            manifest.input.height,
            manifest.input.width,
        )
        net.load_state_dict(torch.load(detection_models[tier] / "weights.pt", weights_only=True))
        for image in frames.images[:6]:
            fitted, geometry = letterbox(image, manifest.input.height, manifest.input.width)
            scores, boxes = td.predict_dense(net, fitted[None])
            class_scores = scores[0].T
            best, classes = class_scores.max(axis=1), class_scores.argmax(axis=1)
            kept = _reference_nms(boxes[0], best, classes, 0.1, model.spec.nms_iou)
            got = model.detect(image, score_floor=0.1).detections
            assert len(got) == len(kept)
            order = np.argsort(-best[kept], kind="stable")
            expected = geometry.to_frame(boxes[0][np.asarray(kept, int)[order]]) if kept else np.zeros((0, 4))
            np.testing.assert_allclose(got.boxes, expected, atol=1e-2)
            assert np.all(got.boxes[:, 0::2] <= image.shape[1]) and np.all(got.boxes >= 0)


def test_a_mismatched_manifest_is_a_clear_error_at_load(detection_models, tmp_path):
    directory = tmp_path / "T4"
    shutil.copytree(detection_models["T4"], directory)
    manifest = load_manifest(directory)
    assert manifest.detection.layout == "yolo"
    write_manifest(manifest.model_copy(update={"detection": DetectionSpec(layout="boxes_scores")}), directory)
    with pytest.raises(ModelError) as error:
        DetectorModel.load(directory, providers=("cpu",), warmup=0)
    message = str(error.value)
    assert "declares detection layout 'boxes_scores'" in message and "no output 'boxes'" in message
    assert "output0 [" in message  # what the graph really has
    # right layout, wrong class count: the yolo output's second axis says so
    write_manifest(manifest.model_copy(update={"labels": manifest.labels[:-1]}), directory)
    with pytest.raises(ModelError, match=r"axis 1 is 14, not 4 \+ 9 classes"):
        DetectorModel.load(directory, providers=("cpu",), warmup=0)
    # a user's export with symbolic axes: the check runs the graph once to see the real shapes
    import onnx

    from fleetloop_core.contracts.manifest import file_entry

    graph = onnx.load(str(directory / "model.onnx"))
    for output in graph.graph.output:
        for dim in output.type.tensor_type.shape.dim[1:]:
            dim.dim_param = "dynamic"
    onnx.save(graph, str(directory / "model.onnx"))
    files = [file_entry(directory / "model.onnx", directory), *manifest.files[1:]]
    write_manifest(manifest.model_copy(update={"labels": manifest.labels[:-1], "files": files}), directory)
    with pytest.raises(ModelError, match=r"axis 1 is 14, not 4 \+ 9 classes"):
        DetectorModel.load(directory, providers=("cpu",), warmup=0)
    write_manifest(manifest.model_copy(update={"files": files}), directory)
    assert DetectorModel.load(directory, providers=("cpu",), warmup=0).spec.layout == "yolo"
    # per-box scores without a labels output cannot be decoded
    t3 = tmp_path / "T3"
    shutil.copytree(detection_models["T3"], t3)
    m3 = load_manifest(t3)
    write_manifest(m3.model_copy(update={"detection": m3.detection.model_copy(update={"scores": "embedding"})}), t3)
    with pytest.raises(ModelError, match="output 'embedding' is"):
        DetectorModel.load(t3, providers=("cpu",), warmup=0)


def test_tasks_are_not_mixed_up(detection_models, test_models):
    with pytest.raises(ModelError, match="task 'detection'"):
        TierModel.load(detection_models["T4"], providers=("cpu",), warmup=0)
    with pytest.raises(ModelError, match="not a detector"):
        DetectorModel.load(test_models["T4"], providers=("cpu",), warmup=0)
    assert isinstance(load_model(detection_models["T3"], providers=("cpu",), warmup=0), DetectorModel)
    assert type(load_model(test_models["T3"], providers=("cpu",), warmup=0)) is TierModel
    data = json.loads((detection_models["T4"] / "manifest.json").read_text())
    data.pop("detection")
    from fleetloop_core.contracts.manifest import parse_manifest

    with pytest.raises(ModelError, match="needs a detection block"):
        parse_manifest(data)


@pytest.mark.parametrize("size", [(120, 160), (128, 128), (480, 640), (100, 60)])
def test_letterbox_maps_boxes_back_to_frame_pixels(size):
    height, width = size
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    fitted, geometry = letterbox(frame, 64, 64)
    assert fitted.shape == (64, 64, 3)
    boxes = np.asarray([[0, 0, width, height], [width * 0.25, height * 0.1, width * 0.5, height * 0.9]], np.float32)
    inside = geometry.to_input(boxes)
    assert np.all(inside >= -1e-3) and np.all(inside <= 64 + 1e-3)
    np.testing.assert_allclose(geometry.to_frame(inside), boxes, atol=1e-3)
    # the padding is the pad value, the picture keeps its aspect ratio
    if width != height:
        assert abs(geometry.scale_x - geometry.scale_y) < 0.05
        assert geometry.pad_x >= 1 or geometry.pad_y >= 1
        assert np.all(fitted[0, 0] == 114)
    square = np.zeros((64, 64, 3), np.uint8)
    same, identity = letterbox(square, 64, 64)
    assert identity.identity and same is square


def test_opencv_nms_is_per_class_and_keeps_the_best():
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.asarray([0.9, 0.8, 0.7, 0.3], np.float32)
    classes = np.asarray([1, 1, 2, 1])
    keep = nms(boxes, scores, classes, 0.25, 0.5, 100)
    assert keep.tolist() == [0, 2, 3]  # the overlapping same-class box goes, the other class stays
    assert nms(boxes, scores, classes, 0.5, 0.5, 100).tolist() == [0, 2]
    assert nms(boxes, scores, classes, 0.25, 0.5, 1).tolist() == [0]
    np.testing.assert_allclose(cxcywh_to_xyxy(np.asarray([[5, 5, 10, 4]])), [[0, 3, 10, 7]])
    geometry = letterbox_geometry(120, 160, 64, 64)
    assert geometry.pad_y > 0 and geometry.pad_x == 0


def test_detection_cascade_escalates_and_scores_frames(detection_models, test_models, frames):
    t4 = DetectorModel.load(detection_models["T4"], providers=("cpu",), warmup=0)
    t3 = DetectorModel.load(detection_models["T3"], providers=("cpu",), warmup=0)
    always = DetectionCascade(
        t4, t3, DetectionCascadeConfig(escalate_above=0.0, latency_budget_ms=1e6, escalation_signal="band")
    )
    never = DetectionCascade(t4, t3, DetectionCascadeConfig(escalation_enabled=False))
    seen_escalation = False
    for image in frames.images:
        result = never.infer(image, stream="cam")
        assert result.tier_used == "T4" and not result.escalated and set(result.tier_detections) == {"T4"}
        # the detection task's own score parts (no classification names), then the figures behind them
        assert set(result.scores) == set(dunc.SCORE_PARTS) | {
            "band_count",
            "unmatched_boxes",
            "matched_iou",
            "class_conflicts",
            "boxes",
        }
        assert result.task == "detection" and all(0.0 <= result.scores[k] <= 1.0 for k in dunc.SCORE_PARTS)
        assert result.decode_latency_s["T4"] > 0 and result.inference_latency_s["T4"] > 0
        labels = never.frame_labels
        assert labels[-1] == "none" and result.label_name == labels[result.label]
        if len(result.detections):
            assert result.label == int(result.detections.classes[np.argmax(result.detections.scores)])
        else:
            assert result.label == len(labels) - 1
        escalated = always.infer(image, stream="cam")
        if escalated.escalated:
            seen_escalation = True
            assert escalated.tier_used == "T3" and set(escalated.tier_detections) == {"T4", "T3"}
            assert escalated.model_versions == {"T4": t4.version, "T3": t3.version}
    assert seen_escalation
    with pytest.raises(ModelError, match="cannot serve a detection cascade"):
        DetectionCascade(TierModel.load(test_models["T4"], providers=("cpu",), warmup=0), None)


def test_detections_rows_and_empty():
    empty = Detections.empty(3)
    assert len(empty) == 0 and empty.class_scores.shape == (0, 3) and empty.rows() == []
    one = Detections(np.asarray([[1.234, 2, 3, 4]], np.float32), np.asarray([0.5], np.float32), np.asarray([2]))
    assert one.rows() == [[1.23, 2.0, 3.0, 4.0, 0.5, 2]]
