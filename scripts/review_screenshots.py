#!/usr/bin/env python3
"""Regenerate the screenshots in docs/review_page.md of the review page (docs/img/review-label.png, review-routing.png).

Builds the same small simulated world the browser tests use (fixtures in tests/fixtures: a fleet
written into a file store, the cloud test teachers, the cloud loop up to its review step), larger
so that the curve is smoother, serves the page on 127.0.0.1 and drives Debian's Chromium. The
labeling screenshot is taken after a few answers given at a human pace (so the counters read like
a person's), on a frame that shows an item.

    .venv/bin/python scripts/review_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _world(root: Path, annotator: str, frames_per_robot: int, calibration: int):
    from fleetloop_core.inference import TierModel
    from fleetloop_models.modelbuild import build_reference_models
    from fleetloop_core.store import open_store

    from fleetloop_cloud.config import cloud_config_from_dict
    from fleetloop_cloud.loop import CloudLoop
    from fixtures import cloud_world

    test_models = build_reference_models(ROOT / ".cache" / "models-test", profile_name="test", progress=False)
    out = cloud_world.teacher_models(test_models)["T1"].parent
    store = open_store(f"file://{root / 'store'}")
    sites = cloud_world.fleet_sites(3)
    cloud_world.write_fleet(
        store,
        [(f"robot-{i + 1}", site) for i, site in enumerate(sites)],
        frames_per_robot,
        edge_model=TierModel.load(out / "T4", warmup=0),
    )
    data = cloud_world.cloud_config(
        root, f"file://{root / 'store'}", out, review={"annotator": annotator, "calibration_sample": calibration}
    )
    config = cloud_config_from_dict(data)
    with CloudLoop(config, progress=False) as loop:
        loop.ingest()
        loop.autolabel()
        loop.review()
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from fleetloop_cloud.review.app import create_app
    from fixtures.review_page import CHROMIUM, CHROMIUM_ARGS, ReviewServer

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        viewport = {"width": 1400, "height": 760}
        # routing view: the loop answered its calibration sample (simulated annotator) and routed
        routed = _world(Path(tmp) / "routed", "simulated", 150, 200)
        with ReviewServer(create_app(routed.work_path / "pool.sqlite", routed)) as server:  # nothing is saved
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(server.url + "/login")
            page.fill("#annotator-name", "maria")
            page.keyboard.press("Enter")
            page.goto(server.url + "/tuning/routing?target=0.9")
            page.wait_for_function("() => document.getElementById('risk-coverage').naturalWidth > 600")
            page.screenshot(path=str(out / "review-routing.png"), full_page=True)
        # labeling view: the loop waits for the page to answer its calibration sample
        waiting = _world(Path(tmp) / "waiting", "review-page", 100, 60)
        with ReviewServer(create_app(waiting.work_path / "pool.sqlite", waiting)) as server:
            page = browser.new_context(viewport=viewport).new_page()
            page.goto(server.url + "/login")
            page.fill("#annotator-name", "maria")
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-ready='1']")
            rng = random.Random(0)
            for number in range(40):
                page.wait_for_function(
                    "() => { const i = document.getElementById('frame'); return i.complete && i.naturalWidth > 0; }"
                )
                task = page.get_attribute("body", "data-task")
                suggestion = page.get_attribute("#suggestion", "data-label")
                if number >= 6 and suggestion not in ("", "10"):
                    break
                time.sleep(rng.uniform(1.2, 2.6))  # a person's pace, so the counters read like one
                page.keyboard.press("Enter" if suggestion else "n")
                page.wait_for_function(f"() => document.body.dataset.task !== '{task}'")
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "review-label.png"))
        browser.close()
    print(f"wrote {out / 'review-label.png'} and {out / 'review-routing.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
