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
