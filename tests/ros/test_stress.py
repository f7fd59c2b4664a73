"""The stress benchmark in the size CI can afford: 50 start/stop cycles and two 10 s camera streams.

benchmarks/ros_stress.py --quick --no-transports: robots and cameras started and stopped over and
over (two pairs side by side), SIGINT and SIGTERM alternating, then 640x480 rgb8 at 30 Hz into a
robot for 10 s, best effort and reliable. Nothing may hang, freeze or exit slower than 5 s; paced
cameras and the reliable stream lose no frame; best effort loses what the transport table says
(none on this machine when idle: docs/ros_robustness.md), with room for a busy CI machine.
"""

from __future__ import annotations

import json

from fixtures.benchmarks import run_benchmark


def test_fifty_start_stop_cycles_and_two_streams(tmp_path, test_models):
    report, process = run_benchmark(
        "ros_stress.py",
        tmp_path / "stress.json",
        "--quick",
        "--no-transports",
        "--models",
        str(test_models["T4"].parent),
        "--workdir",
        str(tmp_path / "work"),  # the robots' logs stay with the test's other files
    )
    summary = report["summary"]
    print("\n" + process.stdout[-2500:])
    assert summary["robot_starts"] >= 5 and summary["camera_runs"] + summary["camera_stops"] == 50
    kinds = ("hangs", "freezes", "slow_exits", "failures", "losses")  # losses: a paced run's logs and stacks
    problems = {kind: summary[kind] for kind in kinds if summary[kind]}
    assert not problems, json.dumps(problems, indent=1)[:4000]
    assert summary["exit_s_max"] < 5.0
    streams = {row["qos"]: row for row in report["streams"]}
    assert streams["reliable"]["answered"] == streams["reliable"]["sent"] == 300
    assert streams["best effort"]["answered"] >= 0.9 * streams["best effort"]["sent"]
    paced_lost = summary["frames_lost"] - sum(row["sent"] - row["answered"] for row in report["streams"])
    assert paced_lost == 0
    assert process.returncode == 0
