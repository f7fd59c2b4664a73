"""SageMaker Ground Truth augmented manifests in the bounding-box format, and detection training channels.

One JSON line per frame, as Ground Truth's bounding-box task type writes its output::

    {"source-ref": "s3://bucket/frames/robot-0/2026-09-21/<sha256>.png",
     "fleetloop-boxes": {"image_size": [{"width": 128, "height": 128, "depth": 3}],
                         "annotations": [{"class_id": 3, "left": 10, "top": 20, "width": 30, "height": 40}]},
     "fleetloop-boxes-metadata": {"objects": [{"confidence": 0.93}], "class-map": {"3": "dress", ...},
                                  "type": "groundtruth/object-detection", "human-annotated": "no",
                                  "creation-date": "...", "job-name": "labeling-job/...", "fleetloop-source": "auto"}}

The detection training channels use the same lines (``source-ref`` relative to the channel
directory), so a Ground Truth output manifest is a valid training channel and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.channels import channel_lines, write_frames
from fleetloop_cloud.frames import decode_image

ATTRIBUTE = "fleetloop-boxes"
MANIFEST = "manifest.jsonl"


class BoxManifestError(FleetLoopError):
    """A bounding-box manifest line is malformed (message names the file, the line and the key)."""


def box_record(
    source_ref: str,
    width: int,
    height: int,
    boxes: BoxSet | None,
    classes: Sequence[str],
    attribute: str = ATTRIBUTE,
    human: bool = False,
    source: str = "",
    confidence: float | None = None,
    job_name: str = "fleetloop",
    extra: dict | None = None,
) -> dict:
    """Return one augmented-manifest line; without ``boxes`` only the frame (an unlabeled object)."""
    record: dict = {"source-ref": source_ref, **(extra or {})}
    if boxes is None:
        return record
    annotations, objects = [], []
    for box, cls, score in zip(boxes.boxes, boxes.classes, boxes.scores):
        x0, y0, x1, y1 = (float(v) for v in box)
        annotations.append(
            {
                "class_id": int(cls),
                "left": int(round(x0)),
                "top": int(round(y0)),
                "width": max(1, int(round(x1 - x0))),
                "height": max(1, int(round(y1 - y0))),
            }
        )
        objects.append({"confidence": round(float(score if confidence is None else confidence), 4)})
    record[attribute] = {
        "image_size": [{"width": int(width), "height": int(height), "depth": 3}],
        "annotations": annotations,
    }
    record[f"{attribute}-metadata"] = {
        "objects": objects,
        "class-map": {str(i): name for i, name in enumerate(classes)},
        "type": "groundtruth/object-detection",
        "human-annotated": "yes" if human else "no",
        "creation-date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "job-name": f"labeling-job/{job_name}",
        "fleetloop-source": source or ("human" if human else "auto"),
    }
    return record


def parse_box_record(
    record: dict, classes: Sequence[str], attribute: str = ATTRIBUTE, where: str = "<manifest>"
) -> BoxSet | None:
    """Return the boxes (x0y0x1y1) of one line, or None when it carries no box attribute."""
    if attribute not in record:
        return None
    try:
        annotations = record[attribute]["annotations"]
        rows = []
        for a in annotations:
            cls = int(a["class_id"])
            if not 0 <= cls < len(classes):
                raise BoxManifestError(
                    f"{where}: {attribute}: class_id {cls} is not a known class (0..{len(classes) - 1})"
                )
            left, top, width, height = (float(a[k]) for k in ("left", "top", "width", "height"))
            if width <= 0 or height <= 0:
                raise BoxManifestError(f"{where}: {attribute}: a box has width {width} and height {height}")
            rows.append([left, top, left + width, top + height, cls])
    except (KeyError, TypeError, ValueError) as exc:
        raise BoxManifestError(f"{where}: {attribute}: malformed annotation ({type(exc).__name__}: {exc})") from None
    return BoxSet.from_rows(rows, with_scores=False)


def augmented_box_manifest(
    pool,
    box_pool,
    store: ObjectStore,
    frame_ids: Sequence[str],
    classes: Sequence[str],
    attribute: str = ATTRIBUTE,
    job_name: str = "fleetloop",
) -> list[dict]:
    """Return Ground Truth bounding-box augmented-manifest records of pool frames (labels where they have them)."""
    rows = {row["id"]: row for row in pool.frames(ids=frame_ids, include_duplicates=True)}
    labels = box_pool.labels(frame_ids)
    records = []
    for frame_id in frame_ids:
        row = rows.get(frame_id)
        if row is None:
            raise KeyError(f"frame {frame_id} is not in the pool {pool.path}")
        label = labels.get(frame_id)
        records.append(
            box_record(
                store.url(row["frame_key"]),
                row["width"],
                row["height"],
                label.boxes if label else None,
                classes,
                attribute,
                human=bool(label and label.source == "human"),
                source=label.source if label else "",
                confidence=label.confidence if label and label.confidence is not None else (1.0 if label else None),
                job_name=job_name,
                extra={
                    "fleetloop-frame": frame_id,
                    "robot-id": row["robot_id"],
                    "site": row["site"],
                    "stamp-ns": row["stamp_ns"],
                },
            )
        )
    return records


# ------------------------------------------------------------------------------------ training channels


@dataclass
class BoxChannel:
    """Frames of one detection channel: RGB images, boxes (None: unlabeled), frame ids, sites."""

    images: list[np.ndarray]
    boxes: list[BoxSet | None]
    frame_ids: list[str]
    sites: list[str]

    def __len__(self) -> int:
        return len(self.images)


def write_box_channel(
    directory: str | Path, items: Sequence[tuple[str, bytes | np.ndarray, BoxSet | None, str]], classes: Sequence[str]
) -> Path:
    """Write a channel of (frame id, encoded bytes or RGB array, boxes or None, site); return the directory."""

    def record(name: str, frame_id: str, data: bytes, image: np.ndarray | None, boxes: BoxSet | None, site: str):
        height, width = (image if image is not None else decode_image(data, frame_id)).shape[:2]
        line = box_record(
            name,
            width,
            height,
            boxes,
            classes,
            human=True,
            source="train",
            extra={"fleetloop-frame": frame_id, "site": site},
        )
        line.pop(f"{ATTRIBUTE}-metadata", None)
        return line

    return write_frames(directory, items, record)


def read_box_channel(
    name: str, directory: str | Path | None, classes: Sequence[str], required: bool = True
) -> BoxChannel:
    """Return a detection channel's frames; BoxManifestError if required and missing, empty or malformed."""
    out = BoxChannel([], [], [], [])
    for where, root, record in channel_lines(name, directory, required, BoxManifestError):
        try:
            path = root / record["source-ref"]
            out.images.append(decode_image(path.read_bytes(), str(path)))
        except (KeyError, OSError) as exc:
            raise BoxManifestError(f"{where}: {type(exc).__name__}: {exc}") from None
        out.boxes.append(parse_box_record(record, classes, where=where))
        out.frame_ids.append(str(record.get("fleetloop-frame", path.stem)))
        out.sites.append(str(record.get("site", "")))
    return out
