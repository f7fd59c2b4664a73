"""Classification routing: the committee's calibration, one threshold per class from pooled evidence, auto-accept.

Evidence is every frame a person answered in a task of ``routing.evidence``'s purposes (the random
calibration samples, the review of what routing did not accept, the audits of what it did), re-scored
by this round's teachers. The two teachers are combined by weights fitted on
that evidence (``calibration.fit_committee``): T2's agreement is one input, so in round 1, where the
lab-trained T2 is wrong on most field frames, T1 alone can carry a class its evidence allows.
Each class gets its own threshold (Mondrian; ``routing.class_thresholds``) at ``target_accuracy``
by the Wilson bound. Evidence is pooled across rounds; when a teacher changes, the thresholds the
pooled evidence gives are checked on this round's fresh sample (``routing.revalidate``) and the
evidence restarts from this round when the fresh (random) sample contradicts them. Every auto-accepted
label records the class threshold, the evidence behind it and whether T2 agreed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fleetloop_cloud import routing
from fleetloop_cloud.autolabel import combine
from fleetloop_cloud.calibration import ensemble_log_probs, fit_committee, fit_temperature

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop
    from fleetloop_cloud.loop.tasks.classification import ClassificationPart

EVIDENCE_KEY = "routing_evidence"  # pool key: {"versions": teacher versions, "since_round": first evidence round}


@dataclass
class Fit:
    """The committee and the per-class thresholds fitted on one set of evidence."""

    weights: tuple[float, float]
    thresholds: list[routing.Threshold]
    accepted: np.ndarray  # evidence frames the thresholds accept
    correct: np.ndarray  # evidence frames whose committee label matches the human label


@dataclass
class Evidence:
    """Frames people answered, scored by the teachers of each frame's answer round (out of sample)."""

    ids: list[str]
    answers: np.ndarray
    rounds: np.ndarray
    random: np.ndarray  # in a random calibration sample
    probs_a: np.ndarray
    probs_b: np.ndarray

    def since(self, first_round: int) -> "Evidence":
        """Return the evidence of rounds ``first_round`` and later."""
        keep = self.rounds >= first_round
        return Evidence(
            [f for f, k in zip(self.ids, keep) if k],
            self.answers[keep],
            self.rounds[keep],
            self.random[keep],
            self.probs_a[keep],
            self.probs_b[keep],
        )


def evidence(part: "ClassificationPart", round_number: int) -> Evidence:
    """Return the evidence routing has in ``round_number`` (frames no teacher of their round predicted left out)."""
    ids, answers, rounds, random = part.evidence_set(round_number)
    probs_a, probs_b, have = part.evidence_probs(ids, rounds)
    return Evidence(
        [f for f, h in zip(ids, have) if h], answers[have], rounds[have], random[have], probs_a[have], probs_b[have]
    )


def fit(part: "ClassificationPart", found: Evidence, floor: float) -> Fit:
    """Return the committee weights and class thresholds the evidence gives."""
    cfg = part.config.routing
    enough = len(found.ids) >= cfg.calibration_min_labels
    weights = fit_committee(found.probs_a, found.probs_b, found.answers) if enough else (0.5, 0.5)
    combined = combine(found.probs_a, found.probs_b, weights=weights)
    correct = combined.label == found.answers
    thresholds = routing.class_thresholds(
        combined.confidence,
        combined.label,
        correct,
        len(part.frame_labels),
        cfg.target_accuracy,
        cfg.bound_z,
        cfg.min_validation,
        floor,
    )
    accepted = routing.accept_by_class(combined.confidence, combined.label, thresholds)
    return Fit(weights, thresholds, accepted, correct)


def pooled_fit(
    part: "ClassificationPart", everything: Evidence, versions: list[str], round_number: int
) -> tuple[Evidence, Fit, int, "routing.Revalidation | None"]:
    """Return (the evidence used, its fit, its first round, the revalidation) from the pooled evidence.

    When a teacher changed since the pool's evidence began, the fit is checked on this round's fresh
    random sample and the evidence restarts from this round if the sample contradicts it.
    """
    cfg = part.config.routing
    state = part.pool.get(EVIDENCE_KEY, None) or {}
    since = int(state.get("since_round", 0))
    floor = float(part.pool.get("threshold_floor", 0.0))
    found = everything.since(since)
    result = fit(part, found, floor)
    revalidation = None
    if state and state.get("versions") != versions:
        # this round's random sample: answered this round, so scored by the current teachers
        fresh = everything.since(round_number)
        current = combine(fresh.probs_a, fresh.probs_b, weights=result.weights)
        revalidation = routing.revalidate(
            routing.accept_by_class(current.confidence, current.label, result.thresholds),
            current.label == fresh.answers,
            fresh.random,
            cfg.target_accuracy,
            part.config.audit.confidence_level,
        )
        if not revalidation.keep:
            since = round_number
            found = everything.since(round_number)
            result = fit(part, found, floor)
    return found, result, since, revalidation


def route(part: "ClassificationPart", loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Review phase: committee and class thresholds from the evidence; auto-accept the unlabeled frames they admit."""
    from fleetloop_cloud.loop.review import unlabeled_rows

    cfg = part.config.routing
    everything = evidence(part, round_number)
    versions = [str(v) for v in loop.teacher_versions(round_number)]
    found, result, since, revalidation = pooled_fit(part, everything, versions, round_number)
    asked = contradicted(part, round_number, everything, result.weights)
    if asked:
        # the phase stays "route": the review step waits for these answers, then routes again
        info["second_opinions"] = info.get("second_opinions", 0) + asked
        return info
    part.pool.put(EVIDENCE_KEY, {"versions": versions, "since_round": since})
    ids, answers = found.ids, found.answers

    candidates = [r["id"] for r in unlabeled_rows(loop)]
    propagation = part.config.routing.propagation
    by_tracks = propagation.track_frames if propagation.enabled else "frame"
    if by_tracks != "frame":
        candidates = alone_of(loop, round_number, candidates)
    accepted = auto_accept(part, candidates, round_number, result, since)
    if by_tracks == "track":
        from fleetloop_cloud.loop.tasks.classification_track_routing import auto_accept_tracks

        decided = auto_accept_tracks(part, loop, round_number, result.weights, since)
        accepted += decided["accepted_frames"]
        before = info.get("tracks", {})
        for count in ("accepted_tracks", "accepted_frames"):
            decided[count] += before.get(count, 0)
        info["tracks"] = decided
    probs_a, probs_b = found.probs_a, found.probs_b
    more = more_evidence(part, loop, round_number, result, [r["id"] for r in unlabeled_rows(loop)])
    if more:
        # the phase stays "route": the review step waits for these answers, then routes again
        info["calibration_more"] = info.get("calibration_more", 0) + more
    info.update(
        phase="route" if more else "track",
        weights=list(result.weights),
        # the plain geometric mean's temperature (the review page's threshold tuning uses it)
        temperature=fit_temperature(ensemble_log_probs(probs_a, probs_b), answers)
        if len(ids) >= cfg.calibration_min_labels
        else 1.0,
        teacher_temperatures={
            "T1": fit_temperature(np.log(np.clip(probs_a, 1e-12, 1.0)), answers) if len(ids) else 1.0,
            "T2": fit_temperature(np.log(np.clip(probs_b, 1e-12, 1.0)), answers) if len(ids) else 1.0,
        },
        thresholds={part.frame_labels[c]: t.to_dict() for c, t in enumerate(result.thresholds)},
        threshold=summary(result, len(ids), part.frame_labels),
        evidence={
            "since_round": since,
            "frames": len(ids),
            "revalidation": None if revalidation is None else revalidation.__dict__,
        },
        validation_frames=len(ids),
        auto_accepted=info.get("auto_accepted", 0) + accepted,
    )
    return info


def alone_of(loop: "CloudLoop", round_number: int, frames: list[str], among: list[str] | None = None) -> list[str]:
    """Return the ``frames`` that are the only unlabeled frame of their track among ``among`` (default:
    ``frames``), in their order (``classification_tracks.alone_in_their_track``)."""
    from fleetloop_cloud.loop.tasks.classification_tracks import alone_in_their_track

    alone = alone_in_their_track(loop, round_number, set(frames if among is None else among))
    return [f for f in frames if f in alone]


def promising(result: Fit, min_validation: int, target: float, z: float) -> list[int]:
    """Return the classes more random evidence could automate: not automated, and short of evidence only for
    want of frames, not because the teachers err where they are most sure: the accuracy of its threshold's
    most confident ``min_validation`` evidence frames is not below ``target`` by the Wilson upper bound at
    ``z`` (one error among 30 is not yet evidence against the target, two are), or it has fewer frames.

    A class with fewer than ``min_validation`` frames is routed in the pooled group, so the group's evidence
    decides for all its classes, and more frames are drawn from all of them alike: drawing only the group's
    clean classes would skew its evidence towards them, away from what the group's threshold accepts.
    """
    return [
        c
        for c, t in enumerate(result.thresholds)
        if not t.automated
        and (
            t.eligible_frames < min_validation
            or routing.wilson_upper(round(t.accuracy * min_validation), min_validation, z) >= target
        )
    ]


def more_evidence(
    part: "ClassificationPart", loop: "CloudLoop", round_number: int, result: Fit, unlabeled: list[str]
) -> int:
    """Ask people about more random frames where evidence could unlock automation (``review.calibration_more``);
    return how many were asked.

    The frames are drawn at random from the unlabeled frames the committee assigns to a promising class (a
    random sample of each class's population, so unbiased evidence for its threshold), ``calibration_more``
    at a time while this round's calibration tasks number fewer than ``calibration_max`` and at least that
    many such frames are left (fewer would not repay the wait).
    """
    review, routing_cfg = part.config.review, part.config.routing
    batch = review.calibration_more
    tasks = part.pool.tasks(round=round_number)
    asked = sum(t.purpose == "calibration" for t in tasks)
    count = min(batch, review.calibration_max - asked)
    if batch <= 0 or count <= 0 or not unlabeled:
        return 0
    classes = promising(result, routing_cfg.min_validation, routing_cfg.target_accuracy, routing_cfg.bound_z)
    if not classes:
        return 0
    asked_before = {t.frame_id for t in tasks}  # e.g. an answer marked unusable
    unlabeled = [f for f in unlabeled if f not in asked_before]
    combined = part.combined(round_number, unlabeled, result.weights)
    candidates = [f for f, label in zip(unlabeled, combined.label) if int(label) in classes]
    if part.config.routing.propagation.enabled:
        # a track of several frames gets one person's label that propagation spreads, cheaper than a random
        # frame's; only a frame alone in its track would be reviewed on its own anyway
        candidates = alone_of(loop, round_number, candidates, among=unlabeled)
    if len(candidates) < batch:
        return 0
    rng = loop.rng(round_number, f"{part.rng_prefix}calibration-more-{asked}")
    picked = [candidates[int(i)] for i in sorted(rng.choice(len(candidates), count, replace=False))]
    part.add_tasks(round_number, "calibration", list(zip(picked, part.suggestions(round_number, picked))))
    return len(picked)


@dataclass
class Answers:
    """What people answered about one frame: its first task, and every answer since (oldest first)."""

    purpose: str  # of the first task
    round: int  # of the first answer (the frame's teachers then had never seen a label of it)
    suggestion: int | None  # shown with the first answer
    answers: list[int]  # the last one is the frame's label (after second opinions, the majority)


def answer_history(
    part: "ClassificationPart", purposes: set[str], frames: set[str] | None = None
) -> dict[str, Answers]:
    """Return the answers per frame whose first done task is of ``purposes`` (only ``frames``, when given);
    later tasks of those purposes and second opinions add their answers."""
    history: dict[str, Answers] = {}
    for task in part.pool.tasks(status="done"):  # oldest first
        if frames is not None and task.frame_id not in frames:
            continue
        if task.frame_id not in history:
            if task.purpose in purposes:
                history[task.frame_id] = Answers(task.purpose, int(task.round), task.suggestion, [int(task.answer)])
        elif task.purpose == "second-opinion" or task.purpose in purposes:
            history[task.frame_id].answers.append(int(task.answer))
    return history


def contradicted(part: "ClassificationPart", round_number: int, everything: Evidence, weights: tuple) -> int:
    """Ask second opinions on the evidence answers ``routing.second_opinion`` names, where the committee
    (``weights``) is at least ``routing.second_opinion_min_confidence`` sure; return how many were asked."""
    cfg = part.config.routing
    asking = set(cfg.second_opinion) & set(cfg.evidence)
    if not asking:
        return 0
    return second_opinions(
        part, round_number, asking, among=sure_of(everything, weights, cfg.second_opinion_min_confidence)
    )


def sure_of(found: Evidence, weights: tuple[float, float], floor: float) -> set[str] | None:
    """Return the evidence frames the committee (``weights``) gives a confidence of at least ``floor`` (None: all)."""
    if floor <= 0.0:
        return None
    confidence = combine(found.probs_a, found.probs_b, weights=weights).confidence
    return {frame for frame, c in zip(found.ids, confidence) if c >= floor}


def second_opinions(
    part: "ClassificationPart",
    round_number: int,
    purposes: set[str],
    frames: set[str] | None = None,
    among: set[str] | None = None,
) -> int:
    """Ask another person about every frame whose answers need it (``routing.needs_another_opinion``),
    of ``frames`` (None: all) and only ``among`` these (None: all); return how many were asked.

    The person sees the latest answer as the suggestion, so agreeing costs a verification: most
    contradictions are the teachers' errors, which a second person confirms (measured: showing the
    teachers' suggestion again made 33 of 39 second opinions full labels).
    """
    history = answer_history(part, purposes, frames)
    labeled = part.pool.labels(list(history))
    asks = [
        (frame, seen.answers[-1])
        for frame, seen in history.items()
        if frame in labeled
        and (among is None or frame in among)
        and routing.needs_another_opinion(seen.answers, seen.suggestion)
    ]
    part.add_tasks(round_number, "second-opinion", asks)
    return len(asks)


def auto_accept(part: "ClassificationPart", unlabeled: list[str], round_number: int, result: Fit, since: int) -> int:
    """Label the frames the class thresholds admit (``auto``, with the evidence behind each); return the count."""
    combined = part.combined(round_number, unlabeled, result.weights)
    accepted = np.flatnonzero(routing.accept_by_class(combined.confidence, combined.label, result.thresholds))
    with part.pool.transaction():
        for i in accepted:
            c = int(combined.label[i])
            t = result.thresholds[c]
            agreed = "agrees" if combined.agree[i] else "disagrees"
            part.pool.set_label(
                unlabeled[i],
                c,
                "auto",
                round_number,
                reason=(
                    f"auto-accepted: class {part.frame_labels[c]} at threshold {t.value:.4f} "
                    f"({t.accepted_frames} of {t.validation_frames} audited frames since round {since}, "
                    f"accuracy {t.accuracy:.3f}, lower bound {t.lower_bound:.3f}); T2 {agreed}"
                ),
                confidence=float(combined.confidence[i]),
            )
        part.pool.set_state([unlabeled[i] for i in accepted], "accepted")
    return len(accepted)


def summary(result: Fit, frames: int, labels: Sequence[str]) -> dict:
    """Return the thresholds in the one-threshold form reports and audits read (value: the lowest class one)."""
    automated = [t for t in result.thresholds if t.automated]
    hits = int((result.accepted & result.correct).sum())
    accepted = int(result.accepted.sum())
    names = [labels[c] for c, t in enumerate(result.thresholds) if t.automated]
    return {
        "value": min(t.value for t in automated) if automated else None,
        "validation_frames": frames,
        "eligible_frames": frames,
        "accepted_frames": accepted,
        "accuracy": round(hits / accepted, 4) if accepted else 0.0,
        "lower_bound": round(min(t.lower_bound for t in automated), 4) if automated else 0.0,
        "reason": f"per class: {len(automated)} of {len(labels)} automated ({', '.join(names) or 'none'})",
        "per_class": True,
    }


def alternatives(part: "ClassificationPart", round_number: int, items: Sequence[tuple[str, int | None]]) -> list:
    """Return per task (frame, suggestion) the class the review page shows beside its suggestion, one key away:
    the likeliest other class of the T1/T2 committee (as :meth:`suggestions` weighs it). None where nothing is
    suggested or a teacher has not predicted the frame (nor where the round's teachers have not run). Where the
    teachers doubt, their runner-up is often right (a seed-0 hard-mode round: 32 of the 57 review answers that
    were not the suggestion)."""
    if "versions" not in part.pool.step(round_number, "autolabel")[1]:
        return [None] * len(items)
    tier_a, version_a, tier_b, version_b = part.loop.teacher_versions(round_number)
    wanted = [frame for frame, suggestion in items if suggestion is not None]
    missing = set(part.pool.missing_predictions(tier_a, version_a, wanted))
    missing |= set(part.pool.missing_predictions(tier_b, version_b, wanted))
    ids = [frame for frame in wanted if frame not in missing]
    order = dict(zip(ids, np.argsort(-part.combined(round_number, ids).probs, axis=1, kind="stable")))
    out: list[int | None] = []
    for frame, suggestion in items:
        ranked = order.get(frame) if suggestion is not None else None
        out.append(None if ranked is None else int(next(c for c in ranked if int(c) != int(suggestion))))
    return out
