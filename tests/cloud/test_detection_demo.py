"""The detection closed loop as a library (what `fleetloop demo --task detection` runs): robots with the
detection cascade, selector and upload queue, the detection loop per arm, the baselines, mAP per round."""

import json

from fleetloop_cloud.detection_demo import DetectionDemoSettings, run_detection_demo


def test_one_small_detection_round_writes_the_report(tmp_path, detection_models):
    settings = DetectionDemoSettings(robots=1, rounds=1, frames_per_robot=60, frames_per_hour=36000.0,
                                     profile="detection-test", test_frames_per_site=15, teacher_epochs=1,
                                     distil_epochs=1, warm_start_epochs=1, lab_replay_frames=10, calibration_sample=10,
                                     upload_all_epochs=1)
    report = run_detection_demo(tmp_path / "demo", settings, models=detection_models["T4"].parent, progress=False)
    assert {p.name for p in (tmp_path / "demo").iterdir()} >= {"report.json", "report.md", "map_per_round.png"}
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["task"] == "detection"
    loop, random, upload_all = (report["arms"][k] for k in ("loop", "random", "upload-all"))
    # mAP per round for every arm, round 0 (the reference detectors) included
    for rounds in (loop, random, upload_all):
        assert [r["round"] for r in rounds] == [0, 1]
        assert all(0.0 <= r["map"]["T4"]["map50"] <= 1.0 for r in rounds)
    assert loop[0]["map"] == random[0]["map"]                 # same start, same test set
    # the random arm uploads as many frames per robot as the loop's robot kept
    assert loop[1]["robots"][0]["kept"] == random[1]["robots"][0]["kept"] == loop[1]["uploaded"] > 0
    assert loop[1]["labels"]["accepted"] == loop[1]["uploaded"]
    assert loop[1]["figures"]["manual_seconds"] > 0 and upload_all[1]["uploaded"] == 60
    rows = {row["arm"]: row for row in report["headline"]}
    assert set(rows) == {"loop", "random", "upload-all"} and rows["loop"]["accepted"] == loop[1]["uploaded"]
    assert "| loop |" in (tmp_path / "demo" / "report.md").read_text()
