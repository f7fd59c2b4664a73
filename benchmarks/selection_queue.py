#!/usr/bin/env python3
"""Selection and upload-queue benchmark: per-frame selection cost, queue rates, budget convergence, kill -9.

One run measures, on one core:
  selection    Selector.offer per frame, in place after each real cascade call on field
               frames (shipped config: adaptive budget, dedup, random fraction), in us and in
               % of T4 inference measured on the same frames, in wall time and in this
               thread's CPU time (what neighbours preempting us cannot inflate); the dropped
               and candidate paths separately, and the same offers back to back
  queue        put (persist an encoded record: fsync'd file + SQLite commit) and drain
               (upload frame + sidecar, delete) rates to the file store and to a local S3
               server (moto, server mode, loopback)
  convergence  the adaptive-budget policy on a stream whose score distribution shifts halfway
               (both directions): kept rate versus budget, settled within 2,000 frames?
  faults       uploader processes SIGKILLed at random moments; accepted, lost, duplicated

Targets (not asserted): uncertainty + selection <= 2 % of T4 inference per frame; kept rate
within +-10 % of the budget within 2,000 frames after the shift; 0 lost and 0 duplicated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fixtures.s3: the moto server

import numpy as np  # noqa: E402

from _common import locate_models, machine, median, peak_rss_mb, print_table, write_json  # noqa: E402

PERIOD_NS = 100_000_000  # 10 Hz


def _clock_overhead_ns() -> int:
    """Return the cost of one pair of thread_time_ns() calls (subtracted from CPU-time samples)."""
    pairs = []
    for _ in range(2000):
        start = time.thread_time_ns()
        pairs.append(time.thread_time_ns() - start)
    return int(sorted(pairs)[len(pairs) // 2])


def bench_selection(models: Path, n_frames: int, rounds: int) -> dict:
    """Return per-frame selection cost measured in place: after each real cascade call, as on a robot.

    Each frame goes through the cascade (T4, escalating to T3 as configured), then its result is
    offered to the selector; only ``offer`` is timed for selection, and T4 inference is the
    session time the cascade measured for the same frame, so both share the machine's state
    (caches, frequency, neighbours' load) frame by frame.
    """
    from fleetloop_sim import sim
    from fleetloop_core.cascade import Cascade, CascadeConfig
    from fleetloop_core.inference import TierModel
    from fleetloop_core.selection import Selector
    from fleetloop_core.selection_config import load_selection_config

    edge = TierModel.load(models / "T4", providers=("cpu",), intra_op_threads=1, warmup=20)
    high = TierModel.load(models / "T3", providers=("cpu",), intra_op_threads=1, warmup=20)
    stream = sim.CameraStream(sim.make_site(1, seed=0), "bench", seed=0)
    frames = [f.image for f in stream.frames(n_frames)]
    config = load_selection_config()
    offer_rounds, t4_rounds, unc_rounds, keep_rates = [], [], [], []
    offer_cpu_rounds, t4_cpu_rounds = [], []
    dropped_us, candidate_us, escalated = [], [], []
    clock = _clock_overhead_ns()
    session, names, input_name = edge.session, edge._output_names, edge.input_name
    for _ in range(rounds):
        cascade = Cascade(edge, high, CascadeConfig())
        selector = Selector(config, "bench", edge.labels)
        offer_s, t4_s, unc_s, kept, offer_cpu_ns, t4_cpu_ns = 0.0, 0.0, 0.0, 0, 0, 0
        for i, frame in enumerate(frames):
            # T4 alone in CPU time of this thread (1 ORT thread runs in the caller): what the
            # neighbours' processes cannot inflate by preempting us
            model_input = edge.preprocessor.one(frame)
            cpu = time.thread_time_ns()
            session.run(names, {input_name: model_input})
            t4_cpu_ns += time.thread_time_ns() - cpu - clock
            result = cascade.infer(frame, stream="front")
            cpu = time.thread_time_ns()
            start = time.perf_counter()
            decision = selector.offer(frame, result, i * PERIOD_NS, stream="front")
            elapsed = time.perf_counter() - start
            offer_cpu_ns += time.thread_time_ns() - cpu - clock
            offer_s += elapsed
            t4_s += result.latency_s["T4"]
            unc_s += result.uncertainty_latency_s
            kept += decision.keep
            escalated.append(result.escalated)
            is_candidate = decision.keep or decision.duplicate or decision.budget_limited
            (candidate_us if is_candidate else dropped_us).append(elapsed * 1e6)
        offer_rounds.append(offer_s / n_frames * 1e6)
        t4_rounds.append(t4_s / n_frames * 1e6)
        unc_rounds.append(unc_s / n_frames * 1e6)
        offer_cpu_rounds.append(offer_cpu_ns / n_frames / 1e3)
        t4_cpu_rounds.append(t4_cpu_ns / n_frames / 1e3)
        keep_rates.append(kept / n_frames)
    # the same offers again, back to back on stored results: the cost without ONNX Runtime in between
    results = [Cascade(edge, high, CascadeConfig()).infer(f, stream="front") for f in frames]
    isolated = []
    for _ in range(rounds):
        selector = Selector(config, "bench", edge.labels)
        start = time.perf_counter()
        for i, (frame, result) in enumerate(zip(frames, results)):
            selector.offer(frame, result, i * PERIOD_NS, stream="front")
        isolated.append((time.perf_counter() - start) / n_frames * 1e6)
    t4_us, selection_us, uncertainty_us = median(t4_rounds), median(offer_rounds), median(unc_rounds)
    t4_cpu_us, selection_cpu_us = median(t4_cpu_rounds), median(offer_cpu_rounds)
    return {
        "frames": n_frames,
        "rounds": rounds,
        "t4_inference_us": round(t4_us, 1),
        "t4_inference_cpu_us": round(t4_cpu_us, 1),
        "selection_us": round(selection_us, 2),
        "selection_cpu_us": round(selection_cpu_us, 2),
        "selection_pct_of_t4_wall": round(100 * selection_us / t4_us, 3),
        "selection_pct_of_t4_cpu": round(100 * selection_cpu_us / t4_cpu_us, 3),
        "selection_dropped_path_us": round(median(dropped_us), 2),
        "selection_back_to_back_us": round(median(isolated), 2),
        "selection_candidate_path_us": round(median(candidate_us), 1) if candidate_us else None,
        "candidate_fraction": round(len(candidate_us) / (len(candidate_us) + len(dropped_us)), 4),
        "keep_rate": round(median(keep_rates), 4),
        "uncertainty_us": round(uncertainty_us, 2),
        "selection_pct_of_t4": round(100 * selection_cpu_us / t4_cpu_us, 3),
        "uncertainty_plus_selection_pct_of_t4": round(100 * (selection_us + uncertainty_us) / t4_us, 3),
        "policy": config.policy.name,
        "frames_per_hour_budget": config.budget.frames_per_hour,
        "escalation_rate": round(float(np.mean(escalated)), 3),
    }


def _records(n: int, seed: int = 0):
    from fleetloop_sim import sim
    from fleetloop_core.record import EncodedRecord

    stream = sim.CameraStream(sim.make_site(2, seed=seed), "bench-queue", seed=seed)
    records, encode_s = [], []
    for i, frame in enumerate(stream.frames(n)):
        start = time.perf_counter()
        records.append(
            EncodedRecord.from_image(
                frame.image,
                {"robot_id": "bench", "stamp_ns": frame.stamp_ns + 1, "prediction": 0},
                priority=(i % 97) / 97,
            )
        )
        encode_s.append(time.perf_counter() - start)
    return records, median(encode_s)


def bench_queue(n_records: int, s3_endpoint: str | None) -> dict:
    """Return put and drain rates (records/s, MB/s) to the file store and, if given, to S3."""
    from fleetloop_core.store import open_store
    from fleetloop_core.upload_queue import QueueConfig, UploadQueue
    from fleetloop_core.uploader import Uploader

    records, encode_s = _records(n_records)
    size = sum(r.size_bytes for r in records)
    figures = {
        "records": n_records,
        "mean_record_bytes": round(size / n_records),
        "png_encode_ms": round(encode_s * 1e3, 3),
    }
    targets = [("file", None)] + ([("s3", s3_endpoint)] if s3_endpoint else [])
    for name, endpoint in targets:
        with tempfile.TemporaryDirectory() as work:
            if name == "file":
                uri = f"file://{work}/store"
            else:
                from fixtures.s3 import MotoServer  # noqa: F401  (server started by the caller)
                import boto3

                bucket = f"bench-{int(time.time() * 1000)}"
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
                uri = f"s3://{bucket}/fleet?endpoint_url={endpoint}"
            config = QueueConfig(directory=f"{work}/queue", store=uri)
            with UploadQueue.from_config(config) as queue:
                start = time.perf_counter()
                for record in records:
                    queue.put(record)
                put_s = time.perf_counter() - start
                uploader = Uploader(queue, open_store(uri), config)
                report = uploader.drain()
                # a parked camera can record the very same frame twice: one key, queued once
                assert report.uploaded == len({r.frame_key for r in records}), report
        figures["put_per_s"] = round(n_records / put_s, 1)
        figures[f"drain_{name}_per_s"] = round(n_records / report.seconds, 1)
        figures[f"drain_{name}_mb_per_s"] = round(size / report.seconds / 1e6, 2)
    return figures


def _convergence_run(frames: int, shift_at: int, low, high, budget_fraction: float, seed: int) -> dict:
    from fleetloop_core.cascade import FrameResult
    from fleetloop_core.selection import Selector
    from fleetloop_core.selection_config import selection_config

    frames_per_hour = budget_fraction * 36_000
    config = selection_config(
        {
            "policy": {"name": "adaptive_budget"},
            "dedup": {"enabled": False},
            "random_fraction": 0.002,
            "budget": {"frames_per_hour": frames_per_hour},
        }
    )
    selector = Selector(config, "bench")
    probs = np.full(11, 1 / 11, np.float32)
    rng = np.random.default_rng(seed)
    image = np.zeros((8, 8, 3), np.uint8)
    kept = np.zeros(frames, bool)
    for i in range(frames):
        a, b = low if i < shift_at else high
        s = float(rng.beta(a, b))
        result = FrameResult(
            label=0,
            label_name="x",
            confidence=0.5,
            tier_used="T4",
            probs=probs,
            scores={k: s for k in ("entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty")},
            escalated=False,
            latency_s={},
            model_versions={},
            tier_outputs={},
            embeddings={},
        )
        kept[i] = selector.offer(image, result, i * PERIOD_NS).keep
    settled = float(kept[shift_at + 2000 :].mean())
    blocks = [round(float(kept[i : i + 1000].mean()), 4) for i in range(shift_at, len(kept) - 999, 1000)]
    return {
        "before": round(float(kept[1000:shift_at].mean()), 4),
        "after_2000": round(settled, 4),
        "error_pct": round(100 * abs(settled - budget_fraction) / budget_fraction, 2),
        "blocks_after_shift": blocks,
    }


def bench_convergence(frames: int) -> dict:
    budget_fraction = 0.05
    shift_at = frames // 2
    up = _convergence_run(frames, shift_at, (2, 5), (5, 2), budget_fraction, 1)
    down = _convergence_run(frames, shift_at, (5, 2), (2, 8), budget_fraction, 2)
    return {
        "budget_fraction": budget_fraction,
        "frames": frames,
        "shift_at": shift_at,
        "scores_rise": up,
        "scores_fall": down,
        "budget_error_pct": max(up["error_pct"], down["error_pct"]),
    }


def bench_faults(kills_file: int, kills_s3: int, s3_endpoint: str | None) -> dict:
    from fleetloop_sim.faults import kill_campaign, synthetic_records
    from tqdm import tqdm

    totals = {"kills": 0, "accepted": 0, "committed": 0, "lost": 0, "duplicated": 0, "half_written": 0, "seconds": 0.0}
    runs = [("file", kills_file, None)] + ([("s3", kills_s3, s3_endpoint)] if s3_endpoint and kills_s3 else [])
    for name, kills, endpoint in runs:
        with tempfile.TemporaryDirectory() as work:
            env = {}
            if name == "file":
                uri = f"file://{work}/store"
            else:
                import boto3

                bucket = f"faults-{int(time.time() * 1000)}"
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
                uri = f"s3://{bucket}/fleet?endpoint_url={endpoint}"
                env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
            bar = tqdm(total=kills, desc=f"kill -9 ({name} store)", unit="kill")
            report = kill_campaign(
                Path(work) / "work",
                uri,
                lambda i: synthetic_records(i, 120, seed=7),
                kills=kills,
                seed=7,
                env=env,
                progress=lambda k, bar=bar: bar.update(1),
            )
            bar.close()
        audit = report.audit
        totals[f"kills_{name}"] = report.kills
        for key in ("accepted", "committed", "lost", "duplicated", "half_written"):
            totals[key] += getattr(audit, key)
        totals["kills"] += report.kills
        totals["seconds"] += report.seconds
        if audit.problems:
            totals.setdefault("problems", []).extend(audit.problems[:10])
    totals["seconds"] = round(totals["seconds"], 1)
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames, records and kills (~1-2 min)")
    parser.add_argument("--models", default=None, help="directory with T3/T4 (default: ./models or build)")
    parser.add_argument("--kills", type=int, default=None, help="total kills (default 100, --quick 30)")
    parser.add_argument("--no-s3", action="store_true", help="skip the local S3 server rows")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)

    load_start = os.getloadavg()[0]
    models = locate_models(args.models, args.quick)
    kills = args.kills if args.kills is not None else (30 if args.quick else 100)
    kills_s3 = 0 if args.no_s3 else kills // 3
    server = None
    if not args.no_s3:
        from fixtures.s3 import MotoServer

        server = MotoServer()
    try:
        endpoint = server.endpoint_url if server else None
        selection = bench_selection(models, 400 if args.quick else 2000, 3 if args.quick else 7)
        queue = bench_queue(60 if args.quick else 300, endpoint)
        convergence = bench_convergence(12000 if args.quick else 24000)
        faults = bench_faults(kills - kills_s3, kills_s3, endpoint)
    finally:
        if server:
            server.stop()
    figures = {
        "selection_pct_of_t4": selection["selection_pct_of_t4"],
        "uncertainty_plus_selection_pct_of_t4": selection["uncertainty_plus_selection_pct_of_t4"],
        "budget_error_pct": convergence["budget_error_pct"],
        "kills": faults["kills"],
        "lost": faults["lost"],
        "duplicated": faults["duplicated"],
        "selection": selection,
        "queue": queue,
        "convergence": convergence,
        "faults": faults,
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "models": str(models),
        "quick": args.quick,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": machine(),
    }
    up, down = convergence["scores_rise"], convergence["scores_fall"]
    rows = [
        (
            "T4 inference per frame, wall / CPU time (us)",
            f"{selection['t4_inference_us']:.1f} / {selection['t4_inference_cpu_us']:.1f}",
        ),
        (
            "selection per frame in place, wall / CPU time (us)",
            f"{selection['selection_us']:.2f} / {selection['selection_cpu_us']:.2f}",
        ),
        ("  same offers back to back, no inference between (us)", f"{selection['selection_back_to_back_us']:.2f}"),
        ("  dropped path (median us)", f"{selection['selection_dropped_path_us']:.2f}"),
        ("  candidate path: budget, hash, dedup, record (median us)", f"{selection['selection_candidate_path_us']}"),
        (
            "  candidates / kept, fraction of frames",
            f"{selection['candidate_fraction']:.3f} / {selection['keep_rate']:.3f}",
        ),
        ("uncertainty per frame, in the cascade (us)", f"{selection['uncertainty_us']:.2f}"),
        (
            "selection, % of T4 inference, wall / CPU time",
            f"{selection['selection_pct_of_t4_wall']:.2f} / {selection['selection_pct_of_t4_cpu']:.2f}",
        ),
        (
            "uncertainty + selection, % of T4, wall (target <= 2)",
            f"{selection['uncertainty_plus_selection_pct_of_t4']:.2f}",
        ),
        ("PNG encode per kept 128x128 frame (ms)", f"{queue['png_encode_ms']:.2f}"),
        ("queue put, fsync'd file + commit (records/s)", f"{queue['put_per_s']:.0f}"),
        (
            "drain to file store (records/s, MB/s)",
            f"{queue['drain_file_per_s']:.0f}, {queue['drain_file_mb_per_s']:.1f}",
        ),
    ]
    if "drain_s3_per_s" in queue:
        rows.append(
            (
                "drain to local S3 server (records/s, MB/s)",
                f"{queue['drain_s3_per_s']:.0f}, {queue['drain_s3_mb_per_s']:.1f}",
            )
        )
    rows += [
        (
            f"adaptive budget {convergence['budget_fraction']:.0%}: scores rise, kept before / after",
            f"{up['before']:.4f} / {up['after_2000']:.4f}",
        ),
        (
            f"adaptive budget {convergence['budget_fraction']:.0%}: scores fall, kept before / after",
            f"{down['before']:.4f} / {down['after_2000']:.4f}",
        ),
        (
            "kept rate per 1,000 frames after the shift (rise)",
            " ".join(f"{b:.3f}" for b in up["blocks_after_shift"][:4]),
        ),
        (
            "kept rate per 1,000 frames after the shift (fall)",
            " ".join(f"{b:.3f}" for b in down["blocks_after_shift"][:4]),
        ),
        ("budget error 2,000+ frames after shift (%, target <= 10)", f"{convergence['budget_error_pct']:.1f}"),
        (
            f"kill -9 at random moments (file {faults.get('kills_file', 0)}, S3 {faults.get('kills_s3', 0)})",
            f"{faults['kills']}",
        ),
        ("  frames accepted / committed", f"{faults['accepted']} / {faults['committed']}"),
        (
            "  lost / duplicated / half-written (target 0)",
            f"{faults['lost']} / {faults['duplicated']} / {faults['half_written']}",
        ),
        ("peak RSS (MiB)", f"{figures['peak_rss_mb']:.0f}"),
        ("load average at start / end (2 cores shared)", f"{load_start:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    print_table(f"Selection and upload queue ({'quick' if args.quick else 'full'}; models {models})", rows)
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
