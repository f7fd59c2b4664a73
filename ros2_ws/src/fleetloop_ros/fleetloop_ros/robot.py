"""Robot bring-up: the four nodes from one robot YAML, in one process with one executor.

``build_robot(config)`` creates perception, model_manager, selector and uploader with the
validated values of the robot YAML as parameter overrides (the same keys ``ros2 launch`` hands to
rcl). ``composed=True`` passes every frame from perception to the selector in-process (no copy,
no serialisation); ``composed=False`` makes the selector pair images and results from topics, as
it does in its own process. ``main`` is the ``robot`` executable the launch file starts when
``composed:=true`` (parameters then come from rcl: ``--ros-args --params-file``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from rclpy.node import Node
from rclpy.parameter import Parameter

from fleetloop_core.errors import ConfigError
from fleetloop_core.selection_config import policy_params
from fleetloop_ros.parameters import parameter_specs
from fleetloop_ros.settings import MODEL_MANAGER_SKIPPED, RobotConfig, SelectorSettings

ROLES = ("perception", "model_manager", "selector", "uploader")
_SKIPPED = {"model_manager": MODEL_MANAGER_SKIPPED, "selector": ("selection.policy.params",)}


def node_overrides(node: str, settings: Any) -> list[Parameter]:
    """Return rclpy parameter overrides holding every value of a node's validated settings."""
    specs = parameter_specs(settings, skip=_SKIPPED.get(node, ()))
    if isinstance(settings, SelectorSettings):
        params = policy_params(settings.selection, "selection")
        specs += parameter_specs(params, prefix="selection.policy.params.")
    # an empty list travels as "not set", as rcl reads `[]` from a parameter file (rclpy would type it bytes)
    return [
        Parameter(spec.name, Parameter.Type.NOT_SET, None)
        if spec.value == [] and isinstance(spec.value, list)
        else Parameter(spec.name, Parameter.Type(spec.type), spec.value)
        for spec in specs
    ]


def build_robot(
    config: RobotConfig | None = None,
    namespace: str = "",
    composed: bool = True,
    roles: Iterable[str] = ROLES,
    **node_kwargs,
) -> list[Node]:
    """Return the robot's nodes, wired; without ``config`` they read rcl's parameters (launch)."""
    from fleetloop_ros.model_manager import ModelManagerNode
    from fleetloop_ros.perception import PerceptionNode
    from fleetloop_ros.selector import SelectorNode
    from fleetloop_ros.uploader import UploaderNode

    roles = tuple(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(f"unknown robot node {unknown[0]!r} (known: {', '.join(ROLES)})")
    if "model_manager" in roles and "perception" not in roles:
        raise ConfigError("model_manager swaps the perception node's models: start it with perception")

    def overrides(node: str) -> Sequence[Parameter]:
        return node_overrides(node, config.settings[node]) if config is not None else ()

    common: Mapping[str, Any] = {"namespace": namespace, **node_kwargs}
    nodes: list[Node] = []
    perception = None
    if "perception" in roles:
        perception = PerceptionNode(parameter_overrides=overrides("perception"), **common)
        nodes.append(perception)
    selector = None
    if "selector" in roles:
        in_process = composed and perception is not None
        labels = perception.cascade.edge.labels if in_process else None
        selector = SelectorNode(parameter_overrides=overrides("selector"), composed=in_process, labels=labels, **common)
    if "model_manager" in roles:
        # campaign jobs change the selector when it runs in this process (selector.selector: None when alone)
        manager = ModelManagerNode(
            perception,
            parameter_overrides=overrides("model_manager"),
            selector=selector.selector if selector is not None else None,
            **common,
        )
        if selector is not None:
            selector.campaigns = manager.campaigns
        nodes.append(manager)
    if selector is not None:
        if (
            selector.composed and perception is not None
        ):  # after the model manager's sink, as before campaigns needed the selector first
            perception.add_frame_sink(selector.offer_frame)
        nodes.append(selector)
    if "uploader" in roles:
        nodes.append(UploaderNode(parameter_overrides=overrides("uploader"), **common))
    return nodes


def main(args: list[str] | None = None) -> int:
    """Run all four nodes composed in one process (what ``robot.launch.py composed:=true`` starts)."""
    from fleetloop_ros.runner import run_nodes

    return run_nodes(lambda: build_robot(None), args)
