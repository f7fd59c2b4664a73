"""What a bag replay writes and prints: replay.csv, kept_frames.csv, the sweep and score plots, a table."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fleetloop_core.replay import ReplayReport, SettingResult

# --------------------------------------------------------------------------- outputs

CSV_COLUMNS = (
    "setting",
    "frames",
    "kept",
    "kept_fraction",
    "candidate_fraction",
    "kept_per_hour",
    "bytes_per_hour",
    "random",
    "duplicates",
    "budget_limited",
    "mean_score_kept",
    "mean_score_dropped",
    "threshold_median",
)


def _row(result: SettingResult, duration_s: float, labels: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "setting": result.setting.label,
        "frames": result.frames,
        "kept": result.kept,
        "kept_fraction": round(result.kept / result.frames, 6) if result.frames else 0.0,
        "candidate_fraction": round(result.candidates / result.frames, 6) if result.frames else 0.0,
        "kept_per_hour": round(result.per_hour(result.kept, duration_s), 2),
        "bytes_per_hour": round(result.per_hour(result.kept_bytes, duration_s)),
        "random": result.random,
        "duplicates": result.duplicates,
        "budget_limited": result.budget_limited,
        "mean_score_kept": round(result.mean_score_kept, 4),
        "mean_score_dropped": round(result.mean_score_dropped, 4),
        "threshold_median": round(result.threshold_median, 4),
    }
    for key, value in result.setting.changes.items():
        row[key] = value
    for label in labels:
        row[f"kept_{label}"] = result.kept_by_class.get(label, 0)
    return row


def write_outputs(report: ReplayReport, out: str | Path) -> list[Path]:
    """Write replay.csv, kept_frames.csv and the PNG plots into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(r, report.duration_s, report.labels) for r in report.results]
    swept = list(report.results[0].setting.changes) if report.results else []
    paths = [*_write_tables(report, rows, swept, out), _plot_sweep(report, rows, swept, out), _plot_scores(report, out)]
    report.outputs = paths
    return paths


def _write_tables(report: ReplayReport, rows: list[dict[str, Any]], swept: list[str], out: Path) -> list[Path]:
    """Write replay.csv (one row per setting) and kept_frames.csv (one row per kept frame); return their paths."""
    columns = [*CSV_COLUMNS[:1], *swept, *CSV_COLUMNS[1:], *(f"kept_{label}" for label in report.labels)]
    table = out / "replay.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    kept = out / "kept_frames.csv"
    with kept.open("w", newline="") as handle:
        frame_writer = csv.writer(handle)
        frame_writer.writerow(["setting", "topic", "index", "score", "reason"])
        for result in report.results:
            for topic, index, score, reason in result.kept_frames:
                frame_writer.writerow([result.setting.label, topic, index, round(score, 4), reason])
    return [table, kept]


def _plot_group(left: Any, right: Any, xs: list, points: list, rest: str, report: ReplayReport, robots: int) -> None:
    """Plot one group of settings (same values of the other swept keys): kept, passed, bytes, and the budgets."""
    line = left.plot(xs, [p[1]["kept_fraction"] for p in points], marker="o", label=f"kept {rest}".strip())[0]
    colour = line.get_color()
    left.plot(
        xs,
        [p[1]["candidate_fraction"] for p in points],
        marker="^",
        linestyle=":",
        color=colour,
        label=f"passed the policy {rest}".strip(),
    )
    right.plot(xs, [p[1]["bytes_per_hour"] / 1e6 for p in points], marker="o", color=colour, label=rest or "uploaded")
    if report.duration_s > 0 and report.frames:
        frames_per_hour = report.frames * 3600.0 / report.duration_s
        budget = [robots * p[2].setting.config.budget.frames_per_hour / frames_per_hour for p in points]
        label = f"budget{' ' + rest if rest else ''}"
        left.plot(xs, budget, linestyle="--", color=colour, alpha=0.6, label=label)
        bytes_budget = [robots * p[2].setting.config.budget.bytes_per_hour / 1e6 for p in points]
        right.plot(xs, bytes_budget, linestyle="--", color=colour, alpha=0.6, label=label)


def _plot_sweep(report: ReplayReport, rows: list[dict[str, Any]], swept: list[str], out: Path) -> Path:
    """Plot the kept fraction and bytes/hour against the swept value, with what the budget allows; return the PNG."""
    import matplotlib.pyplot as plt

    varied = [k for k in swept if len({repr(r.setting.changes[k]) for r in report.results}) > 1]
    x_key = varied[0] if varied else (swept[0] if swept else None)
    numeric = x_key is not None and all(
        isinstance(r.setting.changes[x_key], (int, float)) and not isinstance(r.setting.changes[x_key], bool)
        for r in report.results
    )
    robots = max(len(report.robots), 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    groups: dict[str, list[tuple[Any, dict[str, Any], SettingResult]]] = {}
    for result, row in zip(report.results, rows):
        rest = " ".join(f"{k}={v}" for k, v in result.setting.changes.items() if k in varied and k != x_key)
        x = result.setting.changes.get(x_key, result.setting.label) if x_key is not None else result.setting.label
        groups.setdefault(rest, []).append((x, row, result))
    for rest, points in groups.items():
        if numeric:
            points.sort(key=lambda p: p[0])
        xs = [p[0] if numeric else str(p[0]) for p in points]
        _plot_group(left, right, xs, points, rest, report, robots)
    left.set_yscale("log")
    for axis, title in ((left, "fraction of frames"), (right, "upload MB per hour (all robots)")):
        axis.set_xlabel(x_key or "setting")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    names = ", ".join(Path(b).name for b in report.bag.split(", "))
    figure.suptitle(
        f"{names}: {report.frames} frames from {robots} robot(s), {report.duration_s / 60:.1f} min", fontsize=9
    )
    figure.tight_layout()
    sweep_png = out / f"kept_vs_{(x_key or 'setting').replace('.', '_')}.png"
    figure.savefig(sweep_png, dpi=100)
    plt.close(figure)
    return sweep_png


def _plot_scores(report: ReplayReport, out: Path) -> Path:
    """Plot the value-score histogram with each setting's (median) threshold; return the PNG."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    scores = np.asarray(report.results[0].scores if report.results else [], float)
    axis.hist(scores, bins=50, range=(0, 1), color="0.6", label="value score, all frames")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(report.results):
        if not math.isnan(result.threshold_median):
            axis.axvline(
                result.threshold_median,
                color=colours[i % len(colours)],
                linestyle="--",
                label=f"{result.setting.label}: threshold {result.threshold_median:.2f}, kept {result.kept}",
            )
    axis.set_xlabel("value score (weighted uncertainty, 0..1)")
    axis.set_ylabel("frames")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    figure.tight_layout()
    histogram = out / "score_histogram.png"
    figure.savefig(histogram, dpi=110)
    plt.close(figure)
    return histogram


def print_report(report: ReplayReport, console=None) -> None:
    """Print the per-setting table and the bag's problems."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        probe = Console()
        console = probe if probe.is_terminal else Console(width=150)  # logs and CI: no wrapping
    console.print(
        f"[bold]{report.bag}[/]: {report.frames} frames from {len(report.robots)} robot(s), "
        f"{report.duration_s:.1f} s of recording replayed in {report.wall_s:.1f} s "
        f"({report.speedup:.0f}x real time)"
    )
    table = Table(title="selection per setting")
    for column in (
        "setting",
        "kept",
        "kept/h",
        "MB/h",
        "score kept/dropped",
        "dups removed",
        "random",
        "over budget",
        "kept classes",
    ):
        table.add_column(column, justify="left" if column in ("setting", "kept classes") else "right")
    for result in report.results:
        classes = ", ".join(f"{name} {count}" for name, count in result.kept_by_class.most_common())
        table.add_row(
            result.setting.label,
            str(result.kept),
            f"{result.per_hour(result.kept, report.duration_s):.0f}",
            f"{result.per_hour(result.kept_bytes, report.duration_s) / 1e6:.1f}",
            f"{result.mean_score_kept:.3f} / {result.mean_score_dropped:.3f}",
            str(result.duplicates),
            str(result.random),
            str(result.budget_limited),
            classes or "-",
        )
    console.print(table)
    if report.unknown_encodings:
        console.print(
            "unknown encodings (skipped): "
            + ", ".join(f"{name} x{count}" for name, count in report.unknown_encodings.most_common())
        )
    others = [p for p in report.problems if p.kind != "unknown_encoding"]
    for problem in others[:20]:
        console.print(f"[yellow]problem[/] {problem}")
    if len(others) > 20:
        console.print(f"... and {len(others) - 20} more problems")
    for path in report.outputs:
        console.print(f"wrote {path}")
