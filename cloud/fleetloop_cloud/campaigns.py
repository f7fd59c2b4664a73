"""Data campaigns, the cloud's side: what the fleet should bring more of (a class, a site, or the frames the
teachers disagree on), the signed job that asks for it, and whether uploads changed (the robot's side:
``fleetloop_core.selection_campaigns``).

Every reason is weighed alike, as ``prevalence x (1 - score) / sqrt(1 + accepted labels)``: the share of
field frames that go wrong in that slice, discounted by the labels the pool already holds (:func:`need`).
A class the robots already upload at more than its prevalence (their own label of the latest round's
uploads, ``uploaded``) is discounted by ``prevalence / uploaded``: the fleet brings it without being asked,
and a campaign's weight on it would change little (measured: a t-shirt campaign in a fleet whose
uploads were 24 % t-shirts by the robots' labels, twice their field share, raised that share 2.4x, the
most such a start allows being 4x):

* ``class`` (:func:`class_needs`): the score is the gate's per-class accuracy of the serving edge model
  (a class it never scored counts as 0); the prevalence is the class's share of the robots'
  random-sample uploads as labeled (:func:`field_prevalence`; unknown: 1 for every class). Measured why
  the prevalence is in it: without it the demo's first campaign asked for trousers, a class no robot's
  camera showed (0 of 219 uploads), and the robots kept half as many frames;
* ``site`` (:func:`site_needs`): the score is the serving edge model's accuracy on the site's field test
  frames, the prevalence the site's share of the random sample, the labels those of the site's frames;
  the campaign goes to the robots seen at the site only and raises their upload budget
  (``budget.frames_per_hour`` to ``site_frames_per_hour``) until it expires;
* ``disagreement`` (:func:`disagreement_needs`): per class as the foundation teacher (T1) labels the
  latest round's uploads, the score is the share the two teachers agree on: novelty the teachers
  disagree on needs no test set, and it is what the committee cannot label without a person.

:func:`propose` makes the campaign for the neediest reason in ``kinds`` whose need reaches ``min_need``,
for ``expires_s``. A class (``class``, ``disagreement``) is only asked for when the serving model finds at
least ``min_recall`` of it: the robots' selectors keep frames by their own model's label, so a class the
serving model does not recognise cannot be asked for (measured: the lab-trained edge model labels none
of the field's bags as bags). ``aim: weight`` (default) multiplies the value score of frames the robots
label as the class by ``weight`` (``selection.class_weights``: their own policy and budget stay);
``aim: quota`` switches them to the ``class_quota`` policy with that class's share raised to ``share``
and every other class capped at ``others_share``. The approval, by an operator or ``approve: auto``, is
the caller's. :func:`upload_share`: the share of a set of uploads that match the campaign (the robots'
own label of the class; the site), measured before and after.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

from pydantic import Field

from fleetloop_core.config import ConfigModel

from fleetloop_cloud.fleet_jobs import campaign_document


Kind = Literal["class", "site", "disagreement"]  # why a campaign is proposed (the module's docstring)


class CampaignConfig(ConfigModel):
    """When and how the cloud asks the fleet for a class (``campaigns`` in config/cloud.yaml).

    ``approve: manual``: an operator reads ``fleetloop-cloud campaign propose`` and sends it; ``auto``:
    after a round, ``fleetloop-cloud campaign auto`` (and the demo's campaign arm) sends the proposal
    itself while no campaign it sent is still running: one campaign at a time.
    """

    approve: Literal["manual", "auto"] = "manual"
    # the reasons a campaign may be proposed for (the module's docstring): the neediest of them wins
    kinds: tuple[Kind, ...] = ("class", "site", "disagreement")
    # weight: the class's frames get their value score x ``weight`` (the robot's own policy and budget stay,
    # so the budget is spent); quota: the class_quota policy, the class capped at ``share``, every other
    # class at ``others_share`` (measured: the robots left a third of the budget unused)
    aim: Literal["weight", "quota"] = "weight"
    weight: float = Field(default=4.0, gt=1, le=100)
    # weight by the robot's label of the class, or also by its model's probability of the class
    # (``selection.class_weight_by``: the frames it labels as a class it confuses the asked-for one with), or
    # auto: by probability when the robots' uploads name the class at under ``probability_below`` of its
    # share of the random sample (they confuse it with others), else by label. Measured on three demo seeds
    # (docs/results/2026-12-06.md): by probability found 1.7 - 2.2x more true coats where the robots named
    # 0.8 % of uploads coat against 6.5 % of the random sample, and kept fewer of a class they do name
    weight_by: Literal["label", "probability", "auto"] = "auto"
    probability_below: float = Field(default=0.5, gt=0, le=1)
    min_need: float = Field(default=0.005, ge=0)  # the neediest class's need must reach this
    min_recall: float = Field(default=0.2, ge=0, le=1)  # the serving model must find this share of the class
    share: float = Field(default=0.5, gt=0, le=1)  # the class's share cap under the campaign
    others_share: float = Field(default=0.05, ge=0, le=1)  # every other class's cap
    # a site campaign's upload budget for the site's robots (twice config/selection.yaml's 600 frames an
    # hour); what it costs is bounded by ``expires_s``
    site_frames_per_hour: float = Field(default=1200.0, gt=0)
    min_frames: int = Field(default=20, ge=1)  # disagreement: a class needs this many uploads T1 labels as it
    expires_s: float = Field(default=24 * 3600.0, gt=0)
    skip: tuple[str, ...] = ("none",)  # classes never asked for (the empty scene)


SCORE_WORDS = {"class": "field score", "site": "field accuracy", "disagreement": "teachers agree on"}


@dataclass(frozen=True)
class Need:
    """How much one class or site needs more data, and why."""

    name: str  # the class or the site
    labels: int  # accepted labels in the pool
    score: Optional[float]  # class/site: the edge model's field score; disagreement: the teachers' agreement
    need: float
    prevalence: Optional[float] = None  # share of the robots' random-sample uploads (None: not known)
    kind: Kind = "class"
    recall: Optional[float] = None  # a class's field score of the serving model (None: never scored, or a site)
    robots: tuple[str, ...] = ()  # a site's robots
    frames: Optional[int] = None  # disagreement: the uploads behind the score
    uploaded: Optional[float] = None  # a class's share of the latest round's uploads, by the robots' labels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "labels": self.labels,
            "score": None if self.score is None else round(self.score, 4),
            "prevalence": None if self.prevalence is None else round(self.prevalence, 4),
            "need": round(self.need, 5),
        }
        if self.uploaded is not None:
            out["uploaded"] = round(self.uploaded, 4)
        if self.frames is not None:
            out["frames"] = self.frames
        if self.robots:
            out["robots"] = list(self.robots)
        return out

    def why(self) -> str:
        """Return the campaign's reason in words."""
        words = "never scored" if self.score is None else f"{SCORE_WORDS[self.kind]} {self.score:.2f}"
        if self.frames is not None:
            words += f" of {self.frames} uploads T1 labels {self.name}"
        if self.prevalence is not None:
            words += f", {self.prevalence:.1%} of the random sample"
        if self.uploaded is not None:
            words += f", {self.uploaded:.1%} of the uploads"
        return f"{self.name}: {self.labels} accepted labels, {words}, need {self.need:.3f}"


def need(prevalence: Optional[float], score: Optional[float], labels: int, uploaded: Optional[float] = None) -> float:
    """Return ``prevalence x (1 - score) / sqrt(1 + labels)`` (an unknown prevalence counts 1, a score 0),
    times ``prevalence / uploaded`` where the uploads already hold more of the class than the field."""
    value = (1.0 if prevalence is None else prevalence) * (1.0 - (score or 0.0)) / math.sqrt(1.0 + labels)
    if prevalence is not None and uploaded is not None and uploaded > prevalence:
        value *= prevalence / uploaded
    return value


@dataclass(frozen=True)
class Campaign:
    """A proposed campaign: its name, version, the selector changes and why."""

    name: str
    version: str
    target: str  # the class, or the site
    changes: dict[str, Any]
    reason: str
    expires_at: float
    kind: Kind = "class"
    robots: tuple[str, ...] = ()  # a site campaign goes to these robots only

    def document(self, private_pem: bytes) -> dict[str, Any]:
        """Return the signed ``fleetloop.update_selection`` job document."""
        return campaign_document(self.name, self.version, self.changes, self.expires_at, private_pem, self.reason)


def class_needs(
    classes: Sequence[str],
    labels: Mapping[str, int],
    scores: Mapping[str, Optional[float]],
    skip: Iterable[str] = (),
    prevalence: Optional[Mapping[str, float]] = None,
    uploaded: Optional[Mapping[str, float]] = None,
) -> list[Need]:
    """Return every class's need, neediest first (``labels``: accepted labels, ``scores``: field score,
    ``prevalence``: share of the field's frames, None: unknown, every class weighs alike; ``uploaded``:
    share of the latest uploads by the robots' own labels, None: unknown)."""
    skipped = set(skip)
    out = []
    for name in classes:
        if name in skipped:
            continue
        score, count = scores.get(name), int(labels.get(name, 0))
        share = None if prevalence is None else float(prevalence.get(name, 0.0))
        up = None if uploaded is None else float(uploaded.get(name, 0.0))
        out.append(Need(name, count, score, need(share, score, count, up), share, "class", score, uploaded=up))
    return _neediest(out)


def site_needs(
    scores: Mapping[str, float],
    labels: Mapping[str, int],
    robots: Mapping[str, Sequence[str]],
    prevalence: Optional[Mapping[str, float]] = None,
) -> list[Need]:
    """Return the need of every site the evaluation scored, neediest first (``scores``: the serving edge
    model's accuracy on the site's field test frames, ``labels``: accepted labels of the site's frames,
    ``robots``: the robots seen at each site, ``prevalence``: the site's share of the random sample)."""
    out = []
    for site, score in scores.items():
        count = int(labels.get(site, 0))
        share = None if prevalence is None else float(prevalence.get(site, 0.0))
        out.append(
            Need(site, count, score, need(share, score, count), share, "site", robots=tuple(robots.get(site, ())))
        )
    return _neediest(out)


def disagreement_needs(
    agreement: Mapping[str, tuple[float, int]],
    labels: Mapping[str, int],
    recall: Mapping[str, Optional[float]],
    min_frames: int,
    skip: Iterable[str] = (),
    prevalence: Optional[Mapping[str, float]] = None,
    uploaded: Optional[Mapping[str, float]] = None,
) -> list[Need]:
    """Return per class (as the foundation teacher labels the latest uploads) the need the teachers'
    disagreement shows, neediest first (``agreement``: class -> (share the two teachers agree on, uploads);
    classes with fewer than ``min_frames`` uploads are left out: too few to say; ``uploaded`` as in
    :func:`class_needs`)."""
    skipped = set(skip)
    out = []
    for name, (agree, frames) in agreement.items():
        if name in skipped or frames < min_frames:
            continue
        count = int(labels.get(name, 0))
        share = None if prevalence is None else float(prevalence.get(name, 0.0))
        up = None if uploaded is None else float(uploaded.get(name, 0.0))
        value = need(share, agree, count, up)
        out.append(Need(name, count, agree, value, share, "disagreement", recall.get(name), frames=frames, uploaded=up))
    return _neediest(out)


def _neediest(needs: list[Need]) -> list[Need]:
    return sorted(needs, key=lambda n: (-n.need, n.kind, n.name))


def field_prevalence(
    classes: Sequence[str], random_labels: Sequence[int], smoothing: float = 0.5
) -> Optional[dict[str, float]]:
    """Return each class's share of the random-sample uploads' labels (additively smoothed), None without any.

    The robots' random sample (``selection.random_fraction``) is the one unbiased view of what their
    cameras see; its labels are the loop's own (people's and audited auto-labels), not simulated truth.
    """
    return shares(classes, [classes[int(label)] for label in random_labels], smoothing)


def shares(names: Sequence[str], observed: Sequence[str], smoothing: float = 0.5) -> Optional[dict[str, float]]:
    """Return each name's share of ``observed`` (additively smoothed), None when nothing was observed."""
    if not observed:
        return None
    counts = Counter(observed)
    total = len(observed) + smoothing * len(names)
    return {name: (counts.get(name, 0) + smoothing) / total for name in names}


def propose(needs: Sequence[Need], config: CampaignConfig, version: str, now: float) -> Optional[Campaign]:
    """Return the campaign for the neediest reason in ``config.kinds`` (a class the robots can find; a site
    with robots), or None when none needs one."""

    def eligible(n: Need) -> bool:
        if n.kind == "site":
            return bool(n.robots)
        return n.recall is None or n.recall >= config.min_recall

    candidates = _neediest([n for n in needs if n.kind in config.kinds and eligible(n)])
    if not candidates or candidates[0].need < config.min_need:
        return None
    top = candidates[0]
    if top.kind == "site":
        changes: dict[str, Any] = {"budget.frames_per_hour": config.site_frames_per_hour}
        name = f"more-from-{top.name}"
    elif config.aim == "weight":
        changes, name = {"class_weights": {top.name: config.weight}}, f"more-{top.name}"
        if weight_by(top, config) == "probability":
            changes["class_weight_by"] = "probability"
    else:
        changes = {
            "policy.name": "class_quota",
            "policy.params.shares": {top.name: config.share},
            "policy.params.max_share": config.others_share,
        }
        name = f"more-{top.name}"
    if top.kind == "disagreement":
        name += "-disputed"
    why = top.why()
    if changes.get("class_weight_by") == "probability":
        why += "; weighed by the robots' probability of it too (they seldom name it)"
    return Campaign(name, version, top.name, changes, why, now + config.expires_s, top.kind, top.robots)


def weight_by(need: Need, config: CampaignConfig) -> str:
    """Return how a class campaign weighs frames (``selection.class_weight_by``): ``config.weight_by``, or for
    ``auto`` probability when the robots' uploads name the class at under ``probability_below`` of its share
    of the random sample, else label."""
    if config.weight_by != "auto":
        return config.weight_by
    under_named = (
        need.uploaded is not None
        and bool(need.prevalence)
        and need.uploaded < config.probability_below * need.prevalence
    )
    return "probability" if under_named else "label"


def upload_share(matches: Sequence[str], target: str) -> float:
    """Return the share of uploads whose class (the robots' own label) or site is ``target`` (0 with none)."""
    return sum(1 for value in matches if value == target) / len(matches) if matches else 0.0
