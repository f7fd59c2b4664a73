"""A data campaign end to end on the demo's in-process robot: the cloud proposes one from what the robot
uploaded, signs it and sends it as a job through the file job backend; the robot's deploy agent applies it
to the running selector while the camera streams, reports it, and puts the previous selection back when it
expires. (The selector-level effect on the share of uploads: tests/core/test_campaigns.py; the robots here
run the untrained test T4, which labels nearly every field frame alike.)"""

from __future__ import annotations

import time
from collections import Counter

from fleetloop_core.contracts.sidecar import Sidecar

from fixtures.demo_fleet import fleet_settings

from fleetloop_cloud.campaigns import CampaignConfig, class_needs, propose
from fleetloop_cloud.demo.fleet import InProcessRobot, robot_specs
from fleetloop_cloud.demo.provision import signing_keys
from fleetloop_cloud.deploy import open_fleet_jobs


def _wait_for(jobs, job_id, thing, deadline_s=30.0):
    deadline = time.monotonic() + deadline_s
    while not jobs.executions(job_id)[thing].terminal and time.monotonic() < deadline:
        jobs.wait_changed(0.2)
    return jobs.executions(job_id)[thing]


def test_a_campaign_is_proposed_signed_sent_applied_reported_and_expires_on_a_streaming_robot(tmp_path, test_models):
    settings, private = fleet_settings(tmp_path, test_models["T4"].parent)
    spec = robot_specs(1, world_seed=3, task="classification")[0]
    robot = InProcessRobot(spec, settings)
    own = robot.selector.config
    robot.start()
    try:
        robot.stream(300)
        uploads = Counter(
            (s := Sidecar.model_validate_json(p.read_text())).labels[s.prediction]
            for p in (tmp_path / "store").rglob("*.json")
        )
        needs = class_needs(robot.cascade.frame_labels, uploads, {}, skip=["none"])
        campaign = propose(needs, CampaignConfig(expires_s=3.0), version="1", now=time.time())
        assert campaign is not None and uploads[campaign.target] == min(uploads[n.name] for n in needs)
        jobs = open_fleet_jobs(settings.jobs_uri)
        jobs.create_job("campaign-1", [spec.robot_id], campaign.document(private.read_bytes()))
        execution = _wait_for(jobs, "campaign-1", spec.robot_id)
        assert execution.status == "SUCCEEDED", execution
        assert execution.details["campaign"] == campaign.name and execution.details["serving_version"] == "1"
        asked = robot.selector.config
        assert asked.class_weights == {campaign.target: 4.0} and asked.policy == own.policy  # aimed, same policy
        robot.stream(100)  # frames flow through the changed selector

        # a campaign signed by another key is refused with the reason; the running one stays
        stranger = tmp_path / "stranger"
        other_private, _ = signing_keys(stranger)
        jobs.create_job("campaign-2", [spec.robot_id], campaign.document(other_private.read_bytes()))
        refused = _wait_for(jobs, "campaign-2", spec.robot_id)
        assert refused.status == "REJECTED" and "unknown key id" in refused.details["reason"]
        assert robot.selector.config == asked

        deadline = time.monotonic() + 30.0  # it expires 3 s after it was proposed; the agent rolls it back
        while robot.selector.config != own and time.monotonic() < deadline:
            time.sleep(0.1)
        assert robot.selector.config == own and robot.agent.campaigns.active is None
    finally:
        robot.stop()
