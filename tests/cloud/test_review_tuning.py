"""Review page tuning numbers (fleetloop_cloud.review.tuning, overrides, settings): pure math and files."""

import numpy as np
import pytest
import yaml

from fleetloop_core.errors import ConfigError
from fleetloop_core.store import open_store

from fleetloop_cloud.config import cloud_config_from_dict, load_cloud_config
from fleetloop_cloud.review import overrides, tuning
from fleetloop_cloud.review.errors import NotFound, ReviewError
from fleetloop_cloud.review.items import Teachers
from fleetloop_cloud.review.settings import load_review_page_config
from fleetloop_cloud.routing import choose_threshold, wilson_lower

REPLAY_HEADER = (
    "setting,budget.frames_per_hour,frames,kept,kept_fraction,kept_per_hour,bytes_per_hour,random,"
    "duplicates,budget_limited,mean_score_kept,mean_score_dropped,threshold_median,kept_none"
)


def _config(tmp_path, **routing):
    return cloud_config_from_dict(
        {
            "store": f"file://{tmp_path / 'store'}",
            "work_dir": str(tmp_path / "work"),
            "routing": {"min_validation": 5, **routing},
        }
    )


def test_risk_coverage_accepts_only_agreeing_frames_most_confident_first():
    curve = tuning.risk_coverage(
        np.array([0.6, 0.9, 0.7, 0.8, 0.95]), np.array([1, 1, 0, 1, 0], bool), np.array([1, 1, 1, 1, 0], bool), z=1.0
    )
    assert curve.frames == 5 and len(curve) == 4  # the disagreeing 0.95 is never accepted
    assert curve.confidence.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert curve.coverage.tolist() == [0.2, 0.4, 0.6, 0.8]
    assert curve.accuracy.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 3 / 4])
    assert curve.lower.tolist() == pytest.approx(
        [wilson_lower(1, 1, 1.0), wilson_lower(2, 2, 1.0), wilson_lower(2, 3, 1.0), wilson_lower(3, 4, 1.0)]
    )


def test_a_target_implies_the_loops_own_threshold_and_its_coverage():
    rng = np.random.default_rng(0)
    n = 400
    confidence = rng.random(n)
    correct = rng.random(n) < 0.5 + 0.5 * confidence  # more confident, more often right
    agree = rng.random(n) < 0.9
    sample = tuning.RoutingSample([str(i) for i in range(n)], confidence, correct, agree, Teachers(1, {}, 1.0, "none"))
    config = cloud_config_from_dict({"store": "file:///tmp/x", "routing": {"bound_z": 1.0, "min_validation": 30}})
    pool_conf, pool_agree = rng.random(1000), rng.random(1000) < 0.8
    for target in (0.85, 0.9, 0.95):
        choice = tuning.choose(sample, config, target, 0.0, pool_conf, pool_agree)
        expected = choose_threshold(confidence, correct, agree, target, 1.0, 30, 0.0)
        assert choice.threshold == expected
        if expected.automated:
            assert choice.validation_coverage == pytest.approx(np.mean(agree & (confidence >= expected.value)))
            assert choice.pool_accepted == int(np.sum(pool_agree & (pool_conf >= expected.value)))
    stricter = [
        tuning.choose(sample, config, t, 0.0, pool_conf, pool_agree).validation_coverage for t in (0.8, 0.9, 0.95)
    ]
    assert stricter == sorted(stricter, reverse=True)  # a higher target accepts less
    floored = tuning.choose(sample, config, 0.8, 0.99, pool_conf, pool_agree)
    assert not floored.threshold.automated or floored.threshold.value >= 0.99  # the audit's floor holds


@pytest.mark.parametrize(
    "text, message", [("abc", "expected a number"), ("1.5", "< 1"), ("0.5", "> 0.5"), ("nan", "must be")]
)
def test_target_input_is_validated(text, message):
    with pytest.raises(ReviewError, match=message):
        tuning.parse_target(text, 0.98)
    assert tuning.parse_target(None, 0.98) == 0.98 and tuning.parse_target("0.97", 0.98) == 0.97


def test_replay_csv_parsing_and_clear_errors(tmp_path):
    good = (
        REPLAY_HEADER + "\nbudget.frames_per_hour=60,60,80,2,0.025,3789.5,144550,1,3,70,0.7,0.2,0.5,1\n"
        "budget.frames_per_hour=600,600,80,3,0.0375,5684.2,210200,1,3,0,0.7,0.2,0.5,1\n"
    )
    sweep = tuning.parse_sweep(good, "a.csv")
    assert sweep.swept == ["budget.frames_per_hour"] and sweep.x_key == "budget.frames_per_hour"
    assert [r["budget.frames_per_hour"] for r in sweep.rows] == [60.0, 600.0] and sweep.rows[1]["kept"] == 3
    with pytest.raises(ReviewError, match=r"b.csv: not a `fleetloop replay` CSV: missing column\(s\) kept_per_hour"):
        tuning.parse_sweep("setting,frames,kept,kept_fraction,bytes_per_hour\nx,1,1,1,1\n", "b.csv")
    with pytest.raises(ReviewError, match=r"c.csv: line 4: column kept must be a number \(got 'many'\)"):
        tuning.parse_sweep(good + "x,1,80,many,0.1,1,1,0,0,0,0,0,0,0\n", "c.csv")
    with pytest.raises(ReviewError, match="header but no settings"):
        tuning.parse_sweep(REPLAY_HEADER + "\n", "d.csv")
    # files are found under the configured directories and referred to by id only
    (tmp_path / "replay" / "run1").mkdir(parents=True)
    (tmp_path / "replay" / "run1" / "replay.csv").write_text(good)
    files = tuning.find_sweeps([tmp_path / "replay", tmp_path / "absent"])
    assert [f.label for f in files] == ["replay/run1"] and len(files[0].id) == 12
    assert tuning.read_sweep(files, files[0].id)[1].rows == sweep.rows
    with pytest.raises(NotFound):
        tuning.read_sweep(files, "0" * 12)
    uploaded = tuning.store_upload(tmp_path / "uploads", good.encode(), 10_000)
    assert uploaded.id in {f.id for f in tuning.find_sweeps([tmp_path / "uploads"])}
    with pytest.raises(ReviewError, match="limit 100"):
        tuning.store_upload(tmp_path / "uploads", good.encode(), 100)
    with pytest.raises(ReviewError, match="not UTF-8"):
        tuning.store_upload(tmp_path / "uploads", b"\xff\xfe" * 10, 10_000)


def test_per_robot_uploads_from_pool_and_store(review_world):
    world = review_world("waiting")
    store = open_store(world.config.store)
    by_robot = tuning.store_bytes_by_robot(store)
    listed = [info for info in store.list("frames/") if info.key.endswith(".png")]
    assert set(by_robot) == {"robot-1", "robot-2"}
    assert sum(e["bytes"] for e in by_robot.values()) == sum(i.size for i in listed)
    with world.pool() as pool:
        stats = tuning.robot_stats(pool, by_robot)
    assert [s["robot"] for s in stats] == ["robot-1", "robot-2"]
    for entry in stats:
        assert entry["frames"] == 60 and entry["store_objects"] == 60
        # 60 frames at 10 Hz span 5.9 s of robot time
        assert entry["frames_per_hour"] == pytest.approx(60 / (5.9 / 3600), rel=1e-3)
        assert entry["bytes_per_hour"] == pytest.approx(entry["store_bytes"] / (5.9 / 3600), rel=1e-3)
    assert tuning.safe_store_bytes(open_store(f"file://{world.root / 'nothing'}"), "frames/") == ({}, None)


def test_saved_target_is_validated_merged_and_read_by_the_loop(tmp_path):
    config_path = tmp_path / "cloud.yaml"
    config_path.write_text(yaml.safe_dump({"store": f"file://{tmp_path}/store", "routing": {"target_accuracy": 0.98}}))
    local = overrides.local_path(config_path)
    assert local == tmp_path / "cloud.local.yaml"
    local.write_text("review:\n  seed: 7\n")  # someone else's override stays
    config = load_cloud_config(config_path)
    with pytest.raises(ConfigError, match=r"routing.target_accuracy.*1.5"):
        overrides.save_target_accuracy(local, config, 1.5, "ann")
    assert yaml.safe_load(local.read_text()) == {"review": {"seed": 7}}
    overrides.save_target_accuracy(local, config, 0.95, "ann", {"threshold": 0.93})
    text = local.read_text()
    assert "set on the review page by ann" in text and "threshold 0.93" in text
    assert yaml.safe_load(text) == {"review": {"seed": 7}, "routing": {"target_accuracy": 0.95}}
    reloaded = load_cloud_config(config_path)
    assert reloaded.routing.target_accuracy == 0.95 and reloaded.review.seed == 7


def test_page_settings_are_validated_naming_file_and_key(tmp_path):
    path = tmp_path / "review_page.yaml"
    path.write_text("lease_s: -5\n")
    with pytest.raises(ConfigError, match=r"review_page.yaml: lease_s: .*greater than 0 \(got -5\)"):
        load_review_page_config(path)
    path.write_text("lease_seconds: 5\n")
    with pytest.raises(ConfigError, match="unknown key lease_seconds"):
        load_review_page_config(path)
    shipped = load_review_page_config()
    assert shipped.host == "127.0.0.1" and shipped.token is None
