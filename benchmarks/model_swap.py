#!/usr/bin/env python3
"""Model hot-swap benchmark: a fixed-rate frame stream through the real inference path while models change.

A camera thread offers frames at a fixed rate into a 2-slot queue (a full queue drops the frame, as
a real driver does). The serving thread runs ``ModelManager.infer`` (cascade: T4 on every frame,
T3 on escalation). Meanwhile signed packages of new T4 versions are published as jobs on the local
job directory; the robot's deploy agent installs each one (signature, sha256), loads and warms it
on a background thread, runs the shadow check on the ring buffer and swaps it in between two
frames; the watchdog watches it. After M swaps one manual rollback.

Reported (all measured in this run):
  frames_dropped          frames the camera could not hand over (queue full); also counted inside
                          the swap windows, to tell the swaps' cost from other load on the machine
  steady p99 gap          p99 of the time between consecutive served frames outside any swap window
  max gap during swaps    the largest gap inside [job published, swap + 0.5 s] windows
  gap_ratio               max gap during swaps / steady p99 gap          (target <= 1.2)
  swap_seconds            job published -> first frame served by the new version (median of M)
  rollback_seconds        rollback requested -> first frame served by the previous version

The swapped packages are the same T4 network under new version strings: the swap's cost depends
on the model's size and graph, not on its weights.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import locate_models, machine, percentile, print_table, write_json  # noqa: E402


def _signed_version(source: Path, target: Path, version: str, private_pem: bytes) -> Path:
    from fleetloop_core.contracts.manifest import load_manifest, write_manifest
    from fleetloop_core.signing import sign_package

    shutil.copytree(source, target)
    manifest = load_manifest(target).model_copy(update={"version": version, "signature": None})
    write_manifest(manifest, target)
    sign_package(target, private_pem)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 swaps, 2 s apart (about 20 s)")
    parser.add_argument("--models", default=None, help="directory with T3/T4 (default: ./models or build)")
    parser.add_argument("--swaps", type=int, default=None, help="number of swaps M (default 3 quick, 8 full)")
    parser.add_argument("--rate-hz", type=float, default=30.0, help="camera frame rate (default 30 Hz)")
    parser.add_argument("--settle-s", type=float, default=None, help="steady seconds between swaps")
    parser.add_argument(
        "--background-nice",
        type=int,
        default=None,
        help="nice increment of the job thread (default: config's background_nice)",
    )
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)

    from fleetloop_cloud.fleet_jobs import deploy_document
    from fleetloop_cloud.job_service_local import LocalDirJobs
    from fleetloop_sim import sim
    from fleetloop_core.cascade import Cascade
    from fleetloop_core.control_plane import LocalControlPlane
    from fleetloop_core.deploy_agent import DeployAgent
    from fleetloop_core.inference import TierModel
    from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest
    from fleetloop_core.model_checks import ShadowConfig, WatchdogConfig
    from fleetloop_core.model_manager import ModelManager, ModelManagerConfig
    from fleetloop_core.model_store import ModelStore, PackageLocation, publish_package
    from fleetloop_core.signing import TrustedKeys, generate_keypair

    import os

    swaps = args.swaps or (3 if args.quick else 8)
    load_before = os.getloadavg()
    settle_s = args.settle_s or (2.0 if args.quick else 4.0)
    models = locate_models(args.models, args.quick)
    work = Path(tempfile.mkdtemp(prefix="fleetloop-swap-"))
    try:
        private_pem, public_pem = generate_keypair()
        packages = [
            _signed_version(models / "T4", work / "packages" / f"v{i}", f"swap-v{i}", private_pem)
            for i in range(swaps + 1)
        ]
        store = ModelStore(work / "robot", TrustedKeys.from_pems([public_pem]), keep_versions=3)
        first = store.install(PackageLocation(path=str(packages[0])))
        extra = {} if args.background_nice is None else {"background_nice": args.background_nice}
        config = ModelManagerConfig(
            **extra,
            providers=["cpu"],
            warmup_runs=3,
            ring_buffer_frames=32,
            shadow=ShadowConfig(min_frames=16),
            watchdog=WatchdogConfig(window_frames=int(args.rate_hz), min_frames=10),
        )
        cascade = Cascade(
            TierModel.load(first.directory, providers=["cpu"]), TierModel.load(models / "T3", providers=["cpu"])
        )
        manager = ModelManager(cascade, store, config)
        jobs = LocalDirJobs(work / "jobs")
        agent = DeployAgent(LocalControlPlane(work / "jobs", "bench-robot", poll_s=0.01), manager, poll_s=0.05)
        bucket = f"file://{work / 'bucket'}"
        frames = [f.image for f in sim.CameraStream(sim.make_site(0, 0), "bench-robot", seed=0).frames(64)]

        slots: queue.Queue = queue.Queue(maxsize=2)
        served: list[tuple[float, str]] = []  # (completion time, edge version)
        stop = threading.Event()
        counts = {"offered": 0, "dropped": 0, "errors": 0}
        dropped_at: list[float] = []
        period = 1.0 / args.rate_hz

        def camera() -> None:
            next_at = time.perf_counter()
            index = 0
            while not stop.is_set():
                counts["offered"] += 1
                try:
                    slots.put_nowait(frames[index % len(frames)])
                except queue.Full:
                    counts["dropped"] += 1
                    dropped_at.append(time.perf_counter())
                index += 1
                next_at += period
                time.sleep(max(0.0, next_at - time.perf_counter()))

        def serve() -> None:
            while not stop.is_set():
                try:
                    frame = slots.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    result = manager.infer(frame)
                    served.append((time.perf_counter(), result.model_versions["T4"]))
                except Exception:
                    counts["errors"] += 1

        # the "cloud" side runs in this process too: publish every package before the stream starts
        # and keep the main thread idle during swaps, so the gaps measured are the robot's own
        documents = []
        for i in range(1, swaps + 1):
            manifest = load_manifest(packages[i])
            prefix = publish_package(packages[i], bucket)
            documents.append(
                (
                    manifest.version,
                    deploy_document(manifest, bucket, prefix, (packages[i] / MANIFEST_NAME).read_bytes()),
                )
            )
        from tqdm import tqdm

        bar = tqdm(total=swaps, desc="swaps", unit="swap")  # made before the stream: its start-up is slow
        threads = [threading.Thread(target=camera, daemon=True), threading.Thread(target=serve, daemon=True)]
        for thread in threads:
            thread.start()
        agent.start()

        def first_served(version: str, after: float) -> float:
            return min(stamp for stamp, served_version in served if served_version == version and stamp >= after)

        published_at: list[tuple[str, float]] = []
        time.sleep(settle_s)
        for i, (version, document) in enumerate(documents, start=1):
            published = time.perf_counter()
            jobs.create_job(f"swap-{i}", ["bench-robot"], document)
            published_at.append((version, published))
            deadline = published + 60
            while jobs.executions(f"swap-{i}")["bench-robot"].status != "SUCCEEDED":
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"swap-{i}: {jobs.executions(f'swap-{i}')}")
                time.sleep(0.05)
            bar.update()
            time.sleep(settle_s)
        bar.close()

        previous = documents[-2][0] if len(documents) > 1 else load_manifest(packages[0]).version
        requested = time.perf_counter()
        outcome = manager.rollback("edge", reason="benchmark")
        time.sleep(settle_s)
        stop.set()
        agent.stop()
        for thread in threads:
            thread.join(timeout=5)
        manager.close()
        swap_seconds, windows = [], []
        for version, published in published_at:
            serving_at = first_served(version, published)
            swap_seconds.append(serving_at - published)
            windows.append((published, serving_at + 0.5))
        rolled_at = first_served(previous, requested)
        rollback_seconds = rolled_at - requested
        windows.append((requested, rolled_at + 0.5))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stamps = [s for s, _ in served]
    gaps = [(b - a, a, b) for a, b in zip(stamps, stamps[1:])]
    in_window = [g for g, a, b in gaps if any(a < end and b > start for start, end in windows)]
    per_window = [
        max([g for g, a, b in gaps if a < end and b > start] or [float("nan")]) * 1000 for start, end in windows
    ]
    steady = [g for g, a, b in gaps if not any(a < end + 0.5 and b > start - 0.5 for start, end in windows)]
    steady_p99 = percentile(steady, 99)
    dropped_in_swaps = sum(1 for t in dropped_at if any(start <= t <= end for start, end in windows))
    max_swap_gap = max(in_window) if in_window else float("nan")
    figures = {
        "frames_offered": counts["offered"],
        "frames_served": len(served),
        "frames_dropped": counts["dropped"],
        "frames_dropped_during_swaps": dropped_in_swaps,
        "inference_errors": counts["errors"],
        "rate_hz": args.rate_hz,
        "swaps": swaps,
        "steady_gap_p50_ms": percentile(steady, 50) * 1000,
        "steady_gap_p99_ms": steady_p99 * 1000,
        "max_gap_during_swaps_ms": max_swap_gap * 1000,
        "gap_ratio": max_swap_gap / steady_p99,
        "max_gap_per_window_ms": per_window,  # the swaps in order, the rollback last
        "swap_seconds": percentile(swap_seconds, 50),
        "swap_seconds_all": swap_seconds,
        "swap_seconds_max": max(swap_seconds),
        "rollback_seconds": rollback_seconds,
        "rollback_outcome": outcome.status,
        "machine": machine(),
        "background_nice": config.background_nice,
        # other work on the machine shows up as gaps in both the steady and the swap windows
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
    }
    print_table(
        f"Model hot-swap at {args.rate_hz:.0f} Hz ({swaps} swaps + 1 rollback)",
        [
            ("frames offered / served", f"{counts['offered']} / {len(served)}"),
            ("frames dropped (during swap windows)", f"{counts['dropped']} ({dropped_in_swaps})"),
            ("inference errors", str(counts["errors"])),
            ("steady inter-frame gap p50 (ms)", f"{figures['steady_gap_p50_ms']:.2f}"),
            ("steady inter-frame gap p99 (ms)", f"{figures['steady_gap_p99_ms']:.2f}"),
            ("max gap during swaps (ms)", f"{figures['max_gap_during_swaps_ms']:.2f}"),
            ("gap ratio (target <= 1.2)", f"{figures['gap_ratio']:.3f}"),
            ("job published -> serving, median (s)", f"{figures['swap_seconds']:.3f}"),
            ("job published -> serving, max (s)", f"{figures['swap_seconds_max']:.3f}"),
            ("rollback -> previous serving (s)", f"{rollback_seconds:.4f}"),
            ("machine load average before / after", f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"),
        ],
    )
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
