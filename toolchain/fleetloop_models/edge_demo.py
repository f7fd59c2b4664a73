"""``fleetloop edge-demo``: the edge pipeline alone over a simulated field stream (no cloud, no fleet).

Builds (or reuses) the reference models, streams one robot's field camera through the real
cascade, and prints what it saw and which frames it found most worth a label.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def _at_least(least: int) -> Callable[[str], int]:
    """Return an argparse type: an integer >= ``least`` (else the usage error names the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("edge-demo", help="the edge pipeline alone over one simulated field stream")
    parser.add_argument("--models", default="models", help="reference models directory (built if missing)")
    parser.add_argument("--profile", default="default", help="build profile when models are missing")
    # checked before any model is built: a bad count is said at once, not after minutes of training
    parser.add_argument("--frames", type=_at_least(1), default=600, help="camera frames (>= 1)")
    parser.add_argument("--site", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="test-profile models, 200 frames")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from fleetloop_sim import sim
    from fleetloop_core.cascade import Cascade, CascadeConfig
    from fleetloop_sim.dataset import LABELS, NONE_INDEX
    from fleetloop_core.inference import TierModel
    from fleetloop_models.modelbuild import build_reference_models

    profile = "test" if args.quick else args.profile
    frames = 200 if args.quick else args.frames
    models = Path(args.models if not args.quick else ".cache/models-test")
    build_reference_models(models, profile_name=profile)
    cascade = Cascade(TierModel.load(models / "T4"), TierModel.load(models / "T3"), CascadeConfig())
    site = sim.make_site(args.site, seed=args.seed)
    stream = sim.CameraStream(site, f"robot-{args.site}", seed=args.seed)
    rows = []
    for frame in tqdm(stream.frames(frames), total=frames, desc=f"{site.name} stream", unit="frame"):
        result = cascade.infer(frame.image, stream="camera")
        value = max(result.scores["margin"], result.scores["disagreement"], result.scores["novelty"])
        rows.append((value, frame, result))
    correct = np.mean([r.label == f.truth.label for _, f, r in rows])
    items = [(f, r) for _, f, r in rows if f.truth.label != NONE_INDEX]
    console = Console()
    console.print(
        f"[bold]{site.name}[/]: {frames} frames, edge accuracy {correct:.3f} "
        f"(items {np.mean([r.label == f.truth.label for f, r in items]):.3f}), "
        f"escalated {np.mean([r.escalated for _, _, r in rows]):.3f}"
    )
    table = Table(title="most label-worthy frames (max of margin, disagreement, novelty)")
    for column in ("seq", "truth", "predicted", "tier", "margin", "disagree", "novelty"):
        table.add_column(column)
    for _, frame, result in sorted(rows, key=lambda row: -row[0])[:12]:
        table.add_row(
            str(frame.truth.seq),
            LABELS[frame.truth.label],
            result.label_name,
            result.tier_used,
            f"{result.scores['margin']:.2f}",
            f"{result.scores['disagreement']:.2f}",
            f"{result.scores['novelty']:.2f}",
        )
    console.print(table)
    return 0
