"""FleetLoop ROS 2 nodes: thin rclpy adapters over fleetloop_core (no decision logic here)."""

from fleetloop_core import stop_signals

__version__ = "0.1.0"

stop_signals.restore()  # every node executable imports this package first: SIGINT stops it from here on
