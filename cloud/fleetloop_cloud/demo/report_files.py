"""The demo report's files: report.json, report.md, report.html and the PNG plots, and the printed headline.

The figures themselves are built by :mod:`fleetloop_cloud.demo.report`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path


# ====================================================================================== output
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _plots(report: dict, out: Path) -> list[tuple[str, str]]:
    """Write the report's PNG plots into ``out``; return (file name, caption) of each one made."""
    plots = (_plot_accuracy, _plot_labeling, _plot_active_learning, _plot_bandwidth)
    return [made for plot in plots if (made := plot(report, out)) is not None]


def _figure(width: float, height: float):
    """Return an empty matplotlib figure (Agg, no display) of ``width`` x ``height`` inches."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _label(ax, xlabel: str, ylabel: str, title: str, legend_size: float | None = None, grid: bool = False) -> None:
    """Name an axis' x and y, title it, and show its legend (and a light grid)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(alpha=0.3)
    if legend_size:
        ax.legend(fontsize=legend_size)
    else:
        ax.legend()


def _save(fig, path: Path) -> None:
    """Lay the figure out and write it as a PNG at ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_accuracy(report: dict, out: Path) -> tuple[str, str] | None:
    """Plot T4's field accuracy per round for the loop and the baselines; return (file, caption)."""
    acc = report["edge_accuracy"]
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, values, style in (
        ("loop (selection)", acc["loop"], "o-"),
        ("random upload", acc["random_upload"], "s--"),
        ("upload all (upper bound)", acc["upload_all"], "^:"),
    ):
        if values:
            ax.plot(range(len(values)), values, style, label=name)
    ax.set_xticks(range(max(len(v) for v in acc.values() if v)))
    _label(
        ax,
        "round (0 = lab-trained reference)",
        "T4 accuracy on held-out field frames",
        "Edge model (T4) accuracy per round",
        grid=True,
    )
    _save(fig, out / "edge_accuracy.png")
    return ("edge_accuracy.png", "Edge (T4) field accuracy per round: loop, random upload, upload all")


def _plot_labeling(report: dict, out: Path) -> tuple[str, str] | None:
    """Plot where each round's labels came from and the labels per human-hour; return (file, caption)."""
    rounds = report["rounds"]["loop"]
    if not rounds:
        return None
    fig = _figure(9.6, 3.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    numbers = [r["round"] for r in rounds]
    auto = [r["labels"]["auto_accepted"] for r in rounds]
    propagated = [r["labels"]["propagated"] for r in rounds]
    human = [r["labels"]["human"] for r in rounds]
    ax1.bar(numbers, auto, label="auto-accepted")
    ax1.bar(numbers, propagated, bottom=auto, label="propagated along a track")
    ax1.bar(numbers, human, bottom=[a + p for a, p in zip(auto, propagated)], label="human")
    _label(ax1, "round", "accepted labels", "Where the labels came from", legend_size=8)
    loop_rate = [r["figures"].get("loop_labels_per_human_hour") or 0.0 for r in rounds]
    manual = rounds[0]["figures"].get("manual_labels_per_human_hour") or 0.0
    ax2.bar(numbers, loop_rate, label="loop")
    ax2.axhline(manual, color="black", linestyle="--", label="manual")
    _label(ax2, "round", "accepted labels per human-hour", "Labeling throughput", legend_size=8)
    _save(fig, out / "labeling.png")
    return ("labeling.png", "Label sources per round, and labels per human-hour vs manual")


def _plot_active_learning(report: dict, out: Path) -> tuple[str, str] | None:
    """Plot human labels needed by active learning vs random labeling; return (file, caption)."""
    al = report.get("active_learning")
    if not al:
        return None
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, curve in al["curves"].items():
        ax.plot(curve["budgets"], curve["accuracy"], "o-", label=name)
    ax.axhline(al["target_accuracy"], color="black", linestyle="--", label=f"{al['target_share']:.0%} of upload-all")
    ax.set_xscale("log")
    _label(
        ax, "human labels", "probe accuracy on held-out field frames", "Active learning vs random labeling", grid=True
    )
    _save(fig, out / "active_learning.png")
    return ("active_learning.png", "Human labels needed: active learning vs random")


def _plot_bandwidth(report: dict, out: Path) -> tuple[str, str] | None:
    """Plot each robot's upload volume per round; return (file, caption)."""
    per_robot = report["uploads"]["per_robot"]
    if not per_robot:
        return None
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(per_robot), 1)
    for i, (robot, entry) in enumerate(sorted(per_robot.items())):
        xs = [r["round"] + (i - len(per_robot) / 2) * width for r in entry["rounds"]]
        ax.bar(xs, [r["bytes"] / 1e3 for r in entry["rounds"]], width=width, label=robot)
    _label(ax, "round", "uploaded kB", "Per-robot upload volume", legend_size=8)
    _save(fig, out / "bandwidth.png")
    return ("bandwidth.png", "Per-robot uploads per round")


def _headline_rows(report: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for target in report["targets"]:
        value = target["value"]
        shown = _fmt(value, 4 if target["figure"] in ("auto_label_error", "upload_fraction") else 2)
        met = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        aim = target.get("aim")
        goal = target["target"] if aim in (None, target["target"]) else f"{target['target']} (aim {aim.split()[-1]})"
        rows.append((target["what"], shown, goal, met))
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
    s = report["settings"]
    extra = [r.get("extra_frames", 0) for rr in report["robot_rounds"] for r in rr]
    streamed_on = (
        f" (and {min(extra):,} - {max(extra):,} more a robot and round, streamed while models rolled out)"
        if any(extra)
        else ""
    )
    lines = [
        f"# FleetLoop closed-loop demo — {report['created']}",
        "",
        f"{s['robots']} robots x {s['rounds']} rounds x {s['frames_per_robot_per_round']} camera frames per robot "
        f"per round{streamed_on}; upload budget {s['upload_budget_fraction']:.0%} of frames; seed {s['seed']}; "
        "robot stack "
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
    unmeasured = [t for t in report["targets"] if t["met"] is None and t.get("why")]
    if unmeasured:
        lines += ["", "**Not measured:** " + "; ".join(f"{t['what']}: {t['why']}" for t in unmeasured) + "."]
    lines += _labeling_lines(report) + _accuracy_lines(report) + _campaign_lines(report) + _swap_lines(report)
    lines += ["", "## Plots", ""] + [f"![{caption}]({name})" for name, caption in plots]
    lines += ["", "## What is simulated", ""] + [f"- {item}" for item in report["simulated"]]
    lines += ["", "Every figure was measured in this run; see report.json for all of them."]
    return "\n".join(lines) + "\n"


def _truth_text(truth: dict | None) -> str:
    """Return "auto 0.981 (262), human 0.982 (338)": each label source's accuracy against the simulated truth."""
    if not truth:
        return "not measured"
    return ", ".join(f"{source} {_fmt(entry['accuracy'], 3)} ({entry['frames']})" for source, entry in truth.items())


def _labeling_lines(report: dict) -> list[str]:
    """Return the report's labeling section (stream world, audit) and the hard-mode row when it ran."""
    lab = report["labeling"]["stream_world"]
    audit = report["labeling"]["audit"]
    hard = report["labeling"]["hard_mode"]
    lines: list[str] = []
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
        f"- human seconds by purpose: {lab.get('human_seconds_by_purpose')}; quality control (calibration "
        f"samples, audits, second opinions) {_fmt(lab.get('qa_seconds'), 1)} s: at this volume of uploads the "
        f"throughput ratio cannot exceed {_fmt(lab.get('throughput_ceiling'), 2)} even if every other label were free",
        f"- accepted labels against the simulated truth (evaluation only): {_truth_text(lab.get('true_accuracy'))}",
        "",
    ]
    if hard:
        lines += [
            "## Hard mode (shuffled single frames, no tracks, no background)",
            "",
            f"- throughput ratio {_fmt(hard.get('throughput_ratio'), 2)}, cost ratio {_fmt(hard.get('cost_ratio'), 2)}"
            f", labels {hard.get('labels')}",
            f"- accepted labels against the simulated truth (evaluation only): "
            f"{_truth_text(hard.get('true_accuracy'))}",
            "",
            "The stream-world figures above are not a claim about i.i.d. images: this row is.",
            "",
        ]
    return lines


def _accuracy_lines(report: dict) -> list[str]:
    """Return the edge-accuracy table per round and the active-learning result when it ran."""
    lines: list[str] = []
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
        if al.get("ratio_is_upper_bound"):
            first = al["curves"][al["strategy"]]["budgets"][0]
            lines.append(
                f"{al['strategy']} reached it at the smallest budget tried ({first} labels, one a class), "
                "so it may need fewer: the ratio is an upper bound."
            )
    return lines


def _campaign_lines(report: dict) -> list[str]:
    """Return the campaign arm's section: what was sent and why, and per round both arms side by side."""
    section = report.get("campaign")
    if not section:
        return []
    lines = ["", "## Data campaign (campaign arm beside the loop, which runs none)", ""]
    if section["target"] is None:
        reasons = "; ".join(e.get("skipped", "") for e in section["events"]) or "no round before the last"
        return lines + [f"No campaign was sent: {reasons}."]
    robots = next((e.get("robots") for e in section["events"] if "sent" in e), {}) or {}
    lines += [
        f"After round {section['sent_after_round']} the cloud asked for **{section['target']}** "
        f"({section['reason']}); robots: {', '.join(f'{k} {v}' for k, v in sorted(robots.items()))}. "
        f"Share of uploads the robots labeled {section['target']}, round after / before: "
        f"{_fmt(section.get('share_before'))} -> {_fmt(section.get('share_after'))} "
        f"(x{_fmt(section.get('share_ratio'), 2)}); against the loop's robots in the same round: "
        f"x{_fmt(section.get('share_vs_loop'), 2)}. What the uploads turned out to be, round after / before: "
        f"the labeled ones accepted as {section['target']} x{_fmt(section.get('labeled_share_ratio'), 2)}, "
        f"truly {section['target']} x{_fmt(section.get('true_share_ratio'), 2)} (simulated truth, evaluation only); "
        f"accepted as {section['target']} against the loop's uploads in the same round: "
        f"x{_fmt(section.get('labeled_share_vs_loop'), 2)}.",
        "",
        "| round | campaign | arm | uploads | robots' share | accepted as it | true share | accepted labels "
        "| T4 field accuracy |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in section["rounds"]:
        for name in ("loop", "campaign"):
            row = entry[name]
            lines.append(
                f"| {entry['round']} | {'running' if entry['campaign_running'] and name == 'campaign' else '-'} | "
                f"{name} | "
                f"{row.get('uploads', 0)} | {_fmt(row.get('robot_share'))} | {_fmt(row.get('labeled_share'))} | "
                f"{_fmt(row.get('true_share'))} | "
                f"{row.get('accepted_labels', '')} | {_fmt(row.get('field_accuracy'))} |"
            )
    return lines


def _swap_lines(report: dict) -> list[str]:
    """Return the list of rollouts per arm and round, with the frames dropped over the run."""
    lines: list[str] = []
    lines += ["", "## Swaps", ""]
    for name, deploys in report["swaps"].items():
        for d in deploys:
            lines.append(
                f"- {name}, round {d['round']}: {d['tier']} {d['version']} "
                f"{'ABORTED' if d.get('aborted') else 'rolled out'} in {d.get('seconds', 'n/a')} s"
            )
    lines.append(f"- frames dropped by the loop's robots over the run (swaps included): {report['frames_dropped']}")
    return lines


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
