"""Routing of whole tracks (``routing.propagation.track_frames: track``): evidence per track, one label per track.

The committee errs about an item in every frame it sees it, so the frames of a track err together,
and a bound that counts each evidence frame as independent promises more than it delivers (three
seeds at 8263589: 8 of 13 wrong auto-labels came two or four from one track). Here the unit is the
track: its committee probabilities averaged over its frames give one class and one confidence; the
evidence is the tracks people labeled (any answer of ``routing.evidence``'s purposes or a track task
on one of its frames, one class among them), each scored by the teachers of its first answer's round
(out of sample); one threshold per class (Mondrian, ``routing.class_thresholds``) at
``target_accuracy`` by the Wilson bound over tracks. A track of two or more unlabeled frames and no
person's label whose average clears its class's threshold is auto-labeled: every frame of it on
which the committee's own class is the track's (the others stay for the track task and review).
Frames alone in their track are routed frame by frame (``classification_routing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fleetloop_cloud import routing
from fleetloop_cloud.autolabel import combine
from fleetloop_cloud.loop.review import unlabeled_rows
from fleetloop_cloud.loop.tasks.classification_routing import answer_history
from fleetloop_cloud.loop.tasks.classification_tracks import open_tracks, tracks

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop
    from fleetloop_cloud.loop.tasks.classification import ClassificationPart


@dataclass
class TrackEvidence:
    """Tracks people labeled: the class people gave, the committee's average (scored by the teachers of the
    round of the track's first answer)."""

    keys: list[str]
    answers: np.ndarray
    label: np.ndarray  # the class of the averaged committee probabilities
    confidence: np.ndarray  # their largest


def average(probs: np.ndarray) -> tuple[int, float]:
    """Return (class, confidence) of a track from its frames' committee probabilities (N, C): their mean."""
    mean = np.asarray(probs, np.float64).mean(axis=0)
    label = int(mean.argmax())
    return label, float(mean[label])


def members(keys: list[str]) -> dict[str, list[int]]:
    """Return {track: indices of its frames}."""
    out: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return out


def evidence(
    part: "ClassificationPart", ids: list[str], keys: list[str], weights: tuple[float, float], since: int
) -> TrackEvidence:
    """Return the tracks (``keys`` of frames ``ids``) of two or more frames people labeled in rounds ``since``
    and later (one class among their answers)."""
    purposes = set(part.config.routing.evidence) | {"track"}
    history = answer_history(part, purposes)
    standing = set(part.pool.labels(list(history)))
    found: dict[str, tuple[set[int], int]] = {}
    for frame, key in zip(ids, keys):
        seen = history.get(frame)
        if seen is None or frame not in standing:
            continue
        classes, first = found.get(key, (set(), seen.round))
        found[key] = (classes | {seen.answers[-1]}, min(first, seen.round))
    by_track = members(keys)
    chosen = [
        key
        for key, (classes, first) in found.items()
        if len(classes) == 1 and first >= since and len(by_track[key]) > 1
    ]
    rounds = np.asarray([found[key][1] for key in chosen], np.int64)
    answers = np.asarray([next(iter(found[key][0])) for key in chosen], np.int64)
    label, confidence = np.zeros(len(chosen), np.int64), np.zeros(len(chosen), np.float64)
    keep = np.zeros(len(chosen), bool)
    for number in sorted(set(rounds.tolist())):
        index = np.flatnonzero(rounds == number)
        frames = [ids[i] for t in index for i in by_track[chosen[t]]]
        probs_a, probs_b, have = part.evidence_probs(frames, np.full(len(frames), number))
        probs = combine(probs_a, probs_b, weights=weights).probs
        start = 0
        for t in index:
            size = len(by_track[chosen[t]])
            scored = have[start : start + size]
            if scored.any():
                label[t], confidence[t] = average(probs[start : start + size][scored])
                keep[t] = True
            start += size
    return TrackEvidence([k for k, ok in zip(chosen, keep) if ok], answers[keep], label[keep], confidence[keep])


def auto_accept_tracks(
    part: "ClassificationPart", loop: "CloudLoop", round_number: int, weights: tuple[float, float], since: int
) -> dict:
    """Auto-label the unlabeled tracks whose averaged committee clears their class's track threshold; return
    what was decided (thresholds, evidence, tracks and frames accepted) for the review step's record."""
    cfg = part.config.routing
    floor = float(part.pool.get("threshold_floor", 0.0))
    # the evidence's tracks include the frames people labeled, which the current T2 was not asked about
    found = evidence(part, *tracks(loop, round_number, every_frame=True), weights, since)
    ids, keys = tracks(loop, round_number)
    thresholds = routing.class_thresholds(
        found.confidence,
        found.label,
        found.label == found.answers,
        len(part.frame_labels),
        cfg.target_accuracy,
        cfg.bound_z,
        cfg.min_validation,
        floor,
    )
    waiting = open_tracks(loop, ids, keys, {r["id"] for r in unlabeled_rows(loop)})
    waiting = {key: index for key, index in waiting.items() if len(index) > 1}
    frames = [ids[i] for index in waiting.values() for i in index]
    combined = part.combined(round_number, frames, weights)
    position = {f: j for j, f in enumerate(frames)}
    accepted_tracks, accepted_frames = 0, 0
    with part.pool.transaction():
        for key, index in waiting.items():
            rows = [position[ids[i]] for i in index]
            label, confidence = average(combined.probs[rows])
            t = thresholds[label]
            if confidence < t.value:
                continue
            agreeing = [j for j in rows if int(combined.label[j]) == label]
            accepted_tracks += 1
            accepted_frames += len(agreeing)
            for j in agreeing:
                part.pool.set_label(
                    frames[j],
                    label,
                    "auto",
                    round_number,
                    reason=(
                        f"auto-accepted with its track {key} ({len(rows)} unlabeled frames, average confidence "
                        f"{confidence:.4f}): class {part.frame_labels[label]} at track threshold {t.value:.4f} "
                        f"({t.accepted_frames} of {t.validation_frames} evidence tracks since round {since}, "
                        f"accuracy {t.accuracy:.3f}, lower bound {t.lower_bound:.3f}); the frame's committee agrees"
                    ),
                    confidence=confidence,
                )
            part.pool.set_state([frames[j] for j in agreeing], "accepted")
    return {
        "thresholds": {part.frame_labels[c]: t.to_dict() for c, t in enumerate(thresholds)},
        "evidence_tracks": len(found.keys),
        "open_tracks": len(waiting),
        "accepted_tracks": accepted_tracks,
        "accepted_frames": accepted_frames,
    }
