"""Detection frames through the robot's selection path: the policy registry weighs detection scores, kept
frames carry boxes in their sidecars, and replay (with its CSV and plots) works on a detection bag."""

import shutil

import pytest

from fleetloop_sim import sim
from fleetloop_core.detection import DetectorModel
from fleetloop_core.detection_cascade import DetectionCascade, DetectionCascadeConfig
from fleetloop_core.contracts.manifest import load_manifest, write_manifest
from fleetloop_core.bags import write_image_bag
from fleetloop_core.replay import replay
from fleetloop_core.replay_outputs import write_outputs
from fleetloop_core.selection import Selector
from fleetloop_core.selection_decision import value_score
from fleetloop_core.tasks import DetectionTask
from fleetloop_core.selection_config import SelectionConfig
from fleetloop_core.selection_policies import POLICIES
from fleetloop_core.contracts.sidecar import parse_sidecar


def _low_threshold_copy(source, target, threshold=0.02):
    """A copy of a detector whose manifest keeps boxes down to ``threshold`` (the test tiers are barely trained)."""
    shutil.copytree(source, target)
    manifest = load_manifest(target)
    write_manifest(
        manifest.model_copy(update={"detection": manifest.detection.model_copy(update={"score_threshold": threshold})}),
        target,
    )
    return target


@pytest.fixture(scope="module")
def cascade(detection_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    t4 = DetectorModel.load(_low_threshold_copy(detection_models["T4"], root / "T4"), providers=("cpu",), warmup=0)
    t3 = DetectorModel.load(_low_threshold_copy(detection_models["T3"], root / "T3"), providers=("cpu",), warmup=0)
    return DetectionCascade(t4, t3, DetectionCascadeConfig(escalate_above=0.2, latency_budget_ms=1e4))


@pytest.mark.parametrize("policy", ["threshold", "adaptive_budget", "novelty", "class_quota"])
def test_every_policy_decides_on_detection_frames(cascade, policy):
    stream = sim.CameraStream(sim.make_site(1), "robot-d", seed=2, task="detection")
    config = SelectionConfig.model_validate(
        {
            "policy": {
                "name": policy,
                "params": {"threshold": 0.2}
                if policy in ("threshold", "novelty", "class_quota")
                else {"warmup_frames": 16, "window": 64},
            },
            "budget": {"frames_per_hour": 36000},
            "random_fraction": 0.0,
        }
    )
    selector = Selector(config, "robot-d", cascade.frame_labels)
    kept = 0
    for frame in stream.frames(40):
        result = cascade.infer(frame.image, stream=f"front-{policy}")  # fresh novelty memory per case
        decision = selector.offer(
            frame.image,
            result,
            frame.stamp_ns,
            stream="front",
            simulation={"label": frame.truth.label, "boxes": frame.truth.rows()},
        )
        # the value score is the selector's weighted mean of the detection parts, in [0, 1]
        assert result.task == "detection" and set(DetectionTask.score_parts) <= set(result.scores)
        assert decision.score == pytest.approx(value_score(result.scores, config.weights.detection), abs=1e-6)
        assert 0.0 <= decision.score <= 1.0 and decision.policy == policy
        if decision.keep:
            kept += 1
            sidecar = parse_sidecar(decision.record.encode().sidecar.to_json())  # the JSON that travels
            assert set(sidecar.detections) <= {"T4", "T3"} and "T4" in sidecar.detections
            rows = sidecar.detections[result.tier_used]
            assert len(rows) == len(result.detections)
            assert all(len(r) == 6 and 0 <= r[5] < 10 for r in rows)
            assert sidecar.simulation.boxes == frame.truth.rows()
            assert sidecar.labels[-1] == "none" and sidecar.prediction == result.label
    assert kept > 0 or policy == "class_quota"
    assert policy in POLICIES


def test_replay_of_a_detection_bag(detection_models, tmp_path):
    stream = sim.CameraStream(sim.make_site(0), "robot_0", seed=5, start_ns=1_700_000_000 * 10**9, task="detection")
    frames = list(stream.frames(60))
    bag = tmp_path / "detections.mcap"
    write_image_bag(bag, [("/robot_0/front/image_raw", f.stamp_ns, f.image) for f in frames])
    models = tmp_path / "models"
    for tier in ("T3", "T4"):
        _low_threshold_copy(detection_models[tier], models / tier)
    base = SelectionConfig.model_validate(
        {"policy": {"name": "threshold", "params": {"threshold": 0.3}}, "random_fraction": 0.0}
    )
    report = replay(bag, models, base, sweeps=["policy.params.threshold=0.1,0.5"], progress=False)
    assert report.frames == 60 and report.labels[-1] == "none" and len(report.labels) == 11
    low, high = report.results
    assert low.kept >= high.kept and low.kept > 0
    assert sum(low.kept_by_class.values()) == low.kept
    outputs = write_outputs(report, tmp_path / "out")
    names = {p.name for p in outputs}
    assert {"replay.csv", "kept_frames.csv", "score_histogram.png"} <= names
    assert all(p.stat().st_size > 0 for p in outputs)
    assert "kept_none" in (tmp_path / "out" / "replay.csv").read_text().splitlines()[0]
