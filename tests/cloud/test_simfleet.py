"""The simulated fleet's sidecars: track hints from the robot's own tracker over T4 embeddings, never from truth."""

import json

import numpy as np

from fleetloop_core.inference import TierModel
from fleetloop_core.store import open_store
from fleetloop_cloud.simfleet import SimulatedFleet
from fleetloop_sim import sim


def _sidecars(store):
    keys = sorted(info.key for info in store.list("frames/"))
    return [json.loads(store.get_bytes(k)) for k in keys if k.endswith(".json")]


def test_track_hints_chain_similar_t4_embeddings_and_never_read_the_truth(tmp_path, test_models):
    store = open_store(f"file://{tmp_path / 'store'}")
    model = TierModel.load(test_models["T4"], providers=("cpu",), warmup=0)
    fleet = SimulatedFleet(store, [("robot-0", sim.make_site(0))], edge_model=model, track_similarity=0.9)
    fleet.upload(120)
    cars = sorted(_sidecars(store), key=lambda c: c["stamp_ns"])
    hints = [c["track_hint"] for c in cars]
    assert all(h.startswith("robot-0@sim-") for h in hints)
    for before, after in zip(cars, cars[1:]):
        similarity = float(np.dot(before["embedding"], after["embedding"]))
        # a new track exactly where the robot's embeddings part (rounded as the sidecar stores them): the
        # hints are a function of what the robot computed, nothing else
        assert (after["track_hint"] == before["track_hint"]) == (similarity >= 0.9 - 1e-4)

    blind = open_store(f"file://{tmp_path / 'blind'}")
    SimulatedFleet(blind, [("robot-0", sim.make_site(0))]).upload(20)  # no edge model: nothing to track with
    assert all(c.get("track_hint") is None for c in _sidecars(blind))
