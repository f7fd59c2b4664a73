"""The detection closed loop as a library (what `fleetloop demo --task detection` runs): robots with the
detection cascade, selector and upload queue, the detection loop per arm, the baselines, mAP per round."""

import json

from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.demo import seeds
from fleetloop_cloud.demo.config import DetectionDemoConfig
from fleetloop_cloud.demo.detection import run_detection_demo


def test_one_small_detection_round_writes_the_report(tmp_path, detection_models):
    # a gate that lets anything through: whatever the round trains is approved (one tiny round rarely beats
    # the reference), so approved detectors reach the robots through signed packages and the control plane
    settings = DetectionDemoConfig(
        robots=1,
        rounds=1,
        frames_per_robot=100,
        frames_per_hour=21600.0,
        models_profile="detection-test",
        test_frames_per_site=15,
        teacher_epochs=1,
        distil_epochs=1,
        warm_start_epochs=1,
        lab_replay_frames=10,
        calibration_sample=10,
        upload_all_epochs=1,
        gate={"min_gain": -1.0, "max_site_regression": 1.0, "max_class_regression": 1.0},
    )
    report = run_detection_demo(tmp_path / "demo", settings, models=detection_models["T4"].parent, progress=False)
    assert {p.name for p in (tmp_path / "demo").iterdir()} >= {"report.json", "report.md", "map_per_round.png"}
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["task"] == "detection"
    loop, random, upload_all = (report["arms"][k] for k in ("loop", "random", "upload-all"))
    # mAP per round for every arm, round 0 (the reference detectors) included
    for rounds in (loop, random, upload_all):
        assert [r["round"] for r in rounds] == [0, 1]
        assert all(0.0 <= r["map"]["T4"]["map50"] <= 1.0 for r in rounds)
    assert loop[0]["map"] == random[0]["map"]  # same start, same test set
    # the random arm uploads as many frames per robot as the loop's robot kept
    assert loop[1]["robots"][0]["kept"] == random[1]["robots"][0]["kept"] == loop[1]["uploaded"] > 0
    assert loop[1]["labels"]["accepted"] == loop[1]["uploaded"]
    assert loop[1]["figures"]["manual_seconds"] > 0 and upload_all[1]["uploaded"] == 100
    # robots were provisioned with signed round-0 detectors and took the approved ones as deploy jobs
    assert loop[1]["promoted"]["T4"] and loop[1]["versions"]["T4"] != load_manifest(detection_models["T4"]).version
    t4 = [d for d in loop[1]["deploys"] if d["tier"] == "T4"]
    assert t4 and not t4[0]["aborted"], loop[1]["deploys"]
    canary = t4[0]["report"]["canary"]["results"]["robot-0"]
    assert canary["status"] == "SUCCEEDED" and "shadow_agreement" in canary["details"], canary
    assert report["serving"]["loop"]["robot-0"]["T4"] == loop[1]["versions"]["T4"]
    rows = {row["arm"]: row for row in report["headline"]}
    assert set(rows) == {"loop", "random", "upload-all"} and rows["loop"]["accepted"] == loop[1]["uploaded"]
    assert "| loop |" in (tmp_path / "demo" / "report.md").read_text()
    # `fleetloop demo --task detection --seeds` reads its figures from this report
    figures = seeds.aggregate({0: report}, seeds.DETECTION_FIGURES)
    assert figures["throughput_ratio"]["values"][0] == rows["loop"]["throughput_ratio"]
    assert figures["upload_all_t4_map50_end"]["values"][0] == rows["upload-all"]["t4_map50_end"]
    assert all(f["seeds_measured"] == 1 for f in figures.values()), figures
