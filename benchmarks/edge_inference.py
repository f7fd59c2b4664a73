#!/usr/bin/env python3
"""Edge inference benchmark: raw T4 session throughput versus our full per-frame path.

One run measures, on the same field frames and one ONNX Runtime thread:
  raw       InferenceSession.run for T4 on pre-processed batch-1 input (the limit)
  pipeline  image in -> preprocess -> cascade (T4) -> every uncertainty score
  cascade   the same with escalation to T3 enabled at the configured threshold
and prints frames/s, their ratio, uncertainty cost per frame (us and % of T4 inference),
p50/p99 latency, escalation rate and peak RSS. Rounds are interleaved so drift hits all rows.

Targets (not asserted): pipeline / raw >= 0.90 at batch 1; uncertainty <= 2 % of T4 inference.

Detector rows (``--detectors DIR``, default ./models-detection, else the detection-test profile built into
.cache; ``--no-detectors`` skips them): the T4 detector's raw session.run, letterbox, decoding + NMS
(OpenCV) per frame and as % of detector inference, the detection uncertainty scores, the full
per-frame detection path and the detection cascade with escalation to T3, on frames of the
detection world (several items per frame), interleaved the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _common import locate_models, machine, median, peak_rss_mb, percentile, print_table, write_json  # noqa: E402


def _time_raw(model, inputs) -> list[float]:
    session, names, input_name = model.session, model._output_names, model.input_name
    times = []
    for x in inputs:
        start = time.perf_counter()
        session.run(names, {input_name: x})
        times.append(time.perf_counter() - start)
    return times


def _time_pipeline(cascade, frames) -> tuple[list[float], list[float]]:
    """Return per-frame wall times and the uncertainty share the cascade measured in place."""
    times, uncertainty = [], []
    for frame in frames:
        start = time.perf_counter()
        result = cascade.infer(frame, stream="bench")
        times.append(time.perf_counter() - start)
        uncertainty.append(result.uncertainty_latency_s)
    return times, uncertainty


def _numpy_scores_us(edge, inputs) -> float:
    """Return us per frame to compute entropy/margin/least confidence in numpy (no in-graph scores)."""
    from fleetloop_core import uncertainty as unc

    outputs = [edge.run(x) for x in inputs]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for out in outputs:
            unc.entropy(out.probs), unc.margin(out.probs), unc.least_confidence(out.probs)
        best = min(best, (time.perf_counter() - start) / len(outputs))
    return best * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds (< 60 s)")
    parser.add_argument("--models", default=None, help="directory with T1..T4 (default: ./models or build)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--escalate-above", type=float, default=None)
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--detectors", default=None, help="detector tiers T3/T4 (default: ./models-detection or build)")
    parser.add_argument("--no-detectors", action="store_true", help="classifier rows only")
    args = parser.parse_args(argv)

    from fleetloop_sim import sim
    from fleetloop_core.cascade import Cascade, CascadeConfig
    from fleetloop_core.inference import TierModel

    models = locate_models(args.models, args.quick)
    n_frames = args.frames or (400 if args.quick else 2000)
    rounds = args.rounds or (5 if args.quick else 9)
    edge = TierModel.load(models / "T4", providers=("cpu",), intra_op_threads=1, warmup=20)
    high = TierModel.load(models / "T3", providers=("cpu",), intra_op_threads=1, warmup=20)
    site = sim.make_site(0, seed=0)
    frames = [f.image for f in sim.CameraStream(site, "bench", seed=0).frames(n_frames)]
    inputs = [edge.preprocessor.one(f) for f in frames]

    t4_only = Cascade(edge, high, CascadeConfig(escalation_enabled=False))
    cascade_config = (
        CascadeConfig() if args.escalate_above is None else CascadeConfig(escalate_above=args.escalate_above)
    )
    full = Cascade(edge, high, cascade_config)
    raw_fps, pipe_fps, casc_fps, pipe_lat, casc_lat, unc_lat = [], [], [], [], [], []
    escalations = 0
    for _ in range(rounds):
        raw = _time_raw(edge, inputs)
        pipe, pipe_unc = _time_pipeline(t4_only, frames)
        unc_lat.extend(pipe_unc)
        casc_start = time.perf_counter()
        results = [full.infer(f, stream="bench") for f in frames]
        casc_total = time.perf_counter() - casc_start
        raw_fps.append(len(raw) / sum(raw))
        pipe_fps.append(len(pipe) / sum(pipe))
        casc_fps.append(len(results) / casc_total)
        pipe_lat.extend(pipe)
        casc_lat.extend(r.total_latency_s for r in results)
        escalations += sum(r.escalated for r in results)
    unc_us = 1e6 * sum(unc_lat) / len(unc_lat)  # measured in place, after each real inference
    numpy_us = _numpy_scores_us(edge, inputs)
    raw_median = median(raw_fps)
    pipe_median = median(pipe_fps)
    t4_us = 1e6 / raw_median
    figures = {
        "frames": n_frames,
        "rounds": rounds,
        "raw_fps": round(raw_median, 1),
        "pipeline_fps": round(pipe_median, 1),
        "ratio_pipeline_to_raw": round(pipe_median / raw_median, 4),
        "t4_inference_us": round(t4_us, 1),
        "uncertainty_us": round(unc_us, 2),
        "uncertainty_pct_of_t4": round(100.0 * unc_us / t4_us, 3),
        "uncertainty_numpy_fallback_us": round(numpy_us, 2),
        "pipeline_p50_ms": round(percentile(pipe_lat, 50) * 1e3, 4),
        "pipeline_p99_ms": round(percentile(pipe_lat, 99) * 1e3, 4),
        "cascade_fps": round(median(casc_fps), 1),
        "cascade_p50_ms": round(percentile(casc_lat, 50) * 1e3, 4),
        "cascade_p99_ms": round(percentile(casc_lat, 99) * 1e3, 4),
        "escalation_rate": round(escalations / (n_frames * rounds), 4),
        "escalate_above": cascade_config.escalate_above,
        "escalation_signal": cascade_config.escalation_signal,
        "t4_parameters": edge.manifest.parameters,
        "t4_input": edge.manifest.input.shape,
        "frame_shape": list(frames[0].shape),
        "providers": edge.providers,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "models": str(models),
        "machine": machine(),
    }
    rows = [
        ("T4 raw session.run, batch 1 (frames/s)", f"{figures['raw_fps']:.0f}"),
        ("full per-frame pipeline, T4 path (frames/s)", f"{figures['pipeline_fps']:.0f}"),
        ("ratio pipeline / raw (target >= 0.90)", f"{figures['ratio_pipeline_to_raw']:.3f}"),
        ("T4 inference per frame (us)", f"{t4_us:.1f}"),
        ("uncertainty per frame, in place (us)", f"{unc_us:.2f}"),
        ("uncertainty, % of T4 inference (target <= 2)", f"{figures['uncertainty_pct_of_t4']:.2f}"),
        ("  same scores in numpy instead of in-graph (us)", f"{numpy_us:.2f}"),
        ("pipeline latency p50 / p99 (ms)", f"{figures['pipeline_p50_ms']:.3f} / {figures['pipeline_p99_ms']:.3f}"),
        (
            f"cascade T4->T3 (escalate {cascade_config.escalation_signal} > {cascade_config.escalate_above}) "
            "(frames/s)",
            f"{figures['cascade_fps']:.0f}",
        ),
        ("cascade latency p50 / p99 (ms)", f"{figures['cascade_p50_ms']:.3f} / {figures['cascade_p99_ms']:.3f}"),
        ("escalation rate", f"{figures['escalation_rate']:.3f}"),
        ("peak RSS (MiB)", f"{figures['peak_rss_mb']:.0f}"),
        ("execution providers", ", ".join(edge.providers)),
    ]
    print_table(f"Edge inference, {n_frames} field frames x {rounds} rounds, 1 ORT thread", rows)
    if not args.no_detectors:
        figures["detection"] = _detector_rows(args, n_frames, rounds)
    write_json(args.json, figures)
    return 0


def _locate_detectors(path: str | None, quick: bool) -> Path:
    """Return a directory with the T3/T4 detectors; build the detection-test profile when there is none."""
    from _common import ROOT

    if path and (Path(path) / "T4" / "manifest.json").exists():
        return Path(path)
    default = ROOT / "models-detection"
    if not path and (default / "T4" / "manifest.json").exists():
        return default
    from fleetloop_models.modelbuild import build_reference_models

    target = Path(path) if path else ROOT / ".cache" / ("models-detection-test" if quick else "models-detection")
    profile = "detection-test" if quick else "detection-default"
    print(f"building reference detectors ({profile} profile) into {target}", file=sys.stderr)
    build_reference_models(target, profile_name=profile, progress=True)
    return target


def _detector_rows(args, n_frames: int, rounds: int) -> dict:
    """Measure the detector path; print its table; return its figures."""
    from fleetloop_sim import sim
    from fleetloop_core.detection import DetectorModel
    from fleetloop_core.detection_cascade import DetectionCascade, DetectionCascadeConfig
    from fleetloop_core.uncertainty_detection import band_around

    models = _locate_detectors(args.detectors, args.quick)
    edge = DetectorModel.load(models / "T4", providers=("cpu",), intra_op_threads=1, warmup=20)
    high = DetectorModel.load(models / "T3", providers=("cpu",), intra_op_threads=1, warmup=20)
    site = sim.make_site(0, seed=0)
    frames = [f.image for f in sim.CameraStream(site, "bench", seed=0, task="detection").frames(n_frames)]
    prepared = [edge.prepare(f) for f in frames]
    floor = band_around(edge.spec.score_threshold, DetectionCascadeConfig().band_width)[0]
    t4_only = DetectionCascade(edge, high, DetectionCascadeConfig(escalation_enabled=False))
    full = DetectionCascade(edge, high, DetectionCascadeConfig())
    names, input_name = edge._output_names, edge.input_name
    raw_s, prep_s, decode_s, pipe_s, unc_s, casc_s, boxes = [], [], [], [], [], [], []
    escalations = 0
    for _ in range(rounds):
        outputs = []
        for model_input, _ in prepared:  # raw: the session alone
            start = time.perf_counter()
            outputs.append(edge.session.run(names, {input_name: model_input}))
            raw_s.append(time.perf_counter() - start)
        for frame in frames:  # letterbox + layout into the model input
            start = time.perf_counter()
            edge.prepare(frame)
            prep_s.append(time.perf_counter() - start)
        for out, (_, geometry) in zip(outputs, prepared):  # decoding + NMS + mapping back, on the same outputs
            start = time.perf_counter()
            found = edge.decode(out, 0, geometry, floor)
            decode_s.append(time.perf_counter() - start)
            boxes.append(len(found))
        for frame in frames:
            result = t4_only.infer(frame, stream="bench")
            pipe_s.append(result.total_latency_s)
            unc_s.append(result.uncertainty_latency_s)
        for frame in frames:
            result = full.infer(frame, stream="bench")
            casc_s.append(result.total_latency_s)
            escalations += result.escalated
    raw_us, decode_us = 1e6 * median(raw_s), 1e6 * median(decode_s)
    figures = {
        "detector_t4_raw_fps": round(1.0 / median(raw_s), 1),
        "detector_t4_inference_us": round(raw_us, 1),
        "letterbox_us": round(1e6 * median(prep_s), 2),
        "decode_nms_us": round(decode_us, 2),
        "decode_nms_pct_of_t4": round(100.0 * decode_us / raw_us, 2),
        "decode_nms_p99_us": round(1e6 * percentile(decode_s, 99), 2),
        "detection_uncertainty_us": round(1e6 * median(unc_s), 2),
        "detection_pipeline_fps": round(1.0 / median(pipe_s), 1),
        "detection_pipeline_p50_ms": round(percentile(pipe_s, 50) * 1e3, 4),
        "detection_pipeline_p99_ms": round(percentile(pipe_s, 99) * 1e3, 4),
        "detection_cascade_fps": round(1.0 / median(casc_s), 1),
        "detection_escalation_rate": round(escalations / (n_frames * rounds), 4),
        "candidate_boxes_per_frame": round(float(np.mean(boxes)), 2),
        "score_floor": round(floor, 3),
        "t4_layout": edge.spec.layout,
        "t3_layout": high.spec.layout,
        "t4_parameters": edge.manifest.parameters,
        "t4_input": edge.manifest.input.shape,
        "frame_shape": list(frames[0].shape),
        "detectors": str(models),
    }
    rows = [
        (
            f"T4 detector raw session.run, batch 1 ({edge.spec.layout} layout) (frames/s)",
            f"{figures['detector_t4_raw_fps']:.0f}",
        ),
        ("T4 detector inference per frame (us)", f"{raw_us:.1f}"),
        (
            f"letterbox {frames[0].shape[1]}x{frames[0].shape[0]} -> {edge.input_width}x{edge.input_height} (us)",
            f"{figures['letterbox_us']:.2f}",
        ),
        (
            f"decode + NMS (OpenCV) + map back, {figures['candidate_boxes_per_frame']:.1f} boxes/frame (us)",
            f"{decode_us:.2f}",
        ),
        ("decode + NMS, % of T4 detector inference", f"{figures['decode_nms_pct_of_t4']:.2f}"),
        ("detection uncertainty scores per frame (us)", f"{figures['detection_uncertainty_us']:.2f}"),
        ("full per-frame detection path, T4 (frames/s)", f"{figures['detection_pipeline_fps']:.0f}"),
        (
            "detection path latency p50 / p99 (ms)",
            f"{figures['detection_pipeline_p50_ms']:.3f} / {figures['detection_pipeline_p99_ms']:.3f}",
        ),
        ("detection cascade T4->T3 (frames/s)", f"{figures['detection_cascade_fps']:.0f}"),
        ("detection escalation rate", f"{figures['detection_escalation_rate']:.3f}"),
    ]
    print_table(f"Detectors ({models.name}), {n_frames} detection-world frames x {rounds} rounds, 1 ORT thread", rows)
    return figures


if __name__ == "__main__":
    sys.exit(main())
