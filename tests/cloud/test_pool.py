"""The pool: frame states, labels with history, tasks, rounds and steps (survives reopening), on each backend:
the SQLite file and a real PostgreSQL (tests/fixtures/postgres.py)."""

import numpy as np
import pytest

from fleetloop_cloud.pool import FrameRecord, Pool, PoolError


@pytest.fixture(params=["sqlite", "postgresql"])
def pool_target(request, tmp_path):
    """Where each test's pool lives: a SQLite file, then a fresh PostgreSQL database."""
    return tmp_path / "pool.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_uri")


def _record(i: int, robot: str = "r1", **extra) -> FrameRecord:
    sha = f"{i:064x}"
    return FrameRecord(
        id=sha,
        robot_id=robot,
        stream="camera",
        site="site-0",
        stamp_ns=i * 100_000_000,
        frame_key=f"frames/{robot}/2026-01-01/{sha}.png",
        sidecar_key=f"frames/{robot}/2026-01-01/{sha}.json",
        width=128,
        height=128,
        random=False,
        track_hint=None,
        robot_embedding=np.ones(4, np.float32) / 2,
        phash=(1 << 63) + i,
        sim_label=i % 11,
        sidecar="{}",
        **extra,
    )


def test_frames_round_trip_and_survive_reopening(pool_target):
    with Pool(pool_target) as pool:
        assert pool.add_frame(_record(1))
        assert not pool.add_frame(_record(1))  # same sha256: one frame
        pool.add_frame(_record(2, state="duplicate", duplicate_of=f"{1:064x}"))
        pool.add_sighting(f"{1:064x}", "r2", "frames/r2/2026-01-01/x.json")
    with Pool(pool_target) as pool:
        assert [r["id"] for r in pool.frames()] == [f"{1:064x}"]  # duplicates hidden by default
        assert len(pool.frames(include_duplicates=True)) == 2
        assert [p[:3] for p in pool.phashes()] == [(f"{1:064x}", "r1", (1 << 63) + 1)]  # full 64-bit hash back
        assert "frames/r2/2026-01-01/x.json" in pool.known_sidecar_keys()
        with pytest.raises(PoolError, match="unknown frame state 'lost'"):
            pool.set_state([f"{1:064x}"], "lost")


def test_labels_keep_their_history_and_usage_marks_frames_used(pool_target):
    pool = Pool(pool_target)
    frame = _record(3)
    pool.add_frame(frame)
    pool.set_label(frame.id, 4, "auto", 1, reason="auto-accepted", confidence=0.99)
    pool.remove_label(frame.id, 1, reason="below tightened threshold")
    assert frame.id not in pool.labels()
    pool.set_label(frame.id, 5, "human", 1, reason="review task 9")
    pool.set_state([frame.id], "labeled")
    events = [(e["label"], e["source"], e["reason"]) for e in pool.label_events(frame.id)]
    assert events == [
        (4, "auto", "auto-accepted"),
        (-1, "auto", "below tightened threshold"),
        (5, "human", "review task 9"),
    ]
    pool.record_usage([frame.id], "r1-abc")
    assert pool.frame(frame.id)["state"] == "used" and pool.usage(frame.id) == ["r1-abc"]
    with pytest.raises(PoolError, match="unknown label source"):
        pool.set_label(frame.id, 1, "oracle", 1, reason="x")


def test_task_lifecycle(pool_target):
    pool = Pool(pool_target)
    pool.add_frame(_record(5))
    ids = pool.add_tasks(1, "review", [(f"{5:064x}", 3)])
    pool.mark_submitted(ids, "sagemaker-groundtruth", ["job-1"])
    task = pool.task(ids[0])
    assert (task.status, task.backend, task.external_id, task.suggestion) == (
        "submitted",
        "sagemaker-groundtruth",
        "job-1",
        3,
    )
    pool.answer_task(ids[0], 3, "worker-7", 1.6, 0.092)
    with pytest.raises(PoolError, match="not open"):
        pool.answer_task(ids[0], 2, "worker-8", 1.0, 0.0)  # an answer is final
    assert [t.id for t in pool.unapplied(1)] == ids
    pool.mark_applied(ids)
    assert pool.unapplied(1) == []
    with pytest.raises(PoolError, match="unknown task purpose"):
        pool.add_tasks(1, "gossip", [(f"{5:064x}", None)])


def test_a_pool_an_older_version_made_gains_the_columns_added_since(pool_target):
    with Pool(pool_target) as pool:
        pool.add_frame(_record(6))
        pool._db.execute("ALTER TABLE tasks DROP COLUMN alternative")  # the tasks table as it was before it
        [old] = pool.add_tasks(1, "review", [(f"{6:064x}", 3)])
    with Pool(pool_target) as pool:  # opening adds the column; the tasks already there have none
        assert pool.task(old).alternative is None
        first, second = pool.add_tasks(1, "review", [(f"{6:064x}", 3), (f"{6:064x}", None)], alternatives=[5, None])
        assert (pool.task(first).suggestion, pool.task(first).alternative, pool.task(second).alternative) == (
            3,
            5,
            None,
        )
    with Pool(pool_target) as pool:  # and opening again changes nothing
        assert [t.alternative for t in pool.tasks()] == [None, 5, None]
        with pytest.raises(PoolError, match="2 tasks and 1 sets of their columns"):
            pool.add_tasks(1, "review", [(f"{6:064x}", 3), (f"{6:064x}", 4)], alternatives=[5])


def test_rounds_and_steps(pool_target):
    pool = Pool(pool_target)
    assert pool.current_round() is None
    first = pool.open_round()
    assert pool.open_round() == first == 1  # the open round, not a new one
    assert pool.step(1, "ingest") == ("pending", {})
    pool.set_step(1, "ingest", "done", {"ingested": 3})
    assert pool.step(1, "ingest") == ("done", {"ingested": 3})
    pool.finish_round(1, {"labels": 3})
    assert pool.current_round() is None and pool.round_summary(1) == {"labels": 3}
    assert pool.open_round() == 2
    pool.set_step(2, "ingest", "running")
    assert pool.last_done("ingest") == 1 and pool.last_done("ingest", before=1) is None  # running is not done
    assert pool.last_done("train") is None
    pool.put("threshold_floor", 0.93)
    assert pool.get("threshold_floor") == 0.93 and pool.get("missing", 7) == 7
