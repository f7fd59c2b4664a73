"""Labeling figures from config/cost_model.yaml (definitions of DEMO_WORLD.md)."""

import pytest

from fleetloop_core.errors import ConfigError
from fleetloop_core.config import validate

from fleetloop_cloud.config import CostModel, load_cost_model
from fleetloop_cloud.costs import compute_dollars, labeling_figures, task_cost


def test_shipped_cost_model_cites_a_source_for_every_figure():
    model = load_cost_model()
    for part in (model.human, model.cpu_instance, model.gpu_instance):
        assert "http" in part.source or "arXiv" in part.source
    assert model.human.seconds_per_verify < model.human.seconds_per_label


def test_task_cost_verify_vs_label_and_audits():
    human = load_cost_model().human
    assert task_cost(human, 3, 3, shown=True)[0] == human.seconds_per_verify
    assert task_cost(human, 3, 4, shown=True)[0] == human.seconds_per_label  # suggestion rejected
    assert task_cost(human, 3, 3, shown=False)[0] == human.seconds_per_label  # nothing shown
    assert task_cost(human, 3, 4, shown=True, purpose="audit")[0] == human.seconds_per_verify
    assert task_cost(human, None, 4, shown=True)[1] == pytest.approx(human.price_per_label)


def test_the_class_shown_beside_the_suggestion_costs_its_own_time_where_taken():
    human = load_cost_model().human
    assert human.seconds_per_verify < human.seconds_per_alternative < human.seconds_per_label
    assert task_cost(human, 3, 5, shown=True, alternative=5)[0] == human.seconds_per_alternative
    assert task_cost(human, 3, 3, shown=True, alternative=5)[0] == human.seconds_per_verify  # the suggestion
    assert task_cost(human, 3, 4, shown=True, alternative=5)[0] == human.seconds_per_label  # neither
    assert task_cost(human, 3, 5, shown=False, alternative=5)[0] == human.seconds_per_label  # nothing shown
    unpriced = human.model_copy(update={"seconds_per_alternative": None})  # a cost model without the key
    assert task_cost(unpriced, 3, 5, shown=True, alternative=5)[0] == human.seconds_per_label


def test_the_primary_pricing_is_an_hourly_workforce_time_saved_is_money_saved():
    model = load_cost_model()
    human = model.human
    assert human.hourly_rate_usd is not None  # the shipped model: our review page, paid by the hour
    assert human.price_per_verify < human.price_per_label
    assert human.price_per_label == pytest.approx(human.hourly_rate_usd * human.seconds_per_label / 3600)
    data = model.model_dump()
    data["human"]["hourly_rate_usd"] = None  # Ground Truth's per-task pricing instead
    per_task = validate(CostModel, data).human
    assert per_task.price_per_label == per_task.price_per_verify == pytest.approx(0.08 + 0.012)


def test_ground_truth_pricing_charges_every_labeled_object_auto_labeled_ones_too():
    model = load_cost_model()
    # 1000 labels, 100 human tasks: Ground Truth bills 1000 objects plus 100 worker tasks
    figures = labeling_figures(model, 1000, 100 * 1.6, 1.0, labeling_compute_dollars=0.0, human_tasks=100)
    assert figures.ground_truth_manual_cost_per_label == pytest.approx(0.092)
    assert figures.ground_truth_loop_cost_per_label == pytest.approx((0.08 * 1000 + 0.012 * 100) / 1000)
    assert figures.ground_truth_cost_ratio < 1.15  # the fee on every object caps what automation saves there
    assert figures.cost_ratio > 10 * figures.ground_truth_cost_ratio  # by the hour, time saved is saved


def test_figures_against_the_manual_baseline():
    model = load_cost_model()
    human = model.human
    # 1000 labels; humans verified 100 suggestions and labeled 50 from scratch
    seconds = 100 * human.seconds_per_verify + 50 * human.seconds_per_label
    dollars = 150 * human.price_per_label
    figures = labeling_figures(model, 1000, seconds, dollars, labeling_compute_dollars=0.05)
    assert figures.manual_labels_per_human_hour == pytest.approx(3600 / human.seconds_per_label)
    assert figures.throughput_ratio == pytest.approx((1000 / (seconds / 3600)) / (3600 / human.seconds_per_label))
    assert figures.cost_ratio == pytest.approx(human.price_per_label / ((dollars + 0.05) / 1000))
    empty = labeling_figures(model, 0, 0.0, 0.0, 0.0)
    assert empty.throughput_ratio is None and empty.cost_ratio is None


def test_compute_dollars_per_vcpu_second():
    model = load_cost_model()
    cpu = model.cpu_instance
    assert compute_dollars(model, 3600 * cpu.vcpus) == pytest.approx(cpu.usd_per_hour)
    assert compute_dollars(model, 0, 3600) == pytest.approx(model.gpu_instance.usd_per_hour)


def test_a_figure_without_source_is_refused():
    data = load_cost_model().model_dump()
    data["cpu_instance"]["source"] = ""
    with pytest.raises(ConfigError, match="cpu_instance.source"):
        validate(CostModel, data, source="config/cost_model.yaml")
