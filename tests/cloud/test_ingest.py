"""Ingest: frames + sidecars from a store into the pool; bad input quarantined with a reason."""

import json

import numpy as np
import pytest

from fleetloop_sim.dataset import LABELS

from fleetloop_core.contracts.sidecar import SimulationTruth, frame_key, sidecar_key
from fleetloop_core.store import open_store

from fleetloop_cloud.config import IngestConfig
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.ingest import augmented_manifest, hamming, ingest, perceptual_hash, write_jsonl
from fleetloop_cloud.pool import Pool

from fixtures.uploads import frame_image as _frame, png as _png, upload as _upload


@pytest.fixture
def setup(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    pool = Pool(tmp_path / "pool.sqlite")
    cache = FrameCache(tmp_path / "frames", store)
    return store, pool, cache


def test_ingest_validates_caches_and_is_idempotent(setup):
    store, pool, cache = setup
    sidecars = [_upload(store, "r1", _frame(i), i) for i in range(4)]
    report = ingest(store, pool, cache, 1, IngestConfig(), LABELS, progress=False)
    assert report.ingested == 4 and not report.quarantined
    rows = pool.frames()
    assert {r["id"] for r in rows} == {s.frame_sha256 for s in sidecars}
    row = pool.frame(sidecars[0].frame_sha256)
    assert (row["state"], row["random"], row["track_hint"], row["sim_label"]) == ("new", 1, "t1", 3)
    assert cache.path(row["id"], row["frame_key"]).is_file()
    again = ingest(store, pool, cache, 1, IngestConfig(), LABELS, progress=False)
    assert again.ingested == 0 and again.already_known == 4


def test_bad_input_is_quarantined_with_the_reason_never_dropped(setup):
    store, pool, cache = setup
    good = _upload(store, "r1", _frame(1), 1)
    orphan = _upload(store, "r1", _frame(2), 2, write_sidecar=False)  # frame, no sidecar (yet)
    no_frame = _upload(store, "r1", _frame(3), 3, write_frame=False)  # sidecar for a missing frame
    unknown = _upload(store, "r1", _frame(4), 4, labels=["t-shirt", "unicorn"], prediction=1)
    wrong_truth = _upload(store, "r1", _frame(5), 5, simulation=SimulationTruth(label=42))
    replaced = _upload(store, "r1", _frame(6), 6)
    store.put_bytes(frame_key(replaced), _png(_frame(66)))  # bytes no longer match sha256
    broken = _upload(store, "r1", _frame(7), 7)
    store.put_bytes(sidecar_key(broken), b'{"schema": "fleetloop.sidecar/1", "robot_id": ""')
    report = ingest(store, pool, cache, 1, IngestConfig(orphan_grace_s=60), LABELS, now=1000.0, progress=False)
    assert report.ingested == 1 and pool.has_frame(good.frame_sha256)
    reasons = pool.quarantined()
    assert "sidecar without frame" in reasons[sidecar_key(no_frame)]
    assert "unknown class(es) ['unicorn']" in reasons[sidecar_key(unknown)]
    assert "simulation.label 42 is not a known class" in reasons[sidecar_key(wrong_truth)]
    assert "sha256 of the frame bytes" in reasons[sidecar_key(replaced)]
    assert "not valid JSON" in reasons[sidecar_key(broken)]
    # the frame without sidecar waits (the upload may be in flight) ...
    assert report.waiting == [frame_key(orphan)] and frame_key(orphan) not in reasons
    # ... and is quarantined once the grace period is over
    later = ingest(store, pool, cache, 1, IngestConfig(orphan_grace_s=60), LABELS, now=1100.0, progress=False)
    assert "frame without sidecar for 100 s" in later.quarantined[frame_key(orphan)]
    assert later.ingested == 0
    # if its sidecar arrives after all, releasing the quarantine ingests it
    _upload(store, "r1", _frame(2), 2)
    pool.release_quarantine(frame_key(orphan))
    assert (
        ingest(store, pool, cache, 1, IngestConfig(orphan_grace_s=60), LABELS, now=1200.0, progress=False).ingested == 1
    )


def test_duplicates_across_robots(setup):
    store, pool, cache = setup
    image = _frame(10)
    first = _upload(store, "r1", image, 1)
    _upload(store, "r2", image, 1)  # the very same bytes from another robot
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    near = _upload(store, "r2", noisy, 2)  # near-duplicate from another robot
    noisy_too = np.clip(image.astype(int) + np.random.default_rng(1).integers(-2, 3, image.shape), 0, 255)
    same_robot = _upload(store, "r1", noisy_too.astype(np.uint8), 3)  # the same robot: a legitimate track frame
    report = ingest(store, pool, cache, 1, IngestConfig(near_duplicate_bits=6), LABELS, progress=False)
    assert report.exact_duplicates == 1 and report.near_duplicates == 1 and report.ingested == 2
    near_row = pool.frames(state="duplicate")[0]
    assert near_row["id"] == near.frame_sha256 and near_row["duplicate_of"] in (
        first.frame_sha256,
        same_robot.frame_sha256,
    )
    assert hamming(np.array([perceptual_hash(image)], np.uint64), perceptual_hash(noisy))[0] <= 6


def test_augmented_manifest_for_ground_truth(setup, tmp_path):
    store, pool, cache = setup
    a = _upload(store, "r1", _frame(20), 1)
    b = _upload(store, "r1", _frame(21), 2)
    ingest(store, pool, cache, 1, IngestConfig(), LABELS, progress=False)
    pool.set_label(a.frame_sha256, 8, "auto", 1, reason="test", confidence=0.993)
    records = augmented_manifest(pool, store, [a.frame_sha256, b.frame_sha256], LABELS, job_name="round-1")
    assert records[0]["source-ref"] == store.url(frame_key(a))
    assert records[0]["fleetloop-label"] == 8
    meta = records[0]["fleetloop-label-metadata"]
    assert meta["class-name"] == "bag" and meta["human-annotated"] == "no" and meta["confidence"] == 0.993
    assert meta["type"] == "groundtruth/image-classification" and meta["job-name"] == "labeling-job/round-1"
    assert "fleetloop-label" not in records[1]  # unlabeled frames: source-ref only
    path = write_jsonl(records, tmp_path / "round-1.manifest")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["fleetloop-frame"] == a.frame_sha256


def test_a_frame_without_wall_clock_stamp_is_filed_under_its_day_and_old_1970_keys_still_ingest(setup):
    store, pool, cache = setup
    unstamped = _upload(store, "r1", _frame(1), 1, stamp_ns=0, created="2026-12-06T09:30:00.000+00:00")
    since_boot = _upload(store, "r1", _frame(2), 2, stamp_ns=3_600 * 10**9, created="2026-12-06T23:30:00.000-02:00")
    assert sidecar_key(unstamped).startswith("frames/r1/2026-12-06/")
    assert sidecar_key(since_boot).startswith("frames/r1/2026-12-07/")  # the day in UTC
    # what robots before 2026-12-06 wrote for such a frame: keyed by its stamp, 1970-01-01
    legacy = _upload(store, "r1", _frame(3), 3, stamp_ns=0, write_sidecar=False, write_frame=False)
    data = _png(_frame(3))
    store.put_bytes(f"frames/r1/1970-01-01/{legacy.frame_sha256}.png", data)
    store.put_bytes(f"frames/r1/1970-01-01/{legacy.frame_sha256}.json", legacy.to_json().encode())

    report = ingest(store, pool, cache, 1, IngestConfig(), LABELS, progress=False)

    assert report.ingested == 3 and not report.quarantined
    assert pool.frame(legacy.frame_sha256)["frame_key"] == f"frames/r1/1970-01-01/{legacy.frame_sha256}.png"
    stamped = _upload(store, "r1", _frame(4), 4)  # a wall-clock stamp keeps its own date, whenever it was sent
    assert sidecar_key(stamped.model_copy(update={"created": "2030-01-01T00:00:00+00:00"})) == sidecar_key(stamped)
