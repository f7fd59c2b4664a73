"""The simulated fleet world: seeded camera streams of Fashion-MNIST items at robot sites.

What a robot camera sees (../DEMO_WORLD.md): items enter the view, stay for a *track* of
consecutive frames with smooth motion, scale change, motion blur and partial occlusion, then
leave; between items only background (class ``none``); robots revisit items. Every site has its
own lighting, colour cast, noise, blur, background texture and class prior, and one class that is
rare in the lab is common at one site. Ground truth travels beside each frame, never inside it.

Frames are uint8 RGB arrays of shape (height, width, 3). Everything is seeded: the same seed
gives the same pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterator, Sequence

import cv2
import numpy as np

from fleetloop_core.dataset import ITEM_LABELS, LABELS, NONE_INDEX, load_split

NUM_ITEM_CLASSES = len(ITEM_LABELS)
SIM_EPOCH_NS = 1_790_000_000 * 10**9  # 2026-09-21: stamps of simulated fleet streams start here
RARE_IN_LAB_CLASS = ITEM_LABELS.index("bag")  # rare in the lab, common at site 1
LAB_RARE_WEIGHT = 0.02  # relative weight of that class in the lab prior


def _rng(*keys: object) -> np.random.Generator:
    """Return a generator seeded by a stable hash of ``keys`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ItemPool:
    """All 70,000 Fashion-MNIST items and the partitions the world draws from.

    ``lab_train``/``lab_test``: the lab (train split, first 52,000). ``field_stream``: items robots
    may meet in the field. ``field_test``: field items never streamed (so never uploaded), the
    source of every per-site field test set. Partitions are disjoint index arrays into ``images``.
    """

    images: np.ndarray  # (70000, 28, 28) uint8
    labels: np.ndarray  # (70000,) int64
    lab_train: np.ndarray
    lab_test: np.ndarray
    field_stream: np.ndarray
    field_test: np.ndarray

    def by_class(self, partition: np.ndarray) -> list[np.ndarray]:
        """Return, per item class, the indices of ``partition`` holding that class."""
        labels = self.labels[partition]
        return [partition[labels == c] for c in range(NUM_ITEM_CLASSES)]


@lru_cache(maxsize=2)
def item_pool(root: str | None = None) -> ItemPool:
    """Return the item pool (cached); partitions are fixed, independent of any run seed."""
    train = load_split("train", root)
    test = load_split("test", root)
    images = np.concatenate([train.images, test.images])
    labels = np.concatenate([train.labels, test.labels])
    field = np.concatenate([np.arange(52_000, 60_000), np.arange(60_000, 70_000)])
    field = _rng("field-partition").permutation(field)
    cut = int(len(field) * 0.7)
    return ItemPool(
        images=images,
        labels=labels,
        lab_train=np.arange(0, 50_000),
        lab_test=np.arange(50_000, 52_000),
        field_stream=np.sort(field[:cut]),
        field_test=np.sort(field[cut:]),
    )


@lru_cache(maxsize=100_000)
def item_tint(item: int) -> np.ndarray:
    """Return the RGB colour (float32, 0..1) an item is printed in; fixed per item."""
    rng = _rng("tint", int(item))
    hue = rng.uniform(0, 180)
    sat = rng.uniform(0, 100)
    hsv = np.array([[[hue, sat, 255]]], dtype=np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    return rgb


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Shift:
    """How one site's camera and scene differ from the lab."""

    gain: float = 1.0  # brightness multiplier
    gamma: float = 1.0  # >1 darkens mid-tones
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel RGB gains
    noise_sigma: float = 2.0  # sensor noise, grey levels (0..255)
    blur_sigma: float = 0.0  # optical blur, pixels
    rotation_deg: float = 5.0  # items rotate within +- this
    occlusion_prob: float = 0.0  # probability a track is partly occluded
    scale_range: tuple[float, float] = (0.6, 0.85)  # item size / min(frame side)
    centred: bool = True  # lab: items near the centre; field: anywhere
    texture: str = "plain"  # plain | clouds | shelves | stripes
    texture_contrast: float = 0.0  # 0..1
    background_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)


LAB_SHIFT = Shift()


@dataclass(frozen=True)
class Site:
    """One place a robot works: its shift, class prior and background."""

    name: str
    index: int
    shift: Shift
    class_prior: np.ndarray = field(repr=False)  # (10,) item-class probabilities
    none_fraction: float = 0.5

    @property
    def favourite(self) -> str:
        """Return the most common item class at this site."""
        return ITEM_LABELS[int(np.argmax(self.class_prior))]


def lab_prior() -> np.ndarray:
    """Return the lab's item-class prior: uniform, except one class that is rare."""
    prior = np.ones(NUM_ITEM_CLASSES)
    prior[RARE_IN_LAB_CLASS] = LAB_RARE_WEIGHT
    return prior / prior.sum()


LAB_SITE = Site(name="lab", index=-1, shift=LAB_SHIFT, class_prior=lab_prior(), none_fraction=0.1)


def lab_sites(count: int = 24, seed: int = 0) -> list[Site]:
    """Return ``count`` lab photo booths: backdrops of different colours and faint textures, steady light.

    Lab data is clean and centred, but not all shot on one grey backdrop (no lab works that way).
    """
    booths = []
    for i in range(count):
        rng = _rng("lab-booth", seed, i)
        texture = ("plain", "clouds", "stripes")[i % 3]
        shift = replace(
            LAB_SHIFT,
            gain=float(rng.uniform(0.85, 1.15)),
            noise_sigma=float(rng.uniform(2.0, 5.0)),
            rotation_deg=8.0,
            background_rgb=tuple(float(v) for v in rng.uniform(0.15, 0.85, size=3)),
            scale_range=(0.4, 0.85),
            texture=texture,
            texture_contrast=0.0 if texture == "plain" else float(rng.uniform(0.05, 0.2)),
        )
        booths.append(replace(LAB_SITE, name=f"lab-{i}", index=-1 - i, shift=shift))
    return booths


_TEXTURES = ("clouds", "shelves", "stripes")


def random_shift(rng: np.random.Generator, strength: float = 1.0) -> Shift:
    """Return a random field shift; ``strength`` 0 is the lab, 1 a typical site."""
    s = float(strength)
    cast = 1.0 + s * rng.uniform(-0.25, 0.25, size=3)
    return Shift(
        gain=float(1.0 + s * rng.uniform(-0.45, 0.35)),
        gamma=float(np.exp(s * rng.uniform(-0.4, 0.4))),
        color_cast=tuple(float(c) for c in cast),
        noise_sigma=float(2.0 + s * rng.uniform(2.0, 14.0)),
        blur_sigma=float(s * rng.uniform(0.0, 1.4)),
        rotation_deg=float(5.0 + s * rng.uniform(5.0, 30.0)),
        occlusion_prob=float(s * rng.uniform(0.1, 0.4)),
        scale_range=(0.4 + 0.1 * (1 - s), 0.7 + 0.1 * (1 - s)),
        centred=s < 0.5,
        texture=str(rng.choice(_TEXTURES)) if s > 0 else "plain",
        texture_contrast=float(s * rng.uniform(0.2, 0.5)),
        background_rgb=tuple(float(v) for v in rng.uniform(0.2, 0.75, size=3)),
    )


def make_site(index: int, seed: int = 0, strength: float = 0.8) -> Site:
    """Return field site ``index`` of the world seeded by ``seed``.

    Site 1 is where the lab-rare class is common; every site has its own favourite class.
    """
    rng = _rng("site", seed, index)
    prior = rng.dirichlet(np.full(NUM_ITEM_CLASSES, 2.0))
    favourite = int(rng.integers(NUM_ITEM_CLASSES))
    prior[favourite] += 0.25
    if index % 4 == 1:
        prior[RARE_IN_LAB_CLASS] += 0.35
    prior /= prior.sum()
    return Site(
        name=f"site-{index}",
        index=index,
        shift=random_shift(rng, strength),
        class_prior=prior,
        none_fraction=0.5,
    )


def make_fleet_sites(count: int, seed: int = 0) -> list[Site]:
    """Return ``count`` distinct field sites."""
    return [make_site(i, seed) for i in range(count)]


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Truth:
    """Ground truth of one frame: for evaluation and simulated annotators, never model input."""

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
class SimFrame:
    """A camera frame (uint8 RGB, H x W x 3), its stamp (ns) and its ground truth."""

    image: np.ndarray | None  # None when the stream was asked for truth only
    stamp_ns: int
    truth: Truth


def _texture(site: Site, height: int, width: int, seed: int) -> np.ndarray:
    """Return a float32 RGB background texture (2x the frame, to pan over), values 0..1."""
    shift = site.shift
    th, tw = height * 2, width * 2
    rng = _rng("texture", site.name, seed, height, width)
    base = np.empty((th, tw, 3), np.float32)
    base[:] = np.asarray(shift.background_rgb, np.float32)
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
    gradient = 0.06 * (yy / th - 0.5)
    pattern = np.zeros((th, tw), np.float32)
    if shift.texture == "clouds":
        small = rng.uniform(-1, 1, size=(max(th // 16, 2), max(tw // 16, 2))).astype(np.float32)
        pattern = cv2.resize(small, (tw, th), interpolation=cv2.INTER_CUBIC)
    elif shift.texture == "shelves":
        period = max(height // 3, 8)
        pattern = np.where((yy % period) < period // 6, 1.0, -0.3).astype(np.float32)
        pattern += 0.5 * np.sin(xx / max(width // 5, 4))
    elif shift.texture == "stripes":
        angle = rng.uniform(0, np.pi)
        pattern = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / max(width / 24, 2)).astype(np.float32)
    pattern = np.clip(pattern, -1, 1) * shift.texture_contrast * 0.5
    out = base * (1.0 + pattern[..., None]) + gradient[..., None]
    return np.clip(out, 0, 1).astype(np.float32)


def _lighting_lut(shift: Shift) -> np.ndarray:
    """Return a (256, 1, 3) uint8 LUT applying gamma, gain and colour cast."""
    levels = np.arange(256, dtype=np.float32) / 255.0
    lut = np.empty((256, 1, 3), np.uint8)
    for channel in range(3):
        values = shift.gain * shift.color_cast[channel] * np.power(levels, shift.gamma)
        lut[:, 0, channel] = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut


class Renderer:
    """Draws frames of one site at one resolution (caches texture, lighting and noise)."""

    def __init__(self, site: Site, pool: ItemPool, height: int = 128, width: int = 128, seed: int = 0):
        if height < 32 or width < 32:
            raise ValueError(f"frame size must be at least 32x32 (got {width}x{height})")
        self.site, self.pool = site, pool
        self.height, self.width = height, width
        self._texture = cv2.convertScaleAbs(_texture(site, height, width, seed), alpha=255.0)
        self._lut = _lighting_lut(site.shift)
        self._occluder_rgb = tuple(int(v * 150) for v in site.shift.background_rgb)
        rng = _rng("noise", site.name, seed, height, width)
        noise = rng.normal(0, site.shift.noise_sigma, size=(2, height * 2, width * 2, 3))
        noise = np.clip(np.rint(noise), -255, 255)
        # saturating uint8 add of the positive part and subtract of the negative part
        self._noise_up = np.maximum(noise, 0).astype(np.uint8)
        self._noise_down = np.maximum(-noise, 0).astype(np.uint8)

    def draw(
        self,
        item: int | None,
        centre: tuple[float, float] = (0.5, 0.5),
        size: float = 0.7,
        angle_deg: float = 0.0,
        offset: tuple[int, int] = (0, 0),
        velocity: tuple[float, float] = (0.0, 0.0),
        occluder: tuple[float, float, float, float] | None = None,
        noise_key: int = 0,
    ) -> np.ndarray:
        """Return one uint8 RGB frame.

        ``centre`` and ``size`` are fractions of the frame (x, y) and of its shorter side;
        ``velocity`` in pixels/frame adds motion blur; ``occluder`` is (x0, y0, x1, y1) fractions.
        """
        height, width = self.height, self.width
        x, y = int(offset[0]) % width, int(offset[1]) % height
        frame = self._texture[y : y + height, x : x + width].copy()
        if item is not None:
            self._paste_item(frame, item, centre, size, angle_deg)
            if occluder is not None:
                x0, y0 = int(occluder[0] * width), int(occluder[1] * height)
                x1, y1 = int(occluder[2] * width), int(occluder[3] * height)
                cv2.rectangle(frame, (x0, y0), (x1, y1), self._occluder_rgb, thickness=-1)
        frame = cv2.LUT(frame, self._lut)
        speed = float(np.hypot(*velocity))
        if speed > 1.5:
            frame = cv2.filter2D(
                frame, -1, _motion_kernel(int(min(speed, 15)), round(np.degrees(np.arctan2(velocity[1], velocity[0]))))
            )
        if self.site.shift.blur_sigma > 0.3:
            frame = cv2.GaussianBlur(frame, (0, 0), self.site.shift.blur_sigma)
        # a multiplicative hash spreads consecutive keys over the noise field: a parked camera must
        # never produce byte-identical frames (real sensor noise does not repeat)
        mixed = (noise_key * 2654435761) & 0xFFFFFFFF
        bank = mixed & 1
        ny, nx = (mixed >> 1) % height, (mixed >> 12) % width
        cv2.add(frame, self._noise_up[bank, ny : ny + height, nx : nx + width], dst=frame)
        cv2.subtract(frame, self._noise_down[bank, ny : ny + height, nx : nx + width], dst=frame)
        return frame

    def _paste_item(
        self, frame: np.ndarray, item: int, centre: tuple[float, float], size: float, angle_deg: float
    ) -> None:
        """Alpha-blend the tinted item into ``frame`` in place, touching only its bounding box."""
        height, width = self.height, self.width
        side = size * min(height, width)
        half = side * 0.75  # covers the rotated square
        cx, cy = centre[0] * width, centre[1] * height
        x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
        x1, y1 = min(int(cx + half) + 1, width), min(int(cy + half) + 1, height)
        if x1 <= x0 or y1 <= y0:
            return
        matrix = cv2.getRotationMatrix2D((14.0, 14.0), angle_deg, side / 28.0)
        matrix[0, 2] += cx - 14.0 - x0
        matrix[1, 2] += cy - 14.0 - y0
        lum = cv2.warpAffine(
            self.pool.images[item],
            matrix,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        lum = lum.astype(np.float32) * np.float32(1.0 / 255.0)
        alpha = np.minimum(lum * np.float32(6.0), np.float32(1.0))
        shade = np.float32(38.0) + np.float32(217.0) * lum
        tint = item_tint(item)
        # same-shape 3-channel arrays: numpy broadcasting over a last axis of 3 is ~10x slower
        colour = cv2.merge([shade * tint[0], shade * tint[1], shade * tint[2]])
        alpha3 = cv2.merge([alpha, alpha, alpha])
        roi = frame[y0:y1, x0:x1]
        background = roi.astype(np.float32)
        roi[:] = cv2.convertScaleAbs(background + (colour - background) * alpha3)


@lru_cache(maxsize=64)
def _motion_kernel(length: int, angle_deg: int) -> np.ndarray:
    """Return a normalised line kernel of ``length`` pixels at ``angle_deg``."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return kernel / max(float(kernel.sum()), 1e-6)


# --------------------------------------------------------------------------- streams


@dataclass
class _Track:
    track_id: int
    item: int
    length: int
    start: np.ndarray
    velocity: np.ndarray
    size0: float
    size1: float
    angle0: float
    spin: float
    occluder: tuple[float, float, float, float] | None


class CameraStream:
    """A robot's camera at one site: tracks of items separated by background-only stretches.

    ``mode='stream'`` is the world of DEMO_WORLD.md; ``mode='hard'`` gives shuffled single frames
    (no tracks, no ``none`` frames), the i.i.d. comparison the report must show too.
    """

    def __init__(
        self,
        site: Site,
        robot: str,
        seed: int = 0,
        height: int = 128,
        width: int = 128,
        rate_hz: float = 10.0,
        track_frames: tuple[int, int] = (5, 40),
        revisit_prob: float = 0.15,
        park_prob: float = 0.3,
        mode: str = "stream",
        items: np.ndarray | None = None,
        pool: ItemPool | None = None,
        start_ns: int = 0,
    ):
        if mode not in ("stream", "hard"):
            raise ValueError(f"unknown stream mode {mode!r} (known: stream, hard)")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0 (got {rate_hz})")
        self.site, self.robot, self.mode = site, robot, mode
        self.pool = pool or item_pool()
        self.rate_hz = rate_hz
        self.track_frames = track_frames
        self.revisit_prob, self.park_prob = revisit_prob, park_prob
        self.renderer = Renderer(site, self.pool, height, width, seed)
        self._rng = _rng("stream", robot, site.name, seed, mode)
        partition = self.pool.field_stream if items is None else np.asarray(items)
        self._by_class = self.pool.by_class(partition)
        self._prior = np.asarray(site.class_prior, float)
        self._prior = np.where([len(c) > 0 for c in self._by_class], self._prior, 0.0)
        self._prior /= self._prior.sum()
        self._seen: list[int] = []
        self._seq = 0
        self._next_track = 0
        self._start_ns = int(start_ns)
        self._offset = np.zeros(2)
        self._camera_velocity = np.zeros(2)
        self._render = True
        self._source = self._generate()

    # -- drawing helpers
    def _pick_item(self) -> int:
        if self._seen and self._rng.random() < self.revisit_prob:
            return int(self._seen[self._rng.integers(len(self._seen))])
        cls = int(self._rng.choice(NUM_ITEM_CLASSES, p=self._prior))
        candidates = self._by_class[cls]
        item = int(candidates[self._rng.integers(len(candidates))])
        self._seen.append(item)
        return item

    def _new_track(self) -> _Track:
        rng, shift = self._rng, self.site.shift
        lo, hi = self.track_frames
        length = int(rng.integers(lo, hi + 1))
        size0 = rng.uniform(*shift.scale_range)
        size1 = float(np.clip(size0 * rng.uniform(0.8, 1.25), 0.2, 0.95))
        if shift.centred:
            start = rng.uniform(0.4, 0.6, size=2)
            end = start + rng.uniform(-0.05, 0.05, size=2)
        else:
            start = rng.uniform(0.2, 0.8, size=2)
            end = np.clip(start + rng.uniform(-0.35, 0.35, size=2), 0.15, 0.85)
        velocity = (end - start) / max(length - 1, 1)
        occluder = None
        if rng.random() < shift.occlusion_prob:
            cx, cy = rng.uniform(0.3, 0.7, size=2)
            w, h = rng.uniform(0.15, 0.35, size=2)
            occluder = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        track = _Track(
            track_id=self._next_track,
            item=self._pick_item(),
            length=length,
            start=start,
            velocity=velocity,
            size0=size0,
            size1=size1,
            angle0=float(rng.uniform(-shift.rotation_deg, shift.rotation_deg)),
            spin=float(rng.uniform(-2, 2)),
            occluder=occluder,
        )
        self._next_track += 1
        return track

    def _emit(self, label: int, item: int, track_id: int, image: np.ndarray) -> SimFrame:
        stamp = self._start_ns + int(round(self._seq * 1e9 / self.rate_hz))
        truth = Truth(label=label, item=item, track_id=track_id, site=self.site.name, robot=self.robot, seq=self._seq)
        self._seq += 1
        return SimFrame(image=image, stamp_ns=stamp, truth=truth)

    def _move_camera(self) -> None:
        self._offset += self._camera_velocity

    # -- public
    def frames(self, count: int, render: bool = True) -> Iterator[SimFrame]:
        """Yield the next ``count`` frames of this stream (the stream continues across calls).

        With ``render=False`` the frames carry ground truth and stamps but no pixels (``image`` is
        None): the same stream, ~100x faster, for skipping ahead or for a ground-truth oracle.
        However the calls are chunked, the stream is the same frame for frame.
        """
        for _ in range(count):
            self._render = render
            yield next(self._source)

    def _generate(self) -> Iterator[SimFrame]:
        """The endless stream; pixels are drawn only while ``self._render`` is set."""
        while True:
            if self.mode == "hard":
                track = self._new_track()
                yield self._track_frame(track, int(self._rng.integers(track.length)))
                continue
            # a background stretch, then a track; mean gap makes none_fraction come out right
            mean_track = sum(self.track_frames) / 2
            fraction = self.site.none_fraction
            mean_gap = mean_track * fraction / max(1e-6, 1 - fraction)
            gap = int(self._rng.integers(0, int(2 * mean_gap) + 1)) if mean_gap > 0 else 0
            parked = self._rng.random() < self.park_prob
            self._camera_velocity = np.zeros(2) if parked else self._rng.uniform(-2, 2, size=2)
            for _ in range(gap):
                self._move_camera()
                image = (
                    self.renderer.draw(None, offset=tuple(self._offset.astype(int)), noise_key=self._seq)
                    if self._render
                    else None
                )
                yield self._emit(NONE_INDEX, -1, -1, image)
            track = self._new_track()
            for t in range(track.length):
                self._move_camera()
                yield self._track_frame(track, t)

    def _track_frame(self, track: _Track, t: int) -> SimFrame:
        frac = t / max(track.length - 1, 1)
        centre = track.start + track.velocity * t
        size = track.size0 + (track.size1 - track.size0) * frac
        pixel_velocity = track.velocity * min(self.renderer.width, self.renderer.height)
        occluder = track.occluder if track.occluder and 0.3 <= frac <= 0.8 else None
        image = (
            self.renderer.draw(
                track.item,
                centre=(float(centre[0]), float(centre[1])),
                size=float(size),
                angle_deg=track.angle0 + track.spin * t,
                offset=tuple(self._offset.astype(int)),
                velocity=(float(pixel_velocity[0]), float(pixel_velocity[1])),
                occluder=occluder,
                noise_key=self._seq,
            )
            if self._render
            else None
        )
        label = int(self.pool.labels[track.item])
        return self._emit(label, track.item, track.track_id, image)


# --------------------------------------------------------------------------- labelled sets


@dataclass(frozen=True)
class LabelledSet:
    """Frames (N, H, W, 3) uint8 RGB with labels (N,) and the items they show (-1 for none)."""

    images: np.ndarray
    labels: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def render_set(
    site: Site,
    items: np.ndarray,
    count: int,
    seed: object,
    height: int = 128,
    width: int = 128,
    none_fraction: float | None = None,
    pool: ItemPool | None = None,
    prior: np.ndarray | None = None,
    sites: Sequence[Site] | None = None,
) -> LabelledSet:
    """Return ``count`` independent frames of ``site`` drawn from ``items`` by class prior.

    With ``sites``, each frame comes from a random one of them (domain randomisation).
    """
    pool = pool or item_pool()
    rng = _rng("set", site.name, seed, count, height, width)
    by_class = pool.by_class(np.asarray(items))
    prior = np.asarray(site.class_prior if prior is None else prior, float)
    prior = np.where([len(c) > 0 for c in by_class], prior, 0.0)
    prior = prior / prior.sum()
    none_fraction = site.none_fraction if none_fraction is None else none_fraction
    candidates = list(sites) if sites else [site]
    renderers = [Renderer(s, pool, height, width, seed) for s in candidates]
    images = np.empty((count, height, width, 3), np.uint8)
    labels = np.empty(count, np.int64)
    chosen = np.full(count, -1, np.int64)
    for i in range(count):
        renderer = renderers[int(rng.integers(len(renderers)))]
        shift = renderer.site.shift
        offset = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < none_fraction:
            images[i] = renderer.draw(None, offset=offset, noise_key=i)
            labels[i] = NONE_INDEX
            continue
        cls = int(rng.choice(NUM_ITEM_CLASSES, p=prior))
        item = int(by_class[cls][rng.integers(len(by_class[cls]))])
        if shift.centred:
            centre = rng.uniform(0.42, 0.58, size=2)
        else:
            centre = rng.uniform(0.2, 0.8, size=2)
        occluder = None
        if rng.random() < shift.occlusion_prob:
            cx, cy = centre + rng.uniform(-0.1, 0.1, size=2)
            w, h = rng.uniform(0.1, 0.3, size=2)
            occluder = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        velocity = rng.normal(0, 1.5, size=2) if not shift.centred else (0.0, 0.0)
        images[i] = renderer.draw(
            item,
            centre=(float(centre[0]), float(centre[1])),
            size=float(rng.uniform(*shift.scale_range)),
            angle_deg=float(rng.uniform(-shift.rotation_deg, shift.rotation_deg)),
            offset=offset,
            velocity=(float(velocity[0]), float(velocity[1])),
            occluder=occluder,
            noise_key=i,
        )
        labels[i] = cls
        chosen[i] = item
    return LabelledSet(images=images, labels=labels, items=chosen)


def randomised_sites(count: int, seed: int) -> list[Site]:
    """Return ``count`` random training sites (the foundation tier's domain randomisation).

    Drawn from the same family as field sites but with independent seeds, so no field site is
    ever in the foundation tier's training data.
    """
    sites = []
    for i in range(count):
        rng = _rng("randomised-site", seed, i)
        strength = float(rng.uniform(0.0, 1.2))
        sites.append(replace(LAB_SITE, name=f"randomised-{i}", index=1000 + i, shift=random_shift(rng, strength)))
    return sites


def field_test_set(
    site: Site, count: int, seed: int = 0, height: int = 128, width: int = 128, pool: ItemPool | None = None
) -> LabelledSet:
    """Return a held-out field test set for ``site`` (items never streamed, so never uploaded)."""
    pool = pool or item_pool()
    return render_set(site, pool.field_test, count, seed=("field-test", seed), height=height, width=width, pool=pool)
