"""The selector node: every answered frame is offered to ``fleetloop_core.selection.Selector``;
kept frames go into the on-disk ``fleetloop_core.upload_queue.UploadQueue`` with their sidecars.

Composed with perception (one process) it receives the decoded frame and the cascade result
directly (:meth:`SelectorNode.offer_frame` is a frame sink). Alone, it subscribes to the camera
topics and to ``frame_results`` and pairs each image with its result by stream and stamp.
Every decision is published as ``fleetloop_interfaces/FrameDecision``. The selection settings
(weights, policy name and params, budget, dedup, random fraction) are ROS parameters re-tunable
live; a change is validated by the core config model and applied to the selector atomically. Composed
with the model manager, data campaigns (signed ``fleetloop.update_selection`` jobs) change the same
selector; a parameter change while one runs becomes the selection under it and after it
(``Campaigns.set_base``: the campaign's keys win until it expires).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from fleetloop_interfaces.msg import FrameDecision, FrameResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from fleetloop_core.cascade import FrameResult as CoreFrameResult
from fleetloop_core.errors import InputError
from fleetloop_core.health import Check, RollingEvents, check
from fleetloop_core.ros_convert import msg_to_rgb8
from fleetloop_core.selection import Selector
from fleetloop_core.selection_campaigns import Campaigns
from fleetloop_core.selection_policies import POLICIES
from fleetloop_core.upload_queue import UploadQueue
from fleetloop_ros.diagnostics import DiagnosticsPublisher
from fleetloop_ros.messages import core_result_from_msg, frame_decision_msg, stamp_ns
from fleetloop_ros.parameters import LiveParameters, ParamSpec, parameter_specs
from fleetloop_ros.image_inputs import image_qos
from fleetloop_ros.settings import SELECTOR_READ_ONLY, SelectorSettings

POLICY_PARAMS = "selection.policy.params"


def policy_param_specs(active_policy: str) -> list[ParamSpec]:
    """Return one parameter per key any registered policy takes (``selection.policy.params.<key>``).

    Defaults come from the active policy where it has the key, else from the first policy that
    does; a key shared by several policies keeps its value when the policy is switched live.
    Per-class ``shares`` (a mapping) are YAML-only.
    """
    specs: dict[str, ParamSpec] = {}
    ordered = sorted(POLICIES, key=lambda name: name != active_policy)
    for name in ordered:
        model = POLICIES[name].params
        for spec in parameter_specs(model(), prefix=f"{POLICY_PARAMS}."):
            if spec.name.count(".") == POLICY_PARAMS.count(".") + 1 and spec.name not in specs:
                specs[spec.name] = spec
    return list(specs.values())


def keep_active_policy_params(nested: dict[str, Any]) -> dict[str, Any]:
    """Return ``nested`` with ``selection.policy.params`` reduced to the keys the named policy takes."""
    policy = nested.get("selection", {}).get("policy", {})
    entry = POLICIES.get(policy.get("name"))
    if entry is not None and isinstance(policy.get("params"), dict):
        policy["params"] = {k: v for k, v in policy["params"].items() if k in entry.params.model_fields}
    return nested


class _Pairing:
    """Images and results waiting for their partner, keyed by (stream, stamp ns); oldest dropped first.

    A stamp names one frame only if the camera stamps: frames stamped 0 are not paired (``unstamped``),
    since a result would be joined to whichever unstamped image came last, and a second image or result
    under a key already waiting replaces the first, which is counted unpaired."""

    def __init__(self, depth: int):
        self.depth = depth
        self.images: OrderedDict[tuple[str, int], Image | CompressedImage] = OrderedDict()
        self.results: OrderedDict[tuple[str, int], FrameResult] = OrderedDict()
        self.unpaired = 0
        self.unstamped = 0  # images stamped 0

    def _add(self, store: OrderedDict, key: tuple[str, int], value: Any) -> None:
        self.unpaired += key in store
        store[key] = value
        while len(store) > self.depth:
            store.popitem(last=False)
            self.unpaired += 1

    def image(self, key: tuple[str, int], msg: Image | CompressedImage) -> FrameResult | None:
        if key[1] <= 0:
            self.unstamped += 1
            return None
        result = self.results.pop(key, None)
        if result is None:
            self._add(self.images, key, msg)
        return result

    def result(self, key: tuple[str, int], msg: FrameResult) -> Image | CompressedImage | None:
        if key[1] <= 0:
            return None
        image = self.images.pop(key, None)
        if image is None:
            self._add(self.results, key, msg)
        return image


class SelectorNode(Node):
    """Frames + results -> Selector.offer -> UploadQueue.put; FrameDecision per frame."""

    def __init__(
        self,
        node_name: str = "selector",
        namespace: str = "",
        parameter_overrides: Sequence = (),
        composed: bool = False,
        labels: Sequence[str] | None = None,
        **node_kwargs,
    ):
        super().__init__(node_name, namespace=namespace, parameter_overrides=list(parameter_overrides), **node_kwargs)
        defaults = SelectorSettings()
        self.declare_parameter("selection.policy.name", defaults.selection.policy.name)
        active = self.get_parameter("selection.policy.name").value
        self.undeclare_parameter("selection.policy.name")
        self.parameters = LiveParameters(
            self,
            SelectorSettings,
            defaults,
            SELECTOR_READ_ONLY,
            apply=self._apply,
            skip=(POLICY_PARAMS,),
            extra_specs=policy_param_specs(active),
            normalise=keep_active_policy_params,
        )
        settings = self.parameters.current
        self.robot_id = settings.robot_id
        self._health = settings.health
        self.queue = UploadQueue.from_config(settings.queue)
        self._selector: Selector | None = None
        self.campaigns: Campaigns | None = None  # set when a model manager in this process takes campaign jobs
        if labels is not None:
            self._selector = Selector(settings.selection, settings.robot_id, labels, source=self._source)
        window = settings.health.window_s
        self._offered = RollingEvents(window)
        self._kept = RollingEvents(window)
        self._rejected = RollingEvents(window)
        self._last_rejection = ""
        self._group = MutuallyExclusiveCallbackGroup()
        self._timers_group = MutuallyExclusiveCallbackGroup()
        self._decisions = self.create_publisher(FrameDecision, settings.decisions_topic, 10)
        self._pairing = _Pairing(settings.pairing_depth)
        self.composed = composed
        if not composed:
            self._subscribe(settings)
        self._diagnostics = DiagnosticsPublisher(
            self, self.checks, settings.robot_id, settings.health.period_s, self._timers_group
        )
        self.get_logger().info(
            f"selector up ({'composed with perception' if composed else 'topics'}): policy "
            f"{settings.selection.policy.name}, budget {settings.selection.budget.frames_per_hour:g} "
            f"frames/h, queue {settings.queue.directory}"
        )

    def _subscribe(self, settings: SelectorSettings) -> None:
        """Subscribe to the cameras and the perception results (a selector in its own process pairs them)."""
        qos = image_qos(settings.image_qos)
        for kind, topics in ((Image, settings.image_topics), (CompressedImage, settings.compressed_topics)):
            for topic in topics:
                stream: list[str] = []
                subscription = self.create_subscription(
                    kind,
                    topic,
                    lambda msg, stream=stream: self._on_image(stream[0], msg),
                    qos,
                    callback_group=self._group,
                )
                stream.append(subscription.topic_name)
        self.create_subscription(FrameResult, settings.results_topic, self._on_result, 50, callback_group=self._group)

    @property
    def _source(self) -> str:
        return f"parameters of node {self.get_fully_qualified_name()}"

    @property
    def selector(self) -> Selector | None:
        return self._selector

    # ------------------------------------------------------------------ parameters
    def _apply(self, settings: SelectorSettings) -> None:
        selector, campaigns = self._selector, self.campaigns
        if campaigns is not None:
            # while a campaign runs, the robot's own selection is changed under it (and comes back at expiry)
            if settings.selection != campaigns.base:
                campaigns.set_base(settings.selection)
        elif selector is not None and settings.selection != selector.config:
            # the selector validates and swaps its compiled config in one step (ConfigError: nothing changes)
            selector.update(**settings.selection.model_dump())
        for events in (self._offered, self._kept, self._rejected):
            events.window_s = settings.health.window_s
        self._health = settings.health

    # ------------------------------------------------------------------ frames
    def offer_frame(
        self,
        frame: np.ndarray,
        result: CoreFrameResult,
        header: Header,
        stream: str,
        labels: Sequence[str] | None = None,
    ) -> None:
        """Offer one answered frame to the selector; queue it when kept; publish the decision."""
        selector = self._selector
        if selector is None:
            # alone, the labels arrive with the first result
            selector = self._selector = Selector(
                self.parameters.current.selection, self.robot_id, labels or [], source=self._source
            )
        decision = selector.offer(
            frame,
            result,
            stamp_ns(header.stamp),
            stream=stream,
            robot_id=self.robot_id,
            site=self.parameters.current.site,
            track_hint=getattr(result, "track", None),
        )
        self._offered.add()
        if decision.keep and decision.record is not None:
            put = self.queue.put(decision.record)
            if put.accepted:
                self._kept.add()
            else:
                self._rejected.add()
                self._last_rejection = put.reason
                self.get_logger().warning(f"queue refused {put.frame_key}: {put.reason}", throttle_duration_sec=5.0)
        self._decisions.publish(frame_decision_msg(decision, header, stream))

    def _on_image(self, stream: str, msg: Image | CompressedImage) -> None:
        stamp = stamp_ns(msg.header.stamp)
        if stamp <= 0:
            self.get_logger().warning(
                f"frames on {stream} carry no header stamp: a selector in its own process cannot pair them with "
                "their results and selects none of them (compose it with perception, as the robot launch does, "
                "or make the camera stamp its frames)",
                throttle_duration_sec=30.0,
            )
        result = self._pairing.image((stream, stamp), msg)
        if result is not None:
            self._offer_pair(msg, result)

    def _on_result(self, msg: FrameResult) -> None:
        image = self._pairing.result((msg.stream, stamp_ns(msg.header.stamp)), msg)
        if image is not None:
            self._offer_pair(image, msg)

    def _offer_pair(self, image: Image | CompressedImage, result: FrameResult) -> None:
        try:
            frame = msg_to_rgb8(image)
        except InputError:
            return  # perception reports malformed images; it published no result for them anyway
        self.offer_frame(frame, core_result_from_msg(result), result.header, result.stream, result.labels)

    # ------------------------------------------------------------------ health
    def checks(self) -> list[Check]:
        """Return the selection check: kept rate against the budget, queue depth and fill."""
        health = self._health
        running = self._selector.config if self._selector is not None else self.parameters.current.selection
        budget_per_hour = running.budget.frames_per_hour  # what runs: a campaign may change it
        active = self.campaigns.active if self.campaigns is not None else None
        campaign = f"{active['job']['campaign']} v{active['job']['version']}" if active else "none"
        kept_per_hour = self._kept.per_second() * 3600.0
        stats = self.queue.stats()
        fill = stats.bytes / stats.disk_cap_bytes if stats.disk_cap_bytes else 0.0
        state = self._selector.state() if self._selector is not None else {}
        threshold = state.get("threshold")
        unstamped = self._pairing.unstamped
        selection = check(
            "selection",
            {
                "kept_over_budget": (kept_per_hour / budget_per_hour, health.kept_over_budget),
                # frames this selector could not pair for want of a stamp (only when it runs in its own process)
                "unstamped_fraction": (unstamped / max(1, unstamped + self._offered.total), health.dropped_fraction),
            },
            {
                "policy": state.get("policy", running.policy.name),
                "campaign": campaign,
                "kept_per_hour": kept_per_hour,
                "budget_frames_per_hour": budget_per_hour,
                "kept_total": self._kept.total,
                "offered_total": self._offered.total,
                "threshold": threshold if threshold is not None else math.nan,
                "queue_rejected_total": self._rejected.total,
                "last_queue_rejection": self._last_rejection,
                "unpaired_total": self._pairing.unpaired,
                "unstamped_total": unstamped,
                # frames whose stamps did not advance (a camera that does not stamp, or whose clock went
                # back), budgeted by their arrival instead
                "frames_by_arrival_total": state.get("frames_by_arrival", 0),
            },
        )
        queue = check(
            "queue",
            {"queue_depth": (float(stats.records), health.queue_depth), "queue_fill": (fill, health.queue_fill)},
            {
                "depth": stats.records,
                "bytes": stats.bytes,
                "disk_cap_bytes": stats.disk_cap_bytes,
                "evicted_total": stats.evicted_total,
                "directory": stats.directory,
            },
        )
        return [selection, queue]

    def close(self) -> None:
        """Close the queue (the database connection)."""
        self.queue.close()


def main(args: list[str] | None = None) -> int:
    """Run the selector node alone (frames and results from topics)."""
    from fleetloop_ros.runner import run_nodes

    return run_nodes(lambda: [SelectorNode()], args)
