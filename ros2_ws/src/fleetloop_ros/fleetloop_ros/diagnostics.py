"""Publishing graded checks (fleetloop_core.health) as diagnostic_msgs/DiagnosticArray on /diagnostics."""

from __future__ import annotations

from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from std_msgs.msg import Header

from fleetloop_core.health import Check
from fleetloop_ros.messages import diagnostic_status

DIAGNOSTICS_TOPIC = "/diagnostics"  # absolute: aggregators listen there whatever the namespace


class DiagnosticsPublisher:
    """Calls ``checks()`` every ``period_s`` and publishes the result as one DiagnosticArray."""

    def __init__(
        self,
        node: Node,
        checks: Callable[[], list[Check]],
        hardware_id: str,
        period_s: float,
        callback_group: CallbackGroup | None = None,
    ):
        self._node = node
        self._checks = checks
        self._hardware_id = hardware_id
        self._publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._timer = node.create_timer(period_s, self.publish, callback_group=callback_group)

    def publish(self) -> DiagnosticArray:
        """Publish the checks now; return the message."""
        name = self._node.get_name()
        message = DiagnosticArray(
            header=Header(stamp=self._node.get_clock().now().to_msg()),
            status=[diagnostic_status(check, name, self._hardware_id) for check in self._checks()],
        )
        self._publisher.publish(message)
        return message
