"""Model manager: hot-swap between frames, shadow check, watchdog rollback, manual rollback, idempotent jobs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.model_packages import BAD_KINDS, Robot, bad_packages, manager_config as _config
from fleetloop_core.contracts.job_document import parse_job_document
from fleetloop_core.model_checks import (
    ShadowConfig,
    WatchdogConfig,
    WatchStats,
    shadow_verdict,
    watch_confidence_baseline,
    watchdog_verdict,
)
from fleetloop_core.model_manager import ModelManager, serving_package_dirs
from fleetloop_core.model_store import ModelStore, publish_package
from fleetloop_core.errors import ConfigError


@pytest.fixture(scope="module")
def frames():
    from fleetloop_sim import sim

    stream = sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=3)
    return [f.image for f in stream.frames(24)]


@pytest.fixture
def robot(tmp_path, test_models, signing_keys, frames):
    return Robot(tmp_path, test_models, signing_keys, frames)


def test_hot_swap_between_two_frames_with_shadow_check_and_watch(robot):
    with robot:
        outcome = robot.manager.submit("job-v2", robot.job(robot.package("v2"))).result(timeout=60)
        robot.serve(3)
    assert outcome.status == "SUCCEEDED", outcome.reason
    assert outcome.version == "v2" and robot.cascade.edge.version == "v2"
    assert float(outcome.details["shadow_agreement"]) == 1.0
    assert int(outcome.details["watch_frames"]) >= 15
    assert robot.errors == []
    versions = robot.versions()
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}  # one clean switch
    assert robot.kinds()[-7:] == [
        "job_received",
        "downloading",
        "installed",
        "loaded",
        "shadow_passed",
        "swapped",
        "watch_passed",
    ]
    details = outcome.status_details()
    assert all(isinstance(v, str) for v in details.values()) and details["serving_version"] == "v2"


@pytest.fixture(scope="module")
def aisle_frames(detection_models):
    """Detection frames of a busy aisle: each shows an item the serving detector finds (the test tiers are
    barely trained and find nothing on most frames; there a detector that never sees anything would agree)."""
    from fleetloop_sim import sim
    from fleetloop_core.tasks import load_model, task_of

    serving = load_model(detection_models["T4"], providers=["cpu"], warmup=0)
    images = sim.field_test_set(sim.make_site(0), 48, seed=3, task="detection").images
    found = [image for image in images if len(task_of(serving).run(serving, image).answer)]
    assert len(found) >= 6, f"the test detector finds items on {len(found)} of {len(images)} frames"
    return found


def test_a_detector_hot_swaps_through_the_control_plane_as_a_classifier_does(
    tmp_path, detection_models, signing_keys, aisle_frames
):
    """Signed detector packages via the job queue: shadow check by box matching, swap, watchdog, rollback."""
    from fleetloop_core.control_plane import LocalControlPlane, write_json_atomic
    from fleetloop_core.deploy_agent import DeployAgent

    robot = Robot(tmp_path, detection_models, signing_keys, aisle_frames)
    plane = LocalControlPlane(tmp_path / "jobs", "robot-0", poll_s=0.01)
    agent = DeployAgent(plane, robot.manager, poll_s=0.05)
    queued = iter(range(1, 100))

    def through_the_plane(job_id, document):
        write_json_atomic(
            tmp_path / "jobs" / "robot-0" / "queued" / f"{job_id}.json",
            {"jobId": job_id, "jobDocument": document, "queuedAt": next(queued), "status": "QUEUED"},
        )
        outcome = agent.run_once(5.0)
        assert outcome is not None and outcome.job_id == job_id
        return outcome

    with robot:
        swapped = through_the_plane("det-v2", robot.job(robot.package("v2")))
        blind = through_the_plane("det-blind", robot.job(robot.package("v-blind", fault="blind")))
        unsigned = through_the_plane("det-unsigned", robot.job(robot.package("v-unsigned", key=None)))
        robot.manager.config = _config(shadow=ShadowConfig(enabled=False))  # let a broken one reach serving
        nan = through_the_plane("det-nan", robot.job(robot.package("v-nan", fault="nan")))
        rollback = through_the_plane(
            "det-rollback",
            {"operation": "fleetloop.rollback_model", "model": {"name": robot.name, "version": "v1", "tier": "T4"}},
        )
        robot.serve(3)
    assert robot.errors == []
    assert swapped.status == "SUCCEEDED", swapped.reason
    assert float(swapped.details["shadow_agreement"]) == 1.0 and int(swapped.details["watch_frames"]) >= 15
    assert blind.status == "FAILED" and "agreement 0.000 with the current model" in blind.reason, blind.reason
    assert unsigned.status == "REJECTED" and "unsigned" in unsigned.reason
    assert nan.status == "FAILED" and "rolled back to v2" in nan.reason and "error rate" in nan.reason, nan.reason
    assert rollback.status == "SUCCEEDED" and robot.cascade.edge.version == "v1"
    versions = robot.versions()
    assert "v-blind" not in versions and "v-unsigned" not in versions
    first_v2, first_nan = versions.index("v2"), versions.index("v-nan")
    assert set(versions[:first_v2]) == {"v1"} and set(versions[first_v2:first_nan]) == {"v2"}
    assert versions[-1] == "v1"
    kinds = robot.kinds()
    assert kinds.count("swapped") == 2 and kinds.count("shadow_passed") == 1 and kinds.count("shadow_failed") == 1
    assert kinds.count("rolled_back") == 2 and "watch_passed" in kinds
    report = json.loads((tmp_path / "jobs" / "robot-0" / "status" / "det-v2.json").read_text())
    assert report["status"] == "SUCCEEDED" and report["statusDetails"]["serving_version"] == "v2"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_package_is_rejected_and_the_old_model_keeps_answering(kind, robot, signing_keys):
    build, _, message = bad_packages(signing_keys["keys"])[kind]
    package = build(robot.test_models["T4"], robot.tmp_path / kind)
    robot.serve(4)
    outcome = robot.manager.apply(f"job-{kind}", robot.job(package))
    assert outcome.status == "REJECTED"
    assert __import__("re").search(message, outcome.reason), outcome.reason
    assert outcome.version == "v1"
    result = robot.manager.infer(robot.frames[0])  # the old model still answers
    assert result.model_versions["T4"] == "v1" and np.isfinite(result.probs).all()
    assert robot.kinds()[-1] == "rejected"


@pytest.mark.parametrize("fault,reason", [("constant", "constant output"), ("nan", "non-finite outputs")])
def test_shadow_check_stops_a_broken_model_before_it_serves(fault, reason, robot):
    with robot:
        outcome = robot.manager.submit("job-bad", robot.job(robot.package("v-bad", fault=fault))).result(60)
    assert outcome.status == "FAILED" and reason in outcome.reason, outcome.reason
    assert "v-bad" not in robot.versions() and robot.cascade.edge.version == "v1"
    assert "shadow_failed" in robot.kinds() and "swapped" not in robot.kinds()


def test_watchdog_rolls_back_a_model_that_fails_after_the_swap(tmp_path, test_models, signing_keys, frames):
    config = _config(shadow=ShadowConfig(enabled=False))
    robot = Robot(tmp_path, test_models, signing_keys, frames, config)
    with robot:
        outcome = robot.manager.submit("job-nan", robot.job(robot.package("v-nan", fault="nan"))).result(60)
        robot.serve(3)
    assert outcome.status == "FAILED" and "rolled back to v1" in outcome.reason and "error rate" in outcome.reason
    assert robot.cascade.edge.version == "v1"
    versions = robot.versions()
    served_bad = [i for i, v in enumerate(versions) if v == "v-nan"]
    assert served_bad and versions[-1] == "v1"
    assert len(served_bad) <= config.watchdog.min_frames + 2  # caught within the first frames
    assert robot.kinds()[-1] == "rolled_back"


def test_manual_rollback_during_and_after_the_watch(tmp_path, test_models, signing_keys, frames):
    robot = Robot(tmp_path, test_models, signing_keys, frames, _config(watchdog=WatchdogConfig(enabled=False)))
    robot.serve(8)
    assert robot.manager.apply("job-v2", robot.job(robot.package("v2"))).status == "SUCCEEDED"
    assert robot.cascade.edge.version == "v2"
    outcome = robot.manager.rollback("edge", reason="operator request")
    assert outcome.status == "SUCCEEDED" and robot.cascade.edge.version == "v1"  # reloaded from the store
    assert float(outcome.details["rollback_seconds"]) > 0
    # a rollback job from the cloud to a version that is serving is a no-op
    job = {"operation": "fleetloop.rollback_model", "model": {"name": robot.name, "version": "v1", "tier": "T4"}}
    assert robot.manager.apply("job-rb", job).details == {"already_serving": "true"}
    assert robot.manager.infer(frames[0]).model_versions["T4"] == "v1"


def test_a_job_received_twice_is_applied_once_even_after_a_restart(robot, signing_keys):
    job = robot.job(robot.package("v2"))
    with robot:
        first = robot.manager.apply("job-1", job)
        second = robot.manager.apply("job-1", job)
    assert first.status == second.status == "SUCCEEDED"
    assert robot.kinds().count("swapped") == 1 and "duplicate_job" in robot.kinds()
    restarted = ModelManager(robot.cascade, ModelStore(robot.store.root, signing_keys["trusted"]), _config())
    assert restarted.apply("job-1", job).status == "SUCCEEDED"
    assert [e.kind for e in restarted.events()] == ["duplicate_job"]
    assert serving_package_dirs(robot.store)["edge"].endswith("/v2")  # what a restart would boot


def test_a_job_for_the_serving_version_succeeds_without_a_reload(robot):
    robot.serve(8)
    before = robot.cascade.edge
    outcome = robot.manager.apply("job-same", robot.job(robot.package("v1")))
    assert outcome.status == "SUCCEEDED" and outcome.details == {"already_serving": "true"}
    assert robot.cascade.edge is before and "downloading" not in robot.kinds()


def test_the_same_job_submitted_twice_concurrently_runs_once(robot):
    with robot:
        job = robot.job(robot.package("v2"))
        a = robot.manager.submit("job-x", job)
        b = robot.manager.submit("job-x", job)
        assert a is b
        assert a.result(60).status == "SUCCEEDED"
    assert robot.kinds().count("swapped") == 1


def test_bad_job_documents_are_rejected_naming_the_field(robot):
    outcome = robot.manager.apply(
        "job-nopkg", {"operation": "fleetloop.deploy_model", "model": {"name": "x", "version": "2", "tier": "T4"}}
    )
    assert outcome.status == "REJECTED" and "needs a package" in outcome.reason
    outcome = robot.manager.apply(
        "job-t2",
        {
            "operation": "fleetloop.deploy_model",
            "package": {"path": "/x"},
            "model": {"name": "x", "version": "2", "tier": "T2"},
        },
    )
    assert outcome.status == "REJECTED" and "model.tier T2 is not served on robots" in outcome.reason
    with pytest.raises(Exception, match="jobDocument.operation"):
        parse_job_document({"operation": "reboot", "model": {"name": "x", "version": "1", "tier": "T4"}}, "j")
    outcome = robot.manager.apply(
        "job-missing",
        {
            "operation": "fleetloop.deploy_model",
            "model": {"name": robot.name, "version": "9", "tier": "T4"},
            "package": {"path": str(robot.tmp_path / "nowhere")},
        },
    )
    assert outcome.status == "REJECTED" and "nowhere" in outcome.reason


def test_unknown_keys_outside_our_fields_are_ignored_inside_them_rejected(caplog):
    """A job template or another tool may add top-level keys (AWS adds none, but templates do)."""
    model = {"name": "x", "version": "1", "tier": "T4"}
    with caplog.at_level("INFO", logger="fleetloop_core.model_manager"):
        document = parse_job_document(
            {
                "operation": "fleetloop.rollback_model",
                "model": model,
                "jobIndex": 7,
                "templateArn": "arn:aws:iot:us-east-1:123456789012:jobtemplate/t",
            },
            "j1",
        )
    assert document.model.version == "1"
    assert "ignoring jobDocument keys outside FleetLoop's operation: jobIndex, templateArn" in caplog.text
    with pytest.raises(Exception, match="jobDocument.model.revision"):
        parse_job_document({"operation": "fleetloop.rollback_model", "model": {**model, "revision": 2}}, "j2")
    with pytest.raises(Exception, match="jobDocument.package.mirror"):
        parse_job_document(
            {
                "operation": "fleetloop.deploy_model",
                "model": model,
                "package": {"path": "/x", "mirror": "s3://elsewhere"},
            },
            "j3",
        )


def test_deploy_from_an_object_store_and_status_report(robot):
    bucket = f"file://{robot.tmp_path / 'bucket'}"
    prefix = publish_package(robot.package("v3"), bucket)
    robot.serve(8)
    job = {
        "operation": "fleetloop.deploy_model",
        "model": {"name": robot.name, "version": "v3", "tier": "T4"},
        "package": {"store": bucket, "prefix": prefix},
    }
    with robot:
        assert robot.manager.submit("job-s3", job).result(60).status == "SUCCEEDED"
    status = robot.manager.status()
    assert status.serving == {"edge": "v3"} and status.state["edge"] == "serving" and status.watching is None
    assert status.last_outcome["job_id"] == "job-s3"


def test_a_less_confident_model_that_behaves_as_in_its_shadow_check_keeps_serving(
    tmp_path, test_models, signing_keys, frames
):
    # the same answers at lower confidence: the watchdog compares with the candidate's own shadow figure,
    # not with its more confident predecessor (a better-calibrated model is no fault). The test tiers are
    # barely above uniform, so the watchdog's ratio is set high enough for the difference to count.
    config = _config(
        watchdog=WatchdogConfig(min_frames=4, window_frames=12, min_confidence_ratio=0.95, confidence_min_frames=4)
    )
    robot = Robot(tmp_path, test_models, signing_keys, frames, config)
    with robot:
        outcome = robot.manager.submit("job-soft", robot.job(robot.package("v-soft", fault="soft:0.05"))).result(60)
    assert outcome.status == "SUCCEEDED", outcome.reason
    shadow_ratio = float(outcome.details["shadow_confidence_mean"]) / float(
        outcome.details["shadow_current_confidence_mean"]
    )
    assert shadow_ratio < 0.95  # against the old model's confidence the watchdog would roll back
    assert robot.cascade.edge.version == "v-soft"


def test_shadow_frames_are_one_of_every_stride_frames(tmp_path, test_models, signing_keys, frames):
    robot = Robot(tmp_path, test_models, signing_keys, frames, _config(ring_buffer_frames=4, ring_stride_frames=3))
    distinct = [np.full_like(frames[0], i) for i in range(20)]
    for frame in distinct:
        robot.manager.observe(frame, None)
    assert robot.manager.buffered_frames() == 4
    kept = [int(f[0, 0, 0]) for f in robot.manager._ring]
    assert kept == [6, 9, 12, 15, 18][-4:]  # frames 0, 3, 6, ... kept; the last four of them


def test_shadow_verdict_thresholds():
    rng = np.random.default_rng(0)
    current = rng.dirichlet(np.ones(5), size=20).astype(np.float32)
    fast = [0.001] * 20
    config = ShadowConfig(min_agreement=0.9)
    assert shadow_verdict(current, current.copy(), fast, fast, config).passed
    # agreement where the current model was sure: disagreeing on its unsure frames is what a better model does
    sure = current.max(axis=1) >= 0.5
    relabel = current.copy()
    relabel[~sure] = relabel[~sure][:, ::-1]  # other answers where it was unsure
    changed = (relabel.argmax(axis=1) != current.argmax(axis=1)).mean()
    assert changed > 0.1 and not shadow_verdict(current, relabel, fast, fast, ShadowConfig(min_agreement=0.95)).passed
    on_sure = ShadowConfig(min_agreement=0.95, agreement_min_confidence=0.5, min_frames=2)
    report = shadow_verdict(current, relabel, fast, fast, on_sure)
    assert report.passed and report.figures["agreement_where_sure"] == 1.0
    assert report.figures["agreement_frames"] == sure.sum() and report.figures["agreement"] == 1 - changed
    swapped_sure = current.copy()
    swapped_sure[sure] = swapped_sure[sure][:, ::-1]
    assert "frames it was sure of" in shadow_verdict(current, swapped_sure, fast, fast, on_sure).reasons[0]
    too_few = ShadowConfig(min_agreement=0.95, agreement_min_confidence=0.5, min_frames=int(sure.sum()) + 1)
    assert shadow_verdict(current, swapped_sure, fast, fast, too_few).passed  # too little evidence to judge
    flipped = current[:, ::-1].copy()
    report = shadow_verdict(current, flipped, fast, fast, config)
    assert not report.passed and "agreement" in report.reasons[0]
    slow = shadow_verdict(current, current, fast, [0.080] * 20, config)
    assert not slow.passed and any("latency p99 80.00 ms" in r for r in slow.reasons)
    busy = shadow_verdict(current, current, [0.060] * 20, [0.080] * 20, config)  # both slow: a busy CPU
    assert busy.passed, busy.reasons
    ratio = shadow_verdict(current, current, [0.004] * 20, [0.0125] * 20, config)
    assert not ratio.passed and "median latency 12.50 ms" in ratio.reasons[0]
    assert "3.0 x the current model's 4.00 ms" in ratio.reasons[0]
    noise = shadow_verdict(current, current, [0.0005] * 20, [0.002] * 20, config)  # 4x but under the floor
    assert noise.passed
    hiccup = shadow_verdict(current, current, [0.004] * 20, [0.004] * 19 + [0.030], config)  # one slow frame
    assert hiccup.passed and hiccup.figures["latency_p99_ms"] > 20
    constant = np.tile(current[:1], (20, 1))
    assert "constant output" in shadow_verdict(current, constant, fast, fast, ShadowConfig(min_agreement=0)).reasons[0]
    # frames that all look the same: a constant answer is then no evidence of a broken model
    assert shadow_verdict(constant, constant, fast, fast, config).passed
    unsure = 0.05 * current + 0.95 / 5  # the same answers at a fraction of the confidence
    report = shadow_verdict(current, unsure, fast, fast, config)
    assert not report.passed and "mean confidence" in report.reasons[0]
    assert report.figures["confidence_mean"] < 0.5 * report.figures["current_confidence_mean"]


def test_the_watch_expects_of_an_escalation_model_what_its_frames_allow():
    # the edge role serves every frame: the candidate's own shadow figure
    assert watch_confidence_baseline("edge", 0.72, 0.76, [0.70] * 30) == 0.72
    # the escalation role serves the frames the edge model was unsure of: the previous T3 was at 0.30 there
    # against 0.76 on the shadow frames, so a candidate at 0.72 in its shadow check is expected near 0.28
    expected = watch_confidence_baseline("escalation", 0.72, 0.76, [0.30] * 30)
    assert expected == pytest.approx(0.72 * 0.30 / 0.76)
    # the demo's rolled-back T3 (served at 0.298) is no collapse against that
    config = WatchdogConfig(min_frames=4, confidence_min_frames=10, min_confidence_ratio=0.5)
    assert watchdog_verdict(WatchStats([0.001] * 200, [0.298] * 200, 0, 200), 0.001, expected, config) is None
    # ... a real one still is
    assert "confidence collapsed" in watchdog_verdict(
        WatchStats([0.001] * 200, [0.1] * 200, 0, 200), 0.001, expected, config
    )
    # no shadow check: the previous model's served mean; nothing served before: unknown
    assert watch_confidence_baseline("escalation", float("nan"), float("nan"), [0.4, 0.6]) == pytest.approx(0.5)
    assert np.isnan(watch_confidence_baseline("edge", float("nan"), float("nan"), []))


def test_after_a_shadow_check_the_watch_does_not_judge_a_before_after_latency_ratio(
    robot, tmp_path, test_models, signing_keys, frames
):
    # the shadow check compared both models on the same frames; a before/after ratio measures the machine's load
    with robot:
        assert robot.manager.submit("job-v2", robot.job(robot.package("v2"))).result(60).status == "SUCCEEDED"
    assert np.isnan(robot.manager._watch.baseline_latency_s)
    unshadowed = Robot(tmp_path / "b", test_models, signing_keys, frames, _config(shadow=ShadowConfig(enabled=False)))
    with unshadowed:
        assert unshadowed.manager.submit("job-v2", unshadowed.job(unshadowed.package("v2"))).result(60).status == (
            "SUCCEEDED"
        )
    assert (
        np.isfinite(unshadowed.manager._watch.baseline_latency_s) and unshadowed.manager._watch.baseline_latency_s > 0
    )


def test_watchdog_verdict_limits():
    config = WatchdogConfig(
        min_frames=4, max_error_rate=0.2, min_confidence_ratio=0.5, max_latency_ms=20.0, confidence_min_frames=10
    )
    ok = WatchStats([0.001] * 10, [0.8] * 10, 0, 10)
    assert watchdog_verdict(ok, 0.001, 0.8, config) is None
    assert watchdog_verdict(WatchStats([], [], 3, 3), 0.001, 0.8, config) is None  # too few frames
    assert "error rate" in watchdog_verdict(WatchStats([0.001] * 7, [0.8] * 7, 3, 10), 0.001, 0.8, config)
    assert "confidence collapsed" in watchdog_verdict(WatchStats([0.001] * 10, [0.3] * 10, 0, 10), 0.001, 0.8, config)
    # confidence depends on the scene: fewer frames than confidence_min_frames are no evidence of a collapse
    assert watchdog_verdict(WatchStats([0.001] * 9, [0.3] * 9, 0, 9), 0.001, 0.8, config) is None
    assert "latency p95" in watchdog_verdict(WatchStats([0.030] * 10, [0.8] * 10, 0, 10), 0.001, 0.8, config)
    assert (
        watchdog_verdict(WatchStats([0.030] * 10, [0.8] * 10, 0, 10), 0.025, 0.8, config, baseline_p95_s=0.028) is None
    )  # it was over the limit before: busy CPU
    assert "median latency" in watchdog_verdict(WatchStats([0.010] * 10, [0.8] * 10, 0, 10), 0.002, 0.8, config)


def test_config_file_loads_and_bad_values_are_named(repo_root, tmp_path):
    from fleetloop_core.model_manager import load_manager_config

    assert load_manager_config(str(repo_root / "config" / "model_manager.yaml")).shadow.min_agreement == 0.7
    bad = tmp_path / "mm.yaml"
    bad.write_text("model_manager:\n  shadow:\n    min_agreement: 1.5\n")
    with pytest.raises(ConfigError, match=r"model_manager.shadow.min_agreement.*1.5"):
        load_manager_config(str(bad))
    bad.write_text("model_manager:\n  watchdog:\n    window_s: 60\n    unjudged_after_s: 30\n")
    with pytest.raises(ConfigError, match=r"unjudged_after_s \(30.0\) must be >= window_s \(60.0\)"):
        load_manager_config(str(bad))


def test_a_watch_ends_on_time_once_judged_and_short_of_frames_only_after_its_wait(test_models):
    from fleetloop_core.inference import TierModel
    from fleetloop_core.model_watch import start_watch

    config = WatchdogConfig(window_frames=300, window_s=60.0, min_frames=30, unjudged_after_s=300.0)
    model = TierModel.load(test_models["T4"], providers=("cpu",), warmup=0)
    watch = start_watch("job", "edge", model, model, [], float("nan"), float("nan"), now=1000.0)
    assert not watch.time_up(config, 1059.0)
    assert not watch.time_up(config, 1061.0)  # past its window with 0 frames: it waits for them
    assert watch.time_up(config, 1300.0) and not watch.judged(config)  # its wait is over: passes unjudged
    watch.stats.frames = 30
    assert not watch.time_up(config, 1059.0) and watch.time_up(config, 1060.0)  # judged: its window ends it


def test_the_manager_shortens_the_gil_switch_interval_when_configured(tmp_path, test_models, signing_keys, frames):
    import sys

    before = sys.getswitchinterval()
    try:
        Robot(tmp_path, test_models, signing_keys, frames, _config(gil_switch_interval_s=0.0005))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_a_t3_package_goes_to_the_escalation_role(robot, tmp_path):
    """With no T3 serving yet there is nothing to compare with: the shadow check judges T3 alone."""
    from fixtures.model_packages import make_version
    from fleetloop_core.contracts.manifest import load_manifest

    package = make_version(robot.test_models["T3"], tmp_path / "t3-v2", "t3-v2", robot.keys["fleet"][0])
    name = load_manifest(package).name
    job = {
        "operation": "fleetloop.deploy_model",
        "model": {"name": name, "version": "t3-v2", "tier": "T3"},
        "package": {"path": str(package)},
    }
    with robot:
        outcome = robot.manager.submit("job-t3", job).result(60)
    assert outcome.status == "SUCCEEDED" and outcome.role == "escalation", outcome.reason
    assert robot.cascade.escalation.version == "t3-v2" and robot.cascade.edge.version == "v1"
    assert robot.manager.status().serving == {"edge": "v1", "escalation": "t3-v2"}
