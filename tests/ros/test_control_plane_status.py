"""A robot whose control plane cannot be reached says so: diagnostics ERROR and the status field."""

from __future__ import annotations

from fixtures.s3 import free_port


def test_an_unreachable_control_plane_is_an_error_on_diagnostics_and_in_the_status(ros, robot, mqtt_pki, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from fleetloop_interfaces.msg import ModelStatus
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from fleetloop_ros.messages import level_of, values_of

    identity = mqtt_pki["ca"].issue("robot-0")
    port = free_port()  # nothing listens there
    robot(
        ros.namespace,
        {
            "/**/model_manager": {
                "control_plane.uri": f"mqtts://127.0.0.1:{port}",
                "control_plane.mqtt.ca_file": str(identity.ca),
                "control_plane.mqtt.cert_file": str(identity.cert),
                "control_plane.mqtt.key_file": str(identity.key),
                "control_plane.mqtt.connect_timeout_s": 2.0,
                "control_plane.mqtt.reconnect_min_s": 0.5,
                "control_plane.mqtt.reconnect_max_s": 2.0,
            }
        },
    )
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    statuses = ros.collect(ModelStatus, "model_status", latched)

    def control_plane_check():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.endswith(": control_plane"):
                    return status
        return None

    check = ros.spin_until(control_plane_check, 30, "the control_plane diagnostics check")
    assert level_of(check) == 2 and "connection refused" in check.message, check.message
    assert values_of(check)["uri"] == f"mqtts://127.0.0.1:{port}"
    ros.spin_until(
        lambda: statuses and "connection refused" in statuses[-1].control_plane,
        30,
        lambda: f"the status's control_plane field (have {[s.control_plane for s in statuses]})",
    )
    assert statuses[-1].last_event == "startup" and statuses[-1].last_event_ok  # model events keep their meaning
