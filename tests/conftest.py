"""Shared fixtures: small real models built by our own code (cached), the data set, sites."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# fixture modules that start real servers (tests/fixtures/<name>.py); append yours
pytest_plugins: list[str] = ["fixtures.mqtt", "fixtures.model_packages", "fixtures.ros", "fixtures.s3", "fixtures.cloud_world", "fixtures.review_page", "fixtures.detection_world"]
CACHE = ROOT / ".cache"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def test_models() -> dict[str, Path]:
    """The four tiers built with the `test` profile (tiny, real ONNX); cached across runs."""
    from fleetloop_core.modelbuild import build_reference_models

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
    from fleetloop_core import sim

    return sim.item_pool()


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
