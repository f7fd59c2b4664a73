"""PNG plots of the tuning views (matplotlib, Agg; Figure objects, no pyplot state, so threads are safe)."""

from __future__ import annotations

import io
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fleetloop_cloud.review.tuning import RiskCoverage, RoutingChoice, Sweep


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def risk_coverage_png(
    curve: RiskCoverage, choice: Optional[RoutingChoice], loop_threshold: Optional[float], min_validation: int = 0
) -> bytes:
    """Return the risk-coverage plot: accuracy (and its Wilson lower bound) vs auto-accepted fraction.

    Left of ``min_validation`` accepted frames (grey) the loop does not set a threshold at all.
    """
    figure = Figure(figsize=(7.2, 4.0))
    axis = figure.add_subplot(1, 1, 1)
    if len(curve) and min_validation > 0:
        axis.axvspan(
            0,
            min_validation / max(curve.frames, 1),
            color="0.85",
            alpha=0.6,
            label=f"fewer than {min_validation} accepted: no threshold",
        )
    if len(curve):
        axis.plot(curve.coverage, curve.accuracy, color="#1f77b4", label="accuracy of auto-accepted")
        axis.plot(curve.coverage, curve.lower, color="#1f77b4", linestyle=":", label="Wilson lower bound")
        axis.fill_between(curve.coverage, curve.lower, curve.accuracy, color="#1f77b4", alpha=0.12)
        axis.set_xlim(0, max(1e-3, float(curve.coverage[-1])) * 1.02)
        low = float(min(curve.lower.min(), curve.accuracy.min()))
        axis.set_ylim(max(0.0, low - 0.02), 1.005)
    else:
        axis.text(
            0.5, 0.5, "no human-labeled validation frames yet", ha="center", va="center", transform=axis.transAxes
        )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.005)
    if choice is not None:
        axis.axhline(choice.target, color="#d62728", linestyle="--", linewidth=1, label=f"target {choice.target:.3f}")
        if choice.threshold.automated:
            axis.axvline(
                choice.validation_coverage,
                color="#2ca02c",
                linewidth=1.2,
                label=f"threshold {choice.threshold.value:.3f}: accepts {choice.validation_coverage:.0%}",
            )
    if loop_threshold is not None and len(curve):
        covered = float((curve.confidence >= loop_threshold).sum()) / max(curve.frames, 1)
        axis.axvline(covered, color="0.4", linestyle="-.", linewidth=1, label=f"loop's threshold {loop_threshold:.3f}")
    axis.set_xlabel(f"auto-accepted fraction of the {curve.frames} validation frames (coverage)")
    axis.set_ylabel("accuracy of auto-accepted labels")
    axis.set_title("Routing: risk-coverage of the auto-labeler (human-labeled random sample)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return _png(figure)


def sweep_png(sweep: Sweep) -> bytes:
    """Return kept fraction and upload MB/hour against the swept value (one line per other setting)."""
    figure = Figure(figsize=(9.0, 3.6))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    x_key = sweep.x_key
    groups: dict[str, list[dict]] = {}
    for row in sweep.rows:
        rest = " ".join(f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in sweep.swept[1:])
        groups.setdefault(rest, []).append(row)
    numeric = x_key is not None and all(isinstance(r[x_key], float) for r in sweep.rows)
    for rest, rows in groups.items():
        if numeric:
            rows = sorted(rows, key=lambda r: r[x_key])
        xs = [r[x_key] if numeric else str(r[x_key] if x_key else r["setting"]) for r in rows]
        left.plot(xs, [r["kept_fraction"] for r in rows], marker="o", label=rest or None)
        right.plot(xs, [r["bytes_per_hour"] / 1e6 for r in rows], marker="o", label=rest or None)
    for axis, title in ((left, "kept fraction of frames"), (right, "upload MB per hour")):
        axis.set_xlabel(x_key or "setting")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        if len(groups) > 1:
            axis.legend(fontsize=7)
    figure.suptitle(sweep.source, fontsize=9)
    figure.tight_layout()
    return _png(figure)


def robots_png(stats: Sequence[dict]) -> bytes:
    """Return per-robot upload rates: frames per hour and upload MB per hour (bars)."""
    figure = Figure(figsize=(9.0, 3.2))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    names = [s["robot"] for s in stats]
    left.bar(names, [s["frames_per_hour"] or 0 for s in stats], color="#1f77b4")
    right.bar(names, [(s["bytes_per_hour"] or 0) / 1e6 for s in stats], color="#ff7f0e")
    for axis, title in ((left, "frames uploaded per hour"), (right, "upload MB per hour")):
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3, axis="y")
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    if not stats:
        left.text(0.5, 0.5, "no frames in the pool yet", ha="center", va="center", transform=left.transAxes)
    figure.tight_layout()
    return _png(figure)
