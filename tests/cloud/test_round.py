"""The cloud loop end to end: ingest -> auto-label -> route -> simulated review -> train -> distil -> INT8
-> gate -> register, on a few hundred frames of the simulated fleet written to a file store."""

import json

import pytest
import yaml

from fleetloop_sim.dataset import LABELS
from fleetloop_core.inference import TierModel
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.contracts.sidecar import frame_key, sidecar_key
from fleetloop_core.signing import generate_keypair
from fleetloop_core.store import open_store

from fleetloop_cloud.annotators import record_answer
from fleetloop_cloud.cli import main as cloud_cli
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.training_job import TrainingError

from fixtures.cloud_world import cloud_config, fleet_sites, write_fleet


def _keys(tmp_path):
    private, public = generate_keypair()
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "fleet.pub").write_bytes(public)
    (tmp_path / "fleet.key").write_bytes(private)
    return {"signing_key": str(tmp_path / "fleet.key"), "trusted_keys": str(tmp_path / "trusted")}


def _world(tmp_path, cloud_models, frames_per_robot, robots=2):
    store = open_store(f"file://{tmp_path / 'store'}")
    edge = TierModel.load(cloud_models["T4"], providers=("cpu",), warmup=0)
    sites = fleet_sites()
    sidecars = write_fleet(
        store, [(f"robot-{i}", sites[i % len(sites)]) for i in range(robots)], frames_per_robot, edge_model=edge
    )
    return store, sidecars


@pytest.mark.parametrize("pool", ["sqlite", "postgresql"])
def test_a_round_end_to_end(tmp_path, cloud_models, pool, request):
    store, sidecars = _world(tmp_path, cloud_models, 150)
    pool_uri = request.getfixturevalue("postgres_uri") if pool == "postgresql" else None
    # bad input beside the good: a frame whose sidecar never came, a sidecar without its frame, a broken sidecar
    store.put_bytes("frames/robot-0/2026-09-21/" + "a" * 64 + ".png", b"\x89PNG half an upload")
    store.delete(frame_key(sidecars[5]))
    store.put_bytes(sidecar_key(sidecars[6]), b'{"robot_id": 7}')
    config = cloud_config_from_dict(
        cloud_config(
            tmp_path,
            store.uri,
            cloud_models["T1"].parent,
            routing={"bound_z": 0.5},
            # an exact annotator: audit disagreements are then the
            # teachers' errors, whatever machine built them
            annotators={"simulated": {"error_rate": 0.0}},
            audit={"max_passes": 3},
            registry={"backend": "local", "uri": str(tmp_path / "registry"), **_keys(tmp_path)},
            pool=pool_uri,  # None: work_dir/pool.sqlite
        )
    )
    with CloudLoop(config, progress=False) as loop:
        assert str(loop.pool.path).startswith("postgresql://") == (pool == "postgresql")
        summary = loop.run_round().to_dict()
        (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))

        assert summary["status"] == "finished"
        assert summary["steps"] == {
            s: "done" for s in ("ingest", "autolabel", "review", "train", "evaluate", "register")
        }
        frames = summary["frames"]
        assert frames["ingested"] == 298 and frames["quarantined"] == 2 and frames["waiting_for_sidecar"] == 1
        reasons = loop.pool.quarantined()
        assert "sidecar without frame" in reasons[sidecar_key(sidecars[5])]
        assert "robot_id" in reasons[sidecar_key(sidecars[6])]

        # every ingested frame got a label, by the route that was safe for it
        labels = summary["labels"]
        assert labels["accepted"] == 298 and frames["pending_review"] == 0
        assert labels["auto_accepted"] + labels["propagated"] + labels["human"] == 298
        assert labels["auto_accepted"] + labels["propagated"] > 0
        assert summary["routing"]["validation_frames"] == 60

        # QA: the audit sample of auto labels meets the target, with its interval
        audit = summary["audit"]
        final = audit["final"]
        assert audit["meets_target"] and final["accuracy"] >= 0.98 == audit["target"]
        assert final["frames"] >= 25 and final["ci"][0] <= final["accuracy"] <= final["ci"][1]

        # both costs itemised from the cost model
        human, compute, figures = summary["human"], summary["compute"], summary["figures"]
        assert set(human["by_purpose"]) >= {"calibration", "audit"}
        assert human["seconds"] == pytest.approx(sum(p["seconds"] for p in human["by_purpose"].values()), abs=0.01)
        assert human["dollars"] == pytest.approx(sum(p["dollars"] for p in human["by_purpose"].values()), abs=1e-4)
        assert human["by_purpose"]["audit"]["seconds"] == pytest.approx(
            human["by_purpose"]["audit"]["tasks"] * human["seconds_per_verify"]
        )
        assert compute["by_step"]["train"]["cpu_seconds"] > 0 and compute["by_step"]["train"]["dollars"] > 0
        assert compute["by_step"]["autolabel"]["dollars"] > 0
        assert compute["dollars"] == pytest.approx(sum(s["dollars"] for s in compute["by_step"].values()), abs=1e-5)
        assert figures["manual_labels_per_human_hour"] == pytest.approx(3600 / human["seconds_per_label"])
        assert figures["loop_labels_per_human_hour"] == pytest.approx(298 / (human["seconds"] / 3600), rel=1e-3)
        assert figures["throughput_ratio"] > 1 and figures["cost_ratio"] > 1
        # beside each suggestion the class a person takes with one key (the teachers' runner-up), priced so
        costs = loop.cost_model.human
        asked = [t for t in loop.pool.tasks(status="done") if t.purpose != "audit" and t.suggestion is not None]
        assert asked and all(t.alternative not in (None, t.suggestion) for t in asked)
        assert all(t.alternative is None for t in loop.pool.tasks(purpose="audit"))  # an audit checks one label
        for t in asked:
            priced = {t.suggestion: costs.seconds_per_verify, t.alternative: costs.seconds_per_alternative}
            assert t.seconds == priced.get(t.answer, costs.seconds_per_label)

        # train -> distil -> INT8 -> gate -> register
        models = summary["models"]
        assert set(models) == {"T2", "T3", "T4", "T3-int8", "T4-int8", "int8_vs_fp32"}
        assert set(models["int8_vs_fp32"]) == {"T3-int8", "T4-int8"}
        entries = {e["variant"]: e for e in summary["registry"]}
        assert set(entries) == {"T2", "T3", "T4", "T3-int8", "T4-int8"}
        for variant, entry in entries.items():
            assert entry["key_id"]  # signed
            assert entry["status"] == ("Approved" if models[variant]["promoted"] else "Rejected")
        promoted = [v for v in ("T2", "T3", "T4") if models[v]["promoted"]]
        assert promoted, "the barely trained test edge tiers should lose to the distilled ones: " + json.dumps(
            {
                v: (models[v]["accuracy_before"], models[v]["accuracy_after"], models[v]["reasons"])
                for v in ("T2", "T3", "T4")
            }
        )
        for variant in promoted:
            production = loop.production(variant)  # fetched from the registry, signature verified
            assert load_manifest(production).version == summary["models"][variant]["candidate"]
        # the frames that trained the new version are recorded with it
        version = entries["T4"]["version"]
        used = [r for r in loop.pool.frames() if version in loop.pool.usage(r["id"])]
        assert len(used) == 298 and all(r["state"] == "used" for r in used)

        # a finished round is not run again; the next round finds nothing new to learn
        again = loop.run_round().to_dict()
        assert again["round"] == 2 and again["frames"]["ingested"] == 0
        assert again["steps"]["train"] == "skipped" and "no new labels" in again["notes"]["train"]
        assert again["steps"]["register"] == "skipped"


def _write_config(tmp_path, data) -> str:
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_steps_are_idempotent_and_review_waits_for_the_review_page(tmp_path, cloud_models, capsys, caplog):
    store, _ = _world(tmp_path, cloud_models, 60, robots=1)
    config = _write_config(
        tmp_path,
        cloud_config(
            tmp_path,
            store.uri,
            cloud_models["T1"].parent,
            review={"annotator": "review-page", "calibration_sample": 20},
        ),
    )
    assert cloud_cli(["review", "--config", config, "--no-progress"]) == 1  # nothing ingested yet
    assert "run 'fleetloop-cloud ingest' (or 'round') before review" in caplog.text
    assert cloud_cli(["ingest", "--config", config, "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 60
    assert cloud_cli(["ingest", "--config", config, "--json", "--no-progress"]) == 0  # done: does nothing
    assert json.loads(capsys.readouterr().out)["ingested"] == 60
    assert cloud_cli(["autolabel", "--config", config, "--json", "--no-progress"]) == 0
    capsys.readouterr()
    rounds_of_answers = 0
    with CloudLoop(
        cloud_config_from_dict(
            cloud_config(
                tmp_path,
                store.uri,
                cloud_models["T1"].parent,
                review={"annotator": "review-page", "calibration_sample": 20},
            )
        ),
        progress=False,
    ) as loop:
        while True:
            assert cloud_cli(["review", "--config", config, "--json", "--no-progress"]) == 0
            result = json.loads(capsys.readouterr().out)
            if result.get("phase") == "done":
                break
            assert result["waiting_tasks"] > 0  # humans have the page's tasks
            # the review page answers (here: the simulated truth, as a careful reviewer would)
            for task in loop.pool.tasks(status="submitted", backend="review-page"):
                truth = loop.pool.frame(task.frame_id)["sim_label"]
                record_answer(loop.pool, loop.cost_model, task.id, LABELS[truth], "reviewer-1", LABELS)
            rounds_of_answers += 1
            assert rounds_of_answers < 10
        assert rounds_of_answers >= 2  # calibration first, then the rest
        assert len(loop.pool.labels()) == 60
        status, info = loop.pool.step(1, "review")
        assert status == "done" and info["calibration_tasks"] == 20
    assert cloud_cli(["review", "--config", config, "--json", "--no-progress"]) == 0  # finished: nothing to do
    assert json.loads(capsys.readouterr().out)["phase"] == "done"
    # a Ground Truth augmented manifest of any subset: here the human-labeled frames
    out = tmp_path / "human.manifest"
    assert cloud_cli(["manifest", "--config", config, "--source", "human", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["fleetloop-label-metadata"]["human-annotated"] == "yes" for r in records)
    assert all(r["source-ref"].startswith("file://") for r in records)


class _BrokenBackend:
    name = "broken"

    def run(self, job):
        raise TrainingError(f"training job {job.name} failed: channel 'train' is empty")


def test_the_round_goes_on_when_training_fails_and_nothing_accepted_is_lost(tmp_path, cloud_models):
    store, _ = _world(tmp_path, cloud_models, 40, robots=1)
    config = cloud_config_from_dict(
        cloud_config(tmp_path, store.uri, cloud_models["T1"].parent, review={"calibration_sample": 20})
    )
    with CloudLoop(config, progress=False, training_backend=_BrokenBackend()) as loop:
        summary = loop.run_round().to_dict()
        assert summary["status"] == "finished"
        assert summary["steps"]["train"] == "failed" and "channel 'train' is empty" in summary["notes"]["train"]
        assert summary["steps"]["evaluate"] == "skipped" and summary["steps"]["register"] == "skipped"
        assert summary["labels"]["accepted"] == 40 and len(loop.pool.labels()) == 40
    # the next round (new frames, same broken backend) fails training again; asked for explicitly, the
    # failed step is retried, and with a working backend it would go on
    with CloudLoop(config, progress=False, training_backend=_BrokenBackend()) as loop:
        write_fleet(store, [("robot-9", fleet_sites()[1])], 10)
        for step in ("ingest", "autolabel", "review"):
            getattr(loop, step)()
        with pytest.raises(TrainingError):
            loop.train()
        assert loop.pool.step(2, "train")[0] == "failed"
        with pytest.raises(TrainingError):
            loop.train()  # retried, not skipped
