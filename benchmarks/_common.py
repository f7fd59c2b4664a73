"""Helpers shared by the benchmark scripts: machine facts, tables, JSON, model location."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """Return what the numbers were measured on."""
    import onnxruntime as ort

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
    }


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_memory_mb(pid: int) -> tuple[float, float]:
    """Return another process's resident and unique (USS) memory in MiB, rounded to 0.1 (USS: what one more
    such process adds on a machine; shared libraries' pages are counted once). psutil errors propagate."""
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return round(info.rss / 2**20, 1), round(info.uss / 2**20, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a two-column table with rich when available."""
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("measure")
        table.add_column("value", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        Console().print(table)
    except ImportError:  # pragma: no cover - rich is a dependency, this is only a fallback
        print(title)
        for name, value in rows:
            print(f"  {name:<45} {value:>14}")


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def locate_models(models: str | None, quick: bool) -> Path:
    """Return a directory with T1..T4; build the test profile when none is given and --quick."""
    if models and (Path(models) / "T4" / "manifest.json").exists():
        return Path(models)
    default = ROOT / "models"
    if not models and (default / "T4" / "manifest.json").exists():
        return default
    from fleetloop_models.modelbuild import build_reference_models

    target = Path(models) if models else ROOT / ".cache" / ("models-test" if quick else "models")
    profile = "test" if quick else "default"
    print(f"building reference models ({profile} profile) into {target}", file=sys.stderr)
    build_reference_models(target, profile_name=profile, progress=True)
    return target
