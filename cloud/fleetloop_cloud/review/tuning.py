"""The numbers behind the tuning views: routing risk-coverage, replay sweeps, per-robot uploads.

* Routing: on the human-labeled validation sample (done calibration tasks, the unbiased random
  sample the loop routes with), the auto-labeler's accuracy among the frames it would accept,
  as a function of how many it accepts (:func:`risk_coverage`, pure). A target accuracy implies
  a threshold through the loop's own :func:`fleetloop_cloud.routing.choose_threshold` (same
  Wilson bound ``routing.bound_z``, ``routing.min_validation`` and the audit's threshold floor),
  and an auto-accept fraction on the validation sample and on the pool.
* Robots: ``fleetloop replay --sweep key=v1,v2 --out DIR`` writes ``DIR/replay.csv``
  (fleetloop_core.replay_outputs.CSV_COLUMNS, swept keys right after ``setting``); per-robot upload
  statistics come from the pool (frames, duplicates, time span) and the store (bytes).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fleetloop_core.store import ObjectStore, StoreError

from fleetloop_cloud.autolabel import combine
from fleetloop_cloud.config import CloudConfig
from fleetloop_cloud.pool import Pool
from fleetloop_cloud.review.errors import NotFound, ReviewError
from fleetloop_cloud.review.items import Teachers, calibration_answers
from fleetloop_cloud.routing import Threshold, choose_threshold, wilson_lower


# ------------------------------------------------------------------------------------ routing
@dataclass(frozen=True)
class RiskCoverage:
    """Accuracy of the auto-labeler among its k most confident agreeing validation frames, k = 1..n."""

    confidence: np.ndarray  # (k,) the threshold that accepts exactly those frames, descending
    coverage: np.ndarray  # (k,) accepted fraction of ALL validation frames, [0, 1]
    accuracy: np.ndarray  # (k,) accuracy among the accepted, [0, 1]
    lower: np.ndarray  # (k,) Wilson lower bound of that accuracy at z
    frames: int  # validation frames (agreeing or not)

    def __len__(self) -> int:
        return len(self.coverage)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, eligible: np.ndarray, z: float) -> RiskCoverage:
    """Return the risk-coverage curve: only ``eligible`` (tiers agree) frames may be accepted, most confident first."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    eligible = np.asarray(eligible, bool)
    order = np.argsort(-confidence[eligible], kind="stable")
    conf = confidence[eligible][order]
    hits = np.cumsum(correct[eligible][order])
    k = np.arange(1, len(conf) + 1)
    total = max(len(confidence), 1)
    lower = np.asarray([wilson_lower(int(h), int(n), z) for h, n in zip(hits, k)], np.float64)
    return RiskCoverage(conf, k / total, hits / np.maximum(k, 1), lower, len(confidence))


@dataclass(frozen=True)
class RoutingSample:
    """The validation sample the loop routes with: calibrated confidence, correctness, agreement."""

    frame_ids: list[str]
    confidence: np.ndarray
    correct: np.ndarray
    agree: np.ndarray
    teachers: Teachers


def routing_sample(pool: Pool, teachers: Teachers) -> RoutingSample:
    """Return the validation sample (done calibration tasks) scored at the teachers' temperature."""
    if not teachers.versions:
        empty = np.zeros(0)
        return RoutingSample([], empty, empty.astype(bool), empty.astype(bool), teachers)
    ids, answers = calibration_answers(pool, teachers.versions)
    if not ids:
        empty = np.zeros(0)
        return RoutingSample([], empty, empty.astype(bool), empty.astype(bool), teachers)
    probs = [pool.predictions(tier, version, ids)[0] for tier, version in teachers.versions.items()]
    combined = combine(probs[0], probs[1], teachers.temperature)
    return RoutingSample(
        ids, combined.confidence.astype(np.float64), combined.label == answers, combined.agree, teachers
    )


@dataclass(frozen=True)
class RoutingChoice:
    """What a target accuracy implies: the loop's threshold and how much it auto-accepts."""

    target: float
    threshold: Threshold
    validation_coverage: float  # accepted fraction of the validation sample
    pool_frames: int  # pool frames with both teachers' predictions
    pool_accepted: int  # of which the threshold would auto-accept
    floor: float

    @property
    def pool_fraction(self) -> Optional[float]:
        """Return the auto-accept fraction on the pool (None when no frame has predictions)."""
        return self.pool_accepted / self.pool_frames if self.pool_frames else None

    def to_dict(self) -> dict:
        """Return JSON-able data."""
        return {
            "target": self.target,
            "threshold": self.threshold.to_dict(),
            "validation_coverage": round(self.validation_coverage, 4),
            "pool_frames": self.pool_frames,
            "pool_accepted": self.pool_accepted,
            "pool_fraction": None if self.pool_fraction is None else round(self.pool_fraction, 4),
            "floor": self.floor,
        }


def pool_confidences(pool: Pool, teachers: Teachers) -> tuple[np.ndarray, np.ndarray]:
    """Return (calibrated confidence, tiers agree) of every non-duplicate, non-holdout pool frame with predictions."""
    if not teachers.versions:
        return np.zeros(0), np.zeros(0, bool)
    ids = [r["id"] for r in pool.frames() if not r["holdout"]]
    for tier, version in teachers.versions.items():
        missing = set(pool.missing_predictions(tier, version, ids))
        ids = [f for f in ids if f not in missing]
    if not ids:
        return np.zeros(0), np.zeros(0, bool)
    probs = [pool.predictions(tier, version, ids)[0] for tier, version in teachers.versions.items()]
    combined = combine(probs[0], probs[1], teachers.temperature)
    return combined.confidence.astype(np.float64), combined.agree


def choose(
    sample: RoutingSample,
    config: CloudConfig,
    target: float,
    floor: float,
    pool_confidence: np.ndarray,
    pool_agree: np.ndarray,
) -> RoutingChoice:
    """Return what ``target`` implies, with the loop's own threshold rule."""
    cfg = config.routing
    threshold = choose_threshold(
        sample.confidence, sample.correct, sample.agree, target, cfg.bound_z, cfg.min_validation, floor
    )
    if threshold.automated and len(sample.confidence):
        covered = float(np.mean(sample.agree & (sample.confidence >= threshold.value)))
        accepted = int(np.sum(pool_agree & (pool_confidence >= threshold.value)))
    else:
        covered, accepted = 0.0, 0
    return RoutingChoice(target, threshold, covered, len(pool_confidence), accepted, floor)


def parse_target(text: Optional[str], default: float) -> float:
    """Return a target accuracy from a query/form value; ReviewError unless 0.5 < target < 1."""
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ReviewError(f"target: expected a number between 0.5 and 1 (got {text!r})") from None
    if not (0.5 < value < 1.0) or math.isnan(value):
        raise ReviewError(f"target: must be > 0.5 and < 1 (got {value})")
    return value


# ------------------------------------------------------------------------------------ replay sweeps
REQUIRED_COLUMNS = ("setting", "frames", "kept", "kept_fraction", "kept_per_hour", "bytes_per_hour")


@dataclass(frozen=True)
class SweepFile:
    """A replay.csv the page knows, by id (clients never send paths)."""

    id: str
    path: Path
    label: str


@dataclass
class Sweep:
    """A parsed replay.csv: the swept keys and one row per setting."""

    source: str
    swept: list[str]
    rows: list[dict] = field(default_factory=list)

    @property
    def x_key(self) -> Optional[str]:
        """Return the first swept key (the plots' x axis), None for a base-only replay."""
        return self.swept[0] if self.swept else None


def sweep_id(path: Path) -> str:
    """Return a stable id of a sweep file (from its resolved path)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def find_sweeps(directories: Sequence[str | Path]) -> list[SweepFile]:
    """Return every replay.csv under ``directories`` (recursively), newest first."""
    found: dict[str, SweepFile] = {}
    for directory in directories:
        root = Path(directory)
        if not root.is_dir():
            continue
        for path in root.rglob("replay.csv"):
            if path.is_file():
                found.setdefault(
                    sweep_id(path), SweepFile(sweep_id(path), path, str(path.parent.relative_to(root.parent)))
                )
        for path in root.rglob("*.upload.csv"):
            found.setdefault(sweep_id(path), SweepFile(sweep_id(path), path, f"uploaded {path.stem.split('.')[0]}"))
    return sorted(found.values(), key=lambda s: (-s.path.stat().st_mtime, s.label))


def _number(value: str, column: str, line: int, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReviewError(f"{source}: line {line}: column {column} must be a number (got {value!r})") from None


def parse_sweep(text: str, source: str) -> Sweep:
    """Return a Sweep from replay.csv text; ReviewError naming the source, line and column when malformed."""
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ReviewError(
            f"{source}: not a `fleetloop replay` CSV: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(columns) or 'nothing'})"
        )
    swept = columns[1 : columns.index("frames")]
    sweep = Sweep(source, swept)
    for line, row in enumerate(reader, start=2):
        parsed: dict = {"setting": row["setting"]}
        for column in REQUIRED_COLUMNS[1:]:
            parsed[column] = _number(row[column], column, line, source)
        for key in swept:
            raw = row.get(key, "")
            try:
                parsed[key] = float(raw)
            except (TypeError, ValueError):
                parsed[key] = raw
        sweep.rows.append(parsed)
    if not sweep.rows:
        raise ReviewError(f"{source}: the CSV has a header but no settings")
    return sweep


def read_sweep(files: Sequence[SweepFile], sweep: str) -> tuple[SweepFile, Sweep]:
    """Return the sweep file with id ``sweep`` and its parsed content; NotFound if unknown."""
    for entry in files:
        if entry.id == sweep:
            return entry, parse_sweep(entry.path.read_text(encoding="utf-8", errors="replace"), entry.label)
    raise NotFound(f"no replay sweep {sweep!r}")


def store_upload(directory: Path, data: bytes, max_bytes: int) -> SweepFile:
    """Validate an uploaded replay.csv and keep it under ``directory``; return its entry."""
    if len(data) > max_bytes:
        raise ReviewError(f"uploaded CSV is {len(data)} bytes (limit {max_bytes})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReviewError("uploaded file is not UTF-8 text") from None
    parse_sweep(text, "uploaded CSV")
    digest = hashlib.sha256(data).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.upload.csv"
    path.write_bytes(data)
    return SweepFile(sweep_id(path), path, f"uploaded {digest}")


# ------------------------------------------------------------------------------------ per-robot uploads
def store_bytes_by_robot(store: ObjectStore, prefix: str = "frames/") -> dict[str, dict[str, int]]:
    """Return per robot: frame objects and their bytes in the store (frames/<robot>/<date>/<sha>.png)."""
    out: dict[str, dict[str, int]] = {}
    for info in store.list(prefix):
        parts = info.key[len(prefix) :].split("/")
        if len(parts) != 3 or not parts[2].endswith((".png", ".jpg")):
            continue
        entry = out.setdefault(parts[0], {"objects": 0, "bytes": 0})
        entry["objects"] += 1
        entry["bytes"] += info.size
    return out


def robot_stats(pool: Pool, store_bytes: dict[str, dict[str, int]] | None) -> list[dict]:
    """Return per robot: frames in the pool by state, duplicates, time span, frames and bytes per hour."""
    robots: dict[str, dict] = {}
    for row in pool.frames(include_duplicates=True):
        entry = robots.setdefault(
            row["robot_id"],
            {
                "robot": row["robot_id"],
                "frames": 0,
                "duplicates": 0,
                "random": 0,
                "sites": set(),
                "first_ns": row["stamp_ns"],
                "last_ns": row["stamp_ns"],
            },
        )
        entry["frames"] += 1
        entry["duplicates"] += row["state"] == "duplicate"
        entry["random"] += bool(row["random"])
        entry["sites"].add(row["site"])
        entry["first_ns"] = min(entry["first_ns"], row["stamp_ns"])
        entry["last_ns"] = max(entry["last_ns"], row["stamp_ns"])
    out = []
    for robot in sorted(set(robots) | set(store_bytes or {})):
        entry = robots.get(
            robot,
            {"robot": robot, "frames": 0, "duplicates": 0, "random": 0, "sites": set(), "first_ns": 0, "last_ns": 0},
        )
        hours = (entry["last_ns"] - entry["first_ns"]) / 3.6e12
        stored = (store_bytes or {}).get(robot)
        out.append(
            {
                "robot": robot,
                "frames": entry["frames"],
                "duplicates": entry["duplicates"],
                "random": entry["random"],
                "sites": ", ".join(sorted(entry["sites"])),
                "span_hours": round(hours, 3),
                "frames_per_hour": round(entry["frames"] / hours, 1) if hours > 0 else None,
                "store_objects": stored["objects"] if stored else None,
                "store_bytes": stored["bytes"] if stored else None,
                "bytes_per_hour": round(stored["bytes"] / hours) if stored and hours > 0 else None,
            }
        )
    return out


def safe_store_bytes(store: ObjectStore, prefix: str) -> tuple[dict[str, dict[str, int]] | None, Optional[str]]:
    """Return (bytes by robot, None) or (None, why) when the store cannot be listed right now."""
    try:
        return store_bytes_by_robot(store, prefix), None
    except StoreError as exc:
        return None, str(exc)
