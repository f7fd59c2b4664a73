"""Ingest: new frames and sidecars from the object store into the pool.

Robots upload ``frames/<robot>/<date>/<sha256>.png`` first and its ``.json`` sidecar LAST: the
sidecar is the commit marker. So:

* a frame without its sidecar is *waiting* (the upload may be in flight); after
  ``ingest.orphan_grace_s`` it is quarantined with the reason;
* a sidecar without its frame, a sidecar that does not parse, whose sha256 does not match the
  frame's bytes, whose key does not match its robot/date/sha, a frame that does not decode or
  does not have the stated size, a class name or index we do not know: quarantined with the
  reason, never silently dropped (``fleetloop-cloud ingest`` lists them);
* the same bytes uploaded by two robots are one frame (a *sighting* records the second);
  a near-duplicate (perceptual hash within ``near_duplicate_bits``) of a frame *another* robot
  uploaded is kept as ``duplicate`` and never labeled twice.

Every frame is committed to the pool on its own, so a crash loses at most the frame in hand and a
rerun skips everything already ingested or quarantined.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from fleetloop_core.contracts.sidecar import SidecarError, parse_sidecar, sidecar_key, sidecar_keys
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.config import IngestConfig
from fleetloop_cloud.frames import FrameCache, FrameError, decode_image
from fleetloop_cloud.pool import FrameRecord, Pool

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg")


@dataclass
class IngestReport:
    """What one ingest run did."""

    listed_objects: int = 0
    ingested: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    already_known: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # this run: key -> reason
    waiting: list[str] = field(default_factory=list)  # frames waiting for their sidecar
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict:
        """Return the report as JSON-able data."""
        return {
            "listed_objects": self.listed_objects,
            "ingested": self.ingested,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "already_known": self.already_known,
            "quarantined": dict(self.quarantined),
            "waiting_for_sidecar": list(self.waiting),
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


class _Quarantine(Exception):
    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


_PHASH = None


def perceptual_hash(image: np.ndarray) -> int:
    """Return the 64-bit DCT perceptual hash of an RGB image (OpenCV img_hash) as an unsigned int."""
    global _PHASH
    if _PHASH is None:
        _PHASH = cv2.img_hash.PHash_create()
    digest = _PHASH.compute(image)
    return int.from_bytes(bytes(digest.reshape(-1)), "big")


def hamming(hashes: np.ndarray, value: int) -> np.ndarray:
    """Return the Hamming distances (bits) between uint64 ``hashes`` and one hash."""
    if len(hashes) == 0:
        return np.zeros(0, np.int64)
    xor = np.bitwise_xor(hashes, np.uint64(value))
    return np.unpackbits(xor.view(np.uint8).reshape(len(hashes), 8), axis=1).sum(axis=1)


class _NearDuplicateIndex:
    """pHashes of pool frames, by robot, for the cross-robot near-duplicate check; :meth:`refresh` adds what
    other ingest workers added (``created`` follows the commit order as far as their clocks agree, and
    ``CLOCK_SLACK_S`` back is re-read: a frame missed by more is labeled twice, never lost)."""

    CLOCK_SLACK_S = 0.1

    def __init__(self, entries: Iterable[tuple[str, str, int, float]]):
        entries = list(entries)
        self.ids = [e[0] for e in entries]
        self.robots = np.array([e[1] for e in entries], dtype=object)
        self.hashes = np.array([e[2] for e in entries], dtype=np.uint64)
        self._known = set(self.ids)
        self._since = max((e[3] for e in entries), default=0.0)

    def refresh(self, pool: Pool) -> None:
        """Add the frames other workers added to the pool since the last refresh."""
        for frame_id, robot, value, created in pool.phashes(since=self._since - self.CLOCK_SLACK_S):
            if frame_id not in self._known:
                self.add(frame_id, robot, value)
            self._since = max(self._since, created)

    def match(self, robot: str, value: int, bits: int) -> str | None:
        if not len(self.ids):
            return None
        distances = hamming(self.hashes, value)
        others = self.robots != robot
        candidates = np.flatnonzero(others & (distances <= bits))
        if not len(candidates):
            return None
        return self.ids[int(candidates[np.argmin(distances[candidates])])]

    def add(self, frame_id: str, robot: str, value: int) -> None:
        self._known.add(frame_id)
        self.ids.append(frame_id)
        self.robots = np.append(self.robots, np.array([robot], dtype=object))
        self.hashes = np.append(self.hashes, np.array([value], dtype=np.uint64))


def _group(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Group object keys by their stem: stem -> {'.json': key, '.png': key, ...}."""
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        path = Path(key)
        groups.setdefault(str(path.with_suffix("")), {})[path.suffix.lower()] = key
    return groups


def _validated(store: ObjectStore, json_key: str, image_key: str, labels: Sequence[str]):
    """Return (sidecar, image bytes, RGB image); raise _Quarantine with the reason."""
    try:
        sidecar = parse_sidecar(store.get_bytes(json_key), where=store.url(json_key))
    except SidecarError as exc:
        raise _Quarantine(json_key, str(exc)) from None
    expected = sidecar_key(sidecar)
    if json_key not in sidecar_keys(sidecar):
        raise _Quarantine(
            json_key,
            f"{json_key}: sidecar says robot {sidecar.robot_id!r}, date {sidecar.date} and "
            f"sha256 {sidecar.frame_sha256[:12]}.., so it belongs at {expected}",
        )
    extension = ".png" if sidecar.encoding == "png" else ".jpg"
    if not image_key.endswith(extension):
        raise _Quarantine(
            json_key, f"{json_key}: sidecar says encoding {sidecar.encoding} but the frame is {image_key}"
        )
    data = store.get_bytes(image_key)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.frame_sha256:
        raise _Quarantine(
            json_key,
            f"{image_key}: sha256 of the frame bytes is {digest[:16]}.., the sidecar says "
            f"{sidecar.frame_sha256[:16]}.. (corrupt or replaced upload)",
        )
    try:
        image = decode_image(data, image_key)
    except FrameError as exc:
        raise _Quarantine(json_key, str(exc)) from None
    if image.shape[0] != sidecar.height or image.shape[1] != sidecar.width:
        raise _Quarantine(
            json_key,
            f"{image_key}: frame is {image.shape[1]}x{image.shape[0]}, the sidecar says "
            f"{sidecar.width}x{sidecar.height}",
        )
    if sidecar.labels:
        unknown = [name for name in sidecar.labels if name not in labels]
        if unknown:
            raise _Quarantine(json_key, f"{json_key}: labels: unknown class(es) {unknown} (known: {', '.join(labels)})")
        if not -1 <= sidecar.prediction < len(sidecar.labels):
            raise _Quarantine(
                json_key,
                f"{json_key}: prediction {sidecar.prediction} is not an index into its {len(sidecar.labels)} labels",
            )
    if sidecar.simulation is not None and not 0 <= sidecar.simulation.label < len(labels):
        raise _Quarantine(
            json_key,
            f"{json_key}: simulation.label {sidecar.simulation.label} is not a known class (0..{len(labels) - 1})",
        )
    if sidecar.embedding is not None:
        embedding = np.asarray(sidecar.embedding, np.float32)
        if not np.all(np.isfinite(embedding)) or float(np.linalg.norm(embedding)) == 0.0:
            raise _Quarantine(json_key, f"{json_key}: embedding is not finite or is all zeros")
    return sidecar, data, image


def ingest(
    store: ObjectStore,
    pool: Pool,
    cache: FrameCache,
    round: int,
    config: IngestConfig,
    labels: Sequence[str],
    now: float | None = None,
    progress: bool = True,
) -> IngestReport:
    """Read new frames + sidecars from ``store`` into ``pool``; return what happened."""
    started, cpu_started = time.perf_counter(), time.process_time()
    now = time.time() if now is None else now
    report = IngestReport()
    keys = [info.key for info in store.list(config.prefix)]  # StoreError: the caller decides
    report.listed_objects = len(keys)
    todo = _pairs_to_ingest(keys, pool, config, now, report)
    if config.max_frames is not None:
        todo = todo[: config.max_frames]
    index = _NearDuplicateIndex(pool.phashes())
    for json_key, image_key in tqdm(todo, desc="ingest", unit="frame", disable=not progress, leave=False):
        try:
            sidecar, data, image = _validated(store, json_key, image_key, labels)
        except _Quarantine as bad:
            pool.quarantine(bad.key, bad.reason)
            report.quarantined[bad.key] = bad.reason
            log.warning("quarantined %s", bad.reason)
            continue
        _add_frame(pool, cache, index, config, report, round, json_key, image_key, sidecar, data, image)
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu_started
    return report


def _pairs_to_ingest(
    keys: Sequence[str], pool: Pool, config: IngestConfig, now: float, report: IngestReport
) -> list[tuple[str, str]]:
    """Return the (sidecar key, frame key) pairs new to the pool; quarantine or wait for what is unpaired."""
    known = pool.known_sidecar_keys()
    quarantined = pool.quarantined()
    todo = []
    for stem, parts in sorted(_group(keys).items()):
        json_key = parts.get(".json")
        images = [parts[e] for e in IMAGE_EXTENSIONS if e in parts]
        if json_key in known:
            report.already_known += 1
            continue
        if json_key in quarantined or any(k in quarantined for k in images):
            continue
        if json_key is None:
            for image_key in images:
                age = now - pool.orphan_first_seen(image_key, now)
                if age > config.orphan_grace_s:
                    reason = (
                        f"{image_key}: frame without sidecar for {age:.0f} s (grace {config.orphan_grace_s:.0f} s); "
                        f"the robot never committed it"
                    )
                    pool.quarantine(image_key, reason)
                    report.quarantined[image_key] = reason
                else:
                    report.waiting.append(image_key)
            continue
        if not images:
            reason = f"{json_key}: sidecar without frame (no {stem}.png or .jpg in the store)"
            pool.quarantine(json_key, reason)
            report.quarantined[json_key] = reason
            continue
        todo.append((json_key, images[0]))
    return todo


def _add_frame(
    pool: Pool,
    cache: FrameCache,
    index: _NearDuplicateIndex,
    config: IngestConfig,
    report: IngestReport,
    round: int,
    json_key: str,
    image_key: str,
    sidecar,
    data: bytes,
    image: np.ndarray,
) -> None:
    """Add one validated frame to the pool: a sighting of a known frame, a near-duplicate, or a new frame;
    decided in the pool's write transaction (several workers never both take a frame, nor miss a near-duplicate)."""
    frame_id = sidecar.frame_sha256
    phash = perceptual_hash(image)
    embedding = None
    if sidecar.embedding is not None:
        embedding = np.asarray(sidecar.embedding, np.float32)
        embedding = embedding / np.linalg.norm(embedding)
    cache.put(frame_id, image_key, data)
    with pool.transaction():
        if pool.has_frame(frame_id):
            if pool.knows_sidecar(json_key):  # this very upload: another ingest worker took it meanwhile
                report.already_known += 1
                return
            pool.add_sighting(frame_id, sidecar.robot_id, json_key)
            pool.forget_orphan(image_key)
            report.exact_duplicates += 1
            return
        index.refresh(pool)
        duplicate_of = index.match(sidecar.robot_id, phash, config.near_duplicate_bits)
        state = "duplicate" if duplicate_of else "new"
        record = _record(sidecar, json_key, image_key, phash, embedding, state, duplicate_of, round)
        pool.add_frame(record)
        pool.forget_orphan(image_key)
    if duplicate_of:
        report.near_duplicates += 1
    else:
        index.add(frame_id, sidecar.robot_id, phash)
        report.ingested += 1


def _record(sidecar, json_key, image_key, phash, embedding, state, duplicate_of, round) -> FrameRecord:
    """Return the pool record of one validated upload."""
    return FrameRecord(
        id=sidecar.frame_sha256,
        robot_id=sidecar.robot_id,
        stream=sidecar.stream,
        site=sidecar.site,
        stamp_ns=sidecar.stamp_ns,
        frame_key=image_key,
        sidecar_key=json_key,
        width=sidecar.width,
        height=sidecar.height,
        random=bool(sidecar.decision and sidecar.decision.random),
        track_hint=sidecar.track_hint,
        robot_embedding=embedding,
        phash=phash,
        sim_label=sidecar.simulation.label if sidecar.simulation else None,
        sidecar=sidecar.to_json(),
        state=state,
        duplicate_of=duplicate_of,
        round=round,
    )


# ------------------------------------------------------------------------ augmented manifests
def augmented_manifest(
    pool: Pool,
    store: ObjectStore,
    frame_ids: Sequence[str],
    labels: Sequence[str],
    label_attribute: str = "fleetloop-label",
    job_name: str = "fleetloop",
) -> list[dict]:
    """Return SageMaker Ground Truth augmented-manifest records (one dict per frame).

    Each has ``source-ref`` (the frame's store URL) and, for labeled frames, the label attribute
    (class index) with its ``-metadata`` (class name, confidence, human-annotated yes/no, type).
    """
    rows = {row["id"]: row for row in pool.frames(ids=frame_ids, include_duplicates=True)}
    current = pool.labels(frame_ids)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    records = []
    for frame_id in frame_ids:
        row = rows.get(frame_id)
        if row is None:
            raise KeyError(f"frame {frame_id} is not in the pool {pool.path}")
        record = {
            "source-ref": store.url(row["frame_key"]),
            "fleetloop-frame": frame_id,
            "robot-id": row["robot_id"],
            "site": row["site"],
            "stamp-ns": row["stamp_ns"],
        }
        label = current.get(frame_id)
        if label is not None:
            record[label_attribute] = int(label.label)
            record[f"{label_attribute}-metadata"] = {
                "class-name": labels[label.label],
                "confidence": round(float(label.confidence if label.confidence is not None else 1.0), 4),
                "type": "groundtruth/image-classification",
                "human-annotated": "yes" if label.source == "human" else "no",
                "creation-date": created,
                "job-name": f"labeling-job/{job_name}",
                "fleetloop-source": label.source,
            }
        records.append(record)
    return records


def write_jsonl(records: Sequence[dict], path: str | Path) -> Path:
    """Write records as JSON Lines (one compact object per line); return the path."""
    from fleetloop_cloud.frames import write_atomic

    path = Path(path)
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    write_atomic(path, text.encode())
    return path
