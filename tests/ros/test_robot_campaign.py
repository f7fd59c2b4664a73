"""A data campaign on the ROS robot: a signed fleetloop.update_selection job through the robot's control plane
changes the running selector (composed with perception and the model manager); a `ros2 param set` while it
runs goes under it; at expiry the robot's own selection, with the operator's change, is back. The selector's
diagnostics say which campaign runs."""

from __future__ import annotations

import json
import time

from fleetloop_core.control_plane import write_json_atomic

from fleetloop_cloud.fleet_jobs import campaign_document

QUICK_JOBS = {"/**/model_manager": {"control_plane.poll_s": 0.2}}
CAMPAIGN_S = 12.0


def test_a_campaign_job_changes_the_running_selector_and_a_param_set_goes_under_it(ros, robot, signing_keys):
    from diagnostic_msgs.msg import DiagnosticArray

    from fleetloop_ros.messages import values_of

    process = robot(ros.namespace, QUICK_JOBS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")

    def selection() -> dict[str, str] | None:
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.endswith("selector: selection"):
                    return dict(values_of(status))
        return None

    own = ros.spin_until(selection, 30, "the selector's diagnostics")
    assert own["campaign"] == "none" and own["policy"] == "adaptive_budget"

    changes = {"policy.name": "class_quota", "policy.params.shares": {"bag": 0.5}, "policy.params.max_share": 0.05}
    document = campaign_document(
        "more-bag", "1", changes, time.time() + CAMPAIGN_S, signing_keys["keys"]["fleet"][0], reason="bags"
    )
    jobs = process.state / "jobs" / "robot-1"
    write_json_atomic(
        jobs / "queued" / "campaign-1.json",
        {"jobId": "campaign-1", "jobDocument": document, "queuedAt": 1, "status": "QUEUED"},
    )
    status = jobs / "status" / "campaign-1.json"
    ros.spin_until(lambda: status.exists() and json.loads(status.read_text())["status"] == "SUCCEEDED", 30, "SUCCEEDED")
    assert json.loads(status.read_text())["statusDetails"]["serving_version"] == "1"
    ros.spin_until(
        lambda: (selection() or {}).get("campaign") == "more-bag v1" and selection()["policy"] == "class_quota",
        10,
        lambda: f"the campaign on diagnostics ({selection()})",
    )

    # ros2 param set while the campaign runs: the budget changes at once, the campaign's policy stays
    (result,) = ros.set_parameters("selector", {"selection.budget.frames_per_hour": 1234.0})
    assert result.successful, result.reason
    ros.spin_until(
        lambda: selection()["budget_frames_per_hour"] == "1234" and selection()["policy"] == "class_quota",
        10,
        lambda: f"the operator's budget under the campaign ({selection()})",
    )

    # expiry: the agent rolls it back between jobs, to the robot's own selection with the operator's change
    ros.spin_until(
        lambda: selection()["campaign"] == "none",
        CAMPAIGN_S + 20,
        lambda: f"the campaign's expiry ({selection()})\n{process.output[-2000:]}",
    )
    ros.spin_until(lambda: selection()["policy"] == "adaptive_budget", 10, lambda: f"the own policy ({selection()})")
    assert selection()["budget_frames_per_hour"] == "1234"
    assert "campaign more-bag expired" in process.output
