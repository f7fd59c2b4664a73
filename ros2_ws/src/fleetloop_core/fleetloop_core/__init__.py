"""FleetLoop core: everything a robot decides, in pure Python (no rclpy).

Used by the ROS 2 nodes (``fleetloop_ros``) and by the cloud package (``fleetloop_cloud``).
"""

__version__ = "0.1.0"
