"""Human annotators on AWS: SageMaker Ground Truth and Amazon Augmented AI (classification tasks).

* ``sagemaker-groundtruth``: one ``create_labeling_job`` per batch, input as an augmented
  manifest in the store, a pre-annotation Lambda (config) that shows the suggestion, answers read
  from the job's output manifest.
* ``a2i``: one Augmented AI ``start_human_loop`` per task, answers read from the loop's output.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

from fleetloop_core.errors import ConfigError
from fleetloop_core.store import ObjectStore, StoreError

from fleetloop_cloud.annotator_api import AnnotatorContext, AnnotatorError, Answer, TaskRequest, label_index
from fleetloop_cloud.pool import Task


def _boto_client(service: str, region: str, endpoint_url: str | None):
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint_url)


def store_key_of(store: ObjectStore, uri: str) -> str:
    """Return the store key of a URL the store produced (``store.url``); AnnotatorError if outside it."""
    probe = store.url("x")
    base = probe[:-1]
    if not uri.startswith(base):
        raise AnnotatorError(f"{uri}: not inside the store {store.uri}")
    return uri[len(base) :]


def _name(text: str, limit: int = 63) -> str:
    return re.sub(r"[^a-zA-Z0-9-]", "-", text)[:limit].strip("-")


def _require(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"config/cloud.yaml: {key} must be set for this annotator")
    return value


class _AwsAnnotator:
    """A backend on an AWS service: its settings (``annotators.<name>``), the store and a boto3 client."""

    service: str  # the boto3 service name
    settings_key: str  # its settings: ``annotators.<settings_key>`` of the cloud config

    def __init__(self, context: AnnotatorContext):
        self.context = context
        self.settings: Any = getattr(context.config.annotators, self.settings_key)
        self.store = context.store
        self.labels = list(context.labels)
        self.client = context.client or _boto_client(self.service, self.settings.region, self.settings.endpoint_url)


class GroundTruthAnnotator(_AwsAnnotator):
    """SageMaker Ground Truth: one labeling job per submitted batch (augmented manifest in the store)."""

    name = "sagemaker-groundtruth"
    shows_alternative = False  # its task template shows the suggestion alone
    service, settings_key = "sagemaker", "sagemaker_groundtruth"

    def _human_task_config(self) -> dict:
        """Return the job's HumanTaskConfig (work team, UI, Lambdas, price); ConfigError naming a missing key."""
        s = self.settings
        ui = (
            {"HumanTaskUiArn": s.human_task_ui_arn}
            if s.human_task_ui_arn
            else {
                "UiTemplateS3Uri": _require(s.ui_template_s3_uri, "annotators.sagemaker-groundtruth.ui_template_s3_uri")
            }
        )
        human_task = {
            "WorkteamArn": _require(s.workteam_arn, "annotators.sagemaker-groundtruth.workteam_arn"),
            "UiConfig": ui,
            "PreHumanTaskLambdaArn": _require(
                s.pre_human_task_lambda_arn, "annotators.sagemaker-groundtruth.pre_human_task_lambda_arn"
            ),
            "TaskTitle": "FleetLoop: what does the robot see?",
            "TaskDescription": "Pick the class of the item in the frame (or 'none'); a suggestion may be shown.",
            "NumberOfHumanWorkersPerDataObject": s.workers_per_object,
            "TaskTimeLimitInSeconds": s.task_time_limit_s,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": _require(
                    s.annotation_consolidation_lambda_arn,
                    "annotators.sagemaker-groundtruth.annotation_consolidation_lambda_arn",
                )
            },
        }
        if s.public_workforce_price_usd is not None:
            dollars = int(s.public_workforce_price_usd)
            cents = int(round((s.public_workforce_price_usd - dollars) * 100))
            tenths = int(round((s.public_workforce_price_usd * 1000) % 10))
            human_task["PublicWorkforceTaskPrice"] = {
                "AmountInUsd": {"Dollars": dollars, "Cents": cents, "TenthFractionsOfACent": tenths}
            }
        return human_task

    def submit(self, tasks: Sequence[TaskRequest]) -> list[Optional[str]]:
        if not tasks:
            return []
        if not self.store.url("x").startswith("s3://"):
            raise AnnotatorError(f"{self.store.uri}: Ground Truth reads frames from S3; configure an s3:// store")
        s = self.settings
        job = _name(f"fleetloop-r{self.context.round}-t{tasks[0].task_id}-n{len(tasks)}")
        prefix = f"labeling/{job}"
        lines = []
        for t in tasks:
            line = {"source-ref": t.frame_url, "fleetloop-task": t.task_id, "fleetloop-frame": t.frame_id}
            if t.suggestion is not None:
                line["fleetloop-suggestion"] = self.labels[t.suggestion]
            lines.append(json.dumps(line, sort_keys=True, separators=(",", ":")))
        self.store.put_bytes(f"{prefix}/input.manifest", ("\n".join(lines) + "\n").encode())
        categories = {"document-version": "2018-11-28", "labels": [{"label": name} for name in self.labels]}
        self.store.put_bytes(f"{prefix}/categories.json", json.dumps(categories).encode())
        human_task = self._human_task_config()
        try:
            self.client.create_labeling_job(
                LabelingJobName=job,
                LabelAttributeName=s.label_attribute,
                InputConfig={
                    "DataSource": {"S3DataSource": {"ManifestS3Uri": self.store.url(f"{prefix}/input.manifest")}},
                    "DataAttributes": {"ContentClassifiers": ["FreeOfPersonallyIdentifiableInformation"]},
                },
                OutputConfig={"S3OutputPath": self.store.url(f"{prefix}/output")},
                RoleArn=_require(s.role_arn, "annotators.sagemaker-groundtruth.role_arn"),
                LabelCategoryConfigS3Uri=self.store.url(f"{prefix}/categories.json"),
                HumanTaskConfig=human_task,
                Tags=[{"Key": "fleetloop-round", "Value": str(self.context.round)}],
            )
        except Exception as exc:  # botocore raises ClientError / ParamValidationError
            raise AnnotatorError(f"Ground Truth: create_labeling_job {job} failed ({exc})") from exc
        return [job] * len(tasks)

    def collect(self, tasks: Sequence[Task]) -> list[Answer]:
        answers: list[Answer] = []
        by_job: dict[str, list[Task]] = {}
        for task in tasks:
            by_job.setdefault(task.external_id or "", []).append(task)
        attribute = self.settings.label_attribute
        for job, job_tasks in by_job.items():
            try:
                status = self.client.describe_labeling_job(LabelingJobName=job)
            except Exception as exc:
                raise AnnotatorError(f"Ground Truth: describe_labeling_job {job} failed ({exc})") from exc
            state = status["LabelingJobStatus"]
            if state in ("Initializing", "InProgress", "Stopping"):
                continue
            if state != "Completed":
                reason = status.get("FailureReason", state)
                answers += [
                    Answer(t.id, None, self.name, error=f"labeling job {job} {state}: {reason}") for t in job_tasks
                ]
                continue
            uri = status["LabelingJobOutput"]["OutputDatasetS3Uri"]
            try:
                text = self.store.get_bytes(store_key_of(self.store, uri)).decode()
            except StoreError as exc:
                raise AnnotatorError(f"Ground Truth: cannot read the output manifest of {job} ({exc})") from exc
            found: dict[int, dict] = {}
            for line in text.splitlines():
                if line.strip():
                    record = json.loads(line)
                    if "fleetloop-task" in record:
                        found[int(record["fleetloop-task"])] = record
            for task in job_tasks:
                record = found.get(task.id)
                if record is None or attribute not in record:
                    answers.append(
                        Answer(
                            task.id,
                            None,
                            self.name,
                            error=f"labeling job {job}: no {attribute} for task {task.id} in {uri}",
                        )
                    )
                    continue
                meta = record.get(f"{attribute}-metadata", {})
                try:
                    if "class-name" in meta:
                        index = label_index(meta["class-name"], self.labels, f"labeling job {job}, task {task.id}")
                    else:
                        index = int(record[attribute])
                        if not 0 <= index < len(self.labels):
                            raise AnnotatorError(f"labeling job {job}, task {task.id}: class index {index} unknown")
                except AnnotatorError as exc:
                    answers.append(Answer(task.id, None, self.name, error=str(exc)))
                    continue
                answers.append(Answer(task.id, index, f"{self.name}:{job}"))
        return answers


class A2IAnnotator(_AwsAnnotator):
    """Amazon Augmented AI: one human loop per task (flow definition from config)."""

    name = "a2i"
    shows_alternative = False  # its task template shows the suggestion alone
    service, settings_key = "sagemaker-a2i-runtime", "a2i"

    def submit(self, tasks: Sequence[TaskRequest]) -> list[Optional[str]]:
        flow = _require(self.settings.flow_definition_arn, "annotators.a2i.flow_definition_arn")
        names = []
        for t in tasks:
            loop = _name(f"fleetloop-r{self.context.round}-t{t.task_id}")
            content = {
                "taskObject": t.frame_url,
                "labels": self.labels,
                "frame": t.frame_id,
                "suggestion": self.labels[t.suggestion] if t.suggestion is not None else None,
            }
            try:
                self.client.start_human_loop(
                    HumanLoopName=loop,
                    FlowDefinitionArn=flow,
                    HumanLoopInput={"InputContent": json.dumps(content, sort_keys=True)},
                    DataAttributes={"ContentClassifiers": ["FreeOfPersonallyIdentifiableInformation"]},
                )
            except Exception as exc:
                raise AnnotatorError(f"A2I: start_human_loop {loop} failed ({exc})") from exc
            names.append(loop)
        return names

    def collect(self, tasks: Sequence[Task]) -> list[Answer]:
        answers = []
        for task in tasks:
            loop = task.external_id or ""
            try:
                status = self.client.describe_human_loop(HumanLoopName=loop)
            except Exception as exc:
                raise AnnotatorError(f"A2I: describe_human_loop {loop} failed ({exc})") from exc
            state = status["HumanLoopStatus"]
            if state in ("InProgress", "Stopping"):
                continue
            if state != "Completed":
                answers.append(
                    Answer(
                        task.id, None, self.name, error=f"human loop {loop} {state}: {status.get('FailureReason', '')}"
                    )
                )
                continue
            uri = status["HumanLoopOutput"]["OutputS3Uri"]
            try:
                output = json.loads(self.store.get_bytes(store_key_of(self.store, uri)))
                content = output["humanAnswers"][0]["answerContent"]
                name = content[self.settings.answer_key]["label"]
                index = label_index(name, self.labels, f"human loop {loop}")
            except AnnotatorError as exc:
                answers.append(Answer(task.id, None, self.name, error=str(exc)))
                continue
            except (StoreError, KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
                answers.append(
                    Answer(task.id, None, self.name, error=f"human loop {loop}: unreadable output {uri} ({exc})")
                )
                continue
            answers.append(Answer(task.id, index, f"{self.name}:{loop}"))
        return answers
