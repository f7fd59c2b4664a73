"""`fleetloop demo --quick`: the whole closed loop on a small simulated fleet, through the real CLI.

ROS 2 robot processes, the local control plane, the cloud loop with its baselines, the report.
Checks the report's structure, that the loop's final edge model beats the round-0 model, that no
frame was dropped, and that report.html renders its plots in Chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fleetloop_core.cli import command_line

ROOT = Path(__file__).resolve().parents[2]
KEYS = (
    "throughput_ratio",
    "cost_ratio",
    "auto_label_error",
    "upload_fraction",
    "upload_gain_share",
    "al_label_ratio",
    "frames_dropped",
    "round0_edge_accuracy",
    "final_edge_accuracy",
    "minutes",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-quick") / "run"
    env = dict(os.environ, ROS_DOMAIN_ID=str(100 + os.getpid() % 100), ROS_LOCALHOST_ONLY="1")
    process = subprocess.run(
        command_line("demo", "--quick", "--out", str(out)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return out, process.stdout


def test_report_has_every_figure_and_the_terminal_shows_the_headline(quick_run):
    out, stdout = quick_run
    report = json.loads((out / "report.json").read_text())
    for key in KEYS:
        assert key in report, key
    assert "headline figures" in stdout and str(out / "report.html") in stdout
    for name in (
        "report.md",
        "report.html",
        "edge_accuracy.png",
        "labeling.png",
        "active_learning.png",
        "bandwidth.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # every figure comes from the run's own measurements
    labeling = report["labeling"]["stream_world"]
    assert labeling["accepted_labels"] == sum(r["labels"]["accepted"] for r in report["rounds"]["loop"])
    assert report["upload_fraction"] == pytest.approx(
        report["uploads"]["uploaded"] / report["uploads"]["camera_frames"]
    )
    assert {t["figure"] for t in report["targets"]} >= {"throughput_ratio", "cost_ratio", "frames_dropped"}
    assert len(report["edge_accuracy"]["loop"]) == report["settings"]["rounds"] + 1


def test_the_loop_improves_the_edge_model_without_dropping_frames(quick_run):
    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    assert report["final_edge_accuracy"] > report["round0_edge_accuracy"]
    assert report["frames_dropped"] == 0
    assert report["settings"]["ros"] is True
    edge_rollouts = [d for d in report["swaps"]["loop"] if d["tier"] == "T4" and not d.get("aborted")]
    assert edge_rollouts, "a better edge model was rolled out to the fleet"
    # every robot serves the last edge model rolled out
    assert {versions.get("T4") for versions in report["serving_at_end"].values()} == {edge_rollouts[-1]["version"]}
    # the watch after every swap judged frames: the cameras stream on while models roll out, past a round's
    # frames and after the last round (before, a rollout that outlasted the next round's frames, and every one
    # of the last round, passed unjudged on 0 frames). A model the shadow check refused was never swapped in,
    # and has no watch.
    last = report["settings"]["rounds"]
    watches = [
        (d["round"], d["tier"], robot, result["details"])
        for d in report["swaps"]["loop"]
        for phase in ("canary", "fleet")
        for robot, result in ((d["report"].get(phase) or {}).get("results") or {}).items()
        if "swap_seconds" in result["details"]
    ]
    assert last in {w[0] for w in watches}, "the last round's models were swapped in somewhere"
    unjudged = [w for w in watches if w[3].get("watch_judged") != "true" or int(w[3].get("watch_frames", 0)) < 30]
    assert not unjudged, unjudged
    after = report["robot_after_last_round"]
    assert [r["robot_id"] for r in after] == list(report["serving_at_end"]) and all(r["frames"] > 0 for r in after)


def test_the_campaign_arm_sends_one_campaign_after_round_one_and_measures_it_beside_the_loop(quick_run):
    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    section = report["campaign"]
    (event,) = section["events"]  # two rounds: the policy runs after the first only
    assert event["round"] == 1 and "sent" in event, event
    assert set(event["robots"].values()) == {"SUCCEEDED"}  # every robot applied it before round 2 streamed
    assert section["target"] == event["sent"]["target"] != "none" and section["sent_after_round"] == 1
    rounds = {entry["round"]: entry for entry in section["rounds"]}
    assert not rounds[1]["campaign_running"] and rounds[2]["campaign_running"]
    for name in ("loop", "campaign"):  # both arms measured on the same figures
        assert rounds[2][name]["uploads"] > 0 and rounds[2][name]["field_accuracy"] is not None
    assert section["share_before"] == rounds[1]["campaign"]["robot_share"]
    assert section["share_after"] == rounds[2]["campaign"]["robot_share"]
    assert report["campaign_share_ratio"] == section["share_ratio"]
    for figure in ("labeled_share", "true_share"):  # what the uploads turned out to be, beside the robots' labels
        before, after = rounds[1]["campaign"][figure], rounds[2]["campaign"][figure]
        assert 0 <= before <= 1 and 0 <= after <= 1
        assert section[f"{figure}_ratio"] == (round(after / before, 2) if before else None)
    beside = rounds[2]["loop"]["labeled_share"]
    assert section["labeled_share_vs_loop"] == (
        round(rounds[2]["campaign"]["labeled_share"] / beside, 2) if beside else None
    )
    assert "## Data campaign" in (out / "report.md").read_text()


def test_hard_mode_relabels_the_demos_draw_to_its_figure_and_labels_a_fresh_one(quick_run, tmp_path):
    out, _ = quick_run
    script = ROOT / "scripts" / "hard_mode_draws.py"
    process = subprocess.run(
        [sys.executable, str(script), str(out), "--draws", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    demo, fresh = json.loads((tmp_path / "hard_mode_draws.json").read_text())
    report = json.loads((out / "report.json").read_text())
    # the demo's own uploads, labeled again by the same teachers and code: the demo's figure, exactly
    assert demo["draw"] == "demo" and demo["ratio"] == pytest.approx(report["hard_mode_throughput_ratio"])
    assert fresh["draw"] == "0" and fresh["ratio"] > 0 and fresh["audit_passes"] >= 0
    assert "| 0 | demo |" in (tmp_path / "hard_mode_draws.md").read_text()


def test_report_html_shows_the_plots_in_chromium(quick_run, browser):
    out, _ = quick_run
    page = browser.new_page()
    try:
        page.goto((out / "report.html").as_uri())
        images = page.locator("img")
        assert images.count() >= 4
        for i in range(images.count()):
            assert page.evaluate("(img) => img.naturalWidth", images.nth(i).element_handle()) > 100
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "demo-report.png"), full_page=True)
    finally:
        page.close()


def test_detection_task_refuses_options_it_does_not_have():
    # `fleetloop demo --task detection` runs fleetloop_cloud.demo.detection (tests/cloud/test_detection_demo.py
    # runs it); options of the classification demo it has no use for are refused by name, not ignored
    process = subprocess.run(
        command_line("demo", "--task", "detection", "--seed", "3", "--control-plane", "mqtt", "--store", "s3://x"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0
    assert "--control-plane, --store not supported" in process.stderr, process.stderr[-2000:]
