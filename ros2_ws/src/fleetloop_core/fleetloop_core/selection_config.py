"""The selector's configuration (``config/selection.yaml``): weights, budget, dedup, record, policy.

Loaded and validated in one place; a bad value is a ConfigError naming the file and the key, and
the policy's params are checked against the policy's own model (``selection_policies.POLICIES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel, default_config_path, read_yaml, validate
from fleetloop_core.errors import ConfigError

from fleetloop_core.selection_policies import POLICIES
from fleetloop_core.tasks.classification import ClassificationWeights
from fleetloop_core.tasks.detection import DetectionWeights

# --------------------------------------------------------------------------- config


class ScoreWeights(ConfigModel):
    """Weights of the score parts in a frame's value score (a weighted mean), one section per task.

    Each task names its own parts (``fleetloop_core.tasks``: ``score_parts``, ``weights_model``); a frame
    is weighed by the section of its result's task. One field per registered task (a test checks it).
    """

    classification: ClassificationWeights = ClassificationWeights()
    detection: DetectionWeights = DetectionWeights()

    @model_validator(mode="before")
    @classmethod
    def _by_task(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            flat = sorted(k for k in data if k not in cls.model_fields and k in ClassificationWeights.model_fields)
            if flat:
                raise ValueError(
                    f"weights are given per task: write weights: {{classification: {{{flat[0]}: ...}}}} "
                    f"(found {', '.join(flat)} directly under weights)"
                )
        return data

    @model_validator(mode="after")
    def _some_weight(self) -> "ScoreWeights":
        for task in type(self).model_fields:
            if sum(getattr(self, task).model_dump().values()) <= 0.0:
                raise ValueError(f"{task}: at least one weight must be > 0")
        return self

    def of(self, task: str) -> ConfigModel:
        """Return the weights of ``task``'s score parts; ConfigError naming the known tasks otherwise."""
        weights = getattr(self, task, None) if task in type(self).model_fields else None
        if weights is None:
            raise ConfigError(f"no selection weights for task {task!r} (known: {', '.join(type(self).model_fields)})")
        return weights


class BudgetConfig(ConfigModel):
    """Upload budget of one robot (all its streams), as token buckets over the frames' stamps."""

    frames_per_hour: float = Field(default=600.0, gt=0.0)
    bytes_per_hour: float = Field(default=200_000_000.0, gt=0.0)
    burst_seconds: float = Field(default=60.0, gt=0.0)  # bucket capacity, in seconds of budget


class DedupConfig(ConfigModel):
    """Near-duplicate suppression against a bounded memory of kept frames."""

    enabled: bool = True
    memory: int = Field(default=512, ge=1)  # kept frames remembered
    hash: Literal["phash", "average"] = "phash"  # OpenCV img_hash algorithm (64 bits)
    hash_max_distance: int = Field(default=8, ge=-1, le=64)  # Hamming bits; -1 disables the hash
    embedding_max_distance: float = Field(default=0.0002, ge=-1.0, le=2.0)  # 1 - cos; < 0 disables


class RecordConfig(ConfigModel):
    """How kept frames are encoded and what their sidecars carry."""

    encoding: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    include_embedding: bool = True


class ClipConfig(ConfigModel):
    """Clips: when the policy keeps a frame, keep up to ``frames`` more of the same robot track after it.

    Robot data is cheap to label because an item stays in view for many frames: a clip lets one
    human answer (or one confident auto-label) cover the track's frames in the cloud. Clip frames
    are every ``spacing``-th frame of the track (the robot's own tracker decides what a track is),
    deduplicated like any candidate, and may spend at most ``budget_share`` of the frame budget's
    burst (the rest stays for new candidates). Random samples never open a clip (they stay unbiased).
    """

    frames: int = Field(default=0, ge=0, le=64)  # K: clip frames per kept frame (0: clips off)
    spacing: int = Field(default=3, ge=1)  # every n-th frame of the track
    budget_share: float = Field(default=0.5, ge=0.0, le=1.0)  # of the frame bucket clips may spend


class PolicyConfig(ConfigModel):
    """Which policy decides candidates, and its parameters (validated against the policy)."""

    name: str = "adaptive_budget"
    params: dict[str, Any] = Field(default_factory=dict)


class SelectionConfig(ConfigModel):
    """Everything the selector needs (``config/selection.yaml``)."""

    weights: ScoreWeights = ScoreWeights()
    policy: PolicyConfig = PolicyConfig()
    budget: BudgetConfig = BudgetConfig()
    dedup: DedupConfig = DedupConfig()
    clip: ClipConfig = ClipConfig()
    random_fraction: float = Field(default=0.002, ge=0.0, le=1.0)  # of all frames, kept regardless
    # value score x weight for frames the robot's model labels as that class (capped at 1): aims the
    # budget at a class without capping the others (a data campaign's usual change); by label name
    class_weights: dict[str, float] = Field(default_factory=dict)
    # label: the weight of the class the robot's model labels the frame (as above); probability: the larger
    # of that and 1 + sum over the weighted classes of (weight - 1) x the model's probability of the class, so
    # a frame the model thinks may be the class is aimed at too (a class the model confuses with others is
    # mostly labeled as them); results without per-class probabilities are weighed by label
    class_weight_by: Literal["label", "probability"] = "label"
    random_priority: float = Field(default=1.0, ge=0.0)  # queue priority of random samples
    record: RecordConfig = RecordConfig()
    seed: int = 0  # of the random sampling


def per_class_errors(values: Mapping[str, float], labels: tuple[str, ...], key: str, high: float) -> list[str]:
    """Return what is wrong with a per-class map ``key`` (class name -> a value in [0, ``high``]) for a
    selector of ``labels`` (empty: nothing): ``class_weights`` and the class_quota policy's ``shares``."""
    errors = []
    for name, value in values.items():
        if name not in labels:
            known = ", ".join(labels) or "none: the selector has no labels"
            errors.append(f"{key}: unknown class {name!r} (known: {known})")
        elif not 0.0 <= value <= high or value != value:
            errors.append(f"{key}.{name} must be in [0, {high:g}] (got {value})")
    return errors


def policy_params(config: SelectionConfig, source: str = "<config>") -> ConfigModel:
    """Return the validated params of the configured policy; ConfigError naming source, name and key."""
    name = config.policy.name
    policy = POLICIES.get(name)
    if policy is None:
        raise ConfigError(
            f"{source}: policy.name: unknown selection policy {name!r} (known: {', '.join(sorted(POLICIES))})"
        )
    return validate(policy.params, config.policy.params, source, prefix="policy.params")


def selection_config(data: Mapping[str, Any], source: str = "<config>") -> SelectionConfig:
    """Return a SelectionConfig from a mapping, policy and params checked; ConfigError otherwise."""
    config = validate(SelectionConfig, data, source)
    policy_params(config, source)
    return config


def load_selection_config(path: str | Path | None = None) -> SelectionConfig:
    """Return the selection config in ``path`` (default ``config/selection.yaml``), fully validated."""
    path = Path(path) if path is not None else default_config_path("selection.yaml")
    return selection_config(read_yaml(path), str(path))


def apply_changes(config: SelectionConfig, changes: Mapping[str, Any], source: str = "update") -> SelectionConfig:
    """Return ``config`` with ``changes`` applied and validated (ConfigError naming the key otherwise).

    Keys are dotted paths (``budget.frames_per_hour``, ``policy.params.threshold``), the same
    with ``__`` (usable as keyword arguments), or sections with a mapping merged into them.
    Switching ``policy.name`` without new ``policy.params`` starts from the new policy's defaults.
    """
    data = config.model_dump()
    dotted = {key.replace("__", "."): value for key, value in changes.items()}
    new_name = dotted.get("policy.name")
    if isinstance(dotted.get("policy"), Mapping):
        new_name = dotted["policy"].get("name", new_name)
    if new_name is not None and new_name != config.policy.name:
        data["policy"]["params"] = {}  # the old policy's params mean nothing to the new one
    for key, value in dotted.items():
        path = key.split(".")
        target = data
        for part in path[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key}: {part} is a value, not a section")
            target = node
        last = path[-1]
        if isinstance(value, Mapping) and isinstance(target.get(last), dict):
            target[last] = {**target[last], **value}
        else:
            target[last] = value
    return selection_config(data, source)
