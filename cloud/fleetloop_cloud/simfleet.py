"""A simulated fleet's uploads, for tests, benchmarks and demos that skip the robot stack.

:class:`SimulatedFleet` drives ``fleetloop_core.sim`` camera streams (one per robot and site),
runs a real edge tier over the frames for the sidecar's tier outputs and embedding, and writes
each frame, then its sidecar (the commit marker), into a store in the robots' layout. Streams
continue across :meth:`SimulatedFleet.upload` calls, so successive rounds see new frames. Every
frame is uploaded (no on-robot selection); ``keep_every`` thins them. Ground truth goes into the
sidecar's ``simulation`` block only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from fleetloop_core import sim
from fleetloop_core.dataset import LABELS
from fleetloop_core.sidecar import Decision, Sidecar, SimulationTruth, frame_key, sidecar_key
from fleetloop_core.store import ObjectStore

START_NS = 1_790_000_000 * 10**9  # 2026-09-21


@dataclass
class SimulatedFleet:
    """Robots at sites streaming frames into a store (seeded; ``mode`` 'stream' or 'hard')."""

    store: ObjectStore
    robots: Sequence[tuple[str, sim.Site]]
    seed: int = 0
    edge_model: object = None  # a TierModel (T4) for the sidecar's outputs, or None
    track_hints: bool = True  # the robot tracks items (sidecar track_hint)
    random_every: int = 10  # every n-th frame is flagged as the unbiased random sample
    keep_every: int = 1
    mode: str = "stream"
    start_ns: int = START_NS
    _streams: list = field(default_factory=list, init=False, repr=False)
    _counts: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._streams = [
            sim.CameraStream(site, robot, seed=self.seed, mode=self.mode, start_ns=self.start_ns + number * 10**12)
            for number, (robot, site) in enumerate(self.robots)
        ]
        self._counts = [0] * len(self.robots)

    def upload(self, frames_per_robot: int) -> list[Sidecar]:
        """Stream ``frames_per_robot`` more frames per robot and upload the kept ones; return their sidecars."""
        written = []
        for number, ((robot, site), stream) in enumerate(zip(self.robots, self._streams)):
            frames = list(stream.frames(frames_per_robot))
            images = np.stack([f.image for f in frames])
            outputs = self.edge_model.infer_batch(images) if self.edge_model is not None else None
            for i, frame in enumerate(frames):
                index = self._counts[number]
                self._counts[number] += 1
                if index % self.keep_every:
                    continue
                written.append(
                    self._write(
                        robot,
                        site,
                        frame,
                        None
                        if outputs is None
                        else (
                            outputs.probs[i],
                            outputs.embedding[i],
                            None if outputs.uncertainty is None else outputs.uncertainty[i],
                        ),
                        random=index % self.random_every == 0,
                    )
                )
        return written

    def _write(self, robot: str, site: sim.Site, frame: sim.SimFrame, outputs, random: bool) -> Sidecar:
        ok, buffer = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("cannot encode a PNG")
        data = buffer.tobytes()
        truth = frame.truth
        extra = {}
        if outputs is not None:
            probs, embedding, uncertainty = outputs
            extra = dict(
                model_versions={"T4": self.edge_model.version},
                tier_outputs={"T4": probs.round(5).tolist()},
                embedding=embedding.round(6).tolist(),
                prediction=int(probs.argmax()),
                confidence=float(probs.max()),
                tier_used="T4",
                scores={}
                if uncertainty is None
                else {"entropy": float(uncertainty[0]), "margin": float(uncertainty[1])},
            )
        sidecar = Sidecar(
            robot_id=robot,
            stamp_ns=frame.stamp_ns,
            frame_sha256=hashlib.sha256(data).hexdigest(),
            width=frame.image.shape[1],
            height=frame.image.shape[0],
            labels=list(LABELS),
            decision=Decision(policy="simulated-all", score=1.0, random=random),
            track_hint=f"t{truth.track_id}"
            if self.track_hints and truth.track_id >= 0 and self.mode == "stream"
            else None,
            site=site.name,
            simulation=SimulationTruth(label=truth.label, item=truth.item, track_id=truth.track_id, site=site.name),
            **extra,
        )
        self.store.put_bytes(frame_key(sidecar), data)
        self.store.put_bytes(sidecar_key(sidecar), sidecar.to_json().encode())
        return sidecar
