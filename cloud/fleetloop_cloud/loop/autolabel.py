"""Step 2, autolabel: the teacher tiers (T1, T2) predict every frame they have not seen yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop


def frames_to_label(loop: "CloudLoop", round_number: int) -> list[str]:
    """Return the round's frames, the frames not labeled yet and the calibration frames humans labeled."""
    ids = {r["id"] for r in loop.pool.frames(round=round_number)}
    ids |= {r["id"] for r in loop.pool.frames(state=("new", "auto_labeled", "in_review"))}
    ids |= {t.frame_id for t in loop.task.answers.tasks(purpose="calibration", status="done")}
    return sorted(ids)


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Return the teachers' report: frames, predictions made per tier, the teacher versions."""
    packages = {tier: loop.production(tier) for tier in loop.config.autolabel.tiers}
    report = loop.task.run_teachers(packages, frames_to_label(loop, round_number))
    loop.pool.set_state([r["id"] for r in loop.pool.frames(state="new")], "auto_labeled")
    report.pop("cpu_seconds", None)  # the loop measures the step's CPU time
    return report
