"""Bag replay (fleetloop_core.replay): real rosbag2 files (sqlite3, MCAP), bad input, sweeps, CLI."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fleetloop_core import cli
from fleetloop_core.errors import ConfigError
from fleetloop_core.bags import BagFrame, BagProblem, BagReader, ReplayError, robot_and_stream, write_image_bag
from fleetloop_core.replay import parse_sweep, replay, sweep_settings
from fleetloop_core.replay_outputs import write_outputs
from fleetloop_core.ros_convert import array_to_image
from fleetloop_core.selection_config import selection_config

ROOT = Path(__file__).resolve().parents[2]
STAMP0 = 1_700_000_000_000_000_000


def _script():
    spec = importlib.util.spec_from_file_location("make_sample_bag", ROOT / "scripts" / "make_sample_bag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "sample"
    assert _script().main([str(path), "--frames", "40", "--robots", "2", "--storage", "mcap"]) == 0
    return path


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_images_survive_a_real_bag_in_both_storages(tmp_path, storage):
    frames = _frames(3)
    messages = [
        ("/robot_a/front/image_raw", STAMP0, frames[0]),
        (
            "/robot_a/front/image_raw",
            STAMP0 + 10**8,
            array_to_image(frames[1][..., ::-1].copy(), "bgr8", row_padding=4),
        ),
        ("/robot_b/rear/image_raw/compressed", STAMP0 + 2 * 10**8, frames[2]),
        (
            "/camera",
            STAMP0 + 3 * 10**8,
            array_to_image((frames[0][..., 0].astype(np.uint16) * 257), "mono16", is_bigendian=True),
        ),
    ]
    assert write_image_bag(tmp_path / "bag", messages, storage=storage, compressed_format="png") == 4
    with BagReader(tmp_path / "bag") as reader:
        assert reader.message_count == 4
        items = list(reader.frames())
    assert all(isinstance(i, BagFrame) for i in items)
    np.testing.assert_array_equal(items[0].image, frames[0])
    np.testing.assert_array_equal(items[1].image, frames[1])  # bgr8 with row padding
    np.testing.assert_array_equal(items[2].image, frames[2])  # lossless compressed
    np.testing.assert_array_equal(items[3].image[..., 1], frames[0][..., 0])
    assert [(i.robot_id, i.stream) for i in items] == [
        ("robot_a", "front/image_raw"),
        ("robot_a", "front/image_raw"),
        ("robot_b", "rear/image_raw/compressed"),
        ("robot", "camera"),
    ]
    assert [i.stamp_ns for i in items] == [STAMP0 + k * 10**8 for k in range(4)]
    assert [i.index for i in items] == [0, 1, 0, 0]


def test_bad_messages_are_reported_with_topic_and_index_and_replay_goes_on(tmp_path):
    frames = _frames(4)
    good = array_to_image(frames[0], "rgb8")
    short = array_to_image(frames[1], "rgb8")
    truncated_fields = type(short)(short.height, short.width, short.encoding, 0, short.step, short.data[:100])
    unknown = type(good)(4, 4, "64FC1", 0, 32, b"\0" * 128)  # defined by image_encodings.hpp, not read
    messages = [
        ("/r/cam", STAMP0, good),
        ("/r/cam", STAMP0 + 1, unknown),  # unknown encoding
        ("/r/cam", STAMP0 + 2, truncated_fields),  # data shorter than its geometry
        ("/r/cam", STAMP0 + 3, b"\x00\x01\x00\x00garbage"),  # CDR that does not deserialize
        ("/r/cam", STAMP0 + 4, frames[3]),
        ("/r/cam/compressed", STAMP0 + 5, frames[2]),
        ("/r/cam/compressed", STAMP0 + 6, b"\x00\x01\x00\x00\x00\x00"),
    ]
    write_image_bag(tmp_path / "bag", messages, storage="sqlite3")
    with BagReader(tmp_path / "bag") as reader:
        items = list(reader.frames())
    problems = [i for i in items if isinstance(i, BagProblem)]
    assert [(p.topic, p.index, p.kind) for p in problems] == [
        ("/r/cam", 1, "unknown_encoding"),
        ("/r/cam", 2, "corrupt"),
        ("/r/cam", 3, "corrupt"),
        ("/r/cam/compressed", 1, "corrupt"),
    ]
    assert problems[0].detail == "64FC1" and "data has 100 bytes" in problems[1].detail
    assert "/r/cam message 3: corrupt" in str(problems[2])
    good_frames = [i for i in items if isinstance(i, BagFrame)]
    assert [(f.topic, f.index) for f in good_frames] == [("/r/cam", 0), ("/r/cam", 4), ("/r/cam/compressed", 0)]


def test_a_bag_cut_short_is_reported_and_the_replay_goes_on(tmp_path, test_models):
    for name in ("cut", "whole"):
        write_image_bag(
            tmp_path / name,
            [(f"/{name}/cam", STAMP0 + i * 10**8, f) for i, f in enumerate(_frames(20))],
            storage="mcap",
        )
    mcap = next((tmp_path / "cut").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])  # the recorder died mid-file
    with pytest.raises(ReplayError, match=r"cut: cannot open the bag .*reindex"):
        BagReader(tmp_path / "cut").__enter__()
    report = replay(
        [tmp_path / "cut", tmp_path / "whole"], test_models["T4"].parent, selection_config({}), progress=False
    )
    assert report.frames == 20 and report.robots == ["whole"]
    assert [(p.kind, p.index) for p in report.problems] == [("unreadable_bag", -1)]
    assert str(tmp_path / "cut") in report.problems[0].topic


def test_missing_bag_and_bag_without_images(tmp_path):
    with pytest.raises(ReplayError, match="no such bag"):
        BagReader(tmp_path / "nothing").__enter__()
    # said before any model is looked for or loaded (here there is none to load)
    with pytest.raises(ReplayError, match=r"nothing, .*other: no such bag"):
        replay([tmp_path / "nothing", tmp_path / "other"], tmp_path / "no-models", selection_config({}), progress=False)
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(tmp_path / "strings", version=9) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=typestore)
        String = typestore.types["std_msgs/msg/String"]
        writer.write(connection, 1, typestore.serialize_cdr(String(data="hi"), "std_msgs/msg/String"))
    with pytest.raises(ReplayError, match=r"no sensor_msgs Image/CompressedImage topics.*/chatter"):
        BagReader(tmp_path / "strings").__enter__()


def test_topics_name_robots_and_streams():
    assert robot_and_stream("/robot_0/front/image_raw") == ("robot_0", "front/image_raw")
    assert robot_and_stream("/image") == ("robot", "image")


def test_sweep_parsing_and_validation():
    assert parse_sweep("policy.params.threshold=0.3, 0.5") == ("policy.params.threshold", [0.3, 0.5])
    assert parse_sweep("record.encoding=png,jpeg") == ("record.encoding", ["png", "jpeg"])
    base = selection_config({"policy": {"name": "threshold"}})
    settings = sweep_settings(base, ["policy.params.threshold=0.2,0.4", "dedup.enabled=true,false"])
    assert len(settings) == 4 and settings[1].label == "policy.params.threshold=0.2 dedup.enabled=False"
    assert settings[3].config.policy.params["threshold"] == 0.4 and not settings[3].config.dedup.enabled
    switched = sweep_settings(selection_config({}), ["policy.name=threshold", "policy.params.threshold=0.2,0.4"])
    assert [s.config.policy.params for s in switched] == [{"threshold": 0.2}, {"threshold": 0.4}]
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_sweep("threshold")
    with pytest.raises(ConfigError, match=r"budget\.frames_per_hour.*-1"):
        sweep_settings(base, ["budget.frames_per_hour=10,-1"])
    with pytest.raises(ConfigError, match="unknown key policy.params.treshold"):
        sweep_settings(base, ["policy.params.treshold=0.1"])


def test_replay_sweep_on_the_sample_bag(sample_bag, test_models, tmp_path):
    base = selection_config(
        {
            "policy": {"name": "threshold", "params": {"threshold": 0.0}},
            "budget": {"frames_per_hour": 10**6, "bytes_per_hour": 10**12},
            "dedup": {"embedding_max_distance": -1},
        }
    )
    report = replay(sample_bag, test_models["T4"].parent, base, ["policy.params.threshold=0.0,0.3,1.0"], progress=False)
    assert report.frames == 2 * 2 * 40 and report.robots == ["robot_0", "robot_1"] and report.problems == []
    assert report.duration_s == pytest.approx(3.9, abs=0.01)
    low, mid, high = report.results
    assert low.frames == mid.frames == high.frames == report.frames
    assert low.kept >= mid.kept >= high.kept and high.kept == high.random
    assert low.duplicates > 0  # the parked stretch repeats frames
    assert low.kept + low.duplicates + low.budget_limited == low.frames
    assert sum(low.kept_by_class.values()) == low.kept and low.kept_bytes > 0
    paths = write_outputs(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"replay.csv", "kept_frames.csv", "kept_vs_policy_params_threshold.png", "score_histogram.png"} <= names
    rows = list(csv.DictReader((tmp_path / "out" / "replay.csv").open()))
    assert [float(r["policy.params.threshold"]) for r in rows] == [0.0, 0.3, 1.0]
    assert int(rows[0]["kept"]) == low.kept and float(rows[0]["kept_per_hour"]) == pytest.approx(
        low.kept * 3600 / report.duration_s, rel=1e-3
    )
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_replay_cli_writes_csv_and_plots(sample_bag, test_models, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code = cli.main(
        [
            "replay",
            str(sample_bag),
            "--models",
            str(test_models["T4"].parent),
            "--sweep",
            "budget.frames_per_hour=60,600",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "budget.frames_per_hour=60" in printed and "kept/h" in printed and "real time" in printed
    assert (out / "replay.csv").is_file() and (out / "kept_vs_budget_frames_per_hour.png").is_file()
    rows = list(csv.DictReader((out / "replay.csv").open()))
    assert int(rows[0]["kept"]) <= int(rows[1]["kept"])
    assert cli.main(["replay", str(tmp_path / "absent"), "--models", str(test_models["T4"].parent)]) == 1


def test_make_sample_bag_refuses_to_overwrite(sample_bag):
    assert _script().main([str(sample_bag)]) == 1
