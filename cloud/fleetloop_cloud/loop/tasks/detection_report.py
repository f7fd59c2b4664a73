"""A detection round's figures: box-level labeling costs, mAP per tier, the summary sections and table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from fleetloop_cloud.config import BoxCosts
from fleetloop_cloud.loop.summary import RoundFacts, label_sources

if TYPE_CHECKING:
    from fleetloop_cloud.box_consensus import BoxTargets
    from fleetloop_cloud.loop.core import RoundSummary

EDITS = ("kept", "adjusted", "deleted", "drawn", "reclassed")


@dataclass(frozen=True)
class BoxLabelingFigures:
    """Labeling figures with box-level costs (loop vs manual, the same cost model for both)."""

    accepted_frames: int
    accepted_boxes: int
    human_seconds: float
    human_dollars: float
    labeling_compute_dollars: float
    manual_seconds: float  # boxing every accepted frame from scratch
    manual_dollars: float
    loop_frames_per_human_hour: float | None
    manual_frames_per_human_hour: float | None
    throughput_ratio: float | None
    loop_cost_per_frame: float | None
    manual_cost_per_frame: float | None
    cost_ratio: float | None
    # Ground Truth's pricing: the service fee on every labeled frame (auto-labeled too), the worker's
    # bounding-box task price on each frame sent to a person
    ground_truth_manual_cost_per_frame: float
    ground_truth_loop_cost_per_frame: float | None
    ground_truth_cost_ratio: float | None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def box_labeling_figures(
    costs: BoxCosts,
    box_counts: Sequence[int],
    human_seconds: float,
    human_dollars: float,
    compute_dollars_: float,
    human_tasks: int = 0,
) -> BoxLabelingFigures:
    """Return the round's figures: ``box_counts`` are the boxes of each accepted frame, ``human_tasks`` the
    frames people boxed or checked (audits included)."""
    frames = len(box_counts)
    manual = [costs.manual_seconds(n) for n in box_counts]
    manual_seconds = float(sum(manual))
    manual_dollars = float(sum(costs.task_price(s) for s in manual))
    loop_rate = frames / (human_seconds / 3600.0) if human_seconds > 0 else None
    manual_rate = frames / (manual_seconds / 3600.0) if manual_seconds > 0 else None
    loop_cost = (human_dollars + compute_dollars_) / frames if frames else None
    manual_cost = manual_dollars / frames if frames else None
    fee, worker = costs.service_fee_per_object_usd, costs.worker_price_per_task_usd
    gt_loop = (fee * frames + worker * human_tasks + compute_dollars_) / frames if frames else None
    return BoxLabelingFigures(
        accepted_frames=frames,
        accepted_boxes=int(sum(box_counts)),
        human_seconds=human_seconds,
        human_dollars=human_dollars,
        labeling_compute_dollars=compute_dollars_,
        manual_seconds=manual_seconds,
        manual_dollars=manual_dollars,
        loop_frames_per_human_hour=loop_rate,
        manual_frames_per_human_hour=manual_rate,
        throughput_ratio=loop_rate / manual_rate if loop_rate and manual_rate else None,
        loop_cost_per_frame=loop_cost,
        manual_cost_per_frame=manual_cost,
        cost_ratio=manual_cost / loop_cost if loop_cost and manual_cost is not None else None,
        ground_truth_manual_cost_per_frame=costs.ground_truth_task_price,
        ground_truth_loop_cost_per_frame=gt_loop,
        ground_truth_cost_ratio=costs.ground_truth_task_price / gt_loop if gt_loop else None,
    )


class DetectionSummary:
    """The summary sections of a detection round (box labels, consensus routing, box-level costs, mAP)."""

    box_costs: BoxCosts
    targets: "BoxTargets"

    def purpose_counts(self, task: Any) -> dict[str, int]:
        return {"boxes": len(task.answer) if task.answer is not None else 0}

    def summary_head(self) -> dict:
        return {"task": "detection"}

    def labels_section(self, facts: RoundFacts, review: dict) -> dict:
        sources = label_sources(facts, ("human", "auto"))
        return {
            "accepted": len(facts.labels),
            "auto_accepted": sources["auto"],
            "human": sources["human"],
            "boxes": int(sum(len(label.boxes) for label in facts.labels.values())),
            "sent_to_humans": len({t.frame_id for t in facts.tasks}),
        }

    def routing_section(self, review: dict) -> dict:
        return {
            **self._targets(),
            "threshold": review.get("threshold"),
            "validation_frames": review.get("validation_frames"),
            "validation_quality": review.get("validation_quality"),
            "tier_agreement": review.get("tier_agreement"),
            "one_tier_boxes": review.get("one_tier_boxes"),
        }

    def _targets(self) -> dict:
        return {"target_mean_iou": self.targets.mean_iou, "target_class_accuracy": self.targets.class_accuracy}

    def audit_targets(self) -> dict:
        return self._targets()

    def human_costs(self, facts: RoundFacts) -> dict:
        edits = {key: 0 for key in EDITS}
        for task in facts.tasks:
            for key in edits:
                edits[key] += int((task.edits or {}).get(key, 0))
        return {"box_edits": edits, "costs": self.box_costs.model_dump(exclude={"source"})}

    def figures(self, facts: RoundFacts, human_seconds: float, human_dollars: float, compute: float) -> dict:
        counts = [len(label.boxes) for label in facts.labels.values()]
        return box_labeling_figures(
            self.box_costs, counts, human_seconds, human_dollars, compute, human_tasks=len(facts.tasks)
        ).to_dict()

    def models_section(self, info: dict[str, dict]) -> dict:
        out = {}
        for tier, result in info["evaluate"].get("tiers", {}).items():
            out[tier] = {
                "production": result["production_version"],
                "candidate": result["candidate_version"],
                "map50_before": result["before"]["map50"],
                "map50_after": result["after"]["map50"],
                "map_before": result["before"]["map"],
                "map_after": result["after"]["map"],
                "per_site_after": result["after"]["per_site"],
                "per_class_after": result["after"]["per_class"],
                "promoted": bool(result["decision"]["promote"]),
                "gated": True,
                "reasons": result["decision"]["reasons"],
            }
        return out

    def summary_table(self, summary: "RoundSummary | dict"):
        return detection_summary_table(summary)


def detection_summary_table(summary: "RoundSummary | dict"):
    """Return a rich Table of a detection round's summary (box labels, audit, box-level costs, mAP)."""
    from rich.table import Table

    data = summary if isinstance(summary, dict) else summary.to_dict()
    table = Table(title=f"FleetLoop detection round {data['round']} ({data['status']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    frames, labels, audit, figures = data["frames"], data["labels"], data["audit"], data["figures"]
    threshold = (data["routing"]["threshold"] or {}).get("value")
    final = audit.get("final")
    edits = data["human"]["box_edits"]
    rows = [
        ("frames ingested", frames["ingested"]),
        ("box labels accepted (auto / human)", f"{labels['accepted']} ({labels['auto_accepted']} / {labels['human']})"),
        ("boxes in accepted labels", labels["boxes"]),
        ("frames sent to humans", labels["sent_to_humans"]),
        ("pending review (over budget)", frames["pending_review"]),
        (
            "routing threshold (consensus confidence)",
            "none: nothing automated" if threshold is None else f"{threshold:.4f}",
        ),
        (
            "audit: mean IoU / class accuracy",
            "no auto boxes to audit"
            if not final
            else f"{final['mean_iou']:.3f} / {final['class_accuracy']:.3f} on {final['frames']} frames "
            f"({'met' if audit['meets_target'] else 'NOT met'})",
        ),
        (
            "box edits (kept / adjusted / drawn / deleted / reclassed)",
            " / ".join(str(edits[k]) for k in ("kept", "adjusted", "drawn", "deleted", "reclassed")),
        ),
        (
            "human seconds / dollars (manual baseline)",
            f"{data['human']['seconds']:.1f} s / ${data['human']['dollars']:.3f} "
            f"({figures['manual_seconds']:.1f} s / ${figures['manual_dollars']:.3f})",
        ),
    ]
    for key, name in (("throughput_ratio", "throughput ratio"), ("cost_ratio", "cost ratio")):
        rows.append((name, "n/a" if figures[key] is None else f"{figures[key]:.2f}x"))
    for tier, model in data["models"].items():
        rows.append(
            (
                f"{tier} mAP@0.5 (0.5:0.95) before -> after",
                f"{model['map50_before']:.3f} ({model['map_before']:.3f}) -> {model['map50_after']:.3f} "
                f"({model['map_after']:.3f}) {'promoted' if model['promoted'] else 'kept production'}",
            )
        )
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def map_per_round(summaries: Sequence[dict]) -> list[dict]:
    """Return per round and tier the production and candidate mAP@0.5 / mAP@0.5:0.95 (what the demo plots)."""
    keys = ("map50_before", "map50_after", "map_before", "map_after", "promoted")
    return [
        {"round": summary["round"], "tier": tier, **{k: model[k] for k in keys}}
        for summary in summaries
        for tier, model in summary.get("models", {}).items()
    ]
