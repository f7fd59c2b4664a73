"""Review phases of classifiers along tracks: one human label per track confirms the frames the tiers agree on.

``track``: per track (robot hint, else consecutive frames with similar teacher embeddings) one
representative frame to humans; ``propagate``: its human label goes to the track's unlabeled
frames where both teachers agree with it (``routing.propagate``); frames auto-accepted this round
that contradict it go back to review.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fleetloop_cloud import routing
from fleetloop_cloud.loop.review import unlabeled_rows

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop
    from fleetloop_cloud.loop.tasks.classification import ClassificationPart


def _part(loop: "CloudLoop") -> "ClassificationPart":
    # these phases are registered by the classification part only (its review_phases)
    return loop.task  # type: ignore[return-value]


def tracks(loop: "CloudLoop", round_number: int, every_frame: bool = False) -> tuple[list[str], list[str]]:
    """Return (frame ids, track keys) over the frames with current teacher predictions (holdout aside);
    ``every_frame``: also frames the current T2 has not predicted (labeled ones, which it is not asked
    about), as long as T1, whose embeddings chain the tracks, has."""
    tier_a, version_a, tier_b, version_b = loop.teacher_versions(round_number)
    rows = [r for r in loop.pool.frames() if not r["holdout"]]
    ids = [r["id"] for r in rows]
    missing = set(loop.pool.missing_predictions(tier_a, version_a, ids))
    if not every_frame:
        missing |= set(loop.pool.missing_predictions(tier_b, version_b, ids))
    rows = [r for r in rows if r["id"] not in missing]
    ids = [r["id"] for r in rows]
    # T1's embeddings (the foundation tier tells items apart best), T2's where T1 has none
    _, embeddings = loop.pool.predictions(tier_a, version_a, ids)
    if embeddings is None:
        _, embeddings = loop.pool.predictions(tier_b, version_b, ids)
    if embeddings is not None and len(embeddings):
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    prop = loop.config.routing.propagation
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
        prop.hint_max_gap_s,
        prop.hint_min_similarity,
    )
    return ids, keys


def people_labeled(loop: "CloudLoop", ids: list[str], keys: list[str]) -> dict[str, set[int]]:
    """Return {track: the classes people gave its frames} of the tracks (``keys`` of ``ids``) a person labeled."""
    labels = loop.pool.labels(ids)
    given: dict[str, set[int]] = {}
    for frame, key in zip(ids, keys):
        if frame in labels and labels[frame].source == "human":
            given.setdefault(key, set()).add(int(labels[frame].label))
    return given


def track_labels(loop: "CloudLoop", round_number: int, frame_ids: list[str]) -> dict[str, int]:
    """Return {frame: the class people gave its track} for the frames of ``frame_ids`` whose track has a
    person's label (one class: a track people labeled two ways suggests nothing).

    The review's suggestion for a frame propagation left out (the committee disagrees with its track's
    label): measured on a demo pool, 31 of 121 review frames were such, the committee's class wrong on
    all 31 and the track's label right on all 31, so a person confirms instead of labeling from scratch.
    """
    if not loop.config.routing.propagation.enabled or not frame_ids:
        return {}
    ids, keys = tracks(loop, round_number)
    given = people_labeled(loop, ids, keys)
    track_of = dict(zip(ids, keys))
    out = {}
    for frame in frame_ids:
        classes = given.get(track_of.get(frame, ""), set())
        if len(classes) == 1:
            out[frame] = next(iter(classes))
    return out


def open_tracks(loop: "CloudLoop", ids: list[str], keys: list[str], unlabeled: set[str]) -> dict[str, list[int]]:
    """Return {track: the indices of its frames in ``unlabeled``} of the tracks (``keys`` of ``ids``) no person
    has labeled that hold at least one such frame, in the order of the tracks' first frames in ``ids``."""
    labeled = people_labeled(loop, ids, keys)
    out: dict[str, list[int]] = {}
    for i, (frame, key) in enumerate(zip(ids, keys)):
        if key not in labeled:
            waiting = out.setdefault(key, [])
            if frame in unlabeled:
                waiting.append(i)
    return {key: index for key, index in out.items() if index}


def alone_in_their_track(loop: "CloudLoop", round_number: int, unlabeled: set[str]) -> set[str]:
    """Return the frames of ``unlabeled`` that are the only unlabeled frame of a track no person has labeled
    (what the track phase leaves out: it asks about tracks of two or more)."""
    ids, keys = tracks(loop, round_number)
    return {ids[index[0]] for index in open_tracks(loop, ids, keys, unlabeled).values() if len(index) == 1}


def track(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Review phase: the most confident agreeing unlabeled frame of each track without a human label to humans."""
    info["phase"] = "propagate"
    if not loop.config.routing.propagation.enabled:
        info["track_tasks"] = 0
        return info
    ids, keys = tracks(loop, round_number)
    combined = _part(loop).combined(round_number, ids, info["weights"])
    representatives = []
    for candidates in open_tracks(loop, ids, keys, {r["id"] for r in unlabeled_rows(loop)}).values():
        if len(candidates) < 2:
            continue
        # the most confident agreeing frame: a human most likely confirms it, and it confirms the rest
        best = max(candidates, key=lambda i: (bool(combined.agree[i]), float(combined.confidence[i]), ids[i]))
        representatives.append((ids[best], int(combined.label[best])))
    budget = loop.config.review.human_budget
    if budget is not None:
        representatives = representatives[:budget]
    _part(loop).add_tasks(round_number, "track", representatives)
    info["track_tasks"] = len(representatives)
    return info


def propagate(loop: "CloudLoop", round_number: int, info: dict) -> dict:
    """Review phase: human track labels to the track's agreeing frames; contradicted auto labels back to review."""
    prop = loop.config.routing.propagation
    propagated, disputed, ambiguous = 0, 0, 0
    if prop.enabled:
        ids, keys = tracks(loop, round_number)
        combined = _part(loop).combined(round_number, ids, info["weights"])
        labels = loop.pool.labels(ids)
        human = {i: labels[f].label for i, f in enumerate(ids) if f in labels and labels[f].source == "human"}
        unlabeled = {r["id"] for r in unlabeled_rows(loop)}
        candidates = np.asarray([f in unlabeled for f in ids])
        accepted = np.asarray(
            [f in labels and labels[f].source == "auto" and labels[f].round == round_number for f in ids]
        )
        min_confidence = max(prop.min_confidence, float(loop.pool.get("propagation_floor", 0.0)))
        # the committee's label must match the track's human label; T2's own vote is already weighed in it
        # (classification_routing), so it is no separate veto here either
        everyone = np.ones(len(ids), bool)
        result = routing.propagate(
            keys, combined.label, everyone, combined.confidence, human, candidates, accepted, min_confidence
        )
        with loop.pool.transaction():
            for i, label in result.labels.items():
                loop.pool.set_label(
                    ids[i],
                    label,
                    "propagated",
                    round_number,
                    reason=f"track {keys[i]}: human label confirmed by agreeing tiers",
                    confidence=float(combined.confidence[i]),
                )
            loop.pool.set_state([ids[i] for i in result.labels], "accepted")
            for i in result.disputed:
                loop.pool.remove_label(ids[i], round_number, reason=f"disputed by the human label of track {keys[i]}")
            loop.pool.set_state([ids[i] for i in result.disputed], "in_review")
        propagated, disputed, ambiguous = len(result.labels), len(result.disputed), len(result.ambiguous_tracks)
    info.update(propagated=propagated, disputed=disputed, ambiguous_tracks=ambiguous, phase="review")
    return info
