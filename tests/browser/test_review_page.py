"""The review page in a real browser: Debian's Chromium driven by Playwright, the app on a real port.

Pools are seeded by the cloud loop itself (fixtures.review_page); what the page writes is checked
in the pool, and the loop's next review step collects it. Screenshots go to test-artifacts/review/.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from fleetloop_cloud.autolabel import combine
from fleetloop_cloud.config import load_cloud_config
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.review.app import create_app
from fleetloop_cloud.review.items import teachers
from fleetloop_cloud.review.leases import REVIEW_BACKEND

from fixtures.review_page import ReviewServer, build_world, free_port

VIEWPORT = {"width": 1400, "height": 860}


def _sign_in(page, url, name):
    """Sign in with the keyboard only (the name field has the focus)."""
    page.goto(url + "/label")
    page.wait_for_selector("#annotator-name")
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-ready='1']")


def _wait_frame(page):
    page.wait_for_function(
        "() => { const i = document.getElementById('frame');"
        " return i.hidden || (i.complete && i.naturalWidth > 0 && i.dataset.loaded === i.src); }"
    )
    return int(page.get_attribute("body", "data-task") or 0)


def _press(page, key, task):
    page.keyboard.press(key)
    page.wait_for_function(f"() => document.body.dataset.task !== '{task}'")


def test_label_twenty_frames_with_the_keyboard_only(review_world, browser, artifacts):
    world = review_world("waiting")
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        keys = [
            "Enter",
            "3",
            "a",  # the class shown beside the suggestion
            "n",
            "7",
            "Enter",
            "x",
            "0",
            "9",
            "Enter",
            "1",
            "Enter",
            "2",
            "n",
            "Enter",
            "a",
            "6",
            "Enter",
            "8",
            "4",
        ]
        pressed = {}
        for number, key in enumerate(keys):
            task = _wait_frame(page)
            assert task, "the queue ran dry"
            pressed[task] = key
            if key == "a":  # shown beside the suggestion, its class's button marked
                shown = page.inner_text("#suggestion .alternative")
                assert shown.startswith("A") and page.locator("#classes button.alternative").count() == 1
            if number == 12:
                page.screenshot(path=str(artifacts / "label.png"))
            _press(page, key, task)
        page.wait_for_selector("#rates tr[data-annotator='ann']")
        assert page.inner_text("#rates tr[data-annotator='ann'] td:nth-child(4)") == "20"
    with world.pool() as pool:
        for task_id, key in pressed.items():
            task = pool.task(task_id)
            assert task.annotator == "ann" and task.backend == REVIEW_BACKEND
            assert 0 < task.seconds < 120, "measured seconds, not the cost model's constant"
            if key == "x":
                assert task.status == "failed" and task.error.startswith("unusable")
                continue
            named = {"Enter": task.suggestion, "a": task.alternative, "n": 10}
            expected = named[key] if key in named else int(key)
            assert key != "a" or task.alternative not in (None, task.suggestion)
            assert (task.status, task.answer) == ("done", expected)
        assert len([t for t in pool.tasks(status=("done", "failed")) if t.annotator == "ann"]) == 20
    # the loop's next review step collects the page's answers into human labels
    with CloudLoop(world.config, progress=False) as loop:
        loop.review()
        labels = loop.pool.labels()
        for task_id, key in pressed.items():
            task = loop.pool.task(task_id)
            if key != "x":
                assert labels[task.frame_id].label == task.answer and labels[task.frame_id].source == "human"


def test_undo_relabel_and_arrows(review_world, browser):
    world = review_world("waiting")
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        answered = []
        for key in ("1", "2", "3"):
            task = _wait_frame(page)
            answered.append(task)
            _press(page, key, task)
        in_hand = _wait_frame(page)
        # U: the newest answer comes back; it can be relabeled; the frame in hand waits behind it
        _press(page, "u", in_hand)
        assert _wait_frame(page) == answered[-1]
        with world.pool() as pool:
            assert (pool.task(answered[-1]).status, pool.task(answered[-1]).answer) == ("submitted", None)
        _press(page, "8", answered[-1])
        assert _wait_frame(page) == in_hand
        with world.pool() as pool:
            assert pool.task(answered[-1]).answer == 8
        # arrows: back through my answers, forward again; digits do nothing on an old answer
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"() => document.body.dataset.task === '{answered[-1]}'")
        assert page.get_attribute("body", "data-mode") == "history"
        assert "bag" in page.inner_text("#mode")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"() => document.body.dataset.task === '{answered[-2]}'")
        page.keyboard.press("5")
        assert "press U" in page.inner_text("#status")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => document.body.dataset.task === '{in_hand}'")
        # at the newest frame, the right arrow skips it: it goes back to the queue
        _press(page, "ArrowRight", in_hand)
        with world.pool() as pool:
            assert pool.task(in_hand).status == "submitted" and pool.task(answered[-2]).answer == 2


def test_two_browsers_never_receive_the_same_item(review_world, browser):
    world = review_world("waiting")
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        pages = {}
        for name in ("ann", "bob"):
            pages[name] = browser.new_context(viewport=VIEWPORT).new_page()
            _sign_in(pages[name], server.url, name)
        seen = {"ann": [], "bob": []}
        for round_number in range(6):
            current = {name: _wait_frame(page) for name, page in pages.items()}
            assert current["ann"] != current["bob"], "two annotators hold the same task"
            for name, page in pages.items():
                seen[name].append(current[name])
                _press(page, str(round_number), current[name])
        assert not set(seen["ann"]) & set(seen["bob"])
    with world.pool() as pool:
        done = [t for t in pool.tasks(status="done")]
        by = {name: {t.frame_id for t in done if t.annotator == name} for name in ("ann", "bob")}
        assert len(by["ann"]) == len(by["bob"]) == 6 and not by["ann"] & by["bob"]


def test_an_abandoned_lease_goes_to_the_next_person(review_world, browser):
    from fleetloop_cloud.review.settings import ReviewPageConfig

    world = review_world("waiting")
    app = create_app(world.pool_path, world.config, settings=ReviewPageConfig(lease_s=1.0))
    with ReviewServer(app) as server:
        ann = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(ann, server.url, "ann")
        abandoned = _wait_frame(ann)
        time.sleep(1.2)  # ann looks away longer than the lease
        bob = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(bob, server.url, "bob")
        assert _wait_frame(bob) == abandoned  # back in the queue, oldest first
        _press(ann, "4", abandoned)  # ann's late answer is refused; she moves on
        assert "leased to bob" in ann.inner_text("#status")
        assert _wait_frame(ann) not in (abandoned, 0)
        _press(bob, "5", abandoned)
    with world.pool() as pool:
        task = pool.task(abandoned)
        assert (task.annotator, task.answer) == ("bob", 5)


def _write_config(world, tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(world.data))
    return path


def test_a_non_loopback_bind_requires_the_token(review_world, browser, tmp_path):
    world = review_world("waiting")
    config_path = _write_config(world, tmp_path)
    port = free_port("127.0.0.2")
    page_config = tmp_path / "review_page.yaml"
    page_config.write_text(yaml.safe_dump({"port": port, "replay_dirs": [str(tmp_path / "replay")]}))
    env = {**os.environ}
    env.pop("FLEETLOOP_REVIEW_TOKEN", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetloop_cloud.cli",
            "review",
            "serve",
            "--host",
            "127.0.0.2",
            "--config",
            str(config_path),
            "--page-config",
            str(page_config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, "the server exited"
            found = re.search(r"token \(printed once.*\): (\S+)$", line.strip())
            token = found.group(1) if found else None
        assert token and len(token) >= 32
        url = f"http://127.0.0.2:{port}"
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for path in ("/api/counters", f"/frame/{'0' * 64}.png", "/plots/robots.png"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=5)
            assert refused.value.code == 401
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        response = page.goto(url + "/label")
        assert response.status == 401 and page.is_visible("#token")  # sent to sign-in, token asked
        page.fill("#annotator-name", "eve")
        page.fill("#token", "not-the-token-" + "x" * 20)
        page.keyboard.press("Enter")
        page.wait_for_selector("#login-error")
        assert "wrong token" in page.inner_text("#login-error")
        assert context.request.get(url + "/api/counters").status == 401
        page.goto(url + f"/login?token={token}")  # the printed sign-in link
        assert "token=" not in page.url
        page.fill("#annotator-name", "eve")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-ready='1']")
        assert context.request.get(url + "/api/counters").status == 200
        assert _wait_frame(page) > 0
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_writes_need_the_session_csrf_token_and_this_origin(review_world, browser):
    world = review_world("waiting")
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        _sign_in(page, server.url, "ann")
        task = _wait_frame(page)
        csrf = page.get_attribute("meta[name='csrf-token']", "content")
        body = {"task_id": task, "action": "label", "label": 3, "seconds": 1.0}
        headers = {"Content-Type": "application/json"}
        assert context.request.post(server.url + "/api/answer", data=json.dumps(body), headers=headers).status == 403
        cross = {**headers, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        assert context.request.post(server.url + "/api/answer", data=json.dumps(body), headers=cross).status == 403
        bad = context.request.post(
            server.url + "/api/answer",
            headers={**headers, "X-CSRF-Token": csrf},
            data=json.dumps({**body, "label": 12}),
        )
        assert bad.status == 422 and "label" in bad.json()["error"]
        assert context.request.get(server.url + "/frame/..%2F..%2Fetc%2Fpasswd").status == 404
        # a page on another site cannot post into the review page (its cookie is SameSite=Strict)
        other = ReviewServer(create_app(world.pool_path, world.config), host="127.0.0.1")
        with other:
            evil = context.new_page()
            evil.goto(other.url + "/healthz")
            status = evil.evaluate(
                """async ([url, body]) => { try { const r = await fetch(url + '/api/answer', {method: 'POST',
                   credentials: 'include', headers: {'Content-Type': 'application/json'}, body}); return r.status; }
                   catch (e) { return 'blocked'; } }""",
                [server.url, json.dumps(body)],
            )
            assert status in (401, 403, "blocked")
        ok = context.request.post(
            server.url + "/api/answer", headers={**headers, "X-CSRF-Token": csrf}, data=json.dumps(body)
        )
        assert ok.status == 200
    with world.pool() as pool:
        assert pool.task(task).answer == 3


def test_routing_view_plots_the_curve_and_saves_the_target_the_loop_reads(review_world, browser, artifacts, tmp_path):
    world = review_world("routed")
    config_path = _write_config(world, tmp_path)
    app = create_app(world.pool_path, load_cloud_config(config_path), config_path=config_path)
    with ReviewServer(app) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        page.goto(server.url + "/tuning/routing?target=0.995")
        assert "nothing is auto-accepted" in page.inner_text("#implied-threshold")  # the test teachers are weak
        page.fill("#target", "0.8")
        page.keyboard.press("Enter")
        page.wait_for_url("**/tuning/routing?target=0.8")
        page.wait_for_function(
            "() => { const i = document.getElementById('risk-coverage'); return i.complete && i.naturalWidth > 600; }"
        )
        assert int(page.inner_text("#validation-frames")) >= 20
        threshold = float(page.inner_text("#implied-threshold"))
        assert 0 < threshold < 1 and not page.inner_text("#implied-pool").startswith("0.0 %")
        page.screenshot(path=str(artifacts / "routing.png"), full_page=True)
        page.click("#save-target")
        page.wait_for_selector("#saved")
    saved = yaml.safe_load((tmp_path / "cloud.local.yaml").read_text())
    assert saved == {"routing": {"target_accuracy": 0.8}}
    assert load_cloud_config(config_path).routing.target_accuracy == 0.8  # what the loop loads next


def test_audit_grid_confirms_and_corrects_many_auto_labels(review_world, browser, artifacts):
    world = review_world("routed")
    with world.pool() as pool:
        # audit tasks as the loop makes them (suggestion: the teachers' auto-label), sent to the page
        state = teachers(pool, world.config)
        frames = [r["id"] for r in pool.frames()][:8]
        probs = [pool.predictions(tier, version, frames)[0] for tier, version in state.versions.items()]
        auto = combine(probs[0], probs[1], state.temperature).label
        accepted = [(f, int(label)) for f, label in zip(frames, auto)]
        ids = pool.add_tasks(pool.last_round(), "audit", accepted)
        pool.mark_submitted(ids, REVIEW_BACKEND, [None] * len(ids))
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        page.goto(server.url + "/audit")
        page.wait_for_selector("body[data-cells='8']")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")  # third cell: correct it
        first_wrong = (accepted[2][1] + 1) % 11
        page.keyboard.press("n" if first_wrong == 10 else str(first_wrong))
        page.keyboard.press("x")  # fourth cell (focus moved on): unusable
        page.screenshot(path=str(artifacts / "audit.png"))
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('submitted 8')")
    with world.pool() as pool:
        tasks = [pool.task(i) for i in ids]
        assert [t.status for t in tasks] == ["done"] * 3 + ["failed"] + ["done"] * 4
        assert [t.answer for t in tasks if t.status == "done"] == [accepted[0][1], accepted[1][1], first_wrong] + [
            a[1] for a in accepted[4:]
        ]
        assert all(t.annotator == "ann" and t.seconds > 0 for t in tasks)


def test_robots_view_plots_a_replay_sweep_and_uploads_per_robot(
    review_world, browser, artifacts, tmp_path, test_models
):
    from fleetloop_core.replay import replay
    from fleetloop_core.replay_outputs import write_outputs
    from fleetloop_core.selection_config import selection_config
    import importlib.util
    from fixtures.review_page import ROOT

    spec = importlib.util.spec_from_file_location("make_sample_bag", ROOT / "scripts" / "make_sample_bag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "bag"), "--frames", "20", "--robots", "2", "--storage", "mcap"]) == 0
    report = replay(
        tmp_path / "bag",
        test_models["T4"].parent,
        selection_config({}),
        ["budget.frames_per_hour=60,600,6000"],
        progress=False,
    )
    write_outputs(report, tmp_path / "replay" / "sample")
    world = review_world("routed")
    from fleetloop_cloud.review.settings import ReviewPageConfig

    settings = ReviewPageConfig(replay_dirs=(str(tmp_path / "replay"),))
    with ReviewServer(create_app(world.pool_path, world.config, settings=settings)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        page.goto(server.url + "/tuning/robots")
        for image in ("sweep-plot", "robots-plot"):
            page.wait_for_function(
                f"() => {{ const i = document.getElementById('{image}'); return i.complete && i.naturalWidth > 600; }}"
            )
        assert page.locator("#sweep-table tbody tr").count() == 3
        rows = page.locator("#robot-table tbody tr")
        assert rows.count() == 2 and "robot-1" in rows.nth(0).inner_text()
        page.screenshot(path=str(artifacts / "robots.png"), full_page=True)


def test_a_suggestion_from_the_frames_track_says_so(review_world, browser, artifacts):
    world = review_world("routed")
    with world.pool() as pool:
        with pool.transaction() as db:  # this test's two review tasks first in the queue
            db.execute("UPDATE tasks SET status='failed', error='moved aside by the test' WHERE status='submitted'")
        frames = [r["id"] for r in pool.frames()][:2]
        number = pool.last_round()
        # review tasks as the loop makes them: the first frame's suggestion is its track's label by a person
        pool.add_suggestion_sources(number, {frames[0]: "track"})
        ids = pool.add_tasks(number, "review", [(frames[0], 3), (frames[1], 5)])
        pool.mark_submitted(ids, REVIEW_BACKEND, [None] * len(ids))
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        shown = []
        for _ in ids:
            task = _wait_frame(page)
            shown.append((task, page.inner_text("#suggestion")))
            if not shown[1:]:
                page.screenshot(path=str(artifacts / "track-suggestion.png"))
            _press(page, "Enter", task)
    assert [task for task, _ in shown] == ids
    assert "from its track: a person labeled another frame of this track so" in shown[0][1]
    assert "track" not in shown[1][1] and "calibrated" in shown[1][1]
    with world.pool() as pool:
        assert [pool.task(i).answer for i in ids] == [3, 5]


def test_the_page_over_a_postgresql_pool_labels_skips_undoes_and_the_loop_collects(
    tmp_path, cloud_models, postgres_uri, browser
):
    """The page on PostgreSQL, as production runs it: its own tables on the server, answers row-locked."""
    from fleetloop_cloud.config import cloud_config_from_dict

    config = cloud_config_from_dict(build_world(tmp_path, cloud_models, REVIEW_BACKEND, pool=postgres_uri))
    with ReviewServer(create_app(postgres_uri, config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        answered = {}
        for key in ("1", "2", "ArrowRight", "3", "4"):  # the arrow at the newest frame skips it
            task = _wait_frame(page)
            if key != "ArrowRight":
                answered[task] = int(key)
            else:
                skipped = task
            _press(page, key, task)
        last = list(answered)[-1]
        _press(page, "u", _wait_frame(page))  # undo the last answer: it comes back, relabeled
        assert _wait_frame(page) == last
        _press(page, "5", last)
        answered[last] = 5
        page.wait_for_selector("#rates tr[data-annotator='ann']")  # the counters' queries run on PostgreSQL too
        assert page.inner_text("#rates tr[data-annotator='ann'] td:nth-child(4)") == str(len(answered))
        failed: list = []  # every view reads the pool, and so do the plots and API calls it makes
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        for view in ("/audit", "/confirm", "/tuning/routing", "/tuning/robots"):
            page.goto(server.url + view)
            page.wait_for_load_state("networkidle")
        assert failed == []
    with CloudLoop(config, progress=False) as loop:
        assert str(loop.pool.path).startswith("postgresql://")
        for task_id, label in answered.items():
            task = loop.pool.task(task_id)
            assert (task.status, task.answer, task.annotator) == ("done", label, "ann") and task.seconds > 0
        assert loop.pool.task(skipped).status == "submitted"
        loop.review()
        labels = loop.pool.labels()
        assert {task_id: labels[loop.pool.task(task_id).frame_id].label for task_id in answered} == answered


def test_confirm_grid_pages_one_suggested_class_at_a_time(review_world, browser, artifacts):
    world = review_world("routed")
    with world.pool() as pool:
        with pool.transaction() as db:  # this test's tasks alone in the queue
            db.execute("UPDATE tasks SET status='failed', error='moved aside by the test' WHERE status='submitted'")
        frames = [r["id"] for r in pool.frames()][:6]
        number = pool.last_round()
        dress = pool.add_tasks(number, "review", [(f, 3) for f in frames[:2]])
        dress += pool.add_tasks(number, "track", [(frames[2], 3)])  # a track's representative: in the grid too
        sandal = pool.add_tasks(number, "review", [(f, 5) for f in frames[3:5]])
        audit = pool.add_tasks(number, "audit", [(frames[5], 3)])  # not a review task: never in this grid
        pool.mark_submitted(dress + sandal + audit, REVIEW_BACKEND, [None] * 6)
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        page.goto(server.url + "/confirm")
        page.wait_for_selector("body[data-cells='3']")  # the class most tasks suggest first
        assert page.inner_text("#grid-class") == "dress"
        page.keyboard.press("ArrowRight")
        page.keyboard.press("7")  # the second cell is no dress
        page.screenshot(path=str(artifacts / "confirm.png"))
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('submitted 3 labels')")
        page.wait_for_selector("body[data-cells='2']")
        assert page.inner_text("#grid-class") == "sandal"
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('submitted 2 labels')")
        page.wait_for_selector("body[data-cells='0']")
        page.keyboard.press("u")  # undo the last page: its two cells come back
        page.wait_for_selector("body[data-cells='2']")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('submitted 2 labels')")
        # an audit task is no review task: refused here, with the reason
        csrf = page.get_attribute("meta[name='csrf-token']", "content")
        refused = page.context.request.post(
            server.url + "/api/confirm/submit",
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
            data=json.dumps({"seconds": 1.0, "answers": [{"task_id": audit[0], "label": 3}]}),
        )
        assert refused.status == 400
        assert "is a audit task, not a track or review task: answer it on its own page" in refused.json()["error"]
    with world.pool() as pool:
        assert [pool.task(i).answer for i in dress + sandal] == [3, 7, 3, 5, 5]
        assert all(pool.task(i).annotator == "ann" and pool.task(i).seconds > 0 for i in dress + sandal)
        assert pool.task(audit[0]).status == "submitted"


def test_the_confirm_grid_refuses_where_suggestions_are_not_shown(review_world, browser):
    world = review_world("routed")
    review = world.config.review.model_copy(update={"show_suggestions": False})
    with ReviewServer(create_app(world.pool_path, world.config.model_copy(update={"review": review}))) as server:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        _sign_in(page, server.url, "ann")
        page.goto(server.url + "/confirm")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('show_suggestions')")
        assert "label the frames on /label" in page.inner_text("#status")
