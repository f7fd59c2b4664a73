"""What the bring-up camera sends: frames of the simulated world or of a rosbag2, as sensor_msgs messages.

Three sources (:class:`FrameSource`): a live simulated robot (its endless, seeded stream, from any
frame index, each frame drawn when sent), a cycle of at most 200 simulated frames drawn once, or the
Image / CompressedImage messages of a bag (sqlite3 or MCAP, read with ``rosbags``) republished.
Pacing, lockstep and publishing are the node's (``fleetloop_ros.camera_replay``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from fleetloop_core.errors import ConfigError
from fleetloop_core.ros_convert import SEMI_PLANAR_ENCODINGS, array_to_image, rgb8_to_compressed, rgb8_to_semi_planar
from fleetloop_ros.messages import time_msg

T = TypeVar("T")


def _checked(make: Callable[[], T]) -> T:
    """Return ``make()``; the simulated camera's refusal (a frame size it cannot draw) as the option's error."""
    try:
        return make()
    except ValueError as exc:
        raise ConfigError(f"camera --source sim: {exc} (--width / --height)") from None


def sim_frames(count: int, height: int, width: int, site: int = 0, seed: int = 0) -> list[np.ndarray]:
    """Return ``count`` uint8 RGB frames of one simulated robot camera (rendered once, replayed in a loop)."""
    from fleetloop_sim import sim

    stream = sim.CameraStream(sim.make_site(site, seed), robot=f"camera-{site}", seed=seed, height=height, width=width)
    return [frame.image for frame in stream.frames(count)]


def bag_messages(path: str | Path, topic: str | None = None) -> Iterator[tuple[str, object]]:
    """Yield (kind, message) for each Image / CompressedImage in a rosbag2 (rosbags dataclasses)."""
    from rosbags.highlevel import AnyReader

    kinds = {"sensor_msgs/msg/Image": "image", "sensor_msgs/msg/CompressedImage": "compressed"}
    with AnyReader([Path(path)]) as reader:
        connections = [c for c in reader.connections if c.msgtype in kinds and (topic is None or c.topic == topic)]
        if not connections:
            raise ConfigError(
                f"{path}: no sensor_msgs Image or CompressedImage topic" + (f" named {topic}" if topic else "")
            )
        for connection, _, raw in reader.messages(connections=connections):
            yield kinds[connection.msgtype], reader.deserialize(raw, connection.msgtype)


def _payload(frame: np.ndarray, encoding: str, compressed: bool):
    if compressed:
        return rgb8_to_compressed(frame, "jpeg")
    if encoding == "bgr8":
        frame = np.ascontiguousarray(frame[:, :, ::-1])
    elif encoding == "mono8":
        frame = np.ascontiguousarray(frame.mean(axis=2).astype(np.uint8))
    elif encoding in SEMI_PLANAR_ENCODINGS:  # what a Jetson (Argus) or GStreamer camera sends
        frame = rgb8_to_semi_planar(frame, encoding)
    return array_to_image(frame, encoding)


class FrameSource:
    """The frames of ``source`` (``sim`` or a bag path), one message at a time; ``kind``: image or compressed.

    ``live``: the simulated robot ``robot`` (default ``camera-<site>``) from frame ``start``, each frame
    drawn when sent (the fleet simulation's form); otherwise ``sim`` cycles ``min(count, 200)`` frames
    (200 when ``count`` is 0).
    """

    def __init__(
        self,
        source: str,
        count: int = 0,
        width: int = 128,
        height: int = 128,
        encoding: str = "rgb8",
        compressed: bool = False,
        site: int = 0,
        seed: int = 0,
        robot: str = "",
        start: int = 0,
        live: bool = False,
    ):
        self._live = None
        self._encoding, self._compressed = encoding, compressed
        if source == "sim" and live:
            from fleetloop_sim import sim

            self.kind = "compressed" if compressed else "image"
            self._live = _checked(
                lambda: sim.CameraStream(
                    sim.make_site(site, seed),
                    robot=robot or f"camera-{site}",
                    seed=seed,
                    height=height,
                    width=width,
                    start_ns=sim.SIM_EPOCH_NS,
                )
            )
            for _ in self._live.frames(start, render=False):
                pass
        elif source == "sim":
            self.kind = "compressed" if compressed else "image"
            frames = _checked(lambda: sim_frames(min(count, 200) if count else 200, height, width, site))
            self._payloads = itertools.cycle([_payload(f, encoding, compressed) for f in frames])
        else:
            messages = list(bag_messages(source))
            self.kind = messages[0][0]
            self._payloads = itertools.cycle([m for _, m in messages])

    def next_message(self, stamp_ns: int, frame_id: str, sim_stamps: bool = False) -> Image | CompressedImage:
        """Return the next frame as a message stamped ``stamp_ns`` (``sim_stamps``: the live robot's own stamp)."""
        if self._live is not None:
            frame = next(iter(self._live.frames(1)))
            payload = _payload(frame.image, self._encoding, self._compressed)
            if sim_stamps:
                stamp_ns = frame.stamp_ns
        else:
            payload = next(self._payloads)
        header = Header(stamp=time_msg(stamp_ns), frame_id=frame_id)
        if self.kind == "compressed":
            if isinstance(payload, tuple):
                fmt, data = payload
            else:
                fmt, data = payload.format, bytes(payload.data)
            return CompressedImage(header=header, format=fmt, data=data)
        return Image(
            header=header,
            height=int(payload.height),
            width=int(payload.width),
            encoding=str(payload.encoding),
            is_bigendian=int(payload.is_bigendian),
            step=int(payload.step),
            data=bytes(payload.data),
        )


__all__ = ["FrameSource", "bag_messages", "sim_frames"]
