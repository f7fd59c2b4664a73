"""Labeling figures, defined once (DEMO_WORLD.md) and computed from config/cost_model.yaml.

* Manual baseline: a person labels every frame from scratch at ``seconds_per_label`` and
  ``price_per_label``.
* Loop: human time = frames routed to humans x (``seconds_per_verify`` when a suggestion was
  shown and accepted, ``seconds_per_alternative`` when the class shown beside it was taken, else
  ``seconds_per_label``) + audited frames x ``seconds_per_verify`` (an audit is a verification of
  the shown auto-label); auto-accepted labels cost no human time.
  Compute cost = measured CPU seconds x the cited instance's price per vCPU-second (+ GPU
  seconds x the GPU instance's price).
* Throughput ratio = accepted labels per human-hour, loop / manual.
* Cost ratio = cost per accepted label, manual / loop (loop: human dollars + labeling compute).
  The primary pricing is a private workforce paid by the hour (``human.hourly_rate_usd``), so time
  saved is money saved. Ground Truth's pricing is reported beside it (``ground_truth_*``), applied
  as its pricing page says: the service fee on every labeled object, the ones its automated
  labeling labeled too, plus the worker's task price on each object sent to humans.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fleetloop_cloud.config import CostModel, HumanCosts


def task_cost(
    human: HumanCosts,
    suggestion: int | None,
    answer: int,
    shown: bool,
    purpose: str = "review",
    alternative: int | None = None,
) -> tuple[float, float]:
    """Return (seconds, dollars) of one human task under the cost model: a verification where the answer is
    the shown suggestion (an audit always), ``seconds_per_alternative`` where it is the class shown beside it
    (``alternative``, one key away), else a label from scratch."""
    verified = purpose == "audit" or (shown and suggestion is not None and int(answer) == int(suggestion))
    seconds = human.seconds_per_verify if verified else human.seconds_per_label
    took_alternative = shown and alternative is not None and int(answer) == int(alternative)
    if not verified and took_alternative and human.seconds_per_alternative is not None:
        seconds = human.seconds_per_alternative
    return seconds, human.task_price(seconds)


def compute_dollars(model: CostModel, cpu_seconds: float, gpu_seconds: float = 0.0) -> float:
    """Return dollars for ``cpu_seconds`` of CPU time and ``gpu_seconds`` of GPU time."""
    cpu = model.cpu_instance
    gpu = model.gpu_instance
    return cpu_seconds * cpu.usd_per_hour / cpu.vcpus / 3600.0 + gpu_seconds * gpu.usd_per_hour / 3600.0


@dataclass(frozen=True)
class LabelingFigures:
    """The per-round labeling figures (loop vs manual, same cost model for both arms)."""

    accepted_labels: int
    human_seconds: float
    human_dollars: float
    labeling_compute_dollars: float
    loop_labels_per_human_hour: float | None
    manual_labels_per_human_hour: float
    throughput_ratio: float | None
    loop_cost_per_label: float | None
    manual_cost_per_label: float
    cost_ratio: float | None
    ground_truth_manual_cost_per_label: float
    ground_truth_loop_cost_per_label: float | None
    ground_truth_cost_ratio: float | None

    def to_dict(self) -> dict:
        """Return JSON-able data (rounded)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def labeling_figures(
    model: CostModel,
    accepted_labels: int,
    human_seconds: float,
    human_dollars: float,
    labeling_compute_dollars: float,
    human_tasks: int = 0,
) -> LabelingFigures:
    """Return the labeling figures of a round (``human_tasks``: objects sent to humans, audits included)."""
    human = model.human
    manual_rate = 3600.0 / human.seconds_per_label
    loop_rate = accepted_labels / (human_seconds / 3600.0) if human_seconds > 0 else None
    loop_cost = (human_dollars + labeling_compute_dollars) / accepted_labels if accepted_labels else None
    worker = human.worker_price_per_task_usd * human.workers_per_object
    gt_manual = human.service_fee_per_object_usd + worker
    gt_loop = (
        (human.service_fee_per_object_usd * accepted_labels + worker * human_tasks + labeling_compute_dollars)
        / accepted_labels
        if accepted_labels
        else None
    )
    return LabelingFigures(
        accepted_labels=accepted_labels,
        human_seconds=human_seconds,
        human_dollars=human_dollars,
        labeling_compute_dollars=labeling_compute_dollars,
        loop_labels_per_human_hour=loop_rate,
        manual_labels_per_human_hour=manual_rate,
        throughput_ratio=loop_rate / manual_rate if loop_rate is not None else None,
        loop_cost_per_label=loop_cost,
        manual_cost_per_label=human.price_per_label,
        cost_ratio=human.price_per_label / loop_cost if loop_cost else None,
        ground_truth_manual_cost_per_label=gt_manual,
        ground_truth_loop_cost_per_label=gt_loop,
        ground_truth_cost_ratio=gt_manual / gt_loop if gt_loop else None,
    )
