"""``fleetloop demo --seeds 0,1,2``: the demo once per world seed, each headline figure as mean and range.

One seed is one draw of the world (sites, streams, items, annotator errors): a figure that moves
between seeds more than the gap to its target is no result yet. Each seed's run keeps its own
report under ``OUT/seed-N/``; ``OUT/seeds.json`` and ``OUT/seeds.md`` hold the figures side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

from fleetloop_cloud.demo.report import AUDIT_MAX_UPPER, AUDIT_MIN_LABELS, TARGETS, wilson


def _truth(figures: dict | None, source: str) -> float | None:
    return (((figures or {}).get("true_accuracy") or {}).get(source) or {}).get("accuracy")


# figure -> how to read it from one run's report.json
FIGURES: dict[str, Callable[[dict], Any]] = {
    "throughput_ratio": lambda r: r.get("throughput_ratio"),
    "cost_ratio": lambda r: r.get("cost_ratio"),
    "ground_truth_cost_ratio": lambda r: r["labeling"]["stream_world"].get("ground_truth_cost_ratio"),
    "throughput_ceiling": lambda r: r["labeling"]["stream_world"].get("throughput_ceiling"),
    "auto_accepted": lambda r: r["labeling"]["stream_world"].get("auto_accepted"),
    "propagated": lambda r: r["labeling"]["stream_world"].get("propagated"),
    "hard_mode_throughput_ratio": lambda r: (r["labeling"].get("hard_mode") or {}).get("throughput_ratio"),
    # evaluation only (simulated truth): what the audits' few dozen labels a run can miss
    "auto_true_accuracy": lambda r: _truth(r["labeling"]["stream_world"], "auto"),
    "propagated_true_accuracy": lambda r: _truth(r["labeling"]["stream_world"], "propagated"),
    "hard_mode_auto_true_accuracy": lambda r: _truth(r["labeling"].get("hard_mode"), "auto"),
    "auto_label_error": lambda r: r.get("auto_label_error"),
    "audited_labels": lambda r: r["labeling"]["audit"].get("frames"),
    "upload_fraction": lambda r: r.get("upload_fraction"),
    "upload_gain_share": lambda r: r.get("upload_gain_share"),
    "al_label_ratio": lambda r: r.get("al_label_ratio"),
    "accuracy_per_human_hour_ratio": lambda r: (r.get("accuracy_per_human_hour") or {}).get("ratio"),
    "final_edge_accuracy": lambda r: r.get("final_edge_accuracy"),
    "frames_dropped": lambda r: r.get("frames_dropped"),
    "campaign_share_ratio": lambda r: r.get("campaign_share_ratio"),
    # the campaign arm's share against the loop arm's in the same round: measured also where the class had
    # a share of 0 before the campaign (the ratio above is n/a there)
    "campaign_share_vs_loop": lambda r: (r.get("campaign") or {}).get("share_vs_loop"),
    # what the uploads turned out to be, round after / before: the labeled ones' accepted class, and their
    # true class (evaluation only); a robot's model that seldom names the class moves its own share little
    "campaign_labeled_share_ratio": lambda r: (r.get("campaign") or {}).get("labeled_share_ratio"),
    "campaign_true_share_ratio": lambda r: (r.get("campaign") or {}).get("true_share_ratio"),
    "campaign_labeled_share_vs_loop": lambda r: (r.get("campaign") or {}).get("labeled_share_vs_loop"),
}


def _row(arm: str, key: str) -> Callable[[dict], Any]:
    """Return the reader of ``key`` in one arm's row of a detection report's headline (None: not there)."""

    def read(report: dict) -> Any:
        row = next((r for r in report.get("headline", []) if r.get("arm") == arm), {})
        return row.get(key)

    return read


# the detection demo's figures (``fleetloop demo --task detection``): its report's headline rows per arm
DETECTION_FIGURES: dict[str, Callable[[dict], Any]] = {
    "throughput_ratio": _row("loop", "throughput_ratio"),
    "cost_ratio": _row("loop", "cost_ratio"),
    "ground_truth_cost_ratio": _row("loop", "ground_truth_cost_ratio"),
    "random_throughput_ratio": _row("random", "throughput_ratio"),
    "accepted": _row("loop", "accepted"),
    "auto_accepted": _row("loop", "auto"),
    "uploaded": _row("loop", "uploaded"),
    "t4_map50_start": _row("loop", "t4_map50_start"),
    "t4_map50_end": _row("loop", "t4_map50_end"),
    "t4_map_end": _row("loop", "t4_map_end"),
    "random_t4_map50_end": _row("random", "t4_map50_end"),
    "upload_all_t4_map50_end": _row("upload-all", "t4_map50_end"),
    "minutes": lambda r: None if r.get("seconds") is None else r["seconds"] / 60.0,
}


def parse_seeds(text: str) -> list[int]:
    """Return the seeds of ``0,1,2``; ValueError naming what is not a seed."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            raise ValueError(f"--seeds: {part!r} is not an integer seed (expected e.g. 0,1,2)")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} names a seed twice")
    return seeds


def aggregate(reports: dict[int, dict], figures: dict[str, Callable[[dict], Any]] | None = None) -> dict[str, dict]:
    """Return per figure (``figures``, default the classification demo's) its value per seed and the mean, min
    and max over the seeds that measured it."""
    out: dict[str, dict] = {}
    for name, read in (FIGURES if figures is None else figures).items():
        values = {seed: read(report) for seed, report in reports.items()}
        measured = [float(v) for v in values.values() if v is not None]
        out[name] = {
            "values": values,
            "mean": fmean(measured) if measured else None,
            "min": min(measured) if measured else None,
            "max": max(measured) if measured else None,
            "seeds_measured": len(measured),
        }
    return out


def pooled_audit(reports: dict[int, dict]) -> dict[str, Any]:
    """Return the stream world's audits of every seed as one sample: counts, error, 95 % interval, met.

    Each seed audits a random sample of its own auto-labels (about 90 in the default demo), too few
    for the issue's ">= 200 audited labels"; the seeds are independent draws of the world, so their
    audits pool into one binomial sample of the product's auto-label error on this world.
    """
    frames = correct = 0
    for report in reports.values():
        audit = (report.get("labeling") or {}).get("audit") or {}
        frames += int(audit.get("frames") or 0)
        correct += int(audit.get("correct") or 0)
    if not frames:
        return {"frames": 0, "correct": 0, "error": None, "error_interval_95": None, "met": None}
    low, high = wilson(correct, frames)
    error, upper = 1 - correct / frames, 1 - low
    return {
        "frames": frames,
        "correct": correct,
        "error": round(error, 4),
        "error_interval_95": [round(1 - high, 4), round(upper, 4)],
        "met": frames >= AUDIT_MIN_LABELS and error <= TARGETS["auto_label_error"][1] and upper <= AUDIT_MAX_UPPER,
    }


def write(out: Path, figures: dict[str, dict], audit: dict[str, Any] | None = None) -> str:
    """Write ``seeds.json`` and ``seeds.md`` under ``out``; return the Markdown table (and the pooled audit)."""

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    seeds = sorted({seed for f in figures.values() for seed in f["values"]})
    lines = [
        "| figure | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in seeds) + " |",
    ]
    for name, f in figures.items():
        per_seed = " | ".join(fmt(f["values"].get(s)) for s in seeds)
        lines.append(f"| {name} | {fmt(f['mean'])} | {fmt(f['min'])} | {fmt(f['max'])} | {per_seed} |")
    table = "\n".join(lines) + "\n"
    if audit is not None and audit["frames"]:
        low, high = (100 * x for x in audit["error_interval_95"])
        verdict = "met" if audit["met"] else "MISSED"
        table += (
            f"\nAudited auto-label error, every seed's audit pooled: {audit['frames'] - audit['correct']} wrong "
            f"of {audit['frames']} audited ({audit['error'] * 100:.2f} %, 95 % interval {low:.2f}-{high:.2f} %; "
            f"target <= {TARGETS['auto_label_error'][1] * 100:.0f} % on >= {AUDIT_MIN_LABELS} audited, "
            f"upper end <= {AUDIT_MAX_UPPER * 100:.0f} %: {verdict}).\n"
        )
    (out / "seeds.json").write_text(json.dumps({**figures, "audit_pooled": audit}, indent=2, default=str))
    (out / "seeds.md").write_text(f"# Demo figures over seeds {', '.join(map(str, seeds))}\n\n{table}")
    return table
