"""The perception node: camera images in, the tier cascade's result per frame out.

Subscribes ``sensor_msgs/Image`` and/or ``sensor_msgs/CompressedImage`` topics (sensor-data QoS
by default), converts each message with ``fleetloop_core.ros_convert``, runs
``fleetloop_core.cascade`` and publishes ``fleetloop_interfaces/FrameResult`` with the image's
header. Nodes composed into the same process (selector, model manager) receive the decoded frame
and the result directly (:meth:`PerceptionNode.add_frame_sink`), without copying or serialising.

A malformed image (unknown encoding, wrong step, empty data, size mismatch) is counted, logged
with the reason and reported on ``/diagnostics``; the node keeps running.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from fleetloop_interfaces.msg import Detection2DArray, FrameResult, TierVersion
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from fleetloop_core.cascade import Cascade, FrameResult as CoreFrameResult
from fleetloop_core.detection import DetectionCascade, load_detection_cascade, model_task
from fleetloop_core.errors import InputError
from fleetloop_core.health import Check, LatencyWindow, RollingEvents, check
from fleetloop_core.inference import DEFAULT_PROVIDERS, TierModel
from fleetloop_core.ros_convert import UnsupportedEncoding, msg_to_rgb8
from fleetloop_ros.diagnostics import DiagnosticsPublisher
from fleetloop_ros.messages import detections_msg, frame_result_msg, stamp_ns
from fleetloop_ros.parameters import LiveParameters
from fleetloop_ros.settings import PERCEPTION_READ_ONLY, ImageQos, PerceptionSettings

FrameSink = Callable[[np.ndarray, CoreFrameResult, Header, str], None]
ErrorSink = Callable[[np.ndarray, Exception], None]
_PLAUSIBLE_LATENCY_NS = 60 * 1_000_000_000   # stamps further away are not wall-clock capture times
_MALFORMED_LOGGED = 20                        # malformed images logged one by one before every 100th


# Results: reliable and transient-local, so a reader that matched a moment after an answer was sent
# (a camera process that just started, in lockstep) still gets it; volatile readers match as well.
RESULTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=32, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def image_qos(kind: ImageQos) -> QoSProfile:
    """Return the subscription QoS for camera topics: sensor data (best effort) or reliable."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    # reliable: a few seconds of slack so a busy moment (a model swap warming up) loses nothing
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.RELIABLE)


def providers_for(use_gpu: bool) -> tuple[str, ...]:
    """Return the execution-provider preference: TensorRT, CUDA, CPU with a GPU; CPU otherwise."""
    return DEFAULT_PROVIDERS if use_gpu else ("CPUExecutionProvider",)


def load_cascade(settings: PerceptionSettings) -> Cascade | DetectionCascade:
    """Return the cascade of the reference models in ``settings.models_dir`` (verified, warm).

    The edge model's manifest ``task`` picks the cascade: classifiers or detectors.
    """
    root = Path(settings.models_dir)
    providers = providers_for(settings.use_gpu)
    if model_task(root / settings.edge_tier) == "detection":
        return load_detection_cascade(root, settings.edge_tier, settings.escalation_tier or None, settings.detection,
                                      providers, settings.intra_op_threads)
    edge = TierModel.load(root / settings.edge_tier, providers=providers, intra_op_threads=settings.intra_op_threads)
    escalation = None
    if settings.escalation_tier:
        escalation = TierModel.load(root / settings.escalation_tier, providers=providers,
                                    intra_op_threads=settings.intra_op_threads)
    return Cascade(edge, escalation, settings.cascade)


def tier_versions(cascade: Cascade) -> list[TierVersion]:
    """Return the serving model per cascade role (name, version, provider really in use)."""
    versions = []
    for role, model in (("edge", cascade.edge), ("escalation", cascade.escalation)):
        if model is not None:
            versions.append(TierVersion(tier=model.tier, role=role, name=model.manifest.name, version=model.version,
                                        execution_provider=model.providers[0] if model.providers else ""))
    return versions


class PerceptionNode(Node):
    """Camera frames -> cascade -> FrameResult (and frame sinks in the same process)."""

    def __init__(self, node_name: str = "perception", namespace: str = "", parameter_overrides: Sequence = (),
                 cascade: Cascade | None = None, **node_kwargs):
        super().__init__(node_name, namespace=namespace, parameter_overrides=list(parameter_overrides), **node_kwargs)
        self.parameters = LiveParameters(self, PerceptionSettings, PerceptionSettings(), PERCEPTION_READ_ONLY,
                                         apply=self._apply)
        settings = self.parameters.current
        self.robot_id = settings.robot_id
        self.cascade = cascade if cascade is not None else load_cascade(settings)
        self.detects = isinstance(self.cascade, DetectionCascade)
        self.cascade.config = settings.detection if self.detects else settings.cascade
        self._health = settings.health
        self._sinks: list[FrameSink] = []
        self._error_sinks: list[ErrorSink] = []
        self._versions_of: tuple = ()
        self._versions: list[TierVersion] = []
        window = settings.health.window_s
        self._received = RollingEvents(window)
        self._answered = RollingEvents(window)
        self._malformed = RollingEvents(window)
        self._errors = RollingEvents(window)
        self._escalated = RollingEvents(window)
        self._latency = LatencyWindow()
        self._malformed_kinds: Counter[str] = Counter()
        self._last_malformed = ""
        self._sequence = 0
        self._frames_group = MutuallyExclusiveCallbackGroup()   # one frame at a time through the cascade
        self._timers_group = MutuallyExclusiveCallbackGroup()
        self._publisher = self.create_publisher(FrameResult, settings.results_topic, RESULTS_QOS)
        # detectors: the boxes on their own topic; FrameResult still carries the frame's summary and scores
        self._detections = self.create_publisher(Detection2DArray, settings.detections_topic, 10) \
            if self.detects else None
        self._labels = list(self.cascade.frame_labels) if self.detects else self.cascade.edge.labels
        qos = image_qos(settings.image_qos)
        self._image_subscriptions = []
        for topic in settings.image_topics:
            self._subscribe(Image, topic, qos)
        for topic in settings.compressed_topics:
            self._subscribe(CompressedImage, topic, qos)
        self._diagnostics = DiagnosticsPublisher(self, self.checks, settings.robot_id, settings.health.period_s,
                                                 self._timers_group)
        streams = ", ".join(s.topic_name for s in self._image_subscriptions)
        self.get_logger().info(f"perception up: {streams} -> {self._publisher.topic_name}; serving "
                               + ", ".join(f"{v.tier} {v.name} {v.version} on {v.execution_provider}"
                                           for v in tier_versions(self.cascade)))

    def _subscribe(self, kind: type, topic: str, qos: QoSProfile) -> None:
        stream: list[str] = []      # the resolved topic (namespace included), known once subscribed
        subscription = self.create_subscription(kind, topic, lambda msg: self._on_image(stream[0], msg), qos,
                                                callback_group=self._frames_group)
        stream.append(subscription.topic_name)
        self._image_subscriptions.append(subscription)

    # ------------------------------------------------------------------ wiring
    def add_frame_sink(self, sink: FrameSink) -> None:
        """Call ``sink(frame, result, header, stream)`` after every answered frame (same process, no copy)."""
        self._sinks.append(sink)

    def add_error_sink(self, sink: ErrorSink) -> None:
        """Call ``sink(frame, error)`` when the cascade fails on a frame (not for malformed images)."""
        self._error_sinks.append(sink)

    def _apply(self, settings: PerceptionSettings) -> None:
        # one reference: the next frame sees all of it
        self.cascade.config = settings.detection if self.detects else settings.cascade
        for events in (self._received, self._answered, self._malformed, self._errors, self._escalated):
            events.window_s = settings.health.window_s
        self._health = settings.health

    def _on_image(self, stream: str, msg: Image | CompressedImage) -> None:
        self._received.add()
        self._sequence += 1
        try:
            frame = msg_to_rgb8(msg)
        except InputError as exc:
            self._on_malformed(stream, msg, exc)
            return
        try:
            result = self.cascade.infer(frame, stream=stream)
        except Exception as exc:  # a model failure: counted, reported, the node keeps serving
            self._errors.add()
            self.get_logger().error(f"{stream}: inference failed on frame {self._sequence}: {exc}",
                                    throttle_duration_sec=5.0)
            for sink in self._error_sinks:
                sink(frame, exc)
            return
        self._answered.add()
        self._latency.add(result.total_latency_s)
        if result.escalated:
            self._escalated.add()
        header = msg.header
        delay_ns = time.time_ns() - stamp_ns(header.stamp)
        latency_ms = delay_ns / 1e6 if 0 <= delay_ns < _PLAUSIBLE_LATENCY_NS else math.nan
        self._publisher.publish(frame_result_msg(result, header, stream, self._sequence, self._labels,
                                                 self._serving_versions(), latency_ms))
        if self._detections is not None:
            self._detections.publish(detections_msg(result, header, stream, self._sequence, self.cascade.edge.labels,
                                                    self._serving_versions()))
        for sink in self._sinks:
            try:
                sink(frame, result, header, stream)
            except Exception as exc:  # a composed node's failure must not stop perception
                self.get_logger().error(f"{stream}: frame sink {getattr(sink, '__qualname__', sink)} failed: {exc}",
                                        throttle_duration_sec=5.0)

    def _on_malformed(self, stream: str, msg: Image | CompressedImage, exc: InputError) -> None:
        kind = "unsupported_encoding" if isinstance(exc, UnsupportedEncoding) else "malformed"
        self._malformed.add()
        self._malformed_kinds[kind] += 1
        self._last_malformed = f"{stream}: {exc}"
        count = self._malformed.total
        # every one of the first few, then every 100th: a broken camera driver must not flood the log
        if count <= _MALFORMED_LOGGED or count % 100 == 0:
            self.get_logger().warning(
                f"dropped malformed image on {stream} (stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}, "
                f"{count} so far): {exc}")

    def _serving_versions(self) -> list[TierVersion]:
        models = (self.cascade.edge, self.cascade.escalation)
        if models != self._versions_of:            # recomputed only after a swap
            self._versions_of, self._versions = models, tier_versions(self.cascade)
        return self._versions

    # ------------------------------------------------------------------ health
    def checks(self) -> list[Check]:
        """Return the perception checks: frames (received, malformed, dropped) and inference latency."""
        health = self._health
        received = self._received.count()
        lost = self._malformed.count() + self._errors.count()
        dropped_fraction = lost / received if received else 0.0
        frames = check("frames", {"dropped_fraction": (dropped_fraction, health.dropped_fraction)}, {
            "frames_per_s": self._answered.per_second(),
            "received_total": self._received.total,
            "answered_total": self._answered.total,
            "malformed_total": self._malformed.total,
            "unsupported_encoding_total": self._malformed_kinds["unsupported_encoding"],
            "inference_errors_total": self._errors.total,
            "dropped_in_window": lost,
            "last_malformed": self._last_malformed,
        }, ok_message="receiving" if received else "no frames in the window")
        p50, p99 = self._latency.percentile_ms(50), self._latency.percentile_ms(99)
        answered = self._answered.count()
        values: dict[str, object] = {
            "latency_p50_ms": p50 if p50 is not None else math.nan,
            "latency_p99_ms": p99 if p99 is not None else math.nan,
            "escalation_rate": self._escalated.count() / answered if answered else 0.0,
        }
        for version in self._serving_versions():
            values[f"{version.tier}_version"] = f"{version.name} {version.version}"
            values[f"{version.tier}_execution_provider"] = version.execution_provider
        inference = check("inference", {"latency_p99_ms": (p99, health.latency_p99_ms)}, values)
        return [frames, inference]


def main(args: list[str] | None = None) -> int:
    """Run the perception node alone (fixed models; the model_manager executable adds hot-swap)."""
    from fleetloop_ros.runner import run_nodes
    return run_nodes(lambda: [PerceptionNode()], args)
