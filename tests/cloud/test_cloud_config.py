"""config/cloud.yaml: validated at load, errors name the file, the key and the value (or the known names)."""

import pytest
import yaml

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.config import load_cloud_config


def _write(tmp_path, data, name="cloud.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_loads():
    config = load_cloud_config()
    assert config.routing.target_accuracy == 0.98 and config.review.annotator == "simulated"


@pytest.mark.parametrize(
    "section, value, message",
    [
        ({"routing": {"target_accuracy": 1.5}}, None, "routing.target_accuracy: Input should be less than 1 (got 1.5)"),
        ({"routing": {"treshold": 0.9}}, None, "unknown key routing.treshold"),
        (
            {"review": {"annotator": "mturk"}},
            None,
            "review.annotator: unknown name 'mturk' (known: a2i, review-page, sagemaker-groundtruth, simulated)",
        ),
        ({"review": {"strategy": "coreset"}}, None, "review.strategy: unknown name 'coreset'"),
        ({"evaluation": {"test_set": "lab"}}, None, "evaluation.test_set: unknown name 'lab'"),
        ({"autolabel": {"tiers": ["T1", "T9"]}}, None, "tiers must name two of T1, T2, T3, T4"),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path, section, value, message):
    path = _write(tmp_path, {"store": "file:///tmp/s", **section})
    with pytest.raises(ConfigError) as error:
        load_cloud_config(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_local_overrides_are_merged_and_validated(tmp_path):
    path = _write(tmp_path, {"store": "file:///tmp/s", "routing": {"target_accuracy": 0.98, "bound_z": 2.0}})
    _write(tmp_path, {"routing": {"target_accuracy": 0.95}}, "cloud.local.yaml")
    config = load_cloud_config(path)
    assert config.routing.target_accuracy == 0.95 and config.routing.bound_z == 2.0
    _write(tmp_path, {"routing": {"target_accuracy": 3}}, "cloud.local.yaml")
    with pytest.raises(ConfigError, match="cloud.local.yaml: routing.target_accuracy"):
        load_cloud_config(path)
