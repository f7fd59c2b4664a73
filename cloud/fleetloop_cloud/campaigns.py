"""Data campaigns, the cloud's side: which class the fleet should bring more of, the signed job that asks
for it, and whether uploads changed (the robot's side: ``fleetloop_core.selection_campaigns``).

* :func:`class_needs`: per class, how much more data would help: ``prevalence x (1 - field score) /
  sqrt(1 + accepted labels)``: the share of field frames the edge model gets wrong on that class,
  discounted by the labels the pool already holds. The score is the gate's per-class accuracy of the
  serving edge model (a class it never scored counts as 0); the prevalence is the class's share of
  the robots' random-sample uploads as labeled (:func:`field_prevalence`; unknown: 1 for every class).
  Measured why the prevalence is in it: without it the demo's first campaign asked for trousers, a
  class no robot's camera showed (0 of 219 uploads), and the robots kept half as many frames;
* :func:`propose`: the campaign for the neediest class the robots can find (its field score at least
  ``min_recall``: the robots' selectors keep frames by their own model's label, so a class the serving
  model does not recognise cannot be asked for; measured: the lab-trained edge model labels none of
  the field's bags as bags) when its need reaches ``min_need``, for ``expires_s``: ``aim: weight``
  (default) multiplies the value score of frames the robots label as the class by ``weight``
  (``selection.class_weights``: their own policy and budget stay); ``aim: quota`` switches them to
  the ``class_quota`` policy with that class's share raised to ``share`` and every other class capped
  at ``others_share`` (the approval, by an operator or ``approve: auto``, is the caller's);
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
    # weight: the class's frames get their value score x ``weight`` (the robot's own policy and budget stay,
    # so the budget is spent); quota: the class_quota policy, the class capped at ``share``, every other
    # class at ``others_share`` (measured: the robots left a third of the budget unused)
    aim: Literal["weight", "quota"] = "weight"
    weight: float = Field(default=4.0, gt=1, le=100)
    min_need: float = Field(default=0.005, ge=0)  # the neediest class's need must reach this
    min_recall: float = Field(default=0.2, ge=0, le=1)  # the serving model must find this share of the class
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
    prevalence: Optional[float] = None  # share of the robots' random-sample uploads (None: not known)

    def to_dict(self) -> dict[str, Any]:
        prevalence = None if self.prevalence is None else round(self.prevalence, 4)
        return {
            "class": self.name,
            "labels": self.labels,
            "score": self.score,
            "prevalence": prevalence,
            "need": round(self.need, 5),
        }


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
    classes: Sequence[str],
    labels: Mapping[str, int],
    scores: Mapping[str, Optional[float]],
    skip: Iterable[str] = (),
    prevalence: Optional[Mapping[str, float]] = None,
) -> list[ClassNeed]:
    """Return every class's need, neediest first (``labels``: accepted labels, ``scores``: field score,
    ``prevalence``: share of the field's frames, None: unknown, every class weighs alike)."""
    skipped = set(skip)
    out = []
    for name in classes:
        if name in skipped:
            continue
        score = scores.get(name)
        count = int(labels.get(name, 0))
        share = None if prevalence is None else float(prevalence.get(name, 0.0))
        need = (1.0 if share is None else share) * (1.0 - (score or 0.0)) / math.sqrt(1.0 + count)
        out.append(ClassNeed(name, count, score, need, share))
    return sorted(out, key=lambda n: (-n.need, n.name))


def field_prevalence(
    classes: Sequence[str], random_labels: Sequence[int], smoothing: float = 0.5
) -> Optional[dict[str, float]]:
    """Return each class's share of the random-sample uploads' labels (additively smoothed), None without any.

    The robots' random sample (``selection.random_fraction``) is the one unbiased view of what their
    cameras see; its labels are the loop's own (people's and audited auto-labels), not simulated truth.
    """
    if not random_labels:
        return None
    counts = [0] * len(classes)
    for label in random_labels:
        counts[int(label)] += 1
    total = len(random_labels) + smoothing * len(classes)
    return {name: (counts[i] + smoothing) / total for i, name in enumerate(classes)}


def propose(needs: Sequence[ClassNeed], config: CampaignConfig, version: str, now: float) -> Optional[Campaign]:
    """Return the campaign for the neediest class the robots can find, or None when no class needs one."""
    findable = [n for n in needs if n.score is None or n.score >= config.min_recall]
    if not findable or findable[0].need < config.min_need:
        return None
    top = findable[0]
    score = "never scored" if top.score is None else f"field score {top.score:.2f}"
    if top.prevalence is not None:
        score += f", {top.prevalence:.1%} of the random sample"
    changes: dict[str, Any] = (
        {"class_weights": {top.name: config.weight}}
        if config.aim == "weight"
        else {
            "policy.name": "class_quota",
            "policy.params.shares": {top.name: config.share},
            "policy.params.max_share": config.others_share,
        }
    )
    return Campaign(
        name=f"more-{top.name}",
        version=version,
        target=top.name,
        changes=changes,
        reason=f"{top.name}: {top.labels} accepted labels, {score}, need {top.need:.3f}",
        expires_at=now + config.expires_s,
    )


def upload_share(robot_labels: Sequence[str], target: str) -> float:
    """Return the share of uploads the robots labeled ``target`` (0 with no uploads)."""
    return sum(1 for label in robot_labels if label == target) / len(robot_labels) if robot_labels else 0.0
