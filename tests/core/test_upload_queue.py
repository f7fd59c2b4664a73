"""The upload queue and uploader (fleetloop_core.upload_queue) against the file store."""

import errno
import json
import os
import random

import numpy as np
import pytest

from fleetloop_core import cli
from fleetloop_sim.faults import synthetic_records
from fleetloop_core.record import EncodedRecord, UploadRecord, decode_image
from fleetloop_core.contracts.sidecar import parse_sidecar
from fleetloop_core.store import FileStore, StoreError, ground_truth_manifest
from fleetloop_core.upload_queue import BackoffConfig, QueueConfig, UploadQueue, load_queue_config
from fleetloop_core.uploader import Uploader, backoff_delay


class RecordingStore(FileStore):
    """A real file store that also remembers the order of puts."""

    def __init__(self, root):
        super().__init__(root)
        self.puts = []

    def put_bytes(self, key, data, metadata=None):
        super().put_bytes(key, data, metadata)
        self.puts.append(key)


@pytest.fixture
def records():
    return synthetic_records(0, 12)


def uploader_for(queue, store, **config):
    return Uploader(queue, store, QueueConfig(directory=str(queue.directory), orphan_grace_s=0.0, **config))


def test_shipped_config_loads():
    config = load_queue_config()
    assert config.disk_cap_bytes > 0 and config.backoff.multiplier >= 1


def test_put_drain_uploads_frame_first_then_sidecar(tmp_path, records):
    store = RecordingStore(tmp_path / "store")
    with UploadQueue(tmp_path / "q") as queue:
        for record in records:
            assert queue.put(record).accepted
        assert len(queue) == len(records) and queue.stats().bytes == sum(r.size_bytes for r in records)
        report = uploader_for(queue, store).drain()
        assert report.uploaded == len(records) and len(queue) == 0 and queue.stats().uploaded_total == len(records)
        assert list((tmp_path / "q" / "blobs").iterdir()) == []
    for record in records:
        assert store.get_bytes(record.frame_key) == record.frame
        assert parse_sidecar(store.get_bytes(record.sidecar_key)) == record.sidecar
        assert store.puts.index(record.frame_key) < store.puts.index(record.sidecar_key)
        assert store.head(record.frame_key).metadata["robot-id"] == record.sidecar.robot_id
    by_priority = sorted(records, key=lambda r: -r.priority)
    assert [k for k in store.puts if k.endswith(".png")] == [r.frame_key for r in by_priority]
    lines = list(ground_truth_manifest(store))
    assert len(lines) == len(records) and lines[0]["source-ref"].startswith(store.uri)


def test_selector_records_are_encoded_by_put(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    sizes = []
    record = UploadRecord(
        image=image,
        fields={"robot_id": "r", "stamp_ns": 5},
        priority=0.3,
        encoding="jpeg",
        jpeg_quality=80,
        on_encoded=sizes.append,
    )
    with UploadQueue(tmp_path / "q") as queue:
        result = queue.put(record)
        assert result.accepted and result.frame_key.endswith(".jpg")
        assert sizes == [record.encode().size_bytes]
    png = EncodedRecord.from_image(image, {"robot_id": "r", "stamp_ns": 5})
    np.testing.assert_array_equal(decode_image(png.frame), image)  # PNG is lossless


def test_puts_are_idempotent_and_uploads_make_no_copies(tmp_path, records):
    store = FileStore(tmp_path / "store")
    with UploadQueue(tmp_path / "q") as queue:
        assert queue.put(records[0]).accepted
        again = queue.put(records[0])
        assert again.accepted and again.already_queued and len(queue) == 1
        uploader = uploader_for(queue, store)
        uploader.drain()
        queue.put(records[0])  # the same frame again, after it was uploaded
        uploader.drain()
    assert sorted(o.key for o in store.list()) == sorted([records[0].frame_key, records[0].sidecar_key])


def test_queue_survives_reopen(tmp_path, records):
    with UploadQueue(tmp_path / "q") as queue:
        for record in records[:5]:
            queue.put(record)
    with UploadQueue(tmp_path / "q") as queue:
        assert sorted(queue.keys()) == sorted(r.frame_key for r in records[:5])


def test_disk_cap_evicts_lowest_priority_first_never_the_record_in_flight(tmp_path):
    made = synthetic_records(1, 6)
    records = [EncodedRecord(r.frame, r.sidecar, priority=p) for r, p in zip(made, [0.1, 0.5, 0.9, 0.2, 0.7, 0.6])]
    cap = sum(r.size_bytes for r in records[:4]) + 10
    with UploadQueue(tmp_path / "q", disk_cap_bytes=cap) as queue:
        for record in records[:3]:
            assert queue.put(record).accepted
        in_flight = queue.claim()
        assert in_flight.priority == 0.9
        queue.put(records[3])  # 4 records fit
        result = queue.put(records[4])  # 0.7: evicts the lowest, 0.1
        assert result.accepted and result.evicted == (records[0].frame_key,)
        result = queue.put(records[5])  # 0.6: evicts 0.2
        assert result.accepted and result.evicted == (records[3].frame_key,)
        assert queue.stats().bytes <= cap
        low = EncodedRecord(synthetic_records(2, 1)[0].frame, synthetic_records(2, 1)[0].sidecar, priority=0.05)
        rejected = queue.put(low)  # less valuable than everything queued
        assert not rejected.accepted and "at least as valuable" in rejected.reason
        assert in_flight.frame_key in queue.keys()  # in flight: never evicted
        stats = queue.stats()
        assert stats.evicted_total == 2 and stats.rejected_total == 1 and stats.in_flight == 1
        assert len(list((tmp_path / "q" / "blobs").iterdir())) == 4  # evicted files are gone


def test_disk_full_under_the_cap_evicts_instead_of_crashing(tmp_path, monkeypatch):
    records = synthetic_records(3, 4)
    with UploadQueue(tmp_path / "q") as queue:
        for record in records[:3]:
            queue.put(EncodedRecord(record.frame, record.sidecar, priority=0.1))
        real_write = queue._files.write
        failures = iter([True])

        def full_once(name, data):
            if next(failures, False):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(name, data)

        monkeypatch.setattr(queue._files, "write", full_once)
        result = queue.put(EncodedRecord(records[3].frame, records[3].sidecar, priority=0.9))
        assert result.accepted and len(result.evicted) == 1 and len(queue) == 3

        def always_full(name, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(queue._files, "write", always_full)
        result = queue.put(
            EncodedRecord(records[3].frame, records[3].sidecar.model_copy(update={"stamp_ns": 1}), priority=0.05)
        )
        assert not result.accepted and "disk full" in result.reason and len(queue) == 3


def test_record_larger_than_the_cap_is_rejected(tmp_path, records):
    with UploadQueue(tmp_path / "q", disk_cap_bytes=100) as queue:
        result = queue.put(records[0])
        assert not result.accepted and "larger than the disk cap" in result.reason


def test_corrupt_frame_file_is_set_aside_not_uploaded(tmp_path, records):
    store = FileStore(tmp_path / "store")
    with UploadQueue(tmp_path / "q") as queue:
        queue.put(records[0])
        queue.put(records[1])
        blob = next(p for p in (tmp_path / "q" / "blobs").iterdir() if p.read_bytes() == records[0].frame)
        blob.write_bytes(b"flipped bits")
        report = uploader_for(queue, store).drain()
        assert report.uploaded == 1 and report.corrupt == 1
        stats = queue.stats()
        assert stats.corrupt == 1 and "does not match its sha256" in stats.last_error
        assert not store.exists(records[0].frame_key) and not store.exists(records[0].sidecar_key)
        assert queue.purge(corrupt_only=True) == 1 and queue.stats().records == 0


def test_recover_releases_dead_uploaders_and_sweeps_orphans(tmp_path, records):
    with UploadQueue(tmp_path / "q") as queue:
        queue.put(records[0])
        queue.put(records[1])
        dead_pid = 2**22 + 12345  # above pid_max: never alive
        claimed = queue.claim(owner=dead_pid)
        queue.mark_frame_uploaded(claimed.id)
        (tmp_path / "q" / "blobs" / "orphan.png").write_bytes(b"left by a crash")
        recovered = queue.recover(orphan_grace_s=0.0)
        assert recovered == {"released": 1, "orphans_removed": 1}
        store = RecordingStore(tmp_path / "store")
        uploader_for(queue, store).drain()
        # the frame was already uploaded before the crash: only its sidecar is sent again
        assert claimed.frame_key not in store.puts and claimed.sidecar_key in store.puts


def test_refusing_store_keeps_records_queued(tmp_path, records):
    class Refusing(FileStore):
        def put_bytes(self, key, data, metadata=None):
            raise StoreError(f"{self.uri}: credentials refused (AccessDenied) when trying to put {key}")

    with UploadQueue(tmp_path / "q") as queue:
        for record in records[:3]:
            queue.put(record)
        report = uploader_for(queue, Refusing(tmp_path / "store")).drain()
        assert report.uploaded == 0 and "credentials refused" in report.error
        assert len(queue) == 3 and queue.stats().in_flight == 0
        assert "credentials refused" in queue.stats().last_error


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    config = BackoffConfig(initial_s=1.0, max_s=30.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff_delay(failures, config, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > 0.3 * base  # jitter spreads a fleet's retries
    assert backoff_delay(3, BackoffConfig(initial_s=1, jitter=0.0), rng) == 4.0


def test_bandwidth_cap_paces_uploads(tmp_path, records):
    waits = []

    class Clockless:
        """Stands in for the stop event: records how long the uploader asked to wait."""

        def wait(self, seconds):
            waits.append(seconds)
            return False

        def is_set(self):
            return False

    rate = 2000.0
    with UploadQueue(tmp_path / "q") as queue:
        for record in records:
            queue.put(record)
        uploader = uploader_for(queue, FileStore(tmp_path / "store"), bandwidth_bytes_per_s=rate)
        uploader._stop = Clockless()
        uploader.drain()
    total = sum(r.size_bytes for r in records)
    # the bucket starts empty: every byte waits its turn at the capped rate
    assert sum(waits) == pytest.approx(total / rate, rel=0.1)
    assert len(waits) == len(records)


def test_uploader_thread_drains_as_records_arrive(tmp_path, records):
    import time

    store = FileStore(tmp_path / "store")
    with UploadQueue(tmp_path / "q") as queue:
        uploader = uploader_for(queue, store, idle_poll_s=0.01)
        uploader.start()
        try:
            for record in records:
                queue.put(record)
            deadline = time.monotonic() + 30
            while len(queue) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            uploader.stop()
        assert len(queue) == 0
    assert all(store.exists(r.sidecar_key) for r in records)


def test_queue_cli_stats_drain_purge(tmp_path, records, capsys):
    directory = tmp_path / "q"
    with UploadQueue(directory) as queue:
        for record in records[:4]:
            queue.put(record)
    assert cli.main(["queue", "stats", "--queue", str(directory), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 4 and stats["bytes"] == sum(r.size_bytes for r in records[:4])
    store = f"file://{tmp_path / 'store'}"
    assert cli.main(["queue", "drain", "--queue", str(directory), "--store", store, "--max", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["uploaded"] == 3
    assert cli.main(["queue", "purge", "--queue", str(directory)]) == 0
    assert "would delete 1" in capsys.readouterr().out
    assert cli.main(["queue", "purge", "--queue", str(directory), "--yes"]) == 0
    assert cli.main(["queue", "stats", "--queue", str(directory)]) == 0
    assert "records queued" in capsys.readouterr().out
    assert cli.main(["queue", "stats", "--queue", str(tmp_path / "nowhere")]) == 1


def test_fsync_and_rename_leave_no_partial_blob_names(tmp_path, records, monkeypatch):
    # a failure half-way through writing a frame file leaves no file under its final name
    with UploadQueue(tmp_path / "q") as queue:

        def broken_fsync(fd):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(Exception, match="I/O error"):
            queue.put(records[0])
        monkeypatch.undo()
        assert list((tmp_path / "q" / "blobs").iterdir()) == [] and len(queue) == 0
