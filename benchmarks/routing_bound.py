#!/usr/bin/env python3
"""Routing's threshold rule on a simulated committee: what accuracy the labels it admits really have.

`routing.choose_threshold` takes the lowest confidence cut whose evidence frames above it reach the
target by the Wilson lower bound at ``z`` (at least ``min_accepted`` of them). This script draws a
population from a committee that is calibrated by construction (a frame of confidence c is right
with probability c; confidences from a Beta distribution skewed towards 1, overall accuracy ~0.92),
a random evidence sample of it, runs the rule, and measures the frames the threshold admits against
the population's truth. Per ``z`` and evidence size: how often a threshold passes, the mean true
accuracy of what it admits, how often that is below the target, and the share automated; and, for
comparison, the share an exactly known threshold would automate.

It is a study of the rule, not of a model: no file is read, nothing is timed. Targets (not asserted):
the admitted labels' mean true accuracy at or above the target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloud"))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _common import write_json  # noqa: E402
from fleetloop_cloud import routing  # noqa: E402


def population(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (confidence, right) of ``n`` frames of a calibrated committee: right with probability = confidence."""
    confidence = 1.0 - rng.beta(0.35, 4.0, n)
    return confidence, rng.random(n) < confidence


def exact_share(confidence: np.ndarray, right: np.ndarray, target: float) -> float:
    """Return the largest share of the most confident frames whose accuracy reaches ``target``."""
    order = np.argsort(-confidence)
    running = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    reaching = np.flatnonzero(running >= target)
    return float((reaching.max() + 1) / len(order)) if len(reaching) else 0.0


def study(zs, sizes, trials: int, frames: int, target: float, min_accepted: int, seed: int) -> list[dict]:
    """Return one row per (z, evidence size): passes, admitted labels' true accuracy, share automated."""
    rng = np.random.default_rng(seed)
    rows = []
    with tqdm(total=len(zs) * len(sizes) * trials, desc="draws", unit="draw") as bar:
        for z in zs:
            for size in sizes:
                accuracies, shares = [], []
                for _ in range(trials):
                    confidence, right = population(rng, frames)
                    sample = rng.choice(frames, size, replace=False)
                    threshold = routing.choose_threshold(
                        confidence[sample], right[sample], np.ones(size, bool), target, z, min_accepted
                    )
                    admitted = confidence >= threshold.value  # inf admits nothing
                    shares.append(float(admitted.mean()))
                    if admitted.any():
                        accuracies.append(float(right[admitted].mean()))
                    bar.update(1)
                rows.append(
                    {
                        "z": z,
                        "evidence_frames": size,
                        "trials": trials,
                        "passed": len(accuracies),
                        "admitted_true_accuracy": float(np.mean(accuracies)) if accuracies else None,
                        "below_target": float(np.mean(np.asarray(accuracies) < target)) if accuracies else None,
                        "share_automated": float(np.mean(shares)),
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--z", default="1.0,1.28,1.645", help="Wilson z values, comma-separated")
    parser.add_argument("--evidence", default="90,200,400", help="evidence sample sizes, comma-separated")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--frames", type=int, default=5000, help="population size per trial")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--min-accepted", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="50 trials")
    parser.add_argument("--json")
    args = parser.parse_args()
    trials = 50 if args.quick else args.trials
    zs = [float(v) for v in args.z.split(",")]
    sizes = [int(v) for v in args.evidence.split(",")]
    rows = study(zs, sizes, trials, args.frames, args.target, args.min_accepted, args.seed)
    confidence, right = population(np.random.default_rng(args.seed + 1), 200_000)
    exact = exact_share(confidence, right, args.target)

    def fmt(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["z", "evidence", "passed", "admitted: true accuracy", "below target", "share automated"]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for r in rows:
        cells = [
            f"{r['z']:g}",
            str(r["evidence_frames"]),
            f"{r['passed']}/{r['trials']}",
            fmt(r["admitted_true_accuracy"], 4),
            fmt(r["below_target"], 2),
            fmt(r["share_automated"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"an exactly known threshold automates {exact:.2f} of the frames at {args.target}")
    if args.json:
        write_json(args.json, {"rows": rows, "exact_share": exact, "target": args.target})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
