"""Data campaigns, the cloud's side: which class the fleet should bring more of, the signed job that asks
for it, and whether uploads changed (the robot's side: ``fleetloop_core.selection_campaigns``).

* :func:`class_needs`: per class, how much more data would help: ``(1 - field score) / sqrt(1 +
  accepted labels)``: a class with a large gap on the field test set and few labels comes first (the
  score is the gate's per-class figure of the edge model, F1 for classes; a class it never scored
  counts as 0);
* :func:`propose`: the campaign for the neediest class when its need reaches ``min_need``: the
  ``class_quota`` policy with that class's share raised to ``share`` and every other class capped at
  ``others_share``, for ``expires_s`` (the approval, by an operator or ``approve: auto``, is the
  caller's);
* :func:`upload_share`: the share of a set of uploads the robots themselves labeled as the campaign's
  class (what the campaign asks the selectors for), measured before and after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

from pydantic import Field

from fleetloop_core.config import ConfigModel

from fleetloop_cloud.fleet_jobs import campaign_document


class CampaignConfig(ConfigModel):
    """When and how the cloud asks the fleet for a class (``campaigns`` in config/cloud.yaml).

    ``approve: manual``: an operator reads ``fleetloop-cloud campaign propose`` and sends it; ``auto``:
    after a round, ``fleetloop-cloud campaign auto`` (and the demo's campaign arm) sends the proposal
    itself while no campaign it sent is still running: one campaign at a time.
    """

    approve: Literal["manual", "auto"] = "manual"
    min_need: float = Field(default=0.05, ge=0)  # the neediest class's need must reach this
    share: float = Field(default=0.5, gt=0, le=1)  # the class's share cap under the campaign
    others_share: float = Field(default=0.05, ge=0, le=1)  # every other class's cap
    expires_s: float = Field(default=24 * 3600.0, gt=0)
    skip: tuple[str, ...] = ("none",)  # classes never asked for (the empty scene)


@dataclass(frozen=True)
class ClassNeed:
    """How much one class needs more data."""

    name: str
    labels: int  # accepted labels in the pool
    score: Optional[float]  # the edge model's field score (None: never scored)
    need: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, "labels": self.labels, "score": self.score, "need": round(self.need, 4)}


@dataclass(frozen=True)
class Campaign:
    """A proposed campaign: its name, version, the selector changes and why."""

    name: str
    version: str
    target: str
    changes: dict[str, Any]
    reason: str
    expires_at: float

    def document(self, private_pem: bytes) -> dict[str, Any]:
        """Return the signed ``fleetloop.update_selection`` job document."""
        return campaign_document(self.name, self.version, self.changes, self.expires_at, private_pem, self.reason)


def class_needs(
    classes: Sequence[str], labels: Mapping[str, int], scores: Mapping[str, Optional[float]], skip: Iterable[str] = ()
) -> list[ClassNeed]:
    """Return every class's need, neediest first (``labels``: accepted labels, ``scores``: field score)."""
    skipped = set(skip)
    out = []
    for name in classes:
        if name in skipped:
            continue
        score = scores.get(name)
        count = int(labels.get(name, 0))
        out.append(ClassNeed(name, count, score, (1.0 - (score or 0.0)) / math.sqrt(1.0 + count)))
    return sorted(out, key=lambda n: (-n.need, n.name))


def propose(needs: Sequence[ClassNeed], config: CampaignConfig, version: str, now: float) -> Optional[Campaign]:
    """Return the campaign for the neediest class, or None when no class needs one."""
    if not needs or needs[0].need < config.min_need:
        return None
    top = needs[0]
    score = "never scored" if top.score is None else f"field score {top.score:.2f}"
    return Campaign(
        name=f"more-{top.name}",
        version=version,
        target=top.name,
        changes={
            "policy.name": "class_quota",
            "policy.params.shares": {top.name: config.share},
            "policy.params.max_share": config.others_share,
        },
        reason=f"{top.name}: {top.labels} accepted labels, {score}, need {top.need:.3f}",
        expires_at=now + config.expires_s,
    )


def upload_share(robot_labels: Sequence[str], target: str) -> float:
    """Return the share of uploads the robots labeled ``target`` (0 with no uploads)."""
    return sum(1 for label in robot_labels if label == target) / len(robot_labels) if robot_labels else 0.0
