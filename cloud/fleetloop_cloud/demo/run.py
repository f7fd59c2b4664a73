"""``fleetloop demo``: the closed loop on a simulated fleet, with baselines, and a report.

Round after round: robots stream -> select -> queue -> upload; the cloud loop ingests,
auto-labels, routes to (simulated) humans, audits, trains T2 and distils T3/T4, gates and
registers signed packages; the control plane rolls them out (canary first) while the robots
stream the next round, and each robot verifies, shadow-checks and hot-swaps. Beside it, on the
same frames: a random-upload arm and an upload-all arm; after the rounds, the active-learning
experiment and the hard-mode labeling figures. Every figure lands in ``report.json`` (and the
HTML / Markdown report with plots).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop_sim import sim
from fleetloop_core.config import default_config_path, read_yaml, repo_root

log = logging.getLogger("fleetloop.demo")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop demo``."""
    parser = subparsers.add_parser("demo", help="the closed loop on a simulated fleet, with baselines and a report")
    parser.add_argument("--quick", action="store_true", help="small fleet, two short rounds (<= 2 min)")
    parser.add_argument("--robots", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="camera frames per robot per round")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--control-plane", choices=("local", "mqtt"), default=None)
    parser.add_argument(
        "--store", default=None, help="object store URI for the loop's uploads (default file://OUT/...)"
    )
    parser.add_argument("--out", default=None, help="report directory (default runs/<timestamp>)")
    parser.add_argument("--models", default=None, help="reference models (built if missing; default ./models)")
    parser.add_argument(
        "--no-ros", action="store_true", help="run the robots' core objects in-process instead of ROS 2"
    )
    parser.add_argument("--config", default=None, help="demo config (default config/demo.yaml)")
    parser.add_argument(
        "--task",
        choices=("classification", "detection"),
        default="classification",
        help="detection: the loop with detectors (in-process robots, mAP per round)",
    )
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    from fleetloop_cloud.demo.config import load_demo_config

    if args.task == "detection":
        return _detection(args)

    overrides = {
        "robots": args.robots,
        "rounds": args.rounds,
        "frames_per_robot": args.frames,
        "seed": args.seed,
        "control_plane": args.control_plane,
    }
    if args.no_ros:
        overrides["ros"] = False
    config = load_demo_config(args.config, quick=args.quick, overrides=overrides)
    out = Path(args.out) if args.out else repo_root() / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    report = Demo(
        config, out, models=Path(args.models) if args.models else None, store_uri=args.store, quick=args.quick
    ).run()
    from fleetloop_cloud.demo.report import print_headline

    print_headline(report, out)
    return 0


def _detection(args: argparse.Namespace) -> int:
    """``fleetloop demo --task detection``: the detection demo (fleetloop_cloud.demo.detection)."""
    from fleetloop_cloud.demo.config import load_demo_config
    from fleetloop_cloud.demo.detection import run_detection_demo

    unsupported = [
        name
        for name, value in (("--seed", args.seed), ("--control-plane", args.control_plane), ("--store", args.store))
        if value is not None
    ]
    if unsupported:
        raise SystemExit(
            f"fleetloop demo --task detection: {', '.join(unsupported)} not supported "
            f"(the detection demo runs its robots in-process with a local store; its seed is config/demo.yaml's "
            f"detection.seed)"
        )
    overrides = {"robots": args.robots, "rounds": args.rounds, "frames_per_robot": args.frames}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    settings = load_demo_config(args.config, quick=args.quick, overrides={"detection": overrides}).detection
    # the robots' overrides without --quick's: the detection robots keep the full watch window
    robot = load_demo_config(args.config).robot
    out = Path(args.out) if args.out else repo_root() / "runs" / "detection-demo"
    os.environ.setdefault("FLEETLOOP_TRAIN_THREADS", "1")
    report = run_detection_demo(out, settings, Path(args.models) if args.models else None, robot=robot)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.json'} ({report['seconds']:.0f} s)")
    return 0


@dataclass
class Arm:
    """One way of choosing what to upload, with its own store, cloud loop and robots."""

    name: str
    store_uri: str
    work: Path
    loop: Any = None
    fleet: Any = None
    jobs: Any = None
    rounds: list[dict] = field(default_factory=list)
    deploys: list[dict] = field(default_factory=list)
    edge_accuracy: list[float] = field(default_factory=list)


class Demo:
    """The orchestration; owns no decision a component should own."""

    def __init__(
        self, config, out: Path, models: Path | None = None, store_uri: str | None = None, quick: bool = False
    ):
        self.config = config
        self.out = out.resolve()
        self.quick = quick
        self.models = (
            models or repo_root() / ("models" if not quick else f".cache/models-{config.models_profile}")
        ).resolve()
        self.store_uri = store_uri
        self.timings: dict[str, float] = {}
        self.events: list[str] = []

    # ------------------------------------------------------------------ set-up
    def _stage(self, name: str, started: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 2)

    def _prepare_models(self) -> None:
        from fleetloop_models.modelbuild import build_reference_models

        started = time.perf_counter()
        # cached: a no-op when the models are current (the quick profile trains small real models once)
        build_reference_models(self.models, profile_name=self.config.models_profile, progress=True)
        self._stage("models", started)

    def _cloud(self, arm: Arm, private_key: Path, trusted: Path):
        from fleetloop_cloud.config import load_cloud_config
        from fleetloop_cloud.demo.config import merge
        from fleetloop_cloud.loop import CloudLoop

        overrides = merge(
            dict(self.config.cloud),
            {
                "store": arm.store_uri,
                "work_dir": str(arm.work / "cloud"),
                "models": str(self.models),
                "world_seed": self.config.seed,
                "cost_model": str(default_config_path("cost_model.yaml")),
                "registry": {
                    "backend": "local",
                    "uri": arm.store_uri,
                    "signing_key": str(private_key),
                    "trusted_keys": str(trusted),
                },
                "training": {"backend": "local"},
                "review": {"annotator": "simulated"},
            },
        )
        return CloudLoop(load_cloud_config(default_config_path("cloud.yaml"), overrides=overrides), progress=True)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        from fleetloop_cloud.demo.fleet import (
            FleetSettings,
            InProcessFleet,
            RosFleet,
            TruthOracle,
            robot_specs,
        )
        from fleetloop_cloud.demo.arms import RandomUploadFleet, UploadAllArm
        from fleetloop_cloud.demo.provision import sign_round0_packages, signing_keys

        cfg = self.config
        wall_started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self._prepare_models()
        private_key, trusted = signing_keys(self.out)
        packages = sign_round0_packages(self.models, self.out / "packages", private_key.read_bytes())
        specs = robot_specs(cfg.robots, cfg.seed)
        oracle = TruthOracle(specs)
        selection = read_yaml(default_config_path("selection.yaml"))
        frames_per_hour = cfg.upload_fraction * cfg.camera_rate_hz * 3600.0
        selection["budget"] = {**selection.get("budget", {}), "frames_per_hour": frames_per_hour}
        selection["random_fraction"] = cfg.upload_fraction * cfg.random_share
        manager_overrides = cfg.robot.manager_overrides()
        mqtt = broker = None
        arms: dict[str, Arm] = {}
        names = ["loop"] + (["random"] if cfg.arms.random_upload else [])
        for name in names:
            work = self.out / "arms" / name
            store = self.store_uri if (name == "loop" and self.store_uri) else f"file://{work / 'store'}"
            arms[name] = Arm(name, store, work)
        if cfg.control_plane == "mqtt":
            from fleetloop_cloud.demo.broker import start_broker

            broker, mqtt = start_broker(self.out / "broker", [s.robot_id for s in specs])
        try:
            for name, arm in arms.items():
                jobs_uri = mqtt["endpoint"] if (mqtt and name == "loop") else f"file://{arm.work / 'jobs'}"
                settings = FleetSettings(
                    root=arm.work / "robots",
                    store_uri=arm.store_uri,
                    jobs_uri=jobs_uri,
                    packages=packages,
                    keys_dir=trusted,
                    selection=selection,
                    manager_overrides=manager_overrides,
                    mqtt=mqtt["robot"] if (mqtt and name == "loop") else None,
                    camera_window=cfg.camera_window,
                    camera_rate_hz=cfg.camera_rate_hz,
                )
                if name == "loop":
                    arm.fleet = RosFleet(specs, settings) if cfg.ros else InProcessFleet(specs, settings)
                else:
                    arm.fleet = RandomUploadFleet(specs, settings, seed=cfg.seed + 1)
                arm.jobs = self._fleet_jobs(arm, mqtt if name == "loop" else None)
                arm.loop = self._cloud(arm, private_key, trusted)
                started = time.perf_counter()
                arm.fleet.start()
                self._stage(f"start {name} fleet", started)
            training_config = arms["loop"].loop.config.training
            upload_all = (
                UploadAllArm(
                    specs,
                    self.models,
                    epochs=cfg.upload_all_epochs,
                    lab_replay_frames=training_config.lab_replay_frames,
                    finetune_lr=training_config.finetune_lr,
                    seed=cfg.seed,
                )
                if cfg.arms.upload_all
                else None
            )
            test_sets = self._test_sets(specs)
            round0 = self._edge_accuracy(packages["T4"], test_sets)
            for arm in arms.values():
                arm.edge_accuracy.append(round0)
            all_accuracy = [round0]
            deploy_threads: list[threading.Thread] = []
            robot_rounds: list[list[dict]] = []
            for number in range(1, cfg.rounds + 1):
                log.info("=== round %d of %d ===", number, cfg.rounds)
                # 1. robots stream (the previous round's deployment rolls out meanwhile)
                started = time.perf_counter()
                for spec in specs:
                    oracle.advance(spec.robot_id, cfg.frames_per_robot)
                loop = arms["loop"]
                reports = loop.fleet.stream(cfg.frames_per_robot)
                robot_rounds.append([r.to_dict() for r in reports])
                self._stage("robots stream (loop)", started)
                if "random" in arms:
                    started = time.perf_counter()
                    counts = {r.robot_id: r.uploaded for r in reports}
                    arms["random"].fleet.stream_counts(cfg.frames_per_robot, counts)
                    self._stage("robots stream (random upload)", started)
                for thread in deploy_threads:
                    thread.join()
                deploy_threads = []
                # 2. cloud rounds
                for arm in arms.values():
                    started = time.perf_counter()
                    if cfg.ros and arm.name == "loop":
                        arm.loop.ingest()
                        self._attach_truth(arm, oracle)
                    summary = arm.loop.run_round().to_dict()
                    arm.rounds.append(summary)
                    arm.edge_accuracy.append(self._edge_accuracy(arm.loop.production("T4"), test_sets))
                    self._stage(f"cloud round ({arm.name})", started)
                    log.info(
                        "round %d %s: T4 field accuracy %.3f -> %.3f; throughput %s",
                        number,
                        arm.name,
                        arm.edge_accuracy[-2],
                        arm.edge_accuracy[-1],
                        summary["figures"].get("throughput_ratio"),
                    )
                if upload_all is not None:
                    started = time.perf_counter()
                    upload_all.add_round(cfg.frames_per_robot)
                    directory, _ = upload_all.train(self.out / "arms" / "upload-all", number)
                    all_accuracy.append(self._edge_accuracy(directory, test_sets))
                    self._stage("upload-all training", started)
                # 3. deploy the promoted edge models; robots swap while they stream the next round
                for arm in arms.values():
                    thread = threading.Thread(target=self._deploy, args=(arm, number), daemon=True)
                    thread.start()
                    deploy_threads.append(thread)
                if number == cfg.rounds:
                    for thread in deploy_threads:
                        thread.join()
            al_result = None
            if cfg.arms.active_learning and upload_all is not None:
                started = time.perf_counter()
                al_result = self._active_learning(upload_all, test_sets)
                self._stage("active learning experiment", started)
            hard = None
            if cfg.arms.hard_mode:
                started = time.perf_counter()
                hard = self._hard_mode(specs, arms["loop"], private_key, trusted)
                self._stage("hard mode labeling", started)
            serving = arms["loop"].fleet.serving()
        finally:
            for arm in arms.values():
                if arm.fleet is not None:
                    try:
                        arm.fleet.stop()
                    except Exception:  # keep stopping the others; the error is logged
                        log.exception("stopping the %s fleet failed", arm.name)
                if arm.loop is not None:
                    arm.loop.close()
                if arm.jobs is not None:
                    arm.jobs.close()
            if broker is not None:
                broker.stop()
        from fleetloop_cloud.demo.report import build_report, write_report

        report = build_report(
            config=cfg,
            quick=self.quick,
            models=self.models,
            arms=arms,
            upload_all_accuracy=all_accuracy,
            robot_rounds=robot_rounds,
            al=al_result,
            hard=hard,
            serving=serving,
            timings=self.timings,
            minutes=(time.perf_counter() - wall_started) / 60.0,
            test_frames=sum(len(t[1]) for t in test_sets),
        )
        write_report(report, self.out)
        return report

    # ------------------------------------------------------------------ pieces
    def _fleet_jobs(self, arm: Arm, mqtt: dict | None):
        from fleetloop_cloud.job_service_local import LocalDirJobs
        from fleetloop_cloud.job_service_mqtt import MqttJobService

        if mqtt:
            return MqttJobService.from_uri(mqtt["endpoint"], **mqtt["service"])
        return LocalDirJobs(arm.work / "jobs")

    def _attach_truth(self, arm: Arm, oracle) -> None:
        """ROS robots' sidecars carry no ground truth: give the simulated annotator the oracle's."""
        pool = arm.loop.pool
        missing = pool.frames_without_truth()
        truths = {}
        for row in missing:
            truth = oracle.truth(row["robot_id"], int(row["stamp_ns"]))
            if truth is not None:
                truths[row["id"]] = truth.label
        pool.set_sim_labels(truths)

    def _test_sets(self, specs) -> list[tuple[str, np.ndarray, np.ndarray]]:
        frames = int(self.config.cloud.get("evaluation", {}).get("frames_per_site", 300))
        out = []
        for spec in specs:
            test = sim.field_test_set(spec.site, frames, seed=self.config.seed)
            out.append((spec.site.name, test.images, test.labels))
        return out

    @staticmethod
    def _edge_accuracy(directory: Path, test_sets) -> float:
        """Return T4's accuracy over every site's held-out field test set (frames never uploaded)."""
        from fleetloop_core.inference import TierModel

        model = TierModel.load(directory, providers=("cpu",), warmup=0)
        correct = total = 0
        for _, images, labels in test_sets:
            predicted = model.infer_batch(images).probs.argmax(axis=1)
            correct += int((predicted == labels).sum())
            total += len(labels)
        return correct / total

    def _deploy(self, arm: Arm, round_number: int) -> None:
        """Roll out the round's promoted T4/T3 packages to the arm's fleet (canary first)."""
        from fleetloop_cloud.demo.provision import roll_out

        records = roll_out(
            arm.jobs,
            arm.loop,
            [spec.robot_id for spec in arm.fleet.specs],
            arm.rounds[-1].get("registry", []),
            f"{arm.name}-r{round_number}",
        )
        arm.deploys.extend({"round": round_number, **record} for record in records)

    def _active_learning(self, upload_all, test_sets):
        from fleetloop_core.inference import TierModel
        from fleetloop_cloud.demo import active_learning
        from tqdm.auto import tqdm

        t1 = TierModel.load(self.models / "T1", providers=("cpu",), warmup=0)
        images = np.concatenate(upload_all.images)
        labels = np.concatenate(upload_all.labels)
        pool_features = t1.infer_batch(images).embedding
        test_images = np.concatenate([t[1] for t in test_sets])
        test_labels = np.concatenate([t[2] for t in test_sets])
        test_features = t1.infer_batch(test_images).embedding
        settings = self.config.active_learning
        budgets = [b for b in settings.budgets if b <= len(labels)]
        bar = tqdm(total=2 * settings.repeats * len(budgets), desc="active learning vs random", unit="fit")
        try:
            return active_learning.run(
                pool_features,
                labels,
                test_features,
                test_labels,
                len(t1.labels),
                budgets,
                repeats=settings.repeats,
                target_share=settings.target_share,
                seed=self.config.seed,
                progress=lambda: bar.update(1),
            )
        finally:
            bar.close()

    def _hard_mode(self, specs, loop_arm: Arm, private_key: Path, trusted: Path) -> dict:
        """Labeling figures on shuffled single frames (no tracks, no background) with the loop's teachers."""
        from fleetloop_core.inference import TierModel
        from fleetloop_core.store import open_store
        from fleetloop_cloud.demo.config import merge
        from fleetloop_cloud.config import load_cloud_config
        from fleetloop_cloud.loop import CloudLoop
        from fleetloop_cloud.simfleet import SimulatedFleet

        work = self.out / "arms" / "hard-mode"
        store = open_store(f"file://{work / 'store'}")
        edge = TierModel.load(loop_arm.loop.production("T4"), providers=("cpu",), warmup=0)
        fleet = SimulatedFleet(
            store,
            [(s.robot_id, s.site) for s in specs],
            seed=self.config.seed + 7,
            edge_model=edge,
            track_hints=False,
            mode="hard",
        )
        fleet.upload(self.config.hard_mode_frames)
        # the loop's current teachers label them: its registry is this loop's registry (read only here)
        overrides = merge(
            dict(self.config.cloud),
            {
                "store": store.uri,
                "work_dir": str(work / "cloud"),
                "models": str(self.models),
                "world_seed": self.config.seed,
                "cost_model": str(default_config_path("cost_model.yaml")),
                "registry": {"backend": "local", "uri": loop_arm.store_uri, "trusted_keys": str(trusted)},
                "review": {"annotator": "simulated"},
            },
        )
        with CloudLoop(load_cloud_config(default_config_path("cloud.yaml"), overrides=overrides)) as loop:
            loop.ingest()
            loop.autolabel()
            loop.review()
            return loop.summary(loop.current_round(), status="labeling only").to_dict()
