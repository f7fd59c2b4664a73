"""Review page back end (fleetloop_cloud.review: leases, answers, counters) on pools seeded by the loop itself.

The ``waiting`` world: the cloud loop (annotator ``review-page``) submitted its calibration
sample to the page and waits; what the page writes, the loop's next review step collects.
"""

import time

import pytest

from fleetloop_cloud.config import load_cost_model
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.review import answers, counters, leases
from fleetloop_cloud.review.db import ReviewDB, prepare
from fleetloop_cloud.review.errors import Conflict, NotFound, ReviewError

NOW = 1_800_000_000.0
LEASE_S = 60.0


@pytest.fixture
def desk(review_world):
    world = review_world("waiting")
    prepare(world.pool_path)
    db = ReviewDB(world.pool_path)
    yield world, db
    db.close()


def _submit(db, session, annotator, items, now=NOW):
    human = load_cost_model().human
    return answers.submit(db.pool, human, 11, annotator, session, [answers.Submission(*i) for i in items], now, 600.0)


def test_the_loop_submitted_its_calibration_sample_to_the_page(desk):
    world, db = desk
    tasks = db.pool.tasks(status="submitted", backend=leases.REVIEW_BACKEND)
    assert len(tasks) == 60 and {t.purpose for t in tasks} == {"calibration"}
    assert counters.queue_depth(db, NOW) == {"calibration": {"waiting": 60, "leased": 0}}


def test_a_pool_made_before_the_unique_lease_index_loses_its_redundant_frame_index(desk):
    world, db = desk
    with db.pool.transaction() as tx:  # what pools made before the unique index also had
        tx.execute("CREATE INDEX IF NOT EXISTS review_leases_frame ON review_leases(frame_id)")
    leases.ensure_schema(db.pool)
    names = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='review_leases'")}
    assert "review_leases_frame" not in names and "review_leases_one_per_frame" in names


def test_two_sessions_never_hold_the_same_task_or_frame(desk):
    world, db = desk
    # a second task on a frame already in someone's hands must not go to anyone else
    first = db.pool.tasks(status="submitted")[0]
    [extra] = db.pool.add_tasks(first.round, "review", [(first.frame_id, first.suggestion)])
    db.pool.mark_submitted([extra], leases.REVIEW_BACKEND, [None])
    a = leases.claim(db.pool, "ann", "session-a", leases.LABEL_PURPOSES, 1, NOW, LEASE_S)
    assert [lease.task_id for lease in a] == [first.id]
    b = leases.claim(db.pool, "bob", "session-b", leases.LABEL_PURPOSES, 40, NOW, LEASE_S)
    c = leases.claim(db.pool, "cy", "session-c", leases.LABEL_PURPOSES, 40, NOW, LEASE_S)
    held = a + b + c
    assert len({lease.task_id for lease in held}) == len(held) == 60  # 61 tasks, one waits for its frame
    assert len({lease.frame_id for lease in held}) == len(held)
    assert extra not in {lease.task_id for lease in held}
    # asking again returns what the session holds, renewed, not more
    again = leases.claim(db.pool, "ann", "session-a", leases.LABEL_PURPOSES, 1, NOW + 10, LEASE_S)
    assert [lease.task_id for lease in again] == [first.id] and again[0].expires == NOW + 10 + LEASE_S
    with pytest.raises(Conflict, match="leased to ann, not to this session"):
        _submit(db, "session-b", "bob", [(first.id, 3, 2.0)])
    _submit(db, "session-a", "ann", [(first.id, 3, 2.0)], now=NOW + 11)
    d = leases.claim(db.pool, "dee", "session-d", leases.LABEL_PURPOSES, 5, NOW + 12, LEASE_S)
    assert [lease.task_id for lease in d] == [extra]  # its frame is free again


def test_an_abandoned_lease_returns_to_the_queue(desk):
    world, db = desk
    [lease] = leases.claim(db.pool, "ann", "session-a", leases.LABEL_PURPOSES, 1, NOW, LEASE_S)
    others = leases.claim(db.pool, "bob", "session-b", leases.LABEL_PURPOSES, 100, NOW + 1, LEASE_S)
    assert lease.task_id not in {o.task_id for o in others} and len(others) == 59
    assert counters.queue_depth(db, NOW + 2)["calibration"] == {"waiting": 0, "leased": 60}
    later = NOW + LEASE_S + 0.5  # ann walked away; bob's leases are still alive
    assert counters.queue_depth(db, later)["calibration"] == {"waiting": 1, "leased": 59}
    [taken] = leases.claim(db.pool, "cy", "session-c", leases.LABEL_PURPOSES, 1, later, LEASE_S)
    assert taken.task_id == lease.task_id
    with pytest.raises(Conflict, match="leased to cy"):
        _submit(db, "session-a", "ann", [(lease.task_id, 2, 5.0)], now=later + 1)


def test_answers_are_one_transaction_with_annotator_measured_seconds_and_dollars(desk):
    world, db = desk
    granted = leases.claim(db.pool, "ann", "s", leases.LABEL_PURPOSES, 3, NOW, LEASE_S)
    ids = [g.task_id for g in granted]
    _submit(db, "s", "ann", [(ids[0], 4, 2.5)])
    # the second submission names a task already answered: nothing of it may be written
    with pytest.raises(Conflict, match="already answered"):
        _submit(db, "s", "ann", [(ids[1], 1, 1.0), (ids[0], 4, 1.0)])
    assert db.pool.task(ids[1]).status == "submitted"
    with pytest.raises(ReviewError, match="class index 0..10"):
        _submit(db, "s", "ann", [(ids[1], 11, 1.0)])
    with pytest.raises(NotFound):
        _submit(db, "s", "ann", [(999999, 1, 1.0)])
    _submit(db, "s", "ann", [(ids[1], None, 9000.0)])  # unusable, time clamped to max_answer_s
    done, unusable = db.pool.task(ids[0]), db.pool.task(ids[1])
    human = load_cost_model().human
    assert (done.status, done.answer, done.annotator, done.seconds) == ("done", 4, "ann", 2.5)
    assert done.dollars == pytest.approx(human.task_price(2.5))
    assert unusable.status == "failed" and unusable.error.startswith("unusable: marked by ann")
    assert unusable.seconds == 600.0 and unusable.annotator == "ann"
    assert answers.unusable_frames(db) == {unusable.frame_id}
    assert not db.query("SELECT 1 FROM review_leases WHERE task_id=?", (ids[0],))  # answered: lease gone


def test_undo_reopens_carries_the_seconds_and_stops_once_the_loop_collected(desk):
    world, db = desk
    granted = leases.claim(db.pool, "ann", "s", leases.LABEL_PURPOSES, 2, NOW, LEASE_S)
    first, second = (g.task_id for g in granted)
    _submit(db, "s", "ann", [(first, 2, 3.0)])
    _submit(db, "s", "ann", [(second, 5, 1.0)])
    with pytest.raises(Conflict, match="answered by ann, not bob"):
        answers.undo(db.pool, "bob", "t", NOW, LEASE_S, task_id=second)
    assert answers.undo(db.pool, "ann", "s", NOW + 1, LEASE_S) == [second]  # the newest answer
    task = db.pool.task(second)
    assert (task.status, task.answer, task.seconds) == ("submitted", None, None)
    assert db.query("SELECT session FROM review_leases WHERE task_id=?", (second,))[0][0] == "s"  # ann has it
    assert [h["task_id"] for h in answers.history(db, "ann")] == [first]
    _submit(db, "s", "ann", [(second, 6, 2.0)], now=NOW + 2)
    assert db.pool.task(second).seconds == pytest.approx(3.0)  # 1.0 undone + 2.0
    # the loop's next review step collects both answers into labels
    with CloudLoop(world.config, progress=False) as loop:
        loop.review()
        labels = loop.pool.labels()
    for task_id, label in ((first, 2), (second, 6)):
        task = db.pool.task(task_id)
        assert labels[task.frame_id].label == label and labels[task.frame_id].source == "human"
    with pytest.raises(Conflict, match="already collected"):
        answers.undo(db.pool, "ann", "s", NOW + 3, LEASE_S, task_id=second)


def test_skip_puts_the_task_behind_every_other_for_this_session_only(desk):
    world, db = desk
    [lease] = leases.claim(db.pool, "ann", "s", leases.LABEL_PURPOSES, 1, NOW, LEASE_S)
    leases.skip(db.pool, "s", lease.task_id, NOW + 1)
    [following] = leases.claim(db.pool, "ann", "s", leases.LABEL_PURPOSES, 1, NOW + 2, LEASE_S)
    assert following.task_id != lease.task_id
    [other] = leases.claim(db.pool, "bob", "t", leases.LABEL_PURPOSES, 1, NOW + 3, LEASE_S)
    assert other.task_id == lease.task_id  # for everyone else it is still the oldest
    with pytest.raises(Conflict):
        leases.skip(db.pool, "s", other.task_id, NOW + 4)


def test_counters_labels_per_hour_and_audited_accuracy_with_its_interval(desk):
    world, db = desk
    granted = leases.claim(db.pool, "ann", "s", leases.LABEL_PURPOSES, 4, NOW, LEASE_S)
    for g, seconds in zip(granted, (2.0, 2.0, 4.0, 4.0)):
        _submit(db, "s", "ann", [(g.task_id, 1, seconds)])
    # audits: 9 of 10 auto-labels confirmed (the loop's audit tasks suggest the accepted label)
    frames = [r["id"] for r in db.pool.frames()][:10]
    ids = db.pool.add_tasks(1, "audit", [(f, 3) for f in frames])
    db.pool.mark_submitted(ids, leases.REVIEW_BACKEND, [None] * len(ids))
    audit = leases.claim(db.pool, "bob", "t", leases.GRID_PURPOSES, 10, NOW, LEASE_S)
    assert len(audit) == 10
    _submit(db, "t", "bob", [(a.task_id, 3 if i else 7, 1.0) for i, a in enumerate(audit)])
    # the pool stamps answers with the wall clock: all of them fall in the last hour of now
    result = counters.counters(db, world.config, time.time())
    rates = {r["annotator"]: r for r in result["annotators"]}
    assert rates["ann"]["labels"] == 4 and rates["ann"]["last_hour"] == 4
    assert rates["ann"]["per_hour_pace"] == pytest.approx(3600 * 4 / 12.0, abs=0.1)
    assert result["audit"]["frames"] == 10 and result["audit"]["correct"] == 9
    low, high = result["audit"]["interval"]
    assert low == pytest.approx(0.5958, abs=1e-3) and high == pytest.approx(0.9821, abs=1e-3)  # Wilson, 95 %
    assert result["queue"]["calibration"]["waiting"] == 56
