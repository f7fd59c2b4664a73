"""The cloud loop for classifiers: class labels in the pool, calibrated T1/T2 agreement, track propagation.

Routing (``classification_routing``): humans label a random calibration sample -> committee
weights and one threshold per class from the pooled evidence -> auto-accept (calibrated confidence
>= the threshold of the frame's class; T2's agreement weighs in, it is no veto) -> one human label per track
confirms the track's frames the tiers agree on (``track``, ``propagate``) -> humans label the
rest -> the audit measures accuracy per source (auto, propagated) against the routing target.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fleetloop_cloud import routing
from fleetloop_cloud.annotators import AnnotatorContext, TaskRequest, make_annotator
from fleetloop_cloud.autolabel import Combined, combine, load_teachers, run_teachers
from fleetloop_cloud.costs import task_cost
from fleetloop_cloud.loop.summary import RoundFacts
from fleetloop_cloud.loop.tasks import classification_report, classification_routing, classification_tracks

if TYPE_CHECKING:
    from fleetloop_core.contracts.manifest import Manifest

    from fleetloop_cloud.loop.core import CloudLoop

log = logging.getLogger("fleetloop_cloud")


class ClassificationPart(classification_report.ClassificationSummary):
    """What the loop does for classifier tiers (class labels, answers in the frame pool)."""

    name = "classification"
    rng_prefix = ""
    automatic_sources = ("auto", "propagated")
    label_noun = "labels"
    job_prefix = "fleetloop-"

    def __init__(self, loop: "CloudLoop", manifest: "Manifest"):
        self.loop = loop
        self.config = loop.config
        self.cost_model = loop.cost_model
        self.pool = loop.pool
        self.answers = loop.pool
        self.frame_labels = list(manifest.labels)
        self.review_phases = {
            "route": self.route,
            "track": classification_tracks.track,
            "propagate": classification_tracks.propagate,
        }

    def close(self) -> None:
        """Nothing of its own to close (the loop closes the pool)."""

    def pool_key(self, name: str) -> str:
        return name

    # ------------------------------------------------------------------ teachers
    def run_teachers(self, packages: dict[str, Path], frame_ids: Sequence[str]) -> dict:
        """Return the report of T1/T2 predicting the frames they have not seen (locally or batch transform)."""
        cfg = self.config.autolabel
        if cfg.backend == "sagemaker-batch":
            from fleetloop_cloud.transform import BatchTransformTeachers

            batch = BatchTransformTeachers(cfg.sagemaker, self.loop.store, client=self.loop.clients.get("transform"))
            return batch.run(self.pool, packages, list(frame_ids)).to_dict()
        teachers = load_teachers(packages, cfg.providers, cfg.threads)
        report = run_teachers(
            self.pool, self.loop.cache, teachers, frame_ids, cfg.batch_size, progress=self.loop.progress
        )
        return report.to_dict()

    def teacher_probs(self, round_number: int, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return T1's and T2's probabilities (N, C) of frames (their predictions of this round's versions)."""
        if not len(ids):
            empty = np.zeros((0, len(self.frame_labels)), np.float32)
            return empty, empty
        tier_a, version_a, tier_b, version_b = self.loop.teacher_versions(round_number)
        probs_a, _ = self.pool.predictions(tier_a, version_a, ids)
        probs_b, _ = self.pool.predictions(tier_b, version_b, ids)
        return probs_a, probs_b

    def evidence_probs(self, ids: Sequence[str], rounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return T1's and T2's probabilities of evidence frames as the teachers of each frame's answer round saw
        them, and which frames both predicted.

        Out of sample: a round's T2 was trained on the labels of earlier rounds only, while the current
        T2 was trained on every earlier evidence frame and would vouch for itself.
        """
        shape = (len(ids), len(self.frame_labels))
        probs_a, probs_b, have = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(len(ids), bool)
        for number in sorted(set(np.asarray(rounds).tolist())):
            index = np.flatnonzero(np.asarray(rounds) == number)
            tier_a, version_a, tier_b, version_b = self.loop.teacher_versions(int(number))
            frames = [ids[i] for i in index]
            missing = set(self.pool.missing_predictions(tier_a, version_a, frames))
            missing |= set(self.pool.missing_predictions(tier_b, version_b, frames))
            keep = [int(i) for i, f in zip(index, frames) if f not in missing]
            if keep:
                probs_a[keep] = self.pool.predictions(tier_a, version_a, [ids[i] for i in keep])[0]
                probs_b[keep] = self.pool.predictions(tier_b, version_b, [ids[i] for i in keep])[0]
                have[keep] = True
        return probs_a, probs_b, have

    def combined(self, round_number: int, ids: Sequence[str], weights: Sequence[float] = (0.5, 0.5)) -> Combined:
        """Return the T1/T2 committee of frames under ``weights`` (``classification_routing`` fits them)."""
        probs_a, probs_b = self.teacher_probs(round_number, ids)
        return combine(probs_a, probs_b, weights=(float(weights[0]), float(weights[1])))

    # ------------------------------------------------------------------ annotators
    def annotator(self, round_number: int):
        """Return the configured annotator (review.annotator) for the round."""
        context = AnnotatorContext(
            pool=self.pool,
            store=self.loop.store,
            config=self.config,
            labels=self.frame_labels,
            round=round_number,
            client=self.loop.clients.get("annotator"),
        )
        return make_annotator(self.config.review.annotator, context)

    def dispatch(self, round_number: int, annotator) -> None:
        """Submit open tasks, collect answers, record their cost."""
        shown, human = self.config.review.show_suggestions, self.cost_model.human
        opened = self.pool.tasks(round=round_number, status="open")
        if opened:
            rows = {r["id"]: r for r in self.pool.frames(ids={t.frame_id for t in opened}, include_duplicates=True)}
            requests = [
                TaskRequest(
                    task_id=t.id,
                    frame_id=t.frame_id,
                    frame_key=rows[t.frame_id]["frame_key"],
                    frame_url=self.loop.store.url(rows[t.frame_id]["frame_key"]),
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
        for answer in annotator.collect(submitted):
            task = self.pool.task(answer.task_id)
            if answer.error or answer.label is None:
                log.warning("task %d failed: %s", answer.task_id, answer.error)
                self.pool.fail_task(answer.task_id, answer.error or "no answer")
                continue
            beside = task.alternative if getattr(annotator, "shows_alternative", False) else None  # GT, A2I: not
            seconds, dollars = task_cost(human, task.suggestion, answer.label, shown, task.purpose, beside)
            self.pool.answer_task(answer.task_id, answer.label, answer.annotator, seconds, dollars)

    def add_tasks(self, round_number: int, purpose: str, items: list[tuple[str, int]]) -> list[int]:
        """Open human tasks (frame id, suggested class) and, but for audits, the class shown beside the suggestion
        (``classification_routing.alternatives``); whether they are shown is decided at dispatch."""
        beside = None if purpose == "audit" else classification_routing.alternatives(self, round_number, items)
        return self.pool.add_tasks(round_number, purpose, items, beside)

    def suggestions(self, round_number: int, ids: Sequence[str]) -> list[int]:
        """Return the tiers' combined class of each frame (uncalibrated)."""
        return [int(label) for label in self.combined(round_number, ids).label]

    def calibration_probe(self) -> int:
        """Return 0: a classifier's calibration sample goes out at once."""
        return 0

    def sampling_units(self, round_number: int, ids: Sequence[str]) -> list[str]:
        """Return the track of each frame while propagation is on (a frame no track holds: itself); the
        calibration sample takes at most one frame of each (``review.calibration_draw``)."""
        if not self.config.routing.propagation.enabled:
            return list(ids)
        frames, keys = classification_tracks.tracks(self.loop, round_number)
        track_of = dict(zip(frames, keys))
        return [track_of.get(f, f) for f in ids]

    def label_value(self, label) -> int:
        return label.label

    def fingerprint_value(self, label) -> int:
        return label.label

    # ------------------------------------------------------------------ review evidence
    def evidence_set(self, round_number: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Return the evidence: frames humans answered (tasks of ``routing.evidence``'s purposes) whose
        label stands, the human classes (the newest answer), the round of each frame's first answer
        (its teachers then had never seen a label of it) and whether the frame was in a random
        calibration sample."""
        history = classification_routing.answer_history(self, set(self.config.routing.evidence))
        have = set(self.pool.labels(list(history)))
        ids = [f for f in history if f in have]
        return (
            ids,
            np.asarray([history[f].answers[-1] for f in ids], np.int64),
            np.asarray([history[f].round for f in ids], np.int64),
            np.asarray([history[f].purpose == "calibration" for f in ids], bool),
        )

    def route(self, loop: "CloudLoop", round_number: int, info: dict) -> dict:
        """Review phase: committee and class thresholds from the evidence, auto-accept (``classification_routing``)."""
        return classification_routing.route(self, loop, round_number, info)

    def review_order_inputs(self, round_number: int, rows: list, info: dict) -> tuple[np.ndarray, np.ndarray, list]:
        """Return the teacher embeddings, the calibrated uncertainty and the suggested class of the rows: the
        committee's class, or where a person labeled another frame of the row's track, that label
        (``classification_tracks.track_labels``; recorded as the suggestion's source, which the review page shows)."""
        ids = [r["id"] for r in rows]
        combined = self.combined(round_number, ids, info["weights"])
        _, _, tier_b, version_b = self.loop.teacher_versions(round_number)
        _, embeddings = self.pool.predictions(tier_b, version_b, ids)
        if embeddings is None:
            embeddings = np.zeros((len(ids), 1), np.float32)
        from_tracks = classification_tracks.track_labels(self.loop, round_number, ids)
        self.pool.add_suggestion_sources(round_number, dict.fromkeys(from_tracks, "track"))
        suggestions = [from_tracks.get(f, int(label)) for f, label in zip(ids, combined.label)]
        return embeddings, combined.uncertainty, suggestions

    def second_opinions(self, round_number: int, done: list) -> int:
        """Ask another person about the audit answers that contradict the audited label (a third when two
        disagree); return how many were asked (when ``routing.second_opinion`` names audits)."""
        if "audit" not in self.config.routing.second_opinion:
            return 0
        frames = {t.frame_id for t in done}
        return classification_routing.second_opinions(self, round_number, {"audit"}, frames)

    def audit_correct(self, done: list) -> list[bool]:
        """Return whether each answered audit task's label is right: the frame's final human answer (after
        second opinions, the majority) is the label; a lone slip of the auditor would otherwise count as the
        label's error."""
        history = classification_routing.answer_history(self, {"audit"}, {t.frame_id for t in done})
        final = {f: seen.answers[-1] for f, seen in history.items()}
        return [final.get(t.frame_id, t.answer) == t.suggestion for t in done]

    def measure_audit(self, record: dict, tasks: list, done: list, standing: list[tuple]) -> bool:
        """Record the pass's audit accuracy (overall, per source, Wilson intervals) and the round's (``pooled``:
        every answer about a label that stands, ``standing``: (task, source) of every pass,
        ``review.standing_audits``); return whether the round's accuracy meets the target."""
        cfg, target = self.config.audit, self.config.routing.target_accuracy
        every = {t.id: t for t in [*done, *(t for t, _ in standing)]}  # this pass's tasks stand too, as a rule
        right = dict(zip(every, self.audit_correct(list(every.values()))))  # one read of the answer history
        correct = [right[t.id] for t in done]
        this_pass = routing.audit_figures([record["sources"][str(t.id)] for t in done], correct, cfg.confidence_level)
        pooled = routing.audit_figures(
            [source for _, source in standing], [right[t.id] for t, _ in standing], cfg.confidence_level
        )
        record.update(
            frames=len(done),
            correct=this_pass["correct"],
            accuracy=this_pass["accuracy"],
            ci=this_pass["ci"],
            confidence_level=cfg.confidence_level,
            by_source=this_pass["by_source"],
            failed_tasks=len(tasks) - len(done),
            pooled=pooled,
            meets_target=bool(done) and pooled["accuracy"] is not None and pooled["accuracy"] >= target,
        )
        return record["meets_target"]

    def audit_can_pass(self, standing: list[tuple], more: int) -> bool:
        """Return whether ``more`` audited labels, all right, could lift the standing audit to the target."""
        correct = self.audit_correct([t for t, _ in standing])
        return (sum(correct) + more) / (len(correct) + more) >= self.config.routing.target_accuracy

    def tighten(self, info: dict, record: dict, number: int) -> dict[str, float]:
        """Raise the floor of each source that missed the target (kept for later rounds); return the floors."""
        cfg, target = self.config.audit, self.config.routing.target_accuracy
        floors: dict[str, float] = {}
        for source, entry in record["pooled"]["by_source"].items():
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
            floors[source] = floor
        record["tightened"] = floors
        return floors

    def below_floors(
        self, round_number: int, info: dict, population: list[str], floors: dict[str, float], number: int
    ) -> list[tuple[str, str]]:
        """Return the unaudited labels of a tightened source whose calibrated confidence is below its new floor."""
        labels = self.pool.labels(population)
        combined = self.combined(round_number, population, info["weights"])
        return [
            (f, f"{labels[f].source} label below the tightened floor after audit pass {number}")
            for i, f in enumerate(population)
            if labels[f].source in floors and combined.confidence[i] < floors[labels[f].source]
        ]

    # ------------------------------------------------------------------ train and evaluate
    def write_channel(self, root: Path, items: list[tuple]) -> Path:
        from fleetloop_cloud.channels import write_channel

        return write_channel(root, items)

    def write_channels(self, root: Path, rows: list, labels: dict, round_number: int) -> dict[str, Path]:
        """Write the train, unlabeled and INT8 calibration channels (class labels, -1: none)."""
        cache = self.loop.cache
        channels = {
            "train": self.write_channel(
                root / "train",
                [
                    (r["id"], cache.get_bytes(r["id"], r["frame_key"]), labels[r["id"]].label, r["site"])
                    for r in rows
                    if r["id"] in labels
                ],
            ),
            "unlabeled": self.write_channel(
                root / "unlabeled",
                [
                    (
                        r["id"],
                        cache.get_bytes(r["id"], r["frame_key"]),
                        labels[r["id"]].label if r["id"] in labels else -1,
                        r["site"],
                    )
                    for r in rows
                ],
            ),
        }
        pick = self.loop.rng(round_number, "int8-calibration").permutation(len(rows))
        channels["calibration"] = self.write_channel(
            root / "calibration",
            [
                (rows[i]["id"], cache.get_bytes(rows[i]["id"], rows[i]["frame_key"]), -1, rows[i]["site"])
                for i in pick[: self.config.training.int8_calibration_frames]
            ],
        )
        return channels

    def hyperparameters(self) -> dict:
        """Return the training job's classifier settings (beside the loop's common ones)."""
        t = self.config.training
        return {
            "finetune_lr": t.finetune_lr,
            "distil_temperature": t.distil_temperature,
            "int8": t.int8,
            "int8_per_channel": t.int8_per_channel,
            "int8_calibration_frames": t.int8_calibration_frames,
        }

    def evaluate(self, candidates: dict[str, Path]) -> dict:
        """Return accuracy before/after per variant on the test set and the gate's decision on the gated one."""
        from fleetloop_core.inference import TierModel

        from fleetloop_cloud.evaluate import gate, make_test_set, predict, score

        cfg = self.config.evaluation
        test = make_test_set(cfg.test_set, self.pool, self.loop.cache, self.config)
        results = {}
        for tier in cfg.tiers:
            production = TierModel.load(self.loop.production(tier), providers=("cpu",), warmup=0)
            before = score(predict(production, test.images), test, self.frame_labels)
            variants = [tier] + ([f"{tier}-int8"] if tier in ("T3", "T4") else [])
            for variant in [v for v in variants if v in candidates]:
                candidate = TierModel.load(candidates[variant], providers=("cpu",), warmup=0)
                after = score(predict(candidate, test.images), test, self.frame_labels)
                gated = variant == tier if cfg.edge_precision == "fp32" or tier == "T2" else variant.endswith("int8")
                results[variant] = {
                    "production_version": production.version,
                    "candidate_version": candidate.version,
                    "before": before.to_dict(),
                    "after": after.to_dict(),
                    "decision": gate(before, after, cfg).to_dict(),
                    "gated": gated,
                    "candidate_dir": str(candidates[variant]),
                }
        return {"test_set": test.name, "test_frames": len(test), "tiers": results}

    # ------------------------------------------------------------------ summary
    def round_facts(self, round_number: int) -> RoundFacts:
        """Return the round's done tasks, its labels and the source each audited label had."""
        review = self.pool.step(round_number, "review")[1]
        audited = {
            self.pool.task(int(task_id)).frame_id: source
            for record in review.get("audit_passes", [])
            for task_id, source in record.get("sources", {}).items()
        }
        return RoundFacts(
            tasks=[t for t in self.pool.tasks(round=round_number) if t.status == "done"],
            labels={f: label for f, label in self.pool.labels().items() if label.round == round_number},
            audited_source=audited,
        )
