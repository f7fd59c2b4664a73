"""The detection world: the simulated fleet of ``fleetloop_core.sim`` with zero to several items per frame.

Same sites (lighting, noise, blur, texture, class prior), same items (Fashion-MNIST partitions),
same camera streams at a fixed rate with robot tracks and background-only (``none``) stretches,
the same renderer (``sim.Renderer``: lighting, motion blur, optics blur and sensor noise are
its own). What changes: a *scene* holds up to ``max_items`` items at once, each on its own track
(smooth motion, scale change, spin), entering and leaving at random times; items overlap (a new
item may appear beside one already in view, painted over it) and are cut off at the frame border
when their track starts or ends outside the view.

Ground truth per frame (:class:`DetectionTruth`) lists one pixel box per visible item:
``boxes`` (K, 4) float32 ``x0, y0, x1, y1`` in pixel-edge coordinates (pixel ``i`` spans
``[i, i + 1)``, so a box lies in ``[0, width] x [0, height]``), the item's full painted extent
(the tight box of its visible strokes before any other item or occluder covers it, i.e. amodal)
clipped to the frame; ``truncated`` says the border clipped it. An item whose clipped box is
narrower than ``min_box_px`` is not in the truth (and barely in the frame). ``label`` is the
class of the largest box, or ``none`` for an empty frame, so code written for classification
frames reads a detection frame too.

Everything is seeded: the same seed gives the same pixels and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Sequence

import cv2
import numpy as np

from fleetloop_core import sim
from fleetloop_core.dataset import ITEM_LABELS, NONE_INDEX

DETECTION_CLASSES = tuple(ITEM_LABELS)  # what a detector outputs: the items, no background class
FOREGROUND_LEVEL = 32  # item pixels at or above this grey level (0..255) count as visible


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class DetectionTruth:
    """Ground truth of one detection frame (evaluation and simulated annotators only, never model input)."""

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
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return int(self.classes[int(np.argmax(areas))])

    @property
    def track_id(self) -> int:
        """Return the track of the largest box, or -1 for an empty frame."""
        if not len(self.boxes):
            return -1
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return int(self.track_ids[int(np.argmax(areas))])

    def rows(self) -> list[list[float]]:
        """Return the boxes as JSON-able rows ``[x0, y0, x1, y1, class, track_id]``."""
        return [
            [round(float(v), 2) for v in box] + [int(c), int(t)]
            for box, c, t in zip(self.boxes, self.classes, self.track_ids)
        ]


@dataclass(frozen=True)
class DetectionFrame:
    """A camera frame (uint8 RGB, H x W x 3), its stamp (ns) and its box ground truth."""

    image: np.ndarray
    stamp_ns: int
    truth: DetectionTruth


def empty_truth(site: str, robot: str = "", seq: int = 0) -> DetectionTruth:
    """Return the truth of a frame without items."""
    return DetectionTruth(
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, bool),
        site,
        robot,
        seq,
    )


# --------------------------------------------------------------------------- geometry


@lru_cache(maxsize=100_000)
def _foreground_corners(item: int) -> np.ndarray:
    """Return the corners (M, 2) of an item's visible pixels in its 28x28 image (pixel centres at integers)."""
    image = sim.item_pool().images[item]
    ys, xs = np.nonzero(image >= FOREGROUND_LEVEL)
    if not len(xs):
        return np.zeros((0, 2), np.float32)
    # a rotated shape's extremes lie on its convex hull: a few dozen points instead of hundreds
    hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.float32)).reshape(-1, 2)
    centres = hull.astype(np.float32)
    offsets = np.asarray([(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)], np.float32)
    return (centres[:, None, :] + offsets[None]).reshape(-1, 2)


def item_box(item: int, centre_px: tuple[float, float], side_px: float, angle_deg: float) -> np.ndarray:
    """Return the unclipped tight box (x0, y0, x1, y1) in pixel-edge coordinates of an item as the renderer paints it.

    Mirrors ``sim.Renderer``'s warp: the 28x28 item rotated by ``angle_deg`` about its centre,
    scaled to ``side_px`` pixels and centred at ``centre_px`` (pixels).
    """
    corners = _foreground_corners(item)
    if not len(corners):
        return np.zeros(4, np.float32)
    matrix = cv2.getRotationMatrix2D((14.0, 14.0), angle_deg, side_px / 28.0)
    matrix[0, 2] += centre_px[0] - 14.0
    matrix[1, 2] += centre_px[1] - 14.0
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    # warpAffine puts pixel centres at integer coordinates; pixel-edge coordinates add half a pixel
    low, high = mapped.min(axis=0) + 0.5, mapped.max(axis=0) + 0.5
    return np.asarray([low[0], low[1], high[0], high[1]], np.float32)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Placement:
    """One item in a frame: centre (fractions of width, height), size (fraction of the shorter side), angle."""

    item: int
    centre: tuple[float, float]
    size: float
    angle_deg: float
    track_id: int = -1


class SceneRenderer(sim.Renderer):
    """``sim.Renderer`` drawing several items per frame: the base class paints, lights, blurs and adds noise.

    Only the paste step is extended (every placement in draw order, later ones on top), so the
    look of a detection frame is the look of the classification world.
    """

    _scene: Sequence[Placement] | None = None

    def draw_scene(
        self,
        placements: Sequence[Placement],
        offset: tuple[int, int] = (0, 0),
        velocity: tuple[float, float] = (0.0, 0.0),
        occluder: tuple[float, float, float, float] | None = None,
        noise_key: int = 0,
    ) -> tuple[np.ndarray, DetectionTruth]:
        """Return (uint8 RGB frame, truth with boxes) of ``placements`` painted in order."""
        if not placements:
            return (self.draw(None, offset=offset, noise_key=noise_key), empty_truth(self.site.name))
        self._scene = placements
        try:
            first = placements[0]
            image = self.draw(
                first.item,
                centre=first.centre,
                size=first.size,
                angle_deg=first.angle_deg,
                offset=offset,
                velocity=velocity,
                occluder=occluder,
                noise_key=noise_key,
            )
        finally:
            self._scene = None
        return image, self.truth_of(placements)

    def _paste_item(
        self, frame: np.ndarray, item: int, centre: tuple[float, float], size: float, angle_deg: float
    ) -> None:
        scene = self._scene
        if scene is None:
            super()._paste_item(frame, item, centre, size, angle_deg)
            return
        for placement in scene:
            super()._paste_item(frame, placement.item, placement.centre, placement.size, placement.angle_deg)

    def truth_of(self, placements: Sequence[Placement], min_box_px: float = 3.0) -> DetectionTruth:
        """Return the clipped boxes of ``placements`` in this renderer's frame (pixels)."""
        height, width = self.height, self.width
        shorter = min(height, width)
        boxes, classes, items, tracks, truncated = [], [], [], [], []
        for p in placements:
            box = item_box(p.item, (p.centre[0] * width, p.centre[1] * height), p.size * shorter, p.angle_deg)
            clipped = np.asarray(
                [max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)], np.float32
            )
            if clipped[2] - clipped[0] < min_box_px or clipped[3] - clipped[1] < min_box_px:
                continue
            boxes.append(clipped)
            classes.append(int(self.pool.labels[p.item]))
            items.append(p.item)
            tracks.append(p.track_id)
            truncated.append(bool(np.any(np.abs(clipped - box) > 1e-3)))
        if not boxes:
            return empty_truth(self.site.name)
        return DetectionTruth(
            np.stack(boxes),
            np.asarray(classes, np.int64),
            np.asarray(items, np.int64),
            np.asarray(tracks, np.int64),
            np.asarray(truncated, bool),
            self.site.name,
        )


# --------------------------------------------------------------------------- streams


@dataclass
class _ItemTrack:
    track_id: int
    item: int
    length: int
    age: int
    start: np.ndarray
    velocity: np.ndarray
    size0: float
    size1: float
    angle0: float
    spin: float

    def placement(self) -> Placement:
        frac = self.age / max(self.length - 1, 1)
        centre = self.start + self.velocity * self.age
        size = self.size0 + (self.size1 - self.size0) * frac
        return Placement(
            self.item,
            (float(centre[0]), float(centre[1])),
            float(size),
            self.angle0 + self.spin * self.age,
            self.track_id,
        )


class DetectionStream:
    """A robot's camera at one site seeing zero to ``max_items`` items at once (seeded).

    ``item_scale`` is the item size range as a fraction of the frame's shorter side;
    ``overlap_prob`` the chance that a new item appears right beside one already in view;
    ``edge_prob`` the chance that a track enters or leaves across the frame border.
    """

    def __init__(
        self,
        site: sim.Site,
        robot: str,
        seed: int = 0,
        height: int = 128,
        width: int = 128,
        rate_hz: float = 10.0,
        track_frames: tuple[int, int] = (8, 40),
        max_items: int = 4,
        item_scale: tuple[float, float] = (0.2, 0.4),
        spawn_prob: float = 0.06,
        overlap_prob: float = 0.3,
        edge_prob: float = 0.35,
        revisit_prob: float = 0.15,
        park_prob: float = 0.3,
        items: np.ndarray | None = None,
        pool: sim.ItemPool | None = None,
        start_ns: int = 0,
    ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0 (got {rate_hz})")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1 (got {max_items})")
        lo, hi = item_scale
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"item_scale must satisfy 0 < low <= high < 1 (got {item_scale})")
        self.site, self.robot = site, robot
        self.pool = pool or sim.item_pool()
        self.rate_hz = rate_hz
        self.track_frames = track_frames
        self.max_items, self.item_scale = max_items, item_scale
        self.spawn_prob, self.overlap_prob, self.edge_prob = spawn_prob, overlap_prob, edge_prob
        self.revisit_prob, self.park_prob = revisit_prob, park_prob
        self.renderer = SceneRenderer(site, self.pool, height, width, seed)
        self._rng = sim._rng("detection-stream", robot, site.name, seed)
        partition = self.pool.field_stream if items is None else np.asarray(items)
        self._by_class = self.pool.by_class(partition)
        prior = np.asarray(site.class_prior, float)
        prior = np.where([len(c) > 0 for c in self._by_class], prior, 0.0)
        self._prior = prior / prior.sum()
        self._seen: list[int] = []
        self._tracks: list[_ItemTrack] = []
        self._gap = 0
        self._seq = 0
        self._next_track = 0
        self._start_ns = int(start_ns)
        self._offset = np.zeros(2)
        self._camera_velocity = np.zeros(2)

    # -- helpers
    def _pick_item(self) -> int:
        if self._seen and self._rng.random() < self.revisit_prob:
            return int(self._seen[self._rng.integers(len(self._seen))])
        cls = int(self._rng.choice(len(self._prior), p=self._prior))
        candidates = self._by_class[cls]
        item = int(candidates[self._rng.integers(len(candidates))])
        self._seen.append(item)
        return item

    def _new_track(self) -> _ItemTrack:
        rng = self._rng
        lo, hi = self.track_frames
        length = int(rng.integers(lo, hi + 1))
        size0 = float(rng.uniform(*self.item_scale))
        size1 = float(np.clip(size0 * rng.uniform(0.8, 1.25), 0.1, 0.6))
        if self._tracks and rng.random() < self.overlap_prob:
            # beside an item already in view: their boxes overlap
            anchor = self._tracks[int(rng.integers(len(self._tracks)))].placement()
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
        velocity = (end - start) / max(length - 1, 1)
        track = _ItemTrack(
            track_id=self._next_track,
            item=self._pick_item(),
            length=length,
            age=0,
            start=np.asarray(start, float),
            velocity=np.asarray(velocity, float),
            size0=size0,
            size1=size1,
            angle0=float(rng.uniform(-self.site.shift.rotation_deg, self.site.shift.rotation_deg)),
            spin=float(rng.uniform(-2, 2)),
        )
        self._next_track += 1
        return track

    def _draw_gap(self) -> int:
        # a scene lasts about one track plus the tracks spawned while it runs
        mean_track = sum(self.track_frames) / 2
        mean_scene = mean_track * (1.0 + self.spawn_prob * mean_track)
        fraction = self.site.none_fraction
        mean_gap = mean_scene * fraction / max(1e-6, 1 - fraction)
        return int(self._rng.integers(0, int(2 * mean_gap) + 1)) if mean_gap > 0 else 0

    # -- public
    def frames(self, count: int) -> Iterator[DetectionFrame]:
        """Yield the next ``count`` frames of this stream (the stream continues across calls)."""
        for _ in range(count):
            yield self._step()

    def _step(self) -> DetectionFrame:
        rng = self._rng
        if not self._tracks:
            if self._gap > 0:
                self._gap -= 1
            else:
                self._tracks.append(self._new_track())
                self._camera_velocity = np.zeros(2) if rng.random() < self.park_prob else rng.uniform(-2, 2, size=2)
        elif len(self._tracks) < self.max_items and rng.random() < self.spawn_prob:
            self._tracks.append(self._new_track())
        self._offset += self._camera_velocity
        placements = [t.placement() for t in self._tracks]
        fastest = max(self._tracks, key=lambda t: float(np.hypot(*t.velocity)), default=None)
        shorter = min(self.renderer.width, self.renderer.height)
        velocity = (0.0, 0.0) if fastest is None else tuple(float(v) * shorter for v in fastest.velocity)
        image, truth = self.renderer.draw_scene(
            placements, offset=tuple(self._offset.astype(int)), velocity=velocity, noise_key=self._seq
        )
        for track in self._tracks:
            track.age += 1
        ended = [t for t in self._tracks if t.age >= t.length]
        if ended:
            self._tracks = [t for t in self._tracks if t.age < t.length]
            if not self._tracks:
                self._gap = self._draw_gap()
        stamp = self._start_ns + int(round(self._seq * 1e9 / self.rate_hz))
        truth = DetectionTruth(
            truth.boxes,
            truth.classes,
            truth.items,
            truth.track_ids,
            truth.truncated,
            self.site.name,
            self.robot,
            self._seq,
        )
        self._seq += 1
        return DetectionFrame(image=image, stamp_ns=stamp, truth=truth)


# --------------------------------------------------------------------------- labelled sets


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


def render_detection_set(
    site: sim.Site,
    items: np.ndarray,
    count: int,
    seed: object,
    height: int = 128,
    width: int = 128,
    none_fraction: float = 0.1,
    max_items: int = 4,
    item_scale: tuple[float, float] = (0.2, 0.4),
    overlap_prob: float = 0.3,
    edge_prob: float = 0.3,
    pool: sim.ItemPool | None = None,
    prior: np.ndarray | None = None,
    sites: Sequence[sim.Site] | None = None,
) -> DetectionSet:
    """Return ``count`` independent frames of ``site`` (or of random ``sites``) with 0..``max_items`` items each."""
    pool = pool or sim.item_pool()
    rng = sim._rng("detection-set", site.name, seed, count, height, width)
    by_class = pool.by_class(np.asarray(items))
    candidates = list(sites) if sites else [site]
    renderers = [SceneRenderer(s, pool, height, width, seed) for s in candidates]
    images = np.empty((count, height, width, 3), np.uint8)
    truths = []
    for i in range(count):
        renderer = renderers[int(rng.integers(len(renderers)))]
        shift = renderer.site.shift
        site_prior = np.asarray(renderer.site.class_prior if prior is None else prior, float)
        site_prior = np.where([len(c) > 0 for c in by_class], site_prior, 0.0)
        site_prior = site_prior / site_prior.sum()
        offset = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        number = 0 if rng.random() < none_fraction else int(rng.integers(1, max_items + 1))
        placements: list[Placement] = []
        for k in range(number):
            cls = int(rng.choice(len(site_prior), p=site_prior))
            item = int(by_class[cls][rng.integers(len(by_class[cls]))])
            size = float(rng.uniform(*item_scale))
            if placements and rng.random() < overlap_prob:
                anchor = placements[int(rng.integers(len(placements)))]
                centre = np.asarray(anchor.centre) + rng.uniform(-0.6, 0.6, size=2) * anchor.size
            elif rng.random() < edge_prob:
                centre = rng.uniform(0.2, 0.8, size=2)
                centre[int(rng.integers(2))] = rng.choice([rng.uniform(-0.05, 0.08), rng.uniform(0.92, 1.05)])
            else:
                centre = rng.uniform(0.12, 0.88, size=2)
            placements.append(
                Placement(
                    item,
                    (float(centre[0]), float(centre[1])),
                    size,
                    float(rng.uniform(-shift.rotation_deg, shift.rotation_deg)),
                    k,
                )
            )
        velocity = tuple(float(v) for v in rng.normal(0, 1.0, size=2)) if not shift.centred else (0.0, 0.0)
        image, truth = renderer.draw_scene(placements, offset=offset, velocity=velocity, noise_key=i)
        images[i] = image
        truths.append(
            DetectionTruth(
                truth.boxes, truth.classes, truth.items, truth.track_ids, truth.truncated, renderer.site.name, "", i
            )
        )
    return DetectionSet(images=images, truths=truths)


def field_detection_set(
    site: sim.Site, count: int, seed: int = 0, height: int = 128, width: int = 128, pool: sim.ItemPool | None = None
) -> DetectionSet:
    """Return a held-out detection test set of ``site`` (field-test items, never streamed, so never uploaded)."""
    pool = pool or sim.item_pool()
    return render_detection_set(
        site,
        pool.field_test,
        count,
        seed=("field-detection-test", seed),
        height=height,
        width=width,
        none_fraction=site.none_fraction * 0.4,
        pool=pool,
    )
