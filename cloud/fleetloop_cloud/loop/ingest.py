"""Step 1, ingest: new frames + sidecars from the store into the pool (quarantine with reasons)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetloop_cloud.ingest import ingest as ingest_frames

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Return the ingest report of the round."""
    report = ingest_frames(
        loop.store,
        loop.pool,
        loop.cache,
        round_number,
        loop.config.ingest,
        labels=loop.labels,
        progress=loop.progress,
    ).to_dict()
    report.pop("cpu_seconds")  # the loop measures the step's CPU time
    return report
