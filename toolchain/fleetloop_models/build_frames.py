"""The frames a reference build trains and is measured on (``fleetloop_models.modelbuild``).

Training frames: ``lab`` (clean lab booths) and ``randomised`` (domain randomisation: many random
sites, never a field site), rendered from the lab's items in this process or, for the large
profiles, in seeded pieces on every core (the frames do not depend on the number of cores).
Test frames: a lab test set and one field test set per fleet site, of items never streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop_core.errors import ConfigError
from fleetloop_sim import sim
from fleetloop_sim import sim_tasks
from fleetloop_sim.sim_tasks import DetectionSet, LabelledSet

if TYPE_CHECKING:
    from fleetloop_models.modelbuild import BuildProfile
    from fleetloop_models.trainers import Trainer


def _render(
    trainer: Trainer,
    profile: BuildProfile,
    items: np.ndarray,
    count: int,
    seed: tuple[str, int],
    sites: list[sim.Site],
    prior: np.ndarray | None = None,
) -> LabelledSet | DetectionSet:
    """Return ``count`` lab-site frames of ``items`` from random ``sites`` holding what the task's frames hold."""
    height, width = profile.frame_height, profile.frame_width
    part = trainer.sim_part(profile)
    return sim.render_set(
        sim.LAB_SITE, items, count, seed, height, width, none_fraction=0.1, sites=sites, task=part, prior=prior
    )


def _render_chunked(
    trainer: Trainer,
    profile: BuildProfile,
    items: np.ndarray,
    count: int,
    seed: tuple[str, int],
    sites: list[sim.Site],
    prior: np.ndarray | None = None,
) -> LabelledSet | DetectionSet:
    """Return what :func:`_render` returns, rendered in ``profile.render_chunk`` pieces on every core.

    Piece ``k`` is seeded by ``(*seed, "piece", k)``: the frames are the same on any machine.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = profile.render_chunk
    sizes = [min(chunk, count - start) for start in range(0, count, chunk)]
    jobs = [(trainer, profile, items, size, (*seed, "piece", k), sites, prior) for k, size in enumerate(sizes)]
    workers = min(len(jobs), multiprocessing.cpu_count())
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pieces = list(pool.map(_render_piece, jobs))
    return pieces[0] if len(pieces) == 1 else sim_tasks.concatenate(pieces)


def _render_piece(job: tuple[Any, ...]) -> LabelledSet | DetectionSet:
    return _render(*job)


def render_training_sets(
    trainer: Trainer, profile: BuildProfile, profile_name: str, needs: set[str]
) -> dict[str, LabelledSet | DetectionSet]:
    """Return the training frames the tiers to build need: ``lab`` and/or ``randomised``."""
    items, prefix, seed = sim.item_pool().lab_train, trainer.seed_prefix, profile.seed
    frames: dict[str, LabelledSet | DetectionSet] = {}
    if "lab" in needs:
        sites = sim.lab_sites(seed=seed)
        frames["lab"] = _render(trainer, profile, items, profile.lab_frames, (f"{prefix}lab", seed), sites)
    if "randomised" in needs:
        if profile.randomised_frames <= 0:
            raise ConfigError(f"profile {profile_name!r}: a tier uses randomised data but randomised_frames is 0")
        sites = sim.randomised_sites(profile.randomised_sites, seed, profile.randomised_strength)
        count, key = profile.randomised_frames, (f"{prefix}randomised", seed)
        prior = np.full(sim.NUM_ITEM_CLASSES, 0.1) if profile.randomised_prior == "uniform" else None
        render = _render_chunked if profile.render_chunk else _render
        frames["randomised"] = render(trainer, profile, items, count, key, sites, prior)
    return frames


@dataclass
class TestSets:
    """Where a built tier is measured: a lab test set and one field test set per fleet site."""

    lab: LabelledSet | DetectionSet
    field: list[LabelledSet | DetectionSet]
    sites: list[sim.Site]

    @classmethod
    def render(cls, trainer: Trainer, profile: BuildProfile) -> TestSets:
        pool, seed, frames = sim.item_pool(), profile.seed, profile.eval_frames
        lab_seed = (f"{trainer.seed_prefix}lab-test", seed)
        lab = _render(trainer, profile, pool.lab_test, frames, lab_seed, sim.lab_sites(seed=seed + 1))
        sites = sim.make_fleet_sites(profile.eval_sites, seed=seed)
        height, width = profile.frame_height, profile.frame_width
        # the field sets are the task's standard ones (its default frame contents), as the robots see them
        field = [sim.field_test_set(site, frames, seed, height, width, pool=pool, task=trainer.task) for site in sites]
        return cls(lab, field, sites)
