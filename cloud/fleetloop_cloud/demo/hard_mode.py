"""Hard mode: the labeling figures on shuffled single frames (no tracks, no background), with a loop's teachers.

The demo runs it once after its rounds (``DemoRun``); ``scripts/hard_mode_draws.py`` runs it again on more
draws of the same world with the same teachers, which is how one draw's luck is told from the rule's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from fleetloop_core.config import default_config_path


def upload_hard_mode(store_uri: str, robots: Sequence[tuple[str, Any]], edge_package: Path, seed: int, frames: int):
    """Upload ``frames`` shuffled single frames per robot (``(robot id, site)``) to ``store_uri``, the robots'
    edge model ``edge_package`` scoring them; return the store."""
    from fleetloop_core.inference import TierModel
    from fleetloop_core.store import open_store
    from fleetloop_cloud.simfleet import SimulatedFleet

    store = open_store(store_uri)
    edge = TierModel.load(edge_package, providers=("cpu",), warmup=0)
    SimulatedFleet(store, list(robots), seed=seed, edge_model=edge, track_hints=False, mode="hard").upload(frames)
    return store


def hard_mode_loop(
    cloud: dict, store_uri: str, work: Path, models: Path, world_seed: int, registry_uri: str, trusted: Path
):
    """Return the cloud loop that labels the uploads in ``store_uri`` with the teachers of the loop whose
    registry is ``registry_uri`` (read only); ``cloud``: the demo's overrides of cloud.yaml."""
    from fleetloop_cloud.config import load_cloud_config
    from fleetloop_cloud.demo.config import merge
    from fleetloop_cloud.loop import CloudLoop

    overrides = merge(
        dict(cloud),
        {
            "store": store_uri,
            "work_dir": str(work),
            "models": str(models),
            "world_seed": world_seed,
            "cost_model": str(default_config_path("cost_model.yaml")),
            "registry": {"backend": "local", "uri": registry_uri, "trusted_keys": str(trusted)},
            "review": {"annotator": "simulated"},
            # no tracks here: consecutive shuffled frames are other items, which chaining by teacher
            # embedding would join (33 of 600 labels "propagated" once T1's embeddings chained them)
            "routing": {"propagation": {"enabled": False}},
        },
    )
    return CloudLoop(load_cloud_config(default_config_path("cloud.yaml"), overrides=overrides))


def label_hard_mode(loop) -> dict:
    """Label the uploads of ``loop`` (:func:`hard_mode_loop`) in one round; return the round's summary."""
    with loop:
        loop.ingest()
        loop.autolabel()
        loop.review()
        return loop.summary(loop.current_round(), status="labeling only").to_dict()


__all__ = ["hard_mode_loop", "label_hard_mode", "upload_hard_mode"]
