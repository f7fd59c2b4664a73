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


def test_hourly_pricing_makes_time_saved_money_saved():
    data = load_cost_model().model_dump()
    data["human"]["hourly_rate_usd"] = 36.0
    model = validate(CostModel, data)
    assert model.human.price_per_verify < model.human.price_per_label
    assert model.human.price_per_label == pytest.approx(0.08 + 36.0 * model.human.seconds_per_label / 3600)


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
