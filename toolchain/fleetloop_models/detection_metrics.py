"""mAP@0.5 and mAP@0.5:0.95 of detections against ground truth, per class and per site (pycocotools).

The COCO evaluation is the one everybody quotes, so we do not reimplement it: boxes go into
pycocotools' ``COCO`` / ``COCOeval`` (``iouType='bbox'``, 101-point interpolated precision, up to
100 detections per image, all areas). Imported where models are evaluated (model builds, the
cloud's gate), never on a robot's inference path.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fleetloop_core.errors import FleetLoopError

if TYPE_CHECKING:
    from pycocotools.coco import COCO


class MetricsError(FleetLoopError):
    """Detections and ground truth cannot be compared (message says why)."""


@dataclass
class MapScores:
    """mAP over IoU 0.5 (``map50``) and 0.5:0.95 (``map``), overall, per class and per site, in [0, 1].

    ``per_class[name] = (ap50, ap, ground-truth boxes)``; ``per_site[site] = (map50, map, images)``.
    A class without ground-truth boxes has no AP (it is left out, as COCO does).
    """

    map50: float
    map: float
    images: int
    boxes: int
    per_class: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    per_site: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-able figures (rounded to 4 digits)."""
        return {
            "map50": round(self.map50, 4),
            "map": round(self.map, 4),
            "images": self.images,
            "boxes": self.boxes,
            "per_class": {
                k: {"ap50": round(a, 4), "ap": round(b, 4), "boxes": n} for k, (a, b, n) in self.per_class.items()
            },
            "per_site": {
                k: {"map50": round(a, 4), "map": round(b, 4), "images": n} for k, (a, b, n) in self.per_site.items()
            },
        }


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _run(gt: COCO, dt: COCO, image_ids: Sequence[int] | None) -> tuple[float, float, np.ndarray | None]:
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(gt, dt, "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return max(float(stats[1]), 0.0), max(float(stats[0]), 0.0), evaluator.eval["precision"]


def _coco_records(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], truths: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Return COCO's images, ground-truth annotations and detections of the per-image boxes (ids from 1)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for image_id, ((boxes, classes), (p_boxes, p_scores, p_classes)) in enumerate(zip(truths, predictions), start=1):
        images.append({"id": image_id})
        for box, cls in zip(_xywh(boxes), np.asarray(classes).reshape(-1)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        for box, score, cls in zip(_xywh(p_boxes), np.asarray(p_scores).reshape(-1), np.asarray(p_classes).reshape(-1)):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return images, annotations, detections


def _per_class(
    precision: np.ndarray, class_names: Sequence[str], counts: np.ndarray
) -> dict[str, tuple[float, float, int]]:
    """Return per class with ground truth its (AP@0.5, AP@0.5:0.95, boxes) from COCOeval's precision array."""
    per_class = {}
    for k, name in enumerate(class_names):
        if counts[k] == 0:
            continue
        values = precision[:, :, k, 0, -1]  # IoU thresholds x recall points, all areas, 100 dets
        ap = float(values[values > -1].mean()) if (values > -1).any() else 0.0
        at50 = precision[0, :, k, 0, -1]
        ap50 = float(at50[at50 > -1].mean()) if (at50 > -1).any() else 0.0
        per_class[name] = (ap50, ap, int(counts[k]))
    return per_class


def evaluate_map(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    sites: Sequence[str] | None = None,
) -> MapScores:
    """Return mAP of per-image predictions ``(boxes (K, 4) x0y0x1y1, scores (K,), classes (K,))``.

    ``truths`` are per image ``(boxes (G, 4), classes (G,))`` in the same pixel frame; ``sites``
    (one name per image) adds per-site figures.
    """
    from pycocotools.coco import COCO

    if len(predictions) != len(truths):
        raise MetricsError(f"{len(predictions)} predicted images but {len(truths)} ground-truth images")
    if sites is not None and len(sites) != len(truths):
        raise MetricsError(f"{len(sites)} site names for {len(truths)} images")
    images, annotations, detections = _coco_records(predictions, truths)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    boxes_total = len(annotations)
    result = MapScores(0.0, 0.0, len(images), boxes_total)
    if not detections or not annotations:
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
    result.map50, result.map, precision = _run(gt, dt, None)
    counts = np.bincount([a["category_id"] - 1 for a in annotations], minlength=len(class_names))
    if precision is not None:
        result.per_class = _per_class(precision, class_names, counts)
    if sites is not None:
        names = np.asarray(sites)
        for site in sorted(set(names.tolist())):
            ids = [i + 1 for i in np.flatnonzero(names == site)]
            has_boxes = any(a["image_id"] in set(ids) for a in annotations)
            if not has_boxes:
                result.per_site[site] = (0.0, 0.0, len(ids))
                continue
            map50, mean_ap, _ = _run(gt, dt, ids)
            result.per_site[site] = (map50, mean_ap, len(ids))
    return result
