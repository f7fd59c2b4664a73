"""Live counters of the review page: queue depth, labels per hour per annotator, audited accuracy.

* queue depth: review-page tasks waiting (not leased) and in someone's hands, per purpose;
* labels per hour per annotator: answers in the last hour, and the pace while labeling
  (answers x 3600 / measured seconds);
* audited auto-label accuracy: every answered audit task (any annotator backend) checks one
  auto-accepted or propagated label; the accuracy comes with its Wilson interval at
  ``audit.confidence_level`` (config/cloud.yaml), as the loop reports it.
"""

from __future__ import annotations

from fleetloop_cloud.config import CloudConfig
from fleetloop_cloud.review.db import ReviewDB
from fleetloop_cloud.review.leases import REVIEW_BACKEND
from fleetloop_cloud.routing import wilson_interval


def queue_depth(db: ReviewDB, now: float) -> dict[str, dict[str, int]]:
    """Return, per task purpose, review-page tasks {'waiting': n, 'leased': n}."""
    rows = db.query(
        "SELECT t.purpose, SUM(CASE WHEN l.task_id IS NULL OR l.expires <= ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN l.task_id IS NOT NULL AND l.expires > ? THEN 1 ELSE 0 END) FROM tasks t "
        "LEFT JOIN review_leases l ON l.task_id = t.id WHERE t.status='submitted' AND t.backend=? "
        "GROUP BY t.purpose ORDER BY t.purpose",
        (now, now, REVIEW_BACKEND),
    )
    return {purpose: {"waiting": int(waiting or 0), "leased": int(leased or 0)} for purpose, waiting, leased in rows}


def annotator_rates(db: ReviewDB, now: float, window_s: float = 3600.0) -> list[dict]:
    """Return per annotator: answers total, in the last ``window_s``, measured seconds, labels per hour."""
    rows = db.query(
        "SELECT annotator, COUNT(*), COALESCE(SUM(seconds), 0), SUM(CASE WHEN done >= ? THEN 1 ELSE 0 END) "
        "FROM tasks WHERE backend=? AND status IN ('done', 'failed') AND annotator IS NOT NULL "
        "GROUP BY annotator ORDER BY annotator",
        (now - window_s, REVIEW_BACKEND),
    )
    out = []
    for annotator, count, seconds, recent in rows:
        out.append(
            {
                "annotator": annotator,
                "labels": int(count),
                "last_hour": int(recent or 0),
                "seconds": round(float(seconds), 2),
                "per_hour_pace": round(3600.0 * count / seconds, 1) if seconds > 0 else None,
            }
        )
    return out


def audited_accuracy(db: ReviewDB, confidence_level: float) -> dict:
    """Return the audited auto-label accuracy: frames, correct, accuracy and its Wilson interval."""
    rows = db.query(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN answer = suggestion THEN 1 ELSE 0 END), 0) "
        "FROM tasks WHERE purpose='audit' AND status='done' AND suggestion IS NOT NULL"
    )
    frames, correct = int(rows[0][0]), int(rows[0][1])
    low, high = wilson_interval(correct, frames, confidence_level)
    return {
        "frames": frames,
        "correct": correct,
        "accuracy": round(correct / frames, 4) if frames else None,
        "interval": [round(low, 4), round(high, 4)],
        "confidence_level": confidence_level,
    }


def counters(db: ReviewDB, config: CloudConfig, now: float) -> dict:
    """Return every live counter (JSON-able)."""
    queue = queue_depth(db, now)
    return {
        "queue": queue,
        "waiting": sum(q["waiting"] for q in queue.values()),
        "leased": sum(q["leased"] for q in queue.values()),
        "annotators": annotator_rates(db, now),
        "audit": audited_accuracy(db, config.audit.confidence_level),
        "target_accuracy": config.routing.target_accuracy,
        "time": now,
    }
