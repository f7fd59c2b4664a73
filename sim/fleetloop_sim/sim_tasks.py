"""What differs per task in the simulated world: what a frame's truth is and how items are placed in it.

The world (items, sites, cameras, tracks, the renderer) is ``fleetloop_sim.sim`` and
``fleetloop_sim.sim_render``, written once. A task's part here says:

* how a new track moves and how big its item is (classification: one large item, near the centre
  in the lab, with an occluder on some tracks; detection: smaller items that may appear beside
  one already in view or cross the frame border), and how many items a scene holds at once;
* how the items of one labelled-set frame are placed;
* what a frame's ground truth is (:class:`Truth`: one class; :class:`DetectionTruth`: one box
  per visible item) and the set type that collects them;
* the seeds of its streams and sets, fixed, so that the same seed always gives the same frames.

:data:`SIM_TASKS` maps the task names of ``fleetloop_core.tasks`` to the default parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from fleetloop_sim.dataset import ITEM_LABELS, LABELS, NONE_INDEX
from fleetloop_sim.sim_render import Box, Placement, Renderer, Shift

DETECTION_CLASSES = tuple(ITEM_LABELS)  # what a detector outputs: the items, no background class


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class Truth:
    """Ground truth of one classification frame: for evaluation and simulated annotators, never model input."""

    label: int  # index into LABELS; NONE_INDEX for background-only frames
    item: int  # Fashion-MNIST item index, -1 for none
    track_id: int  # -1 for none
    site: str
    robot: str = ""
    seq: int = 0

    @property
    def label_name(self) -> str:
        """Return the class name."""
        return LABELS[self.label]


@dataclass(frozen=True)
class DetectionTruth:
    """Ground truth of one detection frame (evaluation and simulated annotators only, never model input).

    ``boxes`` are pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``): an item's full painted
    extent before anything covers it (amodal), clipped to the frame; ``truncated`` says the border
    clipped it.
    """

    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1, pixels
    classes: np.ndarray  # (K,) int64 index into DETECTION_CLASSES
    items: np.ndarray  # (K,) int64 Fashion-MNIST item index
    track_ids: np.ndarray  # (K,) int64
    truncated: np.ndarray  # (K,) bool: the frame border cut the box
    site: str
    robot: str = ""
    seq: int = 0

    @property
    def label(self) -> int:
        """Return the class of the largest box, or NONE_INDEX for an empty frame (a classification view)."""
        if not len(self.boxes):
            return NONE_INDEX
        return int(self.classes[self._largest()])

    @property
    def track_id(self) -> int:
        """Return the track of the largest box, or -1 for an empty frame."""
        if not len(self.boxes):
            return -1
        return int(self.track_ids[self._largest()])

    def _largest(self) -> int:
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return int(np.argmax(areas))

    def rows(self) -> list[list[float]]:
        """Return the boxes as JSON-able rows ``[x0, y0, x1, y1, class, track_id]``."""
        return [
            [round(float(v), 2) for v in box] + [int(c), int(t)]
            for box, c, t in zip(self.boxes, self.classes, self.track_ids)
        ]


def box_truth(
    renderer: Renderer, placements: Sequence[Placement], robot: str = "", seq: int = 0, min_box_px: float = 3.0
) -> DetectionTruth:
    """Return the truth of ``placements`` in ``renderer``'s frame (pixels).

    Boxes are clipped to the frame; an item whose clipped box is narrower than ``min_box_px`` is
    not in the truth (and barely in the frame).
    """
    height, width = renderer.height, renderer.width
    boxes, classes, items, tracks, truncated = [], [], [], [], []
    for p in placements:
        box = renderer.item_box(p)
        clipped = np.asarray([max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)], np.float32)
        if clipped[2] - clipped[0] < min_box_px or clipped[3] - clipped[1] < min_box_px:
            continue
        boxes.append(clipped)
        classes.append(int(renderer.pool.labels[p.item]))
        items.append(p.item)
        tracks.append(p.track_id)
        truncated.append(bool(np.any(np.abs(clipped - box) > 1e-3)))
    return DetectionTruth(
        np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
        np.asarray(classes, np.int64),
        np.asarray(items, np.int64),
        np.asarray(tracks, np.int64),
        np.asarray(truncated, bool),
        renderer.site.name,
        robot,
        seq,
    )


# --------------------------------------------------------------------------- labelled sets


@dataclass(frozen=True)
class LabelledSet:
    """Frames (N, H, W, 3) uint8 RGB with labels (N,) and the items they show (-1 for none)."""

    images: np.ndarray
    labels: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DetectionSet:
    """Independent frames (N, H, W, 3) uint8 RGB with their box truths and the site of each."""

    images: np.ndarray
    truths: list[DetectionTruth] = field(repr=False)

    def __len__(self) -> int:
        return len(self.truths)

    @property
    def sites(self) -> np.ndarray:
        """Return the site name of each frame."""
        return np.asarray([t.site for t in self.truths])

    def box_count(self) -> int:
        """Return the number of ground-truth boxes over all frames."""
        return int(sum(len(t.boxes) for t in self.truths))


# --------------------------------------------------------------------------- the parts

FrameTruth = Union[Truth, DetectionTruth]
SetScene = tuple[list[Placement], tuple[float, float], list[Box]]  # items, their motion (pixels/frame), occluders


@dataclass(frozen=True)
class TrackShape:
    """How a new track's item is sized and moves: sizes (fractions of the shorter side), start/end centres."""

    size0: float
    size1: float
    start: np.ndarray
    end: np.ndarray
    occluder: Box | None = None  # covers the item for the middle part of the track


class SimTask(Protocol):
    """A task's part of the simulated world (see the module docstring).

    Its settings are read-only properties: the parts are frozen dataclasses, and a protocol's plain
    attributes would ask for settable ones.
    """

    @property
    def name(self) -> str: ...

    @property
    def track_frames(self) -> tuple[int, int]: ...  # a track lasts this many frames (inclusive range)

    @property
    def max_items(self) -> int: ...  # items in view at once

    @property
    def spawn_prob(self) -> float: ...  # per frame, while a scene runs and has room: a new track starts

    @property
    def gap_first(self) -> bool: ...  # streams draw the background stretch before the scene (else after it)

    @property
    def set_seed(self) -> str: ...  # seed name of labelled sets

    @property
    def field_seed(self) -> str: ...  # seed name of held-out field test sets

    @property
    def field_none_scale(self) -> float: ...  # a field test set's background share, relative to the site's

    @property
    def frame_site_prior(self) -> bool: ...  # a set frame's class prior is its own site's (else the set site's)

    def stream_keys(self, robot: str, site: str, seed: int, mode: str) -> tuple[object, ...]:
        """Return the keys that seed a camera stream."""

    def track_shape(self, rng: np.random.Generator, shift: Shift, scene: Sequence[Placement]) -> TrackShape:
        """Return a new track's sizes and path; ``scene`` holds the items already in view."""

    def set_scene(self, rng: np.random.Generator, shift: Shift, empty: bool, draw_item: Callable[[], int]) -> SetScene:
        """Return one set frame's items (none when ``empty``), their motion (pixels/frame) and occluders."""

    def truth(self, renderer: Renderer, placements: Sequence[Placement], robot: str, seq: int) -> FrameTruth:
        """Return the ground truth of a frame of ``placements`` (none: background only)."""

    def collect(self, images: np.ndarray, truths: list[Any]) -> LabelledSet | DetectionSet:
        """Return the labelled set of ``images`` and their truths (those this part's ``truth`` returned)."""


def _box_around(centre: np.ndarray, size: np.ndarray) -> Box:
    return (
        float(centre[0] - size[0] / 2),
        float(centre[1] - size[1] / 2),
        float(centre[0] + size[0] / 2),
        float(centre[1] + size[1] / 2),
    )


@dataclass(frozen=True)
class Classification:
    """One item per frame, sized and placed by the site's shift; truth: its class (or none)."""

    name: str = "classification"
    track_frames: tuple[int, int] = (5, 40)
    max_items: int = 1
    spawn_prob: float = 0.0
    gap_first: bool = True
    set_seed: str = "set"
    field_seed: str = "field-test"
    field_none_scale: float = 1.0
    frame_site_prior: bool = False

    def stream_keys(self, robot: str, site: str, seed: int, mode: str) -> tuple[object, ...]:
        return ("stream", robot, site, seed, mode)

    def track_shape(self, rng: np.random.Generator, shift: Shift, scene: Sequence[Placement]) -> TrackShape:
        size0 = float(rng.uniform(*shift.scale_range))
        size1 = float(np.clip(size0 * rng.uniform(0.8, 1.25), 0.2, 0.95))
        if shift.centred:
            start = rng.uniform(0.4, 0.6, size=2)
            end = start + rng.uniform(-0.05, 0.05, size=2)
        else:
            start = rng.uniform(0.2, 0.8, size=2)
            end = np.clip(start + rng.uniform(-0.35, 0.35, size=2), 0.15, 0.85)
        occluder = None
        if rng.random() < shift.occlusion_prob:
            occluder = _box_around(rng.uniform(0.3, 0.7, size=2), rng.uniform(0.15, 0.35, size=2))
        return TrackShape(size0, size1, start, end, occluder)

    def set_scene(self, rng: np.random.Generator, shift: Shift, empty: bool, draw_item: Callable[[], int]) -> SetScene:
        if empty:
            return [], (0.0, 0.0), []
        item = draw_item()
        centre = rng.uniform(0.42, 0.58, size=2) if shift.centred else rng.uniform(0.2, 0.8, size=2)
        occluders = []
        if rng.random() < shift.occlusion_prob:
            occluders.append(_box_around(centre + rng.uniform(-0.1, 0.1, size=2), rng.uniform(0.1, 0.3, size=2)))
        velocity = rng.normal(0, 1.5, size=2) if not shift.centred else (0.0, 0.0)
        size = float(rng.uniform(*shift.scale_range))
        angle = float(rng.uniform(-shift.rotation_deg, shift.rotation_deg))
        placement = Placement(item, (float(centre[0]), float(centre[1])), size, angle)
        return [placement], (float(velocity[0]), float(velocity[1])), occluders

    def truth(self, renderer: Renderer, placements: Sequence[Placement], robot: str, seq: int) -> Truth:
        if not placements:
            return Truth(NONE_INDEX, -1, -1, renderer.site.name, robot, seq)
        first = placements[0]
        return Truth(int(renderer.pool.labels[first.item]), first.item, first.track_id, renderer.site.name, robot, seq)

    def collect(self, images: np.ndarray, truths: list[Truth]) -> LabelledSet:
        labels = np.asarray([t.label for t in truths], np.int64)
        return LabelledSet(images=images, labels=labels, items=np.asarray([t.item for t in truths], np.int64))


@dataclass(frozen=True)
class Detection:
    """Zero to ``max_items`` items per frame, each on its own track; truth: one box per visible item.

    ``item_scale`` is the item size range as a fraction of the frame's shorter side;
    ``overlap_prob`` the chance that a new item appears right beside one already in view;
    ``edge_prob`` the chance that a track enters or leaves across the frame border, and
    ``set_edge_prob`` that a set frame's item sits on the border.
    """

    name: str = "detection"
    track_frames: tuple[int, int] = (8, 40)
    max_items: int = 4
    spawn_prob: float = 0.06
    item_scale: tuple[float, float] = (0.2, 0.4)
    overlap_prob: float = 0.3
    edge_prob: float = 0.35
    set_edge_prob: float = 0.3
    gap_first: bool = False
    set_seed: str = "detection-set"
    field_seed: str = "field-detection-test"
    field_none_scale: float = 0.4  # empty frames hold no boxes to score
    frame_site_prior: bool = True

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError(f"max_items must be >= 1 (got {self.max_items})")
        lo, hi = self.item_scale
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"item_scale must satisfy 0 < low <= high < 1 (got {self.item_scale})")

    def stream_keys(self, robot: str, site: str, seed: int, mode: str) -> tuple[object, ...]:
        return ("detection-stream", robot, site, seed) + (() if mode == "stream" else (mode,))

    def track_shape(self, rng: np.random.Generator, shift: Shift, scene: Sequence[Placement]) -> TrackShape:
        size0 = float(rng.uniform(*self.item_scale))
        size1 = float(np.clip(size0 * rng.uniform(0.8, 1.25), 0.1, 0.6))
        if scene and rng.random() < self.overlap_prob:
            # beside an item already in view: their boxes overlap
            anchor = scene[int(rng.integers(len(scene)))]
            start = np.asarray(anchor.centre) + rng.uniform(-0.6, 0.6, size=2) * anchor.size
            end = start + rng.uniform(-0.15, 0.15, size=2)
        elif rng.random() < self.edge_prob:
            # enters or leaves across the border: truncated boxes on the way
            inside = rng.uniform(0.25, 0.75, size=2)
            outside = inside.copy()
            axis = int(rng.integers(2))
            outside[axis] = rng.choice([-0.05, 1.05])
            start, end = (outside, inside) if rng.random() < 0.5 else (inside, outside)
        else:
            start = rng.uniform(0.15, 0.85, size=2)
            end = np.clip(start + rng.uniform(-0.3, 0.3, size=2), 0.1, 0.9)
        return TrackShape(size0, size1, np.asarray(start, float), np.asarray(end, float))

    def set_scene(self, rng: np.random.Generator, shift: Shift, empty: bool, draw_item: Callable[[], int]) -> SetScene:
        number = 0 if empty else int(rng.integers(1, self.max_items + 1))
        placements: list[Placement] = []
        for k in range(number):
            item = draw_item()
            size = float(rng.uniform(*self.item_scale))
            if placements and rng.random() < self.overlap_prob:
                anchor = placements[int(rng.integers(len(placements)))]
                centre = np.asarray(anchor.centre) + rng.uniform(-0.6, 0.6, size=2) * anchor.size
            elif rng.random() < self.set_edge_prob:
                centre = rng.uniform(0.2, 0.8, size=2)
                centre[int(rng.integers(2))] = rng.choice([rng.uniform(-0.05, 0.08), rng.uniform(0.92, 1.05)])
            else:
                centre = rng.uniform(0.12, 0.88, size=2)
            angle = float(rng.uniform(-shift.rotation_deg, shift.rotation_deg))
            placements.append(Placement(item, (float(centre[0]), float(centre[1])), size, angle, k))
        velocity = rng.normal(0, 1.0, size=2) if not shift.centred else (0.0, 0.0)
        return placements, (float(velocity[0]), float(velocity[1])), []

    def truth(self, renderer: Renderer, placements: Sequence[Placement], robot: str, seq: int) -> DetectionTruth:
        return box_truth(renderer, placements, robot, seq)

    def collect(self, images: np.ndarray, truths: list[DetectionTruth]) -> DetectionSet:
        return DetectionSet(images=images, truths=truths)


SIM_TASKS: dict[str, SimTask] = {"classification": Classification(), "detection": Detection()}


def concatenate(sets: Sequence[LabelledSet | DetectionSet]) -> LabelledSet | DetectionSet:
    """Return several sets of one task as one, in order."""
    if all(isinstance(part, LabelledSet) for part in sets):
        labelled = [part for part in sets if isinstance(part, LabelledSet)]
        return LabelledSet(
            np.concatenate([p.images for p in labelled]),
            np.concatenate([p.labels for p in labelled]),
            np.concatenate([p.items for p in labelled]),
        )
    boxed = [part for part in sets if isinstance(part, DetectionSet)]
    if len(boxed) != len(sets):
        raise ValueError("cannot concatenate sets of different tasks")
    return DetectionSet(np.concatenate([p.images for p in boxed]), [t for p in boxed for t in p.truths])


def sim_task(task: str | SimTask) -> SimTask:
    """Return the world's part for ``task`` (a task name, or a part as it is); ValueError naming the known names."""
    if not isinstance(task, str):
        return task
    try:
        return SIM_TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(sorted(SIM_TASKS))})") from None
