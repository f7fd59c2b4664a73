"""What the labeling page shows for a task: the frame, the suggestion, each teacher tier's view.

The loop's round state says which teacher versions labeled the round (autolabel step info) and
at which temperature their ensemble is calibrated (review step info, once routing ran; before
that, fitted the way the loop fits it, or 1.0 with too few human labels). A suggestion is shown
exactly when the loop shows it to any annotator: ``review.show_suggestions``, and always for an
audit (which verifies the auto-label).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from fleetloop_cloud.autolabel import combine
from fleetloop_cloud.calibration import fit_temperature
from fleetloop_cloud.config import CloudConfig
from fleetloop_cloud.pool import Pool, PoolError, Task

# keyboard: digits pick classes 0-9; the 11th class ("none", index 10) is N
KEYS = tuple(str(i) for i in range(10)) + ("n",)


@dataclass(frozen=True)
class Teachers:
    """The round's teacher versions and calibration temperature (what the loop routes with)."""

    round: Optional[int]
    versions: dict[str, str]  # tier -> version (empty before autolabel ran)
    temperature: float
    temperature_source: str  # "loop" | "fitted" | "none"


def _round(pool: Pool) -> Optional[int]:
    current = pool.current_round()
    return current if current is not None else (pool.last_round() or None)


def calibration_answers(pool: Pool, versions: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """Return (frame ids, human answers) of done calibration tasks that both teacher versions predicted."""
    latest: dict[str, int] = {}
    for task in pool.tasks(purpose="calibration", status="done"):
        latest[task.frame_id] = int(task.answer)  # tasks come oldest first: the newest answer wins
    ids = list(latest)
    for tier, version in versions.items():
        missing = set(pool.missing_predictions(tier, version, ids))
        ids = [f for f in ids if f not in missing]
    return ids, np.asarray([latest[f] for f in ids], np.int64)


def teachers(pool: Pool, config: CloudConfig) -> Teachers:
    """Return the open (else last) round's teacher versions and temperature."""
    number = _round(pool)
    if number is None:
        return Teachers(None, {}, 1.0, "none")
    _, info = pool.step(number, "autolabel")
    versions = {tier: str(version) for tier, version in (info.get("versions") or {}).items()}
    if len(versions) != 2:
        return Teachers(number, {}, 1.0, "none")
    _, review = pool.step(number, "review")
    if review.get("temperature") is not None:
        return Teachers(number, versions, float(review["temperature"]), "loop")
    ids, answers = calibration_answers(pool, versions)
    if len(ids) < config.routing.calibration_min_labels:
        return Teachers(number, versions, 1.0, "none")
    probs = [pool.predictions(tier, version, ids)[0] for tier, version in versions.items()]
    return Teachers(number, versions, fit_temperature(combine(probs[0], probs[1]).log_probs, answers), "fitted")


def _top(probs: np.ndarray, labels: Sequence[str], k: int = 3) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {"index": int(i), "name": labels[i], "key": KEYS[i].upper(), "prob": round(float(probs[i]), 4)} for i in order
    ]


def suggestion_shown(task: Task, config: CloudConfig) -> bool:
    """Return whether the loop shows this task's suggestion to annotators."""
    return task.suggestion is not None and (config.review.show_suggestions or task.purpose == "audit")


def describe(pool: Pool, config: CloudConfig, labels: Sequence[str], task: Task, state: Teachers) -> dict:
    """Return the page's view of one task (JSON-able): frame facts, suggestion, tiers' top classes."""
    try:
        frame = pool.frame(task.frame_id)
    except PoolError:
        frame = None
    shown = suggestion_shown(task, config)
    item: dict = {
        "task_id": task.id,
        "frame_id": task.frame_id,
        "purpose": task.purpose,
        "round": task.round,
        "image_url": f"/frame/{task.frame_id}.png",
        "status": task.status,
        "answer": task.answer,
        "answer_name": labels[task.answer] if task.answer is not None and 0 <= task.answer < len(labels) else None,
        "annotator": task.annotator,
        "seconds": task.seconds,
        "error": task.error,
        "suggestion": None,
        "tiers": [],
        "robot": None,
        "frame": None,
    }
    if frame is not None:
        item["frame"] = {
            "robot": frame["robot_id"],
            "stream": frame["stream"],
            "site": frame["site"],
            "width": frame["width"],
            "height": frame["height"],
            "stamp_ns": frame["stamp_ns"],
            "track": frame["track_hint"],
        }
    if not shown:
        return item  # no suggestion, no tier opinions: the human labels unanchored
    suggestion = {
        "index": task.suggestion,
        "name": labels[task.suggestion],
        "key": KEYS[task.suggestion].upper(),
        "confidence": None,  # the teachers' calibrated probability of the suggested class
        # "teachers" (their ensemble's class) or "track" (a person's label of another frame of the track)
        "source": "teachers"
        if task.purpose != "review"
        else pool.suggestion_sources(task.round).get(task.frame_id, "teachers"),
        # the teachers' likeliest other class, taken with one key (A) where the suggestion is wrong
        "alternative": None
        if task.alternative is None or not 0 <= task.alternative < len(labels)
        else {"index": task.alternative, "name": labels[task.alternative], "key": KEYS[task.alternative].upper()},
    }
    if state.versions:
        _tier_opinions(pool, labels, task, state, item, suggestion)
    item["suggestion"] = suggestion
    if frame is not None:
        item["robot"] = _robot_opinion(frame, labels)
    return item


def _tier_opinions(
    pool: Pool, labels: Sequence[str], task: Task, state: Teachers, item: dict, suggestion: dict
) -> None:
    """Add each teacher tier's top classes to ``item`` and, with both, their calibrated ensemble to both."""
    probs = []
    for tier, version in state.versions.items():
        try:
            p, _ = pool.predictions(tier, version, [task.frame_id])
        except PoolError:
            break
        probs.append(p[0])
        item["tiers"].append({"tier": tier, "version": version, "top": _top(p[0], labels)})
    if len(probs) == 2:
        combined = combine(probs[0][None], probs[1][None], state.temperature)
        suggestion["confidence"] = round(float(combined.probs[0, task.suggestion]), 4)
        suggestion["agree"] = bool(combined.agree[0])
        item["ensemble"] = {
            "top": _top(combined.probs[0], labels),
            "temperature": round(state.temperature, 4),
            "calibration": state.temperature_source,
        }


def _robot_opinion(frame, labels: Sequence[str]) -> dict | None:
    """Return what the robot's serving tier said about the frame (from its sidecar), or None."""
    try:
        sidecar = json.loads(frame["sidecar"])
    except (TypeError, json.JSONDecodeError):
        sidecar = {}
    prediction = sidecar.get("prediction", -1)
    if not (isinstance(prediction, int) and 0 <= prediction < len(labels)):
        return None
    return {
        "tier": sidecar.get("tier_used") or "?",
        "name": labels[prediction],
        "confidence": round(float(sidecar.get("confidence", 0.0)), 4),
    }
