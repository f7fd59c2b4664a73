"""The fleet benchmark in the size CI can afford: benchmarks/fleet_sim.py --quick (four in-process robots,
each with its own client certificate on one mosquitto with mutual TLS, one S3 server, a rollout while
they stream, a corrupt version aborted at the canary, a 10 s store outage while they stream, the
cloud's ingest, once afterwards and every second all along). Figures are measured, not asserted; what
must hold: no frame dropped, every robot serving the good version and none the corrupt one, every frame
a selector kept stored once after the outage, and ingested."""

from __future__ import annotations


from fixtures.benchmarks import run_benchmark


def test_a_small_fleet_streams_rolls_out_aborts_a_bad_version_and_is_ingested(tmp_path, cloud_models):
    report, process = run_benchmark(
        "fleet_sim.py", tmp_path / "fleet.json", "--quick", "--models", str(cloud_models["T4"].parent), timeout_s=600
    )
    robots, streaming = report["robots"], report["streaming"]
    assert process.returncode == 0 and robots == 4
    assert streaming["dropped"] == 0 and streaming["answered"] == streaming["frames"] == 4 * 40
    good, bad = report["rollout"], report["aborted_rollout"]
    assert good["succeeded"] and good["robots_serving"] == robots and good["frames_dropped"] == 0
    assert good["broker_publishes"] >= 2 * robots  # each robot's job updates went through the broker
    assert bad["aborted"] and bad["robots_serving"] == 0 and "sha256" in bad["reason"]
    assert bad["frames_dropped"] == 0
    outage, stored = report["outage"], report["stored"]
    assert outage["queued_at_return"] > 0 and outage["left_in_queues"] == 0 and outage["frames_dropped"] == 0
    assert stored["frames"] == stored["kept"] and stored["duplicate_keys"] == 0  # nothing lost, nothing twice
    live = report["live_ingest"]  # the cloud ingesting every second all along, the outage included
    assert live["pool_frames"] == stored["frames"] and live["store_errors"] >= 1 and live["calls"] > 5
    ingest = report["ingest"]
    assert ingest["frames"] == stored["frames"] and ingest["frames_per_s"] > 0
    assert report["memory_mb_per_robot"] > 0 and report["broker"]["connections"] == robots + 1


def test_a_fleet_of_ros_robot_processes_rolls_out_and_aborts_a_bad_version(tmp_path, cloud_models):
    """--ros: every robot a `fleetloop robot` process (its model manager on the broker with its own
    certificate) fed by camera processes; 100 frames each first, so every robot's shadow ring holds the
    frames a canary's shadow check needs (one in ten of the last frames)."""
    report, process = run_benchmark(
        "fleet_sim.py",
        tmp_path / "fleet.json",
        "--ros",
        "--robots",
        "2",
        "--frames",
        "100",
        "--models",
        str(cloud_models["T4"].parent),
        timeout_s=600,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert report["ros"] and report["robots"] == 2
    streaming = report["streaming"]
    assert streaming["dropped"] == 0 and streaming["answered"] == streaming["frames"] == 2 * 100
    good, bad = report["rollout"], report["aborted_rollout"]
    assert good["succeeded"] and good["robots_serving"] == 2 and good["frames_dropped"] == 0, good
    assert bad["aborted"] and bad["robots_serving"] == 0 and bad["frames_dropped"] == 0
    memory = report["robot_process_memory"]  # per robot process: unique pages, and resident
    assert memory["robots"] == 2 and 0 < memory["uss_mb"] < memory["rss_mb"]
    stored = report["stored"]
    assert stored["still_queued"] == 0 and stored["frames"] == stored["kept"] and stored["duplicate_keys"] == 0
