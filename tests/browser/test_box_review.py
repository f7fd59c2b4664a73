"""The box view of the review page in Debian's Chromium: accept suggested boxes with one key, drag a corner to
adjust, draw a missing box, delete a wrong one, change a class with a number key, skip; the answers land in the
box tasks with their edits and measured seconds, and the detection loop's next review step collects them."""

import json

import pytest

from fleetloop_sim import sim
from fleetloop_core.detection import DetectorModel
from fleetloop_core.store import open_store

from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.review.app import create_app
from fleetloop_cloud.simfleet import SimulatedFleet

from fixtures.cloud_world import cloud_config
from fixtures.review_page import ReviewServer

VIEWPORT = {"width": 1400, "height": 900}
A, B = [20.0, 20.0, 60.0, 60.0, 1], [70.0, 70.0, 110.0, 110.0, 2]


@pytest.fixture
def box_world(tmp_path, detection_cloud_models):
    """A pool with ingested, auto-boxed detection frames and five box tasks with known suggestions."""
    store = open_store(f"file://{tmp_path / 'store'}")
    edge = DetectorModel.load(detection_cloud_models["T4"], providers=("cpu",), warmup=0)
    sites = sim.make_fleet_sites(2, seed=0)
    SimulatedFleet(store, [("robot-0", sites[0])], seed=3, edge_model=edge, task="detection").upload(8)
    data = cloud_config(
        tmp_path,
        store.uri,
        detection_cloud_models["T1"].parent,
        review={"annotator": "simulated"},
        detection={"annotator": "review-page"},
    )
    config = cloud_config_from_dict(data)
    with CloudLoop(config, progress=False) as loop:
        loop.ingest()
        loop.autolabel()
        frames = [r["id"] for r in loop.pool.frames()][:5]
        suggestion = BoxSet.from_rows([A, B], with_scores=False)
        ids = loop.task.boxes.add_tasks(1, "review", [(f, suggestion) for f in frames])
        loop.task.boxes.mark_submitted(ids, "review-page")
    return config, ids, frames


def _canvas_point(page, x, y):
    box = page.locator("#box-canvas").bounding_box()
    scale = box["width"] / 128.0
    return box["x"] + x * scale, box["y"] + y * scale


def _drag(page, start, end):
    page.mouse.move(*_canvas_point(page, *start))
    page.mouse.down()
    page.mouse.move(*_canvas_point(page, (start[0] + end[0]) / 2, (start[1] + end[1]) / 2), steps=3)
    page.mouse.move(*_canvas_point(page, *end), steps=3)
    page.mouse.up()


def _wait_task(page, previous=None):
    if previous is None:
        page.wait_for_function("() => document.body.dataset.task")
    else:
        page.wait_for_function(f"() => document.body.dataset.task !== '{previous}'")
    return int(page.get_attribute("body", "data-task") or 0)


def _shown(page):
    return json.loads(page.get_attribute("#box-canvas", "data-boxes"))


def test_box_review_with_mouse_and_keys(box_world, browser, artifacts):
    config, ids, frames = box_world
    pool_path = config.work_path / "pool.sqlite"
    with ReviewServer(create_app(pool_path, config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(server.url + "/login?next=/boxes")
        page.wait_for_selector("#annotator-name")
        page.keyboard.type("boxer")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-page='boxes'][data-ready='1']")

        # 1: the suggestion is right: one key accepts it
        first = _wait_task(page)
        assert first == ids[0] and _shown(page) == [A, B]
        page.keyboard.press("Enter")

        # 2: drag a corner, delete a wrong box, draw a missing one in class 7
        second = _wait_task(page, first)
        page.click("#box-canvas", position={"x": 1, "y": 1})  # empty spot: nothing selected
        page.mouse.click(*_canvas_point(page, 40, 40))  # select A
        _drag(page, (60, 60), (66, 70))  # its bottom-right corner
        page.mouse.click(*_canvas_point(page, 90, 90))  # select B ...
        page.keyboard.press("Delete")  # ... and delete it
        page.keyboard.press("7")  # class for what comes next
        _drag(page, (8, 80), (40, 120))  # draw the missing box
        shown = _shown(page)
        assert len(shown) == 2 and shown[1][4] == 7
        page.screenshot(path=str(artifacts / "boxes.png"))
        page.keyboard.press("Enter")

        # 3: one class is wrong: Tab to the second box, press its class
        third = _wait_task(page, second)
        page.keyboard.press("Tab")
        page.keyboard.press("4")
        assert _shown(page)[1][4] == 4 and page.get_attribute("#box-canvas", "data-changed") == "1"
        page.keyboard.press("Enter")

        # 4: skip: the next frame comes, the skipped task stays open (it queues behind the others)
        fourth = _wait_task(page, third)
        page.keyboard.press("s")
        fifth = _wait_task(page, fourth)
        assert fifth == ids[4]
        page.wait_for_selector("#status:has-text('skipped')")

    boxes = BoxPool(pool_path)
    try:
        one, two, three, four = (boxes.task(i) for i in ids[:4])
        assert one.status == "done" and one.annotator == "boxer"
        assert one.answer.rows(False) == [A, B] and one.edits["kept"] == 2 and one.edits["adjusted"] == 0
        assert two.status == "done"
        adjusted, drawn = two.answer.rows(False)
        assert adjusted[4] == 1 and adjusted[:2] == pytest.approx([20, 20], abs=0.6)
        assert adjusted[2:4] == pytest.approx([66, 70], abs=0.6)
        assert drawn == pytest.approx([8, 80, 40, 120, 7], abs=0.6)
        assert {k: two.edits[k] for k in ("kept", "adjusted", "deleted", "drawn")} == {
            "kept": 0,
            "adjusted": 1,
            "deleted": 1,
            "drawn": 1,
        }
        assert three.answer.rows(False) == [A, [*B[:4], 4]] and three.edits["reclassed"] == 1
        assert three.edits["kept"] == 2
        assert four.status == "submitted" and four.answer is None
        for task in (one, two, three):
            assert 0 < task.seconds < 120, "measured seconds, not the cost model's constant"
            assert task.dollars > 0
    finally:
        boxes.close()

    # the loop's next review step turns the answers into human box labels
    with CloudLoop(config, progress=False) as loop:
        loop.review()
        labels = loop.task.boxes.labels(frames[:3])
        assert {f: labels[f].source for f in frames[:3]} == {f: "human" for f in frames[:3]}
        assert labels[frames[0]].boxes.rows(False) == [A, B]
