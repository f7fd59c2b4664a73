"""Data campaigns on the robot: a signed fleetloop.update_selection job through the deploy agent and the file
control plane, checked, applied between frames, reported, rolled back at expiry and after a restart; a bad
or unsigned campaign rejected with the reason while the running selection keeps going."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleetloop_core.cascade import FrameResult
from fleetloop_core.control_plane import LocalControlPlane, write_json_atomic
from fleetloop_core.deploy_agent import DeployAgent
from fleetloop_core.selection import Selector
from fleetloop_core.selection_campaigns import Campaigns
from fleetloop_core.selection_config import selection_config

from fleetloop_cloud.fleet_jobs import campaign_document

LABELS = tuple(f"c{i}" for i in range(10)) + ("none",)
IMAGE = np.zeros((32, 32, 3), np.uint8)
PERIOD_NS = 100_000_000
NOW = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


def _result(label: int) -> FrameResult:
    probs = np.full(len(LABELS), 1 / len(LABELS), np.float32)
    scores = {n: 0.9 for n in ("entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty")}
    return FrameResult(
        label=label, label_name=LABELS[label], confidence=0.4, tier_used="T4", probs=probs, scores=scores,
        escalated=False, latency_s={"T4": 1e-4}, model_versions={"T4": "v1"}, tier_outputs={"T4": probs},
        embeddings={},
    )  # fmt: skip


def _selector() -> Selector:
    config = selection_config(
        {"policy": {"name": "threshold", "params": {"threshold": 0.0}}, "budget": {"frames_per_hour": 10**6}}
    )
    return Selector(config, "robot-0", LABELS)


def _queue(jobs, job_id, document):
    write_json_atomic(
        jobs / "robot-0" / "queued" / f"{job_id}.json",
        {"jobId": job_id, "jobDocument": document, "queuedAt": 1, "status": "QUEUED"},
    )


def _status(jobs, job_id):
    return json.loads((jobs / "robot-0" / "status" / f"{job_id}.json").read_text())


QUOTA = {"policy.name": "class_quota", "policy.params.shares": {"c3": 0.5}, "policy.params.max_share": 0.05}


def _share_of_c3(selector, start):
    labels = np.random.default_rng(0).choice([0, 1, 3], p=[0.6, 0.3, 0.1], size=600)
    kept = [c for i, c in enumerate(labels) if selector.offer(IMAGE, _result(int(c)), start + i * PERIOD_NS).keep]
    return kept.count(3) / len(kept)


def test_a_signed_campaign_is_applied_reported_expired_and_survives_a_restart(tmp_path, test_models, signing_keys):
    from fixtures.model_packages import Robot

    private = signing_keys["keys"]["fleet"][0]
    clock, jobs, state = Clock(), tmp_path / "jobs", tmp_path / "robot" / "campaign.json"
    selector = _selector()
    before = selector.config
    campaigns = Campaigns(selector, signing_keys["trusted"], state, clock)
    robot = Robot(tmp_path, test_models, signing_keys, [IMAGE])
    agent = DeployAgent(
        LocalControlPlane(jobs, "robot-0", poll_s=0.01), robot.manager, poll_s=0.05, campaigns=campaigns
    )
    share_before = _share_of_c3(selector, 0)

    _queue(jobs, "c1", campaign_document("more-c3", "1", QUOTA, NOW + 3600, private, reason="c3 under-labeled"))
    outcome = agent.run_once(0.5)
    assert outcome.status == "SUCCEEDED" and outcome.version == "1" and outcome.role == "selection"
    details = _status(jobs, "c1")["statusDetails"]
    assert details["campaign"] == "more-c3" and details["serving_version"] == "1"
    assert selector.config.policy.name == "class_quota" and selector.config.policy.params["shares"] == {"c3": 0.5}
    assert _share_of_c3(selector, 10**12) > 3 * share_before  # the selector now keeps what the campaign asks for

    # the robot restarts (its own config edited meanwhile): the campaign is applied again over it, and at
    # expiry the robot's own new config comes back, not the one from before the restart
    restarted = _selector()
    restarted.update(**{"budget.frames_per_hour": 1234})
    own = restarted.config
    resumed = Campaigns(restarted, signing_keys["trusted"], tmp_path / "copy.json", clock)
    (tmp_path / "copy.json").write_text(state.read_text())
    assert resumed.resume() == "more-c3"
    assert restarted.config.policy.name == "class_quota" and restarted.config.budget.frames_per_hour == 1234
    clock.now = NOW + 3601
    assert resumed.tick() == "more-c3" and restarted.config == own
    clock.now = NOW

    clock.now = NOW + 3601
    assert agent.run_once(0.05) is None  # between jobs, the agent expires it
    assert selector.config == before and campaigns.active is None
    late = _selector()
    assert Campaigns(late, signing_keys["trusted"], state, clock).resume() is None and late.config == before


@pytest.mark.parametrize(
    "case, match",
    [
        ("unsigned", "unsigned"),
        ("stranger", "unknown key id"),
        ("altered", "altered or signed by another key"),
        ("bad value", "policy.params.max_share"),
        ("unknown class", "unknown class 'socks'"),
        ("expired", "expired at"),
        ("unknown key", "unknown key tier"),
    ],
)
def test_a_bad_campaign_is_rejected_with_the_reason_and_the_running_one_keeps_going(
    tmp_path, signing_keys, case, match
):
    keys, clock = signing_keys["keys"], Clock()
    selector = _selector()
    campaigns = Campaigns(selector, signing_keys["trusted"], tmp_path / "campaign.json", clock)
    assert campaigns.apply("good", campaign_document("more-c3", "1", QUOTA, NOW + 60, keys["fleet"][0])).status == (
        "SUCCEEDED"
    )
    running = selector.config
    changes, expires, key = dict(QUOTA), NOW + 60, keys["fleet"][0]
    if case == "bad value":
        changes["policy.params.max_share"] = 7
    if case == "unknown class":
        changes["policy.params.shares"] = {"socks": 0.2}
    if case == "expired":
        expires = NOW - 1
    if case == "unknown key":
        changes = {"tier": "T1"}
    if case == "stranger":
        key = keys["stranger"][0]
    document = campaign_document("more-c3", "2", changes, expires, key)
    if case == "unsigned":
        document.pop("signature")
    if case == "altered":
        document["changes"] = {**document["changes"], "budget.frames_per_hour": 10**7}
    outcome = campaigns.apply("bad", document)
    assert outcome.status == "REJECTED" and match in outcome.reason, outcome.reason
    assert outcome.version == "1"  # the running campaign's version, still serving
    assert selector.config == running and campaigns.active["job"]["version"] == "1"


def test_a_robot_without_trusted_keys_takes_no_campaign(signing_keys):
    selector = _selector()
    document = campaign_document("x", "1", QUOTA, NOW + 60, signing_keys["keys"]["fleet"][0])
    outcome = Campaigns(selector, None, clock=Clock()).apply("j", document)
    assert outcome.status == "REJECTED" and "no trusted keys" in outcome.reason
    assert selector.config.policy.name == "threshold"


def test_an_operators_change_during_a_campaign_runs_under_it_and_is_what_comes_back_at_expiry(tmp_path, signing_keys):
    clock = Clock()
    selector = _selector()
    campaigns = Campaigns(selector, signing_keys["trusted"], tmp_path / "campaign.json", clock)
    document = campaign_document("more-c3", "1", QUOTA, NOW + 60, signing_keys["keys"]["fleet"][0])
    assert campaigns.apply("c1", document).status == "SUCCEEDED"

    # `ros2 param set`: a new budget and another threshold policy; the campaign's keys still win
    edited = selection_config(
        {"policy": {"name": "threshold", "params": {"threshold": 0.2}}, "budget": {"frames_per_hour": 4321}}
    )
    running = campaigns.set_base(edited)
    assert running.budget.frames_per_hour == 4321  # not a campaign key: in effect at once
    assert running.policy.name == "class_quota" and running.policy.params["shares"] == {"c3": 0.5}
    assert campaigns.base == edited and selector.config == running

    clock.now = NOW + 61
    assert campaigns.tick() == "more-c3" and selector.config == edited  # the operator's selection, not the old one
    assert campaigns.set_base(_selector().config) == _selector().config  # no campaign: the change is the selection


def _adaptive(**extra):
    """The adaptive budget policy at a tenth of 10 Hz, no dedup, no random share, and ``extra``."""
    return selection_config(
        {
            "policy": {"name": "adaptive_budget", "params": {"window": 256, "update_every": 16, "warmup_frames": 32}},
            "budget": {"frames_per_hour": 3600.0, "burst_seconds": 1.0},
            "dedup": {"enabled": False},
            "random_fraction": 0.0,
            **extra,
        }
    )


def test_a_class_weight_aims_the_adaptive_budget_at_the_class_and_still_spends_the_budget():
    def run(class_weights):
        selector, rng = Selector(_adaptive(class_weights=class_weights), "robot-0", LABELS), np.random.default_rng(1)
        kept = []
        for i, label in enumerate(rng.choice([0, 1, 3], p=[0.6, 0.3, 0.1], size=3000)):
            result = _result(int(label))
            result.scores.update({name: float(rng.uniform(0.0, 0.6)) for name in result.scores})
            if selector.offer(IMAGE, result, i * PERIOD_NS).keep:
                kept.append(int(label))
        return kept.count(3) / len(kept), len(kept)

    share, count = run({})
    aimed_share, aimed_count = run({"c3": 4.0})
    assert aimed_share > 3 * share  # the class's frames win the budget ...
    assert aimed_count >= 0.9 * count  # ... and the budget is still spent (a quota leaves it unused)


def test_weight_by_probability_aims_at_a_class_the_model_labels_as_another():
    # a tenth of the frames are c3 the model confuses with c1: it labels them c1, with p(c3) 0.35; weighing
    # c3 by label moves nothing (no frame is labeled c3), by probability those frames win the budget
    def run(weight_by):
        config = _adaptive(class_weights={"c3": 4.0}, class_weight_by=weight_by)
        selector, rng = Selector(config, "robot-0", LABELS), np.random.default_rng(1)
        kept = []
        for i in range(3000):
            confused = rng.random() < 0.1
            result = _result(1 if confused else int(rng.choice([0, 1])))
            result.probs = np.full(len(LABELS), 0.02, np.float32)
            result.probs[3] = 0.35 if confused else 0.02
            result.probs[result.label] += 1.0 - result.probs.sum()
            result.scores.update({name: float(rng.uniform(0.0, 0.6)) for name in result.scores})
            if selector.offer(IMAGE, result, i * PERIOD_NS).keep:
                kept.append(confused)
        return sum(kept) / len(kept), len(kept)

    share, count = run("label")
    aimed_share, aimed_count = run("probability")
    assert 0.05 < share < 0.15  # by label: as often as they come
    assert aimed_share > 2.5 * share and aimed_count >= 0.9 * count


def test_a_site_campaign_raises_the_upload_budget_until_it_expires(tmp_path, signing_keys):
    config = selection_config(
        {
            "policy": {"name": "adaptive_budget", "params": {"window": 256, "update_every": 16, "warmup_frames": 32}},
            "budget": {"frames_per_hour": 1800.0, "burst_seconds": 1.0},  # 5 % of 10 Hz
            "dedup": {"enabled": False},
            "random_fraction": 0.0,
        }
    )
    selector, rng, clock = Selector(config, "robot-0", LABELS), np.random.default_rng(2), Clock()
    campaigns = Campaigns(selector, signing_keys["trusted"], tmp_path / "campaign.json", clock)

    def kept(start: int) -> int:
        count = 0
        for i in range(3000):
            result = _result(int(rng.integers(0, 10)))
            result.scores.update({name: float(rng.uniform(0.0, 0.6)) for name in result.scores})
            count += selector.offer(IMAGE, result, (start + i) * PERIOD_NS).keep
        return count

    before = kept(0)
    changes = {"budget.frames_per_hour": 3600.0}  # what `fleetloop-cloud campaign` sends a site's robots
    document = campaign_document("more-from-site-1", "1", changes, NOW + 60, signing_keys["keys"]["fleet"][0])
    assert campaigns.apply("s1", document).status == "SUCCEEDED"
    during = kept(3000)
    clock.now = NOW + 61
    assert campaigns.tick() == "more-from-site-1" and selector.config == config
    after = kept(6000)
    assert 1.7 * before <= during <= 2.3 * before  # twice the budget, spent
    assert 0.8 * before <= after <= 1.2 * before
