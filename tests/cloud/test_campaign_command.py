"""``fleetloop-cloud campaign``: an operator proposes a campaign from the pool and the last evaluation, sends it
(signed) to robots through the job backend, and measures the share of uploads of its class per round."""

import dataclasses
import json
import time

import yaml

from fleetloop_core.contracts.selection_job import parse_selection_job
from fleetloop_core.signing import verify_document

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.cli import main as cloud_cli
from fleetloop_cloud.pool import Pool

from fixtures.cloud_world import cloud_config, pool_frame

BAG, TROUSER = LABELS.index("bag"), LABELS.index("trouser")


def _frame(index, truth, round_number, robot_label):
    sidecar = {"labels": list(LABELS), "prediction": LABELS.index(robot_label)}
    return dataclasses.replace(pool_frame(index, truth, False, round_number), sidecar=json.dumps(sidecar))


def _labeled(tmp_path, cloud_models, signing_keys, truths) -> tuple[dict, object]:
    """Write a cloud config signing with the fleet key; put round-1 trouser uploads labeled ``truths`` in its pool."""
    data = cloud_config(tmp_path, f"file://{tmp_path / 'store'}", cloud_models["T1"].parent)
    data["registry"]["signing_key"] = str(signing_keys["root"] / "fleet.key")
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump(data))
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        for i, truth in enumerate(truths):
            frame = _frame(i, truth, 1, "trouser")
            pool.add_frame(frame)
            pool.set_label(frame.id, frame.sim_label, "human", 1, reason="review")
    return data, config


def test_propose_send_and_measure_a_campaign(tmp_path, cloud_models, signing_keys, capsys):
    # round 1: the robots uploaded trousers; people labeled 40 trousers and 2 bags
    _, config = _labeled(tmp_path, cloud_models, signing_keys, [TROUSER] * 40 + [BAG] * 2)
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        per_class = {name: {"accuracy": 0.9, "frames": 50} for name in LABELS}
        per_class["bag"] = {"accuracy": 0.3, "frames": 50}
        tiers = {"T4": {"before": {"per_class": per_class}, "decision": {"promote": False}}}
        pool.set_step(1, "evaluate", "done", {"tiers": tiers})

    assert cloud_cli(["campaign", "propose", "--config", str(config)]) == 0
    proposal = json.loads(capsys.readouterr().out)
    assert proposal["needs"][0]["class"] == "bag"  # field accuracy 0.3 and two labels: the neediest
    assert proposal["campaign"]["target"] == "bag" and proposal["campaign"]["version"] == "1"

    jobs = tmp_path / "jobs"
    sent = ["campaign", "send", "--config", str(config), "--things", "robot-0,robot-1", "--backend", f"file://{jobs}"]
    assert cloud_cli(sent) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["things"] == ["robot-0", "robot-1"] and out["campaign"] == "more-bag"
    for thing in ("robot-0", "robot-1"):
        (queued,) = (jobs / thing / "queued").glob("*.json")
        document = json.loads(queued.read_text())["jobDocument"]
        verify_document(document, signing_keys["trusted"], "campaign")  # signed with the registry's key
        assert parse_selection_job(document).changes == {"class_weights": {"bag": 4.0}}

    # round 2: after the campaign a third of the uploads are bags by the robots' own labels
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        for i in range(30):
            pool.add_frame(_frame(100 + i, BAG, 2, "bag" if i % 3 == 0 else "trouser"))
    assert cloud_cli(["campaign", "measure", "--config", str(config), "--class", "bag"]) == 0
    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert rounds["1"] == {"uploads": 42, "share": 0.0} and rounds["2"] == {"uploads": 30, "share": round(1 / 3, 4)}


def test_auto_sends_only_by_policy_and_one_campaign_at_a_time(tmp_path, cloud_models, signing_keys, capsys):
    data, config = _labeled(tmp_path, cloud_models, signing_keys, [TROUSER] * 10)
    jobs = tmp_path / "jobs"
    auto = ["campaign", "auto", "--config", str(config), "--things", "robot-0", "--backend", f"file://{jobs}"]

    assert cloud_cli(auto) == 0  # the default policy is manual: nothing is sent
    assert "manual" in json.loads(capsys.readouterr().out)["skipped"]
    assert not list(jobs.rglob("*.json"))

    data["campaigns"] = {"approve": "auto", "expires_s": 2.0}
    config.write_text(yaml.safe_dump(data))
    assert cloud_cli(auto) == 0
    first = json.loads(capsys.readouterr().out)["sent"]
    assert first["version"] == "1" and first["target"] != "trouser"  # never scored, no labels: needier
    assert cloud_cli(auto) == 0  # the first still runs: not a second one
    assert "runs until" in json.loads(capsys.readouterr().out)["skipped"]
    assert len(list((jobs / "robot-0" / "queued").glob("*.json"))) == 1

    time.sleep(2.1)  # expired: the next round may ask again
    assert cloud_cli(auto) == 0
    assert json.loads(capsys.readouterr().out)["sent"]["version"] == "2"
    assert len(list((jobs / "robot-0" / "queued").glob("*.json"))) == 2
