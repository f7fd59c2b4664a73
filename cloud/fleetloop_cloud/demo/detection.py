"""The closed loop for detectors (what ``fleetloop demo --task detection`` runs), set by the ``detection``
section of config/demo.yaml.

:func:`run_detection_demo` drives robots of the detection world in-process with the robot stack's
core objects (:class:`~fleetloop_cloud.demo.fleet.InProcessRobot`, the classification demo's) and a
:class:`~fleetloop_cloud.loop.CloudLoop` (detection) per arm. Robots are provisioned with signed
round-0 detectors; each round's approved detectors are signed by the registry and rolled out through
the control plane (canary first), and every robot installs, shadow-checks, swaps, watches and can
roll them back exactly as a classifier robot does, while it streams the next round. Arms, on the
same camera streams and budgets:

* ``loop``: the robots' selector (``config/selection.yaml``: adaptive budget over the detection
  uncertainty scores) picks what to upload; the detection loop labels and trains;
* ``random``: the same robots upload a uniformly random sample of each round's frames, as many per
  robot as the loop's robot kept; the same detection loop runs on them;
* ``upload-all``: every frame with its true boxes (the data upper bound); T4 is retrained each
  round on everything so far with the same recipe budget.

Per round it records each arm's uploads, box labels (auto / human), human seconds and dollars with
box-level costs, the labeling figures against the manual baseline (boxing every accepted frame from
scratch), the audit, and **mAP@0.5 and mAP@0.5:0.95 per round** of the robots' T4 and the cloud's
T2 on the held-out field detection test set (per site too).
:func:`~fleetloop_cloud.demo.detection_report.write_report` writes ``report.json``, ``report.md``
(headline table) and ``map_per_round.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop_core.config import default_config_path, read_yaml, repo_root
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.errors import ConfigError

from fleetloop_cloud.box_evaluate import BoxTestSet
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.demo.arms import RandomUploadFleet
from fleetloop_cloud.demo.config import DetectionDemoConfig, RobotOverrides, load_demo_config
from fleetloop_cloud.demo.detection_arms import DetectionUploadAll, field_test_set, map_scores
from fleetloop_cloud.demo.detection_report import headline, write_report
from fleetloop_cloud.demo.fleet import FleetSettings, InProcessRobot, RobotRound, RobotSpec, robot_specs
from fleetloop_cloud.demo.provision import roll_out, sign_round0_packages, signing_keys
from fleetloop_cloud.demo.rollout_gate import RolloutGate, roll_out_in_background
from fleetloop_cloud.job_service_local import LocalDirJobs
from fleetloop_cloud.loop import CloudLoop

log = logging.getLogger("fleetloop.demo.detection")

ARMS = ("loop", "random", "upload-all")


@dataclass
class DetectionArm:
    """One robot-driven arm (loop or random): its cloud loop, job queue, robots and rounds."""

    name: str
    loop: CloudLoop
    jobs: LocalDirJobs
    robots: list[InProcessRobot] = field(default_factory=list)
    gate: RolloutGate = field(default_factory=RolloutGate)  # the last round's rollouts swap in before a round


def locate_detectors(models: Path | None, profile: str) -> Path:
    """Return a directory with detector tiers T1..T4, building ``profile`` when it is missing."""
    from fleetloop_models.modelbuild import build_reference_models

    if models is not None and (models / "T4" / "manifest.json").is_file():
        task = load_manifest(models / "T4").task
        if task != "detection":
            raise ConfigError(f"{models / 'T4'}: a {task} model; the detection demo needs detectors (task detection)")
        return models
    target = models or repo_root() / ".cache" / (
        "models-detection-test" if profile == "detection-test" else "models-detection"
    )
    build_reference_models(target, profile_name=profile, progress=True)
    return target


def _cloud_config(out: Path, arm: str, models: Path, settings: DetectionDemoConfig, keys: tuple[Path, Path]) -> dict:
    """Return config/cloud.yaml with the arm's store, keys and the demo's recipe and gate settings."""
    data = read_yaml(default_config_path("cloud.yaml"))
    store = f"file://{out / arm / 'store'}"
    data.update(
        store=store,
        work_dir=str(out / arm / "work"),
        models=str(models),
        world_seed=settings.seed,
        cost_model=str(default_config_path("cost_model.yaml")),
    )
    registry = {"backend": "local", "uri": store, "signing_key": str(keys[0]), "trusted_keys": str(keys[1])}
    data["registry"] = {**data.get("registry", {}), **registry}
    data["review"] = {
        **data.get("review", {}),
        "annotator": "simulated",
        "calibration_sample": settings.calibration_sample,
    }
    data["training"] = {
        **data.get("training", {}),
        "backend": "local",
        "teacher_epochs": settings.teacher_epochs,
        "distil_epochs": settings.distil_epochs,
        "warm_start_epochs": settings.warm_start_epochs,
        "lab_replay_frames": settings.lab_replay_frames,
        "batch_size": 32,
    }
    data["evaluation"] = {
        **data.get("evaluation", {}),
        "test_set": "simulated-field",
        "frames_per_site": settings.test_frames_per_site,
        "min_gain": 0.0,
        "min_support": 10,
        **settings.gate,
    }
    return data


def _start_arms(
    out: Path,
    settings: DetectionDemoConfig,
    models: Path,
    specs: list[RobotSpec],
    robot: RobotOverrides,
    progress: bool,
) -> dict[str, DetectionArm]:
    """Return the loop and random arms: keys, signed round-0 detectors, a cloud loop and started robots each."""
    selection = read_yaml(default_config_path("selection.yaml"))
    selection["budget"] = {**selection.get("budget", {}), "frames_per_hour": settings.frames_per_hour}
    keys = signing_keys(out)
    round0 = sign_round0_packages(models, out / "round0", keys[0].read_bytes())
    arms: dict[str, DetectionArm] = {}
    for name, override in (("loop", None), ("random", RandomUploadFleet.KEEP_ALL)):
        loop = CloudLoop(
            cloud_config_from_dict(_cloud_config(out, name, models, settings, keys)),
            progress=progress,
            task="detection",
        )
        arms[name] = DetectionArm(name, loop, LocalDirJobs(out / name / "jobs"))
        fleet = FleetSettings(
            root=out / name / "robots",
            store_uri=loop.config.store,
            jobs_uri=f"file://{out / name / 'jobs'}",
            packages=round0,
            keys_dir=keys[1],
            selection=selection,
            manager_overrides=robot.manager_overrides(in_process=True),
            cascade_overrides=robot.cascade_overrides(),
            queue_synchronous="normal",
        )
        arms[name].robots = [
            InProcessRobot(spec, fleet, selection_override=override, gate=arms[name].gate) for spec in specs
        ]
        for robot_stack in arms[name].robots:
            robot_stack.start()
    return arms


def _stream(arms: dict[str, DetectionArm], frames: int, rng: np.random.Generator) -> dict[str, list[RobotRound]]:
    """Stream a round on both fleets; each random robot uploads as many random frames as the loop's kept."""
    loop_rounds = [robot.stream(frames) for robot in arms["loop"].robots]
    random_rounds = []
    for robot, done in zip(arms["random"].robots, loop_rounds):
        chosen = set(rng.choice(frames, size=min(done.kept, frames), replace=False).tolist())
        random_rounds.append(robot.stream(frames, offer_only=chosen))
    return {"loop": loop_rounds, "random": random_rounds}


def _cloud_round(arm: DetectionArm, number: int, robots: list[RobotRound], test: BoxTestSet) -> tuple[dict, list[dict]]:
    """Run the arm's cloud round; return its record and the registry entries to roll out."""
    summary = arm.loop.run_round().to_dict()
    production = {tier: arm.loop.production(tier) for tier in ("T2", "T3", "T4")}
    record = {
        "round": number,
        "robots": [r.to_dict() for r in robots],
        "uploaded": sum(r.uploaded for r in robots),
        "labels": summary["labels"],
        "human": {k: summary["human"][k] for k in ("seconds", "dollars", "by_purpose", "box_edits")},
        "figures": summary["figures"],
        "audit": summary["audit"]["final"],
        "routing_threshold": (summary["routing"]["threshold"] or {}).get("value"),
        "promoted": {t: m["promoted"] for t, m in summary["models"].items()},
        "versions": {t: load_manifest(p).version for t, p in production.items()},
        "map": {"T4": map_scores(production["T4"], test), "T2": map_scores(production["T2"], test)},
        "simulation_only": summary["simulation_only"],
        "deploys": [],
    }
    log.info("%s round %d: %s", arm.name, number, json.dumps(record["map"]))
    return record, summary.get("registry", [])


def _deploy_in_background(arm: DetectionArm, entries: list[dict], job_prefix: str, record: dict) -> threading.Thread:
    """Start rolling out the round's approved detectors (canary first); the records land in ``record``."""
    robots = [r.spec.robot_id for r in arm.robots]
    return roll_out_in_background(
        arm.gate,
        lambda on_record: roll_out(arm.jobs, arm.loop, robots, entries, job_prefix, on_record),
        entries,
        lambda records: record.__setitem__("deploys", records),
        f"deploy-{job_prefix}",
    )


def _run_rounds(
    out: Path,
    settings: DetectionDemoConfig,
    arms: dict[str, DetectionArm],
    upload_all: DetectionUploadAll,
    test: BoxTestSet,
    records: dict[str, list[dict]],
    progress: bool,
) -> None:
    """Run the rounds: robots stream while the last round's rollouts finish, then each arm's cloud round."""
    rng = np.random.default_rng(settings.seed)
    deploys: list[threading.Thread] = []
    try:
        for number in range(1, settings.rounds + 1):
            streamed = _stream(arms, settings.frames_per_robot, rng)
            for thread in deploys:  # the previous round's rollouts ended while the robots streamed
                thread.join()
            deploys = []
            for name, arm in arms.items():
                record, entries = _cloud_round(arm, number, streamed[name], test)
                records[name].append(record)
                deploys.append(_deploy_in_background(arm, entries, f"{name}-r{number}", record))
            total = upload_all.add_round(settings.frames_per_robot)
            t4 = upload_all.train(out / "upload-all", number, progress)
            records["upload-all"].append({"round": number, "uploaded": total, "map": {"T4": map_scores(t4, test)}})
    finally:
        for thread in deploys:  # the last rollouts end with the watch window (no frames come any more)
            thread.join()


def run_detection_demo(
    out: Path,
    settings: DetectionDemoConfig | None = None,
    models: Path | None = None,
    progress: bool = True,
    robot: RobotOverrides | None = None,
) -> dict:
    """Run the detection closed loop with its baselines; write the report into ``out``; return it.

    ``settings`` default to config/demo.yaml's ``detection`` section, ``robot`` (the robots' model manager
    overrides) to its ``robot`` section.
    """
    if settings is None or robot is None:
        defaults = load_demo_config()
        settings, robot = settings or defaults.detection, robot or defaults.robot
    started = time.perf_counter()
    out = Path(out).resolve()  # store URIs are file:///absolute
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    models = locate_detectors(models, settings.models_profile)
    specs = robot_specs(settings.robots, settings.seed, task="detection")
    sites = [spec.site for spec in specs]
    test = field_test_set(sites, settings.test_frames_per_site, settings.seed)
    arms = _start_arms(out, settings, models, specs, robot, progress)
    upload_all = DetectionUploadAll(specs, models, settings)
    baseline = {"T4": map_scores(models / "T4", test), "T2": map_scores(models / "T2", test)}
    records: dict[str, list[dict[str, Any]]] = {
        name: [{"round": 0, "map": {k: v for k, v in baseline.items() if name != "upload-all" or k == "T4"}}]
        for name in ARMS
    }
    try:
        _run_rounds(out, settings, arms, upload_all, test, records, progress)
    finally:
        for arm in arms.values():
            for robot_stack in arm.robots:
                robot_stack.stop()
            arm.loop.close()
    report = {
        "task": "detection",
        "settings": settings.model_dump(),
        "models": str(models),
        "serving": {
            name: {r.spec.robot_id: r.cascade.model_versions() for r in arm.robots} for name, arm in arms.items()
        },
        "sites": [s.name for s in sites],
        "test_frames": len(test),
        "test_boxes": int(sum(len(b) for b in test.boxes)),
        "arms": records,
        "headline": headline(records),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, out)
    return report
