"""The promotion gate (pure): does a candidate model replace production, and why.

Every task gives the gate the same figures: one overall figure (accuracy, mAP@0.5, ...) and per
site and per class a figure with its support (test frames, boxes). A candidate is promoted only if
its overall figure beats production by ``evaluation.min_gain`` and no site or class with at least
``min_support`` support loses more than its regression limit *and* more than its sampling noise:
``regression_z`` standard errors of the difference of two proportions measured on that support
(sqrt((p_old (1 - p_old) + p_new (1 - p_new)) / n); for F1 and AP an approximation). Without the
noise term a site of 150 frames fails the 0.03 limit on 5 frames, which two equally good models
trade by chance (measured: the quick demo's T4 at +0.24 overall was refused once that way).
The gate asks that question of every site and class at once, so each is judged at the Bonferroni
quantile of ``regression_alpha`` over their number when that is stricter: at one standard error each of
15 groups passes an equally good model 84 % of the time, all 15 (were they independent) 7 % (measured:
three demo seeds refused
4 of 6 later candidates that gained 0.02 - 0.03 overall, each for one class of 29 - 50 frames dropping
1.0 - 1.7 standard errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from fleetloop_cloud.config import EvaluationConfig


@dataclass
class GateDecision:
    """Whether a candidate replaces production, and why."""

    promote: bool
    gain: float
    reasons: list[str]
    regressions: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "gain": round(self.gain, 4),
            "reasons": list(self.reasons),
            "regressions": {k: round(v, 4) for k, v in self.regressions.items()},
        }


@dataclass(frozen=True)
class GateFigures:
    """A model's figures as the gate reads them: overall, and (figure, support) per site and per class."""

    overall: float
    per_site: dict[str, tuple[float, int]]
    per_class: dict[str, tuple[float, int]]


@dataclass(frozen=True)
class GateWording:
    """How a task names its figures in the gate's reasons."""

    overall: str  # e.g. "overall accuracy", "mAP@0.5"
    site_figure: str  # after "site <name>": "" or " mAP@0.5"
    class_figure: str  # after "class <name>": "" or " AP@0.5"
    class_support: str  # what a class's support counts: "frames", "boxes"


def decide(
    production: GateFigures,
    candidate: GateFigures,
    config: EvaluationConfig,
    wording: GateWording,
    promoted: str,
) -> GateDecision:
    """Return the promotion decision of ``candidate`` over ``production``; ``promoted`` leads the reason to promote."""
    gain = candidate.overall - production.overall
    reasons, regressions = [], {}
    if gain < config.min_gain:
        reasons.append(
            f"{wording.overall} {candidate.overall:.4f} vs production {production.overall:.4f}: "
            f"gain {gain:+.4f} < required {config.min_gain:+.4f}"
        )
    gated = [
        key
        for groups in (production.per_site, production.per_class)
        for key, (_, count) in groups.items()
        if count >= config.min_support
    ]
    z = noise_z(config.regression_z, config.regression_alpha, len(gated))
    for kind, figure, support, limit, old, new in (
        ("site", wording.site_figure, "frames", config.max_site_regression, production.per_site, candidate.per_site),
        (
            "class",
            wording.class_figure,
            wording.class_support,
            config.max_class_regression,
            production.per_class,
            candidate.per_class,
        ),
    ):
        for key, (value, count) in old.items():
            if count < config.min_support or key not in new:
                continue
            drop = value - new[key][0]
            noise = z * standard_error(value, new[key][0], count)
            if drop > limit and drop > noise:
                regressions[f"{kind}:{key}"] = drop
                reasons.append(
                    f"{kind} {key}{figure} regresses {value:.3f} -> {new[key][0]:.3f} "
                    f"(-{drop:.3f} > limit {limit:.3f} and > noise {noise:.3f}, {count} {support})"
                )
    promote = not reasons
    if promote:
        reasons.append(f"{promoted}; no site or class regresses beyond its limit and its sampling noise")
    return GateDecision(promote=promote, gain=gain, reasons=reasons, regressions=regressions)


def noise_z(z: float, alpha: float | None, groups: int) -> float:
    """Return the standard errors a drop must exceed: ``z``, or the one-sided normal quantile of ``alpha``
    shared by ``groups`` comparisons (Bonferroni) when that is larger."""
    if alpha is None or groups < 1:
        return z
    return max(z, NormalDist().inv_cdf(max(0.5, 1 - alpha / groups)))


def standard_error(old: float, new: float, support: int) -> float:
    """Return the standard error of ``old - new``, two proportions each measured on ``support`` items."""
    old, new = (min(1.0, max(0.0, p)) for p in (old, new))  # F1 and AP lie in [0, 1] too
    return math.sqrt((old * (1 - old) + new * (1 - new)) / max(1, support))
