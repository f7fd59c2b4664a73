"""A classification round's figures: the summary sections (labels per route, calibrated routing,
accuracy before/after per tier, INT8 vs FP32) and the table ``fleetloop-cloud round`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetloop_cloud.config import CloudConfig, CostModel
from fleetloop_cloud.costs import labeling_figures
from fleetloop_cloud.loop.summary import RoundFacts, label_sources

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import RoundSummary


class ClassificationSummary:
    """The summary sections of a classification round (the figures of DEMO_WORLD.md)."""

    config: CloudConfig
    cost_model: CostModel

    def purpose_counts(self, task: Any) -> dict[str, int]:
        verified = task.purpose == "audit" or (
            self.config.review.show_suggestions and task.suggestion is not None and task.answer == task.suggestion
        )
        return {"verified": int(verified), "from_scratch": int(not verified)}

    def summary_head(self) -> dict:
        return {}

    def labels_section(self, facts: RoundFacts, review: dict) -> dict:
        sources = label_sources(facts, ("human", "auto", "propagated"))
        return {
            "accepted": len(facts.labels),
            "auto_accepted": sources["auto"],
            "propagated": sources["propagated"],
            "human": sources["human"],
            "sent_to_humans": len({t.frame_id for t in facts.tasks}),
            "disputed_by_tracks": review.get("disputed", 0),
        }

    def routing_section(self, review: dict) -> dict:
        return {
            "target_accuracy": self.config.routing.target_accuracy,
            "temperature": review.get("temperature"),
            "threshold": review.get("threshold"),
            "validation_frames": review.get("validation_frames"),
        }

    def audit_targets(self) -> dict:
        return {"target": self.config.routing.target_accuracy}

    def human_costs(self, facts: RoundFacts) -> dict:
        human = self.cost_model.human
        return {
            "seconds_per_label": human.seconds_per_label,
            "seconds_per_verify": human.seconds_per_verify,
            "price_per_label": human.price_per_label,
            "price_per_verify": human.price_per_verify,
        }

    def figures(self, facts: RoundFacts, human_seconds: float, human_dollars: float, compute: float) -> dict:
        return labeling_figures(
            self.cost_model, len(facts.labels), human_seconds, human_dollars, compute, human_tasks=len(facts.tasks)
        ).to_dict()

    def models_section(self, info: dict[str, dict]) -> dict:
        out = {}
        for variant, result in info["evaluate"].get("tiers", {}).items():
            out[variant] = {
                "production": result["production_version"],
                "candidate": result["candidate_version"],
                "accuracy_before": result["before"]["overall"],
                "accuracy_after": result["after"]["overall"],
                "promoted": bool(result["decision"]["promote"] and result["gated"]),
                "gated": result["gated"],
                "reasons": result["decision"]["reasons"],
            }
        int8 = {k: v for k, v in info["train"].get("report", {}).get("tiers", {}).items() if k.endswith("-int8")}
        if int8:
            out["int8_vs_fp32"] = int8
        return out

    def summary_table(self, summary: "RoundSummary | dict"):
        return classification_summary_table(summary)


def _num(value, suffix: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _label_rows(data: dict) -> list[tuple[str, Any]]:
    frames, labels, audit = data["frames"], data["labels"], data["audit"]
    rows = [
        ("frames ingested", frames["ingested"]),
        ("duplicates (exact / near)", f"{frames['exact_duplicates']} / {frames['near_duplicates']}"),
        ("quarantined / waiting for sidecar", f"{frames['quarantined']} / {frames['waiting_for_sidecar']}"),
        ("labels accepted", labels["accepted"]),
        ("  auto-accepted", labels["auto_accepted"]),
        ("  propagated along tracks", labels["propagated"]),
        ("  human", labels["human"]),
        ("frames sent to humans", labels["sent_to_humans"]),
        ("pending review (over budget)", frames["pending_review"]),
        ("routing threshold (calibrated)", (data["routing"]["threshold"] or {}).get("value")),
    ]
    final = audit.get("final")
    if final:
        final = final.get("pooled") or final  # every pass's answers about the labels that stand
        low, high = final["ci"]
        rows.append(
            (
                "audited accuracy (auto + propagated)",
                f"{final['accuracy']:.4f} [{low:.3f}, {high:.3f}] on {final['frames']} "
                f"(target {audit['target']}, {'met' if audit['meets_target'] else 'NOT met'})",
            )
        )
    else:
        rows.append(("audited accuracy", "no auto labels to audit"))
    return rows


def _cost_rows(data: dict) -> list[tuple[str, Any]]:
    figures, human, compute = data["figures"], data["human"], data["compute"]
    rows = [
        (f"human {purpose}", f"{entry['tasks']} tasks, {entry['seconds']:.1f} s, ${entry['dollars']:.3f}")
        for purpose, entry in human["by_purpose"].items()
    ]
    rows += [("human seconds / dollars", f"{human['seconds']:.1f} s / ${human['dollars']:.3f}")]
    for step, entry in compute["by_step"].items():
        if entry["cpu_seconds"] or entry["gpu_seconds"]:
            rows.append((f"compute {step}", f"{entry['cpu_seconds']:.1f} CPU s, ${entry['dollars']:.5f}"))
    return rows + [
        ("compute dollars (labeling / total)", f"${compute['labeling_dollars']:.5f} / ${compute['dollars']:.5f}"),
        (
            "labels per human-hour (loop / manual)",
            f"{_num(figures['loop_labels_per_human_hour'])} / {_num(figures['manual_labels_per_human_hour'])}",
        ),
        ("throughput ratio", _num(figures["throughput_ratio"], "x")),
        (
            "cost per label (loop / manual)",
            f"${_num(figures['loop_cost_per_label'], digits=4)} / ${_num(figures['manual_cost_per_label'], digits=4)}",
        ),
        ("cost ratio", _num(figures["cost_ratio"], "x")),
    ]


def _model_rows(data: dict) -> list[tuple[str, Any]]:
    rows = []
    for variant, model in data["models"].items():
        if variant == "int8_vs_fp32":
            for tier, cmp in model.items():
                rows.append(
                    (
                        f"{tier} vs fp32",
                        f"{cmp['int8_ms']:.2f} ms vs {cmp['fp32_ms']:.2f} ms, agreement {cmp['agreement']:.3f}",
                    )
                )
            continue
        verdict = ("promoted" if model["promoted"] else "kept production") if model["gated"] else "reported, not gated"
        rows.append(
            (
                f"{variant} accuracy before -> after",
                f"{model['accuracy_before']:.4f} -> {model['accuracy_after']:.4f} ({verdict})",
            )
        )
    return rows


def classification_summary_table(summary: "RoundSummary | dict"):
    """Return a rich Table of a classification round's summary (the figures of DEMO_WORLD.md)."""
    from rich.table import Table

    data = summary if isinstance(summary, dict) else summary.to_dict()
    table = Table(title=f"FleetLoop cloud round {data['round']} ({data['status']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in _label_rows(data) + _cost_rows(data) + _model_rows(data):
        table.add_row(key, str(value))
    return table
