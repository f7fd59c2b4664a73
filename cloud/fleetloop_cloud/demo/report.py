"""The demo's report figures: every figure of report.json, computed from what this run measured.

Figures are computed here from what the components measured in this run (cloud round summaries,
robot round reports, the baselines' accuracies, the active-learning curves); nothing is typed in.
Definitions: DEMO_WORLD.md ("Labeling figures: define them once"). The files (report.json, .md,
.html, plots) are written by :mod:`fleetloop_cloud.demo.report_files`.
"""

from __future__ import annotations

import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

# figure: (comparison, must, aim, what); met / MISSED is judged against the must (issue 15's table)
TARGETS = {
    "throughput_ratio": (">=", 20.0, 25.0, "labels per human-hour, loop / manual (seed fleet: 20x)"),
    "cost_ratio": (">=", 22.5, 30.0, "cost per accepted label, manual / loop (seed fleet: 22.5x)"),
    "hard_mode_throughput_ratio": (">=", 4.0, 6.0, "labels per human-hour on hard mode (shuffled single frames)"),
    "auto_label_error": (
        "<=",
        0.02,
        0.01,
        "audited auto-label error (>= 200 audited, 95 % interval's upper end <= 0.04)",
    ),
    "upload_fraction": ("<=", 0.05, 0.05, "fraction of camera frames uploaded"),
    "upload_gain_share": (">=", 0.90, 0.95, "share of the upload-all accuracy gain the loop recovers"),
    "al_label_ratio": ("<=", 0.5, 1 / 3, "human labels to 95 % of upload-all accuracy, active learning / random"),
    "frames_dropped": ("<=", 0, 0, "frames dropped by the robots (swaps included)"),
    "campaign_share_ratio": (
        ">=",
        3.0,
        3.0,
        "campaign arm: share of uploads of the campaign's class, round after / before",
    ),
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


QA_PURPOSES = ("calibration", "audit", "second-opinion")


def _true_accuracy(rounds: Sequence[dict]) -> dict:
    """Return per label source the accepted labels' accuracy against the simulated truth, pooled over rounds
    (evaluation only: the loop never reads it; what an audit of a few dozen labels can miss, this shows)."""
    frames: dict[str, int] = {}
    right: dict[str, float] = {}
    for data in rounds:
        for source, entry in (data.get("simulation_only") or {}).items():
            if isinstance(entry, dict) and entry.get("frames"):
                frames[source] = frames.get(source, 0) + int(entry["frames"])
                right[source] = right.get(source, 0.0) + float(entry["accuracy"]) * int(entry["frames"])
    return {s: {"frames": n, "accuracy": round(right[s] / n, 4)} for s, n in sorted(frames.items())}


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
    human_tasks = int(sum(e.get("tasks", 0) for r in rounds for e in r.get("human", {}).get("by_purpose", {}).values()))
    by_purpose: dict[str, float] = {}
    for r in rounds:
        for purpose, entry in r.get("human", {}).get("by_purpose", {}).items():
            by_purpose[purpose] = by_purpose.get(purpose, 0.0) + float(entry.get("seconds", 0.0))
    # quality control: the random samples and their second opinions, needed whatever routing accepts
    qa_seconds = sum(by_purpose.get(p, 0.0) for p in QA_PURPOSES)
    figures = labeling_figures(
        cost_model, accepted, human_seconds, human_dollars, labeling_compute, human_tasks=human_tasks
    ).to_dict()
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
        human_seconds_by_purpose={p: round(s, 1) for p, s in sorted(by_purpose.items())},
        qa_seconds=round(qa_seconds, 1),
        # the throughput ratio if every label beyond quality control cost no human time: the most this
        # volume of uploads allows with these calibration and audit samples
        throughput_ceiling=(accepted * cost_model.human.seconds_per_label / qa_seconds) if qa_seconds else None,
        true_accuracy=_true_accuracy(rounds),
    )
    return figures


def _accuracy_per_hour(loop, random_arm, labeling: dict, cost_model_path: Path) -> dict | None:
    """Return what the labels are worth: T4 field accuracy gained per human-hour, loop vs manual labeling.

    Manual: a person labels every frame the random-upload arm accepted from scratch (the same upload
    budget, frames drawn at random), at ``seconds_per_label``; the loop: its own human hours.
    """
    from fleetloop_cloud.config import load_cost_model

    if random_arm is None or not random_arm.rounds:
        return None
    seconds_per_label = load_cost_model(cost_model_path).human.seconds_per_label
    loop_gain = loop.edge_accuracy[-1] - loop.edge_accuracy[0]
    random_gain = random_arm.edge_accuracy[-1] - random_arm.edge_accuracy[0]
    random_labels = int(_sum(random_arm.rounds, "labels", "accepted"))
    manual_hours = random_labels * seconds_per_label / 3600.0
    loop_hours = float(labeling.get("human_hours") or 0.0)
    loop_rate = loop_gain / loop_hours if loop_hours else None
    manual_rate = random_gain / manual_hours if manual_hours else None
    return {
        "loop": {"accuracy_gain": round(loop_gain, 4), "human_hours": round(loop_hours, 4), "per_hour": loop_rate},
        "manual_random": {
            "accuracy_gain": round(random_gain, 4),
            "labels": random_labels,
            "human_hours": round(manual_hours, 4),
            "per_hour": manual_rate,
        },
        "ratio": loop_rate / manual_rate if loop_rate is not None and manual_rate else None,
    }


def _audits(rounds: Sequence[dict]) -> dict:
    frames = correct = 0
    per_round = []
    for data in rounds:
        final = (data.get("audit") or {}).get("final") or {}
        # the round's audit is every pass's answers about the labels that stand (the final pass's pooled
        # figures); the final pass alone would report the lucky pass after a failed one
        final = final.get("pooled") or final
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
    op, must, _, _ = TARGETS[name]
    return value >= must if op == ">=" else value <= must


# what the demo simulates, said in the report beside the figures
SIMULATED = [
    "the fleet: robots, sites and camera streams (fleetloop_sim.sim, Fashion-MNIST items)",
    "the field shift: lighting, colour cast, noise, blur, rotation, occlusion, backgrounds, class priors per site",
    "the human annotators: ground truth with the configured error rate, times and prices from "
    "config/cost_model.yaml (sources cited there)",
    "compute prices: measured CPU seconds x the cited instance price",
]


def _per_robot(robot_rounds: list[list[dict]], camera_rate_hz: float) -> dict[str, dict]:
    """Return per robot its uploads per round and in all, with bytes per camera hour."""
    per_robot: dict[str, dict] = {}
    for number, rr in enumerate(robot_rounds, start=1):
        for r in rr:
            entry = per_robot.setdefault(r["robot_id"], {"rounds": [], "bytes": 0, "frames": 0, "uploaded": 0})
            camera_hours = r["frames"] / camera_rate_hz / 3600.0
            entry["rounds"].append(
                {
                    "round": number,
                    "uploaded": r["uploaded"],
                    "bytes": r["uploaded_bytes"],
                    "bytes_per_hour": round(r["uploaded_bytes"] / camera_hours, 1) if camera_hours else None,
                    "kept": r["kept"],
                    "dropped": r["dropped"],
                    # camera frames past the round's count, streamed while the last round's models rolled out
                    "extra_frames": r.get("extra_frames", 0),
                }
            )
            entry["bytes"] += r["uploaded_bytes"]
            entry["frames"] += r["frames"]
            entry["uploaded"] += r["uploaded"]
    for entry in per_robot.values():
        hours = entry["frames"] / camera_rate_hz / 3600.0
        entry["bytes_per_camera_hour"] = round(entry["bytes"] / hours, 1) if hours else None
    return per_robot


def _machine() -> dict:
    """Return what the demo ran on (Python, CPU model, core count, host name)."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "node": platform.node(),
    }


def _settings(config, quick: bool, models: Path, test_frames: int) -> dict:
    """Return the run's settings as the report states them."""
    return {
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
    }


def _hard_figures(hard: dict | None) -> dict | None:
    """Return hard mode's headline figures (labeling figures, labels, frames, final audit), or None."""
    if not hard:
        return None
    return {
        **hard.get("figures", {}),
        "labels": hard.get("labels"),
        "frames": hard.get("frames"),
        "audit": (hard.get("audit") or {}).get("final"),
        "true_accuracy": _true_accuracy([hard]),
    }


AUDIT_MIN_LABELS = 200  # an audited error counts as met only on this many audited labels ...
AUDIT_MAX_UPPER = 0.04  # ... and with its 95 % interval's upper end at most this (issue 15's target)


def _targets(report: dict) -> list[dict]:
    """Return each target figure with its goal (the must, the aim beside it), the run's value and whether
    it met the must."""
    out = [
        {
            "figure": name,
            "target": f"{op} {must:.4g}",
            "aim": f"{op} {aim:.4g}",
            "value": report.get(name),
            "met": _met(name, report.get(name)),
            "what": what,
        }
        for name, (op, must, aim, what) in TARGETS.items()
    ]
    gate = (report.get("edge_accuracy") or {}).get("upload_all_gate") or []
    for target in out:
        if target["figure"] == "upload_gain_share" and target["value"] is None and gate:
            if not any((g.get("promote") for g in gate)):  # the same gate as the loop's refused every candidate
                first = next((r for g in gate for r in g.get("reasons") or []), "no reason recorded")
                target["why"] = (
                    f"the gate refused the upload-all arm's candidate in every round ({first}): no gain to share"
                )
    audit = report.get("labeling", {}).get("audit") or {}
    for target in out:
        if target["figure"] == "auto_label_error" and target["met"]:
            upper = (audit.get("error_interval_95") or [0.0, 1.0])[1]
            target["met"] = int(audit.get("frames") or 0) >= AUDIT_MIN_LABELS and upper <= AUDIT_MAX_UPPER
    return out


def build_report(
    config,
    quick: bool,
    models: Path,
    arms: dict,
    upload_all_accuracy: list[float],
    robot_rounds: list[list[dict]],
    upload_all_gate: list[dict] | None,
    al,
    hard: dict | None,
    serving: dict,
    timings: dict,
    minutes: float,
    test_frames: int,
    campaign: dict | None = None,
    after_last_round: list[dict] | None = None,
) -> dict:
    """Return the report as one JSON-able dict (top-level keys as the issue names them).

    ``after_last_round``: what the ROS robots' cameras streamed while the last round's models rolled out
    (their drops count: those swaps happened during them)."""
    # ~68 lines, most of them the report's one dict literal: its keys read in the order report.json has them
    from fleetloop_core.config import default_config_path

    cost_model_path = default_config_path("cost_model.yaml")
    loop = arms["loop"]
    labeling = _labeling(loop.rounds, cost_model_path)
    audits = _audits(loop.rounds)
    frames_seen = sum(r["frames"] for rr in robot_rounds for r in rr)
    uploaded = sum(r["uploaded"] for rr in robot_rounds for r in rr)
    dropped = sum(r["dropped"] for rr in [*robot_rounds, after_last_round or []] for r in rr)
    round0 = loop.edge_accuracy[0]
    final = loop.edge_accuracy[-1]
    all_final = upload_all_accuracy[-1] if len(upload_all_accuracy) > 1 else None
    gain_share = (
        (final - round0) / (all_final - round0) if all_final is not None and all_final - round0 > 1e-9 else None
    )
    per_robot = _per_robot(robot_rounds, config.camera_rate_hz)
    hard_figures = _hard_figures(hard)
    report: dict[str, Any] = {
        "throughput_ratio": labeling.get("throughput_ratio"),
        "cost_ratio": labeling.get("cost_ratio"),
        "hard_mode_throughput_ratio": (hard_figures or {}).get("throughput_ratio"),
        "auto_label_error": audits["error"],
        "upload_fraction": uploaded / frames_seen if frames_seen else None,
        "upload_gain_share": gain_share,
        "al_label_ratio": al.ratio if al is not None else None,
        "frames_dropped": dropped,
        "round0_edge_accuracy": round0,
        "final_edge_accuracy": final,
        "minutes": round(minutes, 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": _settings(config, quick, models, test_frames),
        "labeling": {"stream_world": labeling, "audit": audits, "hard_mode": hard_figures},
        "edge_accuracy": {
            "loop": loop.edge_accuracy,
            "random_upload": arms["random"].edge_accuracy if "random" in arms else None,
            "campaign": arms["campaign"].edge_accuracy if "campaign" in arms else None,
            "upload_all": upload_all_accuracy,
            "upload_all_gate": upload_all_gate,
            "measured_on": "field test split: held-out items disjoint from the validation split every arm is gated on",
        },
        "accuracy_per_human_hour": _accuracy_per_hour(loop, arms.get("random"), labeling, cost_model_path),
        "uploads": {
            "camera_frames": frames_seen,
            "uploaded": uploaded,
            "random_upload_uploaded": None,
            "per_robot": per_robot,
        },
        "active_learning": al.to_dict() if al is not None else None,
        "campaign": campaign,
        "campaign_share_ratio": (campaign or {}).get("share_ratio"),
        "swaps": {name: arm.deploys for name, arm in arms.items()},
        "serving_at_end": serving,
        "rounds": {name: arm.rounds for name, arm in arms.items()},
        "robot_rounds": robot_rounds,
        "robot_after_last_round": after_last_round or [],
        "timings_seconds": timings,
        "simulated": list(SIMULATED),
    }
    report["targets"] = _targets(report)
    return report
