"""The pool on a real PostgreSQL with several workers at once: processes racing on the same tasks and the
same answers lose nothing and apply nothing twice (tests/fixtures/postgres.py starts the server)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.pool import Pool, PoolError
from fleetloop_cloud.pool_sql import ROW_LOCK, redact
from fleetloop_sim.postgres import PostgresServer, remove_abandoned_clusters

from fixtures.cloud_world import cloud_config, pool_frame
from fixtures.mqtt import wait_until
from fixtures.pool_workers import race
from fixtures.uploads import frame_image, noisy, upload
from fixtures.processes import alive, owned_process

TASKS = 120


def test_two_reviewers_racing_for_the_same_box_tasks_each_answer_their_own(postgres_uri):
    with Pool(postgres_uri) as pool:
        boxes = BoxPool(pool)
        frames = [pool_frame(i, 0, False) for i in range(TASKS)]
        for frame in frames:
            pool.add_frame(frame)
        ids = boxes.add_tasks(1, "review", [(f.id, None) for f in frames], shown=False)
        first, second = race("reviewer", [[postgres_uri, "reviewer-a"], [postgres_uri, "reviewer-b"]])
        assert not first["refused"] and not second["refused"]  # nobody answered a task someone else held
        assert not set(first["answered"]) & set(second["answered"])
        assert sorted(first["answered"] + second["answered"]) == sorted(ids)  # nothing lost
        assert first["answered"] and second["answered"]  # they did work at the same time
        done = {t.id: t for t in boxes.tasks(status="done")}
        assert set(done) == set(ids)
        assert all(done[i].annotator == "reviewer-a" for i in first["answered"])


def test_a_box_lease_locks_rows_not_the_pool(postgres_uri):
    """A lease neither waits for a writer holding the pool-wide lock nor hands out a row another transaction holds."""
    with Pool(postgres_uri) as pool, Pool(postgres_uri) as other:
        boxes = BoxPool(pool)
        frames = [pool_frame(i, 0, False) for i in range(3)]
        for frame in frames:
            pool.add_frame(frame)
        first, second, third = boxes.add_tasks(1, "review", [(f.id, None) for f in frames], shown=False)
        with other.transaction() as writer:  # a loop worker's transaction: the pool-wide lock, held
            writer.execute("UPDATE frames SET state=state WHERE id=?", (frames[2].id,))
            done = []
            leasing = threading.Thread(target=lambda: done.append(boxes.lease("a", ["review"], time.time(), 60.0)))
            leasing.start()
            leasing.join(10.0)
            assert done and done[0].id == first  # leased while the writer still holds the pool-wide lock
        with other.transaction(row_locks=True) as holder:  # another reviewer's lease, not committed yet
            holder.execute(f"SELECT id FROM box_tasks WHERE id=?{ROW_LOCK}", (second,))
            assert boxes.lease("b", ["review"], time.time(), 60.0).id == third  # passed over, not waited for


def _review_tasks(pool, frames: int, second_opinions: int) -> list[int]:
    """Submit a review task per frame to the review page, and on the first frames a second-opinion task right
    after it (the two tasks of a frame next to each other in the queue: two claims meet on the frame)."""
    from fleetloop_cloud.review.leases import REVIEW_BACKEND, ensure_schema

    ensure_schema(pool)
    ids = []
    for index in range(frames):
        frame = pool_frame(index, 0, False)
        pool.add_frame(frame)
        ids += pool.add_tasks(1, "review", [(frame.id, None)])
        if index < second_opinions:
            ids += pool.add_tasks(1, "second-opinion", [(frame.id, None)])
    pool.mark_submitted(ids, REVIEW_BACKEND, [None] * len(ids))
    return ids


def test_two_review_servers_claiming_at_once_never_share_a_task_or_a_frame(postgres_uri):
    with Pool(postgres_uri) as pool:
        _review_tasks(pool, TASKS, second_opinions=TASKS)  # every frame with two tasks
    first, second = race("claimer", [[postgres_uri, "session-a"], [postgres_uri, "session-b"]])
    assert first and second  # both claimed while the other did
    frames_a, frames_b = {f for _, f in first}, {f for _, f in second}
    assert not frames_a & frames_b  # no frame (so no task) in two hands
    assert len(frames_a) == len(first) and len(frames_b) == len(second)  # one task of a frame in one hand
    assert len(first) + len(second) == TASKS  # every frame handed out: nothing lost to the race


def test_a_review_claim_locks_rows_not_the_pool(postgres_uri):
    """A claim neither waits for a writer holding the pool-wide lock nor hands out a task another claim holds."""
    from fleetloop_cloud.review.leases import LABEL_PURPOSES, claim

    with Pool(postgres_uri) as pool, Pool(postgres_uri) as other:
        first, second, third = _review_tasks(pool, 3, second_opinions=0)
        with other.transaction() as writer:  # a loop worker's transaction: the pool-wide lock, held
            writer.execute("UPDATE frames SET state=state WHERE id=?", (pool.tasks()[2].frame_id,))
            done = []
            claiming = threading.Thread(
                target=lambda: done.append(claim(pool, "a", "a", LABEL_PURPOSES, 1, time.time(), 60.0))
            )
            claiming.start()
            claiming.join(10.0)
            assert done and [lease.task_id for lease in done[0]] == [first]  # while the writer holds the lock
        with other.transaction(row_locks=True) as holder:  # another server's claim, not committed yet
            holder.execute(f"SELECT id FROM tasks WHERE id=?{ROW_LOCK}", (second,))
            leases = claim(pool, "b", "b", LABEL_PURPOSES, 1, time.time(), 60.0)
            assert [lease.task_id for lease in leases] == [third]  # passed over, not waited for


def test_answers_lock_rows_not_the_pool_and_an_undo_never_reopens_a_collected_answer(postgres_uri):
    """An answer goes on while a loop worker holds the pool-wide lock; the loop's collection and an undo of
    the same answer meet on the task's row: whichever holds it first, the other never undoes a label."""
    from fleetloop_cloud.config import load_cost_model
    from fleetloop_cloud.review import answers
    from fleetloop_cloud.review.errors import Conflict

    human = load_cost_model().human

    def answer(pool, task_id):
        return answers.submit(pool, human, 11, "ann", "s", [answers.Submission(task_id, 3, 2.0)], time.time(), 600.0)

    def in_thread(call):
        outcome: list = []

        def run():
            try:
                outcome.append(call())
            except Exception as exc:  # the outcome is what the test reads
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread, outcome

    with Pool(postgres_uri) as pool, Pool(postgres_uri) as loop_pool, Pool(postgres_uri) as third:
        first, second = _review_tasks(pool, 2, second_opinions=0)
        answers.ensure_schema(pool)
        with loop_pool.transaction() as writer:  # a loop worker's transaction: the pool-wide lock, held
            writer.execute("UPDATE frames SET state=state WHERE id=?", (pool.task(first).frame_id,))
            thread, outcome = in_thread(lambda: answer(pool, first))
            thread.join(10.0)
            assert outcome and isinstance(outcome[0], str)  # answered while the writer holds the lock
        # the loop collects the answer (its rows locked until it commits): an undo waits, then is refused
        with loop_pool.transaction():
            assert [t.id for t in loop_pool.unapplied(1)] == [first]
            loop_pool.mark_applied([first])
            thread, outcome = in_thread(lambda: answers.undo(pool, "ann", "s", time.time(), 60.0, task_id=first))
            thread.join(1.0)
            assert thread.is_alive()  # waits for the collection's row lock
        thread.join(10.0)
        assert isinstance(outcome[0], Conflict) and "already collected" in str(outcome[0])
        assert pool.task(first).status == "done"
        # an undo in flight holds the row: a collection meanwhile passes over it instead of applying it
        answer(pool, second)
        with third.transaction(row_locks=True) as undoing:
            undoing.execute(f"SELECT id FROM tasks WHERE id=?{ROW_LOCK}", (second,)).fetchall()
            with loop_pool.transaction():
                assert loop_pool.unapplied(1) == []
        assert [t.id for t in loop_pool.unapplied(1)] == [second]  # the next collection gets it


def test_the_review_tables_work_from_a_connection_that_did_not_create_them(postgres_uri):
    """The review page's own tables on PostgreSQL: serial event ids, and ``INSERT OR REPLACE`` replacing
    (their keys read from the catalogue) on a server worker's connection that did not run their CREATE."""
    from fleetloop_cloud.config import load_cost_model
    from fleetloop_cloud.review import answers, leases
    from fleetloop_cloud.review.db import prepare

    with Pool(postgres_uri) as pool:
        first, second = _review_tasks(pool, 2, second_opinions=0)
    prepare(postgres_uri)  # what `fleetloop-cloud review` does once at start
    with Pool(postgres_uri) as worker:
        now = time.time()
        [lease] = leases.claim(worker, "ann", "s", leases.LABEL_PURPOSES, 1, now, 60.0)
        leases.skip(worker, "s", lease.task_id, now)
        held = leases.claim(worker, "ann", "s", leases.LABEL_PURPOSES, 2, now + 1, 60.0)
        assert [h.task_id for h in held][-1] == lease.task_id  # the skipped task last
        leases.skip(worker, "s", lease.task_id, now + 3)  # skipped a second time: the newer time replaces
        skips = worker._db.execute("SELECT task_id, skipped FROM review_skips WHERE session='s'").fetchall()
        assert [(int(t), float(when)) for t, when in skips] == [(lease.task_id, now + 3)]
        leases.release_session(worker, "s")
        human = load_cost_model().human
        answers.submit(worker, human, 11, "ann", "s", [answers.Submission(first, 4, 2.0)], now + 4, 600.0)
        answers.submit(worker, human, 11, "ann", "s", [answers.Submission(second, 5, 2.0)], now + 5, 600.0)
        events = worker._db.execute("SELECT id, task_id FROM review_events ORDER BY id").fetchall()
        assert [int(t) for _, t in events] == [first, second] and len({i for i, _ in events}) == 2


def test_two_ingest_workers_take_each_frame_once_and_see_each_others_near_duplicates(tmp_path, postgres_uri):
    from fleetloop_core.store import open_store

    from fleetloop_cloud.ingest import hamming, perceptual_hash

    store_uri = f"file://{tmp_path / 'store'}"
    store, pairs = open_store(store_uri), 40
    for i in range(pairs):  # robot r1 sees an item; r2 sees the same item a moment later (a near-duplicate)
        image, other = frame_image(1000 + i), noisy(frame_image(1000 + i), seed=i, amplitude=1)
        assert hamming(np.array([perceptual_hash(image)], np.uint64), perceptual_hash(other))[0] <= 6
        upload(store, "r1", image, i)
        upload(store, "r2", other, i)
    # one worker from r2's frames on, the other from r1's: each meets the other's near-duplicates at once
    prefixes = {"a": "frames/r2/", "b": "frames/"}
    reports = race("ingester", [[postgres_uri, store_uri, str(tmp_path / w), p] for w, p in prefixes.items()])
    with Pool(postgres_uri) as pool:
        assert pool.counts() == {"new": pairs, "duplicate": pairs}  # one of each pair new, the other its duplicate
        rows = {(row["robot_id"], row["stamp_ns"]): row["state"] for row in pool.frames(include_duplicates=True)}
    assert all({rows[("r1", s)], rows[("r2", s)]} == {"new", "duplicate"} for s in {k[1] for k in rows})
    assert reports[0]["ingested"] and reports[1]["ingested"], json.dumps(reports)  # both took frames
    assert sum(r["ingested"] for r in reports) == pairs and sum(r["near_duplicates"] for r in reports) == pairs
    assert sum(r["exact_duplicates"] for r in reports) == 0  # the other worker's frame is not a duplicate


def test_two_loop_workers_applying_the_same_answers_apply_each_once(tmp_path, postgres_uri, cloud_models):
    config = cloud_config(tmp_path, f"file://{tmp_path / 'store'}", cloud_models["T1"].parent, pool=postgres_uri)
    cloud_config_from_dict(config)  # valid before two processes use it
    with Pool(postgres_uri) as pool:
        frames = [pool_frame(i, i % 10, False) for i in range(TASKS)]
        for frame in frames:
            pool.add_frame(frame)
        ids = pool.add_tasks(1, "review", [(f.id, None) for f in frames])
        for task_id, frame in zip(ids, frames):
            pool.answer_task(task_id, frame.sim_label, "reviewer", 6.0, 0.03)
        assert race("collector", [[config], [config]]) == [TASKS, TASKS]  # each goes once both loops opened
        labels = pool.labels()
        assert len(labels) == TASKS and all(labels[f.id].label == f.sim_label for f in frames)
        events = pool._query("SELECT frame_id, COUNT(*) FROM label_events GROUP BY frame_id")
        assert {row[1] for row in events} == {1}  # each answer became one label event, never two
        assert not pool.unapplied(1)


def test_a_bad_uri_and_an_unreachable_server_are_named(tmp_path):
    with pytest.raises(PoolError, match="unknown scheme 'mysql'"):
        Pool("mysql://u@127.0.0.1/pool")
    with pytest.raises(PoolError, match=r"postgresql://fleet:\*\*\*@127.0.0.1:1/pool: cannot open the pool"):
        Pool("postgresql://fleet:secret@127.0.0.1:1/pool")
    assert redact("postgresql://fleet:secret@db:5432/pool") == "postgresql://fleet:***@db:5432/pool"
    assert np.array_equal(Pool(tmp_path / "p.sqlite").phashes(), [])  # a plain path is still the SQLite file


def test_review_tables_made_untranslated_before_are_mended_in_place(postgres_uri):
    """Review tables as PostgreSQL pools got them before 2026-12-05 (SQLite's types verbatim: a float4 time,
    an id without a default) take answers and exact times once the page prepares the pool again."""
    import psycopg

    from fleetloop_cloud.config import load_cost_model
    from fleetloop_cloud.review import answers, leases
    from fleetloop_cloud.review.db import prepare

    with Pool(postgres_uri) as pool:
        first, second = _review_tasks(pool, 2, second_opinions=0)
    with psycopg.connect(postgres_uri, autocommit=True) as raw:  # what the old code created
        for statement in (answers._SCHEMA + leases._SCHEMA).split(";"):
            if statement.strip().upper().startswith("CREATE TABLE"):
                raw.execute(statement)
        raw.execute(
            "INSERT INTO review_events (id, batch, task_id, frame_id, annotator, action, created) "
            "VALUES (7, 'old', 0, 'f', 'a', 'answer', 1.0)"
        )  # one row, its id given by hand
    prepare(postgres_uri)
    with Pool(postgres_uri) as worker:
        now = time.time()
        answers.submit(worker, load_cost_model().human, 11, "ann", "s", [answers.Submission(first, 4, 2.0)], now, 600.0)
        [lease] = leases.claim(worker, "ann", "s", leases.LABEL_PURPOSES, 1, now + 0.25, 60.0)
        assert lease.task_id == second
        leases.skip(worker, "s", second, now + 0.25)
        ids = [int(r[0]) for r in worker._db.execute("SELECT id FROM review_events ORDER BY id").fetchall()]
        assert ids == [7, 8]  # numbering goes on after the highest id
        [(skipped,)] = worker._db.execute("SELECT skipped FROM review_skips").fetchall()
        assert float(skipped) == pytest.approx(now + 0.25, abs=1e-3)  # a double now, not a float4
    prepare(postgres_uri)  # mending twice changes nothing


def test_every_pool_connection_and_the_runner_lock_keep_alive_on_the_servers_side(postgres_uri):
    """A worker's host that dies without closing its sockets must not keep the runner lock for hours: the
    server probes each of the pool's sessions (tcp_keepalives_*, set per session) and ends dead ones."""
    from fleetloop_cloud.pool_lock import WorkerLock
    from fleetloop_cloud.pool_sql import KEEPALIVE_COUNT, KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S

    expected = [str(KEEPALIVE_IDLE_S), str(KEEPALIVE_INTERVAL_S), str(KEEPALIVE_COUNT)]
    names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
    assert "127.0.0.1" in postgres_uri  # over TCP: on a Unix-domain socket the settings read 0
    with Pool(postgres_uri) as pool:
        assert [pool._db.execute(f"SHOW {n}").fetchone()[0] for n in names] == expected
    lock = WorkerLock(postgres_uri)
    assert lock.acquire()
    try:
        assert [lock._held.execute(f"SHOW {n}").fetchone()[0] for n in names] == expected
    finally:
        lock.release()
    # what the URI sets itself wins: its options (ours added beside) and its own keepalive parameters
    own = postgres_uri + "?options=-c%20tcp_keepalives_idle%3D40%20-c%20work_mem%3D8MB&keepalives_idle=50"
    with Pool(own) as pool:
        shown = [pool._db.execute(f"SHOW {n}").fetchone()[0] for n in (*names, "work_mem")]
        assert shown == ["40", expected[1], expected[2], "8MB"]
        assert pool._db._db.info.get_parameters()["keepalives_idle"] == "50"


def test_the_server_ends_with_the_process_that_started_it_even_killed_without_clean_up():
    # pg_ctl start daemonized it: a test run stopped by SIGTERM or kill -9 left a PostgreSQL running
    script = (
        "import time\n"
        "from fleetloop_sim.postgres import PostgresServer\n"
        "server = PostgresServer()\n"
        "server.start()\n"
        "print(server.pid, server.root, flush=True)\n"
        "time.sleep(600)\n"
    )
    root = ""
    try:
        with owned_process(script) as server:
            root = server.fields[0]
            assert alive(server.pid)
            server.kill_owner()
            assert wait_until(lambda: not alive(server.pid), 30.0)
        # the owner could not remove its directory; the next server's start does, and leaves a live owner's
        assert Path(root).is_dir()
        live = PostgresServer()
        try:
            assert not Path(root).exists()
            assert live.root not in remove_abandoned_clusters(live.root.parent) and live.root.is_dir()
        finally:
            live.stop()
    finally:  # after the orphan, if any, is ended
        if root:
            shutil.rmtree(root, ignore_errors=True)
