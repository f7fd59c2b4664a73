"""The cloud loop for detectors: boxes in a box pool, T1/T2 box consensus, box-level costs, the mAP gate.

Routing: humans box a random calibration sample (pooled over rounds, each frame scored by its own
round's teachers) -> each tier's one-tier boxes weighed by how often people confirmed them, the
confidence threshold from it (box_consensus: mean IoU and class accuracy against human boxes,
``detection.target_*``) -> auto-accept frames where T1 and T2 agree (no kept unmatched box, no class
conflict, matched IoU >= min_tier_iou) at or above it -> humans check the rest -> the audit measures
auto boxes the same way. Human work is timed per box action (``cost_model.yaml: boxes``); the manual
baseline boxes every accepted frame from scratch. Evaluation: the mAP@0.5 gate, mAP@0.5:0.95 beside.
~400 lines: one class is the detector side of every CloudTask method (classification splits its own in modules).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fleetloop_core.detection import NONE_NAME, DetectorModel

from fleetloop_cloud.autolabel import missing_batches, predicted_counts
from fleetloop_cloud.box_annotators import (
    BoxAnnotatorContext,
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
    solo_evidence,
)
from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.loop.summary import RoundFacts
from fleetloop_cloud.loop.tasks import detection_report
from fleetloop_cloud.routing import wilson_interval

if TYPE_CHECKING:
    from fleetloop_core.contracts.manifest import Manifest

    from fleetloop_cloud.loop.core import CloudLoop

log = logging.getLogger("fleetloop_cloud.detection")


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
    predicted = predicted_counts(boxes, teachers, frame_ids)
    for tier, model, batch in missing_batches(boxes, teachers, frame_ids, batch_size, progress, "auto-box"):
        outputs = model.detect_batch(
            cache.images([rows[f] for f in batch]), batch_size=batch_size, score_floor=score_threshold
        )
        found = [o.detections for o in outputs]
        boxes.put_predictions(
            tier,
            model.version,
            [(f, BoxSet(d.boxes, d.scores, d.classes, d.class_scores)) for f, d in zip(batch, found)],
        )
    return {
        "frames": len(frame_ids),
        "predicted": predicted,
        "versions": {t: m.version for t, m in teachers.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _robot_embeddings(rows: list) -> np.ndarray:
    """The robots' frame embeddings (zeros when a frame has none or their sizes differ)."""
    sizes = {0 if r["robot_embedding"] is None else len(r["robot_embedding"]) for r in rows}
    if not rows or len(sizes) != 1 or 0 in sizes:
        return np.zeros((len(rows), 1), np.float32)
    return np.stack([np.frombuffer(r["robot_embedding"], np.float32) for r in rows])  # one size, none missing


class DetectionPart(detection_report.DetectionSummary):
    """What the loop does for detector tiers (boxes in a BoxPool beside the frame pool)."""

    name = "detection"
    rng_prefix = "box-"
    automatic_sources = ("auto",)
    label_noun = "box labels"
    job_prefix = "fleetloop-det-"

    def __init__(self, loop: "CloudLoop", manifest: "Manifest"):
        self.loop = loop
        self.config = loop.config
        self.pool = loop.pool
        self.classes = list(manifest.labels)
        self.frame_labels = [*self.classes, NONE_NAME]  # frame labels: what robots' sidecars index into
        self.box_costs = require_box_costs(loop.cost_model, str(loop.config.cost_model))
        self.detection = loop.config.detection
        self.boxes = BoxPool(self.pool)
        self.answers = self.boxes
        make_box_annotator(self.detection.annotator, self.annotator_context(0))  # unknown names fail now
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
        self.review_phases = {"route": self.route}
        self._solo: dict = {}  # the last solo_evidence and what it was computed from

    def close(self) -> None:
        self.boxes.close()

    def pool_key(self, name: str) -> str:
        return f"box_{name}"

    # ------------------------------------------------------------------ teachers
    def run_teachers(self, packages: dict[str, Path], frame_ids: Sequence[str]) -> dict:
        """Return the report of the T1 and T2 detectors boxing the frames they have not seen."""
        cfg = self.config.autolabel
        teachers = {
            tier: DetectorModel.load(path, providers=cfg.providers, intra_op_threads=cfg.threads, warmup=0)
            for tier, path in packages.items()
        }
        floor = min(self.detection.candidate_floor, self.threshold)
        return run_box_teachers(
            self.pool, self.boxes, self.loop.cache, teachers, frame_ids, cfg.batch_size, floor, self.loop.progress
        )

    def consensus(self, round_number: int, ids: Sequence[str]) -> list[Consensus]:
        """Return the T1/T2 consensus of frames (their boxes from this round's teacher versions)."""
        tier_a, version_a, tier_b, version_b = self.loop.teacher_versions(round_number)
        return self.fuse(self.boxes.predictions(tier_a, version_a, ids), self.boxes.predictions(tier_b, version_b, ids))

    def fuse(self, a: Sequence[BoxSet], b: Sequence[BoxSet]) -> list[Consensus]:
        """Return the consensus of tier A's and tier B's boxes frame by frame, each tier's one-tier boxes
        weighed by the calibration evidence (:meth:`solo_weights`)."""
        cfg, weights, keep = self.detection, self.solo_weights(), self.box_costs.break_even_precision
        return [consensus(x, y, cfg.match_iou, cfg.min_tier_iou, self.threshold, weights, keep) for x, y in zip(a, b)]

    def solo_weights(self) -> tuple[float, float]:
        """Return the weights of each tier's one-tier boxes from how often people confirmed them on the
        calibration frames (recomputed when a calibration answer comes in, only then)."""
        tasks = self.boxes.tasks(purpose="calibration", status="done")
        key = tuple(task.id for task in tasks)
        if self._solo.get("key") != key:
            evidence = self.calibration_evidence(tasks)
            found = solo_evidence([(x, y, t.answer) for t, x, y in evidence], self.detection.match_iou, self.threshold)
            z, least = self.detection.bound_z, self.detection.solo_min_boxes
            self._solo = {"key": key, "evidence": found, "weights": tuple(e.weight(z, least) for e in found)}
        return self._solo["weights"]

    def solo_report(self, round_number: int) -> dict:
        """Return each tier's one-tier box evidence, its weight and whether its one-tier boxes are shown."""
        weights, keep = self.solo_weights(), self.box_costs.break_even_precision
        tiers = self.loop.teacher_versions(round_number)[::2]
        out: dict = {"break_even_precision": round(keep, 4)}
        for tier, evidence, weight in zip(tiers, self._solo["evidence"], weights):
            out[tier] = {**evidence.to_dict(), "weight": round(weight, 4), "shown": weight >= keep}
        return out

    def calibration_evidence(self, tasks: Sequence | None = None) -> list[tuple]:
        """Return (task, tier A's boxes, tier B's boxes) of the done calibration box tasks (or ``tasks``), the
        boxes from the teacher versions of each task's own round (a T2 trained on a label never vouches for it)."""
        tasks = self.boxes.tasks(purpose="calibration", status="done") if tasks is None else tasks
        out: list[tuple] = []
        for number in sorted({t.round for t in tasks}):
            tier_a, version_a, tier_b, version_b = self.loop.teacher_versions(number)
            ids = [t.frame_id for t in tasks if t.round == number]
            missing = set(self.boxes.missing_predictions(tier_a, version_a, ids))
            missing |= set(self.boxes.missing_predictions(tier_b, version_b, ids))
            mine = [t for t in tasks if t.round == number and t.frame_id not in missing]
            ids = [t.frame_id for t in mine]
            out += zip(
                mine, self.boxes.predictions(tier_a, version_a, ids), self.boxes.predictions(tier_b, version_b, ids)
            )
        return out

    # ------------------------------------------------------------------ annotators
    def annotator_context(self, round_number: int) -> BoxAnnotatorContext:
        sim = self.detection.simulated
        return BoxAnnotatorContext(
            pool=self.pool,
            boxes=self.boxes,
            classes=self.classes,
            round=round_number,
            error_rate=sim.error_rate,
            miss_rate=sim.miss_rate,
            box_jitter_px=sim.box_jitter_px,
            accept_iou=sim.accept_iou,
            seed=sim.seed,
        )

    def annotator(self, round_number: int):
        """Return the configured box annotator (detection.annotator) for the round."""
        return make_box_annotator(self.detection.annotator, self.annotator_context(round_number))

    def dispatch(self, round_number: int, annotator) -> None:
        """Submit open box tasks, collect answers, record them with their edits and cost."""
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

    def add_tasks(self, round_number: int, purpose: str, items: list[tuple[str, BoxSet | None]]) -> list[int]:
        """Open box tasks (frame id, suggested boxes or None); an audit always shows the boxes it checks."""
        shown = purpose == "audit" or self.config.review.show_suggestions
        return self.boxes.add_tasks(round_number, purpose, items, shown=shown)

    def suggestions(self, round_number: int, ids: Sequence[str]) -> list[BoxSet | None]:
        """Return the fused T1/T2 boxes of each frame (None when suggestions are not shown)."""
        if not self.config.review.show_suggestions:
            return [None] * len(ids)
        return [c.fused for c in self.consensus(round_number, ids)]

    def calibration_probe(self) -> int:
        """Return ``detection.calibration_probe`` while a tier's one-tier boxes have too little evidence to be
        weighed (then they are all suggested: in round 1 the lab-trained T2's, 4 in 155 right, cost a delete
        each), else 0."""
        self.solo_weights()
        short = any(e.total < self.detection.solo_min_boxes for e in self._solo["evidence"])
        return self.detection.calibration_probe if short else 0

    def sampling_units(self, round_number: int, ids: Sequence[str]) -> list[str]:
        return list(ids)  # boxes are not propagated along tracks: each frame is its own sampling unit

    def label_value(self, label) -> BoxSet:
        return label.boxes

    def fingerprint_value(self, label) -> list:
        return label.boxes.rows(False)

    # ------------------------------------------------------------------ review evidence
    def route(self, loop: "CloudLoop", round_number: int, info: dict) -> dict:
        """Review phase: the consensus-confidence threshold from the calibration boxes; auto-accept above it."""
        from fleetloop_cloud.loop.review import unlabeled_rows

        evidence = self.calibration_evidence()
        tasks = [task for task, _, _ in evidence]
        validation = self.fuse([a for _, a, _ in evidence], [b for _, _, b in evidence])
        comparisons = [compare(c.fused, t.answer, self.detection.match_iou) for c, t in zip(validation, tasks)]
        threshold = choose_threshold(
            np.asarray([c.confidence for c in validation]),
            comparisons,
            np.asarray([c.agree for c in validation]),
            self.targets,
            float(self.pool.get("box_threshold_floor", 0.0)),
        )
        ids = [r["id"] for r in unlabeled_rows(loop)]
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
        info.update(
            phase="review",
            threshold=threshold.to_dict(),
            validation_frames=len(tasks),
            validation_quality=aggregate(comparisons).to_dict(),
            one_tier_boxes=self.solo_report(round_number),
            auto_accepted=len(accepted),
            tier_agreement=round(float(np.mean([c.agree for c in found])), 4) if found else None,
        )
        return info

    def review_order_inputs(self, round_number: int, rows: list, info: dict) -> tuple[np.ndarray, np.ndarray, list]:
        """Return the robots' embeddings, the consensus uncertainty and the suggested boxes of the rows."""
        found = self.consensus(round_number, [r["id"] for r in rows])
        uncertainty = np.asarray([c.uncertainty for c in found], np.float32)
        shown = self.config.review.show_suggestions
        return _robot_embeddings(rows), uncertainty, [c.fused if shown else None for c in found]

    def second_opinions(self, round_number: int, done: list) -> int:
        """Box audits get no second opinion yet (one box answer is not one class to outvote): none asked."""
        return 0

    def measure_audit(self, record: dict, tasks: list, done: list, standing: list[tuple]) -> bool:
        """Record the pass's mean IoU and class accuracy (Wilson interval) and the round's over every answer
        about a label that stands (``standing``: (task, source) of every pass); return whether the round's
        meets both targets."""
        cfg, targets = self.config.audit, self.targets
        every = {t.id: t for t in [*done, *(t for t, _ in standing)]}  # this pass's tasks stand too, as a rule
        compared = {i: compare(t.suggestion, t.answer, self.detection.match_iou) for i, t in every.items()}
        quality = aggregate([compared[t.id] for t in done])
        pooled = aggregate([compared[t.id] for t, _ in standing])
        low, high = wilson_interval(quality.class_correct, quality.matched, cfg.confidence_level)
        meets = bool(done) and pooled.mean_iou >= targets.mean_iou and pooled.class_accuracy >= targets.class_accuracy
        record.update(
            frames=len(done),
            quality=quality.to_dict(),
            mean_iou=round(quality.mean_iou, 4),
            class_accuracy=round(quality.class_accuracy, 4),
            class_accuracy_ci=[low, high],
            confidence_level=cfg.confidence_level,
            failed_tasks=len(tasks) - len(done),
            pooled={"frames": len(standing), "quality": pooled.to_dict()},
            meets_target=meets,
        )
        return meets

    def audit_can_pass(self, standing: list[tuple], more: int) -> bool:
        """Return True: box quality is a mean IoU and a class accuracy over matched boxes, which no count of
        further frames bounds, so every pass ``audit.max_passes`` allows is run."""
        return True

    def tighten(self, info: dict, record: dict, number: int) -> dict[str, float]:
        """Raise the consensus threshold by one step (kept for later rounds); return it as the auto floor."""
        current = info["threshold"]["value"] or 0.0
        floor = min(
            1.0, max(current, float(self.pool.get("box_threshold_floor", 0.0))) + self.config.audit.tighten_step
        )
        self.pool.put("box_threshold_floor", floor)
        info["threshold"] = {**info["threshold"], "value": floor, "reason": f"tightened after audit pass {number}"}
        record["tightened"] = floor
        return {"auto": floor}

    def below_floors(
        self, round_number: int, info: dict, population: list[str], floors: dict[str, float], number: int
    ) -> list[tuple[str, str]]:
        """Return the unaudited auto labels whose consensus confidence is below the new floor."""
        labels = self.boxes.labels(population)
        reason = f"auto boxes below the tightened floor after audit pass {number}"
        return [(f, reason) for f in population if (labels[f].confidence or 0.0) < floors["auto"]]

    # ------------------------------------------------------------------ train and evaluate
    def write_channel(self, root: Path, items: list[tuple]) -> Path:
        from fleetloop_cloud.box_manifest import write_box_channel

        return write_box_channel(root, items, self.classes)

    def write_channels(self, root: Path, rows: list, labels: dict, round_number: int) -> dict[str, Path]:
        """Write the train and unlabeled channels (boxes; None: not labeled)."""
        data = {r["id"]: self.loop.cache.get_bytes(r["id"], r["frame_key"]) for r in rows}
        return {
            "train": self.write_channel(
                root / "train",
                [(r["id"], data[r["id"]], labels[r["id"]].boxes, r["site"]) for r in rows if r["id"] in labels],
            ),
            "unlabeled": self.write_channel(
                root / "unlabeled",
                [
                    (r["id"], data[r["id"]], labels[r["id"]].boxes if r["id"] in labels else None, r["site"])
                    for r in rows
                ],
            ),
        }

    def hyperparameters(self) -> dict:
        """Return the training job's detector settings (beside the loop's common ones): no INT8 variants."""
        return {"int8": False}

    def evaluate(self, candidates: dict[str, Path]) -> dict:
        """Return mAP before/after per tier on the box test set and the mAP@0.5 gate's decision."""
        from fleetloop_cloud.box_evaluate import box_gate, make_box_test_set, score_detector

        cfg = self.config.evaluation
        test = make_box_test_set(cfg.test_set, self.pool, self.boxes, self.loop.cache, self.config)
        results = {}
        for tier in [t for t in cfg.tiers if t in candidates]:
            production = DetectorModel.load(self.loop.production(tier), providers=("cpu",), warmup=0)
            candidate = DetectorModel.load(candidates[tier], providers=("cpu",), warmup=0)
            before, after = score_detector(production, test), score_detector(candidate, test)
            results[tier] = {
                "production_version": production.version,
                "candidate_version": candidate.version,
                "before": {"overall": round(before.map50, 4), **before.to_dict()},
                "after": {"overall": round(after.map50, 4), **after.to_dict()},
                "decision": box_gate(before, after, cfg).to_dict(),
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

    # ------------------------------------------------------------------ summary
    def round_facts(self, round_number: int) -> RoundFacts:
        """Return the round's done box tasks, its box labels; an audited label counts as auto."""
        tasks = [t for t in self.boxes.tasks(round=round_number) if t.status == "done"]
        return RoundFacts(
            tasks=tasks,
            labels={f: label for f, label in self.boxes.labels().items() if label.round == round_number},
            audited_source={t.frame_id: "auto" for t in tasks if t.purpose == "audit"},
        )
