"""Hard mode on more draws: a demo run's hard-mode labeling again, on its own uploads and on fresh ones.

    .venv/bin/python scripts/hard_mode_draws.py RUN [--draws 4] [--out DIR]

RUN is the output of ``fleetloop demo`` (a seed's directory, or a ``--seeds`` run holding ``seed-N/``).
For each seed, the hard-mode uploads the demo labeled, and ``--draws`` fresh sets of as many shuffled
single frames (the same world and sites, the robots' last approved T4 scoring them, fleet seed
``1000 x seed + 101 + k``) are labeled by the loop's final teachers (its registry, read only) under the
current code and config/cloud.yaml, with the demo config's cloud overrides. One draw of 600 frames is one
calibration sample and one audit: what automates, and how right it is, moves a lot from draw to draw, so a
routing rule is judged on many (docs/results/2026-12-06.md, twentieth session).

Writes OUT/hard_mode_draws.md (a row per draw: labels per human-hour against manual labeling, labels
auto-accepted and still standing after the audit, their accuracy against the simulated truth, human seconds
of calibration and audit) and prints it. Simulated truth is read only for that accuracy (evaluation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from fleetloop_cloud.demo.config import load_demo_config
from fleetloop_cloud.demo.fleet import robot_specs
from fleetloop_cloud.demo.hard_mode import hard_mode_loop, label_hard_mode, upload_hard_mode

HEADER = (
    "| seed | draw | labels per human-hour, loop / manual | auto-accepted | standing after the audit "
    "| their accuracy (simulated truth) | calibration s | audit s | audit passes |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def seed_dirs(run: Path) -> list[Path]:
    """Return the seed directories of a demo run (the run itself when it is one seed's)."""
    if (run / "report.json").is_file():
        return [run]
    found = sorted(p for p in run.glob("seed-*") if (p / "report.json").is_file())
    if not found:
        raise SystemExit(f"{run}: no report.json, and no seed-N/report.json under it (a fleetloop demo output?)")
    return found


def figures(summary: dict) -> dict:
    """Return one draw's row from its round summary."""
    human = summary["human"]["by_purpose"]
    auto = summary["simulation_only"].get("auto") or {}
    return {
        "ratio": summary["figures"]["throughput_ratio"],
        "auto_accepted": summary["labels"]["auto_accepted"],
        "standing": auto.get("frames", 0),
        "accuracy": auto.get("accuracy"),
        "calibration_s": human.get("calibration", {}).get("seconds", 0.0),
        "audit_s": human.get("audit", {}).get("seconds", 0.0),
        "audit_passes": len(summary["audit"].get("passes", [])),
    }


def run_seed(seed_dir: Path, draws: int, out: Path, config: str | None, bar) -> list[dict]:
    """Label the seed's own hard-mode uploads and ``draws`` fresh ones; return a row per draw."""
    settings = json.loads((seed_dir / "report.json").read_text())["settings"]
    seed, quick = int(settings["seed"]), bool(settings.get("quick"))
    demo = load_demo_config(config, quick=quick)
    models, trusted = Path(settings["models"]), seed_dir / "keys" / "trusted"
    registry = f"file://{(seed_dir / 'arms' / 'loop' / 'store').resolve()}"
    robots = [(s.robot_id, s.site) for s in robot_specs(int(settings["robots"]), seed)]
    rows = []
    for draw in ["demo", *range(draws)]:
        work = out / f"seed-{seed}" / f"draw-{draw}"
        shutil.rmtree(work, ignore_errors=True)
        store_uri = f"file://{work / 'store'}"
        if draw == "demo":
            shutil.copytree(seed_dir / "arms" / "hard-mode" / "store", work / "store")
        else:
            with hard_mode_loop(demo.cloud, store_uri, work / "edge", models, seed, registry, trusted) as loop:
                edge = loop.production("T4")  # the robots' model when the demo's hard mode ran
            upload_hard_mode(store_uri, robots, edge, 1000 * seed + 101 + int(draw), demo.hard_mode_frames)
        loop = hard_mode_loop(demo.cloud, store_uri, work / "cloud", models, seed, registry, trusted)
        summary = label_hard_mode(loop)
        rows.append({"seed": seed, "draw": str(draw), **figures(summary)})
        bar.update(1)
    return rows


def table(rows: list[dict]) -> str:
    """Return the Markdown table of the rows and their mean."""
    lines = [HEADER]
    for r in rows:
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(
            f"| {r['seed']} | {r['draw']} | {r['ratio']:.2f} | {r['auto_accepted']} | {r['standing']} | {accuracy} "
            f"| {r['calibration_s']:.0f} | {r['audit_s']:.0f} | {r['audit_passes']} |"
        )
    standing = sum(r["standing"] for r in rows)
    right = sum(r["standing"] * (r["accuracy"] or 0.0) for r in rows)
    mean = sum(r["ratio"] for r in rows) / len(rows)
    overall = f"{right / standing:.3f}" if standing else "-"
    lines.append(
        f"\n{len(rows)} draws: labels per human-hour {mean:.2f} on the mean ({min(r['ratio'] for r in rows):.2f} - "
        f"{max(r['ratio'] for r in rows):.2f}); {standing} auto-labels standing, {overall} right."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a fleetloop demo output (one seed's, or a --seeds run)")
    parser.add_argument("--draws", type=int, default=4, help="fresh upload sets per seed (besides the demo's)")
    parser.add_argument("--out", type=Path, default=Path("runs/hard-mode-draws"))
    parser.add_argument("--config", default=None, help="demo config (default config/demo.yaml)")
    args = parser.parse_args(argv)
    seeds = seed_dirs(args.run)
    rows: list[dict] = []
    with tqdm(total=len(seeds) * (args.draws + 1), desc="hard-mode draws", unit="draw") as bar:
        for seed_dir in seeds:
            rows += run_seed(seed_dir, args.draws, args.out, args.config, bar)
    text = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hard_mode_draws.md").write_text(text)
    (args.out / "hard_mode_draws.json").write_text(json.dumps(rows, indent=1))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
