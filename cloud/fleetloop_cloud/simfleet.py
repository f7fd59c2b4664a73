"""A simulated fleet's uploads, for tests, benchmarks and demos that skip the robot stack.

:class:`SimulatedFleet` drives ``fleetloop_sim.sim`` camera streams of one task (one stream per
robot and site), runs a real edge model over the frames for the sidecar's tier outputs and
embedding (as a robot's perception node would), and writes each frame, then its sidecar (the
commit marker), into a store in the robots' layout. Streams continue across
:meth:`SimulatedFleet.upload` calls, so successive rounds see new frames. Every frame is uploaded
(no on-robot selection); ``keep_every`` thins them. Ground truth goes into the sidecar's
``simulation`` block only: the sidecar's ``track_hint`` comes from the robot's own tracker over
the edge model's embeddings (``fleetloop_core.uncertainty.TrackChain``, as the cascade runs it), so
without an edge model there are no track hints.

What differs per task is a small part picked by the task's name: how the edge model's outputs
and the frame's truth go into the sidecar, and how the frame is encoded. The demos' in-process
robots (:class:`fleetloop_cloud.demo.fleet.InProcessRobot`, which run the robot stack) write their
sidecars' truth with the same parts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from fleetloop_sim import sim
from fleetloop_sim.dataset import LABELS, NONE_INDEX
from fleetloop_core.uncertainty import TrackChain
from fleetloop_core.record import encode_image
from fleetloop_core.contracts.sidecar import Decision, Sidecar, SimulationTruth, frame_key, sidecar_key
from fleetloop_core.store import ObjectStore


class FleetTask(Protocol):
    """What a simulated robot of one task writes into its sidecars."""

    def edge_fields(self, model: Any, images: list[np.ndarray]) -> list[dict]: ...

    def encode(self, image: np.ndarray) -> bytes: ...

    tracks: bool  # the robot tracks one item per frame (sidecar track_hint from its own tracker)

    def simulation(self, truth: Any) -> SimulationTruth: ...


class _Classification:
    """A classifier's probabilities and scores; the robot tracks its one item per frame."""

    def edge_fields(self, model: Any, images: list[np.ndarray]) -> list[dict]:
        outputs = model.infer_batch(np.stack(images))
        fields = []
        for i, probs in enumerate(outputs.probs):
            uncertainty = None if outputs.uncertainty is None else outputs.uncertainty[i]
            fields.append(
                dict(
                    model_versions={"T4": model.version},
                    tier_outputs={"T4": probs.round(5).tolist()},
                    embedding=outputs.embedding[i].round(6).tolist(),
                    prediction=int(probs.argmax()),
                    confidence=float(probs.max()),
                    tier_used="T4",
                    scores={}
                    if uncertainty is None
                    else {"entropy": float(uncertainty[0]), "margin": float(uncertainty[1])},
                )
            )
        return fields

    def encode(self, image: np.ndarray) -> bytes:
        # OpenCV's default PNG settings: the bytes name the frame (sha256), so they stay as published
        ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("cannot encode a PNG")
        return buffer.tobytes()

    tracks = True

    def simulation(self, truth: Any) -> SimulationTruth:
        return SimulationTruth(label=truth.label, item=truth.item, track_id=truth.track_id, site=truth.site)


class _Detection:
    """A detector's boxes; a frame of several items has no one track to hint at."""

    def edge_fields(self, model: Any, images: list[np.ndarray]) -> list[dict]:
        fields = []
        for output in model.detect_batch(images):
            found = output.detections
            best = int(found.scores.argmax()) if len(found) else -1
            fields.append(
                dict(
                    model_versions={"T4": model.version},
                    detections={"T4": found.rows()},
                    prediction=int(found.classes[best]) if best >= 0 else NONE_INDEX,
                    confidence=float(found.scores[best]) if best >= 0 else 1.0,
                    tier_used="T4",
                    embedding=None if output.embedding is None else output.embedding.round(6).tolist(),
                )
            )
        return fields

    def encode(self, image: np.ndarray) -> bytes:
        return encode_image(image, "png")

    tracks = False  # several items per frame: no one track to hint at

    def simulation(self, truth: Any) -> SimulationTruth:
        return SimulationTruth(label=truth.label, item=-1, track_id=truth.track_id, site=truth.site, boxes=truth.rows())


FLEET_TASKS: dict[str, FleetTask] = {"classification": _Classification(), "detection": _Detection()}


@dataclass
class SimulatedFleet:
    """Robots at sites streaming frames of one ``task`` into a store (seeded; ``mode`` 'stream' or 'hard')."""

    store: ObjectStore
    robots: Sequence[tuple[str, sim.Site]]
    seed: int = 0
    edge_model: object = None  # the task's T4 model (TierModel or DetectorModel) for the sidecar's outputs, or None
    # the robot tracks items (sidecar track_hint) as the cascade does: consecutive frames whose T4
    # embeddings are at least ``track_similarity`` alike share a track (needs ``edge_model``; never truth)
    track_hints: bool = True
    track_similarity: float = 0.9
    random_every: int = 10  # every n-th frame is flagged as the unbiased random sample
    keep_every: int = 1
    mode: str = "stream"
    start_ns: int = sim.SIM_EPOCH_NS
    task: str = "classification"
    _part: FleetTask = field(init=False, repr=False)
    _streams: list = field(default_factory=list, init=False, repr=False)
    _counts: list = field(default_factory=list, init=False, repr=False)
    _trackers: dict = field(default_factory=dict, init=False, repr=False)
    _previous: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in FLEET_TASKS:
            raise ValueError(f"unknown task {self.task!r} (known: {', '.join(sorted(FLEET_TASKS))})")
        self._part = FLEET_TASKS[self.task]
        self._streams = [
            sim.CameraStream(
                site, robot, seed=self.seed, mode=self.mode, start_ns=self.start_ns + number * 10**12, task=self.task
            )
            for number, (robot, site) in enumerate(self.robots)
        ]
        self._counts = [0] * len(self.robots)

    def upload(self, frames_per_robot: int) -> list[Sidecar]:
        """Stream ``frames_per_robot`` more frames per robot and upload the kept ones; return their sidecars."""
        written = []
        for number, ((robot, site), stream) in enumerate(zip(self.robots, self._streams)):
            frames = list(stream.frames(frames_per_robot))
            edge = None
            if self.edge_model is not None:
                edge = self._part.edge_fields(self.edge_model, [f.image for f in frames])
            hints = self._track_hints(number, edge, len(frames))
            for i, frame in enumerate(frames):
                index = self._counts[number]
                self._counts[number] += 1
                if index % self.keep_every:
                    continue
                extra = {} if edge is None else edge[i]
                written.append(self._write(robot, site, frame, extra, index % self.random_every == 0, hints[i]))
        return written

    def _track_hints(self, number: int, edge: list[dict] | None, count: int) -> list[str | None]:
        """Return the robot tracker's id of each frame (every frame streamed, kept or not); None without one."""
        if not (self.track_hints and self.mode == "stream" and self._part.tracks and edge):
            return [None] * count
        chain = self._trackers.setdefault(number, TrackChain(f"{self.robots[number][0]}@sim", self.track_similarity))
        hints: list[str | None] = []
        for fields in edge:
            embedding = np.asarray(fields["embedding"], np.float32)
            previous = self._previous.get(number)
            similarity = None if previous is None else float(np.dot(previous, embedding))
            hints.append(chain.next(similarity))
            self._previous[number] = embedding
        return hints

    def _write(
        self, robot: str, site: sim.Site, frame: sim.SimFrame, extra: dict, random: bool, hint: str | None
    ) -> Sidecar:
        data = self._part.encode(frame.image)
        sidecar = Sidecar(
            robot_id=robot,
            stamp_ns=frame.stamp_ns,
            frame_sha256=hashlib.sha256(data).hexdigest(),
            width=frame.image.shape[1],
            height=frame.image.shape[0],
            labels=list(LABELS),
            decision=Decision(policy="simulated-all", score=1.0, random=random),
            track_hint=hint,
            site=site.name,
            simulation=self._part.simulation(frame.truth),
            **extra,
        )
        self.store.put_bytes(frame_key(sidecar), data)
        self.store.put_bytes(sidecar_key(sidecar), sidecar.to_json().encode())
        return sidecar
