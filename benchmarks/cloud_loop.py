"""Cloud loop rounds on a simulated fleet: labeling figures per round, INT8 vs FP32, step times.

    python benchmarks/cloud_loop.py --quick                       # test-profile models, 2 robots, 2 rounds
    python benchmarks/cloud_loop.py --models models --robots 4 --frames 300 --rounds 3 --mode hard

Every frame a robot streams is uploaded (no on-robot selection here), the simulated annotator
labels with its configured error rate, and figures come from config/cost_model.yaml. ``--mode
hard`` streams shuffled single frames with no tracks and no background (DEMO_WORLD.md's hard
mode): the figure to quote for i.i.d. images. Prints one table per round and a comparison table;
writes everything as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, locate_models, machine, print_table, write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="T1..T4 directories (default: ./models, else the test profile)")
    parser.add_argument("--robots", type=int, default=2)
    parser.add_argument("--frames", type=int, default=150, help="frames per robot per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=("stream", "hard"), default="stream")
    parser.add_argument("--calibration-sample", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="small and fast (test-profile models)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--keep", default=None, help="keep the work directory here instead of a temporary one")
    args = parser.parse_args()

    from fleetloop_sim import sim
    from fleetloop_core.inference import TierModel
    from fleetloop_core.store import open_store

    from fleetloop_cloud.config import cloud_config_from_dict
    from fleetloop_cloud.loop import CloudLoop
    from fleetloop_cloud.simfleet import SimulatedFleet
    from fleetloop_cloud.loop.tasks.classification_report import classification_summary_table

    models = locate_models(args.models, args.quick)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fleetloop-cloud-bench-"))
    store = open_store(f"file://{work / 'store'}")
    sites = sim.make_fleet_sites(max(1, args.robots), seed=0)
    edge = TierModel.load(models / "T4", providers=("cpu",), warmup=0)
    fleet = SimulatedFleet(
        store, [(f"robot-{i}", sites[i]) for i in range(args.robots)], edge_model=edge, mode=args.mode
    )
    config = cloud_config_from_dict(
        {
            "store": store.uri,
            "work_dir": str(work / "work"),
            "models": str(models),
            "cost_model": str(ROOT / "config" / "cost_model.yaml"),
            "review": {"calibration_sample": args.calibration_sample},
            "training": {
                "teacher_epochs": 2 if args.quick else 3,
                "distil_epochs": 2 if args.quick else 3,
                "lab_replay_frames": 100 if args.quick else 1000,
            },
            "evaluation": {"frames_per_site": 60 if args.quick else 300, "min_support": 10 if args.quick else 20},
            "registry": {"uri": str(work / "registry")},
        },
        source="benchmarks/cloud_loop.py",
    )
    from rich.console import Console

    rounds = []
    with CloudLoop(config, progress=False) as loop:
        for _ in range(args.rounds):
            fleet.upload(args.frames)
            started = time.perf_counter()
            summary = loop.run_round()
            seconds = time.perf_counter() - started
            Console().print(classification_summary_table(summary))
            data = summary.to_dict()
            data["wall_seconds"] = round(seconds, 1)
            rounds.append(data)
    rows = []
    for data in rounds:
        labels, audit, figures = data["labels"], data["audit"], data["figures"]
        final = audit.get("final") or {}
        audited = (
            f"{final['accuracy']:.3f} [{final['ci'][0]:.3f}, {final['ci'][1]:.3f}] n={final['frames']}"
            if final
            else "n/a"
        )
        t4 = data["models"].get("T4", {})
        rows += [
            (
                f"round {data['round']}: ingested / auto / propagated / human",
                f"{data['frames']['ingested']} / {labels['auto_accepted']} / {labels['propagated']} / "
                f"{labels['human']}",
            ),
            (f"round {data['round']}: audited accuracy", audited),
            (
                f"round {data['round']}: throughput x / cost x",
                f"{_fmt(figures['throughput_ratio'])} / {_fmt(figures['cost_ratio'])}",
            ),
            (
                f"round {data['round']}: human s / $ ; compute $",
                f"{data['human']['seconds']:.0f} / {data['human']['dollars']:.2f} ; {data['compute']['dollars']:.4f}",
            ),
            (
                f"round {data['round']}: T4 field accuracy before -> after",
                f"{t4.get('accuracy_before', float('nan')):.3f} -> {t4.get('accuracy_after', float('nan')):.3f}"
                if t4
                else "not trained",
            ),
            (
                f"round {data['round']}: wall s (train CPU s)",
                f"{data['wall_seconds']:.0f} ({data['compute']['by_step']['train']['cpu_seconds']:.0f})",
            ),
        ]
        for tier, cmp in data["models"].get("int8_vs_fp32", {}).items():
            rows.append(
                (
                    f"round {data['round']}: {tier} ms vs fp32 ms (agreement)",
                    f"{cmp['int8_ms']:.2f} vs {cmp['fp32_ms']:.2f} ({cmp['agreement']:.3f})",
                )
            )
    print_table(
        f"cloud loop, {args.mode} mode, {args.robots} robots x {args.frames} frames/round, models {models}", rows
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "mode": args.mode,
            "robots": args.robots,
            "frames": args.frames,
            "models": str(models),
            "rounds": rounds,
        },
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
