"""Crash safety of the upload queue: uploader processes SIGKILLed at random moments (>= 30 kills here).

After every campaign each accepted frame must be in the store exactly once (frame + sidecar, bytes
matching their sha256) or still queued: nothing lost, duplicated or half-written.
"""

from fleetloop_sim.faults import audit, kill_campaign, read_accepted, synthetic_records
from fleetloop_core.store import FileStore

from fixtures.s3 import CREDENTIALS


def _assert_clean(report, kills):
    result = report.audit
    assert report.kills == kills
    assert result.accepted > 0 and result.committed == result.accepted, result.problems
    assert (result.lost, result.duplicated, result.half_written, result.unknown) == (0, 0, 0, 0), result.problems


def test_kill_9_file_store(tmp_path):
    report = kill_campaign(
        tmp_path / "work", f"file://{tmp_path / 'store'}", lambda i: synthetic_records(i, 80, seed=1), kills=24, seed=1
    )
    _assert_clean(report, 24)


def test_kill_9_s3_store(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    report = kill_campaign(
        tmp_path / "work",
        f"s3://{bucket}/fleet?endpoint_url={endpoint}",
        lambda i: synthetic_records(i, 40, seed=2),
        kills=8,
        seed=2,
        env=CREDENTIALS,
    )
    _assert_clean(report, 8)


def test_audit_sees_loss_duplication_and_half_writes(tmp_path):
    # the campaign's verdict is only worth something if the audit can fail
    records = synthetic_records(9, 4)
    store = FileStore(tmp_path / "store")
    for record in records[:2]:
        store.put_bytes(record.frame_key, record.frame)
        store.put_bytes(record.sidecar_key, record.sidecar_json)
    clean = audit(store, [records[2].frame_key], [r.frame_key for r in records[:3]], records)
    assert (clean.committed, clean.still_queued, clean.lost) == (2, 1, 0)
    lost = audit(store, [], [r.frame_key for r in records], records)
    assert lost.lost == 2
    copy = records[0].frame_key.replace("robot-9", "robot-x")
    store.put_bytes(copy, records[0].frame)
    store.put_bytes(records[3].sidecar_key, records[3].sidecar_json)  # sidecar without its frame
    store.put_bytes(records[1].frame_key, b"half")  # bytes not matching the sha
    bad = audit(store, [], [r.frame_key for r in records[:2]], records)
    assert bad.unknown == 1 and bad.half_written == 2
    store.put_bytes(copy.replace("robot-x", "robot-9").replace(".png", "-2.png"), b"")
    assert audit(store, [], [], records).unknown == 2


def test_torn_accepted_log_line_is_ignored(tmp_path):
    log = tmp_path / "accepted.log"
    log.write_text("frames/a.png\nframes/b.png\nframes/c.p")
    assert read_accepted(log) == ["frames/a.png", "frames/b.png"]
    assert read_accepted(tmp_path / "missing.log") == []
