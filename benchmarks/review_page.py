#!/usr/bin/env python3
"""Review page benchmark: how fast one answer round-trips, with 1, 2 and 4 annotators at once, and that none is lost.

One run builds a simulated world with the cloud loop (fixtures in tests/fixtures: a fleet written
into a file store, the cloud test teachers, ingest, auto-label, and the review step, which submits
its calibration sample to the ``review-page`` annotator), starts ``fleetloop-cloud review serve``
as its own process on 127.0.0.1, and drives it over real HTTP the way the page's script does:
sign in, ``POST /api/next``, then per frame ``GET /frame/<id>.png`` and ``POST /api/answer``
(which writes the answer in one transaction and leases the next frame). Annotators run as
threads, each with its own session; every answer waits for the previous one, as a person does.

Measured: answer latency (p50 / p95, ms; baseline: one annotator), image latency, answers per
second the server sustained; then, from the pool: answers recorded vs sent (lost), tasks answered
twice, frames handed to two annotators. Targets (not asserted): p95 answer latency well under
100 ms (a person needs >= 1 s per frame); 0 lost, 0 twice, 0 shared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # fixtures.cloud_world / review_page: the seeded world

from _common import machine, percentile, print_table, write_json  # noqa: E402


def build_world(root: Path, frames_per_robot: int, tasks: int) -> Path:
    """Return a config file of a world whose loop waits for ``tasks`` calibration answers from the page."""
    import yaml

    from fleetloop_core.inference import TierModel
    from fleetloop_models.modelbuild import build_reference_models
    from fleetloop_core.store import open_store

    from fleetloop_cloud.config import cloud_config_from_dict
    from fleetloop_cloud.loop import CloudLoop
    from fixtures import cloud_world

    test_models = build_reference_models(ROOT / ".cache" / "models-test", profile_name="test", progress=False)
    teachers = cloud_world.teacher_models(test_models)["T1"].parent
    store = open_store(f"file://{root / 'store'}")
    sites = cloud_world.fleet_sites(3)
    cloud_world.write_fleet(
        store,
        [(f"robot-{i + 1}", s) for i, s in enumerate(sites)],
        frames_per_robot,
        edge_model=TierModel.load(teachers / "T4", warmup=0),
    )
    data = cloud_world.cloud_config(
        root, f"file://{root / 'store'}", teachers, review={"annotator": "review-page", "calibration_sample": tasks}
    )
    with CloudLoop(cloud_config_from_dict(data), progress=False) as loop:
        loop.ingest()
        loop.autolabel()
        loop.review()
    path = root / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Annotator:
    """One browser session over HTTP: sign in, then answer frame after frame."""

    def __init__(self, port: int, name: str):
        self.port, self.name = port, name
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.answer_ms: list[float] = []
        self.image_ms: list[float] = []
        self.tasks: list[int] = []
        self.error: str | None = None
        response, body = self._call("GET", "/login")
        self.cookie = response.getheader("Set-Cookie").split(";")[0]
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', body.decode()).group(1)
        response, _ = self._call(
            "POST", "/login", f"annotator={name}&csrf={csrf}", {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert response.status == 303, response.status
        self.headers = {"Cookie": self.cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"}

    def _call(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if getattr(self, "cookie", None):
            headers.setdefault("Cookie", self.cookie)
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        return response, response.read()

    def run(self, count: int) -> None:
        try:
            response, body = self._call("POST", "/api/next", "", self.headers)
            item = json.loads(body)["item"]
            for number in range(count):
                if item is None:
                    self.error = f"queue empty after {number} answers"
                    return
                start = time.perf_counter()
                response, _ = self._call("GET", item["image_url"])
                self.image_ms.append((time.perf_counter() - start) * 1000)
                payload = {
                    "task_id": item["task_id"],
                    "seconds": 1.5,
                    **({"action": "accept"} if item["suggestion"] else {"action": "label", "label": 10}),
                }
                start = time.perf_counter()
                response, body = self._call("POST", "/api/answer", json.dumps(payload), self.headers)
                self.answer_ms.append((time.perf_counter() - start) * 1000)
                if response.status != 200:
                    self.error = f"HTTP {response.status}: {body[:200]!r}"
                    return
                self.tasks.append(item["task_id"])
                item = json.loads(body)["item"]
        except Exception as exc:  # reported in the table, not swallowed
            self.error = repr(exc)


def run_level(port: int, annotators: int, per_annotator: int, level: int) -> dict:
    """Return latency figures of ``annotators`` concurrent sessions answering ``per_annotator`` each."""
    people = [Annotator(port, f"level{level}-a{i}") for i in range(annotators)]
    threads = [threading.Thread(target=p.run, args=(per_annotator,)) for p in people]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    answer = [ms for p in people for ms in p.answer_ms]
    image = [ms for p in people for ms in p.image_ms]
    held = [t for p in people for t in p.tasks]
    return {
        "annotators": annotators,
        "answers": len(answer),
        "wall_s": round(wall, 3),
        "answers_per_s": round(len(answer) / wall, 1) if wall > 0 else None,
        "answer_p50_ms": round(percentile(answer, 50), 2),
        "answer_p95_ms": round(percentile(answer, 95), 2),
        "image_p50_ms": round(percentile(image, 50), 2),
        "tasks_seen_twice_by_clients": len(held) - len(set(held)),
        "errors": [p.error for p in people if p.error],
        "names": [p.name for p in people],
    }


def audit_pool(pool_path: Path, levels: list[dict]) -> dict:
    """Return what the pool recorded against what the clients sent."""
    import sqlite3

    db = sqlite3.connect(str(pool_path))
    sent = sum(level["answers"] for level in levels)
    names = [n for level in levels for n in level["names"]]
    marks = ",".join("?" * len(names))
    recorded = db.execute(
        f"SELECT COUNT(*) FROM tasks WHERE status='done' AND annotator IN ({marks})", names
    ).fetchone()[0]
    twice = db.execute(
        "SELECT COUNT(*) FROM (SELECT task_id FROM review_events WHERE action='answer' "
        "GROUP BY task_id HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    shared = db.execute(
        "SELECT COUNT(*) FROM (SELECT frame_id FROM review_events WHERE action='answer' "
        "GROUP BY frame_id HAVING COUNT(DISTINCT annotator) > 1)"
    ).fetchone()[0]
    measured = db.execute(
        f"SELECT COUNT(*) FROM tasks WHERE status='done' AND annotator IN ({marks}) AND seconds = 1.5", names
    ).fetchone()[0]
    db.close()
    return {
        "sent": sent,
        "recorded": recorded,
        "lost": sent - recorded,
        "answered_twice": twice,
        "frames_shared": shared,
        "seconds_recorded_as_measured": measured,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer answers per annotator (~1 min)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    per_annotator = 25 if args.quick else 60
    levels = (1, 2, 4)
    needed = per_annotator * sum(levels)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        config_path = build_world(root, frames_per_robot=needed // 3 + 20, tasks=needed + 10)
        seed_s = time.perf_counter() - started
        from fixtures.review_page import free_port

        port = free_port()
        page_config = root / "review_page.yaml"
        page_config.write_text(f"port: {port}\nreplay_dirs: []\n")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetloop_cloud.cli",
                "review",
                "serve",
                "--config",
                str(config_path),
                "--page-config",
                str(page_config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        break
                except OSError as exc:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("review page did not start: " + (server.stdout.read() or "")) from exc
                    time.sleep(0.2)
            results = [run_level(port, n, per_annotator, i) for i, n in enumerate(levels)]
        finally:
            server.terminate()
            server.wait(timeout=10)
        pool = audit_pool(root / "work" / "pool.sqlite", results)
    base = results[0]["answer_p50_ms"]
    rows = [
        ("world: frames / tasks waiting", f"{3 * (needed // 3 + 20)} / {needed + 10}"),
        ("seeding by the loop (s)", f"{seed_s:.1f}"),
    ]
    for r in results:
        n = r["annotators"]
        rows += [
            (f"{n} annotator(s): answers", str(r["answers"])),
            (f"{n} annotator(s): answer p50 / p95 (ms)", f"{r['answer_p50_ms']:.1f} / {r['answer_p95_ms']:.1f}"),
            (f"{n} annotator(s): p50 vs 1 annotator", f"{r['answer_p50_ms'] / base:.2f}x"),
            (f"{n} annotator(s): image p50 (ms)", f"{r['image_p50_ms']:.1f}"),
            (f"{n} annotator(s): answers/s sustained", f"{r['answers_per_s']}"),
        ]
        if r["errors"]:
            rows.append((f"{n} annotator(s): errors", "; ".join(r["errors"])[:80]))
    rows += [
        ("answers sent / recorded in the pool", f"{pool['sent']} / {pool['recorded']}"),
        ("lost", str(pool["lost"])),
        ("tasks answered twice", str(pool["answered_twice"])),
        ("frames handed to two annotators", str(pool["frames_shared"])),
        ("answers with the client's measured seconds", str(pool["seconds_recorded_as_measured"])),
    ]
    print_table(f"Review page over HTTP ({'quick' if args.quick else 'full'}; server: its own process)", rows)
    write_json(
        args.json,
        {"levels": results, "pool": pool, "seed_s": round(seed_s, 2), "quick": args.quick, "machine": machine()},
    )
    return 0 if pool["lost"] == 0 and pool["answered_twice"] == 0 and pool["frames_shared"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
