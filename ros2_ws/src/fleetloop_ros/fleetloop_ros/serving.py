"""What a robot serves: the cascade of the reference models, the execution providers, and the
serving model per cascade role as the ROS messages name them (perception and the model manager).
"""

from __future__ import annotations

from pathlib import Path

from fleetloop_interfaces.msg import TierVersion

from fleetloop_core import tasks
from fleetloop_core.cascade import Cascade
from fleetloop_core.detection_cascade import DetectionCascade
from fleetloop_core.inference import DEFAULT_PROVIDERS
from fleetloop_ros.settings import PerceptionSettings


def providers_for(use_gpu: bool) -> tuple[str, ...]:
    """Return the execution-provider preference: TensorRT, CUDA, CPU with a GPU; CPU otherwise."""
    return DEFAULT_PROVIDERS if use_gpu else ("CPUExecutionProvider",)


def load_cascade(settings: PerceptionSettings) -> Cascade | DetectionCascade:
    """Return the cascade of the reference models in ``settings.models_dir`` (verified, warm).

    The edge model's manifest ``task`` picks the cascade (and which settings block configures it).
    """
    root = Path(settings.models_dir)
    config = getattr(settings, tasks.task_named(tasks.model_task(root / settings.edge_tier)).config_key)
    return tasks.load_cascade(
        root,
        settings.edge_tier,
        settings.escalation_tier or None,
        config,
        providers_for(settings.use_gpu),
        settings.intra_op_threads,
    )


def tier_versions(cascade: Cascade) -> list[TierVersion]:
    """Return the serving model per cascade role (name, version, provider really in use)."""
    versions = []
    for role, model in (("edge", cascade.edge), ("escalation", cascade.escalation)):
        if model is not None:
            versions.append(
                TierVersion(
                    tier=model.tier,
                    role=role,
                    name=model.manifest.name,
                    version=model.version,
                    execution_provider=model.providers[0] if model.providers else "",
                )
            )
    return versions
