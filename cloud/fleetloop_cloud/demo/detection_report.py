"""The detection demo's report: the headline rows per arm, ``report.json``, ``report.md`` (headline and
mAP per round) and ``map_per_round.png``."""

from __future__ import annotations

import json
from pathlib import Path


def headline(arms: dict[str, list[dict]]) -> list[dict]:
    """Return the headline rows: per arm (its round records), uploads, labels, human time, ratios and mAP@0.5."""
    rows = []
    for name, records in arms.items():
        rounds = [r for r in records if r["round"] > 0]
        first, last = records[0]["map"]["T4"], records[-1]["map"]["T4"]
        row = {
            "arm": name,
            "uploaded": sum(r["uploaded"] for r in rounds)
            if name != "upload-all"
            else (rounds[-1]["uploaded"] if rounds else 0),
            "t4_map50_start": first["map50"],
            "t4_map50_end": last["map50"],
            "t4_map_end": last["map"],
        }
        if name != "upload-all" and rounds:
            labels = [r["labels"] for r in rounds]
            seconds = sum(r["human"]["seconds"] for r in rounds)
            manual = sum(r["figures"]["manual_seconds"] for r in rounds)
            loop_dollars = sum(r["human"]["dollars"] + r["figures"]["labeling_compute_dollars"] for r in rounds)
            manual_dollars = sum(r["figures"]["manual_dollars"] for r in rounds)
            accepted = sum(r["figures"]["accepted_frames"] for r in rounds)
            gt_loop = sum(
                (r["figures"].get("ground_truth_loop_cost_per_frame") or 0.0) * r["figures"]["accepted_frames"]
                for r in rounds
            )
            gt_manual = max((r["figures"].get("ground_truth_manual_cost_per_frame") or 0.0) for r in rounds)
            row.update(
                accepted=sum(entry["accepted"] for entry in labels),
                auto=sum(entry["auto_accepted"] for entry in labels),
                human=sum(entry["human"] for entry in labels),
                boxes=sum(entry["boxes"] for entry in labels),
                human_hours=round(seconds / 3600.0, 4),
                manual_hours=round(manual / 3600.0, 4),
                throughput_ratio=round(manual / seconds, 3) if seconds else None,
                cost_ratio=round(manual_dollars / loop_dollars, 3) if loop_dollars else None,
                ground_truth_cost_ratio=round(gt_manual * accepted / gt_loop, 3) if gt_loop else None,
                t2_map50_end=records[-1]["map"]["T2"]["map50"],
                audit=[r["audit"] for r in rounds if r.get("audit")][-1:] or None,
            )
        rows.append(row)
    return rows


def write_report(report: dict, out: Path) -> list[Path]:
    """Write report.json, report.md (headline and mAP per round) and map_per_round.png into ``out``."""
    out = Path(out)
    paths = [out / "report.json", out / "report.md", out / "map_per_round.png"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    paths[1].write_text(_markdown(report))
    _plot(report, paths[2])
    return paths


def _markdown(report: dict) -> str:
    """Return report.md: the settings line, the headline table and the mAP per round."""
    lines = [
        "# FleetLoop detection demo",
        "",
        f"{report['settings']['robots']} robots x {report['settings']['rounds']} rounds x "
        f"{report['settings']['frames_per_robot']} frames; detectors: {report['models']}; field test set "
        f"{report['test_frames']} frames / {report['test_boxes']} boxes ({', '.join(report['sites'])}).",
        "",
        "| arm | frames uploaded | box labels accepted (auto / human) | boxes | human h (manual h) | "
        "throughput ratio | cost ratio (Ground Truth pricing) | T4 mAP@0.5 round 0 -> last | T4 mAP@0.5:0.95 last |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["headline"]:
        if "accepted" in row:
            lines.append(
                f"| {row['arm']} | {row['uploaded']} | {row['accepted']} ({row['auto']} / {row['human']}) | "
                f"{row['boxes']} | {row['human_hours']:.3f} ({row['manual_hours']:.3f}) | "
                f"{_fmt(row['throughput_ratio'])} | {_fmt(row['cost_ratio'])} "
                f"({_fmt(row.get('ground_truth_cost_ratio'))}) | "
                f"{row['t4_map50_start']:.3f} -> {row['t4_map50_end']:.3f} | {row['t4_map_end']:.3f} |"
            )
        else:
            lines.append(
                f"| {row['arm']} | {row['uploaded']} (all, true boxes) | - | - | - | - | - | "
                f"{row['t4_map50_start']:.3f} -> {row['t4_map50_end']:.3f} | {row['t4_map_end']:.3f} |"
            )
    lines += [
        "",
        "## mAP per round (field test set)",
        "",
        "| round | arm | T4 mAP@0.5 | T4 mAP@0.5:0.95 | T2 mAP@0.5 |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for arm, rounds in report["arms"].items():
        for r in rounds:
            t2 = r["map"].get("T2", {}).get("map50")
            lines.append(
                f"| {r['round']} | {arm} | {r['map']['T4']['map50']:.3f} | {r['map']['T4']['map']:.3f} | "
                f"{'-' if t2 is None else f'{t2:.3f}'} |"
            )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    """Draw T4's mAP@0.5 per round, one line per arm, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    for arm, rounds in report["arms"].items():
        axis.plot(
            [r["round"] for r in rounds],
            [r["map"]["T4"]["map50"] for r in rounds],
            marker="o",
            label=f"{arm}: T4 mAP@0.5",
        )
    axis.set_xlabel("round")
    axis.set_ylabel("mAP@0.5 (field test set)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
