"""The foundation tiers: the recipe (a small profile of it built here), the shipped packages and their checks."""

import json
import shutil

import numpy as np
import pytest

from fleetloop_core.errors import ConfigError, ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.signing import SignatureError
from fleetloop_models import build_frames, modelbuild, reference
from fleetloop_models.package_writer import WEIGHTS_FILE
from fleetloop_models.trainers import trainer_for
from fleetloop_sim import sim

RECIPE = ("arch", "input_size", "data", "weights")  # what the small profile shares with the GPU one, per tier
PROFILE_RECIPE = ("frame_height", "frame_width", "randomised_strength", "randomised_prior", "seed", "task")


@pytest.mark.parametrize("full, small", [("foundation", "foundation-small")])
def test_the_small_profile_is_the_foundation_recipe_at_a_smaller_size(full, small):
    big, little = modelbuild.load_profile(full), modelbuild.load_profile(small)
    assert {k: getattr(big, k) for k in PROFILE_RECIPE} == {k: getattr(little, k) for k in PROFILE_RECIPE}
    assert big.tiers.keys() == little.tiers.keys() == {"T1"}
    for field in RECIPE:
        assert getattr(big.tiers["T1"], field) == getattr(little.tiers["T1"], field)
    assert big.randomised_strength[1] > 0.8  # wider than a typical field site's shift (strength 0.8)


def test_foundation_frames_hold_lab_items_only_every_class_alike_and_do_not_depend_on_the_cores(pool, monkeypatch):
    profile = modelbuild.load_profile("foundation-small")
    trainer = trainer_for("classification")
    frames = build_frames.render_training_sets(trainer, profile, "foundation-small", {"randomised"})["randomised"]
    shown = frames.items[frames.items >= 0]
    assert len(frames) == profile.randomised_frames
    assert np.isin(shown, pool.lab_train).all()  # never a field item
    counts = np.bincount(pool.labels[shown], minlength=sim.NUM_ITEM_CLASSES)
    assert counts.min() > 0.5 * counts.mean()  # uniform prior: the lab-rare class (bag) as often as any
    monkeypatch.setattr("multiprocessing.cpu_count", lambda: 1)
    again = build_frames.render_training_sets(trainer, profile, "foundation-small", {"randomised"})["randomised"]
    assert np.array_equal(frames.images, again.images) and np.array_equal(frames.labels, again.labels)


def test_the_small_foundation_profile_builds_a_package_scored_per_site_and_class(tmp_path):
    dirs = modelbuild.build_reference_models(tmp_path, "foundation-small", progress=False)
    manifest = json.loads((dirs["T1"] / "manifest.json").read_text())
    assert manifest["architecture"] == "foundation-l" and manifest["tier"] == "T1"
    assert [f["path"] for f in manifest["files"]] == ["model.onnx"]  # weights: false
    assert not (dirs["T1"] / WEIGHTS_FILE).exists()
    metrics = manifest["metrics"]
    for key in ("field_test_accuracy.site-0", "field_test_accuracy.site-1", "field_test_accuracy.confusable"):
        assert 0.0 <= metrics[key] <= 1.0
    assert "field_test_accuracy.items" in metrics and "field_test_accuracy.shirt" in metrics


def test_the_default_profile_installs_the_shipped_foundation_verified_and_it_holds_up_in_the_field(tmp_path, pool):
    dirs = modelbuild.build_reference_models(tmp_path, "default", tiers=("T1",), progress=False)
    installed = json.loads((dirs["T1"] / "manifest.json").read_text())
    assert installed["signature"]["key_id"] == reference.reference_keys().key_ids[0]
    assert installed["training"]["profile"] == "foundation" and installed["training"]["device"] == "cuda"
    # measured again here, on field frames of sites and a seed the build never scored
    model = TierModel.load(dirs["T1"], providers=("cpu",), warmup=0)
    for site in sim.make_fleet_sites(2, seed=7):
        test = sim.field_test_set(site, 150, seed=7, pool=pool)
        accuracy = float((model.infer_batch(test.images).probs.argmax(axis=1) == test.labels).mean())
        assert accuracy >= 0.88, (site.name, accuracy)
    before = (dirs["T1"] / "model.onnx").stat().st_mtime_ns
    modelbuild.build_reference_models(tmp_path, "default", tiers=("T1",), progress=False)
    assert (dirs["T1"] / "model.onnx").stat().st_mtime_ns == before  # already installed: not copied again


@pytest.fixture
def shipped_copy(tmp_path):
    source = tmp_path / "shipped" / "T1"
    shutil.copytree(reference.shipped_package("detection-foundation", "T1"), source)
    return source


def _install(source, target, trained_by="detection-foundation"):
    return reference.install_shipped(source, target, task="detection", tier="T1", trained_by=trained_by)


def test_a_shipped_package_with_a_changed_byte_is_refused_and_nothing_installed(shipped_copy, tmp_path):
    with open(shipped_copy / "model.onnx", "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="sha256"):
        _install(shipped_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unsigned_or_mislabelled_shipped_package_is_refused(shipped_copy, tmp_path):
    with pytest.raises(ModelError, match="training profile is 'detection-foundation', expected 'foundation'"):
        _install(shipped_copy, tmp_path / "out", trained_by="foundation")
    manifest = json.loads((shipped_copy / "manifest.json").read_text())
    manifest.pop("signature")
    (shipped_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="unsigned"):
        _install(shipped_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tier_both_built_and_shipped_is_a_config_error(tmp_path):
    config = tmp_path / "models.yaml"
    tier = "{arch: foundation, input_size: 128, data: lab, samples: 10, epochs: 1}"
    config.write_text(
        f"profiles:\n  p:\n    lab_frames: 10\n    shipped: {{T1: foundation}}\n    tiers: {{T1: {tier}}}\n"
    )
    with pytest.raises(ConfigError, match=r"T1.*both built \(tiers\) and shipped"):
        modelbuild.load_profile("p", config)


def test_an_unknown_profile_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown profile 'nope' \(known: default, foundation"):
        modelbuild.build_reference_models(tmp_path / "models", profile_name="nope", progress=False)
    assert not (tmp_path / "models").exists()  # no directory, no lock file left behind


@pytest.mark.parametrize("profile", ["foundation", "detection-foundation"])
def test_each_shipped_package_carries_its_current_training_report(profile):
    directory = reference.shipped_package(profile, "T1")
    assert (directory / "TRAINING.md").read_text() == reference.training_report(directory)


def test_a_build_refuses_to_replace_another_profiles_tiers_unless_forced(tmp_path, test_models):
    # e.g. `fleetloop demo --quick --models models` would have retrained the default models in the quick profile
    shutil.copytree(test_models["T1"], tmp_path / "T1")
    before = (tmp_path / "T1" / "model.onnx").read_bytes()
    with pytest.raises(ConfigError, match=r"T1 built by profile 'test'; profile 'default' would replace it .*--force"):
        modelbuild.build_reference_models(tmp_path, "default", tiers=("T1",), progress=False)
    assert (tmp_path / "T1" / "model.onnx").read_bytes() == before
    # its own profile's rebuild is not refused (cached here: nothing to do)
    modelbuild.build_reference_models(tmp_path, "test", tiers=("T1",), progress=False)
    dirs = modelbuild.build_reference_models(tmp_path, "default", tiers=("T1",), progress=False, force=True)
    assert json.loads((dirs["T1"] / "manifest.json").read_text())["training"]["profile"] == "foundation"
