"""Shared fixtures: small real models built by our own code (cached), the data set, sites."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# fixture modules that start real servers (tests/fixtures/<name>.py); append yours
pytest_plugins: list[str] = [
    "fixtures.mqtt",
    "fixtures.model_packages",
    "fixtures.ros",
    "fixtures.s3",
    "fixtures.cloud_world",
    "fixtures.review_page",
    "fixtures.detection_world",
    "fixtures.postgres",
]
CACHE = ROOT / ".cache"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def test_models() -> dict[str, Path]:
    """The four tiers built with the `test` profile (tiny, real ONNX); cached across runs."""
    from fleetloop_models.modelbuild import build_reference_models

    return build_reference_models(CACHE / "models-test", profile_name="test", progress=False)


@pytest.fixture
def model_copy(tmp_path, test_models):
    """Return a function copying one tier's model directory into tmp_path (safe to corrupt)."""

    def copy(tier: str = "T4") -> Path:
        target = tmp_path / f"{tier}-copy"
        shutil.copytree(test_models[tier], target)
        return target

    return copy


@pytest.fixture(scope="session")
def pool():
    from fleetloop_sim import sim

    return sim.item_pool()


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield


# ------------------------------------------------------------------------------ nothing outlives its owner
@pytest.fixture
def spawn():
    """Return start(command, **Popen kwargs) -> Popen; every process started is ended after the test, pass or fail.

    Ended with SIGINT (our processes exit within 5 s), then SIGKILL.
    """
    import signal
    import subprocess

    from fleetloop_core.stop_signals import end_with_parent_env

    started: list[subprocess.Popen] = []

    def start(command, **kwargs) -> subprocess.Popen:
        # and if pytest itself is killed -9 (a CI timeout), our processes end with it
        kwargs["env"] = end_with_parent_env(dict(kwargs.get("env") or os.environ))
        started.append(subprocess.Popen(command, **kwargs))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in started:
        try:
            process.wait(6)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


OUR_COMMANDS = ("fleetloop", "tests/ros/programs", "cyclone_camera", "benchmarks/")
_EXIT_GRACE_S = 5.0


def _descendants() -> list:
    import psutil

    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _describe(process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except Exception:  # gone meanwhile
        return f"pid {process.pid}"


def _still_running(processes: list, grace_s: float) -> list:
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _kill(processes: list) -> None:
    import psutil

    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=5)


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """Fail the test that leaves one of our processes (robot, camera, demo, trainer...) running after it ends.

    Servers that session fixtures start (mosquitto, the S3 server, Chromium, PostgreSQL: its data directory,
    fleetloop-pg-*, is in its command line, so it is named in ``fixtures.processes.SESSION_SERVERS``) live for
    the session and are checked once at its end (pytest_sessionfinish).
    """
    before = {p.pid for p in _descendants()}
    yield
    from fixtures.processes import SESSION_SERVERS

    ours = [
        p
        for p in _descendants()
        if p.pid not in before and p.pid not in SESSION_SERVERS and any(c in _describe(p) for c in OUR_COMMANDS)
    ]
    leftovers = _still_running(ours, _EXIT_GRACE_S) if ours else []
    if leftovers:
        described = [_describe(p) for p in leftovers]
        _kill(leftovers)
        pytest.fail("processes started by this test outlived it (killed now):\n  " + "\n  ".join(described))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any process started by it (servers included) is still running after every fixture ended."""
    leftovers = _still_running(_descendants(), _EXIT_GRACE_S)
    if leftovers:
        described = [_describe(p) for p in leftovers]
        _kill(leftovers)
        session.config.get_terminal_writer().line(
            "processes started by the test run outlived it (killed now):\n  " + "\n  ".join(described), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
