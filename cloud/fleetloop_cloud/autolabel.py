"""Auto-labeling: the two teacher tiers (T1 foundation, T2 domain teacher) over pool frames.

Predictions are stored per model version, so a new teacher relabels every frame it has not seen
and rerunning with the same teachers does nothing. In production the same model package runs as
a SageMaker batch transform job; here ONNX Runtime runs it in batches.

:func:`combine` is the decision: both tiers' labels, their agreement, and the calibrated
confidence (the tiers' probabilities combined by fitted committee weights, or a temperature-scaled
geometric mean).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from fleetloop_core.inference import TierModel

from fleetloop_cloud.calibration import apply_temperature, committee_log_probs, ensemble_log_probs
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.pool import Pool


@dataclass
class AutolabelReport:
    """What one auto-label run did: frames per tier that needed a prediction, time."""

    frames: int
    predicted: dict[str, int]
    versions: dict[str, str]
    seconds: float
    cpu_seconds: float

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "predicted": dict(self.predicted),
            "versions": dict(self.versions),
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


def load_teachers(
    paths: Mapping[str, Path], providers: Sequence[str] = ("cpu",), threads: int = 1
) -> dict[str, TierModel]:
    """Return the teacher tiers loaded (hashes verified) from their package directories."""
    return {
        tier: TierModel.load(path, providers=providers, intra_op_threads=threads, warmup=0)
        for tier, path in paths.items()
    }


def missing_batches(
    store, teachers: Mapping[str, Any], frame_ids: Sequence[str], batch_size: int, progress: bool, verb: str
) -> Iterator[tuple[str, Any, list[str]]]:
    """Yield (tier, model, frame ids) batches of the frames each teacher version has not predicted yet.

    ``store``: where the predictions go (``missing_predictions``); ``verb`` names the progress bar.
    """
    for tier, model in teachers.items():
        todo = store.missing_predictions(tier, model.version, list(frame_ids))
        bar = tqdm(total=len(todo), desc=f"{verb} {tier}", unit="frame", disable=not progress, leave=False)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            yield tier, model, batch
            bar.update(len(batch))
        bar.close()


def predicted_counts(store, teachers: Mapping[str, Any], frame_ids: Sequence[str]) -> dict[str, int]:
    """Return per teacher tier how many of the frames its version has not predicted yet."""
    return {tier: len(store.missing_predictions(tier, m.version, list(frame_ids))) for tier, m in teachers.items()}


def run_teachers(
    pool: Pool,
    cache: FrameCache,
    teachers: Mapping[str, TierModel],
    frame_ids: Sequence[str],
    batch_size: int = 64,
    progress: bool = True,
) -> AutolabelReport:
    """Predict every frame a teacher version has not seen yet; store probs and embeddings in the pool."""
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = {row["id"]: row for row in pool.frames(ids=frame_ids, include_duplicates=True)}
    predicted = predicted_counts(pool, teachers, frame_ids)
    for tier, model, batch in missing_batches(pool, teachers, frame_ids, batch_size, progress, "auto-label"):
        images = cache.images([rows[f] for f in batch])
        # frames of one batch may differ in size: run each size group as one batch
        probs = np.zeros((len(batch), len(model.labels)), np.float32)
        embeddings = None
        shapes: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            shapes.setdefault(image.shape, []).append(i)
        for indices in shapes.values():
            out = model.infer_batch(np.stack([images[i] for i in indices]), batch_size=batch_size)
            probs[indices] = out.probs
            if out.embedding is not None:
                if embeddings is None:
                    embeddings = np.zeros((len(batch), out.embedding.shape[1]), np.float32)
                embeddings[indices] = out.embedding
        pool.put_predictions(tier, model.version, batch, probs, embeddings)
    return AutolabelReport(
        frames=len(frame_ids),
        predicted=predicted,
        versions={t: m.version for t, m in teachers.items()},
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
    )


@dataclass
class Combined:
    """Per frame: each tier's label, agreement, the ensemble label and its calibrated confidence."""

    label_a: np.ndarray
    label_b: np.ndarray
    agree: np.ndarray
    label: np.ndarray
    confidence: np.ndarray  # calibrated probability of ``label``, [0, 1]
    probs: np.ndarray  # calibrated ensemble probabilities (N, C)
    log_probs: np.ndarray  # uncalibrated ensemble log-probabilities (N, C)

    @property
    def uncertainty(self) -> np.ndarray:
        """Return 1 - confidence, raised to 1 where the tiers disagree ([0, 1])."""
        return np.where(self.agree, 1.0 - self.confidence, 1.0).astype(np.float32)


def combine(
    probs_a: np.ndarray, probs_b: np.ndarray, temperature: float = 1.0, weights: tuple[float, float] | None = None
) -> Combined:
    """Return the combined auto-label of two tiers' probabilities (N, C).

    Calibrated either by one ``temperature`` over their geometric mean or, with ``weights``, as the
    weighted product of experts those weights define (``calibration.fit_committee``).
    """
    label_a = probs_a.argmax(axis=1)
    label_b = probs_b.argmax(axis=1)
    log_probs = ensemble_log_probs(probs_a, probs_b)
    if weights is None:
        probs = apply_temperature(log_probs, temperature)
    else:
        probs = apply_temperature(committee_log_probs(probs_a, probs_b, weights), 1.0)
    label = probs.argmax(axis=1)
    return Combined(
        label_a=label_a,
        label_b=label_b,
        agree=label_a == label_b,
        label=label,
        confidence=probs[np.arange(len(label)), label],
        probs=probs,
        log_probs=log_probs,
    )
