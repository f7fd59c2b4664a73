"""Step 6, register: signed packages to the registry, Approved where the gate promoted them, else Rejected."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Return the registry entries the round's evaluated candidates became."""
    status, info = loop.pool.step(round_number, "evaluate")
    if status != "done":
        return {"_status": "skipped", "reason": f"evaluate {status}: {info.get('reason', info.get('error', ''))}"}
    entries = []
    for variant, result in sorted(info["tiers"].items()):
        decision = result["decision"]
        entry = loop.registry.publish(
            Path(result["candidate_dir"]),
            "PendingManualApproval",
            metrics={
                "before": result["before"]["overall"],
                "after": result["after"]["overall"],
                "test_set": info["test_set"],
            },
        )
        approve = decision["promote"] and result["gated"]
        reason = (
            "; ".join(decision["reasons"])
            if result["gated"]
            else f"not the gated variant (evaluation.edge_precision={loop.config.evaluation.edge_precision})"
        )
        entry = loop.registry.set_status(entry.name, entry.version, "Approved" if approve else "Rejected", reason)
        entries.append(
            {
                "variant": variant,
                "name": entry.name,
                "version": entry.version,
                "status": entry.status,
                "key_id": entry.key_id,
                "location": entry.location,
                "arn": entry.arn,
            }
        )
    return {"entries": entries}
