"""The perception node: camera images in, the tier cascade's result per frame out.

Subscribes ``sensor_msgs/Image`` and/or ``sensor_msgs/CompressedImage`` topics (sensor-data QoS
by default), converts each message with ``fleetloop_core.ros_convert``, runs
``fleetloop_core.cascade`` and publishes ``fleetloop_interfaces/FrameResult`` with the image's
header. Nodes composed into the same process (selector, model manager) receive the decoded frame
and the result directly (:meth:`PerceptionNode.add_frame_sink`), without copying or serialising.

A malformed image (unknown encoding, wrong step, empty data, size mismatch) is counted, logged
with the reason and reported on ``/diagnostics``; the node keeps running.

Images are taken from DDS as serialised bytes (``raw=True``) and deserialised here. Measured with
the Fast DDS 3.2.3 of these wheels: after a Cyclone DDS camera went away while this reader's
history was full, the DataReader held a sample it could neither deserialise nor remove, and a
typed take retried it forever inside ``DataReader::take`` with the GIL held (py-spy: every thread
stopped, SIGINT ignored, only SIGKILL ended it). A raw take copies the bytes without parsing them,
so such a sample reaches Python, is counted as undeliverable, and when the same one comes back
again and again the subscription is created anew (a new DataReader, an empty history).

``/diagnostics`` tells the truth about the input (``input`` check, per topic): no publisher, a
publisher whose QoS or type cannot match, publishers seen but not matched (another vendor's
camera), a matched publisher and no frames, and frames lost in transport, counted from gaps in
the cameras' header stamps (``fleetloop_core.stream_health.StampGaps``). The ``liveness`` check turns
ERROR when the frame path has not answered for ``health.frame_deadline_s`` (the runner's watchdog
publishes it even while the executor is stuck).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from fleetloop_interfaces.msg import Detection2DArray, FrameResult, TierVersion
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_policy_name_from_kind,
)
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from fleetloop_core.cascade import Cascade, FrameResult as CoreFrameResult
from fleetloop_core.detection_cascade import DetectionCascade
from fleetloop_core.errors import ConfigError, InputError
from fleetloop_core.health import Check, LatencyWindow, RollingEvents, check
from fleetloop_core.stream_health import (
    Liveness,
    input_check,
    liveness_check,
)
from fleetloop_core.ros_convert import UnsupportedEncoding, msg_to_rgb8
from fleetloop_core import tasks
from fleetloop_ros.diagnostics import DiagnosticsPublisher
from fleetloop_ros.image_inputs import ImageInput, image_qos, stream_facts
from fleetloop_ros.serving import load_cascade, tier_versions
from fleetloop_ros.messages import detections_msg, frame_result_msg, stamp_ns
from fleetloop_ros.parameters import LiveParameters
from fleetloop_ros.settings import PERCEPTION_READ_ONLY, PerceptionSettings

FrameSink = Callable[[np.ndarray, CoreFrameResult, Header, str], None]
ErrorSink = Callable[[np.ndarray, Exception], None]
_PLAUSIBLE_LATENCY_NS = 60 * 1_000_000_000  # stamps further away are not wall-clock capture times
_MALFORMED_LOGGED = 20  # malformed images logged one by one before every 100th


# Results: reliable and transient-local, so a reader that matched a moment after an answer was sent
# (a camera process that just started, in lockstep) still gets it; volatile readers match as well.
RESULTS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=32,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


WATCHDOG_LOGS = ("liveness",)  # checks the runner's watchdog logs itself (a freeze, with the stacks)


class PerceptionNode(Node):
    """Camera frames -> cascade -> FrameResult (and frame sinks in the same process)."""

    def __init__(
        self,
        node_name: str = "perception",
        namespace: str = "",
        parameter_overrides: Sequence = (),
        cascade: Cascade | None = None,
        **node_kwargs,
    ):
        super().__init__(node_name, namespace=namespace, parameter_overrides=list(parameter_overrides), **node_kwargs)
        self.parameters = LiveParameters(
            self, PerceptionSettings, PerceptionSettings(), PERCEPTION_READ_ONLY, apply=self._apply
        )
        settings = self.parameters.current
        self.robot_id = settings.robot_id
        self.cascade = cascade if cascade is not None else load_cascade(settings)
        self.detects = isinstance(self.cascade, DetectionCascade)
        self._config_key = tasks.task_of(self.cascade.edge).config_key
        self.cascade.config = getattr(settings, self._config_key)
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
        self.liveness: Liveness | None = None  # set by the runner: how long the frame path has not turned
        self._malformed_kinds: Counter[str] = Counter()
        self._last_malformed = ""
        self._sequence = 0
        self._frames_group = MutuallyExclusiveCallbackGroup()  # one frame at a time through the cascade
        self._timers_group = MutuallyExclusiveCallbackGroup()
        self._publisher = self.create_publisher(FrameResult, settings.results_topic, RESULTS_QOS)
        # detectors: the boxes on their own topic; FrameResult still carries the frame's summary and scores
        self._detections = (
            self.create_publisher(Detection2DArray, settings.detections_topic, 10) if self.detects else None
        )
        self._labels = list(self.cascade.frame_labels)
        qos = image_qos(settings.image_qos)
        self.inputs = [
            ImageInput(kind, topic, qos, window, settings.health.gap_as_loss_s)
            for kind, topics in ((Image, settings.image_topics), (CompressedImage, settings.compressed_topics))
            for topic in topics
        ]
        for image_input in self.inputs:
            self._subscribe(image_input)
        self._diagnostics = DiagnosticsPublisher(
            self, self.checks, settings.robot_id, settings.health.period_s, self._timers_group, quiet=WATCHDOG_LOGS
        )
        streams = ", ".join(i.stream for i in self.inputs)
        self.get_logger().info(
            f"perception up: {streams} -> {self._publisher.topic_name}; serving "
            + ", ".join(f"{v.tier} {v.name} {v.version} on {v.execution_provider}" for v in tier_versions(self.cascade))
        )

    def _subscribe(self, image_input: ImageInput) -> None:
        def incompatible(info) -> None:
            image_input.incompatible_policy = qos_policy_name_from_kind(info.last_policy_kind)

        def lost(info) -> None:
            image_input.lost_by_dds = int(info.total_count)

        events = SubscriptionEventCallbacks(incompatible_qos=incompatible, message_lost=lost)
        image_input.subscription = self.create_subscription(
            image_input.kind,
            image_input.topic,
            lambda raw: self._on_raw(image_input, raw),
            image_input.qos,
            callback_group=self._frames_group,
            event_callbacks=events,
            raw=True,
        )
        image_input.stream = image_input.subscription.topic_name

    def _on_raw(self, image_input: ImageInput, raw: bytes) -> None:
        try:
            msg = deserialize_message(raw, image_input.kind)
        except Exception as exc:  # rclpy raises its RMWError family: bytes DDS delivered that are no message
            self._on_undeliverable(image_input, raw, exc)
            return
        image_input.repeats.good()
        image_input.gaps.add(stamp_ns(msg.header.stamp))
        self._on_image(image_input.stream, msg)

    def _on_undeliverable(self, image_input: ImageInput, raw: bytes, exc: Exception) -> None:
        image_input.undeliverable.add()
        self._received.add()
        self._malformed.add()
        self._malformed_kinds["undeliverable"] += 1
        self._last_malformed = f"{image_input.stream}: {len(raw)} bytes from DDS that are no {image_input.type_name}"
        self.get_logger().warning(f"{self._last_malformed} ({exc})", throttle_duration_sec=5.0)
        if image_input.repeats.bad(raw):
            # the reader hands over the same sample again and again: it cannot drop it. A new reader can.
            image_input.resets += 1
            self.get_logger().error(
                f"{image_input.stream}: DDS keeps handing over the same undeliverable sample ({len(raw)} bytes): "
                f"creating the subscription anew (reset {image_input.resets})"
            )
            self.destroy_subscription(image_input.subscription)
            self._subscribe(image_input)

    # ------------------------------------------------------------------ wiring
    def add_frame_sink(self, sink: FrameSink) -> None:
        """Call ``sink(frame, result, header, stream)`` after every answered frame (same process, no copy)."""
        self._sinks.append(sink)

    def add_error_sink(self, sink: ErrorSink) -> None:
        """Call ``sink(frame, error)`` when the cascade fails on a frame (not for malformed images)."""
        self._error_sinks.append(sink)

    def _apply(self, settings: PerceptionSettings) -> None:
        live = self._config_key
        for task in tasks.TASKS.values():
            block = task.config_key
            if block != live and getattr(settings, block, None) != getattr(self.parameters.current, block, None):
                # every task's block is a parameter (the task is known only once the models load): refuse the others
                served = tasks.task_of(self.cascade.edge).name
                raise ConfigError(f"{block}.* does not apply: this node serves {served} models; set {live}.* instead")
        # one reference: the next frame sees all of it
        self.cascade.config = getattr(settings, live)
        for events in (
            self._received,
            self._answered,
            self._malformed,
            self._errors,
            self._escalated,
            *(i.undeliverable for i in self.inputs),
        ):
            events.window_s = settings.health.window_s
        for image_input in self.inputs:
            image_input.gaps.window_s = settings.health.window_s
            image_input.gaps.gap_as_loss_s = settings.health.gap_as_loss_s
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
            self.get_logger().error(
                f"{stream}: inference failed on frame {self._sequence}: {exc}", throttle_duration_sec=5.0
            )
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
        self._publisher.publish(
            frame_result_msg(result, header, stream, self._sequence, self._labels, self._serving_versions(), latency_ms)
        )
        if self._detections is not None:
            self._detections.publish(
                detections_msg(
                    result, header, stream, self._sequence, self.cascade.edge.labels, self._serving_versions()
                )
            )
        for sink in self._sinks:
            try:
                sink(frame, result, header, stream)
            except Exception as exc:  # a composed node's failure must not stop perception
                self.get_logger().error(
                    f"{stream}: frame sink {getattr(sink, '__qualname__', sink)} failed: {exc}",
                    throttle_duration_sec=5.0,
                )

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
                f"{count} so far): {exc}"
            )

    def _serving_versions(self) -> list[TierVersion]:
        models = (self.cascade.edge, self.cascade.escalation)
        if models != self._versions_of:  # recomputed only after a swap
            self._versions_of, self._versions = models, tier_versions(self.cascade)
        return self._versions

    # ------------------------------------------------------------------ health
    def checks(self) -> list[Check]:
        """Return the perception checks: frames (received, malformed, dropped) and inference latency."""
        health = self._health
        received = self._received.count()
        lost = self._malformed.count() + self._errors.count()
        dropped_fraction = lost / received if received else 0.0
        frames = check(
            "frames",
            {"dropped_fraction": (dropped_fraction, health.dropped_fraction)},
            {
                "frames_per_s": self._answered.per_second(),
                "received_total": self._received.total,
                "answered_total": self._answered.total,
                "malformed_total": self._malformed.total,
                "unsupported_encoding_total": self._malformed_kinds["unsupported_encoding"],
                "undeliverable_total": self._malformed_kinds["undeliverable"],
                "subscription_resets_total": sum(i.resets for i in self.inputs),
                "inference_errors_total": self._errors.total,
                "dropped_in_window": lost,
                "last_malformed": self._last_malformed,
            },
            ok_message="receiving" if received else "no frames in the window",
        )
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
        stalled = self.liveness.stalled_s() if self.liveness is not None else 0.0
        liveness = liveness_check(
            stalled,
            health,
            {
                "stalled_s": stalled,
                "longest_stall_s": self.liveness.longest_s if self.liveness is not None else 0.0,
                "watched": self.liveness is not None,
            },
        )
        return [frames, self._input_check(health), inference, liveness]

    def _input_check(self, health) -> Check:
        facts = [stream_facts(self, image_input, time.monotonic()) for image_input in self.inputs]
        return input_check(facts, health, health.window_s, self.parameters.current.dds.transport)

    def publish_diagnostics(self) -> None:
        """Publish the checks now (the runner's watchdog does, while the executor is stuck)."""
        self._diagnostics.publish()


def main(args: list[str] | None = None) -> int:
    """Run the perception node alone (fixed models; the model_manager executable adds hot-swap)."""
    from fleetloop_ros.runner import run_nodes

    run_nodes(lambda: [PerceptionNode()], args)
