"""The S3 store and the uploader against a real S3 HTTP server (moto in server mode on loopback)."""

import hashlib
import json
import os
import threading
import time

import boto3
import pytest

from fleetloop_core import cli
from fleetloop_sim.faults import audit, synthetic_records
from fleetloop_core.store import S3Store, StoreError, StoreUnavailable, ground_truth_manifest, open_store
from fleetloop_core.upload_queue import BackoffConfig, QueueConfig, UploadQueue
from fleetloop_core.uploader import Uploader

from fixtures.s3 import free_port


def test_put_get_head_list_delete_with_metadata_and_checksum(s3_bucket, s3_server):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/fleet?endpoint_url={endpoint}&region=us-east-1")
    store.put_bytes("frames/r1/2024-01-01/a.png", b"pixels", {"robot-id": "r1"})
    store.put_bytes("frames/r1/2024-01-01/a.json", b"{}")
    store.put_bytes("models/t4/1/model.onnx", b"weights")
    assert store.get_bytes("frames/r1/2024-01-01/a.png") == b"pixels"
    info = store.head("frames/r1/2024-01-01/a.png")
    assert info.size == 6 and info.metadata["robot-id"] == "r1"
    assert info.metadata["sha256"] == hashlib.sha256(b"pixels").hexdigest()
    raw = s3_server.client().head_object(Bucket=bucket, Key="fleet/frames/r1/2024-01-01/a.png", ChecksumMode="ENABLED")
    assert raw["ChecksumSHA256"]  # the service verified a SHA-256 checksum
    assert store.head("frames/r1/none.png") is None and not store.exists("frames/r1/none.png")
    assert [o.key for o in store.list("frames/")] == ["frames/r1/2024-01-01/a.json", "frames/r1/2024-01-01/a.png"]
    assert len(list(store.list())) == 3
    assert list(ground_truth_manifest(store)) == [
        {
            "source-ref": f"s3://{bucket}/fleet/frames/r1/2024-01-01/a.png",
            "fleetloop-sidecar-ref": f"s3://{bucket}/fleet/frames/r1/2024-01-01/a.json",
        }
    ]
    store.delete("models/t4/1/model.onnx")
    assert not store.exists("models/t4/1/model.onnx")
    with pytest.raises(StoreError, match="NoSuchKey"):
        store.get_bytes("models/t4/1/model.onnx")
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes("../escape", b"x")


def test_multipart_above_the_threshold(s3_bucket, s3_server, tmp_path):
    endpoint, bucket = s3_bucket
    threshold = 5 * 1024 * 1024  # S3's smallest part
    store = open_store(f"s3://{bucket}?endpoint_url={endpoint}&multipart_threshold={threshold}")
    big = os.urandom(threshold + 512 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(big)
    store.put_file("big.bin", path)
    store.put_bytes("small.bin", b"x" * 1000)
    client = s3_server.client()
    assert client.head_object(Bucket=bucket, Key="big.bin")["ETag"].strip('"').endswith("-2")  # two parts
    assert "-" not in client.head_object(Bucket=bucket, Key="small.bin")["ETag"]
    store.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big


def test_unreachable_endpoint_is_retryable():
    store = open_store(f"s3://nobody?endpoint_url=http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        store.put_bytes("k", b"v")
    with pytest.raises(StoreUnavailable):
        store.head("k")


def test_refused_credentials_give_a_clear_error_and_records_stay_queued(s3_auth_server, tmp_path, capsys):
    server, bucket, (key_id, secret) = s3_auth_server
    refused = S3Store(bucket, endpoint_url=server.endpoint_url)  # env credentials: unknown to IAM
    with pytest.raises(StoreError, match=r"credentials refused \(InvalidAccessKeyId") as info:
        refused.put_bytes("k", b"v")
    assert not isinstance(info.value, StoreUnavailable)  # no point retrying
    records = synthetic_records(5, 4)
    with UploadQueue(tmp_path / "q") as queue:
        for record in records:
            queue.put(record)
        report = Uploader(queue, refused).drain()
        assert report.uploaded == 0 and "credentials refused" in report.error and len(queue) == 4
    # the CLI says so, exits 1, and keeps the records
    code = cli.main(
        [
            "queue",
            "drain",
            "--queue",
            str(tmp_path / "q"),
            "--store",
            f"s3://{bucket}?endpoint_url={server.endpoint_url}",
        ]
    )
    assert code == 1 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["left"] == 4
    # fixed credentials: the same queue drains
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    allowed = S3Store(bucket, endpoint_url=server.endpoint_url, client=client)
    with UploadQueue(tmp_path / "q") as queue:
        assert Uploader(queue, allowed).drain().uploaded == 4 and len(queue) == 0
    assert all(allowed.exists(r.sidecar_key) for r in records)


def test_outage_mid_drain_every_accepted_frame_lands_exactly_once(s3_bucket, s3_proxy, tmp_path):
    _, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/fleet?endpoint_url={s3_proxy.endpoint_url}")
    direct = open_store(f"s3://{bucket}/fleet?endpoint_url=http://127.0.0.1:{s3_proxy.target_port}")
    records = synthetic_records(6, 40)
    config = QueueConfig(
        directory=str(tmp_path / "q"),
        backoff=BackoffConfig(initial_s=0.05, max_s=0.3),
        idle_poll_s=0.02,
        orphan_grace_s=0.0,
    )
    with UploadQueue.from_config(config) as queue:
        accepted = [r.frame_key for r in records if queue.put(r).accepted]
        assert len(accepted) == len(records)
        uploader = Uploader(queue, store, config)
        uploader.start()
        try:
            deadline = time.monotonic() + 60
            while queue.stats().uploaded_total < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            s3_proxy.down()  # the store goes away mid-drain
            uploaded_at_outage = queue.stats().uploaded_total
            deadline = time.monotonic() + 60
            while "cannot reach" not in (queue.stats().last_error or "") and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)  # a few back-off rounds against a dead store
            held = queue.stats()
            assert held.records == len(records) - held.uploaded_total > 0  # the queue holds
            assert held.uploaded_total <= uploaded_at_outage + 1  # (one request may have been in flight)
            s3_proxy.up()  # ... and comes back
            deadline = time.monotonic() + 60
            while len(queue) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            uploader.stop()
        assert len(queue) == 0
        report = uploader.last_report
        assert report.failures > 0 and report.backoff_s and max(report.backoff_s) <= 0.3
        result = audit(direct, queue.keys(), accepted, records)
    assert (result.lost, result.duplicated, result.half_written, result.unknown) == (0, 0, 0, 0), result.problems
    assert result.committed == len(records)
    assert len(list(direct.list("frames/"))) == 2 * len(records)


def test_s3_and_file_uris_pick_their_backends(tmp_path):
    assert open_store(f"file://{tmp_path}/s").uri == f"file://{tmp_path}/s"
    s3 = open_store("s3://bucket/some/prefix?region=eu-west-1")
    assert isinstance(s3, S3Store) and s3.url("a/b.png") == "s3://bucket/some/prefix/a/b.png"
    with pytest.raises(StoreError, match="unknown option"):
        open_store("s3://bucket?endpoint=http://x")
    with pytest.raises(StoreError, match="unknown store scheme 'gs'"):
        open_store("gs://bucket")


def test_concurrent_puts_from_threads(s3_bucket):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}?endpoint_url={endpoint}")
    errors = []

    def put(i):
        try:
            store.put_bytes(f"t/{i}.bin", bytes([i]) * 100)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(list(store.list("t/"))) == 8
