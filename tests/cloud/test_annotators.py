"""Annotators behind one interface: simulated, review page, SageMaker Ground Truth and A2I.

Ground Truth's create_labeling_job and A2I's start_human_loop are not in moto: their API calls are
checked with botocore's Stubber; the manifests and outputs they exchange travel through a real S3
server (moto) holding the frames.
"""

import datetime
import json

import boto3
import pytest
from botocore.stub import ANY, Stubber

from fleetloop_sim.dataset import LABELS
from fleetloop_core.store import open_store

from fleetloop_cloud.annotators import (
    A2IAnnotator,
    AnnotatorContext,
    AnnotatorError,
    GroundTruthAnnotator,
    SimulatedAnnotator,
    TaskRequest,
    make_annotator,
    record_answer,
)
from fleetloop_cloud.config import cloud_config_from_dict, load_cost_model
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.ingest import ingest
from fleetloop_cloud.pool import Pool
from fleetloop_core.errors import ConfigError

from test_ingest import _frame, _upload

ROLE = "arn:aws:iam::123456789012:role/GroundTruth"
NOW = datetime.datetime(2026, 9, 21, tzinfo=datetime.timezone.utc)


def _config(tmp_path, store_uri, **annotators):
    return cloud_config_from_dict(
        {
            "store": store_uri,
            "work_dir": str(tmp_path / "work"),
            "models": str(tmp_path / "models"),
            "annotators": annotators,
        }
    )


def _world(tmp_path, store_uri, labels=(3, 8)):
    store = open_store(store_uri)
    for i, label in enumerate(labels):
        _upload(store, "r1", _frame(100 + i), i, label=label)
    pool = Pool(tmp_path / "pool.sqlite")
    from fleetloop_cloud.config import IngestConfig

    ingest(store, pool, FrameCache(tmp_path / "frames", store), 1, IngestConfig(), LABELS, progress=False)
    return store, pool, [r["id"] for r in pool.frames()]


def _requests(pool, store, task_ids):
    out = []
    for tid in task_ids:
        task = pool.task(tid)
        row = pool.frame(task.frame_id)
        out.append(
            TaskRequest(
                tid, task.frame_id, row["frame_key"], store.url(row["frame_key"]), task.suggestion, task.purpose
            )
        )
    return out


def test_simulated_annotator_is_ground_truth_with_a_seeded_error_rate(tmp_path):
    store, pool, ids = _world(tmp_path, f"file://{tmp_path / 'store'}", labels=[3] * 1)
    task_ids = pool.add_tasks(1, "review", [(ids[0], 3)] * 400)
    exact_config = _config(tmp_path, store.uri, simulated={"error_rate": 0.0})
    exact = SimulatedAnnotator(AnnotatorContext(pool, store, exact_config, LABELS, 1))
    assert {a.label for a in exact.collect(pool.tasks())} == {3}
    noisy_config = _config(tmp_path, store.uri, simulated={"error_rate": 0.1, "seed": 4})
    noisy = SimulatedAnnotator(AnnotatorContext(pool, store, noisy_config, LABELS, 1))
    answers = noisy.collect(pool.tasks())
    wrong = sum(a.label != 3 for a in answers)
    assert 20 <= wrong <= 65  # ~10 % of 400
    assert [a.label for a in answers] == [a.label for a in noisy.collect(pool.tasks())]  # deterministic
    assert len(task_ids) == 400


def test_simulated_annotator_refuses_frames_without_ground_truth(tmp_path):
    store, pool, ids = _world(tmp_path, f"file://{tmp_path / 'store'}", labels=[3])
    pool._db.execute("UPDATE frames SET sim_label=NULL")
    pool.add_tasks(1, "review", [(ids[0], None)])
    answer = SimulatedAnnotator(AnnotatorContext(pool, store, _config(tmp_path, store.uri), LABELS, 1)).collect(
        pool.tasks()
    )[0]
    assert answer.label is None and "no simulated ground truth" in answer.error


def test_review_page_answers_through_the_pool_with_costs(tmp_path):
    store, pool, ids = _world(tmp_path, f"file://{tmp_path / 'store'}")
    cost = load_cost_model()
    annotator = make_annotator("review-page", AnnotatorContext(pool, store, _config(tmp_path, store.uri), LABELS, 1))
    task_ids = pool.add_tasks(1, "review", [(ids[0], 3), (ids[1], 8)])
    pool.mark_submitted(task_ids, annotator.name, annotator.submit(_requests(pool, store, task_ids)))
    record_answer(pool, cost, task_ids[0], "dress", "alice", LABELS)  # confirms the suggestion
    record_answer(pool, cost, task_ids[1], 2, "alice", LABELS)  # corrects it
    first, second = pool.task(task_ids[0]), pool.task(task_ids[1])
    assert (first.answer, first.seconds) == (3, cost.human.seconds_per_verify)
    assert (second.answer, second.seconds) == (2, cost.human.seconds_per_label)
    assert annotator.collect(pool.tasks(status="submitted")) == []
    # the class shown beside the suggestion, taken with one key; priced only where people see it
    [beside] = pool.add_tasks(1, "review", [(ids[1], 8)], alternatives=[2])
    record_answer(pool, cost, beside, 2, "alice", LABELS)
    assert pool.task(beside).seconds == cost.human.seconds_per_alternative < cost.human.seconds_per_label
    assert annotator.shows_alternative and SimulatedAnnotator.shows_alternative  # our page, and who stands for it
    assert not GroundTruthAnnotator.shows_alternative and not A2IAnnotator.shows_alternative  # their templates
    third = pool.add_tasks(1, "review", [(ids[0], None)])[0]
    with pytest.raises(AnnotatorError, match=r"unknown class 'unicorn' \(known: t-shirt"):
        record_answer(pool, cost, third, "unicorn", "alice", LABELS)
    with pytest.raises(ConfigError, match="unknown annotator 'mturk'"):
        make_annotator("mturk", AnnotatorContext(pool, store, _config(tmp_path, store.uri), LABELS, 1))


@pytest.fixture
def s3_world(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    return _world(tmp_path, f"s3://{bucket}/fleet?endpoint_url={endpoint}&region=us-east-1")


def _client(service):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


GT = {
    "role_arn": ROLE,
    "workteam_arn": "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/fleet",
    "ui_template_s3_uri": "s3://templates/classify.liquid",
    "pre_human_task_lambda_arn": "arn:aws:lambda:us-east-1:123456789012:function:fleetloop-pre",
    "annotation_consolidation_lambda_arn": "arn:aws:lambda:us-east-1:123456789012:function:fleetloop-post",
}


def _describe_job(name, status, store, output_uri=None):
    response = {
        "LabelingJobStatus": status,
        "LabelCounters": {},
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        "JobReferenceCode": "abc",
        "LabelingJobName": name,
        "LabelingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:labeling-job/{name}",
        "InputConfig": {"DataSource": {"S3DataSource": {"ManifestS3Uri": "s3://x/in.manifest"}}},
        "OutputConfig": {"S3OutputPath": "s3://x/out"},
        "RoleArn": ROLE,
        "HumanTaskConfig": {
            "WorkteamArn": GT["workteam_arn"],
            "UiConfig": {"UiTemplateS3Uri": "s3://t/t"},
            "PreHumanTaskLambdaArn": GT["pre_human_task_lambda_arn"],
            "TaskTitle": "t",
            "TaskDescription": "d",
            "NumberOfHumanWorkersPerDataObject": 1,
            "TaskTimeLimitInSeconds": 300,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": GT["annotation_consolidation_lambda_arn"]
            },
        },
    }
    if output_uri:
        response["LabelingJobOutput"] = {"OutputDatasetS3Uri": output_uri}
    return response


def test_ground_truth_labeling_job_round_trip(tmp_path, s3_world):
    store, pool, ids = s3_world
    client = _client("sagemaker")
    config = _config(tmp_path, store.uri, **{"sagemaker-groundtruth": GT})
    annotator = GroundTruthAnnotator(AnnotatorContext(pool, store, config, LABELS, 4, client=client))
    task_ids = pool.add_tasks(4, "review", [(ids[0], 8), (ids[1], None)])
    job = f"fleetloop-r4-t{task_ids[0]}-n2"
    prefix = f"labeling/{job}"
    with Stubber(client) as stub:
        stub.add_response(
            "create_labeling_job",
            {"LabelingJobArn": f"arn:aws:sagemaker:::labeling-job/{job}"},
            {
                "LabelingJobName": job,
                "LabelAttributeName": "fleetloop-label",
                "InputConfig": {
                    "DataSource": {"S3DataSource": {"ManifestS3Uri": store.url(f"{prefix}/input.manifest")}},
                    "DataAttributes": {"ContentClassifiers": ["FreeOfPersonallyIdentifiableInformation"]},
                },
                "OutputConfig": {"S3OutputPath": store.url(f"{prefix}/output")},
                "RoleArn": ROLE,
                "LabelCategoryConfigS3Uri": store.url(f"{prefix}/categories.json"),
                "HumanTaskConfig": {
                    "WorkteamArn": GT["workteam_arn"],
                    "UiConfig": {"UiTemplateS3Uri": GT["ui_template_s3_uri"]},
                    "PreHumanTaskLambdaArn": GT["pre_human_task_lambda_arn"],
                    "TaskTitle": ANY,
                    "TaskDescription": ANY,
                    "NumberOfHumanWorkersPerDataObject": 1,
                    "TaskTimeLimitInSeconds": 300,
                    "AnnotationConsolidationConfig": {
                        "AnnotationConsolidationLambdaArn": GT["annotation_consolidation_lambda_arn"]
                    },
                },
                "Tags": [{"Key": "fleetloop-round", "Value": "4"}],
            },
        )
        external = annotator.submit(_requests(pool, store, task_ids))
        pool.mark_submitted(task_ids, annotator.name, external)
        # the input manifest (in the store) points at the frames and carries the suggestion for the pre-task Lambda
        lines = [json.loads(line) for line in store.get_bytes(f"{prefix}/input.manifest").decode().splitlines()]
        assert lines[0]["source-ref"] == store.url(pool.frame(ids[0])["frame_key"])
        assert lines[0]["source-ref"].startswith("s3://") and lines[0]["fleetloop-suggestion"] == "bag"
        assert "fleetloop-suggestion" not in lines[1]
        categories = json.loads(store.get_bytes(f"{prefix}/categories.json"))
        assert [c["label"] for c in categories["labels"]] == list(LABELS)

        stub.add_response("describe_labeling_job", _describe_job(job, "InProgress", store), {"LabelingJobName": job})
        assert annotator.collect(pool.tasks(status="submitted")) == []  # humans still at work

        output_key = f"{prefix}/output/{job}/manifests/output/output.manifest"
        out = [
            {
                **lines[0],
                "fleetloop-label": 8,
                "fleetloop-label-metadata": {"class-name": "bag", "confidence": 0.95, "human-annotated": "yes"},
            },
            {**lines[1], "fleetloop-label": 11, "fleetloop-label-metadata": {"class-name": "unicorn"}},
        ]
        store.put_bytes(output_key, "\n".join(json.dumps(o) for o in out).encode())
        stub.add_response(
            "describe_labeling_job",
            _describe_job(job, "Completed", store, store.url(output_key)),
            {"LabelingJobName": job},
        )
        answers = {a.task_id: a for a in annotator.collect(pool.tasks(status="submitted"))}
        stub.assert_no_pending_responses()
    assert answers[task_ids[0]].label == 8 and answers[task_ids[0]].annotator == f"sagemaker-groundtruth:{job}"
    assert answers[task_ids[1]].label is None and "unknown class 'unicorn'" in answers[task_ids[1]].error


def test_ground_truth_needs_an_s3_store_and_its_settings(tmp_path):
    store, pool, ids = _world(tmp_path, f"file://{tmp_path / 'store'}")
    config = _config(tmp_path, store.uri, **{"sagemaker-groundtruth": GT})
    annotator = GroundTruthAnnotator(AnnotatorContext(pool, store, config, LABELS, 1, client=_client("sagemaker")))
    task_ids = pool.add_tasks(1, "review", [(ids[0], 3)])
    with pytest.raises(AnnotatorError, match="Ground Truth reads frames from S3"):
        annotator.submit(_requests(pool, store, task_ids))


def test_a2i_human_loops(tmp_path, s3_world):
    store, pool, ids = s3_world
    flow = "arn:aws:sagemaker:us-east-1:123456789012:flow-definition/fleetloop"
    client = _client("sagemaker-a2i-runtime")
    config = _config(tmp_path, store.uri, a2i={"flow_definition_arn": flow})
    annotator = A2IAnnotator(AnnotatorContext(pool, store, config, LABELS, 2, client=client))
    task_ids = pool.add_tasks(2, "audit", [(ids[0], 3), (ids[1], 8)])
    loops = [f"fleetloop-r2-t{t}" for t in task_ids]
    with Stubber(client) as stub:
        for loop, frame_id, suggestion in zip(loops, ids, ("dress", "bag")):
            row = pool.frame(frame_id)
            content = {
                "frame": frame_id,
                "labels": list(LABELS),
                "suggestion": suggestion,
                "taskObject": store.url(row["frame_key"]),
            }
            stub.add_response(
                "start_human_loop",
                {"HumanLoopArn": f"arn:a2i/{loop}"},
                {
                    "HumanLoopName": loop,
                    "FlowDefinitionArn": flow,
                    "HumanLoopInput": {"InputContent": json.dumps(content, sort_keys=True)},
                    "DataAttributes": {"ContentClassifiers": ["FreeOfPersonallyIdentifiableInformation"]},
                },
            )
        pool.mark_submitted(task_ids, annotator.name, annotator.submit(_requests(pool, store, task_ids)))
        key = "a2i/output/loop-0.json"
        store.put_bytes(
            key,
            json.dumps({"humanAnswers": [{"answerContent": {"crowd-image-classifier": {"label": "dress"}}}]}).encode(),
        )
        base = {"CreationTime": NOW, "FlowDefinitionArn": flow}
        stub.add_response(
            "describe_human_loop",
            {
                **base,
                "HumanLoopStatus": "Completed",
                "HumanLoopName": loops[0],
                "HumanLoopArn": f"arn:a2i/{loops[0]}",
                "HumanLoopOutput": {"OutputS3Uri": store.url(key)},
            },
            {"HumanLoopName": loops[0]},
        )
        stub.add_response(
            "describe_human_loop",
            {**base, "HumanLoopStatus": "InProgress", "HumanLoopName": loops[1], "HumanLoopArn": f"arn:a2i/{loops[1]}"},
            {"HumanLoopName": loops[1]},
        )
        answers = annotator.collect(pool.tasks(status="submitted"))
        stub.assert_no_pending_responses()
    assert [(a.task_id, a.label) for a in answers] == [(task_ids[0], 3)]  # the second loop is still open
