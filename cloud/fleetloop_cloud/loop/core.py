"""The cloud loop's state machine: rounds, steps and their bookkeeping, for any task.

``CloudLoop(config).run_round() -> RoundSummary`` runs the open round's remaining steps; each
step is a module of this package (``STEP_MODULES``) whose ``run(loop, round_number) -> dict`` is
the step's body. What differs per task (classifier vs detector) is the loop's ``task`` part,
chosen from :data:`fleetloop_cloud.loop.tasks.CLOUD_TASKS` by the models' manifest ``task``.

Steps of a round, each idempotent (a finished step does nothing when run again) and resumable
(state lives in the pool; a crash loses at most the item in hand):

    ingest     new frames + sidecars from the store into the pool (quarantine with reasons)
    autolabel  T1 and T2 predict every frame they have not seen
    review     calibration sample -> routing threshold -> auto-accept -> human review (budget,
               active-learning order) -> QA audit, tightening and re-reviewing below target
    train      T2 on every accepted label, distil T3/T4 (a local process or a SageMaker job)
    evaluate   candidates vs production on the held-out test set, the gate
    register   signed packages to the registry: Approved if the gate passed, else Rejected

The review step waits (returns, status ``waiting``) while humans have open tasks; running it
again collects answers and goes on. The demos compose rounds of this class into the closed loop.
One worker runs steps on a pool at a time (the pool's runner lock, ``pool_lock.WorkerLock``): another
worker asking meanwhile is told who runs which step (``StepBusyError``), and a step left ``running``
by a worker that died is taken over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.store import open_store

from fleetloop_cloud.config import CloudConfig, CostModel, load_cost_model
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.loop import autolabel, evaluate, ingest, register, review, summary, train
from fleetloop_cloud.loop.tasks import CloudTask, cloud_task_named
from fleetloop_cloud.loop.world import World, open_world
from fleetloop_cloud.pool import Pool
from fleetloop_cloud.pool_lock import WorkerLock

log = logging.getLogger("fleetloop_cloud")

STEPS = ("ingest", "autolabel", "review", "train", "evaluate", "register")
FINISHED = ("done", "skipped", "failed")
# the step bodies, in order; a failed train/evaluate/register does not stop the round
STEP_MODULES = {
    "ingest": ingest,
    "autolabel": autolabel,
    "review": review,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}
NON_BLOCKING = ("train", "evaluate", "register")


class StepOrderError(FleetLoopError):
    """A step was asked for before the steps it needs (message names both)."""


class StepBusyError(FleetLoopError):
    """Another worker is running the loop's steps on this pool (message names it and its step)."""


@dataclass
class RoundSummary:
    """Every figure of one round (JSON-able through ``to_dict``)."""

    round: int
    status: str  # finished | waiting (humans have open tasks) | running (in another worker)
    steps: dict[str, str]
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"round": self.round, "status": self.status, "steps": dict(self.steps), **self.data}

    def __getitem__(self, key: str):
        return self.to_dict()[key]


class CloudLoop:
    """The cloud loop over one pool (work_dir/pool.sqlite), one store and one registry.

    ``task``: the task the models must be (an error naming the models' task otherwise); None takes
    the task of the T2 manifest. ``world``: where lab frames and simulated truth come from.
    """

    def __init__(
        self,
        config: CloudConfig,
        cost_model: CostModel | None = None,
        progress: bool = True,
        clients: dict | None = None,
        training_backend=None,
        registry=None,
        on_approved: list[Callable] | None = None,
        task: str | None = None,
        world: World | None = None,
    ):
        self.config = config
        self.work = config.work_path
        self.work.mkdir(parents=True, exist_ok=True)
        self.pool = Pool(config.pool_target)
        self.runner = WorkerLock(config.pool_target)  # one worker runs steps at a time (run_step)
        self._running = 0  # run_step calls in progress in this loop (the lock is held while > 0)
        self.store = open_store(config.store)
        self.cache = FrameCache(self.work / "frames", self.store)
        self.cost_model = cost_model or load_cost_model(config.cost_model)
        self.progress = progress
        self.clients = dict(clients or {})
        self._backend = training_backend
        self._registry = registry
        self._on_approved = list(on_approved or [])
        self.world = world or open_world("simulated")
        self.base_models = {tier: Path(config.models) / tier for tier in ("T1", "T2", "T3", "T4")}
        manifest = load_manifest(self.base_models["T2"])
        wanted = task or manifest.task
        try:
            needs, open_part = cloud_task_named(wanted)
            if manifest.task != wanted:
                raise ConfigError(f"{self.base_models['T2']}: a {manifest.task} model; the {wanted} loop needs {needs}")
            self.task: CloudTask = open_part(self, manifest)
        except FleetLoopError:
            self.pool.close()
            raise
        self.labels = list(self.task.frame_labels)  # what robots' sidecars index into

    def close(self) -> None:
        """Close the task's stores and the pool."""
        self.task.close()
        self.runner.release()
        self.pool.close()

    def __enter__(self) -> "CloudLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ================================================================== plumbing
    @property
    def registry(self):
        """Return the registry backend (opened on first use)."""
        if self._registry is None:
            from fleetloop_cloud.registry import open_registry

            self._registry = open_registry(
                self.config.registry, on_approved=self._on_approved, client=self.clients.get("registry")
            )
        return self._registry

    @property
    def training_backend(self):
        """Return the training backend (opened on first use)."""
        if self._backend is None:
            from fleetloop_cloud.training_backends import make_backend

            self._backend = make_backend(
                self.config.training.backend,
                self.config.training.sagemaker,
                self.store,
                client=self.clients.get("training"),
                progress=self.progress,
            )
        return self._backend

    def production(self, tier: str) -> Path:
        """Return the package directory of the production model of ``tier`` (registry, else config.models)."""
        base = self.base_models[tier]
        name = load_manifest(base).name
        entry = self.registry.approved(name)
        if entry is None:
            return base
        target = self.work / "production" / name / entry.version
        if not (target / "manifest.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.registry.fetch(name, entry.version, target)
        return target

    def current_round(self) -> Optional[int]:
        """Return the open round (None when every round is finished)."""
        return self.pool.current_round()

    def teacher_versions(self, round_number: int) -> tuple[str, str, str, str]:
        """Return (tier A, its version, tier B, its version) of the round's autolabel step."""
        _, info = self.pool.step(round_number, "autolabel")
        (tier_a, version_a), (tier_b, version_b) = list(info["versions"].items())
        return tier_a, version_a, tier_b, version_b

    def rng(self, round_number: int, purpose: str) -> np.random.Generator:
        """Return the review's random generator for one purpose of one round (seeded by review.seed)."""
        digest = hashlib.sha256(f"{self.config.review.seed}/{round_number}/{purpose}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def candidates(self, round_number: int) -> dict[str, Path]:
        """Return the round's trained packages by variant (T2, T3, T4, T3-int8, T4-int8 where present)."""
        status, info = self.pool.step(round_number, "train")
        if status != "done":
            return {}
        model_dir = Path(info["model_dir"])
        return {
            name: model_dir / name
            for name in ("T2", "T3", "T4", "T3-int8", "T4-int8")
            if (model_dir / name / "manifest.json").is_file()
        }

    # ================================================================== steps
    def _round(self, step: str) -> int:
        current = self.pool.current_round()
        if current is None:
            if step != "ingest":
                raise StepOrderError(f"no open round: run 'fleetloop-cloud ingest' (or 'round') before {step}")
            return self.pool.open_round()
        for previous in STEPS[: STEPS.index(step)]:
            status, _ = self.pool.step(current, previous)
            if status not in FINISHED:
                raise StepOrderError(f"round {current}: step {previous} is {status}; run it before {step}")
        return current

    def run_step(self, step: str) -> dict:
        """Run one step of the open round (a finished one returns its record); return its record.

        One worker runs steps on a pool at a time: StepBusyError (naming the worker and its step) while
        another does. A step left ``running`` by a worker that died is taken over: steps are resumable.
        """
        with self._holding_runner(step):
            return self._run_step(step)

    @contextmanager
    def _holding_runner(self, what: str) -> Iterator[None]:
        """Hold the pool's runner lock for a block (nested ones share it); StepBusyError if another worker has it."""
        if not self._running and not self.runner.acquire():
            raise StepBusyError(self._busy_message(what))
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self.runner.release()

    def _busy_message(self, step: str) -> str:
        current = self.pool.current_round()
        running = [s for s in STEPS if current is not None and self.pool.step(current, s)[0] == "running"]
        where = f"round {current}: {running[0]}" if running else "the loop"
        holder = self.runner.holder() or "another worker"
        return f"{self.pool.path}: {where} is running in {holder}; not running {step} beside it"

    def _run_step(self, step: str) -> dict:
        round_number = self._round(step)
        status, info = self.pool.step(round_number, step)
        if status in ("done", "skipped"):
            log.info("round %d: %s already %s", round_number, step, status)
            return info
        if status == "failed":  # asked for explicitly: retry (run_round goes on past a failed step instead)
            log.info("round %d: retrying %s (failed: %s)", round_number, step, info.get("error"))
            info = {k: v for k, v in info.items() if k != "error"}
        if status == "running":  # nobody runs it now (this worker holds the runner lock): a run that ended early
            log.warning(
                "round %d: taking over %s, left running by a run that ended (killed or crashed)", round_number, step
            )
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        self.pool.set_step(round_number, step, "running", info)
        try:
            result = STEP_MODULES[step].run(self, round_number)
        except FleetLoopError as exc:
            self.pool.set_step(round_number, step, "failed", {**info, "error": str(exc)})
            raise
        status = result.pop("_status", "done")
        result["cpu_seconds"] = round(result.get("cpu_seconds", 0.0) + time.process_time() - cpu_started, 3)
        result["wall_seconds"] = round(result.get("wall_seconds", 0.0) + time.perf_counter() - wall_started, 3)
        self.pool.set_step(round_number, step, status, result)
        return result

    def ingest(self) -> dict:
        """Step 1: new frames + sidecars from the store into the pool."""
        return self.run_step("ingest")

    def autolabel(self) -> dict:
        """Step 2: the teacher tiers predict every frame they have not seen yet."""
        return self.run_step("autolabel")

    def review(self) -> dict:
        """Step 3: calibration sample, routing, human review, QA audit (status waiting while humans work)."""
        return self.run_step("review")

    def train(self) -> dict:
        """Step 4: train T2 on all accepted labels, distil T3/T4 (local process or SageMaker job)."""
        return self.run_step("train")

    def evaluate(self) -> dict:
        """Step 5: candidates vs production on the held-out test set; the gate's decisions."""
        return self.run_step("evaluate")

    def register(self) -> dict:
        """Step 6: signed packages to the registry, Approved where the gate promoted them, else Rejected."""
        return self.run_step("register")

    # ================================================================== round
    def run_round(self) -> RoundSummary:
        """Run the open round's remaining steps (opening a new round if none is open); return its summary.

        Stops early with status ``waiting`` while humans still have open tasks; call again later. While
        another worker runs the round's steps, returns at once with status ``running``.
        """
        try:
            with self._holding_runner("the round"):
                return self._run_round()
        except StepBusyError as exc:
            current = self.pool.current_round()
            if current is None:
                raise
            log.info("%s", exc)
            return self.summary(current, status="running")

    def _run_round(self) -> RoundSummary:
        if self.pool.current_round() is None:
            self.pool.open_round()
        round_number = self.pool.current_round()
        for step in STEPS:
            status, _ = self.pool.step(round_number, step)
            if status in FINISHED:
                continue
            try:
                self.run_step(step)
            except FleetLoopError as exc:
                if step in NON_BLOCKING:
                    log.error("round %d: %s failed: %s (the round goes on without it)", round_number, step, exc)
                    continue
                raise
            status, _ = self.pool.step(round_number, step)
            if status == "waiting":
                return self.summary(round_number, status="waiting")
        result = self.summary(round_number, status="finished")
        self.pool.finish_round(round_number, result.to_dict())
        (self.work / "rounds").mkdir(parents=True, exist_ok=True)
        (self.work / "rounds" / f"summary-{round_number:04d}.json").write_text(
            json.dumps(result.to_dict(), indent=2, sort_keys=True)
        )
        return result

    def summary(self, round_number: int, status: str = "finished") -> RoundSummary:
        """Return every figure of a round, from the pool (costs from config/cost_model.yaml)."""
        steps = {s: self.pool.step(round_number, s) for s in STEPS}
        info = {s: i for s, (_, i) in steps.items()}
        facts = self.task.round_facts(round_number)
        truth = self.world.truth_check(self.task.name, self.pool, facts.labels, self.config)
        data = summary.round_data(info, facts, self.task, self.cost_model, truth)
        return RoundSummary(round=round_number, status=status, steps={s: st for s, (st, _) in steps.items()}, data=data)


def open_loop(path=None, **kwargs) -> CloudLoop:
    """Return the loop config/cloud.yaml (or ``path``) describes (its task: the models' manifest task)."""
    from fleetloop_cloud.config import load_cloud_config

    return CloudLoop(load_cloud_config(path), **kwargs)
