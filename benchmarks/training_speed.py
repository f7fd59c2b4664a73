"""Speed of the training job (the SageMaker-contract entry point) on CPU and, when present, a GPU.

    python benchmarks/training_speed.py --models models --frames 2000 [--json out.json]

Writes synthetic channels (random frames with labels: speed only, accuracy means nothing here),
then runs ``fleetloop_cloud.train.run_training`` -- train T2, distil T3 and T4, INT8 of both --
once per device (CUDA when torch sees one, then CPU with every core), and prints samples per
second per tier. Runs where the cloud's training job runs; needs no data set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="a directory with T2, T3, T4 packages")
    parser.add_argument("--frames", type=int, default=2000, help="labeled frames (the unlabeled channel has 2x)")
    parser.add_argument("--size", type=int, default=128, help="frame side, pixels")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--devices", default="auto", help="auto | cpu | cuda | cuda,cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from fleetloop_cloud.channels import write_channel
    from fleetloop_cloud.train import Hyperparameters, run_training

    devices = (
        (["cuda"] if torch.cuda.is_available() else []) + ["cpu"] if args.devices == "auto" else args.devices.split(",")
    )
    work = Path(tempfile.mkdtemp(prefix="fleetloop-train-speed-"))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    frames = rng.integers(0, 255, (args.frames * 2, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, 11, args.frames * 2)
    items = [(f"f{i:06d}", frames[i], int(labels[i]), "site-0") for i in range(len(frames))]
    channels = {
        "train": write_channel(work / "train", items[: args.frames]),
        "unlabeled": write_channel(
            work / "unlabeled",
            [(f, im, label if i < args.frames else -1, s) for i, (f, im, label, s) in enumerate(items)],
        ),
        "calibration": write_channel(work / "calibration", items[:64]),
        "models": Path(args.models),
    }
    channel_seconds = time.perf_counter() - started
    results = {
        "frames": args.frames,
        "size": args.size,
        "epochs": args.epochs,
        "channel_seconds": channel_seconds,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "runs": {},
    }
    for device in devices:
        if device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            torch.cuda.is_available = lambda: False  # this process already initialised CUDA
        hp = Hyperparameters(
            version=f"speed-{device}",
            teacher_epochs=args.epochs,
            distil_epochs=args.epochs,
            batch_size=128,
            int8_calibration_frames=64,
        )
        out = work / f"model-{device}"
        t0 = time.perf_counter()
        report = run_training(channels, out, hp, progress=False)
        total = time.perf_counter() - t0
        results["runs"][device] = {"seconds": round(total, 2), "tiers": report["tiers"]}
        print(f"{device}: {total:.1f} s", flush=True)
    rows = []
    for device, run in results["runs"].items():
        for tier in ("T2", "T3", "T4"):
            info = run["tiers"].get(tier)
            if info:
                rate = info["samples"] * info["epochs"] / max(info["seconds"], 1e-9)
                rows.append(
                    (
                        f"{device} {tier}",
                        f"{info['samples']} x {info['epochs']} in {info['seconds']:.1f} s "
                        f"= {rate:.0f} samples/s ({info['device']})",
                    )
                )
        for tier in ("T3-int8", "T4-int8"):
            info = run["tiers"].get(tier)
            if info:
                rows.append((f"{device} {tier}", f"{info['int8_ms']:.2f} ms vs fp32 {info['fp32_ms']:.2f} ms"))
        rows.append((f"{device} whole job", f"{run['seconds']:.1f} s"))
    try:
        from _common import print_table, write_json

        print_table(
            f"training job speed: {args.frames} labeled + {args.frames} unlabeled frames, "
            f"{args.size}x{args.size}, {args.epochs} epochs",
            rows,
        )
        write_json(args.json, results)
    except ImportError:  # run outside the checkout
        for name, value in rows:
            print(f"{name:<20} {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
