"""FleetLoop ROS 2 nodes: thin rclpy adapters over fleetloop_core (no decision logic here)."""

__version__ = "0.1.0"
