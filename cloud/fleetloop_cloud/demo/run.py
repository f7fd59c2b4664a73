"""The closed-loop demo's run: the loop on a simulated fleet, with baselines, and a report.

Round after round: robots stream -> select -> queue -> upload; the cloud loop ingests,
auto-labels, routes to (simulated) humans, audits, trains T2 and distils T3/T4, gates and
registers signed packages; the control plane rolls them out (canary first) while the robots
stream the next round, and each robot verifies, shadow-checks and hot-swaps. Beside it, on the
same frames: a random-upload arm and an upload-all arm; after the rounds, the active-learning
experiment and the hard-mode labeling figures. Every figure lands in ``report.json`` (and the
HTML / Markdown report with plots). The ``fleetloop demo`` command is :mod:`fleetloop_cloud.demo.command`.

~500 lines on purpose: the order of a run (rounds, rollouts, arms, experiments, report) is the
demo's one story and reads in one place; the fleets, arms and report writing are modules of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop_sim import sim
from fleetloop_core.config import default_config_path, read_yaml, repo_root

from fleetloop_cloud.demo.config import DemoConfig

log = logging.getLogger("fleetloop.demo")


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
    class_accuracy: list[list[float | None]] = field(default_factory=list)  # per round, per class (T4)


@dataclass
class _Rounds:
    """What the rounds share: the robots, the truth oracle, the field test sets, the baselines' figures."""

    specs: list
    oracle: Any
    test_sets: list
    upload_all: Any = None
    all_accuracy: list[float] = field(default_factory=list)
    all_production: Path | None = None  # the upload-all arm's T4 that passed the gate (the same rule as the loops')
    all_gate: list[dict] = field(default_factory=list)
    robot_rounds: list[list[dict]] = field(default_factory=list)
    deploy_threads: list[threading.Thread] = field(default_factory=list)
    loop_rollouts: threading.Thread | None = None  # the loop arm's rollouts of the last round's models
    campaign_events: list[dict] = field(default_factory=list)  # the campaign arm's policy, after each round
    after_last_round: list[dict] = field(default_factory=list)  # ROS cameras while the last models rolled out


def robot_budget(cfg: DemoConfig, budget: dict) -> dict:
    """Return a demo robot's upload budget: the whole run's uploads within ``upload_fraction`` of its frames.

    A robot's token bucket starts full (one burst of ``burst_seconds``), so the rate leaves room for
    it (measured before: 747 of 14,400 = 0.052 uploaded, of which 4 robots x 30 frames were the
    starting burst).
    """
    seconds = cfg.rounds * cfg.frames_per_robot / cfg.camera_rate_hz
    share = seconds / (seconds + float(budget.get("burst_seconds", 60.0)))
    return {**budget, "frames_per_hour": cfg.upload_fraction * cfg.camera_rate_hz * 3600.0 * share}


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
                # the campaign arm sends campaigns by policy; every other arm runs none. The demo measures a
                # class campaign (a class rare in the lab, beside the loop without it): class needs only
                "campaigns": {"approve": "auto" if arm.name == "campaign" else "manual", "kinds": ["class"]},
            },
        )
        return CloudLoop(load_cloud_config(default_config_path("cloud.yaml"), overrides=overrides), progress=True)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Run the demo: models, fleets, the rounds, the side experiments; write and return the report."""
        from fleetloop_cloud.demo.fleet import TruthOracle, robot_specs
        from fleetloop_cloud.demo.provision import sign_round0_packages, signing_keys
        from fleetloop_cloud.demo.campaign_arm import edge_scores, measure as measure_campaign
        from fleetloop_cloud.demo.report import build_report
        from fleetloop_cloud.demo.report_files import write_report

        cfg = self.config
        wall_started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self._prepare_models()
        private_key, trusted = signing_keys(self.out)
        packages = sign_round0_packages(self.models, self.out / "packages", private_key.read_bytes())
        specs = robot_specs(cfg.robots, cfg.seed)
        arms = self._arms()
        broker = mqtt = None
        if cfg.control_plane == "mqtt":
            from fleetloop_cloud.demo.broker import start_broker

            broker, mqtt = start_broker(self.out / "broker", [s.robot_id for s in specs])
        try:
            self._start_fleets(arms, specs, packages, private_key, trusted, mqtt)
            oracle, upload_all = TruthOracle(specs), self._upload_all_arm(arms, specs)  # (the order they ran in)
            run = _Rounds(specs, oracle, self._test_sets(specs), upload_all, all_production=packages["T4"])
            round0, round0_classes = edge_scores(packages["T4"], run.test_sets)
            for arm in arms.values():
                arm.edge_accuracy.append(round0)
                arm.class_accuracy.append(round0_classes)
            run.all_accuracy.append(round0)
            for number in range(1, cfg.rounds + 1):
                self._round(number, arms, run)
            al_result, hard = self._experiments(arms, run, private_key, trusted)
            serving = arms["loop"].fleet.serving()
            campaign = measure_campaign(arms, run.campaign_events)  # reads the pools: before they close
        finally:
            self._stop(arms, broker)
        report = build_report(
            config=cfg,
            quick=self.quick,
            models=self.models,
            arms=arms,
            upload_all_accuracy=run.all_accuracy,
            robot_rounds=run.robot_rounds,
            after_last_round=run.after_last_round,
            upload_all_gate=run.all_gate,
            al=al_result,
            hard=hard,
            serving=serving,
            timings=self.timings,
            minutes=(time.perf_counter() - wall_started) / 60.0,
            test_frames=sum(len(t[1]) for t in run.test_sets),
            campaign=campaign,
        )
        write_report(report, self.out)
        return report

    def _arms(self) -> dict[str, Arm]:
        """Return the arms to run: the loop, and the random-upload and campaign arms when configured."""
        arms: dict[str, Arm] = {}
        on = self.config.arms
        for name in ["loop"] + (["random"] if on.random_upload else []) + (["campaign"] if on.campaign else []):
            work = self.out / "arms" / name
            store = self.store_uri if (name == "loop" and self.store_uri) else f"file://{work / 'store'}"
            arms[name] = Arm(name, store, work)
        return arms

    def _start_fleets(
        self, arms: dict[str, Arm], specs: list, packages: dict, private_key: Path, trusted: Path, mqtt: dict | None
    ) -> None:
        """Give every arm its robots, job service and cloud loop, and start its robots."""
        from fleetloop_cloud.demo.arms import RandomUploadFleet
        from fleetloop_cloud.demo.fleet import FleetSettings, InProcessFleet
        from fleetloop_cloud.demo.ros_fleet import RosFleet

        cfg = self.config
        selection = read_yaml(default_config_path("selection.yaml"))
        selection["budget"] = robot_budget(cfg, selection.get("budget", {}))
        selection["random_fraction"] = cfg.upload_fraction * cfg.random_share
        for name, arm in arms.items():
            on_mqtt = mqtt is not None and name == "loop"
            settings = FleetSettings(
                root=arm.work / "robots",
                store_uri=arm.store_uri,
                jobs_uri=mqtt["endpoint"] if on_mqtt else f"file://{arm.work / 'jobs'}",
                packages=packages,
                keys_dir=trusted,
                selection=selection,
                manager_overrides=cfg.robot.manager_overrides(in_process=not (cfg.ros and name == "loop")),
                cascade_overrides=cfg.robot.cascade_overrides(),
                mqtt=mqtt["robot"] if on_mqtt else None,
                camera_window=cfg.camera_window,
                camera_rate_hz=cfg.camera_rate_hz,
            )
            if name == "loop":
                arm.fleet = RosFleet(specs, settings) if cfg.ros else InProcessFleet(specs, settings)
            elif name == "campaign":
                arm.fleet = InProcessFleet(specs, settings)
            else:
                arm.fleet = RandomUploadFleet(specs, settings, seed=cfg.seed + 1)
            arm.jobs = self._fleet_jobs(arm, mqtt if on_mqtt else None)
            arm.loop = self._cloud(arm, private_key, trusted)
            started = time.perf_counter()
            arm.fleet.start()
            self._stage(f"start {name} fleet", started)

    def _upload_all_arm(self, arms: dict[str, Arm], specs: list):
        """Return the upload-everything baseline (trained beside the loop), or None when it is off."""
        from fleetloop_cloud.demo.arms import UploadAllArm

        cfg = self.config
        if not cfg.arms.upload_all:
            return None
        training = arms["loop"].loop.config.training
        return UploadAllArm(
            specs,
            self.models,
            epochs=cfg.upload_all_epochs,
            lab_replay_frames=training.lab_replay_frames,
            finetune_lr=training.finetune_lr,
            seed=cfg.seed,
        )

    def _round(self, number: int, arms: dict[str, Arm], run: _Rounds) -> None:
        """One round: robots stream (last round's models roll out meanwhile), cloud rounds, deploy."""
        from fleetloop_cloud.demo.campaign_arm import edge_scores

        cfg = self.config
        log.info("=== round %d of %d ===", number, cfg.rounds)
        extra = self._stream(arms, run)
        for thread in run.deploy_threads:
            thread.join()
        run.deploy_threads = []
        for arm in arms.values():
            self._cloud_round(number, arm, run)
        if run.upload_all is not None:
            started = time.perf_counter()
            run.upload_all.add_round(cfg.frames_per_robot, extra)
            directory, _ = run.upload_all.train(self.out / "arms" / "upload-all", number)
            decision = self._gate(arms["loop"], run.all_production, directory, run.specs)
            run.all_gate.append({"round": number, **decision.to_dict()})
            if decision.promote:
                run.all_production = directory
            run.all_accuracy.append(edge_scores(run.all_production, run.test_sets)[0])
            self._stage("upload-all training", started)
        if "campaign" in arms and number < cfg.rounds:  # sent (and applied) before the models roll out
            from fleetloop_cloud.demo.campaign_arm import send_after_round

            run.campaign_events.append(send_after_round(arms["campaign"], number, [s.robot_id for s in run.specs]))
        # the promoted edge models deploy while the robots stream the next round
        deploys = {name: self._deploy(arm, number) for name, arm in arms.items()}
        run.deploy_threads.extend(deploys.values())
        run.loop_rollouts = deploys["loop"]
        if number == cfg.rounds:
            # no round follows to bring the watch after each swap its frames: the ROS robots' cameras stream
            # on while their arm's rollouts run, as in the field (before, those watches waited out
            # unjudged_after_s and passed unjudged)
            started = time.perf_counter()
            after = arms["loop"].fleet.stream_while(deploys["loop"].is_alive)
            run.after_last_round = [
                {"robot_id": r.robot_id, "frames": r.frames, "answered": r.answered, "dropped": r.dropped}
                for r in after
            ]
            for thread in run.deploy_threads:
                thread.join()
            self._stage("last round's rollouts", started)

    def _stream(self, arms: dict[str, Arm], run: _Rounds) -> dict[str, int]:
        """Stream a round on every arm's robots; return per robot the frames streamed past the round's count.

        The ROS robots stream on past the round's frames while the last round's models still roll out (the
        watch after each swap judges the frames that follow it); every arm then sees those frames too."""
        frames, started = self.config.frames_per_robot, time.perf_counter()
        rollouts = run.loop_rollouts
        reports = arms["loop"].fleet.stream(frames, busy=rollouts.is_alive if rollouts else None)
        extra = {r.robot_id: r.extra_frames for r in reports}
        for spec in run.specs:
            run.oracle.advance(spec.robot_id, frames + extra.get(spec.robot_id, 0))
        run.robot_rounds.append([r.to_dict() for r in reports])
        self._stage("robots stream (loop)", started)
        if "random" in arms:
            started = time.perf_counter()
            arms["random"].fleet.stream_counts(frames, {r.robot_id: r.uploaded for r in reports}, extra)
            self._stage("robots stream (random upload)", started)
        if "campaign" in arms:
            started = time.perf_counter()
            arms["campaign"].fleet.stream(frames, extra=extra)
            self._stage("robots stream (campaign)", started)
        return extra

    def _cloud_round(self, number: int, arm: Arm, run: _Rounds) -> None:
        """Run one arm's cloud round and measure its edge model on the field test sets."""
        started = time.perf_counter()
        if self.config.ros and arm.name == "loop":
            arm.loop.ingest()
            self._attach_truth(arm, run.oracle)
        from fleetloop_cloud.demo.campaign_arm import edge_scores

        summary = arm.loop.run_round().to_dict()
        arm.rounds.append(summary)
        overall, per_class = edge_scores(arm.loop.production("T4"), run.test_sets)
        arm.edge_accuracy.append(overall)
        arm.class_accuracy.append(per_class)
        self._stage(f"cloud round ({arm.name})", started)
        log.info(
            "round %d %s: T4 field accuracy %.3f -> %.3f; throughput %s",
            number,
            arm.name,
            arm.edge_accuracy[-2],
            arm.edge_accuracy[-1],
            summary["figures"].get("throughput_ratio"),
        )

    def _experiments(self, arms: dict[str, Arm], run: _Rounds, private_key: Path, trusted: Path) -> tuple:
        """Run the side experiments that are on: active learning, hard mode; return (al result, hard mode)."""
        cfg = self.config
        al_result = hard = None
        if cfg.arms.active_learning and run.upload_all is not None:
            started = time.perf_counter()
            al_result = self._active_learning(run.upload_all, run.test_sets)
            self._stage("active learning experiment", started)
        if cfg.arms.hard_mode:
            started = time.perf_counter()
            hard = self._hard_mode(run.specs, arms["loop"], private_key, trusted)
            self._stage("hard mode labeling", started)
        return al_result, hard

    @staticmethod
    def _stop(arms: dict[str, Arm], broker) -> None:
        """Stop every arm's robots, cloud loop and job service, then the broker; a failure does not stop the rest."""
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
            # the test split: items the gate's validation split does not hold (no figure on selection frames)
            test = sim.field_test_set(spec.site, frames, seed=self.config.seed, split="test")
            out.append((spec.site.name, test.images, test.labels))
        return out

    def _gate(self, loop_arm: Arm, production: Path, candidate: Path, specs) -> Any:
        """Return the loops' promotion decision (``evaluate.gate``) for a T4 of an arm the loop does not run.

        On the loop's own gate set (the field ``validation`` split), so every arm is selected by the
        same rule on the same frames, none of which the headline test split holds.
        """
        from fleetloop_core.inference import TierModel
        from fleetloop_cloud.evaluate import TestSet, gate, predict, score

        frames = int(self.config.cloud.get("evaluation", {}).get("frames_per_site", 300))
        parts = [
            (s.site.name, sim.field_test_set(s.site, frames, seed=self.config.seed, split="validation")) for s in specs
        ]
        test = TestSet(
            "field-validation",
            [image for _, data in parts for image in data.images],
            np.concatenate([data.labels for _, data in parts]),
            np.concatenate([[name] * len(data.labels) for name, data in parts]),
        )
        scores = [
            score(predict(TierModel.load(d, providers=("cpu",), warmup=0), test.images), test)
            for d in (production, candidate)
        ]
        return gate(scores[0], scores[1], loop_arm.loop.config.evaluation)

    def _deploy(self, arm: Arm, round_number: int) -> threading.Thread:
        """Start rolling out the round's promoted T4/T3 packages to the arm's fleet (canary first)."""
        from fleetloop_cloud.demo.provision import roll_out
        from fleetloop_cloud.demo.rollout_gate import roll_out_in_background

        entries = arm.rounds[-1].get("registry", [])
        robots = [spec.robot_id for spec in arm.fleet.specs]
        prefix = f"{arm.name}-r{round_number}"
        return roll_out_in_background(
            arm.fleet.gate,
            lambda on_record: roll_out(arm.jobs, arm.loop, robots, entries, prefix, on_record),
            entries,
            lambda records: arm.deploys.extend({"round": round_number, **record} for record in records),
            f"deploy-{prefix}",
        )

    def _active_learning(self, upload_all, test_sets):
        from fleetloop_core.inference import TierModel
        from fleetloop_cloud.config import load_cloud_config
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
        # the cloud loop's own review order is what the arm measures
        cloud = load_cloud_config(default_config_path("cloud.yaml"), overrides=dict(self.config.cloud))
        strategy = cloud.review.strategy
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
                strategy=strategy,
                seed=self.config.seed,
                progress=lambda: bar.update(1),
            )
        finally:
            bar.close()

    def _hard_mode(self, specs, loop_arm: Arm, private_key: Path, trusted: Path) -> dict:
        """Labeling figures on shuffled single frames (no tracks, no background) with the loop's teachers."""
        from fleetloop_cloud.demo.hard_mode import hard_mode_loop, label_hard_mode, upload_hard_mode

        work = self.out / "arms" / "hard-mode"
        store = upload_hard_mode(
            f"file://{work / 'store'}",
            [(s.robot_id, s.site) for s in specs],
            loop_arm.loop.production("T4"),
            self.config.seed + 7,
            self.config.hard_mode_frames,
        )
        # the loop's current teachers label them: its registry is this loop's registry (read only here)
        return label_hard_mode(
            hard_mode_loop(
                self.config.cloud, store.uri, work / "cloud", self.models, self.config.seed, loop_arm.store_uri, trusted
            )
        )
