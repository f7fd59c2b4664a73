"""A round's summary from its step records and the task's facts: pure functions, no I/O.

The sections every task reports the same way (frames, human time and money by purpose, compute
by step, audit passes, registry, notes) are built here; the task part supplies the sections
that differ (labels, routing, audit targets, figures, models) from the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetloop_cloud.config import CostModel
from fleetloop_cloud.costs import compute_dollars

if TYPE_CHECKING:
    from fleetloop_cloud.loop.tasks import CloudTask

STEPS = ("ingest", "autolabel", "review", "train", "evaluate", "register")
LABELING_STEPS = ("ingest", "autolabel", "review")


@dataclass(frozen=True)
class RoundFacts:
    """What the pool holds about a round: its done human tasks, its accepted labels and who audited what.

    ``audited_source``: frame id -> the source (auto, propagated) its label had when an audit
    task took it (the auditor's answer is a human label now; it counts under the route that
    accepted it).
    """

    tasks: list[Any]
    labels: dict[str, Any]
    audited_source: dict[str, str] = field(default_factory=dict)


def frames_section(info: dict[str, dict]) -> dict:
    """Return the frames section: ingest counts and frames still pending review."""
    ingest = info["ingest"]
    return {
        "ingested": ingest.get("ingested", 0),
        "exact_duplicates": ingest.get("exact_duplicates", 0),
        "near_duplicates": ingest.get("near_duplicates", 0),
        "quarantined": len(ingest.get("quarantined", {})),
        "waiting_for_sidecar": len(ingest.get("waiting_for_sidecar", [])),
        "pending_review": info["review"].get("pending_review", 0),
    }


def compute_by_step(info: dict[str, dict], cost_model: CostModel) -> dict[str, dict]:
    """Return per step its CPU and GPU seconds and their dollars (a SageMaker job: its instance time)."""
    compute = {}
    for step in STEPS:
        record = info[step]
        cpu = float(record.get("cpu_seconds", 0.0)) + float(record.get("job_cpu_seconds", 0.0))
        gpu = float(record.get("gpu_seconds", 0.0))
        if step == "train" and record.get("instance_seconds"):
            dollars = float(record["instance_seconds"]) * cost_model.cpu_instance.usd_per_hour / 3600.0
        else:
            dollars = compute_dollars(cost_model, cpu, gpu)
        compute[step] = {"cpu_seconds": round(cpu, 3), "gpu_seconds": round(gpu, 3), "dollars": round(dollars, 6)}
    return compute


def by_purpose(tasks: list[Any], counts) -> dict[str, dict]:
    """Return per task purpose its tasks, the task's own counts (``counts(task)``), seconds and dollars."""
    out: dict[str, dict] = {}
    for task in tasks:
        extra = counts(task)
        entry = out.setdefault(task.purpose, {"tasks": 0, **{k: 0 for k in extra}, "seconds": 0.0, "dollars": 0.0})
        entry["tasks"] += 1
        for key, value in extra.items():
            entry[key] += value
        entry["seconds"] += task.seconds or 0.0
        entry["dollars"] += task.dollars or 0.0
    return out


def label_sources(facts: RoundFacts, sources: tuple[str, ...]) -> dict[str, int]:
    """Return how many of the round's labels each route accepted (audited labels under their first route)."""
    counts = {source: 0 for source in sources}
    for frame_id, label in facts.labels.items():
        counts[facts.audited_source.get(frame_id, label.source)] += 1
    return counts


def audit_passes(review: dict) -> tuple[list[dict], dict | None]:
    """Return the review's audit passes (without task ids, sources and confidences) and the last one that
    measured frames."""
    dropped = ("tasks", "sources", "confidences")
    passes = [{k: v for k, v in p.items() if k not in dropped} for p in review.get("audit_passes", [])]
    return passes, next((p for p in reversed(passes) if p.get("frames")), None)


def round_data(info: dict[str, dict], facts: RoundFacts, task: "CloudTask", cost_model: CostModel, truth: dict) -> dict:
    """Return every figure of a round (the summary's data; ``truth``: the simulation-only check)."""
    review = info["review"]
    purposes = by_purpose(facts.tasks, task.purpose_counts)
    human_seconds = sum(e["seconds"] for e in purposes.values())
    human_dollars = sum(e["dollars"] for e in purposes.values())
    compute = compute_by_step(info, cost_model)
    labeling_compute = sum(compute[s]["dollars"] for s in LABELING_STEPS)
    passes, final = audit_passes(review)
    return {
        **task.summary_head(),
        "frames": frames_section(info),
        "labels": task.labels_section(facts, review),
        "routing": task.routing_section(review),
        "audit": {
            **task.audit_targets(),
            "passes": passes,
            "final": final,
            "meets_target": bool(final and final.get("meets_target")),
        },
        "human": {
            "seconds": round(human_seconds, 3),
            "dollars": round(human_dollars, 6),
            "by_purpose": {
                k: {**v, "seconds": round(v["seconds"], 3), "dollars": round(v["dollars"], 6)}
                for k, v in sorted(purposes.items())
            },
            **task.human_costs(facts),
        },
        "compute": {
            "by_step": compute,
            "dollars": round(sum(c["dollars"] for c in compute.values()), 6),
            "labeling_dollars": round(labeling_compute, 6),
            "instance": cost_model.cpu_instance.name,
        },
        "figures": task.figures(facts, human_seconds, human_dollars, labeling_compute),
        "models": task.models_section(info),
        "registry": info["register"].get("entries", []),
        "notes": {s: i.get("reason") or i.get("error") for s, i in info.items() if i.get("reason") or i.get("error")},
        "simulation_only": truth,
    }
