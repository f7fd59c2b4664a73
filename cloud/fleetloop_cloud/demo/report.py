"""The demo's report: every figure in report.json, the same in report.md and report.html, with plots.

Figures are computed here from what the components measured in this run (cloud round summaries,
robot round reports, the baselines' accuracies, the active-learning curves); nothing is typed in.
Definitions: DEMO_WORLD.md ("Labeling figures: define them once").
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

TARGETS = {
    "throughput_ratio": (">=", 25.0, "labels per human-hour, loop / manual (seed fleet: 20x)"),
    "cost_ratio": (">=", 30.0, "cost per accepted label, manual / loop (seed fleet: 22.5x)"),
    "auto_label_error": ("<=", 0.02, "audited auto-label error"),
    "upload_fraction": ("<=", 0.05, "fraction of camera frames uploaded"),
    "upload_gain_share": (">=", 0.90, "share of the upload-all accuracy gain the loop recovers"),
    "al_label_ratio": ("<=", 1 / 3, "human labels to 95 % of upload-all accuracy, active learning / random"),
    "frames_dropped": ("<=", 0, "frames dropped by the robots (swaps included)"),
}


def _cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo ("" where there is none: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion (95 % by default)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _sum(rounds: Sequence[dict], *path: str) -> float:
    total = 0.0
    for data in rounds:
        value: Any = data
        for key in path:
            value = (value or {}).get(key) if isinstance(value, dict) else None
        total += float(value or 0.0)
    return total


def _labeling(rounds: Sequence[dict], cost_model_path: Path) -> dict:
    """Return the labeling figures of several cloud rounds together (the same formula as one round)."""
    from fleetloop_cloud.config import load_cost_model
    from fleetloop_cloud.costs import labeling_figures

    cost_model = load_cost_model(cost_model_path)
    accepted = int(_sum(rounds, "labels", "accepted"))
    human_seconds = _sum(rounds, "human", "seconds")
    human_dollars = _sum(rounds, "human", "dollars")
    labeling_compute = _sum(rounds, "compute", "labeling_dollars")
    training_compute = sum(
        float(r.get("compute", {}).get("by_step", {}).get(step, {}).get("dollars", 0.0))
        for r in rounds
        for step in ("train", "evaluate", "register")
    )
    figures = labeling_figures(cost_model, accepted, human_seconds, human_dollars, labeling_compute).to_dict()
    figures.update(
        auto_accepted=int(_sum(rounds, "labels", "auto_accepted")),
        propagated=int(_sum(rounds, "labels", "propagated")),
        human_labels=int(_sum(rounds, "labels", "human")),
        sent_to_humans=int(_sum(rounds, "labels", "sent_to_humans")),
        training_compute_dollars=round(training_compute, 6),
        cost_ratio_with_training=(
            cost_model.human.price_per_label / ((human_dollars + labeling_compute + training_compute) / accepted)
            if accepted and (human_dollars + labeling_compute + training_compute)
            else None
        ),
        human_hours=round(human_seconds / 3600.0, 4),
        manual_human_hours=round(accepted * cost_model.human.seconds_per_label / 3600.0, 4),
        manual_dollars=round(accepted * cost_model.human.price_per_label, 4),
        seconds_per_label=cost_model.human.seconds_per_label,
        seconds_per_verify=cost_model.human.seconds_per_verify,
    )
    return figures


def _audits(rounds: Sequence[dict]) -> dict:
    frames = correct = 0
    per_round = []
    for data in rounds:
        final = (data.get("audit") or {}).get("final") or {}
        n = int(final.get("frames") or 0)
        accuracy = float(final.get("accuracy") or 0.0)
        ok = int(round(accuracy * n))
        frames += n
        correct += ok
        per_round.append({"round": data.get("round"), "frames": n, "accuracy": accuracy if n else None})
    low, high = wilson(correct, frames)
    error = (1 - correct / frames) if frames else None
    return {
        "frames": frames,
        "correct": correct,
        "error": error,
        "error_interval_95": [round(1 - high, 4), round(1 - low, 4)] if frames else None,
        "per_round": per_round,
    }


def _met(name: str, value) -> bool | None:
    if value is None:
        return None
    op, target, _ = TARGETS[name]
    return value >= target if op == ">=" else value <= target


def build_report(
    config,
    quick: bool,
    models: Path,
    arms: dict,
    upload_all_accuracy: list[float],
    robot_rounds: list[list[dict]],
    al,
    hard: dict | None,
    serving: dict,
    timings: dict,
    minutes: float,
    test_frames: int,
) -> dict:
    """Return the report as one JSON-able dict (top-level keys as the issue names them)."""
    from fleetloop_core.config import default_config_path

    cost_model_path = default_config_path("cost_model.yaml")
    loop = arms["loop"]
    labeling = _labeling(loop.rounds, cost_model_path)
    audits = _audits(loop.rounds)
    frames_seen = sum(r["frames"] for rr in robot_rounds for r in rr)
    uploaded = sum(r["uploaded"] for rr in robot_rounds for r in rr)
    dropped = sum(r["dropped"] for rr in robot_rounds for r in rr)
    round0 = loop.edge_accuracy[0]
    final = loop.edge_accuracy[-1]
    all_final = upload_all_accuracy[-1] if len(upload_all_accuracy) > 1 else None
    gain_share = (
        (final - round0) / (all_final - round0) if all_final is not None and all_final - round0 > 1e-9 else None
    )
    per_robot = {}
    for number, rr in enumerate(robot_rounds, start=1):
        for r in rr:
            entry = per_robot.setdefault(r["robot_id"], {"rounds": [], "bytes": 0, "frames": 0, "uploaded": 0})
            camera_hours = r["frames"] / config.camera_rate_hz / 3600.0
            entry["rounds"].append(
                {
                    "round": number,
                    "uploaded": r["uploaded"],
                    "bytes": r["uploaded_bytes"],
                    "bytes_per_hour": round(r["uploaded_bytes"] / camera_hours, 1) if camera_hours else None,
                    "kept": r["kept"],
                    "dropped": r["dropped"],
                }
            )
            entry["bytes"] += r["uploaded_bytes"]
            entry["frames"] += r["frames"]
            entry["uploaded"] += r["uploaded"]
    for entry in per_robot.values():
        hours = entry["frames"] / config.camera_rate_hz / 3600.0
        entry["bytes_per_camera_hour"] = round(entry["bytes"] / hours, 1) if hours else None
    hard_figures = None
    if hard:
        hard_figures = {
            **hard.get("figures", {}),
            "labels": hard.get("labels"),
            "frames": hard.get("frames"),
            "audit": (hard.get("audit") or {}).get("final"),
        }
    report: dict[str, Any] = {
        "throughput_ratio": labeling.get("throughput_ratio"),
        "cost_ratio": labeling.get("cost_ratio"),
        "auto_label_error": audits["error"],
        "upload_fraction": uploaded / frames_seen if frames_seen else None,
        "upload_gain_share": gain_share,
        "al_label_ratio": al.ratio if al is not None else None,
        "frames_dropped": dropped,
        "round0_edge_accuracy": round0,
        "final_edge_accuracy": final,
        "minutes": round(minutes, 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": _cpu_model() or platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "node": platform.node(),
        },
        "settings": {
            "quick": quick,
            "robots": config.robots,
            "rounds": config.rounds,
            "frames_per_robot_per_round": config.frames_per_robot,
            "upload_budget_fraction": config.upload_fraction,
            "seed": config.seed,
            "ros": config.ros,
            "control_plane": config.control_plane,
            "models": str(models),
            "camera_rate_hz": config.camera_rate_hz,
            "field_test_frames": test_frames,
        },
        "labeling": {"stream_world": labeling, "audit": audits, "hard_mode": hard_figures},
        "edge_accuracy": {
            "loop": loop.edge_accuracy,
            "random_upload": arms["random"].edge_accuracy if "random" in arms else None,
            "upload_all": upload_all_accuracy,
        },
        "uploads": {
            "camera_frames": frames_seen,
            "uploaded": uploaded,
            "random_upload_uploaded": None,
            "per_robot": per_robot,
        },
        "active_learning": al.to_dict() if al is not None else None,
        "swaps": {name: arm.deploys for name, arm in arms.items()},
        "serving_at_end": serving,
        "rounds": {name: arm.rounds for name, arm in arms.items()},
        "robot_rounds": robot_rounds,
        "timings_seconds": timings,
        "simulated": [
            "the fleet: robots, sites and camera streams (fleetloop_sim.sim, Fashion-MNIST items)",
            "the field shift: lighting, colour cast, noise, blur, rotation, occlusion, backgrounds, "
            "class priors per site",
            "the human annotators: ground truth with the configured error rate, times and prices from "
            "config/cost_model.yaml (sources cited there)",
            "compute prices: measured CPU seconds x the cited instance price",
        ],
    }
    report["targets"] = [
        {
            "figure": name,
            "target": f"{op} {target:.4g}",
            "value": report.get(name),
            "met": _met(name, report.get(name)),
            "what": what,
        }
        for name, (op, target, what) in TARGETS.items()
    ]
    return report


# ====================================================================================== output
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _plots(report: dict, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    made = []
    acc = report["edge_accuracy"]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for name, values, style in (
        ("loop (selection)", acc["loop"], "o-"),
        ("random upload", acc["random_upload"], "s--"),
        ("upload all (upper bound)", acc["upload_all"], "^:"),
    ):
        if values:
            ax.plot(range(len(values)), values, style, label=name)
    ax.set_xticks(range(max(len(v) for v in acc.values() if v)))
    ax.set_xlabel("round (0 = lab-trained reference)")
    ax.set_ylabel("T4 accuracy on held-out field frames")
    ax.set_title("Edge model (T4) accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "edge_accuracy.png", dpi=110)
    made.append(("edge_accuracy.png", "Edge (T4) field accuracy per round: loop, random upload, upload all"))

    rounds = report["rounds"]["loop"]
    if rounds:
        fig = Figure(figsize=(9.6, 3.8))
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        numbers = [r["round"] for r in rounds]
        auto = [r["labels"]["auto_accepted"] for r in rounds]
        propagated = [r["labels"]["propagated"] for r in rounds]
        human = [r["labels"]["human"] for r in rounds]
        ax1.bar(numbers, auto, label="auto-accepted")
        ax1.bar(numbers, propagated, bottom=auto, label="propagated along a track")
        ax1.bar(numbers, human, bottom=[a + p for a, p in zip(auto, propagated)], label="human")
        ax1.set_xlabel("round")
        ax1.set_ylabel("accepted labels")
        ax1.set_title("Where the labels came from")
        ax1.legend(fontsize=8)
        loop_rate = [r["figures"].get("loop_labels_per_human_hour") or 0.0 for r in rounds]
        manual = rounds[0]["figures"].get("manual_labels_per_human_hour") or 0.0
        ax2.bar(numbers, loop_rate, label="loop")
        ax2.axhline(manual, color="black", linestyle="--", label="manual")
        ax2.set_xlabel("round")
        ax2.set_ylabel("accepted labels per human-hour")
        ax2.set_title("Labeling throughput")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "labeling.png", dpi=110)
        made.append(("labeling.png", "Label sources per round, and labels per human-hour vs manual"))

    al = report.get("active_learning")
    if al:
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for name, curve in al["curves"].items():
            ax.plot(curve["budgets"], curve["accuracy"], "o-", label=name)
        ax.axhline(
            al["target_accuracy"], color="black", linestyle="--", label=f"{al['target_share']:.0%} of upload-all"
        )
        ax.set_xscale("log")
        ax.set_xlabel("human labels")
        ax.set_ylabel("probe accuracy on held-out field frames")
        ax.set_title("Active learning vs random labeling")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "active_learning.png", dpi=110)
        made.append(("active_learning.png", "Human labels needed: active learning vs random"))

    per_robot = report["uploads"]["per_robot"]
    if per_robot:
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.add_subplot()
        width = 0.8 / max(len(per_robot), 1)
        for i, (robot, entry) in enumerate(sorted(per_robot.items())):
            xs = [r["round"] + (i - len(per_robot) / 2) * width for r in entry["rounds"]]
            ax.bar(xs, [r["bytes"] / 1e3 for r in entry["rounds"]], width=width, label=robot)
        ax.set_xlabel("round")
        ax.set_ylabel("uploaded kB")
        ax.set_title("Per-robot upload volume")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bandwidth.png", dpi=110)
        made.append(("bandwidth.png", "Per-robot uploads per round"))
    return made


def _headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for target in report["targets"]:
        value = target["value"]
        shown = _fmt(value, 4 if target["figure"] in ("auto_label_error", "upload_fraction") else 2)
        met = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        rows.append((target["what"], shown, target["target"], met))
    rows.append(
        (
            "T4 field accuracy, round 0 -> final (loop)",
            f"{_fmt(report['round0_edge_accuracy'])} -> {_fmt(report['final_edge_accuracy'])}",
            "rises",
            "",
        )
    )
    rows.append(("minutes", _fmt(report["minutes"], 1), "<= 10 (quick <= 2)", ""))
    return rows


def _markdown(report: dict, plots: list[tuple[str, str]]) -> str:
    lab = report["labeling"]["stream_world"]
    audit = report["labeling"]["audit"]
    hard = report["labeling"]["hard_mode"]
    s = report["settings"]
    lines = [
        f"# FleetLoop closed-loop demo — {report['created']}",
        "",
        f"{s['robots']} robots x {s['rounds']} rounds x {s['frames_per_robot_per_round']} camera frames per robot "
        f"per round; upload budget {s['upload_budget_fraction']:.0%} of frames; seed {s['seed']}; robot stack "
        f"{'ROS 2 (rclpy processes)' if s['ros'] else 'in-process core objects'}; control plane "
        f"{s['control_plane']}; machine {report['machine']['processor']} x {report['machine'].get('cpu_count')} "
        f"(Python {report['machine']['python']}); "
        f"{report['minutes']:.1f} minutes.",
        "",
        "## Headline",
        "",
        "| figure | value | target | |",
        "| --- | ---: | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _headline_rows(report)]
    missed = [t for t in report["targets"] if t["met"] is False]
    if missed:
        lines += [
            "",
            "**Targets missed:** "
            + "; ".join(f"{t['what']} ({_fmt(t['value'], 3)}, target {t['target']})" for t in missed)
            + ".",
        ]
    lines += [
        "",
        "## Labeling (stream world)",
        "",
        f"- accepted labels: {lab['accepted_labels']} (auto {lab['auto_accepted']}, propagated {lab['propagated']}, "
        f"human {lab['human_labels']}); frames sent to humans: {lab['sent_to_humans']}",
        f"- human time: {lab['human_hours']:.3f} h (manual would need {lab['manual_human_hours']:.3f} h); "
        f"labels per human-hour: loop {_fmt(lab['loop_labels_per_human_hour'], 1)} vs manual "
        f"{_fmt(lab['manual_labels_per_human_hour'], 1)}",
        f"- cost per accepted label: loop {_fmt(lab['loop_cost_per_label'], 4)} USD (human "
        f"{_fmt(lab['human_dollars'], 2)} + labeling compute {_fmt(lab['labeling_compute_dollars'], 4)}) vs manual "
        f"{_fmt(lab['manual_cost_per_label'], 4)} USD; training compute {_fmt(lab['training_compute_dollars'], 4)} USD "
        f"(cost ratio with it: {_fmt(lab['cost_ratio_with_training'], 2)})",
        f"- audited auto-label error: {_fmt(audit['error'], 4)} (95 % Wilson interval "
        f"{audit['error_interval_95']}) over {audit['frames']} audited labels",
        "",
    ]
    if hard:
        lines += [
            "## Hard mode (shuffled single frames, no tracks, no background)",
            "",
            f"- throughput ratio {_fmt(hard.get('throughput_ratio'), 2)}, cost ratio {_fmt(hard.get('cost_ratio'), 2)}"
            f", labels {hard.get('labels')}",
            "",
            "The stream-world figures above are not a claim about i.i.d. images: this row is.",
            "",
        ]
    acc = report["edge_accuracy"]
    lines += [
        "## Edge accuracy per round (T4 on held-out field frames)",
        "",
        "| round | loop | random upload | upload all |",
        "| --- | ---: | ---: | ---: |",
    ]
    for i in range(len(acc["loop"])):
        rnd = acc["random_upload"][i] if acc["random_upload"] and i < len(acc["random_upload"]) else None
        alls = acc["upload_all"][i] if i < len(acc["upload_all"]) else None
        lines.append(f"| {i} | {_fmt(acc['loop'][i])} | {_fmt(rnd)} | {_fmt(alls)} |")
    al = report.get("active_learning")
    if al:
        lines += [
            "",
            "## Active learning",
            "",
            f"Labels to reach {al['target_share']:.0%} of the upload-all probe accuracy ({al['target_accuracy']:.3f}): "
            f"{al['strategy']} {al['labels_needed'].get(al['strategy'])}, random {al['labels_needed'].get('random')} "
            f"(ratio {_fmt(al['ratio'])}).",
        ]
    lines += ["", "## Swaps", ""]
    for name, deploys in report["swaps"].items():
        for d in deploys:
            lines.append(
                f"- {name}, round {d['round']}: {d['tier']} {d['version']} "
                f"{'ABORTED' if d.get('aborted') else 'rolled out'} in {d.get('seconds', 'n/a')} s"
            )
    lines.append(f"- frames dropped by the loop's robots over the run (swaps included): {report['frames_dropped']}")
    lines += ["", "## Plots", ""] + [f"![{caption}]({name})" for name, caption in plots]
    lines += ["", "## What is simulated", ""] + [f"- {item}" for item in report["simulated"]]
    lines += ["", "Every figure was measured in this run; see report.json for all of them."]
    return "\n".join(lines) + "\n"


def _html(markdown_text: str, report: dict, plots: list[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td class=num>{html.escape(b)}</td><td>{html.escape(c)}</td>"
        f"<td class='{'bad' if d == 'MISSED' else 'ok'}'>{html.escape(d)}</td></tr>"
        for a, b, c, d in _headline_rows(report)
    )
    images = "".join(
        f"<figure><img src='{name}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
        f"</figcaption></figure>"
        for name, caption in plots
    )
    body = html.escape(markdown_text)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>FleetLoop demo report</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}} td.num{{text-align:right}}
td.bad{{color:#b00;font-weight:bold}} td.ok{{color:#070}} figure{{display:inline-block;margin:8px}}
img{{max-width:460px;border:1px solid #ddd}} pre{{white-space:pre-wrap;background:#f7f7f7;padding:1em}}
</style></head><body>
<h1>FleetLoop closed-loop demo</h1>
<p>{html.escape(report["created"])} &middot; {report["minutes"]:.1f} minutes &middot;
{report["settings"]["robots"]} robots, {report["settings"]["rounds"]} rounds</p>
<h2>Headline</h2><table><tr><th>figure</th><th>value</th><th>target</th><th></th></tr>{rows}</table>
<h2>Plots</h2>{images}
<h2>Full report</h2><pre>{body}</pre>
</body></html>
"""


def write_report(report: dict, out: Path) -> None:
    """Write report.json, report.md, report.html and the PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    plots = _plots(report, out)
    markdown_text = _markdown(report, plots)
    (out / "report.md").write_text(markdown_text)
    (out / "report.html").write_text(_html(markdown_text, report, plots))


def print_headline(report: dict, out: Path) -> None:
    """Print the headline table and where the report is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="FleetLoop demo: headline figures (measured in this run)")
    for column in ("figure", "value", "target", ""):
        table.add_column(column)
    for a, b, c, d in _headline_rows(report):
        table.add_row(a, b, c, f"[red]{d}[/]" if d == "MISSED" else d)
    console = Console()
    console.print(table)
    console.print(f"report: {out / 'report.html'}  (and report.md, report.json)")
