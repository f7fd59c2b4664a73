"""The cloud loop for detectors: ``DetectionLoop(config).run_round() -> RoundSummary``.

The same six steps, state machine and backends as :class:`fleetloop_cloud.pipeline.CloudLoop`
(which it extends: ingest, the step bookkeeping, the registry and the training backends are
inherited), with boxes instead of class labels:

    ingest     inherited (sidecars carry the robot's boxes and, in simulation, the true boxes)
    autolabel  the T1 and T2 detectors box every frame they have not seen (box_predictions)
    review     humans box a random calibration sample -> the confidence threshold from it (box_consensus:
               mean IoU and class accuracy against human boxes, ``detection.target_*``) -> auto-accept
               frames where T1 and T2 agree (no unmatched box, no class conflict, matched IoU >= min_tier_iou)
               at or above it -> humans check the rest (suggestions shown, active-learning order, budget)
               -> QA audit of auto-accepted frames measured the same way, tightening and re-reviewing
               when it falls below target
    train      T2 on every accepted box label + lab frames, T3/T4 distilled from it (box_train.py), on the
               SageMaker training contract (local process or SageMaker job)
    evaluate   the mAP@0.5 gate with mAP@0.5:0.95 beside it, per class and per site (box_evaluate.py)
    register   inherited: signed packages, Approved where the gate promoted them

Human work is priced per box action (``cost_model.yaml: boxes``); the manual baseline boxes every
accepted frame from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from fleetloop_core.detection import DetectorModel, NONE_NAME
from fleetloop_core.errors import ConfigError
from fleetloop_core.manifest import load_manifest

from fleetloop_cloud import active
from fleetloop_cloud.box_annotators import (
    BoxAnnotatorContext,
    box_task_cost,
    make_box_annotator,
    record_box_answer,
    require_box_costs,
)
from fleetloop_cloud.box_consensus import (
    BoxSet,
    BoxTargets,
    Consensus,
    aggregate,
    choose_threshold,
    compare,
    consensus,
)
from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.config import BoxCosts
from fleetloop_cloud.costs import compute_dollars
from fleetloop_cloud.pipeline import STEPS, CloudLoop, RoundSummary
from fleetloop_cloud.routing import wilson_interval

log = logging.getLogger("fleetloop_cloud.detection")


# ------------------------------------------------------------------------------------ teachers


def run_box_teachers(
    pool,
    boxes: BoxPool,
    cache,
    teachers: dict[str, DetectorModel],
    frame_ids: Sequence[str],
    batch_size: int = 64,
    score_threshold: float | None = None,
    progress: bool = True,
) -> dict:
    """Box every frame a teacher version has not seen yet; store boxes (+ per-class scores); return a report."""
    started = time.perf_counter()
    rows = {row["id"]: row for row in pool.frames(ids=frame_ids, include_duplicates=True)}
    predicted = {}
    for tier, model in teachers.items():
        todo = boxes.missing_predictions(tier, model.version, list(frame_ids))
        predicted[tier] = len(todo)
        bar = tqdm(total=len(todo), desc=f"auto-box {tier}", unit="frame", disable=not progress, leave=False)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            outputs = model.detect_batch(
                cache.images([rows[f] for f in batch]), batch_size=batch_size, score_floor=score_threshold
            )
            boxes.put_predictions(
                tier,
                model.version,
                [
                    (
                        f,
                        BoxSet(
                            o.detections.boxes, o.detections.scores, o.detections.classes, o.detections.class_scores
                        ),
                    )
                    for f, o in zip(batch, outputs)
                ],
            )
            bar.update(len(batch))
        bar.close()
    return {
        "frames": len(frame_ids),
        "predicted": predicted,
        "versions": {t: m.version for t, m in teachers.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class BoxLabelingFigures:
    """Labeling figures with box-level costs (loop vs manual, the same cost model for both)."""

    accepted_frames: int
    accepted_boxes: int
    human_seconds: float
    human_dollars: float
    labeling_compute_dollars: float
    manual_seconds: float  # boxing every accepted frame from scratch
    manual_dollars: float
    loop_frames_per_human_hour: float | None
    manual_frames_per_human_hour: float | None
    throughput_ratio: float | None
    loop_cost_per_frame: float | None
    manual_cost_per_frame: float | None
    cost_ratio: float | None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def box_labeling_figures(
    costs: BoxCosts, box_counts: Sequence[int], human_seconds: float, human_dollars: float, compute_dollars_: float
) -> BoxLabelingFigures:
    """Return the round's figures: ``box_counts`` are the boxes of each accepted frame."""
    frames = len(box_counts)
    manual = [costs.manual_seconds(n) for n in box_counts]
    manual_seconds = float(sum(manual))
    manual_dollars = float(sum(costs.task_price(s) for s in manual))
    loop_rate = frames / (human_seconds / 3600.0) if human_seconds > 0 else None
    manual_rate = frames / (manual_seconds / 3600.0) if manual_seconds > 0 else None
    loop_cost = (human_dollars + compute_dollars_) / frames if frames else None
    manual_cost = manual_dollars / frames if frames else None
    return BoxLabelingFigures(
        accepted_frames=frames,
        accepted_boxes=int(sum(box_counts)),
        human_seconds=human_seconds,
        human_dollars=human_dollars,
        labeling_compute_dollars=compute_dollars_,
        manual_seconds=manual_seconds,
        manual_dollars=manual_dollars,
        loop_frames_per_human_hour=loop_rate,
        manual_frames_per_human_hour=manual_rate,
        throughput_ratio=loop_rate / manual_rate if loop_rate and manual_rate else None,
        loop_cost_per_frame=loop_cost,
        manual_cost_per_frame=manual_cost,
        cost_ratio=manual_cost / loop_cost if loop_cost and manual_cost is not None else None,
    )


# ------------------------------------------------------------------------------------ the loop


class DetectionLoop(CloudLoop):
    """The cloud loop over detector tiers (boxes in a BoxPool beside the frame pool)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        manifest = load_manifest(self.base_models["T2"])
        if manifest.task != "detection":
            raise ConfigError(
                f"{self.base_models['T2']}: a {manifest.task} model; the detection loop needs detector "
                f"tiers (fleetloop models build --profile detection-default)"
            )
        self.classes = list(manifest.labels)
        self.labels = [*self.classes, NONE_NAME]  # frame labels: what robots' sidecars index into
        self.boxes = BoxPool(self.pool)
        self.box_costs = require_box_costs(self.cost_model, str(config.cost_model))
        self.detection = config.detection
        make_box_annotator(self.detection.annotator, self._box_context(0))  # unknown names fail now
        self.threshold = (
            self.detection.score_threshold
            if self.detection.score_threshold is not None
            else manifest.detection.score_threshold
        )
        self.targets = BoxTargets(
            mean_iou=self.detection.target_mean_iou,
            class_accuracy=self.detection.target_class_accuracy,
            z=self.detection.bound_z,
            min_accepted=self.detection.min_validation,
        )

    def close(self) -> None:
        self.boxes.close()
        super().close()

    # ================================================================== autolabel
    def autolabel(self) -> dict:
        """Step 2: the T1 and T2 detectors box every frame they have not seen yet."""

        def body(round_number: int) -> dict:
            cfg = self.config.autolabel
            teachers = {
                t: DetectorModel.load(
                    self.production(t), providers=cfg.providers, intra_op_threads=cfg.threads, warmup=0
                )
                for t in cfg.tiers
            }
            floor = min(self.detection.candidate_floor, self.threshold)
            report = run_box_teachers(
                self.pool,
                self.boxes,
                self.cache,
                teachers,
                self._autolabel_ids(round_number),
                cfg.batch_size,
                floor,
                self.progress,
            )
            self.pool.set_state([r["id"] for r in self.pool.frames(state="new")], "auto_labeled")
            return report

        return self._run("autolabel", body)

    def _autolabel_ids(self, round_number: int) -> list[str]:
        ids = {r["id"] for r in self.pool.frames(round=round_number)}
        ids |= {r["id"] for r in self.pool.frames(state=("new", "auto_labeled", "in_review"))}
        ids |= {t.frame_id for t in self.boxes.tasks(purpose="calibration", status="done")}
        return sorted(ids)

    def consensus(self, round_number: int, ids: Sequence[str]) -> list[Consensus]:
        """Return the T1/T2 consensus of frames (their boxes from this round's teacher versions)."""
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        a = self.boxes.predictions(tier_a, version_a, ids)
        b = self.boxes.predictions(tier_b, version_b, ids)
        return [
            consensus(x, y, self.detection.match_iou, self.detection.min_tier_iou, self.threshold) for x, y in zip(a, b)
        ]

    # ================================================================== review
    def _box_context(self, round_number: int) -> BoxAnnotatorContext:
        sim = self.detection.simulated
        return BoxAnnotatorContext(
            pool=self.pool,
            boxes=self.boxes,
            classes=self.classes,
            round=round_number,
            error_rate=sim.error_rate,
            miss_rate=sim.miss_rate,
            box_jitter_px=sim.box_jitter_px,
            seed=sim.seed,
        )

    def _box_dispatch(self, round_number: int, annotator) -> None:
        opened = self.boxes.tasks(round=round_number, status="open")
        if opened:
            annotator.submit(opened)
            self.boxes.mark_submitted([t.id for t in opened], annotator.name)
        submitted = self.boxes.tasks(round=round_number, status="submitted")
        for answer in annotator.collect(submitted) if submitted else []:
            if answer.error or answer.boxes is None:
                log.warning("box task %d failed: %s", answer.task_id, answer.error)
                self.boxes.fail_task(answer.task_id, answer.error or "no answer")
                continue
            record_box_answer(
                self.boxes, self.box_costs, answer.task_id, answer.boxes, answer.annotator, self.classes, answer.seconds
            )

    def _box_apply(self, round_number: int) -> None:
        finished = self.boxes.unapplied(round_number)
        with self.pool.transaction():
            for task in finished:
                if task.status == "done":
                    self.boxes.set_label(
                        task.frame_id,
                        task.answer,
                        "human",
                        round_number,
                        reason=f"{task.purpose} task {task.id}",
                        task_id=task.id,
                    )
                    self.pool.set_state([task.frame_id], "labeled")
                elif task.purpose != "audit":
                    self.pool.set_state([task.frame_id], "in_review")
            self.boxes.mark_applied([t.id for t in finished])

    def review(self) -> dict:
        """Step 3: calibration sample, routing on box consensus, human review, QA audit."""

        def body(round_number: int) -> dict:
            _, info = self.pool.step(round_number, "review")
            info = dict(info)
            annotator = make_box_annotator(self.detection.annotator, self._box_context(round_number))
            while True:
                self._box_dispatch(round_number, annotator)
                self._box_apply(round_number)
                pending = self.boxes.tasks(round=round_number, status=("open", "submitted"))
                if pending:
                    info["waiting_tasks"] = len(pending)
                    info["_status"] = "waiting"
                    log.info("round %d: review waits for %d human box answer(s)", round_number, len(pending))
                    return info
                info.pop("waiting_tasks", None)
                phase = info.get("phase", "calibration")
                if phase == "done":
                    return info
                info = getattr(self, f"_box_{phase.split('-')[0]}")(round_number, info)
                self.pool.set_step(round_number, "review", "running", info)

        return self._run("review", body)

    def _unlabeled_rows(self) -> list:
        labeled = self.boxes.labels()
        return [r for r in self.pool.frames(state=("auto_labeled", "in_review")) if r["id"] not in labeled]

    def _suggestions(self, round_number: int, ids: Sequence[str]) -> list[BoxSet | None]:
        if not self.config.review.show_suggestions:
            return [None] * len(ids)
        return [c.fused for c in self.consensus(round_number, ids)]

    def _box_calibration(self, round_number: int, info: dict) -> dict:
        rows = self._unlabeled_rows()
        count = min(self.config.review.calibration_sample, len(rows))
        rng = self._rng(round_number, "box-calibration")
        robot_random = [r for r in rows if r["random"]]
        others = [r for r in rows if not r["random"]]
        picked = [robot_random[i] for i in rng.permutation(len(robot_random))]
        picked = (picked + [others[i] for i in rng.permutation(len(others))])[:count]
        ids = [r["id"] for r in picked]
        if self.config.evaluation.test_set == "holdout":
            fraction = self.config.evaluation.holdout_fraction
            self.pool.set_holdout(
                [f for f in ids if int(hashlib.sha256(f.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction]
            )
        self.boxes.add_tasks(
            round_number,
            "calibration",
            list(zip(ids, self._suggestions(round_number, ids))),
            shown=self.config.review.show_suggestions,
        )
        info.update(phase="route", calibration_tasks=count)
        return info

    def _box_route(self, round_number: int, info: dict) -> dict:
        tasks = [t for t in self.boxes.tasks(purpose="calibration", status="done")]
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        missing = set(self.boxes.missing_predictions(tier_a, version_a, [t.frame_id for t in tasks])) | set(
            self.boxes.missing_predictions(tier_b, version_b, [t.frame_id for t in tasks])
        )
        tasks = [t for t in tasks if t.frame_id not in missing]
        validation = self.consensus(round_number, [t.frame_id for t in tasks])
        comparisons = [compare(c.fused, t.answer, self.detection.match_iou) for c, t in zip(validation, tasks)]
        floor = float(self.pool.get("box_threshold_floor", 0.0))
        threshold = choose_threshold(
            np.asarray([c.confidence for c in validation]),
            comparisons,
            np.asarray([c.agree for c in validation]),
            self.targets,
            floor,
        )
        rows = self._unlabeled_rows()
        ids = [r["id"] for r in rows]
        found = self.consensus(round_number, ids)
        accepted = [i for i, c in enumerate(found) if c.agree and c.confidence >= threshold.value]
        with self.pool.transaction():
            for i in accepted:
                self.boxes.set_label(
                    ids[i],
                    found[i].fused,
                    "auto",
                    round_number,
                    reason=f"T1/T2 agree, confidence >= {threshold.value:.4f}",
                    confidence=found[i].confidence,
                )
            self.pool.set_state([ids[i] for i in accepted], "accepted")
        quality = aggregate(comparisons)
        info.update(
            phase="review",
            threshold=threshold.to_dict(),
            validation_frames=len(tasks),
            validation_quality=quality.to_dict(),
            auto_accepted=len(accepted),
            tier_agreement=round(float(np.mean([c.agree for c in found])), 4) if found else None,
        )
        return info

    def _box_review(self, round_number: int, info: dict) -> dict:
        self._queue_box_review(round_number, info, "review_tasks")
        info["phase"] = "audit-1"
        return info

    def _queue_box_review(self, round_number: int, info: dict, key: str) -> None:
        rows = self._unlabeled_rows()
        ids = [r["id"] for r in rows]
        found = self.consensus(round_number, ids)
        uncertainty = np.asarray([c.uncertainty for c in found], np.float32)
        embeddings = (
            np.stack(
                [
                    np.frombuffer(r["robot_embedding"], np.float32)
                    if r["robot_embedding"] is not None
                    else np.zeros(1, np.float32)
                    for r in rows
                ]
            )
            if rows and len({0 if r["robot_embedding"] is None else len(r["robot_embedding"]) for r in rows}) == 1
            else np.zeros((len(rows), 1), np.float32)
        )
        budget = self.config.review.human_budget
        spent = len([t for t in self.boxes.tasks(round=round_number) if t.purpose == "review"])
        room = len(ids) if budget is None else max(0, budget - spent)
        order = active.select(self.config.review.strategy, embeddings, uncertainty, room, self._rng(round_number, key))
        chosen = [ids[i] for i in order]
        self.boxes.add_tasks(
            round_number,
            "review",
            [(ids[i], found[i].fused if self.config.review.show_suggestions else None) for i in order],
            shown=self.config.review.show_suggestions,
        )
        waiting = set(ids) - set(chosen)
        self.pool.set_state(waiting, "in_review")
        info[key] = info.get(key, 0) + len(chosen)
        info["pending_review"] = len(waiting)

    def _audit_population(self, round_number: int) -> list[str]:
        audited = {t.frame_id for t in self.boxes.tasks(round=round_number, purpose="audit")}
        return sorted(
            f
            for f, label in self.boxes.labels().items()
            if label.round == round_number and label.source == "auto" and f not in audited
        )

    def _box_audit(self, round_number: int, info: dict) -> dict:
        cfg = self.config.audit
        number = int(info["phase"].split("-")[1])
        population = self._audit_population(round_number)
        count = min(len(population), max(cfg.min_frames, math.ceil(cfg.fraction * len(population))))
        if count == 0:
            info["phase"] = "done"
            return info
        rng = self._rng(round_number, f"box-audit-{number}")
        picked = [population[i] for i in rng.permutation(len(population))[:count]]
        labels = self.boxes.labels(picked)
        ids = self.boxes.add_tasks(round_number, "audit", [(f, labels[f].boxes) for f in picked], shown=True)
        info.setdefault("audit_passes", []).append(
            {"pass": number, "tasks": ids, "population": len(population), "threshold": info["threshold"]["value"]}
        )
        info["phase"] = f"check-{number}"
        return info

    def _box_check(self, round_number: int, info: dict) -> dict:
        cfg, targets = self.config.audit, self.targets
        number = int(info["phase"].split("-")[1])
        record = info["audit_passes"][-1]
        tasks = [self.boxes.task(t) for t in record["tasks"]]
        done = [t for t in tasks if t.status == "done"]
        quality = aggregate([compare(t.suggestion, t.answer, self.detection.match_iou) for t in done])
        low, high = wilson_interval(quality.class_correct, quality.matched, cfg.confidence_level)
        meets = bool(done) and quality.mean_iou >= targets.mean_iou and quality.class_accuracy >= targets.class_accuracy
        record.update(
            frames=len(done),
            quality=quality.to_dict(),
            mean_iou=round(quality.mean_iou, 4),
            class_accuracy=round(quality.class_accuracy, 4),
            class_accuracy_ci=[low, high],
            confidence_level=cfg.confidence_level,
            failed_tasks=len(tasks) - len(done),
            meets_target=meets,
        )
        if not done or meets:
            info["phase"] = "done"
            return info
        current = info["threshold"]["value"] or 0.0
        floor = min(1.0, max(current, float(self.pool.get("box_threshold_floor", 0.0))) + cfg.tighten_step)
        self.pool.put("box_threshold_floor", floor)
        info["threshold"] = {**info["threshold"], "value": floor, "reason": f"tightened after audit pass {number}"}
        record["tightened"] = floor
        if number >= cfg.max_passes:
            info["phase"] = "done"
            return info
        population = self._audit_population(round_number)
        labels = self.boxes.labels(population)
        withdrawn = [f for f in population if (labels[f].confidence or 0.0) < floor]
        with self.pool.transaction():
            for frame_id in withdrawn:
                self.boxes.remove_label(
                    frame_id, round_number, reason=f"auto boxes below the tightened floor after audit pass {number}"
                )
            self.pool.set_state(withdrawn, "in_review")
        record["withdrawn"] = len(withdrawn)
        self._queue_box_review(round_number, info, "rereview_tasks")
        info["phase"] = f"audit-{number + 1}"
        return info

    # ================================================================== train
    def _replay_box_frames(self, count: int):
        if count <= 0:
            return []
        from fleetloop_core import sim

        sizes = [(r["height"], r["width"]) for r in self.pool.frames()]
        height, width = max(set(sizes), key=sizes.count) if sizes else (128, 128)
        data = sim.render_set(
            sim.LAB_SITE,
            sim.item_pool().lab_train,
            count,
            seed=("box-replay", self.config.training.seed),
            height=height,
            width=width,
            sites=sim.lab_sites(16, self.config.training.seed),
            task="detection",
        )
        return [
            (f"lab-{i:06d}", data.images[i], BoxSet(t.boxes, np.ones(len(t.boxes), np.float32), t.classes), "lab")
            for i, t in enumerate(data.truths)
        ]

    def _write_box_channels(self, round_number: int, root: Path) -> tuple[dict[str, Path], list[str]]:
        from fleetloop_cloud.box_manifest import write_box_channel

        rows = [r for r in self.pool.frames() if not r["holdout"]]
        labels = self.boxes.labels([r["id"] for r in rows])
        labeled = [r for r in rows if r["id"] in labels]
        data = {r["id"]: self.cache.get_bytes(r["id"], r["frame_key"]) for r in rows}
        channels = {
            "train": write_box_channel(
                root / "train",
                [(r["id"], data[r["id"]], labels[r["id"]].boxes, r["site"]) for r in labeled],
                self.classes,
            ),
            "unlabeled": write_box_channel(
                root / "unlabeled",
                [
                    (r["id"], data[r["id"]], labels[r["id"]].boxes if r["id"] in labels else None, r["site"])
                    for r in rows
                ],
                self.classes,
            ),
        }
        replay = self._replay_box_frames(self.config.training.lab_replay_frames)
        if replay:
            channels["replay"] = write_box_channel(root / "replay", replay, self.classes)
        models = root / "models"
        models.mkdir(parents=True, exist_ok=True)
        for tier in ("T2", "T3", "T4"):
            if not (models / tier).exists():
                shutil.copytree(self.production(tier), models / tier)
        channels["models"] = models
        return channels, [r["id"] for r in labeled]

    def train(self) -> dict:
        """Step 4: train the T2 detector on every accepted box label, distil T3/T4 (local process or SageMaker)."""

        def body(round_number: int) -> dict:
            from fleetloop_cloud.training_backends import TrainingJob

            labels = self.boxes.labels()
            fingerprint = hashlib.sha256(
                json.dumps(sorted((k, v.boxes.rows(False)) for k, v in labels.items())).encode()
            ).hexdigest()
            if not labels:
                return {"_status": "skipped", "reason": "no accepted box labels yet: nothing to train on"}
            if fingerprint == self.pool.get("box_trained_on"):
                return {"_status": "skipped", "reason": "no new box labels since the last training job"}
            version = f"r{round_number}-{fingerprint[:8]}"
            root = self.work / "rounds" / f"{round_number:04d}"
            channels, used = self._write_box_channels(round_number, root / "channels")
            t = self.config.training
            hyperparameters = {
                "version": version,
                "teacher_epochs": t.teacher_epochs,
                "distil_epochs": t.distil_epochs,
                "warm_start_epochs": t.warm_start_epochs,
                "batch_size": t.batch_size,
                "lr": t.lr,
                "seed": t.seed,
                "int8": False,
                "threads": t.threads,
            }
            job = TrainingJob(
                name=f"fleetloop-det-{version}",
                channels=channels,
                hyperparameters={
                    k: json.dumps(v) if isinstance(v, bool) or v is None else str(v) for k, v in hyperparameters.items()
                },
                work_dir=root / "jobs",
            )
            result = self.training_backend.run(job)
            self.pool.record_usage(used, version)
            self.pool.put("box_trained_on", fingerprint)
            return {
                "version": version,
                "model_dir": str(result.model_dir),
                "report": result.report,
                "backend": self.training_backend.name,
                "train_frames": len(used),
                "job_cpu_seconds": round(result.cpu_seconds, 3),
                "gpu_seconds": round(result.gpu_seconds, 3),
                "instance_seconds": round(result.instance_seconds, 3),
                "details": result.details,
            }

        return self._run("train", body)

    # ================================================================== evaluate
    def evaluate(self) -> dict:
        """Step 5: candidate vs production detectors on the held-out test set; the mAP@0.5 gate."""

        def body(round_number: int) -> dict:
            from fleetloop_cloud.box_evaluate import box_gate, make_box_test_set, score_detector

            candidates = self._candidates(round_number)
            if not candidates:
                status, info = self.pool.step(round_number, "train")
                return {
                    "_status": "skipped",
                    "reason": f"no candidates (train {status}: {info.get('reason') or info.get('error', '')})",
                }
            cfg = self.config.evaluation
            test = make_box_test_set(cfg.test_set, self.pool, self.boxes, self.cache, self.config)
            results = {}
            for tier in cfg.tiers:
                if tier not in candidates:
                    continue
                production = DetectorModel.load(self.production(tier), providers=("cpu",), warmup=0)
                candidate = DetectorModel.load(candidates[tier], providers=("cpu",), warmup=0)
                before, after = score_detector(production, test), score_detector(candidate, test)
                decision = box_gate(before, after, cfg)
                results[tier] = {
                    "production_version": production.version,
                    "candidate_version": candidate.version,
                    "before": {"overall": round(before.map50, 4), **before.to_dict()},
                    "after": {"overall": round(after.map50, 4), **after.to_dict()},
                    "decision": decision.to_dict(),
                    "gated": True,
                    "candidate_dir": str(candidates[tier]),
                }
            return {
                "test_set": test.name,
                "test_frames": len(test),
                "test_boxes": int(sum(len(b) for b in test.boxes)),
                "metric": "mAP@0.5 (gate), mAP@0.5:0.95",
                "tiers": results,
            }

        return self._run("evaluate", body)

    # ================================================================== summary
    def summary(self, round_number: int, status: str = "finished") -> RoundSummary:
        """Return every figure of a detection round (box-level costs, mAP per tier)."""
        steps = {s: self.pool.step(round_number, s) for s in STEPS}
        info = {s: i for s, (_, i) in steps.items()}
        tasks = [t for t in self.boxes.tasks(round=round_number) if t.status == "done"]
        labels = {f: label for f, label in self.boxes.labels().items() if label.round == round_number}
        review = info["review"]
        by_purpose: dict[str, dict] = {}
        edits_total = {"kept": 0, "adjusted": 0, "deleted": 0, "drawn": 0, "reclassed": 0}
        for task in tasks:
            entry = by_purpose.setdefault(task.purpose, {"tasks": 0, "boxes": 0, "seconds": 0.0, "dollars": 0.0})
            entry["tasks"] += 1
            entry["boxes"] += len(task.answer) if task.answer is not None else 0
            entry["seconds"] += task.seconds or 0.0
            entry["dollars"] += task.dollars or 0.0
            for key in edits_total:
                edits_total[key] += int((task.edits or {}).get(key, 0))
        human_seconds = sum(e["seconds"] for e in by_purpose.values())
        human_dollars = sum(e["dollars"] for e in by_purpose.values())
        compute = {}
        for step in STEPS:
            i = info[step]
            cpu = float(i.get("cpu_seconds", 0.0)) + float(i.get("job_cpu_seconds", 0.0))
            gpu = float(i.get("gpu_seconds", 0.0))
            if step == "train" and i.get("instance_seconds"):
                dollars = float(i["instance_seconds"]) * self.cost_model.cpu_instance.usd_per_hour / 3600.0
            else:
                dollars = compute_dollars(self.cost_model, cpu, gpu)
            compute[step] = {"cpu_seconds": round(cpu, 3), "gpu_seconds": round(gpu, 3), "dollars": round(dollars, 6)}
        labeling_compute = sum(compute[s]["dollars"] for s in ("ingest", "autolabel", "review"))
        audited = {t.frame_id for t in tasks if t.purpose == "audit"}
        sources = {"human": 0, "auto": 0}
        for frame_id, label in labels.items():
            sources["auto" if frame_id in audited else label.source] += 1
        figures = box_labeling_figures(
            self.box_costs,
            [len(label.boxes) for label in labels.values()],
            human_seconds,
            human_dollars,
            labeling_compute,
        )
        passes = [{k: v for k, v in p.items() if k != "tasks"} for p in review.get("audit_passes", [])]
        final = next((p for p in reversed(passes) if p.get("frames")), None)
        data = {
            "task": "detection",
            "frames": {
                "ingested": info["ingest"].get("ingested", 0),
                "exact_duplicates": info["ingest"].get("exact_duplicates", 0),
                "near_duplicates": info["ingest"].get("near_duplicates", 0),
                "quarantined": len(info["ingest"].get("quarantined", {})),
                "waiting_for_sidecar": len(info["ingest"].get("waiting_for_sidecar", [])),
                "pending_review": review.get("pending_review", 0),
            },
            "labels": {
                "accepted": len(labels),
                "auto_accepted": sources["auto"],
                "human": sources["human"],
                "boxes": int(sum(len(label.boxes) for label in labels.values())),
                "sent_to_humans": len({t.frame_id for t in tasks}),
            },
            "routing": {
                "target_mean_iou": self.targets.mean_iou,
                "target_class_accuracy": self.targets.class_accuracy,
                "threshold": review.get("threshold"),
                "validation_frames": review.get("validation_frames"),
                "validation_quality": review.get("validation_quality"),
                "tier_agreement": review.get("tier_agreement"),
            },
            "audit": {
                "target_mean_iou": self.targets.mean_iou,
                "target_class_accuracy": self.targets.class_accuracy,
                "passes": passes,
                "final": final,
                "meets_target": bool(final and final.get("meets_target")),
            },
            "human": {
                "seconds": round(human_seconds, 3),
                "dollars": round(human_dollars, 6),
                "by_purpose": {
                    k: {**v, "seconds": round(v["seconds"], 3), "dollars": round(v["dollars"], 6)}
                    for k, v in sorted(by_purpose.items())
                },
                "box_edits": edits_total,
                "costs": self.box_costs.model_dump(exclude={"source"}),
            },
            "compute": {
                "by_step": compute,
                "dollars": round(sum(c["dollars"] for c in compute.values()), 6),
                "labeling_dollars": round(labeling_compute, 6),
                "instance": self.cost_model.cpu_instance.name,
            },
            "figures": figures.to_dict(),
            "models": self._map_summary(info),
            "registry": info["register"].get("entries", []),
            "notes": {
                s: i.get("reason") or i.get("error") for s, i in info.items() if i.get("reason") or i.get("error")
            },
            "simulation_only": self._box_truth_check(labels),
        }
        return RoundSummary(round=round_number, status=status, steps={s: st for s, (st, _) in steps.items()}, data=data)

    def _map_summary(self, info: dict) -> dict:
        out = {}
        for tier, result in info["evaluate"].get("tiers", {}).items():
            out[tier] = {
                "production": result["production_version"],
                "candidate": result["candidate_version"],
                "map50_before": result["before"]["map50"],
                "map50_after": result["after"]["map50"],
                "map_before": result["before"]["map"],
                "map_after": result["after"]["map"],
                "per_site_after": result["after"]["per_site"],
                "per_class_after": result["after"]["per_class"],
                "promoted": bool(result["decision"]["promote"]),
                "gated": True,
                "reasons": result["decision"]["reasons"],
            }
        return out

    def _box_truth_check(self, labels: dict) -> dict:
        """Return the quality of this round's box labels against simulated truth (never used by the loop)."""
        rows = {r["id"]: r for r in self.pool.frames(ids=labels)}
        out = {}
        for source in ("auto", "human"):
            comparisons = []
            for frame_id, label in labels.items():
                if label.source != source or frame_id not in rows:
                    continue
                truth = (json.loads(rows[frame_id]["sidecar"]).get("simulation") or {}).get("boxes")
                if truth is None:
                    continue
                comparisons.append(
                    compare(
                        label.boxes,
                        BoxSet.from_rows([t[:5] for t in truth], with_scores=False),
                        self.detection.match_iou,
                    )
                )
            if comparisons:
                out[source] = aggregate(comparisons).to_dict()
        return out


def open_loop(path=None, **kwargs) -> CloudLoop:
    """Return the loop config/cloud.yaml (or ``path``) describes: a DetectionLoop when its T2 is a detector."""
    from fleetloop_cloud.config import load_cloud_config

    config = load_cloud_config(path)
    t2 = Path(config.models) / "T2"
    if (t2 / "manifest.json").is_file() and load_manifest(t2).task == "detection":
        return DetectionLoop(config, **kwargs)
    return CloudLoop(config, **kwargs)


def detection_summary_table(summary: RoundSummary | dict):
    """Return a rich Table of a detection round's summary (box labels, audit, box-level costs, mAP)."""
    from rich.table import Table

    data = summary.to_dict() if isinstance(summary, RoundSummary) else summary
    table = Table(title=f"FleetLoop detection round {data['round']} ({data['status']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    frames, labels, audit, figures = data["frames"], data["labels"], data["audit"], data["figures"]
    threshold = (data["routing"]["threshold"] or {}).get("value")
    rows = [
        ("frames ingested", frames["ingested"]),
        ("box labels accepted (auto / human)", f"{labels['accepted']} ({labels['auto_accepted']} / {labels['human']})"),
        ("boxes in accepted labels", labels["boxes"]),
        ("frames sent to humans", labels["sent_to_humans"]),
        ("pending review (over budget)", frames["pending_review"]),
        (
            "routing threshold (consensus confidence)",
            "none: nothing automated" if threshold is None else f"{threshold:.4f}",
        ),
    ]
    final = audit.get("final")
    rows.append(
        (
            "audit: mean IoU / class accuracy",
            "no auto boxes to audit"
            if not final
            else f"{final['mean_iou']:.3f} / {final['class_accuracy']:.3f} on {final['frames']} frames "
            f"({'met' if audit['meets_target'] else 'NOT met'})",
        )
    )
    edits = data["human"]["box_edits"]
    rows.append(
        (
            "box edits (kept / adjusted / drawn / deleted / reclassed)",
            " / ".join(str(edits[k]) for k in ("kept", "adjusted", "drawn", "deleted", "reclassed")),
        )
    )
    rows.append(
        (
            "human seconds / dollars (manual baseline)",
            f"{data['human']['seconds']:.1f} s / ${data['human']['dollars']:.3f} "
            f"({figures['manual_seconds']:.1f} s / ${figures['manual_dollars']:.3f})",
        )
    )
    for key, name in (("throughput_ratio", "throughput ratio"), ("cost_ratio", "cost ratio")):
        rows.append((name, "n/a" if figures[key] is None else f"{figures[key]:.2f}x"))
    for tier, model in data["models"].items():
        rows.append(
            (
                f"{tier} mAP@0.5 (0.5:0.95) before -> after",
                f"{model['map50_before']:.3f} ({model['map_before']:.3f}) -> {model['map50_after']:.3f} "
                f"({model['map_after']:.3f}) {'promoted' if model['promoted'] else 'kept production'}",
            )
        )
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def map_per_round(summaries: Sequence[dict]) -> list[dict]:
    """Return per round and tier the production and candidate mAP@0.5 / mAP@0.5:0.95 (what the demo plots)."""
    rows = []
    for summary in summaries:
        for tier, model in summary.get("models", {}).items():
            rows.append(
                {
                    "round": summary["round"],
                    "tier": tier,
                    "map50_before": model["map50_before"],
                    "map50_after": model["map50_after"],
                    "map_before": model["map_before"],
                    "map_after": model["map_after"],
                    "promoted": model["promoted"],
                }
            )
    return rows


def manual_task_cost(costs: BoxCosts, boxes: int) -> tuple[float, float]:
    """Return (seconds, dollars) to box a frame with ``boxes`` items from scratch (the manual baseline)."""
    seconds = costs.manual_seconds(boxes)
    return seconds, costs.task_price(seconds)


__all__ = [
    "DetectionLoop",
    "run_box_teachers",
    "box_labeling_figures",
    "map_per_round",
    "manual_task_cost",
    "box_task_cost",
    "open_loop",
    "detection_summary_table",
]
