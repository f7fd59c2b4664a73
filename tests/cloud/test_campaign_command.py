"""``fleetloop-cloud campaign``: an operator proposes a campaign from the pool and the last evaluation, sends it
(signed) to robots through the job backend, and measures the share of uploads of its class per round."""

import dataclasses
import json
import time

import yaml

from fleetloop_core.contracts.selection_job import parse_selection_job
from fleetloop_core.signing import verify_document

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.campaign_command import campaign_shares
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


def test_propose_send_and_measure_a_campaign(tmp_path, cloud_models, signing_keys, capsys, caplog):
    # round 1: the robots uploaded trousers; people labeled 40 trousers and 2 bags
    _, config = _labeled(tmp_path, cloud_models, signing_keys, [TROUSER] * 40 + [BAG] * 2)
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        per_class = {name: {"accuracy": 0.9, "frames": 50} for name in LABELS}
        per_class["bag"] = {"accuracy": 0.3, "frames": 50}
        tiers = {"T4": {"before": {"per_class": per_class}, "decision": {"promote": False}}}
        pool.set_step(1, "evaluate", "done", {"tiers": tiers})

    assert cloud_cli(["campaign", "propose", "--config", str(config)]) == 0
    proposal = json.loads(capsys.readouterr().out)
    assert proposal["needs"][0]["kind"] == "class" and proposal["needs"][0]["name"] == "bag"  # 0.3, two labels
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

    with Pool(tmp_path / "work" / "pool.sqlite") as pool:  # uploads no one has labeled yet: labeled 0
        pool.add_frame(_frame(99, BAG, 3, "bag"))
    # round 2: after the campaign a third of the uploads are bags by the robots' own labels; all are bags, and
    # people have labeled 12 of them so far
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        for i in range(30):
            frame = _frame(100 + i, BAG, 2, "bag" if i % 3 == 0 else "trouser")
            pool.add_frame(frame)
            if i < 12:
                pool.set_label(frame.id, BAG, "human", 2, reason="review")
    assert cloud_cli(["campaign", "measure", "--config", str(config), "--class", "bag"]) == 0
    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert rounds["1"] == {"uploads": 42, "share": 0.0, "labeled": 42, "labeled_share": round(2 / 42, 4)}
    assert rounds["2"] == {"uploads": 30, "share": round(1 / 3, 4), "labeled": 12, "labeled_share": 1.0}
    assert rounds["3"] == {"uploads": 1, "share": 1.0, "labeled": 0, "labeled_share": 0.0}
    assert cloud_cli(["campaign", "measure", "--config", str(config), "--site", "site-0"]) == 0
    assert "labeled" not in json.loads(capsys.readouterr().out)["rounds"]["1"]  # a site is no label
    assert cloud_cli(["campaign", "measure", "--config", str(config), "--class", "bags"]) == 1
    assert "--class 'bags': not a class of this loop (known: t-shirt" in caplog.text


def test_a_class_measured_before_any_label_says_none_is_labeled(tmp_path):
    with Pool(tmp_path / "pool.sqlite") as pool:
        pool.add_frame(_frame(1, BAG, 1, "bag"))
        assert campaign_shares(pool, "bag", "class", LABELS) == {
            1: {"uploads": 1, "share": 1.0, "labeled": 0, "labeled_share": 0.0}
        }


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


def test_a_site_campaign_goes_to_the_sites_robots_and_teacher_disagreement_names_a_class(
    tmp_path, cloud_models, signing_keys, capsys
):
    import numpy as np

    data, config = _labeled(tmp_path, cloud_models, signing_keys, [TROUSER] * 40)  # robot r1 at site-0
    shirt = LABELS.index("shirt")
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        far = [dataclasses.replace(_frame(200 + i, shirt, 1, "shirt"), robot_id="r2", site="site-1") for i in range(30)]
        for frame in far:
            pool.add_frame(frame)
        for frame in far[:10]:
            pool.set_label(frame.id, shirt, "human", 1, reason="review")
        per_class = {name: {"accuracy": 0.95, "frames": 50} for name in LABELS}
        per_site = {"site-0": {"accuracy": 0.9, "frames": 300}, "site-1": {"accuracy": 0.4, "frames": 300}}
        pool.set_step(
            1, "evaluate", "done", {"tiers": {"T4": {"before": {"per_class": per_class, "per_site": per_site}}}}
        )

    assert cloud_cli(["campaign", "propose", "--config", str(config)]) == 0
    campaign = json.loads(capsys.readouterr().out)["campaign"]
    # site-1: accuracy 0.40 with 10 labels beats every class (0.95 everywhere)
    assert campaign["kind"] == "site" and campaign["target"] == "site-1" and campaign["robots"] == ["r2"]
    jobs = tmp_path / "jobs"
    sent = ["campaign", "send", "--config", str(config), "--things", "r1,r2", "--backend", f"file://{jobs}"]
    assert cloud_cli(sent) == 0
    assert json.loads(capsys.readouterr().out)["things"] == ["r2"]  # the site's robots only
    (queued,) = (jobs / "r2" / "queued").glob("*.json")
    changes = parse_selection_job(json.loads(queued.read_text())["jobDocument"]).changes
    assert changes == {"budget.frames_per_hour": 1200.0} and not (jobs / "r1").exists()
    assert cloud_cli(["campaign", "measure", "--config", str(config), "--site", "site-1"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds"]["1"] == {"uploads": 70, "share": round(30 / 70, 4)}

    # the teachers on round 1: T1 calls the 30 far frames shirts, T2 agrees on 9 of them
    data["campaigns"] = {"kinds": ["disagreement"]}
    config.write_text(yaml.safe_dump(data))
    with Pool(tmp_path / "work" / "pool.sqlite") as pool:
        ids = [frame.id for frame in far]
        t1 = np.zeros((30, len(LABELS)), np.float32)
        t1[:, shirt] = 1.0
        t2 = t1.copy()
        t2[9:, shirt], t2[9:, TROUSER] = 0.0, 1.0
        pool.put_predictions("T1", "a", ids, t1, None)
        pool.put_predictions("T2", "b", ids, t2, None)
        pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    assert cloud_cli(["campaign", "propose", "--config", str(config)]) == 0
    proposal = json.loads(capsys.readouterr().out)
    assert [n["kind"] for n in proposal["needs"]] == ["disagreement"]
    assert proposal["campaign"]["name"] == "more-shirt-disputed"
    assert "teachers agree on 0.30 of 30 uploads T1 labels shirt" in proposal["campaign"]["reason"]
