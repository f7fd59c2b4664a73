#!/usr/bin/env python3
"""Pool ingest benchmark: frames/s into the cloud's pool, one worker and several, SQLite and PostgreSQL.

The same uploads (rendered field frames of the simulated world, PNG, with their sidecars, written into a
``file://`` store as ``--robots`` robots upload them) are ingested into a fresh pool by:

  sqlite           one worker, the embedded default (a pool-wide write lock: one writer at a time)
  postgres-fast    1 and ``--workers`` workers on a PostgreSQL cluster with ``fsync=off`` (the tests')
  postgres-durable 1 and ``--workers`` workers on a cluster with PostgreSQL's defaults (fsync,
                   synchronous_commit and full_page_writes on: what a production pool runs)

Workers are processes; each takes whole robots' prefixes (``frames/<robot>/``), as ingest workers split
a store. Each case runs ``--repeats`` times on a fresh database; the figure is the median of frames/s
from the common start to the last worker's end. Ratios are against one worker on the same cluster and
against SQLite, measured in the same run. After every pass the pool is checked: every upload a frame row
once (0 lost, 0 twice).

Targets (not asserted): several workers faster than one on the same PostgreSQL; durable within 2x of
fast (a commit per frame flushes the WAL).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fixtures.uploads: a robot's upload

from _common import machine, median, print_table, write_json  # noqa: E402


def write_uploads(store_dir: Path, robots: int, frames: int) -> int:
    """Write ``frames`` field frames of each robot (a site each, round-robin) into a file store; return the count."""
    from fleetloop_sim import sim
    from fleetloop_core.store import open_store
    from fixtures.uploads import upload

    store = open_store(f"file://{store_dir}")
    for robot in range(robots):
        site = sim.make_site(robot % 3, seed=0)
        data = sim.field_test_set(site, frames, seed=robot, height=128, width=128, split="all")
        for index, image in enumerate(data.images):
            upload(store, f"robot-{robot}", image, index, int(data.labels[index]), site=site.name, track_hint=None)
    return robots * frames


def worker(uri: str, store_uri: str, cache: str, start: float, prefixes: list[str]) -> dict:
    """One ingest worker (a process): one pass over each prefix into the pool; frames and its end time."""
    from fleetloop_sim.dataset import LABELS
    from fleetloop_core.store import open_store
    from fleetloop_cloud.config import IngestConfig
    from fleetloop_cloud.frames import FrameCache
    from fleetloop_cloud.ingest import ingest
    from fleetloop_cloud.pool import Pool

    store, ingested = open_store(store_uri), 0
    with Pool(uri) as pool:
        while time.time() < start:  # every worker starts together
            time.sleep(0.001)
        for prefix in prefixes:
            config = IngestConfig(prefix=prefix)
            ingested += ingest(store, pool, FrameCache(cache, store), 1, config, LABELS, progress=False).ingested
    return {"ingested": ingested, "ended": time.time()}


def one_pass(uri: str, store_uri: str, work: Path, robots: int, workers: int, uploads: int) -> dict:
    """Ingest every upload with ``workers`` processes into the pool at ``uri``; frames/s and the check."""
    from fleetloop_cloud.pool import Pool

    with Pool(uri):  # the schema, before the clock starts
        pass
    shares = [[f"frames/robot-{r}/" for r in range(robots) if r % workers == w] for w in range(workers)]
    start = time.time() + 1.0  # after every worker process has imported and connected
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(worker, uri, store_uri, str(work / f"cache-{w}"), start, shares[w]) for w in range(workers)
        ]
        results = [f.result() for f in futures]
    seconds = max(r["ended"] for r in results) - start
    with Pool(uri) as pool:
        rows = len(pool.frames(include_duplicates=True))
        keys = len(pool.known_sidecar_keys())
    return {
        "frames_per_s": rows / seconds,
        "seconds": seconds,
        "lost": uploads - keys,  # an upload the pool does not know
        "twice": sum(r["ingested"] for r in results) - keys,  # the workers ingested more than the pool holds
    }


def run_case(name: str, uris, store_uri: str, work: Path, robots: int, workers: int, uploads: int, repeats: int):
    """Run one case ``repeats`` times, a fresh pool each (``uris()`` gives one); median frames/s and the checks."""
    from tqdm.auto import tqdm

    passes = []
    for repeat in tqdm(range(repeats), desc=name, unit="pass", leave=False):
        passes.append(one_pass(uris(repeat), store_uri, work / f"{name}-{repeat}", robots, workers, uploads))
    return {
        "workers": workers,
        "frames_per_s": round(median([p["frames_per_s"] for p in passes]), 1),
        "passes_frames_per_s": [round(p["frames_per_s"], 1) for p in passes],
        "lost": max(p["lost"] for p in passes),
        "twice": max(p["twice"] for p in passes),
    }


def run(robots: int, frames: int, workers: int, repeats: int, work: Path) -> dict:
    from fleetloop_sim.postgres import PostgresServer

    store_dir = work / "store"
    uploads = write_uploads(store_dir, robots, frames)
    store_uri, cases, settings = f"file://{store_dir}", {}, {}

    def sqlite(repeat: int) -> str:
        return str(work / f"pool-{repeat}.sqlite")

    cases["sqlite"] = run_case("sqlite", sqlite, store_uri, work, robots, 1, uploads, repeats)
    for label, durable in (("postgres-fast", False), ("postgres-durable", True)):
        with PostgresServer(durable=durable) as server:
            settings[label] = server.settings()
            for count in (1, workers):
                cases[f"{label}-{count}"] = run_case(
                    f"{label}-{count}",
                    lambda _: server.create_database(),
                    store_uri,
                    work,
                    robots,
                    count,
                    uploads,
                    repeats,
                )
    for label in ("postgres-fast", "postgres-durable"):
        many, one = cases[f"{label}-{workers}"], cases[f"{label}-1"]
        many["vs_one_worker"] = round(many["frames_per_s"] / one["frames_per_s"], 2)
    for case in cases.values():
        case["vs_sqlite"] = round(case["frames_per_s"] / cases["sqlite"]["frames_per_s"], 2)
    return {"uploads": uploads, "robots": robots, "cases": cases, "postgres_settings": settings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--frames", type=int, default=400, help="uploads per robot")
    parser.add_argument("--workers", type=int, default=2, help="ingest workers beside one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 robots x 60 frames, one pass each")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.robots, args.frames, args.repeats = 2, 60, 1
    with tempfile.TemporaryDirectory(prefix="fleetloop-pool-ingest-") as tmp:
        result = run(args.robots, args.frames, args.workers, args.repeats, Path(tmp))
    result["machine"] = machine()
    rows = [("uploads", f"{result['uploads']} ({result['robots']} robots)")]
    for name, case in result["cases"].items():
        ratio = f", {case['vs_one_worker']}x one worker" if "vs_one_worker" in case else ""
        rows.append(
            (
                f"{name} ({case['workers']} worker{'s' if case['workers'] > 1 else ''})",
                f"{case['frames_per_s']} frames/s ({case['vs_sqlite']}x SQLite{ratio}); lost {case['lost']}, "
                f"twice {case['twice']}",
            )
        )
    for label, values in result["postgres_settings"].items():
        rows.append((f"{label} settings", ", ".join(f"{k}={v}" for k, v in values.items())))
    print_table(f"Pool ingest ({os.cpu_count()} cores)", rows)
    write_json(args.json, result)
    return 0 if all(c["lost"] == 0 and c["twice"] == 0 for c in result["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
