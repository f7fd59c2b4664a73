"""A perception node's camera inputs: one raw subscription per topic, its QoS, and what the graph
and the stamps say about it (the facts ``fleetloop_core.stream_health.input_check`` grades).

Wiring only: the facts are read from rclpy (matched publishers, their QoS and node names) and from
the counters the node keeps per input; what they mean is decided in ``fleetloop_core.stream_health``.
"""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from fleetloop_core.health import RollingEvents
from fleetloop_core.stream_health import PublisherFacts, RepeatedSample, StampGaps, StreamFacts
from fleetloop_ros.settings import ImageQos

BARE_DDS_NODE = "_CREATED_BY_BARE_DDS_APP_"  # the node name rmw gives a DDS writer without ROS (another vendor)


class ImageInput:
    """One camera topic: its raw subscription and what is known about what arrives on it."""

    def __init__(self, kind: type, topic: str, qos: QoSProfile, window_s: float, gap_as_loss_s: float):
        self.kind = kind
        self.type_name = f"sensor_msgs/msg/{kind.__name__}"
        self.topic = topic  # as configured; ``stream`` is the resolved name
        self.qos = qos
        self.stream = topic
        self.subscription = None
        self.gaps = StampGaps(window_s, gap_as_loss_s)
        self.repeats = RepeatedSample()
        self.undeliverable = RollingEvents(window_s)
        self.resets = 0
        self.lost_by_dds = 0  # samples DDS itself reported lost (message_lost events)
        self.incompatible_policy = ""
        self.unmatched_since: float | None = None

    @property
    def reliable(self) -> bool:
        return self.qos.reliability == ReliabilityPolicy.RELIABLE


def image_qos(kind: ImageQos) -> QoSProfile:
    """Return the subscription QoS for camera topics: sensor data (best effort) or reliable."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    # reliable: a few seconds of slack so a busy moment (a model swap warming up) loses nothing
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.RELIABLE)


def stream_facts(node: Node, image_input: ImageInput, now: float) -> StreamFacts:
    """Return what the graph and the stamps say about one input now (``now``: time.monotonic())."""
    matched = image_input.subscription.get_publisher_count()
    publishers = tuple(
        PublisherFacts(
            node="" if info.node_name in ("", BARE_DDS_NODE) else f"{info.node_namespace.rstrip('/')}/{info.node_name}",
            type_name=info.topic_type,
            reliable=info.qos_profile.reliability == ReliabilityPolicy.RELIABLE,
        )
        for info in node.get_publishers_info_by_topic(image_input.stream)
    )
    if publishers and not matched:
        image_input.unmatched_since = image_input.unmatched_since or now
    else:
        image_input.unmatched_since = None
    if matched:
        image_input.incompatible_policy = ""  # the event says "last"; a match since ends it
    received, lost = image_input.gaps.counts()
    return StreamFacts(
        topic=image_input.stream,
        type_name=image_input.type_name,
        reliable=image_input.reliable,
        matched=matched,
        publishers=publishers,
        received=received,
        lost=lost,
        lost_fraction=image_input.gaps.lost_fraction(),
        incompatible_policy=image_input.incompatible_policy,
        undeliverable=image_input.undeliverable.count(),
        lost_by_dds=image_input.lost_by_dds,
        unmatched_s=now - image_input.unmatched_since if image_input.unmatched_since else 0.0,
        unstamped=image_input.gaps.unstamped_in_window(),
    )
