"""The demo report's target table: a figure is met only on the evidence the target asks for."""

import pytest

from fleetloop_cloud.demo.report import _targets


@pytest.mark.parametrize(
    "frames, interval, met",
    [(90, [0.0, 0.0409], False), (240, [0.0, 0.0157], True), (240, [0.01, 0.045], False)],
)
def test_an_audited_error_is_met_only_on_enough_audited_labels_with_a_tight_interval(frames, interval, met):
    report = {"auto_label_error": 0.0, "labeling": {"audit": {"frames": frames, "error_interval_95": interval}}}
    (audit,) = [t for t in _targets(report) if t["figure"] == "auto_label_error"]
    assert audit["met"] is met and audit["value"] == 0.0
    # a figure the run did not measure is neither met nor missed
    assert {t["figure"]: t["met"] for t in _targets(report)}["throughput_ratio"] is None


def test_each_figure_is_judged_against_its_must_and_shows_its_aim():
    report = {"throughput_ratio": 21.0, "al_label_ratio": 0.45, "hard_mode_throughput_ratio": 3.9, "labeling": {}}
    targets = {t["figure"]: t for t in _targets(report)}
    assert targets["throughput_ratio"]["met"] is True  # the must is 20; the aim (25) is shown, not judged
    assert (targets["throughput_ratio"]["target"], targets["throughput_ratio"]["aim"]) == (">= 20", ">= 25")
    assert targets["al_label_ratio"]["met"] is True and targets["al_label_ratio"]["aim"] == "<= 0.3333"
    assert targets["hard_mode_throughput_ratio"]["met"] is False  # must 4


def test_a_gain_share_the_gate_left_undefined_says_why():
    gate = [{"round": 1, "promote": False, "reasons": ["class coat regresses 0.208 -> 0.138"]}]
    report = {"upload_gain_share": None, "labeling": {}, "edge_accuracy": {"upload_all_gate": gate}}
    target = {t["figure"]: t for t in _targets(report)}["upload_gain_share"]
    assert target["met"] is None and "refused the upload-all arm's candidate in every round" in target["why"]
    assert "class coat regresses" in target["why"]
    gate.append({"round": 2, "promote": True, "reasons": []})  # it gained once: the share is simply not computed
    assert "why" not in {t["figure"]: t for t in _targets(report)}["upload_gain_share"]


def test_the_accepted_labels_truth_check_pools_the_rounds_weighted_by_their_labels():
    from fleetloop_cloud.demo.report import _hard_figures, _true_accuracy
    from fleetloop_cloud.demo.report_files import _truth_text

    rounds = [
        {"simulation_only": {"auto": {"frames": 100, "accuracy": 0.99}, "human": {"frames": 50, "accuracy": 1.0}}},
        {"simulation_only": {"auto": {"frames": 300, "accuracy": 0.95}}},
        {"simulation_only": {}},  # a round that labeled nothing
    ]
    pooled = _true_accuracy(rounds)
    assert pooled == {"auto": {"frames": 400, "accuracy": 0.96}, "human": {"frames": 50, "accuracy": 1.0}}
    assert _truth_text(pooled) == "auto 0.960 (400), human 1.000 (50)"
    # hard mode shows it too: a 30-label audit that passed over labels 0.925 right is visible
    hard = {"figures": {"throughput_ratio": 4.6}, "simulation_only": {"auto": {"frames": 348, "accuracy": 0.925}}}
    assert _hard_figures(hard)["true_accuracy"]["auto"] == {"frames": 348, "accuracy": 0.925}
    assert _truth_text(None) == "not measured"


def test_the_audited_error_counts_every_passs_answers_about_the_labels_that_stand():
    from fleetloop_cloud.demo.report import _audits

    first_time = {"round": 1, "audit": {"final": {"frames": 30, "accuracy": 1.0}}}  # a record from before pooling
    # a second pass of 30 of 30 after a first of 27 of 30: the round's audit is 57 of 60, not 30 of 30
    second_time = {
        "round": 2,
        "audit": {"final": {"frames": 30, "accuracy": 1.0, "pooled": {"frames": 60, "correct": 57, "accuracy": 0.95}}},
    }
    audits = _audits([first_time, second_time])
    assert (audits["frames"], audits["correct"]) == (90, 87)
    assert [r["accuracy"] for r in audits["per_round"]] == [1.0, 0.95]
