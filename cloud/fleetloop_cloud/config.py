"""Config of the cloud loop (config/cloud.yaml) and of its cost model (config/cost_model.yaml).

One pydantic tree per concern, validated at load: an error names the file, the key and the value,
e.g. ``config/cloud.yaml: routing.target_accuracy: Input should be less than 1 (got 1.5)``.
Relative paths in config/cloud.yaml are resolved against the current directory (the CLI runs from
the checkout root).

~460 lines as one module on purpose: it is the schema of config/cloud.yaml, one section class per key
in the file's order, and of the cost model that file names; split, one file's schema would be read in
several places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel, default_config_path, load_config, read_yaml, validate
from fleetloop_core.errors import ConfigError

from fleetloop_cloud.campaigns import CampaignConfig

TIERS = ("T1", "T2", "T3", "T4")


# ------------------------------------------------------------------------------------ cost model
class Priced(ConfigModel):
    """A figure and where it comes from (every price and time must cite its public source)."""

    source: str = Field(min_length=1)


class HumanCosts(Priced):
    """What a human label costs: seconds per task and dollars per task (same model for every arm).

    With ``hourly_rate_usd`` (the primary model): a private workforce on our own review page, paid
    for the time it works, no per-object fee. Without it: Ground Truth's per-task pricing (service
    fee + the worker's task price per object sent to humans). :func:`fleetloop_cloud.costs.labeling_figures`
    reports Ground Truth's pricing beside the primary figure in any case (``ground_truth_*``).
    """

    seconds_per_label: float = Field(gt=0)  # labeling from scratch, seconds
    seconds_per_verify: float = Field(gt=0)  # confirming a shown suggestion, seconds
    # taking the class shown beside the suggestion (one key; None: priced as a label from scratch)
    seconds_per_alternative: Optional[float] = Field(default=None, gt=0)
    service_fee_per_object_usd: float = Field(ge=0)  # Ground Truth's fee per labeled object (auto-labeled too)
    worker_price_per_task_usd: float = Field(ge=0)  # paid to a Mechanical Turk worker per task
    workers_per_object: int = Field(default=1, ge=1)
    hourly_rate_usd: Optional[float] = Field(default=None, gt=0)  # set: a private workforce paid by time

    @property
    def price_per_label(self) -> float:
        """Return dollars per object labeled from scratch."""
        return self.task_price(self.seconds_per_label)

    @property
    def price_per_verify(self) -> float:
        """Return dollars per object whose shown suggestion a human confirmed."""
        return self.task_price(self.seconds_per_verify)

    def task_price(self, seconds: float) -> float:
        """Return dollars for one object that took each worker ``seconds``."""
        if self.hourly_rate_usd is not None:  # our own review page: the workers' time, no service fee
            return self.hourly_rate_usd * seconds / 3600.0 * self.workers_per_object
        return self.service_fee_per_object_usd + self.worker_price_per_task_usd * self.workers_per_object


class BoxCosts(Priced):
    """What box labeling costs (detection): seconds per box action and the labeling service's box task price."""

    seconds_per_frame: float = Field(gt=0)  # looking at a frame, confirming it is complete (or empty)
    seconds_per_box_verify: float = Field(gt=0)  # accepting one suggested box as it is
    seconds_per_box_adjust: float = Field(gt=0)  # dragging a suggested box's edges into place
    seconds_per_box_draw: float = Field(gt=0)  # drawing a missing box from scratch
    seconds_per_box_delete: float = Field(gt=0)  # deleting a wrong box
    seconds_per_reclass: float = Field(gt=0)  # changing a box's class
    service_fee_per_object_usd: float = Field(ge=0)
    worker_price_per_task_usd: float = Field(ge=0)  # bounding-box task price (per frame)
    hourly_rate_usd: Optional[float] = Field(default=None, gt=0)

    def task_price(self, seconds: float) -> float:
        """Return dollars for one frame that took ``seconds`` of human work: by the hour on our review page
        (``hourly_rate_usd``, no service fee), else Ground Truth's service fee + the worker's task price."""
        if self.hourly_rate_usd is not None:
            return self.hourly_rate_usd * seconds / 3600.0
        return self.ground_truth_task_price

    @property
    def ground_truth_task_price(self) -> float:
        """Return Ground Truth's price of one frame a human boxed (service fee + worker's task price)."""
        return self.service_fee_per_object_usd + self.worker_price_per_task_usd

    def manual_seconds(self, boxes: int) -> float:
        """Return the seconds a person needs to box a frame with ``boxes`` items from scratch."""
        return self.seconds_per_frame + boxes * self.seconds_per_box_draw

    @property
    def break_even_precision(self) -> float:
        """Return the precision above which showing a suggested box saves time: shown, it costs a verify
        (right) or a delete (wrong); left out, a draw when it was right."""
        delete, draw = self.seconds_per_box_delete, self.seconds_per_box_draw
        return delete / max(draw - self.seconds_per_box_verify + delete, 1e-9)


class Instance(Priced):
    """A priced instance type: dollars per hour and its vCPU count."""

    name: str
    usd_per_hour: float = Field(gt=0)
    vcpus: int = Field(default=1, ge=1)


class CostModel(ConfigModel):
    """config/cost_model.yaml."""

    currency: Literal["USD"] = "USD"
    human: HumanCosts
    cpu_instance: Instance
    gpu_instance: Instance
    boxes: Optional[BoxCosts] = None  # detection: box-level human costs


def load_cost_model(path: str | Path | None = None) -> CostModel:
    """Return the cost model at ``path`` (default config/cost_model.yaml)."""
    return load_config(CostModel, path or default_config_path("cost_model.yaml"))


# ------------------------------------------------------------------------------------ the loop
class IngestConfig(ConfigModel):
    """How new frames are read from the store into the pool."""

    prefix: str = "frames/"
    orphan_grace_s: float = Field(default=3600.0, ge=0)  # a frame without sidecar waits this long
    near_duplicate_bits: int = Field(default=4, ge=0, le=32)  # pHash Hamming distance across robots
    max_frames: Optional[int] = Field(default=None, gt=0)  # per run (None: all new)


class SageMakerTransformConfig(ConfigModel):
    """Batch transform jobs running the teacher packages (production auto-labeling)."""

    role_arn: str = ""
    image_uri: str = ""  # the inference image (docker/inference.Dockerfile)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = Field(default=1, ge=1)
    max_payload_mb: int = Field(default=6, ge=1, le=100)
    poll_s: float = Field(default=30.0, gt=0)
    max_wait_s: float = Field(default=6 * 3600.0, gt=0)
    region: str = "us-east-1"
    endpoint_url: Optional[str] = None


class AutolabelConfig(ConfigModel):
    """Which teacher tiers label, in what batches, where."""

    tiers: tuple[str, ...] = ("T1", "T2")
    backend: Literal["local", "sagemaker-batch"] = "local"
    batch_size: int = Field(default=64, gt=0)
    providers: tuple[str, ...] = ("cpu",)
    threads: int = Field(default=1, ge=1)
    sagemaker: SageMakerTransformConfig = Field(default_factory=SageMakerTransformConfig)

    @model_validator(mode="after")
    def _check(self) -> "AutolabelConfig":
        if len(self.tiers) != 2 or any(t not in TIERS for t in self.tiers):
            raise ValueError(f"tiers must name two of {', '.join(TIERS)} (got {list(self.tiers)})")
        return self


class PropagationConfig(ConfigModel):
    """Label propagation along a track (audited like any auto-label)."""

    enabled: bool = True
    use_track_hint: bool = True  # robot-side track ids, when sidecars carry them
    max_gap_s: float = Field(default=1.0, gt=0)  # derived tracks: consecutive frames at most this apart
    min_similarity: float = Field(default=0.9, ge=-1, le=1)  # derived tracks: cosine of teacher embeddings
    min_confidence: float = Field(default=0.0, ge=0, le=1)  # calibrated confidence a propagated frame needs
    # a robot track hint holds while each frame follows the hint's previous one within this gap and
    # with at least this cosine of T1's embeddings (else the rest of the hint is a new track)
    hint_max_gap_s: float = Field(default=2.0, gt=0)
    hint_min_similarity: float = Field(default=0.7, ge=-1, le=1)
    # how routing treats a track of several unlabeled frames: ``frame``: each frame by the class thresholds, like
    # any frame; ``track``: the track as one (its committee averaged over its frames, thresholds from evidence
    # counted per track: classification_track_routing); ``human``: left to the track's one human label, which
    # propagates. The committee errs about an item in every frame it is seen, so a track's frames err together
    # while the frame thresholds' bound counts each evidence frame as independent (three seeds at 8263589:
    # 8 of 13 wrong auto-labels came two or four from one track)
    track_frames: Literal["frame", "track", "human"] = "frame"


class RoutingConfig(ConfigModel):
    """Auto-accept where the committee's calibrated confidence clears its class's threshold, chosen on audited data."""

    target_accuracy: float = Field(default=0.98, gt=0.5, lt=1)
    bound_z: float = Field(default=1.0, ge=0)  # 0: point estimate; z: Wilson lower bound
    min_validation: int = Field(default=30, ge=1)  # accepted validation frames needed for a threshold
    calibration_min_labels: int = Field(default=20, ge=2)
    # the human answers routing learns from, pooled across rounds: the random calibration sample, the
    # frames humans reviewed (every frame routing did not accept, when review.human_budget is null:
    # frames below the thresholds, so their accuracy estimate is conservative) and the audits (random
    # samples of the accepted labels). Track representatives are left out: they are picked as the most
    # confident frame of their track, an optimistic sample.
    evidence: tuple[Literal["calibration", "review", "audit"], ...] = ("calibration", "review", "audit")
    # answers of these purposes that contradict the suggestion shown with them get a second person's
    # answer (a `second-opinion` task showing the latest answer), a third when the two disagree; the
    # newest answer is then the majority (an audit's before the pass is measured). Without it one
    # annotator slip (1 % in the simulated world) on a frame the teachers got right counts as the
    # teachers' error, where it weighs most: among the most confident evidence (measured: 3 of the 13
    # contradicted calibration answers of two rounds). Review answers are left out by default (the
    # cheaper choice; docs/cloud_loop.md has the measurements, which do not settle it). Empty: none.
    second_opinion: tuple[Literal["calibration", "review", "audit"], ...] = ("calibration", "audit")
    # ... only where the committee (this round's weights) is at least this sure of the frame: below it a
    # contradiction is nearly always the teachers' error, which the second person only confirms, and the
    # frame is evidence no threshold reaches; a slip there stands, as on a review frame (0, the default:
    # every contradicted answer; docs/cloud_loop.md has the measured trade: 0.8 saved ~48 s a seed for
    # 0.6 points of human-label accuracy, and moved the headline within its spread)
    second_opinion_min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    propagation: PropagationConfig = Field(default_factory=PropagationConfig)


class ReviewConfig(ConfigModel):
    """Which frames humans see, through which annotator."""

    annotator: str = "simulated"
    calibration_sample: int = Field(default=60, ge=0)  # random frames humans label each round
    # while the teachers are the ones of the previous round and that much pooled calibration evidence
    # exists, only this many fresh random frames a round (None: always calibration_sample)
    calibration_refresh: Optional[int] = Field(default=None, ge=0)
    # more random frames while the evidence falls short only for want of frames: after routing, a class
    # (or the pooled group) not automated whose most confident evidence does not rule the target out gets
    # this many more random frames of what it predicts, and routing runs again; up to calibration_max
    # calibration frames a round (0: never more than the sample). Where nothing is automated every frame
    # goes to a person anyway, so asking in random order costs the same and makes each answer evidence.
    calibration_more: int = Field(default=30, ge=0)
    calibration_max: int = Field(default=180, ge=0)
    human_budget: Optional[int] = Field(default=None, ge=0)  # frames per round beyond calibration/audit
    strategy: str = "typiclust"  # order of review when over budget (active.py)
    show_suggestions: bool = True
    seed: int = 0


class AuditConfig(ConfigModel):
    """QA: a random sample of auto-accepted labels goes to humans."""

    fraction: float = Field(default=0.05, ge=0, le=1)
    min_frames: int = Field(default=30, ge=0)
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1)  # of the reported Wilson interval
    tighten_step: float = Field(default=0.01, gt=0, le=0.5)
    max_passes: int = Field(default=3, ge=1)


class SimulatedAnnotatorConfig(ConfigModel):
    """Ground truth plus a configurable error rate (simulated world only)."""

    error_rate: float = Field(default=0.01, ge=0, le=1)
    seed: int = 0


class GroundTruthConfig(ConfigModel):
    """SageMaker Ground Truth labeling jobs (production)."""

    role_arn: str = ""
    workteam_arn: str = ""
    ui_template_s3_uri: str = ""
    human_task_ui_arn: str = ""
    pre_human_task_lambda_arn: str = ""
    annotation_consolidation_lambda_arn: str = ""
    label_attribute: str = "fleetloop-label"
    workers_per_object: int = Field(default=1, ge=1)
    task_time_limit_s: int = Field(default=300, ge=30)
    public_workforce_price_usd: Optional[float] = Field(default=None, gt=0)
    region: str = "us-east-1"
    endpoint_url: Optional[str] = None


class A2IConfig(ConfigModel):
    """Amazon Augmented AI human loops (production)."""

    flow_definition_arn: str = ""
    answer_key: str = "crowd-image-classifier"
    region: str = "us-east-1"
    endpoint_url: Optional[str] = None


class AnnotatorsConfig(ConfigModel):
    """Settings of every annotator backend (only the chosen one is used)."""

    simulated: SimulatedAnnotatorConfig = Field(default_factory=SimulatedAnnotatorConfig)
    sagemaker_groundtruth: GroundTruthConfig = Field(default_factory=GroundTruthConfig, alias="sagemaker-groundtruth")
    a2i: A2IConfig = Field(default_factory=A2IConfig)


class SageMakerTrainingConfig(ConfigModel):
    """create_training_job settings (production training backend)."""

    role_arn: str = ""
    image_uri: str = ""
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = Field(default=1, ge=1)
    volume_gb: int = Field(default=30, ge=1)
    max_runtime_s: int = Field(default=3 * 3600, ge=60)
    poll_s: float = Field(default=30.0, gt=0)
    region: str = "us-east-1"
    endpoint_url: Optional[str] = None


class TrainingConfig(ConfigModel):
    """Train T2 on all accepted labels, distil T3/T4 from it, export ONNX and INT8."""

    backend: Literal["local", "sagemaker"] = "local"
    teacher_epochs: int = Field(default=3, ge=1)
    distil_epochs: int = Field(default=3, ge=1)
    warm_start_epochs: int = Field(default=2, ge=1)  # when the production package ships weights
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=4e-3, gt=0)
    # peak learning rate when warm-starting from production weights: a from-scratch rate on a few
    # hundred field frames wrecks what the model knew (measured: field accuracy 0.39 -> 0.17 at 4e-3,
    # 0.39 -> 0.53 at 5e-4 on the quick demo's teacher)
    finetune_lr: float = Field(default=5e-4, gt=0)
    distil_temperature: float = Field(default=2.0, gt=0)
    lab_replay_frames: int = Field(default=1000, ge=0)  # labeled lab frames mixed in (keeps old classes)
    int8: bool = True
    int8_calibration_frames: int = Field(default=64, ge=1)
    int8_per_channel: bool = True
    seed: int = 0
    threads: Optional[int] = Field(default=None, ge=1)
    sagemaker: SageMakerTrainingConfig = Field(default_factory=SageMakerTrainingConfig)


class EvaluationConfig(ConfigModel):
    """The gate: held-out field test set per site and per class, candidate vs production."""

    test_set: str = "simulated-field"  # simulated-field | holdout (evaluate.TEST_SETS)
    frames_per_site: int = Field(default=300, gt=0)
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)
    min_gain: float = Field(default=0.005, ge=-1, le=1)  # overall accuracy, absolute
    max_class_regression: float = Field(default=0.05, ge=0, le=1)
    max_site_regression: float = Field(default=0.03, ge=0, le=1)
    min_support: int = Field(default=20, ge=1)  # classes/sites with fewer test frames are not gated
    regression_z: float = Field(default=1.0, ge=0)  # a drop within this many standard errors is noise (0: limit only)
    # the chance that two equally good models are told apart by a "regression" somewhere among the m sites and
    # classes gated: each is judged at max(regression_z, the normal quantile 1 - alpha / m) standard errors
    # (Bonferroni); None: regression_z alone. At z = 1 each of 15 groups passes an equally good model 84 % of the
    # time, all 15 (were they independent) 7 %
    regression_alpha: Optional[float] = Field(default=0.05, gt=0, lt=1)
    tiers: tuple[str, ...] = ("T2", "T3", "T4")
    edge_precision: Literal["fp32", "int8"] = "fp32"  # which edge variant is gated and registered


class SageMakerRegistryConfig(ConfigModel):
    """SageMaker Model Registry (production registry backend)."""

    group_prefix: str = "fleetloop"
    image_uri: str = ""
    region: str = "us-east-1"
    endpoint_url: Optional[str] = None


class RegistryConfig(ConfigModel):
    """Where signed packages go: a store layout models/<name>/<version>/ plus an approval index."""

    backend: Literal["local", "sagemaker"] = "local"
    uri: str = "runs/cloud/registry"  # directory or store URI (file://, s3://)
    signing_key: Optional[str] = None  # Ed25519 private PEM; unset: packages are not signed
    trusted_keys: Optional[str] = None  # directory of *.pub or YAML list; verifies on read
    sagemaker: SageMakerRegistryConfig = Field(default_factory=SageMakerRegistryConfig)


class SimulatedBoxAnnotatorConfig(ConfigModel):
    """Simulated box annotator: ground-truth boxes, jittered, with misses and class errors."""

    error_rate: float = Field(default=0.01, ge=0, le=1)  # per box: a wrong class
    miss_rate: float = Field(default=0.01, ge=0, le=1)  # per box: not drawn
    box_jitter_px: float = Field(default=1.0, ge=0)  # sigma of each edge, pixels
    accept_iou: float = Field(default=0.7, gt=0, le=1)  # a shown box this close to the object is left as it is
    seed: int = 0


class DetectionLoopConfig(ConfigModel):
    """The detection task of the loop (fleetloop_cloud.loop.tasks.detection): consensus, routing targets, annotator.

    Review sizes, audit, training epochs and the gate's limits come from the sections above
    (review, audit, training, evaluation), read as box and mAP@0.5 figures.
    """

    annotator: str = "simulated"  # simulated | review-page (box_annotators.BOX_ANNOTATORS)
    score_threshold: Optional[float] = Field(default=None, ge=0, le=1)  # teacher boxes kept (None: T2 manifest's)
    candidate_floor: float = Field(default=0.05, ge=0, le=1)  # weaker boxes are stored too: they lower confidence
    match_iou: float = Field(default=0.5, gt=0, le=1)  # T1/T2 boxes and auto/human boxes pair at this IoU
    min_tier_iou: float = Field(default=0.7, ge=0, le=1)  # matched T1/T2 pairs' mean IoU for agreement
    solo_min_boxes: int = Field(default=20, ge=1)  # a tier's one-tier boxes seen on human-boxed frames to weigh them
    # while a tier's one-tier boxes have no evidence yet (the first round): people box this many calibration frames
    # first, and the rest of the sample is suggested with the weights their answers give (0: all at once)
    calibration_probe: int = Field(default=20, ge=0)
    target_mean_iou: float = Field(default=0.7, gt=0, le=1)  # auto-accepted vs human boxes (unmatched count 0)
    target_class_accuracy: float = Field(default=0.98, gt=0.5, lt=1)  # on matched boxes
    bound_z: float = Field(default=1.0, ge=0)  # Wilson lower bound of the class accuracy at z
    min_validation: int = Field(default=20, ge=1)  # accepted validation frames needed for a threshold
    simulated: SimulatedBoxAnnotatorConfig = Field(default_factory=SimulatedBoxAnnotatorConfig)


class CloudConfig(ConfigModel):
    """config/cloud.yaml."""

    store: str  # where robots upload (file:///..., s3://bucket/prefix?...)
    work_dir: str = "runs/cloud"  # pool.sqlite, frame cache, channels, candidates, reports
    pool: Optional[str] = None  # sqlite:///path or postgresql://user@host:port/db (None: work_dir/pool.sqlite)
    models: str = "models"  # round-0 production tiers T1..T4 (directories)
    world_seed: int = 0  # simulated world (field test sets of simulated sites)
    cost_model: str = "config/cost_model.yaml"
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    autolabel: AutolabelConfig = Field(default_factory=AutolabelConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    annotators: AnnotatorsConfig = Field(default_factory=AnnotatorsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    detection: DetectionLoopConfig = Field(default_factory=DetectionLoopConfig)  # detectors only
    campaigns: CampaignConfig = Field(default_factory=CampaignConfig)  # data campaigns (fleetloop_cloud.campaigns)

    @property
    def pool_target(self) -> str | Path:
        """Return where the pool lives: ``pool`` (a URI), else ``work_dir``/pool.sqlite."""
        return self.pool if self.pool else self.work_path / "pool.sqlite"

    @property
    def work_path(self) -> Path:
        """Return the work directory as an absolute path."""
        return Path(self.work_dir).resolve()


def local_overrides_path(path: str | Path) -> Path:
    """Return the local override file of a config: ``cloud.yaml`` -> ``cloud.local.yaml`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.local{path.suffix}")


def load_cloud_config(path: str | Path | None = None, overrides: dict | None = None) -> CloudConfig:
    """Return config/cloud.yaml (or ``path``) validated.

    A ``cloud.local.yaml`` beside it (what the review page's routing view writes) is merged over
    it, then ``overrides``; errors name the file the bad value came from.
    """
    path = Path(path) if path else default_config_path("cloud.yaml")
    data = read_yaml(path)
    local = local_overrides_path(path)
    if local.is_file():
        extra = read_yaml(local)
        validate(CloudConfig, _merge(data, extra), source=str(local))
        data = _merge(data, extra)
    if overrides:
        data = _merge(data, overrides)
    config = validate(CloudConfig, data, source=str(path))
    _check_names(config, path)
    return config


def cloud_config_from_dict(data: dict, source: str = "<cloud config>") -> CloudConfig:
    """Return a CloudConfig from a mapping (tests, the demo), validated like a file."""
    config = validate(CloudConfig, data, source=source)
    _check_names(config, source)
    return config


def _check_names(config: CloudConfig, source: str | Path) -> None:
    # registries by name: an unknown name is an error naming the file, the name and the known ones
    from fleetloop_cloud.active import STRATEGIES
    from fleetloop_cloud.annotators import ANNOTATORS
    from fleetloop_cloud.evaluate import TEST_SETS

    for key, name, known in (
        ("review.annotator", config.review.annotator, ANNOTATORS),
        ("review.strategy", config.review.strategy, STRATEGIES),
        ("evaluation.test_set", config.evaluation.test_set, TEST_SETS),
    ):
        if name not in known:
            raise ConfigError(f"{source}: {key}: unknown name {name!r} (known: {', '.join(sorted(known))})")
    for tier in config.evaluation.tiers:
        if tier not in ("T2", "T3", "T4"):
            raise ConfigError(f"{source}: evaluation.tiers: {tier!r} is not trained by the loop (known: T2, T3, T4)")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
