"""Replay recorded rosbag2 files through the real cascade and selector to tune selection offline.

``fleetloop replay BAG --sweep policy.params.threshold=0.3,0.5,0.7`` reads every
``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` of a bag (sqlite3 or MCAP storage,
through the ``rosbags`` library, no ROS needed), runs each frame once through the cascade
(T4, escalating to T3) and offers the result to one selector per swept setting and robot. The
budgets refill by the frames' stamps, so a bag replayed faster than real time spends exactly
the budget its recorded duration would have. Per setting it reports frames kept, kept per
hour, bytes per hour, the kept-class histogram, mean score of kept versus dropped frames,
duplicates removed and random samples, and writes a CSV and PNG plots.

Bags are read by :mod:`fleetloop_core.bags` (bad input is reported, not fatal); the CSV, the plots
and the printed table are written by :mod:`fleetloop_core.replay_outputs`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from fleetloop_core.errors import ConfigError
from fleetloop_core.selection import Selector
from fleetloop_core.selection_config import SelectionConfig, apply_changes
from fleetloop_core.bags import BagFrame, BagProblem, BagReader, ReplayError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: the changes applied to the base config, and the result."""

    label: str
    changes: dict[str, Any]
    config: SelectionConfig


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """Return (key, values) of ``key=v1,v2,...``; values are read as YAML scalars (0.3, true, png)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--sweep {text!r}: expected key=v1,v2,... (e.g. policy.params.threshold=0.3,0.5)")
    parsed = []
    for raw in values.split(","):
        raw = raw.strip()
        if not raw:
            raise ConfigError(f"--sweep {text!r}: empty value")
        try:
            parsed.append(yaml.safe_load(raw))
        except yaml.YAMLError:
            parsed.append(raw)
    return key, parsed


def sweep_settings(base: SelectionConfig, sweeps: Sequence[str] = ()) -> list[Setting]:
    """Return every combination of the swept values applied to ``base`` (the base alone without sweeps)."""
    if not sweeps:
        return [Setting("base", {}, base)]
    axes = [parse_sweep(text) for text in sweeps]
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep: a key is swept twice ({', '.join(keys)})")
    varied = [key for key, values in axes if len(values) > 1] or keys
    settings = []
    for values in itertools.product(*(values for _, values in axes)):
        changes = dict(zip(keys, values))
        config = apply_changes(base, changes, source="--sweep " + " ".join(f"{k}={v}" for k, v in changes.items()))
        # the label names what varies; keys held at one value are in every row of the CSV
        settings.append(Setting(" ".join(f"{k}={changes[k]}" for k in varied), changes, config))
    return settings


# --------------------------------------------------------------------------- replay


@dataclass
class SettingResult:
    """What one setting kept over the whole bag."""

    setting: Setting
    frames: int = 0
    kept: int = 0
    random: int = 0
    candidates: int = 0
    duplicates: int = 0
    budget_limited: int = 0
    kept_bytes: int = 0
    kept_by_class: Counter = field(default_factory=Counter)
    score_sum_kept: float = 0.0
    score_sum_dropped: float = 0.0
    thresholds: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    kept_frames: list[tuple[str, int, float, str]] = field(default_factory=list)  # topic, index, score, reason

    def per_hour(self, value: float, duration_s: float) -> float:
        return value * 3600.0 / duration_s if duration_s > 0 else float("nan")

    @property
    def mean_score_kept(self) -> float:
        return self.score_sum_kept / self.kept if self.kept else float("nan")

    @property
    def mean_score_dropped(self) -> float:
        dropped = self.frames - self.kept
        return self.score_sum_dropped / dropped if dropped else float("nan")

    @property
    def threshold_median(self) -> float:
        return float(np.median(self.thresholds)) if self.thresholds else float("nan")


@dataclass
class ReplayReport:
    """A whole replay: bag facts, problems, one result per setting."""

    bag: str
    frames: int
    duration_s: float
    wall_s: float
    problems: list[BagProblem]
    unknown_encodings: Counter
    results: list[SettingResult]
    labels: tuple[str, ...]
    robots: list[str]
    outputs: list[Path] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Return bag seconds replayed per wall second."""
        return self.duration_s / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass
class _Tally:
    """What a replay has read so far across its bags."""

    problems: list[BagProblem] = field(default_factory=list)
    unknown: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    first_stamp: int | None = None
    last_stamp: int | None = None
    bag_seconds: float = 0.0

    def duration_s(self) -> float:
        """Return the seconds of recording the frames span (the bags' own durations with fewer than two frames)."""
        if self.frames > 1 and self.first_stamp is not None and self.last_stamp is not None:
            return (self.last_stamp - self.first_stamp) / 1e9 or self.bag_seconds
        return self.bag_seconds


def replay(
    bags: str | Path | Sequence[str | Path],
    models: str | Path,
    base: SelectionConfig,
    sweeps: Sequence[str] = (),
    topics: Sequence[str] | None = None,
    progress: bool = True,
    cascade_config=None,
) -> ReplayReport:
    """Return the replay of one or more bags (in order) through the cascade in ``models`` and each setting.

    A bag that cannot be opened at all (e.g. a recording cut short before its index was
    written) is reported as a problem and the replay goes on with the next one.
    """
    from fleetloop_core.tasks import load_cascade

    bag_paths = [Path(bags)] if isinstance(bags, (str, Path)) else [Path(b) for b in bags]
    settings = sweep_settings(base, sweeps)
    missing = [str(bag) for bag in bag_paths if not bag.exists()]
    if missing and len(missing) == len(bag_paths):  # before minutes of loading models for nothing
        raise ReplayError(f"{', '.join(missing)}: no such bag")
    models = Path(models)
    if not (models / "T4" / "manifest.json").is_file():
        raise ReplayError(f"{models}: no T4 model (run `fleetloop models build --out {models}`)")
    escalation = "T3" if (models / "T3" / "manifest.json").is_file() else None
    cascade = load_cascade(models, "T4", escalation, cascade_config)  # by the models' task
    labels = cascade.frame_labels
    results = [SettingResult(s) for s in settings]
    selectors: dict[tuple[int, str], Selector] = {}
    tally = _Tally()
    start = time.perf_counter()
    for bag in bag_paths:
        try:
            reader = BagReader(bag, topics).__enter__()
        except ReplayError as exc:
            if len(bag_paths) == 1:
                raise
            tally.problems.append(BagProblem(str(bag), -1, "unreadable_bag", str(exc)))
            log.error("%s (going on with the next bag)", exc)
            continue
        try:
            _replay_bag(reader, bag, cascade, results, selectors, labels, tally, progress)
        finally:
            reader.close()
    for (i, _), selector in selectors.items():
        results[i].candidates += selector.stats.candidates
    return ReplayReport(
        bag=", ".join(str(b) for b in bag_paths),
        frames=tally.frames,
        duration_s=tally.duration_s(),
        wall_s=time.perf_counter() - start,
        problems=tally.problems,
        unknown_encodings=tally.unknown,
        results=results,
        labels=labels,
        robots=sorted({robot for _, robot in selectors}),
    )


def _replay_bag(
    reader: BagReader,
    bag: Path,
    cascade: Any,
    results: list[SettingResult],
    selectors: dict[tuple[int, str], Selector],
    labels: tuple[str, ...],
    tally: _Tally,
    progress: bool,
) -> None:
    """Run every frame of one open bag through the cascade once and offer it to every setting's selectors."""
    from tqdm import tqdm

    bar = tqdm(reader.frames(), total=reader.message_count, desc=f"replay {bag.name}", unit="msg", disable=not progress)
    for item in bar:
        if isinstance(item, BagProblem):
            tally.problems.append(item)
            if item.kind == "unknown_encoding":
                tally.unknown[item.detail] += 1
            else:
                log.warning("%s: %s", bag, item)
            continue
        tally.frames += 1
        tally.first_stamp = item.stamp_ns if tally.first_stamp is None else min(tally.first_stamp, item.stamp_ns)
        tally.last_stamp = item.stamp_ns if tally.last_stamp is None else max(tally.last_stamp, item.stamp_ns)
        result = cascade.infer(item.image, stream=item.topic)
        for i, outcome in enumerate(results):
            _offer(outcome, selectors, i, item, result, labels)
    bar.close()
    tally.bag_seconds += reader.duration_s


def _offer(
    outcome: SettingResult, selectors: dict, i: int, item: BagFrame, result: Any, labels: tuple[str, ...]
) -> None:
    selector = selectors.get((i, item.robot_id))
    if selector is None:
        selector = selectors[(i, item.robot_id)] = Selector(
            outcome.setting.config, item.robot_id, labels, source=outcome.setting.label
        )
    decision = selector.offer(item.image, result, item.stamp_ns, stream=item.stream)
    outcome.frames += 1
    outcome.scores.append(decision.score)
    if decision.threshold is not None:
        outcome.thresholds.append(decision.threshold)
    outcome.duplicates += decision.duplicate
    outcome.budget_limited += decision.budget_limited
    if decision.keep and decision.record is not None:
        outcome.kept += 1
        outcome.random += decision.random
        outcome.kept_bytes += decision.record.encode().size_bytes
        outcome.kept_by_class[labels[result.label]] += 1
        outcome.score_sum_kept += decision.score
        outcome.kept_frames.append((item.topic, item.index, decision.score, decision.reason))
    else:
        outcome.score_sum_dropped += decision.score
