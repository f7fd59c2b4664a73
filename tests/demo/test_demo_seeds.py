"""``fleetloop demo --seeds``: the seed list and the figures over seeds (mean, min, max, per seed)."""

import json

import pytest

from fleetloop_cloud.demo import seeds


def _report(throughput, error, hard=None):
    return {
        "throughput_ratio": throughput,
        "cost_ratio": throughput * 0.9,
        "auto_label_error": error,
        "labeling": {
            "stream_world": {"ground_truth_cost_ratio": 1.05},
            "audit": {"frames": 200},
            "hard_mode": None if hard is None else {"throughput_ratio": hard},
        },
        "frames_dropped": 0,
    }


def test_seeds_parse_and_refuse_what_is_not_a_seed():
    assert seeds.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(ValueError, match="'x' is not an integer seed"):
        seeds.parse_seeds("0,x")
    with pytest.raises(ValueError, match="names a seed twice"):
        seeds.parse_seeds("1,1")


def test_figures_over_seeds_are_mean_and_range_of_what_each_run_measured(tmp_path):
    figures = seeds.aggregate({0: _report(20.0, 0.01, hard=4.0), 1: _report(26.0, 0.03), 2: _report(23.0, 0.02)})
    assert figures["throughput_ratio"]["mean"] == pytest.approx(23.0)
    assert (figures["throughput_ratio"]["min"], figures["throughput_ratio"]["max"]) == (20.0, 26.0)
    assert figures["hard_mode_throughput_ratio"]["seeds_measured"] == 1  # a figure one run lacks is not invented
    assert figures["upload_gain_share"]["mean"] is None
    table = seeds.write(tmp_path, figures)
    assert "| throughput_ratio | 23 | 20 | 26 | 20 | 26 | 23 |" in table
    assert json.loads((tmp_path / "seeds.json").read_text())["auto_label_error"]["max"] == pytest.approx(0.03)


def test_a_campaign_from_a_share_of_0_is_measured_against_the_loop_arm():
    # seed 4 (2026-12-06): coats, named in none of round 1's uploads; the ratio after / before is n/a
    from_zero = {**_report(4.0, 0.0), "campaign_share_ratio": None, "campaign": {"share_vs_loop": 2.07}}
    figures = seeds.aggregate(
        {3: {**_report(4.0, 0.0), "campaign_share_ratio": 3.2, "campaign": {"share_vs_loop": 2.5}}, 4: from_zero}
    )
    assert figures["campaign_share_ratio"]["seeds_measured"] == 1
    assert figures["campaign_share_vs_loop"]["values"] == {3: 2.5, 4: 2.07}


def test_audits_pool_over_seeds_into_one_sample_judged_by_its_interval(tmp_path):
    def audited(frames, correct):
        return {"labeling": {"audit": {"frames": frames, "correct": correct}}}

    pooled = seeds.pooled_audit({0: audited(90, 90), 1: audited(90, 90), 2: audited(90, 89)})
    assert (pooled["frames"], pooled["correct"]) == (270, 269)
    assert pooled["error"] == pytest.approx(1 / 270, abs=1e-4)
    assert pooled["error_interval_95"][1] == pytest.approx(0.0206, abs=1e-3)  # Wilson, 95 %
    assert pooled["met"] is True
    # one seed alone is too few audited labels, however clean
    assert seeds.pooled_audit({0: audited(90, 90)})["met"] is False
    # enough labels, but the interval's upper end above 4 %
    assert seeds.pooled_audit({0: audited(150, 146), 1: audited(150, 146)})["met"] is False
    assert seeds.pooled_audit({0: {"labeling": {}}})["met"] is None
    table = seeds.write(tmp_path, seeds.aggregate({0: _report(4.0, 0.0)}), pooled)
    assert "1 wrong of 270 audited (0.37 %, 95 % interval 0.07-2.07 %; target <= 2 % on >= 200" in table
    assert json.loads((tmp_path / "seeds.json").read_text())["audit_pooled"]["frames"] == 270
