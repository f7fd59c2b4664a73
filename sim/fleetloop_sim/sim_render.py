"""How the simulated world looks on camera: a site's shift, items on tracks, and the renderer.

A :class:`Shift` is how a site's camera and scene differ from the lab. A :class:`Track` is one
item crossing the view, a :class:`Placement` per frame. One renderer serves every task: a frame
is the site's background (a texture the camera pans over) with zero or more items pasted in
order (later ones on top), occluders, then the site's lighting, motion blur from the items'
motion, optical blur and sensor noise. :meth:`Renderer.item_box` is where a pasted item's
visible strokes land, in pixels (the box truth of the detection world).

Everything is seeded by stable hashes of keys (:func:`seeded_rng`): the same keys give the same pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from fleetloop_sim.sim import ItemPool, Site

FOREGROUND_LEVEL = 32  # item pixels at or above this grey level (0..255) count as visible
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame


def seeded_rng(*keys: object) -> np.random.Generator:
    """Return a generator seeded by a stable hash of ``keys`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@lru_cache(maxsize=100_000)
def item_tint(item: int) -> np.ndarray:
    """Return the RGB colour (float32, 0..1) an item is printed in; fixed per item."""
    rng = seeded_rng("tint", int(item))
    hue = rng.uniform(0, 180)
    sat = rng.uniform(0, 100)
    hsv = np.array([[[hue, sat, 255]]], dtype=np.uint8)
    rgb: np.ndarray = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    return rgb


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

_TEXTURES = ("clouds", "shelves", "stripes")


def as_rgb(values: np.ndarray) -> tuple[float, float, float]:
    """Return the first three of ``values`` as an (R, G, B) tuple of Python floats."""
    return float(values[0]), float(values[1]), float(values[2])


def random_shift(rng: np.random.Generator, strength: float = 1.0) -> Shift:
    """Return a random field shift; ``strength`` 0 is the lab, 1 a typical site."""
    s = float(strength)
    cast = 1.0 + s * rng.uniform(-0.25, 0.25, size=3)
    return Shift(
        gain=float(1.0 + s * rng.uniform(-0.45, 0.35)),
        gamma=float(np.exp(s * rng.uniform(-0.4, 0.4))),
        color_cast=as_rgb(cast),
        noise_sigma=float(2.0 + s * rng.uniform(2.0, 14.0)),
        blur_sigma=float(s * rng.uniform(0.0, 1.4)),
        rotation_deg=float(5.0 + s * rng.uniform(5.0, 30.0)),
        occlusion_prob=float(s * rng.uniform(0.1, 0.4)),
        scale_range=(0.4 + 0.1 * (1 - s), 0.7 + 0.1 * (1 - s)),
        centred=s < 0.5,
        texture=str(rng.choice(_TEXTURES)) if s > 0 else "plain",
        texture_contrast=float(s * rng.uniform(0.2, 0.5)),
        background_rgb=as_rgb(rng.uniform(0.2, 0.75, size=3)),
    )


@dataclass(frozen=True)
class Placement:
    """One item in a frame: centre (fractions of width, height), size (fraction of the shorter side), angle."""

    item: int
    centre: tuple[float, float]
    size: float
    angle_deg: float
    track_id: int = -1


@dataclass
class Track:
    """One item crossing the view: where it starts and how it moves, grows and spins per frame (a placement per age)."""

    track_id: int
    item: int
    length: int
    start: np.ndarray
    velocity: np.ndarray  # fractions of the frame per frame
    size0: float
    size1: float
    angle0: float
    spin: float
    occluder: Box | None
    age: int = 0  # frames shown so far

    def placement(self) -> Placement:
        frac = self.age / max(self.length - 1, 1)
        centre = self.start + self.velocity * self.age
        size = self.size0 + (self.size1 - self.size0) * frac
        angle = self.angle0 + self.spin * self.age
        return Placement(self.item, (float(centre[0]), float(centre[1])), float(size), angle, self.track_id)

    def occluder_in_view(self) -> Box | None:
        """Return the occluder while it covers the item (the middle part of the track)."""
        return self.occluder if self.occluder and 0.3 <= self.age / max(self.length - 1, 1) <= 0.8 else None


def _texture(site: Site, height: int, width: int, seed: object) -> np.ndarray:
    """Return a float32 RGB background texture (2x the frame, to pan over), values 0..1."""
    shift = site.shift
    th, tw = height * 2, width * 2
    rng = seeded_rng("texture", site.name, seed, height, width)
    base = np.empty((th, tw, 3), np.float32)
    base[:] = np.asarray(shift.background_rgb, np.float32)
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
    gradient = 0.06 * (yy / th - 0.5)
    pattern: np.ndarray = np.zeros((th, tw), np.float32)
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
    out: np.ndarray = np.clip(base * (1.0 + pattern[..., None]) + gradient[..., None], 0, 1).astype(np.float32)
    return out


def _lighting_lut(shift: Shift) -> np.ndarray:
    """Return a (256, 1, 3) uint8 LUT applying gamma, gain and colour cast."""
    levels = np.arange(256, dtype=np.float32) / 255.0
    lut = np.empty((256, 1, 3), np.uint8)
    for channel in range(3):
        values = shift.gain * shift.color_cast[channel] * np.power(levels, shift.gamma)
        lut[:, 0, channel] = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut


class Renderer:
    """Draws frames of one site at one resolution (caches texture, lighting, noise and item outlines)."""

    def __init__(self, site: Site, pool: ItemPool, height: int = 128, width: int = 128, seed: object = 0):
        if height < 32 or width < 32:
            raise ValueError(f"frame size must be at least 32x32 (got {width}x{height})")
        self.site, self.pool = site, pool
        self.height, self.width = height, width
        self._texture = cv2.convertScaleAbs(_texture(site, height, width, seed), alpha=255.0)
        self._lut = _lighting_lut(site.shift)
        self._occluder_rgb = tuple(int(v * 150) for v in site.shift.background_rgb)
        rng = seeded_rng("noise", site.name, seed, height, width)
        noise = rng.normal(0, site.shift.noise_sigma, size=(2, height * 2, width * 2, 3))
        noise = np.clip(np.rint(noise), -255, 255)
        # saturating uint8 add of the positive part and subtract of the negative part
        self._noise_up = np.maximum(noise, 0).astype(np.uint8)
        self._noise_down = np.maximum(-noise, 0).astype(np.uint8)
        self._outlines: dict[int, np.ndarray] = {}

    def draw(
        self,
        placements: Sequence[Placement] = (),
        offset: tuple[int, int] = (0, 0),
        velocity: tuple[float, float] = (0.0, 0.0),
        occluders: Sequence[Box] = (),
        noise_key: int = 0,
    ) -> np.ndarray:
        """Return one uint8 RGB frame of ``placements`` painted in order (none: background only).

        ``offset`` pans the camera over the background (pixels); ``velocity`` is the items'
        motion in pixels/frame and blurs the frame along it (a frame without items is never
        motion-blurred); ``occluders`` are boxes painted over the items.
        """
        height, width = self.height, self.width
        x, y = int(offset[0]) % width, int(offset[1]) % height
        frame = self._texture[y : y + height, x : x + width].copy()
        for placement in placements:
            self._paste_item(frame, placement)
        for occluder in occluders if placements else ():
            x0, y0 = int(occluder[0] * width), int(occluder[1] * height)
            x1, y1 = int(occluder[2] * width), int(occluder[3] * height)
            cv2.rectangle(frame, (x0, y0), (x1, y1), self._occluder_rgb, thickness=-1)
        frame = cv2.LUT(frame, self._lut)
        speed = float(np.hypot(*velocity))
        if placements and speed > 1.5:
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

    def _paste_item(self, frame: np.ndarray, placement: Placement) -> None:
        """Alpha-blend the tinted item into ``frame`` in place, touching only its bounding box."""
        height, width = self.height, self.width
        item, angle_deg = placement.item, placement.angle_deg
        side = placement.size * min(height, width)
        half = side * 0.75  # covers the rotated square
        cx, cy = placement.centre[0] * width, placement.centre[1] * height
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

    def item_box(self, placement: Placement) -> np.ndarray:
        """Return the unclipped tight box (x0, y0, x1, y1) in pixel-edge coordinates of a pasted item's visible strokes.

        Mirrors :meth:`_paste_item`'s warp: the 28x28 item rotated about its centre, scaled to its
        side in pixels and centred at its centre in pixels.
        """
        corners = self._outline(placement.item)
        if not len(corners):
            return np.zeros(4, np.float32)
        side = placement.size * min(self.height, self.width)
        cx, cy = placement.centre[0] * self.width, placement.centre[1] * self.height
        matrix = cv2.getRotationMatrix2D((14.0, 14.0), placement.angle_deg, side / 28.0)
        matrix[0, 2] += cx - 14.0
        matrix[1, 2] += cy - 14.0
        mapped = corners @ matrix[:, :2].T + matrix[:, 2]
        # warpAffine puts pixel centres at integer coordinates; pixel-edge coordinates add half a pixel
        low, high = mapped.min(axis=0) + 0.5, mapped.max(axis=0) + 0.5
        return np.asarray([low[0], low[1], high[0], high[1]], np.float32)

    def _outline(self, item: int) -> np.ndarray:
        """Return the corners (M, 2) of an item's visible pixels in its 28x28 image (pixel centres at integers)."""
        if item not in self._outlines:
            ys, xs = np.nonzero(self.pool.images[item] >= FOREGROUND_LEVEL)
            if not len(xs):
                self._outlines[item] = np.zeros((0, 2), np.float32)
                return self._outlines[item]
            # a rotated shape's extremes lie on its convex hull: a few dozen points instead of hundreds
            hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.float32)).reshape(-1, 2)
            offsets = np.asarray([(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)], np.float32)
            self._outlines[item] = (hull[:, None, :] + offsets[None]).reshape(-1, 2)
        return self._outlines[item]


@lru_cache(maxsize=64)
def _motion_kernel(length: int, angle_deg: int) -> np.ndarray:
    """Return a normalised line kernel of ``length`` pixels at ``angle_deg``."""
    kernel: np.ndarray = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return kernel / max(float(kernel.sum()), 1e-6)
