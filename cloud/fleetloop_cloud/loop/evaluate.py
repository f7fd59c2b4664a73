"""Step 5, evaluate: candidates vs production on the held-out test set, the gate's decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Return the test set and per candidate variant its scores before/after and the gate's decision."""
    candidates = loop.candidates(round_number)
    if not candidates:
        status, info = loop.pool.step(round_number, "train")
        return {
            "_status": "skipped",
            "reason": f"no candidates (train {status}: {info.get('reason') or info.get('error', '')})",
        }
    return loop.task.evaluate(candidates)
