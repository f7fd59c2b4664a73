"""The cloud loop as a library: ``CloudLoop(config).run_round() -> RoundSummary``, one method per step.

Steps of a round, each idempotent (a finished step does nothing when run again) and resumable
(state lives in the pool; a crash loses at most the item in hand):

    ingest     new frames + sidecars from the store into the pool (quarantine with reasons)
    autolabel  T1 and T2 predict every frame they have not seen
    review     humans label a random calibration sample -> temperature + threshold from it ->
               auto-accept (tiers agree, calibrated confidence >= threshold) -> one human label per
               track confirms the track's frames the tiers agree on -> humans label the rest
               (active-learning order, within budget) -> QA audit of auto labels, tightening the
               threshold and re-reviewing when the audit falls below target
    train      T2 on every accepted label, distil T3/T4 on every uploaded frame, INT8 (train.py)
    evaluate   candidates vs production on the held-out field test set, the gate
    register   signed packages to the registry: Approved if the gate passed, else Rejected

The review step waits (returns, status ``waiting``) while humans have open tasks; running it
again collects answers and goes on. The demo composes rounds of this class into the closed loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.manifest import load_manifest
from fleetloop_core.store import open_store

from fleetloop_cloud import active, routing
from fleetloop_cloud.annotators import AnnotatorContext, TaskRequest, make_annotator
from fleetloop_cloud.autolabel import Combined, combine, load_teachers, run_teachers
from fleetloop_cloud.calibration import fit_temperature
from fleetloop_cloud.config import CloudConfig, CostModel, load_cost_model
from fleetloop_cloud.costs import compute_dollars, labeling_figures, task_cost
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.ingest import ingest as ingest_frames
from fleetloop_cloud.pool import Pool

log = logging.getLogger("fleetloop_cloud")

STEPS = ("ingest", "autolabel", "review", "train", "evaluate", "register")
FINISHED = ("done", "skipped", "failed")


class StepOrderError(FleetLoopError):
    """A step was asked for before the steps it needs (message names both)."""


@dataclass
class RoundSummary:
    """Every figure of one round (JSON-able through ``to_dict``)."""

    round: int
    status: str  # finished | waiting (humans have open tasks) | running
    steps: dict[str, str]
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"round": self.round, "status": self.status, "steps": dict(self.steps), **self.data}

    def __getitem__(self, key: str):
        return self.to_dict()[key]


class CloudLoop:
    """The cloud loop over one pool (work_dir/pool.sqlite), one store and one registry."""

    def __init__(
        self,
        config: CloudConfig,
        cost_model: CostModel | None = None,
        progress: bool = True,
        clients: dict | None = None,
        training_backend=None,
        registry=None,
        on_approved: list[Callable] | None = None,
    ):
        self.config = config
        self.work = config.work_path
        self.work.mkdir(parents=True, exist_ok=True)
        self.pool = Pool(self.work / "pool.sqlite")
        self.store = open_store(config.store)
        self.cache = FrameCache(self.work / "frames", self.store)
        self.cost_model = cost_model or load_cost_model(config.cost_model)
        self.progress = progress
        self.clients = dict(clients or {})
        self._backend = training_backend
        self._registry = registry
        self._on_approved = list(on_approved or [])
        self.base_models = {tier: Path(config.models) / tier for tier in ("T1", "T2", "T3", "T4")}
        self.labels = list(load_manifest(self.base_models["T2"]).labels)

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()

    def __enter__(self) -> "CloudLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ================================================================== plumbing
    @property
    def registry(self):
        """Return the registry backend (opened on first use)."""
        if self._registry is None:
            from fleetloop_cloud.registry import open_registry

            self._registry = open_registry(
                self.config.registry, on_approved=self._on_approved, client=self.clients.get("registry")
            )
        return self._registry

    @property
    def training_backend(self):
        """Return the training backend (opened on first use)."""
        if self._backend is None:
            from fleetloop_cloud.training_backends import make_backend

            self._backend = make_backend(
                self.config.training.backend,
                self.config.training.sagemaker,
                self.store,
                client=self.clients.get("training"),
                progress=self.progress,
            )
        return self._backend

    def production(self, tier: str) -> Path:
        """Return the package directory of the production model of ``tier`` (registry, else config.models)."""
        base = self.base_models[tier]
        name = load_manifest(base).name
        entry = self.registry.approved(name)
        if entry is None:
            return base
        target = self.work / "production" / name / entry.version
        if not (target / "manifest.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.registry.fetch(name, entry.version, target)
        return target

    def current_round(self) -> Optional[int]:
        """Return the open round (None when every round is finished)."""
        return self.pool.current_round()

    def _round(self, step: str) -> int:
        current = self.pool.current_round()
        if current is None:
            if step != "ingest":
                raise StepOrderError(f"no open round: run 'fleetloop-cloud ingest' (or 'round') before {step}")
            return self.pool.open_round()
        index = STEPS.index(step)
        for previous in STEPS[:index]:
            status, _ = self.pool.step(current, previous)
            if status not in FINISHED:
                raise StepOrderError(f"round {current}: step {previous} is {status}; run it before {step}")
        return current

    def _run(self, step: str, body: Callable[[int], dict]) -> dict:
        round_number = self._round(step)
        status, info = self.pool.step(round_number, step)
        if status in ("done", "skipped"):
            log.info("round %d: %s already %s", round_number, step, status)
            return info
        if status == "failed":  # asked for explicitly: retry (run_round goes on past a failed step instead)
            log.info("round %d: retrying %s (failed: %s)", round_number, step, info.get("error"))
            info = {k: v for k, v in info.items() if k != "error"}
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        self.pool.set_step(round_number, step, "running", info)
        try:
            result = body(round_number)
        except FleetLoopError as exc:
            self.pool.set_step(round_number, step, "failed", {**info, "error": str(exc)})
            raise
        status = result.pop("_status", "done")
        result["cpu_seconds"] = round(result.get("cpu_seconds", 0.0) + time.process_time() - cpu_started, 3)
        result["wall_seconds"] = round(result.get("wall_seconds", 0.0) + time.perf_counter() - wall_started, 3)
        self.pool.set_step(round_number, step, status, result)
        return result

    def _teacher_versions(self, round_number: int) -> tuple[str, str, str, str]:
        _, info = self.pool.step(round_number, "autolabel")
        (tier_a, version_a), (tier_b, version_b) = list(info["versions"].items())
        return tier_a, version_a, tier_b, version_b

    def _combined(self, round_number: int, ids: Sequence[str], temperature: float) -> Combined:
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        probs_a, _ = self.pool.predictions(tier_a, version_a, ids)
        probs_b, _ = self.pool.predictions(tier_b, version_b, ids)
        if not len(ids):
            empty = np.zeros((0, len(self.labels)), np.float32)
            return combine(empty, empty, temperature)
        return combine(probs_a, probs_b, temperature)

    # ================================================================== ingest
    def ingest(self) -> dict:
        """Step 1: new frames + sidecars from the store into the pool."""

        def body(round_number: int) -> dict:
            report = ingest_frames(
                self.store,
                self.pool,
                self.cache,
                round_number,
                self.config.ingest,
                labels=self.labels,
                progress=self.progress,
            ).to_dict()
            report.pop("cpu_seconds")  # _run measures the step's CPU time
            return report

        return self._run("ingest", body)

    # ================================================================== autolabel
    def _autolabel_ids(self, round_number: int) -> list[str]:
        ids = {r["id"] for r in self.pool.frames(round=round_number)}
        ids |= {r["id"] for r in self.pool.frames(state=("new", "auto_labeled", "in_review"))}
        ids |= {t.frame_id for t in self.pool.tasks(purpose="calibration", status="done")}
        return sorted(ids)

    def autolabel(self) -> dict:
        """Step 2: the teacher tiers predict every frame they have not seen yet."""

        def body(round_number: int) -> dict:
            cfg = self.config.autolabel
            packages = {t: self.production(t) for t in cfg.tiers}
            ids = self._autolabel_ids(round_number)
            if cfg.backend == "sagemaker-batch":
                from fleetloop_cloud.transform import BatchTransformTeachers

                teachers = BatchTransformTeachers(cfg.sagemaker, self.store, client=self.clients.get("transform"))
                report = teachers.run(self.pool, packages, ids)
            else:
                teachers = load_teachers(packages, cfg.providers, cfg.threads)
                report = run_teachers(self.pool, self.cache, teachers, ids, cfg.batch_size, progress=self.progress)
            self.pool.set_state([r["id"] for r in self.pool.frames(state="new")], "auto_labeled")
            report = report.to_dict()
            report.pop("cpu_seconds")  # _run measures the step's CPU time
            return report

        return self._run("autolabel", body)

    # ================================================================== review
    def _annotator(self, round_number: int):
        context = AnnotatorContext(
            pool=self.pool,
            store=self.store,
            config=self.config,
            labels=self.labels,
            round=round_number,
            client=self.clients.get("annotator"),
        )
        return make_annotator(self.config.review.annotator, context)

    def _dispatch(self, round_number: int, annotator) -> None:
        """Submit open tasks, collect answers, record their cost."""
        opened = self.pool.tasks(round=round_number, status="open")
        if opened:
            rows = {r["id"]: r for r in self.pool.frames(ids={t.frame_id for t in opened}, include_duplicates=True)}
            shown = self.config.review.show_suggestions
            requests = [
                TaskRequest(
                    task_id=t.id,
                    frame_id=t.frame_id,
                    frame_key=rows[t.frame_id]["frame_key"],
                    frame_url=self.store.url(rows[t.frame_id]["frame_key"]),
                    suggestion=t.suggestion if (shown or t.purpose == "audit") else None,
                    purpose=t.purpose,
                )
                for t in opened
            ]
            external = annotator.submit(requests)
            self.pool.mark_submitted([t.id for t in opened], annotator.name, external)
        submitted = self.pool.tasks(round=round_number, status="submitted")
        if not submitted:
            return
        shown = self.config.review.show_suggestions
        for answer in annotator.collect(submitted):
            task = self.pool.task(answer.task_id)
            if answer.error or answer.label is None:
                log.warning("task %d failed: %s", answer.task_id, answer.error)
                self.pool.fail_task(answer.task_id, answer.error or "no answer")
                continue
            seconds, dollars = task_cost(self.cost_model.human, task.suggestion, answer.label, shown, task.purpose)
            self.pool.answer_task(answer.task_id, answer.label, answer.annotator, seconds, dollars)

    def _apply(self, round_number: int) -> None:
        """Turn finished tasks into labels: a human answer is the frame's label (audits included)."""
        finished = self.pool.unapplied(round_number)
        with self.pool.transaction():
            for task in finished:
                if task.status == "done":
                    self.pool.set_label(
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
            self.pool.mark_applied([t.id for t in finished])

    def review(self) -> dict:
        """Step 3: calibration sample, routing, track propagation, human review, QA audit."""

        def body(round_number: int) -> dict:
            _, info = self.pool.step(round_number, "review")
            info = dict(info)
            annotator = self._annotator(round_number)
            while True:
                self._dispatch(round_number, annotator)
                self._apply(round_number)
                pending = self.pool.tasks(round=round_number, status=("open", "submitted"))
                if pending:
                    info["waiting_tasks"] = len(pending)
                    info["_status"] = "waiting"
                    log.info("round %d: review waits for %d human answer(s)", round_number, len(pending))
                    return info
                info.pop("waiting_tasks", None)
                phase = info.get("phase", "calibration")
                if phase == "done":
                    return info
                info = getattr(self, f"_phase_{phase.split('-')[0]}")(round_number, info)
                self.pool.set_step(round_number, "review", "running", info)

        return self._run("review", body)

    def _rng(self, round_number: int, purpose: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.config.review.seed}/{round_number}/{purpose}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _unlabeled_rows(self) -> list:
        labeled = self.pool.labels()
        return [r for r in self.pool.frames(state=("auto_labeled", "in_review")) if r["id"] not in labeled]

    def _phase_calibration(self, round_number: int, info: dict) -> dict:
        rows = self._unlabeled_rows()
        count = min(self.config.review.calibration_sample, len(rows))
        rng = self._rng(round_number, "calibration")
        robot_random = [r for r in rows if r["random"]]
        others = [r for r in rows if not r["random"]]
        picked = [robot_random[i] for i in rng.permutation(len(robot_random))]
        picked += [others[i] for i in rng.permutation(len(others))]
        picked = picked[:count]
        combined = self._combined(round_number, [r["id"] for r in picked], 1.0)
        if self.config.evaluation.test_set == "holdout":
            fraction = self.config.evaluation.holdout_fraction
            held = [
                r["id"]
                for r in picked
                if int(hashlib.sha256(r["id"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction
            ]
            self.pool.set_holdout(held)
        self.pool.add_tasks(
            round_number, "calibration", [(r["id"], int(combined.label[i])) for i, r in enumerate(picked)]
        )
        info.update(phase="route", calibration_tasks=count)
        return info

    def _calibration_set(self, round_number: int) -> tuple[list[str], np.ndarray]:
        tasks = [t for t in self.pool.tasks(purpose="calibration", status="done")]
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        have = set(self.pool.labels([t.frame_id for t in tasks]))
        tasks = [t for t in tasks if t.frame_id in have]
        ids = [t.frame_id for t in tasks]
        missing = set(self.pool.missing_predictions(tier_a, version_a, ids)) | set(
            self.pool.missing_predictions(tier_b, version_b, ids)
        )
        kept = [(t.frame_id, t.answer) for t in tasks if t.frame_id not in missing]
        return [k[0] for k in kept], np.asarray([k[1] for k in kept], np.int64)

    def _phase_route(self, round_number: int, info: dict) -> dict:
        cfg = self.config.routing
        ids, answers = self._calibration_set(round_number)
        raw = self._combined(round_number, ids, 1.0)
        temperature = fit_temperature(raw.log_probs, answers) if len(ids) >= cfg.calibration_min_labels else 1.0
        validation = self._combined(round_number, ids, temperature)
        floor = float(self.pool.get("threshold_floor", 0.0))
        threshold = routing.choose_threshold(
            validation.confidence,
            validation.label == answers,
            validation.agree,
            cfg.target_accuracy,
            cfg.bound_z,
            cfg.min_validation,
            floor,
        )
        rows = self._unlabeled_rows()
        unlabeled = [r["id"] for r in rows]
        combined = self._combined(round_number, unlabeled, temperature)
        accepted = routing.accept(combined.confidence, combined.agree, threshold.value)
        with self.pool.transaction():
            for i in np.flatnonzero(accepted):
                self.pool.set_label(
                    unlabeled[i],
                    int(combined.label[i]),
                    "auto",
                    round_number,
                    reason=f"auto-accepted at threshold {threshold.value:.4f}",
                    confidence=float(combined.confidence[i]),
                )
            self.pool.set_state([unlabeled[i] for i in np.flatnonzero(accepted)], "accepted")
        info.update(
            phase="track",
            temperature=temperature,
            threshold=threshold.to_dict(),
            validation_frames=len(ids),
            auto_accepted=int(accepted.sum()),
        )
        return info

    def _tracks(self, round_number: int) -> tuple[list[str], list[str], Combined]:
        """Return (frame ids, track keys, combined) over frames with current teacher predictions."""
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        rows = [r for r in self.pool.frames() if not r["holdout"]]
        ids = [r["id"] for r in rows]
        missing = set(self.pool.missing_predictions(tier_b, version_b, ids)) | set(
            self.pool.missing_predictions(tier_a, version_a, ids)
        )
        rows = [r for r in rows if r["id"] not in missing]
        ids = [r["id"] for r in rows]
        _, embeddings = self.pool.predictions(tier_b, version_b, ids)
        prop = self.config.routing.propagation
        keys = routing.derive_tracks(
            [r["robot_id"] for r in rows],
            [r["stream"] for r in rows],
            np.asarray([r["stamp_ns"] for r in rows], np.int64),
            embeddings,
            [r["track_hint"] for r in rows],
            ids,
            prop.max_gap_s,
            prop.min_similarity,
            prop.use_track_hint,
        )
        return ids, keys, self._combined(round_number, ids, 1.0)

    def _phase_track(self, round_number: int, info: dict) -> dict:
        prop = self.config.routing.propagation
        info["phase"] = "propagate"
        if not prop.enabled:
            info["track_tasks"] = 0
            return info
        ids, keys, _ = self._tracks(round_number)
        combined = self._combined(round_number, ids, info["temperature"])
        labels = self.pool.labels(ids)
        human_tracks = {keys[i] for i, f in enumerate(ids) if f in labels and labels[f].source == "human"}
        unlabeled = {r["id"] for r in self._unlabeled_rows()}
        members: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        representatives = []
        for key, indices in members.items():
            candidates = [i for i in indices if ids[i] in unlabeled]
            if key in human_tracks or len(candidates) < 2:
                continue
            # the most confident agreeing frame: a human most likely confirms it, and it confirms the rest
            best = max(candidates, key=lambda i: (bool(combined.agree[i]), float(combined.confidence[i]), ids[i]))
            representatives.append((ids[best], int(combined.label[best])))
        budget = self.config.review.human_budget
        if budget is not None:
            representatives = representatives[:budget]
        self.pool.add_tasks(round_number, "track", representatives)
        info["track_tasks"] = len(representatives)
        return info

    def _phase_propagate(self, round_number: int, info: dict) -> dict:
        prop = self.config.routing.propagation
        propagated, disputed, ambiguous = 0, 0, 0
        if prop.enabled:
            ids, keys, _ = self._tracks(round_number)
            combined = self._combined(round_number, ids, info["temperature"])
            labels = self.pool.labels(ids)
            human = {i: labels[f].label for i, f in enumerate(ids) if f in labels and labels[f].source == "human"}
            unlabeled = {r["id"] for r in self._unlabeled_rows()}
            candidates = np.asarray([f in unlabeled for f in ids])
            accepted = np.asarray(
                [f in labels and labels[f].source == "auto" and labels[f].round == round_number for f in ids]
            )
            min_confidence = max(prop.min_confidence, float(self.pool.get("propagation_floor", 0.0)))
            result = routing.propagate(
                keys, combined.label, combined.agree, combined.confidence, human, candidates, accepted, min_confidence
            )
            with self.pool.transaction():
                for i, label in result.labels.items():
                    self.pool.set_label(
                        ids[i],
                        label,
                        "propagated",
                        round_number,
                        reason=f"track {keys[i]}: human label confirmed by agreeing tiers",
                        confidence=float(combined.confidence[i]),
                    )
                self.pool.set_state([ids[i] for i in result.labels], "accepted")
                for i in result.disputed:
                    self.pool.remove_label(
                        ids[i], round_number, reason=f"disputed by the human label of track {keys[i]}"
                    )
                self.pool.set_state([ids[i] for i in result.disputed], "in_review")
            propagated, disputed, ambiguous = len(result.labels), len(result.disputed), len(result.ambiguous_tracks)
        info.update(propagated=propagated, disputed=disputed, ambiguous_tracks=ambiguous)
        self._queue_review(round_number, info, "review_tasks")
        info["phase"] = "audit-1"
        return info

    def _queue_review(self, round_number: int, info: dict, key: str) -> None:
        """Send unlabeled frames to human review, in active-learning order, within the round's budget."""
        rows = self._unlabeled_rows()
        ids = [r["id"] for r in rows]
        combined = self._combined(round_number, ids, info["temperature"])
        tier_a, version_a, tier_b, version_b = self._teacher_versions(round_number)
        _, embeddings = self.pool.predictions(tier_b, version_b, ids)
        if embeddings is None:
            embeddings = np.zeros((len(ids), 1), np.float32)
        budget = self.config.review.human_budget
        spent = len([t for t in self.pool.tasks(round=round_number) if t.purpose in ("track", "review")])
        room = len(ids) if budget is None else max(0, budget - spent)
        order = active.select(
            self.config.review.strategy, embeddings, combined.uncertainty, room, self._rng(round_number, key)
        )
        chosen = [(ids[i], int(combined.label[i])) for i in order]
        self.pool.add_tasks(round_number, "review", chosen)
        waiting = set(ids) - {c[0] for c in chosen}
        self.pool.set_state(waiting, "in_review")
        info[key] = info.get(key, 0) + len(chosen)
        info["pending_review"] = len(waiting)

    def _audit_population(self, round_number: int) -> list[str]:
        audited = {t.frame_id for t in self.pool.tasks(round=round_number, purpose="audit")}
        return sorted(
            f
            for f, label in self.pool.labels().items()
            if label.round == round_number and label.source in ("auto", "propagated") and f not in audited
        )

    def _phase_audit(self, round_number: int, info: dict) -> dict:
        cfg = self.config.audit
        number = int(info["phase"].split("-")[1])
        population = self._audit_population(round_number)
        count = min(len(population), max(cfg.min_frames, math.ceil(cfg.fraction * len(population))))
        if count == 0:
            info["phase"] = "done"
            return info
        rng = self._rng(round_number, f"audit-{number}")
        picked = [population[i] for i in rng.permutation(len(population))[:count]]
        labels = self.pool.labels(picked)
        ids = self.pool.add_tasks(round_number, "audit", [(f, labels[f].label) for f in picked])
        sources = {str(t): labels[f].source for t, f in zip(ids, picked)}
        info.setdefault("audit_passes", []).append(
            {
                "pass": number,
                "tasks": ids,
                "sources": sources,
                "population": len(population),
                "threshold": info["threshold"]["value"],
            }
        )
        info["phase"] = f"check-{number}"
        return info

    def _phase_check(self, round_number: int, info: dict) -> dict:
        cfg, target = self.config.audit, self.config.routing.target_accuracy
        number = int(info["phase"].split("-")[1])
        record = info["audit_passes"][-1]
        tasks = [self.pool.task(t) for t in record["tasks"]]
        done = [t for t in tasks if t.status == "done"]
        correct = [t.answer == t.suggestion for t in done]
        low, high = routing.wilson_interval(sum(correct), len(done), cfg.confidence_level)
        by_source: dict[str, dict] = {}
        for task, ok in zip(done, correct):
            entry = by_source.setdefault(record["sources"][str(task.id)], {"frames": 0, "correct": 0})
            entry["frames"] += 1
            entry["correct"] += int(ok)
        for entry in by_source.values():
            entry["accuracy"] = entry["correct"] / entry["frames"]
            entry["ci"] = list(routing.wilson_interval(entry["correct"], entry["frames"], cfg.confidence_level))
        accuracy = sum(correct) / len(done) if done else None
        record.update(
            frames=len(done),
            correct=int(sum(correct)),
            accuracy=accuracy,
            ci=[low, high],
            confidence_level=cfg.confidence_level,
            by_source=by_source,
            failed_tasks=len(tasks) - len(done),
            meets_target=accuracy is not None and accuracy >= target,
        )
        if accuracy is None or accuracy >= target:
            info["phase"] = "done"
            return info
        # below target: tighten the source(s) that missed it (kept for later rounds) and send this
        # round's unaudited labels of that source under the new floor back to review
        withdraw_below: dict[str, float] = {}
        for source, entry in by_source.items():
            if entry["accuracy"] >= target:
                continue
            if source == "auto":
                current = info["threshold"]["value"] or 0.0
                floor = min(1.0, max(current, float(self.pool.get("threshold_floor", 0.0))) + cfg.tighten_step)
                self.pool.put("threshold_floor", floor)
                info["threshold"] = {
                    **info["threshold"],
                    "value": floor,
                    "reason": f"tightened after audit pass {number}",
                }
            else:
                current = max(
                    self.config.routing.propagation.min_confidence, float(self.pool.get("propagation_floor", 0.0))
                )
                floor = min(1.0, current + cfg.tighten_step)
                self.pool.put("propagation_floor", floor)
            withdraw_below[source] = floor
        record["tightened"] = withdraw_below
        if number >= cfg.max_passes:
            info["phase"] = "done"
            return info
        population = self._audit_population(round_number)
        labels = self.pool.labels(population)
        combined = self._combined(round_number, population, info["temperature"])
        withdrawn = [
            f
            for i, f in enumerate(population)
            if labels[f].source in withdraw_below and combined.confidence[i] < withdraw_below[labels[f].source]
        ]
        with self.pool.transaction():
            for frame_id in withdrawn:
                self.pool.remove_label(
                    frame_id,
                    round_number,
                    reason=f"{labels[frame_id].source} label below the tightened floor after audit pass {number}",
                )
            self.pool.set_state(withdrawn, "in_review")
        record["withdrawn"] = len(withdrawn)
        self._queue_review(round_number, info, "rereview_tasks")
        info["phase"] = f"audit-{number + 1}"
        return info

    # ================================================================== train
    def _replay_frames(self, count: int) -> list[tuple[str, np.ndarray, int, str]]:
        if count <= 0:
            return []
        from fleetloop_core import sim

        sizes = [(r["height"], r["width"]) for r in self.pool.frames()]
        height, width = max(set(sizes), key=sizes.count) if sizes else (128, 128)
        data = sim.render_set(
            sim.LAB_SITE,
            sim.item_pool().lab_train,
            count,
            seed=("replay", self.config.training.seed),
            height=height,
            width=width,
            sites=sim.lab_sites(16, self.config.training.seed),
        )
        return [(f"lab-{i:06d}", data.images[i], int(data.labels[i]), "lab") for i in range(count)]

    def _write_channels(self, round_number: int, root: Path) -> tuple[dict[str, Path], list[str]]:
        from fleetloop_cloud.channels import write_channel

        rows = [r for r in self.pool.frames() if not r["holdout"]]
        labels = self.pool.labels([r["id"] for r in rows])
        labeled = [r for r in rows if r["id"] in labels]
        channels = {
            "train": write_channel(
                root / "train",
                [
                    (r["id"], self.cache.get_bytes(r["id"], r["frame_key"]), labels[r["id"]].label, r["site"])
                    for r in labeled
                ],
            ),
            "unlabeled": write_channel(
                root / "unlabeled",
                [
                    (
                        r["id"],
                        self.cache.get_bytes(r["id"], r["frame_key"]),
                        labels[r["id"]].label if r["id"] in labels else -1,
                        r["site"],
                    )
                    for r in rows
                ],
            ),
        }
        rng = self._rng(round_number, "int8-calibration")
        pick = rng.permutation(len(rows))[: self.config.training.int8_calibration_frames]
        channels["calibration"] = write_channel(
            root / "calibration",
            [
                (rows[i]["id"], self.cache.get_bytes(rows[i]["id"], rows[i]["frame_key"]), -1, rows[i]["site"])
                for i in pick
            ],
        )
        replay = self._replay_frames(self.config.training.lab_replay_frames)
        if replay:
            channels["replay"] = write_channel(root / "replay", replay)
        models = root / "models"
        models.mkdir(parents=True, exist_ok=True)
        for tier in ("T2", "T3", "T4"):
            target = models / tier
            if not target.exists():
                shutil.copytree(self.production(tier), target)
        channels["models"] = models
        return channels, [r["id"] for r in labeled]

    def train(self) -> dict:
        """Step 4: train T2 on all accepted labels, distil T3/T4, INT8 (local process or SageMaker job)."""

        def body(round_number: int) -> dict:
            from fleetloop_cloud.training_backends import TrainingJob

            labels = self.pool.labels()
            fingerprint = hashlib.sha256(
                json.dumps(sorted((k, v.label) for k, v in labels.items())).encode()
            ).hexdigest()
            if not labels:
                return {"_status": "skipped", "reason": "no accepted labels yet: nothing to train on"}
            if fingerprint == self.pool.get("trained_on"):
                return {"_status": "skipped", "reason": "no new labels since the last training job"}
            version = f"r{round_number}-{fingerprint[:8]}"
            root = self.work / "rounds" / f"{round_number:04d}"
            channels, used = self._write_channels(round_number, root / "channels")
            t = self.config.training
            hyperparameters = {
                "version": version,
                "teacher_epochs": t.teacher_epochs,
                "distil_epochs": t.distil_epochs,
                "warm_start_epochs": t.warm_start_epochs,
                "batch_size": t.batch_size,
                "lr": t.lr,
                "finetune_lr": t.finetune_lr,
                "distil_temperature": t.distil_temperature,
                "seed": t.seed,
                "int8": t.int8,
                "int8_per_channel": t.int8_per_channel,
                "int8_calibration_frames": t.int8_calibration_frames,
                "threads": t.threads,
            }
            job = TrainingJob(
                name=f"fleetloop-{version}",
                channels=channels,
                hyperparameters={
                    k: json.dumps(v) if isinstance(v, bool) or v is None else str(v) for k, v in hyperparameters.items()
                },
                work_dir=root / "jobs",
            )
            result = self.training_backend.run(job)
            self.pool.record_usage(used, version)
            self.pool.put("trained_on", fingerprint)
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
    def _candidates(self, round_number: int) -> dict[str, Path]:
        status, info = self.pool.step(round_number, "train")
        if status != "done":
            return {}
        model_dir = Path(info["model_dir"])
        out = {}
        for name in ("T2", "T3", "T4", "T3-int8", "T4-int8"):
            if (model_dir / name / "manifest.json").is_file():
                out[name] = model_dir / name
        return out

    def evaluate(self) -> dict:
        """Step 5: candidates vs production on the held-out field test set; the gate's decisions."""

        def body(round_number: int) -> dict:
            from fleetloop_core.inference import TierModel

            from fleetloop_cloud.evaluate import gate, make_test_set, predict, score

            candidates = self._candidates(round_number)
            if not candidates:
                status, info = self.pool.step(round_number, "train")
                return {
                    "_status": "skipped",
                    "reason": f"no candidates (train {status}: {info.get('reason') or info.get('error', '')})",
                }
            cfg = self.config.evaluation
            test = make_test_set(cfg.test_set, self.pool, self.cache, self.config)
            results = {}
            for tier in cfg.tiers:
                production = TierModel.load(self.production(tier), providers=("cpu",), warmup=0)
                before = score(predict(production, test.images), test, self.labels)
                variants = [tier] + ([f"{tier}-int8"] if tier in ("T3", "T4") else [])
                for variant in variants:
                    if variant not in candidates:
                        continue
                    candidate = TierModel.load(candidates[variant], providers=("cpu",), warmup=0)
                    after = score(predict(candidate, test.images), test, self.labels)
                    decision = gate(before, after, cfg)
                    gated = (
                        variant == tier if cfg.edge_precision == "fp32" or tier == "T2" else variant.endswith("int8")
                    )
                    results[variant] = {
                        "production_version": production.version,
                        "candidate_version": candidate.version,
                        "before": before.to_dict(),
                        "after": after.to_dict(),
                        "decision": decision.to_dict(),
                        "gated": gated,
                        "candidate_dir": str(candidates[variant]),
                    }
            return {"test_set": test.name, "test_frames": len(test), "tiers": results}

        return self._run("evaluate", body)

    # ================================================================== register
    def register(self) -> dict:
        """Step 6: signed packages to the registry, Approved where the gate promoted them, else Rejected."""

        def body(round_number: int) -> dict:
            status, info = self.pool.step(round_number, "evaluate")
            if status != "done":
                return {
                    "_status": "skipped",
                    "reason": f"evaluate {status}: {info.get('reason', info.get('error', ''))}",
                }
            entries = []
            for variant, result in sorted(info["tiers"].items()):
                decision = result["decision"]
                entry = self.registry.publish(
                    Path(result["candidate_dir"]),
                    "PendingManualApproval",
                    metrics={
                        "before": result["before"]["overall"],
                        "after": result["after"]["overall"],
                        "test_set": info["test_set"],
                    },
                )
                approve = decision["promote"] and result["gated"]
                reason = (
                    "; ".join(decision["reasons"])
                    if result["gated"]
                    else f"not the gated variant (evaluation.edge_precision={self.config.evaluation.edge_precision})"
                )
                entry = self.registry.set_status(
                    entry.name, entry.version, "Approved" if approve else "Rejected", reason
                )
                entries.append(
                    {
                        "variant": variant,
                        "name": entry.name,
                        "version": entry.version,
                        "status": entry.status,
                        "key_id": entry.key_id,
                        "location": entry.location,
                        "arn": entry.arn,
                    }
                )
            return {"entries": entries}

        return self._run("register", body)

    # ================================================================== round
    def run_round(self) -> RoundSummary:
        """Run the open round's remaining steps (opening a new round if none is open); return its summary.

        Stops early with status ``waiting`` while humans still have open tasks; call again later.
        """
        if self.pool.current_round() is None:
            self.pool.open_round()
        round_number = self.pool.current_round()
        for step in STEPS:
            status, _ = self.pool.step(round_number, step)
            if status in FINISHED:
                continue
            try:
                getattr(self, step)()
            except FleetLoopError as exc:
                if step in ("train", "evaluate", "register"):
                    log.error("round %d: %s failed: %s (the round goes on without it)", round_number, step, exc)
                    continue
                raise
            status, _ = self.pool.step(round_number, step)
            if status == "waiting":
                return self.summary(round_number, status="waiting")
        summary = self.summary(round_number, status="finished")
        self.pool.finish_round(round_number, summary.to_dict())
        (self.work / "rounds").mkdir(parents=True, exist_ok=True)
        (self.work / "rounds" / f"summary-{round_number:04d}.json").write_text(
            json.dumps(summary.to_dict(), indent=2, sort_keys=True)
        )
        return summary

    # ================================================================== summary
    def summary(self, round_number: int, status: str = "finished") -> RoundSummary:
        """Return every figure of a round, from the pool (costs from config/cost_model.yaml)."""
        steps = {s: self.pool.step(round_number, s) for s in STEPS}
        info = {s: i for s, (_, i) in steps.items()}
        tasks = [t for t in self.pool.tasks(round=round_number) if t.status == "done"]
        labels = {f: label for f, label in self.pool.labels().items() if label.round == round_number}
        human = self.cost_model.human
        review = info["review"]
        by_purpose: dict[str, dict] = {}
        for task in tasks:
            entry = by_purpose.setdefault(
                task.purpose, {"tasks": 0, "verified": 0, "from_scratch": 0, "seconds": 0.0, "dollars": 0.0}
            )
            entry["tasks"] += 1
            verified = task.purpose == "audit" or (
                self.config.review.show_suggestions and task.suggestion is not None and task.answer == task.suggestion
            )
            entry["verified" if verified else "from_scratch"] += 1
            entry["seconds"] += task.seconds or 0.0
            entry["dollars"] += task.dollars or 0.0
        human_seconds = sum(e["seconds"] for e in by_purpose.values())
        human_dollars = sum(e["dollars"] for e in by_purpose.values())
        compute = {}
        for step in STEPS:
            i = info[step]
            cpu = float(i.get("cpu_seconds", 0.0)) + float(i.get("job_cpu_seconds", 0.0))
            gpu = float(i.get("gpu_seconds", 0.0))
            if step == "train" and i.get("instance_seconds"):
                instance = self.cost_model.cpu_instance
                dollars = float(i["instance_seconds"]) * instance.usd_per_hour / 3600.0
            else:
                dollars = compute_dollars(self.cost_model, cpu, gpu)
            compute[step] = {"cpu_seconds": round(cpu, 3), "gpu_seconds": round(gpu, 3), "dollars": round(dollars, 6)}
        labeling_compute = sum(compute[s]["dollars"] for s in ("ingest", "autolabel", "review"))
        # an audited label becomes the auditor's (human) label; count it under the source it was accepted by
        audited_source = {}
        for record in review.get("audit_passes", []):
            for task_id, source in record.get("sources", {}).items():
                audited_source[self.pool.task(int(task_id)).frame_id] = source
        sources = {"human": 0, "auto": 0, "propagated": 0}
        for frame_id, label in labels.items():
            sources[audited_source.get(frame_id, label.source)] += 1
        accepted = len(labels)
        figures = labeling_figures(self.cost_model, accepted, human_seconds, human_dollars, labeling_compute)
        passes = [{k: v for k, v in p.items() if k not in ("tasks", "sources")} for p in review.get("audit_passes", [])]
        final = next((p for p in reversed(passes) if p.get("frames")), None)
        data = {
            "frames": {
                "ingested": info["ingest"].get("ingested", 0),
                "exact_duplicates": info["ingest"].get("exact_duplicates", 0),
                "near_duplicates": info["ingest"].get("near_duplicates", 0),
                "quarantined": len(info["ingest"].get("quarantined", {})),
                "waiting_for_sidecar": len(info["ingest"].get("waiting_for_sidecar", [])),
                "pending_review": review.get("pending_review", 0),
            },
            "labels": {
                "accepted": accepted,
                "auto_accepted": sources["auto"],
                "propagated": sources["propagated"],
                "human": sources["human"],
                "sent_to_humans": len({t.frame_id for t in tasks}),
                "disputed_by_tracks": review.get("disputed", 0),
            },
            "routing": {
                "target_accuracy": self.config.routing.target_accuracy,
                "temperature": review.get("temperature"),
                "threshold": review.get("threshold"),
                "validation_frames": review.get("validation_frames"),
            },
            "audit": {
                "target": self.config.routing.target_accuracy,
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
                "seconds_per_label": human.seconds_per_label,
                "seconds_per_verify": human.seconds_per_verify,
                "price_per_label": human.price_per_label,
                "price_per_verify": human.price_per_verify,
            },
            "compute": {
                "by_step": compute,
                "dollars": round(sum(c["dollars"] for c in compute.values()), 6),
                "labeling_dollars": round(labeling_compute, 6),
                "instance": self.cost_model.cpu_instance.name,
            },
            "figures": figures.to_dict(),
            "models": self._model_summary(info),
            "registry": info["register"].get("entries", []),
            "notes": {
                s: i.get("reason") or i.get("error") for s, i in info.items() if i.get("reason") or i.get("error")
            },
            "simulation_only": self._truth_check(labels),
        }
        return RoundSummary(round=round_number, status=status, steps={s: st for s, (st, _) in steps.items()}, data=data)

    def _model_summary(self, info: dict) -> dict:
        out = {}
        for variant, result in info["evaluate"].get("tiers", {}).items():
            out[variant] = {
                "production": result["production_version"],
                "candidate": result["candidate_version"],
                "accuracy_before": result["before"]["overall"],
                "accuracy_after": result["after"]["overall"],
                "promoted": bool(result["decision"]["promote"] and result["gated"]),
                "gated": result["gated"],
                "reasons": result["decision"]["reasons"],
            }
        int8 = {k: v for k, v in info["train"].get("report", {}).get("tiers", {}).items() if k.endswith("-int8")}
        if int8:
            out["int8_vs_fp32"] = int8
        return out

    def _truth_check(self, labels: dict) -> dict:
        """Return the accuracy of this round's accepted labels against simulated truth (never used by the loop)."""
        rows = {r["id"]: r["sim_label"] for r in self.pool.frames(ids=labels)}
        out = {}
        for source in ("auto", "propagated", "human"):
            pairs = [
                (label.label, rows.get(f))
                for f, label in labels.items()
                if label.source == source and rows.get(f) is not None
            ]
            if pairs:
                out[source] = {"frames": len(pairs), "accuracy": round(sum(a == b for a, b in pairs) / len(pairs), 4)}
        return out
