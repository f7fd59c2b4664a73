"""The closed loop for detectors as a library (what ``fleetloop demo --task detection`` runs).

:func:`run_detection_demo` drives robots of the detection world in-process with the robot stack's
core objects (the detection cascade inside its model manager, the selector and the upload queue
draining into a file store with the real uploader) and a
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
T2 on the held-out field detection test set (per site too). :func:`write_report` writes
``report.json``, ``report.md`` (headline table) and ``map_per_round.png``.

``python -m fleetloop_cloud.detection_demo --quick --out DIR`` runs it from a shell.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fleetloop_core import sim
from fleetloop_core.config import default_config_path, read_yaml, repo_root
from fleetloop_core.detection import DetectorModel
from fleetloop_core.manifest import load_manifest
from fleetloop_core.selection import Selector
from fleetloop_core.selection_config import apply_changes, load_selection_config
from fleetloop_core.store import open_store
from fleetloop_core.upload_queue import UploadQueue
from fleetloop_core.uploader import Uploader

from fleetloop_cloud.box_evaluate import BoxTestSet, score_detector
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.demo.config import DetectionDemoConfig, load_demo_config
from fleetloop_cloud.demo.fleet import serving_stack, sign_round0_packages
from fleetloop_cloud.deploy import deploy_approved
from fleetloop_cloud.fleet_jobs import RolloutConfig
from fleetloop_cloud.job_service_local import LocalDirJobs
from fleetloop_cloud.loop import CloudLoop

log = logging.getLogger("fleetloop.detection_demo")


# ------------------------------------------------------------------------------------ robots


@dataclass
class Provisioning:
    """What every robot of an arm starts from: signed round-0 detectors, the trusted keys, the job queue."""

    packages: dict[str, Path]  # tier -> signed package directory (T4, T3)
    keys_dir: Path
    jobs_dir: Path
    manager_overrides: dict


class DetectionRobot:
    """One robot in-process: camera stream -> model manager (detection cascade) -> selector -> upload queue.

    Deploy jobs arrive through the control plane (``provisioning.jobs_dir``); the deploy agent applies them on
    the model manager's thread while the robot streams.
    """

    def __init__(
        self,
        robot_id: str,
        site: sim.Site,
        provisioning: Provisioning,
        work: Path,
        store_uri: str,
        selection,
        seed: int,
        start_ns: int,
    ):
        self.robot_id, self.site = robot_id, site
        self.camera = sim.CameraStream(site, robot_id, seed=seed, start_ns=start_ns, task="detection")
        stack = serving_stack(
            robot_id,
            work / robot_id,
            provisioning.packages,
            provisioning.keys_dir,
            f"file://{provisioning.jobs_dir}",
            provisioning.manager_overrides,
        )
        self.cascade, self.manager, self.agent = stack.cascade, stack.manager, stack.agent
        self.selector = Selector(selection, robot_id, self.cascade.frame_labels)
        self.queue = UploadQueue(work / robot_id / "queue", synchronous="normal")
        self.uploader = Uploader(self.queue, open_store(store_uri))
        self.agent.start()

    def stream(self, frames: int, offer_only: set[int] | None = None) -> dict:
        """Run ``frames`` camera frames through the stack (only ``offer_only`` reach the selector); return counts."""
        kept = 0
        for index, frame in enumerate(self.camera.frames(frames)):
            result = self.manager.infer(frame.image, stream="front")
            if offer_only is not None and index not in offer_only:
                continue
            truth = frame.truth
            decision = self.selector.offer(
                frame.image,
                result,
                frame.stamp_ns,
                stream="front",
                site=self.site.name,
                simulation={
                    "label": truth.label,
                    "track_id": truth.track_id,
                    "site": self.site.name,
                    "boxes": truth.rows(),
                },
            )
            if decision.keep:
                self.queue.put(decision.record)
                kept += 1
        report = self.uploader.drain()
        return {
            "robot": self.robot_id,
            "frames": frames,
            "kept": kept,
            "uploaded": report.uploaded,
            "serving": self.cascade.model_versions(),
        }

    def close(self) -> None:
        self.agent.stop()
        self.manager.close()
        self.queue.close()


# ------------------------------------------------------------------------------------ arms


@dataclass
class ArmRecord:
    """What one arm did, round by round."""

    name: str
    rounds: list[dict] = field(default_factory=list)


def _cloud_config(out: Path, arm: str, models: Path, settings: DetectionDemoConfig, keys: tuple[Path, Path]) -> dict:
    data = read_yaml(default_config_path("cloud.yaml"))
    store = f"file://{out / arm / 'store'}"
    data.update(
        store=store,
        work_dir=str(out / arm / "work"),
        models=str(models),
        world_seed=settings.seed,
        cost_model=str(default_config_path("cost_model.yaml")),
    )
    data["registry"] = {
        **data.get("registry", {}),
        "backend": "local",
        "uri": store,
        "signing_key": str(keys[0]),
        "trusted_keys": str(keys[1]),
    }
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


def field_test_set(sites: Sequence[sim.Site], frames_per_site: int, seed: int) -> BoxTestSet:
    """Return the held-out field detection test set of the demo's sites (the gate's, fixed for every arm)."""
    out = BoxTestSet("simulated-field", [], [], [], [])
    for site in sites:
        data = sim.field_test_set(site, frames_per_site, seed=seed, task="detection")
        out.images += list(data.images)
        out.boxes += [t.boxes for t in data.truths]
        out.classes += [t.classes for t in data.truths]
        out.sites += [site.name] * len(data)
    return out


def _map(model_dir: Path, test: BoxTestSet) -> dict:
    scores = score_detector(DetectorModel.load(model_dir, providers=("cpu",), warmup=0), test)
    return {
        "map50": round(scores.map50, 4),
        "map": round(scores.map, 4),
        "per_site": {k: round(v[0], 4) for k, v in scores.per_site.items()},
    }


class UploadAllArm:
    """Every frame with its true boxes: T4 retrained each round on all frames so far (the upper bound)."""

    def __init__(self, robots: Sequence[tuple[str, sim.Site]], models: Path, settings: DetectionDemoConfig):
        self.streams = [
            sim.CameraStream(site, robot, seed=settings.seed, start_ns=sim.SIM_EPOCH_NS + i * 10**12, task="detection")
            for i, (robot, site) in enumerate(robots)
        ]
        self.models, self.settings = models, settings
        self.images: list[np.ndarray] = []
        self.truths: list = []

    def add_round(self, frames: int) -> int:
        for stream in self.streams:
            for frame in stream.frames(frames):
                self.images.append(frame.image)
                self.truths.append(frame.truth)
        return len(self.images)

    def train(self, out: Path, round_number: int, progress: bool) -> Path:
        from fleetloop_core import training_detection as td
        from fleetloop_core import zoo
        from fleetloop_core.manifest import load_manifest
        from fleetloop_core.modelbuild_detection import fit_into, write_detector_package

        from fleetloop_cloud.box_train import export_layout, load_detector_base

        base = load_manifest(self.models / "T4")
        _, model, _ = load_detector_base(self.models, "T4")
        lab = sim.render_set(
            sim.LAB_SITE,
            sim.item_pool().lab_train,
            self.settings.lab_replay_frames,
            seed=("upload-all-replay", self.settings.seed),
            sites=sim.lab_sites(16, self.settings.seed),
            task="detection",
        )
        images, boxes, classes = fit_into(
            np.concatenate([np.stack(self.images), lab.images]), [*self.truths, *lab.truths], model.height
        )
        report = td.fit_detector(
            model,
            images,
            td.assign(boxes, classes, model.height, model.width),
            progress=progress,
            config=td.DetectorFitConfig(
                epochs=self.settings.upload_all_epochs, batch_size=32, lr=4e-3, seed=self.settings.seed
            ),
            desc=f"upload-all T4 round {round_number}",
        )
        directory = out / f"round-{round_number}" / "T4"
        write_detector_package(
            model,
            directory,
            base.name,
            f"upload-all-r{round_number}",
            "T4",
            base.architecture,
            export_layout(base),
            base.labels,
            {"frames": len(self.images), "seconds": round(report.seconds, 1)},
            zoo.parameter_count(model.net),
        )
        return directory


# ------------------------------------------------------------------------------------ the run


def fleet_keys(out: Path) -> tuple[Path, Path]:
    """Return (private signing key file, trusted public keys directory), made for this run."""
    from fleetloop_core.signing import generate_keypair, key_id

    keys = out / "keys"
    (keys / "trusted").mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair()
    private_path = keys / "fleet-signing.pem"
    private_path.write_bytes(private)
    private_path.chmod(0o600)
    (keys / "trusted" / f"{key_id(public)}.pub").write_bytes(public)
    return private_path, keys / "trusted"


def locate_detectors(models: Path | None, profile: str) -> Path:
    """Return a directory with detector tiers T1..T4, building ``profile`` when it is missing."""
    from fleetloop_core.modelbuild import build_reference_models

    if models is not None and (models / "T4" / "manifest.json").is_file():
        return models
    target = models or repo_root() / ".cache" / (
        "models-detection-test" if profile == "detection-test" else "models-detection"
    )
    build_reference_models(target, profile_name=profile, progress=True)
    return target


def run_detection_demo(
    out: Path, settings: DetectionDemoConfig | None = None, models: Path | None = None, progress: bool = True
) -> dict:
    """Run the detection closed loop with its baselines; write the report into ``out``; return it."""
    settings = settings or DetectionDemoConfig()
    started = time.perf_counter()
    out = Path(out).resolve()  # store URIs are file:///absolute
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    models = locate_detectors(models, settings.models_profile)
    sites = sim.make_fleet_sites(settings.robots, seed=settings.seed)
    robots = [(f"robot-{i}", sites[i]) for i in range(settings.robots)]
    test = field_test_set(sites, settings.test_frames_per_site, settings.seed)
    selection = load_selection_config()
    selection = apply_changes(selection, {"budget.frames_per_hour": settings.frames_per_hour}, source="detection demo")
    keep_all = apply_changes(
        selection,
        {
            "policy": {"name": "threshold", "params": {"threshold": 0.0}},
            "dedup.enabled": False,
            "random_fraction": 0.0,
            "budget.frames_per_hour": 1.0e9,
            "budget.bytes_per_hour": 1.0e15,
        },
        source="detection demo (random arm)",
    )
    arms = {name: ArmRecord(name) for name in ("loop", "random", "upload-all")}
    keys = fleet_keys(out)
    round0 = sign_round0_packages(models, out / "round0", keys[0].read_bytes())
    manager_overrides = load_demo_config().robot.manager_overrides()
    loops, fleets, jobs = {}, {}, {}
    for name, config in (("loop", selection), ("random", keep_all)):
        loops[name] = CloudLoop(
            cloud_config_from_dict(_cloud_config(out, name, models, settings, keys)),
            progress=progress,
            task="detection",
        )
        jobs[name] = LocalDirJobs(out / name / "jobs")
        provisioning = Provisioning(round0, keys[1], out / name / "jobs", manager_overrides)
        fleets[name] = [
            DetectionRobot(
                robot,
                site,
                provisioning,
                out / name / "robots",
                loops[name].config.store,
                config,
                settings.seed,
                sim.SIM_EPOCH_NS + i * 10**12,
            )
            for i, (robot, site) in enumerate(robots)
        ]
    upload_all = UploadAllArm(robots, models, settings)
    rng = np.random.default_rng(settings.seed)
    baseline = {"T4": _map(models / "T4", test), "T2": _map(models / "T2", test)}
    for record in arms.values():
        record.rounds.append(
            {"round": 0, "map": {k: v for k, v in baseline.items() if record.name != "upload-all" or k == "T4"}}
        )
    deploys: list[threading.Thread] = []
    try:
        for number in range(1, settings.rounds + 1):
            loop_counts = [robot.stream(settings.frames_per_robot) for robot in fleets["loop"]]
            random_counts = []
            for robot, counts in zip(fleets["random"], loop_counts):
                chosen = set(
                    rng.choice(
                        settings.frames_per_robot, size=min(counts["kept"], settings.frames_per_robot), replace=False
                    ).tolist()
                )
                random_counts.append(robot.stream(settings.frames_per_robot, offer_only=chosen))
            for thread in deploys:  # the previous round's rollouts ended while the robots streamed
                thread.join()
            deploys = []
            for name, counts in (("loop", loop_counts), ("random", random_counts)):
                loop = loops[name]
                summary = loop.run_round().to_dict()
                production = {tier: loop.production(tier) for tier in ("T2", "T3", "T4")}
                record = {
                    "round": number,
                    "robots": counts,
                    "uploaded": sum(c["uploaded"] for c in counts),
                    "labels": summary["labels"],
                    "human": {k: summary["human"][k] for k in ("seconds", "dollars", "by_purpose", "box_edits")},
                    "figures": summary["figures"],
                    "audit": summary["audit"]["final"],
                    "routing_threshold": (summary["routing"]["threshold"] or {}).get("value"),
                    "promoted": {t: m["promoted"] for t, m in summary["models"].items()},
                    "versions": {t: load_manifest(p).version for t, p in production.items()},
                    "map": {"T4": _map(production["T4"], test), "T2": _map(production["T2"], test)},
                    "simulation_only": summary["simulation_only"],
                    "deploys": [],
                }
                arms[name].rounds.append(record)
                log.info("%s round %d: %s", name, number, json.dumps(record["map"]))
                deploys.append(
                    _deploy_in_background(
                        jobs[name],
                        loop,
                        [r.robot_id for r in fleets[name]],
                        summary.get("registry", []),
                        f"{name}-r{number}",
                        record,
                    )
                )
            total = upload_all.add_round(settings.frames_per_robot)
            t4 = upload_all.train(out / "upload-all", number, progress)
            arms["upload-all"].rounds.append({"round": number, "uploaded": total, "map": {"T4": _map(t4, test)}})
    finally:
        for thread in deploys:  # the last rollouts end with the watch window (no frames come any more)
            thread.join()
        for name in loops:
            for robot in fleets[name]:
                robot.close()
            loops[name].close()
    serving = {
        name: {robot.robot_id: robot.cascade.model_versions() for robot in fleet} for name, fleet in fleets.items()
    }
    report = {
        "task": "detection",
        "settings": settings.model_dump(),
        "models": str(models),
        "serving": serving,
        "sites": [s.name for s in sites],
        "test_frames": len(test),
        "test_boxes": int(sum(len(b) for b in test.boxes)),
        "arms": {k: v.rounds for k, v in arms.items()},
        "headline": headline(arms),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, out)
    return report


def _deploy_in_background(
    jobs: LocalDirJobs, loop: CloudLoop, robots: list[str], entries: list[dict], job_prefix: str, record: dict
) -> threading.Thread:
    """Start rolling out the round's approved detectors (canary first); the records land in ``record``."""

    def run() -> None:
        record["deploys"] = deploy_approved(
            jobs,
            loop.registry.store,
            loop.config.store,
            robots,
            entries,
            job_prefix,
            RolloutConfig(canary_count=1, canary_timeout_s=180.0, fleet_timeout_s=300.0, poll_s=0.25),
        )

    thread = threading.Thread(target=run, name=f"deploy-{job_prefix}", daemon=True)
    thread.start()
    return thread


def headline(arms: dict[str, ArmRecord]) -> list[dict]:
    """Return the headline rows: per arm, uploads, labels, human time, ratios and mAP@0.5 round 0 -> last."""
    rows = []
    for name, record in arms.items():
        rounds = [r for r in record.rounds if r["round"] > 0]
        first, last = record.rounds[0]["map"]["T4"], record.rounds[-1]["map"]["T4"]
        row = {
            "arm": name,
            "uploaded": sum(r["uploaded"] for r in rounds)
            if name != "upload-all"
            else (rounds[-1]["uploaded"] if rounds else 0),
            "t4_map50_start": first["map50"],
            "t4_map50_end": last["map50"],
            "t4_map_end": last["map"],
        }
        if name != "upload-all" and rounds:
            labels = [r["labels"] for r in rounds]
            seconds = sum(r["human"]["seconds"] for r in rounds)
            manual = sum(r["figures"]["manual_seconds"] for r in rounds)
            loop_dollars = sum(r["human"]["dollars"] + r["figures"]["labeling_compute_dollars"] for r in rounds)
            manual_dollars = sum(r["figures"]["manual_dollars"] for r in rounds)
            row.update(
                accepted=sum(entry["accepted"] for entry in labels),
                auto=sum(entry["auto_accepted"] for entry in labels),
                human=sum(entry["human"] for entry in labels),
                boxes=sum(entry["boxes"] for entry in labels),
                human_hours=round(seconds / 3600.0, 4),
                manual_hours=round(manual / 3600.0, 4),
                throughput_ratio=round(manual / seconds, 3) if seconds else None,
                cost_ratio=round(manual_dollars / loop_dollars, 3) if loop_dollars else None,
                t2_map50_end=record.rounds[-1]["map"]["T2"]["map50"],
                audit=[r["audit"] for r in rounds if r.get("audit")][-1:] or None,
            )
        rows.append(row)
    return rows


def write_report(report: dict, out: Path) -> list[Path]:
    """Write report.json, report.md (headline and mAP per round) and map_per_round.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = [out / "report.json", out / "report.md", out / "map_per_round.png"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    lines = [
        "# FleetLoop detection demo",
        "",
        f"{report['settings']['robots']} robots x {report['settings']['rounds']} rounds x "
        f"{report['settings']['frames_per_robot']} frames; detectors: {report['models']}; field test set "
        f"{report['test_frames']} frames / {report['test_boxes']} boxes ({', '.join(report['sites'])}).",
        "",
        "| arm | frames uploaded | box labels accepted (auto / human) | boxes | human h (manual h) | "
        "throughput ratio | cost ratio | T4 mAP@0.5 round 0 -> last | T4 mAP@0.5:0.95 last |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["headline"]:
        if "accepted" in row:
            lines.append(
                f"| {row['arm']} | {row['uploaded']} | {row['accepted']} ({row['auto']} / {row['human']}) | "
                f"{row['boxes']} | {row['human_hours']:.3f} ({row['manual_hours']:.3f}) | "
                f"{_fmt(row['throughput_ratio'])} | {_fmt(row['cost_ratio'])} | "
                f"{row['t4_map50_start']:.3f} -> {row['t4_map50_end']:.3f} | {row['t4_map_end']:.3f} |"
            )
        else:
            lines.append(
                f"| {row['arm']} | {row['uploaded']} (all, true boxes) | - | - | - | - | - | "
                f"{row['t4_map50_start']:.3f} -> {row['t4_map50_end']:.3f} | {row['t4_map_end']:.3f} |"
            )
    lines += [
        "",
        "## mAP per round (field test set)",
        "",
        "| round | arm | T4 mAP@0.5 | T4 mAP@0.5:0.95 | T2 mAP@0.5 |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for arm, rounds in report["arms"].items():
        for r in rounds:
            t2 = r["map"].get("T2", {}).get("map50")
            lines.append(
                f"| {r['round']} | {arm} | {r['map']['T4']['map50']:.3f} | {r['map']['T4']['map']:.3f} | "
                f"{'-' if t2 is None else f'{t2:.3f}'} |"
            )
    paths[1].write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    for arm, rounds in report["arms"].items():
        axis.plot(
            [r["round"] for r in rounds],
            [r["map"]["T4"]["map50"] for r in rounds],
            marker="o",
            label=f"{arm}: T4 mAP@0.5",
        )
    axis.set_xlabel("round")
    axis.set_ylabel("mAP@0.5 (field test set)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=110)
    plt.close(figure)
    return paths


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fleetloop_cloud.detection_demo [--quick] [--out DIR] [--models DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fleetloop_cloud.detection_demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="two robots, two short rounds, the test detectors")
    parser.add_argument("--out", default=None, help="report directory (default runs/detection-demo)")
    parser.add_argument("--models", default=None, help="detector tiers T1..T4 (built when missing)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--robots", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"rounds": args.rounds, "robots": args.robots, "frames_per_robot": args.frames}
    config = load_demo_config(
        quick=args.quick, overrides={"detection": {k: v for k, v in overrides.items() if v is not None}}
    )
    settings = config.detection
    out = Path(args.out) if args.out else repo_root() / "runs" / "detection-demo"
    report = run_detection_demo(
        out, settings, Path(args.models) if args.models else None, progress=not args.no_progress
    )
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.json'} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("FLEETLOOP_TRAIN_THREADS", "1")
    raise SystemExit(main())
