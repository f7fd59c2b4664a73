"""The simulated fleet world: seeded camera streams of Fashion-MNIST items at robot sites.

What a robot camera sees (../DEMO_WORLD.md): items enter the view, stay for a *track* of
consecutive frames with smooth motion, scale change, motion blur and partial occlusion, then
leave; between items only background (class ``none``); robots revisit items. Every site has its
own lighting, colour cast, noise, blur, background texture and class prior, and one class that is
rare in the lab is common at one site. Ground truth travels beside each frame, never inside it.

The world is written once for every task: this module holds the items, the sites, the cameras
(:class:`CameraStream`) and the labelled sets (:func:`render_set`); ``sim_render`` paints the
frames. What differs per task (one item and its class per frame, or several items and their
boxes) is the task's part in ``sim_tasks``, picked by task name.

~424 lines on purpose: items, sites, the camera's tracks and the labelled sets are one world's
definition, read together; the renderer and the task parts are already modules of their own.

Frames are uint8 RGB arrays of shape (height, width, 3). Everything is seeded: the same seed
gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Iterator, Sequence

import numpy as np

from fleetloop_sim.dataset import ITEM_LABELS, load_split
from fleetloop_sim.sim_render import LAB_SHIFT, Renderer, Shift, Track, as_rgb, random_shift, seeded_rng
from fleetloop_sim.sim_tasks import DetectionSet, FrameTruth, LabelledSet, SimTask, concatenate, sim_task

NUM_ITEM_CLASSES = len(ITEM_LABELS)
SIM_EPOCH_NS = 1_790_000_000 * 10**9  # 2026-09-21: stamps of simulated fleet streams start here
RARE_IN_LAB_CLASS = ITEM_LABELS.index("bag")  # rare in the lab, common at site 1
LAB_RARE_WEIGHT = 0.02  # relative weight of that class in the lab prior


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

    def field_split(self, split: str) -> np.ndarray:
        """Return the ``field_test`` items of one split: ``validation`` (models are selected and gated on
        it), ``test`` (headline figures are measured on it; disjoint from validation) or ``all``."""
        if split == "all":
            return self.field_test
        if split not in ("validation", "test"):
            raise ValueError(f"unknown field split {split!r} (known: all, validation, test)")
        order = seeded_rng("field-split").permutation(len(self.field_test))
        half = order[: len(order) // 2] if split == "validation" else order[len(order) // 2 :]
        return np.sort(self.field_test[half])

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
    field = seeded_rng("field-partition").permutation(field)
    cut = int(len(field) * 0.7)
    return ItemPool(
        images=images,
        labels=labels,
        lab_train=np.arange(0, 50_000),
        lab_test=np.arange(50_000, 52_000),
        field_stream=np.sort(field[:cut]),
        field_test=np.sort(field[cut:]),
    )


# --------------------------------------------------------------------------- sites


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
    normalised: np.ndarray = prior / prior.sum()
    return normalised


LAB_SITE = Site(name="lab", index=-1, shift=LAB_SHIFT, class_prior=lab_prior(), none_fraction=0.1)


def lab_sites(count: int = 24, seed: int = 0) -> list[Site]:
    """Return ``count`` lab photo booths: backdrops of different colours and faint textures, steady light.

    Lab data is clean and centred, but not all shot on one grey backdrop (no lab works that way).
    """
    booths = []
    for i in range(count):
        rng = seeded_rng("lab-booth", seed, i)
        texture = ("plain", "clouds", "stripes")[i % 3]
        shift = replace(
            LAB_SHIFT,
            gain=float(rng.uniform(0.85, 1.15)),
            noise_sigma=float(rng.uniform(2.0, 5.0)),
            rotation_deg=8.0,
            background_rgb=as_rgb(rng.uniform(0.15, 0.85, size=3)),
            scale_range=(0.4, 0.85),
            texture=texture,
            texture_contrast=0.0 if texture == "plain" else float(rng.uniform(0.05, 0.2)),
        )
        booths.append(replace(LAB_SITE, name=f"lab-{i}", index=-1 - i, shift=shift))
    return booths


def make_site(index: int, seed: int = 0, strength: float = 0.8) -> Site:
    """Return field site ``index`` of the world seeded by ``seed``.

    Site 1 is where the lab-rare class is common; every site has its own favourite class.
    """
    rng = seeded_rng("site", seed, index)
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


def randomised_sites(count: int, seed: int, strength_range: tuple[float, float] = (0.0, 1.2)) -> list[Site]:
    """Return ``count`` random training sites (the foundation tier's domain randomisation).

    Drawn from the same family as field sites (each with its own shift strength from
    ``strength_range``; a typical field site is 0.8) but with independent seeds, so no field site is
    ever in the foundation tier's training data.
    """
    low, high = strength_range
    sites = []
    for i in range(count):
        rng = seeded_rng("randomised-site", seed, i)
        strength = float(rng.uniform(low, high))
        sites.append(replace(LAB_SITE, name=f"randomised-{i}", index=1000 + i, shift=random_shift(rng, strength)))
    return sites


# --------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class SimFrame:
    """A camera frame (uint8 RGB, H x W x 3), its stamp (ns) and its ground truth (the task's form)."""

    image: np.ndarray | None  # None when the stream was asked for truth only
    stamp_ns: int
    truth: FrameTruth


class CameraStream:
    """A robot's camera at one site: scenes of items on tracks separated by background-only stretches.

    ``task`` (a name or a ``sim_tasks`` part) says what a scene holds and what a frame's truth is:
    ``classification`` one item at a time and its class, ``detection`` up to four at once and
    their boxes. ``mode='stream'`` is the world of DEMO_WORLD.md; ``mode='hard'`` gives shuffled
    single frames (no tracks, no ``none`` frames), the i.i.d. comparison the report must show too.
    """

    def __init__(
        self,
        site: Site,
        robot: str,
        seed: int = 0,
        height: int = 128,
        width: int = 128,
        rate_hz: float = 10.0,
        revisit_prob: float = 0.15,
        park_prob: float = 0.3,
        mode: str = "stream",
        items: np.ndarray | None = None,
        pool: ItemPool | None = None,
        start_ns: int = 0,
        task: str | SimTask = "classification",
    ):
        if mode not in ("stream", "hard"):
            raise ValueError(f"unknown stream mode {mode!r} (known: stream, hard)")
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0 (got {rate_hz})")
        self.site, self.robot, self.mode = site, robot, mode
        self.task = sim_task(task)
        self.pool = pool or item_pool()
        self.rate_hz = rate_hz
        self.revisit_prob, self.park_prob = revisit_prob, park_prob
        self.renderer = Renderer(site, self.pool, height, width, seed)
        self._rng = seeded_rng(*self.task.stream_keys(robot, site.name, seed, mode))
        partition = self.pool.field_stream if items is None else np.asarray(items)
        self._by_class = self.pool.by_class(partition)
        self._prior = _usable_prior(site.class_prior, self._by_class)
        self._seen: list[int] = []
        self._seq = 0
        self._next_track = 0
        self._start_ns = int(start_ns)
        self._offset = np.zeros(2)
        self._camera_velocity = np.zeros(2)
        self._render = True
        self._source = self._generate()

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
                track = self._new_track([])
                track.age = int(self._rng.integers(track.length))
                yield self._frame([track])
            elif self.task.gap_first:  # the order of the draws is part of each task's seeded world
                gap = self._draw_gap()
                self._pan()
                yield from self._background(gap)
                yield from self._scene([self._new_track([])])
            else:
                first = self._new_track([])
                self._pan()
                yield from self._scene([first])
                yield from self._background(self._draw_gap())

    def _scene(self, tracks: list[Track]) -> Iterator[SimFrame]:
        """Frames until the last track in view has left; new tracks join while there is room."""
        while True:
            self._offset += self._camera_velocity
            yield self._frame(tracks)
            for track in tracks:
                track.age += 1
            tracks = [t for t in tracks if t.age < t.length]
            if not tracks:
                return
            if len(tracks) < self.task.max_items and self._rng.random() < self.task.spawn_prob:
                tracks.append(self._new_track(tracks))

    def _background(self, count: int) -> Iterator[SimFrame]:
        for _ in range(count):
            self._offset += self._camera_velocity
            yield self._frame([])

    def _draw_gap(self) -> int:
        """Return the length of the next background stretch: sized so that none_fraction comes out right."""
        mean_track = sum(self.task.track_frames) / 2
        mean_scene = mean_track * (1.0 + self.task.spawn_prob * mean_track)  # plus the tracks spawned meanwhile
        fraction = self.site.none_fraction
        mean_gap = mean_scene * fraction / max(1e-6, 1 - fraction)
        return int(self._rng.integers(0, int(2 * mean_gap) + 1)) if mean_gap > 0 else 0

    def _pan(self) -> None:
        """Park the camera or set it panning over the background for the next stretch."""
        parked = self._rng.random() < self.park_prob
        self._camera_velocity = np.zeros(2) if parked else self._rng.uniform(-2, 2, size=2)

    def _pick_item(self) -> int:
        if self._seen and self._rng.random() < self.revisit_prob:
            return int(self._seen[self._rng.integers(len(self._seen))])
        item = _draw_item(self._rng, self._by_class, self._prior)
        self._seen.append(item)
        return item

    def _new_track(self, scene: list[Track]) -> Track:
        rng = self._rng
        lo, hi = self.task.track_frames
        length = int(rng.integers(lo, hi + 1))
        shape = self.task.track_shape(rng, self.site.shift, [t.placement() for t in scene])
        track = Track(
            track_id=self._next_track,
            item=self._pick_item(),
            length=length,
            start=shape.start,
            velocity=(shape.end - shape.start) / max(length - 1, 1),
            size0=shape.size0,
            size1=shape.size1,
            angle0=float(rng.uniform(-self.site.shift.rotation_deg, self.site.shift.rotation_deg)),
            spin=float(rng.uniform(-2, 2)),
            occluder=shape.occluder,
        )
        self._next_track += 1
        return track

    def _frame(self, tracks: list[Track]) -> SimFrame:
        placements = [t.placement() for t in tracks]
        image = None
        if self._render:
            # motion blur follows the fastest item
            fastest = max(tracks, key=lambda t: float(np.hypot(*t.velocity)), default=None)
            shorter = min(self.renderer.width, self.renderer.height)
            velocity = (
                (0.0, 0.0)
                if fastest is None
                else (float(fastest.velocity[0] * shorter), float(fastest.velocity[1] * shorter))
            )
            occluders = [box for box in (t.occluder_in_view() for t in tracks) if box is not None]
            offset = tuple(self._offset.astype(int))
            image = self.renderer.draw(placements, offset, velocity, occluders, noise_key=self._seq)
        truth = self.task.truth(self.renderer, placements, self.robot, self._seq)
        stamp = self._start_ns + int(round(self._seq * 1e9 / self.rate_hz))
        self._seq += 1
        return SimFrame(image=image, stamp_ns=stamp, truth=truth)


def _usable_prior(prior: np.ndarray, by_class: list[np.ndarray]) -> np.ndarray:
    """Return ``prior`` without the classes that have no items, normalised."""
    usable = np.where([len(c) > 0 for c in by_class], np.asarray(prior, float), 0.0)
    normalised: np.ndarray = usable / usable.sum()
    return normalised


def _draw_item(rng: np.random.Generator, by_class: list[np.ndarray], prior: np.ndarray) -> int:
    """Return an item: a class by ``prior``, then one of its items."""
    candidates = by_class[int(rng.choice(NUM_ITEM_CLASSES, p=prior))]
    return int(candidates[rng.integers(len(candidates))])


# --------------------------------------------------------------------------- labelled sets


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
    task: str | SimTask = "classification",
) -> LabelledSet | DetectionSet:
    """Return ``count`` independent frames of ``site`` drawn from ``items`` by class prior.

    With ``sites``, each frame comes from a random one of them (domain randomisation).
    ``none_fraction`` (default: the site's) of the frames are background only. ``task`` says what
    a frame holds and what comes back: a ``LabelledSet`` (classification) or a ``DetectionSet``.
    """
    part = sim_task(task)
    pool = pool or item_pool()
    rng = seeded_rng(part.set_seed, site.name, seed, count, height, width)
    by_class = pool.by_class(np.asarray(items))
    none_fraction = site.none_fraction if none_fraction is None else none_fraction
    candidates = list(sites) if sites else [site]
    renderers: dict[int, Renderer] = {}  # made on first use: thousands of random sites cost ~14 ms each
    priors = [
        _usable_prior((s if part.frame_site_prior else site).class_prior if prior is None else prior, by_class)
        for s in candidates
    ]
    images = np.empty((count, height, width, 3), np.uint8)
    truths = []
    for i in range(count):
        number = int(rng.integers(len(candidates)))
        if number not in renderers:
            renderers[number] = Renderer(candidates[number], pool, height, width, seed)
        renderer = renderers[number]
        offset = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        empty = rng.random() < none_fraction
        draw_item = partial(_draw_item, rng, by_class, priors[number])
        placements, velocity, occluders = part.set_scene(rng, renderer.site.shift, empty, draw_item)
        images[i] = renderer.draw(placements, offset, velocity, occluders, noise_key=i)
        truths.append(part.truth(renderer, placements, "", i))
    return part.collect(images, truths)


def field_test_set(
    site: Site,
    count: int,
    seed: int = 0,
    height: int = 128,
    width: int = 128,
    pool: ItemPool | None = None,
    task: str | SimTask = "classification",
    split: str = "all",
) -> LabelledSet | DetectionSet:
    """Return a held-out field test set for ``site`` (items never streamed, so never uploaded).

    ``split``: which of the held-out items (``ItemPool.field_split``): ``validation`` to select and
    gate models on, ``test`` (other items, other frames) to report figures on, ``all`` both. A split
    set is rendered in :data:`FIELD_PIECES` pieces, each with its own draw of the site's background
    texture: one draw per set made a weak model's accuracy on background frames swing from 0.48 to
    0.98 between two sets of the same site (measured on the quick demo's T4, 600 frames each).
    """
    part = sim_task(task)
    pool = pool or item_pool()
    items, none_fraction = pool.field_split(split), site.none_fraction * part.field_none_scale
    if split == "all":
        seeds: list[object] = [(part.field_seed, seed)]
    else:
        seeds = [(part.field_seed, seed, split, piece) for piece in range(FIELD_PIECES)]
    sizes = [count // len(seeds) + (1 if k < count % len(seeds) else 0) for k in range(len(seeds))]
    pieces = [
        render_set(site, items, n, key, height, width, none_fraction=none_fraction, pool=pool, task=part)
        for key, n in zip(seeds, sizes)
        if n
    ]
    return pieces[0] if len(pieces) == 1 else concatenate(pieces)


FIELD_PIECES = 8  # background draws per field validation / test set
