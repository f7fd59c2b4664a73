"""A simulated detection fleet's uploads (the detection world's ``simfleet``), for tests, benchmarks and demos.

:class:`SimulatedDetectionFleet` drives ``fleetloop_core.sim_detection`` camera streams (one per
robot and site), runs a real edge detector over the frames for the sidecar's boxes and embedding
(as a robot's perception node would), and writes each frame, then its sidecar (the commit
marker), into a store in the robots' layout. Streams continue across :meth:`upload` calls. The
ground-truth boxes travel in the sidecar's ``simulation`` block only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from fleetloop_core import sim, sim_detection
from fleetloop_core.detection import NONE_NAME
from fleetloop_core.record import encode_image
from fleetloop_core.sidecar import Decision, Sidecar, SimulationTruth, frame_key, sidecar_key
from fleetloop_core.store import ObjectStore

START_NS = 1_790_000_000 * 10**9  # 2026-09-21


@dataclass
class SimulatedDetectionFleet:
    """Robots at sites streaming detection frames into a store (seeded)."""

    store: ObjectStore
    robots: Sequence[tuple[str, sim.Site]]
    seed: int = 0
    edge_model: object = None  # a DetectorModel (T4) for the sidecar's boxes, or None
    random_every: int = 10  # every n-th frame is flagged as the unbiased random sample
    keep_every: int = 1
    start_ns: int = START_NS
    stream_options: dict = field(default_factory=dict)  # DetectionStream keyword arguments
    _streams: list = field(default_factory=list, init=False, repr=False)
    _counts: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._streams = [
            sim_detection.DetectionStream(
                site, robot, seed=self.seed, start_ns=self.start_ns + number * 10**12, **self.stream_options
            )
            for number, (robot, site) in enumerate(self.robots)
        ]
        self._counts = [0] * len(self.robots)

    @property
    def classes(self) -> list[str]:
        return list(sim_detection.DETECTION_CLASSES)

    def upload(self, frames_per_robot: int) -> list[Sidecar]:
        """Stream ``frames_per_robot`` more frames per robot and upload the kept ones; return their sidecars."""
        written = []
        for number, ((robot, site), stream) in enumerate(zip(self.robots, self._streams)):
            frames = list(stream.frames(frames_per_robot))
            outputs = self.edge_model.detect_batch([f.image for f in frames]) if self.edge_model is not None else None
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
                        None if outputs is None else outputs[i],
                        random=index % self.random_every == 0,
                    )
                )
        return written

    def _write(self, robot: str, site: sim.Site, frame: sim_detection.DetectionFrame, output, random: bool) -> Sidecar:
        data = encode_image(frame.image, "png")
        truth = frame.truth
        labels = [*self.classes, NONE_NAME]
        extra: dict = {}
        if output is not None:
            found = output.detections
            best = int(found.scores.argmax()) if len(found) else -1
            extra = dict(
                model_versions={"T4": self.edge_model.version},
                detections={"T4": found.rows()},
                prediction=int(found.classes[best]) if best >= 0 else len(self.classes),
                confidence=float(found.scores[best]) if best >= 0 else 1.0,
                tier_used="T4",
                embedding=None if output.embedding is None else output.embedding.round(6).tolist(),
            )
        sidecar = Sidecar(
            robot_id=robot,
            stamp_ns=frame.stamp_ns,
            frame_sha256=hashlib.sha256(data).hexdigest(),
            width=frame.image.shape[1],
            height=frame.image.shape[0],
            labels=labels,
            decision=Decision(policy="simulated-all", score=1.0, random=random),
            site=site.name,
            simulation=SimulationTruth(
                label=truth.label, item=-1, track_id=truth.track_id, site=site.name, boxes=truth.rows()
            ),
            **extra,
        )
        self.store.put_bytes(frame_key(sidecar), data)
        self.store.put_bytes(sidecar_key(sidecar), sidecar.to_json().encode())
        return sidecar
