"""config/demo.yaml: one file for both demos; ``--quick`` merges ``quick:``; errors name the file and the key."""

import pytest
import yaml

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.demo.config import DetectionDemoConfig, load_demo_config


def test_the_detection_section_is_the_detection_demo_and_quick_merges_over_it():
    assert load_demo_config().detection == DetectionDemoConfig()  # the model's defaults are the shipped file's
    quick = load_demo_config(quick=True).detection
    assert (quick.robots, quick.rounds, quick.frames_per_robot, quick.models_profile) == (2, 2, 150, "detection-test")
    overridden = load_demo_config(quick=True, overrides={"detection": {"rounds": 1}}).detection
    assert overridden.rounds == 1 and overridden.frames_per_robot == 150


@pytest.mark.parametrize(
    "detection, message",
    [({"rounds": 0}, "detection.rounds"), ({"frames_per_houre": 10.0}, "unknown key detection.frames_per_houre")],
)
def test_bad_detection_settings_name_the_file_and_the_key(tmp_path, detection, message):
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({"detection": detection}))
    with pytest.raises(ConfigError) as error:
        load_demo_config(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_bad_command_line_value_is_named_as_the_command_lines():
    with pytest.raises(ConfigError) as error:
        load_demo_config(overrides={"robots": 0, "rounds": None})
    assert "demo.yaml + command-line overrides (robots): robots:" in str(error.value)


@pytest.mark.parametrize("quick", [False, True])
def test_a_demo_robots_uploads_stay_within_the_budget_its_starting_burst_included(quick):
    from fleetloop_cloud.demo.run import robot_budget

    cfg = load_demo_config(quick=quick)
    budget = robot_budget(cfg, {"frames_per_hour": 1.0, "burst_seconds": 60.0, "bytes_per_hour": 5.0})
    seconds = cfg.rounds * cfg.frames_per_robot / cfg.camera_rate_hz
    rate = budget["frames_per_hour"] / 3600.0
    # the most a robot can upload: a full bucket at start, then the refill over the run
    assert rate * 60.0 + rate * seconds == pytest.approx(cfg.upload_fraction * cfg.rounds * cfg.frames_per_robot)
    assert budget["bytes_per_hour"] == 5.0 and budget["burst_seconds"] == 60.0


def test_the_detection_demo_refuses_a_models_directory_of_classifiers(test_models):
    from fleetloop_cloud.demo.detection import locate_detectors

    folder = test_models["T4"].parent
    with pytest.raises(ConfigError, match=r"T4: a classification model; the detection demo needs detectors"):
        locate_detectors(folder, "detection-test")
