"""Read and write rosbag2 image recordings (sqlite3 or MCAP storage) through ``rosbags``, no ROS needed.

:class:`BagReader` yields every ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` of a bag
as RGB frames with their stamps; bad input is reported, not fatal: an unknown image encoding is
counted per encoding, a truncated or corrupt message is reported with its topic and message index
and skipped, and a bag that stops being readable mid-way ends with what was read so far.
:func:`write_image_bag` records frames as a bag (tests, the sample bag, the simulated fleet).

Robots and streams come from topic names: ``/<robot>/<stream...>`` (e.g.
``/robot_0/front/image_raw`` is robot ``robot_0``, stream ``front/image_raw``); a topic with
a single level belongs to robot ``robot``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from fleetloop_core.errors import FleetLoopError, InputError
from fleetloop_core.ros_convert import (
    UnsupportedEncoding,
    array_to_image,
    compressed_to_rgb8,
    image_to_rgb8,
    rgb8_to_compressed,
)

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)


class ReplayError(FleetLoopError):
    """A bag cannot be opened or holds no image topics (message names the path)."""


# --------------------------------------------------------------------------- reading bags


@dataclass(frozen=True)
class BagFrame:
    """One decoded image message: uint8 RGB frame, stamp (ns), where it came from."""

    topic: str
    index: int  # message index within its topic, from 0
    stamp_ns: int
    image: np.ndarray
    robot_id: str
    stream: str
    encoded_bytes: int  # size of the message's image data as recorded


@dataclass(frozen=True)
class BagProblem:
    """A message (or the rest of the bag) that could not be used, and why."""

    topic: str
    index: int
    kind: str  # unknown_encoding | corrupt | read_error | unreadable_bag
    detail: str

    def __str__(self) -> str:
        return f"{self.topic} message {self.index}: {self.kind}: {self.detail}"


def robot_and_stream(topic: str) -> tuple[str, str]:
    """Return (robot id, stream) of a topic: ``/robot_0/front/image_raw`` -> (robot_0, front/image_raw)."""
    parts = [p for p in topic.split("/") if p]
    if len(parts) < 2:
        return "robot", "/".join(parts) or "camera"
    return parts[0], "/".join(parts[1:])


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _stamp(msg: Any, log_time_ns: int) -> int:
    header = getattr(msg, "header", None)
    if header is not None:
        stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        if stamp > 0:
            return stamp
    return int(log_time_ns)


class BagReader:
    """Image messages of one rosbag2 (directory or single .mcap/.db3 file), as frames or problems.

    A context manager; :meth:`frames` yields :class:`BagFrame` and :class:`BagProblem` in log
    order. ``message_count`` is the number of image messages the bag announces.
    """

    def __init__(self, path: str | Path, topics: Sequence[str] | None = None):
        self.path = Path(path)
        self.topics = list(topics) if topics else None
        self._reader: Any = None  # rosbags' AnyReader once open
        self.connections: list = []
        self.message_count = 0
        self.duration_s = 0.0
        self.skipped_topics: dict[str, str] = {}

    def __enter__(self) -> "BagReader":
        from rosbags.highlevel import AnyReader

        if not self.path.exists():
            raise ReplayError(f"{self.path}: no such bag")
        try:
            reader = AnyReader([self.path], default_typestore=_typestore())
            reader.open()
        except Exception as exc:  # rosbags raises its own error family and OSError/KeyError for damage
            raise ReplayError(
                f"{self.path}: cannot open the bag ({type(exc).__name__}: {exc}); if it is a recording "
                "cut short (no index), `ros2 bag reindex` or `mcap recover` can rebuild it"
            ) from exc
        self._reader = reader
        for connection in reader.connections:
            if connection.msgtype in IMAGE_TYPES and (self.topics is None or connection.topic in self.topics):
                self.connections.append(connection)
            else:
                self.skipped_topics[connection.topic] = connection.msgtype
        if not self.connections:
            found = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
            self.close()
            raise ReplayError(
                f"{self.path}: no sensor_msgs Image/CompressedImage topics"
                f"{' among ' + str(self.topics) if self.topics else ''} (topics: {found})"
            )
        self.message_count = sum(c.msgcount for c in self.connections)
        self.duration_s = max(reader.duration, 0) / 1e9
        return self

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self) -> Iterator[BagFrame | BagProblem]:
        """Yield each image message decoded, or the problem that kept it from being decoded."""
        reader = self._reader
        if reader is None:
            raise ReplayError(f"{self.path}: bag is not open (use `with BagReader(...)`)")
        counters: Counter[str] = Counter()
        iterator = reader.messages(connections=self.connections)
        last_topic = self.connections[0].topic
        while True:
            try:
                connection, log_time, raw = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a damaged chunk or page: nothing after it can be trusted
                yield BagProblem(
                    last_topic,
                    counters[last_topic],
                    "read_error",
                    f"bag unreadable after this point ({type(exc).__name__}: {exc})",
                )
                return
            topic = last_topic = connection.topic
            index = counters[topic]
            counters[topic] += 1
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # truncated or corrupt CDR
                yield BagProblem(
                    topic,
                    index,
                    "corrupt",
                    f"cannot deserialize {connection.msgtype} ({len(raw)} bytes): {type(exc).__name__}: {exc}",
                )
                continue
            try:
                if connection.msgtype == COMPRESSED:
                    image = compressed_to_rgb8(msg.format, msg.data)
                else:
                    image = image_to_rgb8(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
            except UnsupportedEncoding:
                yield BagProblem(topic, index, "unknown_encoding", str(msg.encoding))
                continue
            except InputError as exc:
                yield BagProblem(topic, index, "corrupt", str(exc))
                continue
            robot, stream = robot_and_stream(topic)
            yield BagFrame(
                topic=topic,
                index=index,
                stamp_ns=_stamp(msg, log_time),
                image=image,
                robot_id=robot,
                stream=stream,
                encoded_bytes=len(msg.data),
            )


# --------------------------------------------------------------------------- writing bags


def write_image_bag(
    path: str | Path, messages: Iterable[tuple[str, int, Any]], storage: str = "mcap", compressed_format: str = "jpeg"
) -> int:
    """Write a rosbag2 at ``path`` (must not exist); return the number of messages written.

    ``messages`` yields (topic, stamp_ns, payload) where payload is a uint8 RGB array (written
    as rgb8 Image, or as CompressedImage when the topic ends in ``/compressed``), an
    ``ImageFields`` from :func:`fleetloop_core.ros_convert.array_to_image` (any encoding), or raw
    ``bytes`` written as they are (to make corrupt messages for tests).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ReplayError(f"unknown bag storage {storage!r} (known: {', '.join(plugins)})")
    typestore = _typestore()
    Image, CompressedImage = typestore.types[IMAGE], typestore.types[COMPRESSED]
    Header, Time = typestore.types["std_msgs/msg/Header"], typestore.types["builtin_interfaces/msg/Time"]
    connections: dict[str, Any] = {}
    count = 0
    with Writer(Path(path), version=9, storage_plugin=plugins[storage]) as writer:
        for topic, stamp_ns, payload in messages:
            compressed = topic.endswith("/compressed")
            msgtype = COMPRESSED if compressed else IMAGE
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            header = Header(
                stamp=Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                frame_id=topic.strip("/").split("/")[-2] if topic.count("/") > 1 else "camera",
            )
            if isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            elif compressed:
                fmt, blob = rgb8_to_compressed(payload, compressed_format)
                data = typestore.serialize_cdr(
                    CompressedImage(header=header, format=fmt, data=np.frombuffer(blob, np.uint8)), msgtype
                )
            else:
                fields = payload if not isinstance(payload, np.ndarray) else array_to_image(payload, "rgb8")
                data = typestore.serialize_cdr(
                    Image(
                        header=header,
                        height=fields.height,
                        width=fields.width,
                        encoding=fields.encoding,
                        is_bigendian=fields.is_bigendian,
                        step=fields.step,
                        data=np.frombuffer(fields.data, np.uint8),
                    ),
                    msgtype,
                )
            writer.write(connections[topic], int(stamp_ns), data)
            count += 1
    return count
