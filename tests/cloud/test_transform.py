"""Auto-labeling in production: the teacher package served on the SageMaker inference contract,
run as batch transform jobs (create_model / create_transform_job validated against moto)."""

import json
import threading
import time
import urllib.error
import urllib.request

import boto3
import numpy as np

from fleetloop_core.inference import TierModel
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.store import open_store

from fleetloop_cloud.config import cloud_config_from_dict
from fleetloop_cloud.frames import decode_image
from fleetloop_cloud.loop import CloudLoop
from fleetloop_cloud.serve import create_app, predict_bytes
from fleetloop_cloud.transform import BatchTransformTeachers, job_name

from fixtures.cloud_world import cloud_config, fleet_sites, write_fleet
from fixtures.s3 import free_port

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetloop-serve:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerTransform"


def _post(url, data, content_type):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_inference_container_contract(tmp_path, cloud_models):
    import uvicorn

    store = open_store(f"file://{tmp_path / 'store'}")
    sidecars = write_fleet(store, [("robot-0", fleet_sites()[0])], 3)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cloud_models["T2"]), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
            assert response.status == 200
        from fleetloop_core.contracts.sidecar import frame_key

        data = store.get_bytes(frame_key(sidecars[0]))
        status, answer = _post(f"http://127.0.0.1:{port}/invocations", data, "application/x-image")
        assert (
            status == 200 and answer["tier"] == "T2" and answer["version"] == load_manifest(cloud_models["T2"]).version
        )
        local = TierModel.load(cloud_models["T2"], providers=("cpu",), warmup=0).infer(decode_image(data, "frame"))
        assert np.allclose(answer["probs"], local.probs[0], atol=1e-5)
        assert len(answer["embedding"]) == local.embedding.shape[1]
        assert _post(f"http://127.0.0.1:{port}/invocations", data, "text/csv")[0] == 415
        status, error = _post(f"http://127.0.0.1:{port}/invocations", b"not an image", "image/png")
        assert status == 400 and "cannot decode" in error["error"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_autolabel_as_batch_transform_jobs_on_moto(tmp_path, s3_bucket, cloud_models):
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/fleet?endpoint_url={endpoint}&region=us-east-1"  # store.uri drops the options
    store = open_store(uri)
    write_fleet(store, [("robot-0", fleet_sites()[0])], 12)
    client = boto3.client(
        "sagemaker",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    data = cloud_config(
        tmp_path,
        uri,
        cloud_models["T1"].parent,
        autolabel={
            "backend": "sagemaker-batch",
            "sagemaker": {"role_arn": ROLE, "image_uri": IMAGE, "instance_count": 2},
        },
    )
    with CloudLoop(cloud_config_from_dict(data), progress=False, clients={"transform": client}) as loop:
        loop.ingest()
        rows = loop.pool.frames()
        # what the inference container would write: one <key>.out per frame (moto runs no container)
        teachers = {tier: TierModel.load(cloud_models[tier], providers=("cpu",), warmup=0) for tier in ("T1", "T2")}
        backend = BatchTransformTeachers(loop.config.autolabel.sagemaker, store, client=client)
        for tier, model in teachers.items():
            job = job_name(tier, model.version, [r["id"] for r in rows])
            for row in rows:
                answer = predict_bytes(model, store.get_bytes(row["frame_key"]))
                store.put_bytes(backend.output_key(job, row["frame_key"]), json.dumps(answer).encode())

        report = loop.autolabel()

        assert report["predicted"] == {"T1": 12, "T2": 12}
        ids = [r["id"] for r in rows]
        for tier, model in teachers.items():
            probs, embeddings = loop.pool.predictions(tier, model.version, ids)
            local = model.infer_batch(np.stack(loop.cache.images(rows)))
            assert np.allclose(probs, local.probs, atol=1e-4) and embeddings.shape == local.embedding.shape
            job = job_name(tier, model.version, ids)
            described = client.describe_transform_job(TransformJobName=job)
            assert described["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
            source = described["TransformInput"]["DataSource"]["S3DataSource"]
            assert source["S3DataType"] == "ManifestFile"
            listing = json.loads(store.get_bytes(f"transform/{job}/input.manifest"))
            assert listing[0]["prefix"] == f"s3://{bucket}/fleet/" and sorted(listing[1:]) == sorted(
                r["frame_key"] for r in rows
            )
            model_desc = client.describe_model(ModelName=described["ModelName"])
            assert model_desc["PrimaryContainer"]["Image"] == IMAGE
            assert store.exists(f"sagemaker/models/{model.manifest.name}/{model.version}/model.tar.gz")
        assert loop.autolabel()["predicted"] == {"T1": 12, "T2": 12}  # done: the step is not run again
