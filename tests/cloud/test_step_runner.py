"""One worker runs the cloud loop's steps on a pool at a time, on SQLite and on a real PostgreSQL: two loop
workers started on the same step run it once, a worker asking while another runs is told who, and a step
left running by a killed worker is taken over (``CloudLoop.run_step``, ``pool_lock.WorkerLock``)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fleetloop_sim.dataset import LABELS
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop, StepBusyError

from fixtures.cloud_world import cloud_config, peaked_probs, pool_frame
from fixtures.pool_workers import TESTS, race

FRAMES = 120
CALIBRATION = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def pool_uri(request, tmp_path):
    """The pool of the test's loop: the embedded SQLite file, or a fresh database on the tests' PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'work' / 'pool.sqlite'}"
    return request.getfixturevalue("postgres_uri")


def _reviewed_round(tmp_path, pool_uri, cloud_models) -> dict:
    """Return a loop config whose pool has round 1 ingested and auto-labeled (frames, teacher predictions),
    the review step next; people answer on the review page (the step draws its sample, then waits)."""
    config = cloud_config(
        tmp_path,
        f"file://{tmp_path / 'store'}",
        cloud_models["T1"].parent,
        pool=pool_uri,
        review={"annotator": "review-page", "calibration_sample": CALIBRATION},
    )
    with CloudLoop(cloud_config_from_dict(config), progress=False) as loop:
        loop.pool.open_round()
        for index in range(FRAMES):
            label = index % len(LABELS)
            frame = pool_frame(index, label, random=index % 2 == 0)
            loop.pool.add_frame(frame)
            loop.pool.put_predictions("T1", "a", [frame.id], peaked_probs(label, 0.9)[None], None)
            loop.pool.put_predictions(
                "T2", "b", [frame.id], peaked_probs(label, 0.9)[None], np.eye(4, dtype=np.float32)[index % 4][None]
            )
        loop.pool.set_step(1, "ingest", "done", {"ingested": FRAMES})
        loop.pool.set_step(1, "autolabel", "done", {"versions": {"T1": "a", "T2": "b"}})
    return config


def _calibration_tasks(config: dict) -> int:
    with CloudLoop(cloud_config_from_dict(config), progress=False) as loop:
        return len(loop.pool.tasks(round=1, purpose="calibration"))


def test_two_workers_started_on_the_same_step_run_it_once(tmp_path, pool_uri, cloud_models):
    config = _reviewed_round(tmp_path, pool_uri, cloud_models)

    results = race("stepper", [[config, "review"], [config, "review"]])

    # one drew the calibration sample; the other was told the step runs elsewhere, or (if it came after)
    # found the sample drawn and waits with it: never a second sample (120 tasks without the runner lock)
    assert _calibration_tasks(config) == CALIBRATION, json.dumps(results)
    busy = r"(round 1: review|the loop) is running in \S+:\d+; not running review beside it"  # step set or not yet
    assert all(r.get("status") == "waiting" or re.search(busy, r.get("busy", "")) for r in results), json.dumps(results)
    assert any(r.get("status") == "waiting" for r in results)


def test_a_step_left_running_by_a_killed_worker_is_taken_over(tmp_path, pool_uri, cloud_models):
    config = _reviewed_round(tmp_path, pool_uri, cloud_models)
    inside = tmp_path / "inside"
    code = "import json, sys; from fixtures import pool_workers as w; w.stuck_in_calibration(*json.loads(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    stuck = subprocess.Popen([sys.executable, "-c", code, json.dumps([config, str(inside)])], env=env)
    try:
        deadline = time.monotonic() + 120
        while not inside.exists():
            assert stuck.poll() is None, f"the stuck worker ended early ({stuck.returncode})"
            assert time.monotonic() < deadline, "the stuck worker never reached its review step"
            time.sleep(0.05)
        with CloudLoop(cloud_config_from_dict(config), progress=False) as loop:
            with pytest.raises(
                StepBusyError, match=rf"round 1: review is running in {socket.gethostname()}:{stuck.pid};"
            ):
                loop.run_step("review")
            assert loop.run_round().status == "running"  # a round asked for meanwhile: not run beside it
            assert loop.pool.step(1, "review")[0] == "running"
            stuck.kill()
            stuck.wait()
            while loop.runner.holder():  # PostgreSQL ends the killed client's session (and its lock) on its own
                assert time.monotonic() < deadline, (
                    f"the killed worker still holds the runner lock: {loop.runner.holder()}"
                )
                time.sleep(0.05)

            loop.run_step("review")  # taken over: the step is resumable

            assert loop.pool.step(1, "review")[0] == "waiting"
            assert len(loop.pool.tasks(round=1, purpose="calibration")) == CALIBRATION
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
