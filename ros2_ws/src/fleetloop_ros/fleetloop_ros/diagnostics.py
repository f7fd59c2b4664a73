"""Publishing graded checks (fleetloop_core.health) as diagnostic_msgs/DiagnosticArray on /diagnostics."""

from __future__ import annotations

from typing import Callable, Iterable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from std_msgs.msg import Header

from fleetloop_core.health import ERROR, LEVEL_NAMES, OK, WARN, Check, LevelChanges
from fleetloop_ros.messages import diagnostic_status

DIAGNOSTICS_TOPIC = "/diagnostics"  # absolute: aggregators listen there whatever the namespace


class DiagnosticsPublisher:
    """Calls ``checks()`` every ``period_s`` and publishes the result as one DiagnosticArray.

    A check that changes level is also logged (WARN as a warning, ERROR as an error, back to OK as
    info), so the robot's own log tells when its input went away or came back; ``quiet`` names the
    checks another part already logs.
    """

    def __init__(
        self,
        node: Node,
        checks: Callable[[], list[Check]],
        hardware_id: str,
        period_s: float,
        callback_group: CallbackGroup | None = None,
        quiet: Iterable[str] = (),
    ):
        self._node = node
        self._checks = checks
        self._hardware_id = hardware_id
        self._publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._changes = LevelChanges(quiet)
        self._timer = node.create_timer(period_s, self.publish, callback_group=callback_group)

    def publish(self) -> DiagnosticArray:
        """Publish the checks now; return the message."""
        name = self._node.get_name()
        checks = self._checks()
        message = DiagnosticArray(
            header=Header(stamp=self._node.get_clock().now().to_msg()),
            status=[diagnostic_status(check, name, self._hardware_id) for check in checks],
        )
        self._publisher.publish(message)
        self._log_changes(checks)
        return message

    def _log_changes(self, checks: list[Check]) -> None:
        logger = self._node.get_logger()
        for check, previous in self._changes.changed(checks):
            text = f"{check.name} {check.level_name}: {check.message}"
            if check.level == ERROR:
                logger.error(text)
            elif check.level == WARN:
                logger.warning(text)
            elif check.level == OK and previous != OK:
                logger.info(f"{text} (was {LEVEL_NAMES[previous]})")
