"""The model manager node: hot-swaps, watches and rolls back the perception node's models.

It wraps ``fleetloop_core.model_manager.ModelManager`` (install from the on-robot model store with
signature checks, warm-up, shadow check on recent frames, atomic swap between two frames,
watchdog, rollback) around the cascade of the perception node it is composed with: the shadow
check needs the frames perception sees, and the swap changes that process's cascade, so the two
always share a process (the ``model_manager`` executable starts both).

Interfaces:
  ``~/swap_model``  fleetloop_interfaces/SwapModel: deploy a package to a tier, or roll it back
  ``~/rollback``    std_srvs/Trigger: roll the edge tier (T4) back to the version served before
  ``model_status``  fleetloop_interfaces/ModelStatus, latched (transient local): serving version
                    per tier, execution provider, the last transition
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Sequence

from fleetloop_interfaces.msg import ModelStatus
from fleetloop_interfaces.srv import SwapModel
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from fleetloop_core.control_plane import open_control_plane
from fleetloop_core.deploy_agent import DeployAgent
from fleetloop_core.selection import Selector
from fleetloop_core.selection_campaigns import Campaigns
from fleetloop_core.errors import FleetLoopError, ModelError
from fleetloop_core.health import Check, FAILED_MODEL_EVENTS, control_plane_check, models_check
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.contracts.job_document import JobOutcome
from fleetloop_core.model_manager import ROLE_BY_TIER, ModelManager, ModelManagerConfig, serving_package_dirs
from fleetloop_core.model_serving import ModelEvent
from fleetloop_core.model_store import MODELS_PREFIX, ModelStore, PackageLocation
from fleetloop_core.signing import verify_package
from fleetloop_core.tasks import load_model
from fleetloop_ros.diagnostics import DiagnosticsPublisher
from fleetloop_ros.messages import time_msg
from fleetloop_ros.parameters import LiveParameters
from fleetloop_ros.perception import PerceptionNode
from fleetloop_ros.serving import providers_for, tier_versions
from fleetloop_ros.settings import MODEL_MANAGER_READ_ONLY, MODEL_MANAGER_SKIPPED, ModelManagerSettings

LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def package_location(package: str) -> PackageLocation:
    """Return where a SwapModel ``package`` string points: a local directory, or a store URI ending in
    ``models/<name>/<version>`` (``file:///srv/store/models/edge-tiny/1.1.0``, ``s3://bucket/fleet/models/...``)."""
    marker = f"/{MODELS_PREFIX}/"
    if "://" in package and marker in package:
        store, _, rest = package.partition(marker)
        return PackageLocation(store=store, prefix=f"{MODELS_PREFIX}/{rest.strip('/')}")
    return PackageLocation(path=str(Path(package).expanduser().resolve()))


def package_identity(location: PackageLocation) -> tuple[str, str]:
    """Return (name, version) of a package: from its manifest, or from a store key models/<name>/<version>."""
    if location.path is not None:
        manifest = load_manifest(Path(location.path) / "manifest.json")
        return manifest.name, manifest.version
    parts = (location.prefix or "").strip("/").split("/")
    if len(parts) < 3:
        raise ModelError(f"{location.describe()}: expected a key prefix models/<name>/<version>")
    return parts[-2], parts[-1]


class ModelManagerNode(Node):
    """Model delivery on the robot: services, latched status, diagnostics around ModelManager."""

    blocking_callbacks = True  # the swap service waits for the job (fleetloop_ros.runner)

    def __init__(
        self,
        perception: PerceptionNode,
        node_name: str = "model_manager",
        namespace: str = "",
        parameter_overrides: Sequence = (),
        selector: Selector | None = None,
        **node_kwargs,
    ):
        super().__init__(node_name, namespace=namespace, parameter_overrides=list(parameter_overrides), **node_kwargs)
        self.parameters = LiveParameters(
            self,
            ModelManagerSettings,
            ModelManagerSettings(),
            MODEL_MANAGER_READ_ONLY,
            apply=self._apply,
            skip=MODEL_MANAGER_SKIPPED,
        )
        self._source = f"parameters of node {self.get_fully_qualified_name()}"
        settings = self.parameters.current
        self.robot_id = settings.robot_id
        self.perception = perception
        config = self._manager_config(settings)
        store = ModelStore.from_config(config.store)
        self._restore_serving(store, config)
        self.manager = ModelManager(perception.cascade, store, config)
        # data campaigns change the selector composed into this process, checked with the packages' keys
        self.campaigns: Campaigns | None = None
        if selector is not None:
            self.campaigns = Campaigns(selector, store.trusted, store.root / "campaign.json")
            self.campaigns.resume()
        self.agent: DeployAgent | None = None
        if settings.control_plane.uri:
            self.agent = DeployAgent(
                open_control_plane(settings.control_plane, f"{self._source}: control_plane"),
                self.manager,
                poll_s=settings.control_plane.poll_s,
                campaigns=self.campaigns,
            )
        self._last_event: ModelEvent | None = None
        self._last_outcome: JobOutcome | None = None
        self._status = self.create_publisher(ModelStatus, settings.status_topic, LATCHED)
        services = ReentrantCallbackGroup()  # a swap waits for its outcome; frames keep flowing
        self.create_service(SwapModel, "~/swap_model", self._on_swap, callback_group=services)
        self.create_service(Trigger, "~/rollback", self._on_rollback, callback_group=services)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(0.5, self.manager.watch_tick, callback_group=timers)
        self._diagnostics = DiagnosticsPublisher(self, self.checks, settings.robot_id, settings.health.period_s, timers)
        perception.add_frame_sink(lambda frame, result, header, stream: self.manager.observe(frame, result))
        perception.add_error_sink(lambda frame, error: self.manager.observe(frame, None, error=error))
        self.manager.add_listener(self._on_event)
        self.publish_status("startup", True)
        if self.agent is not None:
            self.agent.start()
            self.create_timer(1.0, self._watch_control_plane, callback_group=timers)
        self.get_logger().info(
            f"model manager up: store {config.store.root}, serving "
            + ", ".join(f"{v.tier} {v.version}" for v in tier_versions(perception.cascade))
        )

    @staticmethod
    def _manager_config(settings: ModelManagerSettings) -> ModelManagerConfig:
        return settings.manager.model_copy(update={"providers": list(providers_for(settings.use_gpu))})

    def _restore_serving(self, store: ModelStore, config: ModelManagerConfig) -> None:
        """Serve the versions this robot served before a restart (verified again), when installed."""
        cascade = self.perception.cascade
        for role, directory in serving_package_dirs(store).items():
            current = cascade.edge if role == "edge" else cascade.escalation
            manifest = load_manifest(Path(directory) / "manifest.json")
            if current is not None and current.version == manifest.version and current.manifest.name == manifest.name:
                continue
            try:
                verify_package(directory, store.trusted)
                model = load_model(
                    directory,
                    providers=config.providers,
                    intra_op_threads=config.intra_op_threads,
                    warmup=config.warmup_runs,
                )
                cascade.set_model(role, model)
            except FleetLoopError as exc:
                self.get_logger().error(
                    f"cannot restore {role} {manifest.name} {manifest.version}: {exc}; serving the reference model"
                )
                continue
            self.get_logger().info(f"restored {role}: {manifest.name} {manifest.version} (served before the restart)")

    def _apply(self, settings: ModelManagerSettings) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            manager.config = self._manager_config(settings)  # shadow and watchdog limits: next job

    # ------------------------------------------------------------------ status
    def _on_event(self, event: ModelEvent) -> None:
        self._last_event = event
        if event.kind in ("swapped", "rolled_back", "failed", "rejected", "shadow_failed", "watch_passed"):
            text = f"{event.kind} {event.role or ''} {event.version or ''}".strip()
            if event.previous_version:
                text += f" (was {event.previous_version})"
            self.publish_status(text, event.kind not in FAILED_MODEL_EVENTS, event.detail)

    def publish_status(self, last_event: str, ok: bool, message: str = "") -> ModelStatus:
        """Publish the latched ModelStatus with the versions serving now; return it."""
        status = ModelStatus(
            stamp=time_msg(time.time_ns()),
            robot_id=self.robot_id,
            serving=tier_versions(self.perception.cascade),
            last_event=last_event,
            last_event_ok=ok,
            message=message,
            control_plane=self._control_plane_state(),
        )
        self._status.publish(status)
        self._published = status
        return status

    # ------------------------------------------------------------------ services
    def _on_swap(self, request: SwapModel.Request, response: SwapModel.Response) -> SwapModel.Response:
        role = ROLE_BY_TIER.get(request.tier)
        if role is None:
            response.success = False
            response.message = f"tier {request.tier!r} is not served on robots (known: {', '.join(ROLE_BY_TIER)})"
            return response
        current = self.perception.cascade.edge if role == "edge" else self.perception.cascade.escalation
        response.previous_version = current.version if current is not None else ""
        try:
            if request.rollback:
                outcome = self.manager.rollback(role, reason="SwapModel request", to_version=request.version or None)
            else:
                outcome = self._deploy(request, role)
        except (FleetLoopError, FutureTimeout, ValueError) as exc:
            response.success = False
            response.message = str(exc) or type(exc).__name__
            self.get_logger().warning(f"swap of {request.tier} refused: {response.message}")
            return response
        self._last_outcome = outcome
        response.success = outcome.status == "SUCCEEDED"
        response.message = outcome.reason
        response.serving_version = outcome.version or ""
        return response

    def _deploy(self, request: SwapModel.Request, role: str) -> JobOutcome:
        if not request.package:
            raise ModelError(
                "SwapModel: package is empty (a model directory or a store URI .../models/<name>/<version>)"
            )
        location = package_location(request.package)
        name, version = package_identity(location)
        if request.version and request.version != version:
            raise ModelError(f"SwapModel: {location.describe()} holds version {version}, not {request.version}")
        job_id = f"ros-swap-{request.tier}-{version}-{time.time_ns()}"
        document = {
            "operation": "fleetloop.deploy_model",
            "model": {"name": name, "version": version, "tier": request.tier},
            "package": location.model_dump(exclude_none=True),
        }
        future = self.manager.submit(job_id, document)
        return future.result(timeout=self.parameters.current.swap_timeout_s)

    def _on_rollback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        outcome = self.manager.rollback("edge", reason="rollback service")
        self._last_outcome = outcome
        response.success = outcome.status == "SUCCEEDED"
        response.message = outcome.reason
        return response

    # ------------------------------------------------------------------ health
    def _control_plane_state(self) -> str:
        if self.agent is None:
            return ""
        plane = self.agent.plane
        return "connected" if plane.connected else (plane.problem or "not connected")

    def _watch_control_plane(self) -> None:
        """Republish the status (same last event) when the control plane's state changes (lost, refused, back)."""
        if self._control_plane_state() != self._published.control_plane:
            self.publish_status(self._published.last_event, self._published.last_event_ok, self._published.message)

    def checks(self) -> list[Check]:
        """Return the models check: serving version and provider per tier, manager state, last outcome."""
        status = self.manager.status()
        serving = tier_versions(self.perception.cascade)
        values: dict[str, object] = {}
        for version in serving:
            values[f"{version.tier}_version"] = f"{version.name} {version.version}"
            values[f"{version.tier}_execution_provider"] = version.execution_provider
        for role, state in status.state.items():
            values[f"{role}_state"] = state
        last = self._last_event
        if last is not None:
            values["last_event"] = f"{last.kind} {last.role or ''} {last.version or ''}".strip()
            values["last_event_detail"] = last.detail
        if status.watching:
            values["watching"] = (
                f"{status.watching['role']} {status.watching['version']} ({status.watching['frames']} frames)"
            )
        checks = [
            models_check(
                {v.tier: v.execution_provider for v in serving},
                values,
                last.kind if last is not None else None,
                last.detail if last is not None else "",
                self.parameters.current.use_gpu,
            )
        ]
        if self.agent is not None:
            plane = self.agent.plane
            checks.append(
                control_plane_check(self.parameters.current.control_plane.uri, plane.connected, plane.problem)
            )
        return checks

    def close(self) -> None:
        """Let a job in progress finish, then stop the manager's thread."""
        if self.agent is not None:
            self.agent.stop()
        self.manager.close()


def main(args: list[str] | None = None) -> int:
    """Run the perception node with its model manager (one process: the manager swaps that cascade)."""
    from fleetloop_ros.runner import run_nodes

    def nodes():
        perception = PerceptionNode()
        return [perception, ModelManagerNode(perception)]

    return run_nodes(nodes, args)
